//! Calls from the Rust core into the OpenClaw host (the JS side), answered asynchronously.
//!
//! Some work can only be done through OpenClaw's runtime: resolving a model's upstream and
//! credentials, running an agent, invoking a gateway tool. The core never calls into JS directly;
//! it queues a [`HostRequest`] and awaits the reply. The shim drains the queue by pull
//! (`nextHostRequest()`), performs the matching runtime call and answers with `hostReply(id, ...)`.
//! So the JS thread is never blocked by Rust and Rust never blocks on JS: a request that is not
//! answered within its deadline fails with `CLAWMATRIX_TIMEOUT`, and a late answer is ignored.
//!
//! Bounds: at most [`MAX_PENDING`] requests in flight; more fail at once with a clear error
//! rather than queueing without limit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use crate::error::{Error, ErrorCode, Result};

/// Most host requests waiting for an answer at once.
pub const MAX_PENDING: usize = 1024;

/// One request for the host. Serialized as `{ id, kind, ...fields }` for the shim.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRequest {
    pub id: u64,
    #[serde(flatten)]
    pub call: HostCall,
}

/// What the host is asked to do. The shim maps each `kind` to one OpenClaw runtime call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum HostCall {
    /// Invoke a tool through this gateway's own tool interface (`tools.invoke`).
    #[serde(rename_all = "camelCase")]
    InvokeTool {
        tool: String,
        args: serde_json::Value,
        /// The agent whose tool policy applies, when known.
        agent_id: Option<String>,
    },
    /// A no-op round trip, used to check the bridge is served.
    Ping,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<HostRequest>,
    pending: HashMap<u64, oneshot::Sender<Result<serde_json::Value>>>,
    closed: bool,
}

/// The bridge. One per running node; the std `Mutex` is held only for map/queue operations.
#[derive(Default)]
pub struct HostBridge {
    inner: Mutex<Inner>,
    notify: Notify,
    next_id: AtomicU64,
}

impl HostBridge {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue `call` for the host and wait for its answer, at most `timeout`.
    pub async fn call(&self, call: HostCall, timeout: Duration) -> Result<serde_json::Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.lock();
            if g.closed {
                return Err(Error::new(
                    ErrorCode::NotRunning,
                    "the OpenClaw host bridge is closed (service stopping)",
                ));
            }
            if g.pending.len() >= MAX_PENDING {
                return Err(Error::new(
                    ErrorCode::Busy,
                    format!("{MAX_PENDING} host requests already waiting for OpenClaw"),
                ));
            }
            g.pending.insert(id, tx);
            g.queue.push_back(HostRequest { id, call });
        }
        self.notify.notify_one();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::new(
                ErrorCode::NotRunning,
                "the OpenClaw host bridge closed before answering",
            )),
            Err(_) => {
                let mut g = self.lock();
                g.pending.remove(&id);
                g.queue.retain(|r| r.id != id);
                Err(Error::new(
                    ErrorCode::Timeout,
                    format!("OpenClaw did not answer within {} ms", timeout.as_millis()),
                ))
            }
        }
    }

    /// The next request for the host; `None` once closed.
    pub async fn next_request(&self) -> Option<HostRequest> {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.lock();
                if let Some(r) = g.queue.pop_front() {
                    return Some(r);
                }
                if g.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Answer request `id`. Returns false when nobody waits for it any more (timed out).
    pub fn reply(&self, id: u64, result: Result<serde_json::Value>) -> bool {
        let tx = self.lock().pending.remove(&id);
        match tx {
            Some(tx) => tx.send(result).is_ok(),
            None => false,
        }
    }

    /// Fail every waiter and end `next_request`.
    pub fn close(&self) {
        let pending = {
            let mut g = self.lock();
            g.closed = true;
            g.queue.clear();
            std::mem::take(&mut g.pending)
        };
        for (_, tx) in pending {
            let _ = tx.send(Err(Error::new(
                ErrorCode::NotRunning,
                "the clawmatrix service stopped before OpenClaw answered",
            )));
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Accept requests again after a restart.
    pub fn reopen(&self) {
        self.lock().closed = false;
    }

    /// Requests waiting for an answer.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_request_is_answered_through_the_queue() {
        let bridge = Arc::new(HostBridge::new());
        let b = bridge.clone();
        let host = tokio::spawn(async move {
            let req = b.next_request().await.expect("request");
            assert_eq!(req.call, HostCall::Ping);
            let json = serde_json::to_value(&req).expect("serializes");
            assert_eq!(json["kind"], "ping");
            b.reply(req.id, Ok(serde_json::json!({"pong": true})))
        });
        let got = bridge
            .call(HostCall::Ping, Duration::from_secs(5))
            .await
            .expect("answer");
        assert_eq!(got["pong"], true);
        assert!(host.await.expect("host task"));
        assert_eq!(bridge.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_times_out_and_a_late_reply_is_ignored() {
        let bridge = HostBridge::new();
        let err = bridge
            .call(HostCall::Ping, Duration::from_millis(200))
            .await
            .expect_err("timeout");
        assert_eq!(err.code, ErrorCode::Timeout);
        assert_eq!(bridge.pending(), 0, "the waiter is removed");
        assert!(!bridge.reply(1, Ok(serde_json::Value::Null)), "late reply ignored");
    }

    #[tokio::test]
    async fn close_fails_waiters_and_ends_the_pull_stream() {
        let bridge = Arc::new(HostBridge::new());
        let b = bridge.clone();
        let waiter = tokio::spawn(async move { b.call(HostCall::Ping, Duration::from_secs(30)).await });
        while bridge.pending() == 0 {
            tokio::task::yield_now().await;
        }
        bridge.close();
        let err = waiter.await.expect("task").expect_err("closed");
        assert_eq!(err.code, ErrorCode::NotRunning);
        assert_eq!(bridge.next_request().await, None);
        let err = bridge
            .call(HostCall::Ping, Duration::from_secs(1))
            .await
            .expect_err("closed");
        assert_eq!(err.code, ErrorCode::NotRunning);
    }

    #[tokio::test]
    async fn tool_invocations_serialize_with_camel_case_fields() {
        let req = HostRequest {
            id: 7,
            call: HostCall::InvokeTool {
                tool: "web_search".into(),
                args: serde_json::json!({"query": "x"}),
                agent_id: Some("main".into()),
            },
        };
        assert_eq!(
            serde_json::to_string(&req).expect("json"),
            r#"{"id":7,"kind":"invokeTool","tool":"web_search","args":{"query":"x"},"agentId":"main"}"#
        );
    }
}
