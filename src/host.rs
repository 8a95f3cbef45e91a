//! The host bridge: requests from the core to the OpenClaw host (the JS shim), pulled by the host.
//!
//! Some work only the host can do: resolve a provider's credentials and base URL from OpenClaw's
//! config and auth store, run a local agent through `api.runtime.subagent`, write config. The
//! core asks through this bridge; the shim pulls requests with `nextHostRequest()` and answers
//! with `hostReply(id, …)`, so the core never calls into JS and never waits on the JS thread.
//!
//! Flow of one host call:
//! ```text
//! core:  bridge.call(kind, params) → HostCall (pending entry id → bounded reply channel)
//! host:  nextHostRequest() → {id, kind, params} → does the work
//!        hostReply(id, "event", data)*  → HostCall::next() yields HostReply::Event
//!        hostReply(id, "result" | "error", …) → the last item; the pending entry is removed
//! core:  dropping a HostCall before its end queues {kind: "cancel", params: {id}} for the host
//! ```
//! Bounds: at most [`MAX_PENDING`] calls in flight (more fail at once with `Busy`-style
//! `Unreachable`), at most [`MAX_QUEUED`] requests waiting for the host, and at most
//! [`REPLY_BUFFER`] unread replies per call (a host that outruns its consumer fails that call
//! with a clear error instead of buffering without bound). When no host has attached (Rust
//! tests, a host that never pulls) calls fail immediately with `NotRunning`.
//!
//! Replies arrive on the host's thread (the JS thread in the product) and wake their consumer
//! on the node's thread through [`HostBridge::wakes`]: at once while the host is quiet, once
//! per tick while it is busy (`super::wake`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use super::wake::{Wakes, WrappedWaker};
use crate::error::{Error, ErrorCode, Result};

/// Most host calls in flight at once.
pub const MAX_PENDING: usize = 4096;
/// Most requests queued for the host before it pulls them.
pub const MAX_QUEUED: usize = 4096;
/// Most unread replies (events) buffered per call.
pub const REPLY_BUFFER: usize = 1024;

/// What the core asks the host for. The shim keys its handlers by [`HostKind::as_str`]; JS
/// sees the same strings as the `HostRequestKind` union.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// `agents.list`: the agents this gateway has (handoff checks the target against them).
    AgentsList,
    /// `agent.run`: run a handoff's task on an agent, streaming its output.
    AgentRun,
    /// `agent.abort`: abort a run the caller gave up on.
    AgentAbort,
    /// `agent.send`: deliver a one-way message into an agent's session.
    AgentSend,
    /// `providers.sync`: write this node's `models.providers` entries.
    ProvidersSync,
    /// `model.upstream`: resolve a shared model's upstream URL and key.
    ModelUpstream,
    /// `cancel`: the core gave up on a call (`params.id` = the call's id).
    Cancel,
}

impl HostKind {
    /// Every kind, for tests and the binding.
    pub const ALL: [HostKind; 7] = [
        HostKind::AgentsList,
        HostKind::AgentRun,
        HostKind::AgentAbort,
        HostKind::AgentSend,
        HostKind::ProvidersSync,
        HostKind::ModelUpstream,
        HostKind::Cancel,
    ];

    /// The kind's name on the host side.
    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::AgentsList => "agents.list",
            HostKind::AgentRun => "agent.run",
            HostKind::AgentAbort => "agent.abort",
            HostKind::AgentSend => "agent.send",
            HostKind::ProvidersSync => "providers.sync",
            HostKind::ModelUpstream => "model.upstream",
            HostKind::Cancel => "cancel",
        }
    }
}

impl std::fmt::Display for HostKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request kind the core sends when it gives up on a call (`params.id` = the call's id).
pub const KIND_CANCEL: HostKind = HostKind::Cancel;

/// One request for the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRequest {
    pub id: u64,
    pub kind: HostKind,
    pub params: Value,
}

/// One answer from the host.
#[derive(Debug, Clone, PartialEq)]
pub enum HostReply {
    /// A progress item; more follow.
    Event(Value),
    /// The final value.
    Result(Value),
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<HostRequest>,
    pending: HashMap<u64, mpsc::Sender<Result<HostReply>>>,
    next_id: u64,
    attached: bool,
    closed: bool,
}

/// The bridge. Cheap to clone through `Arc`; the std `Mutex` is never held across `.await`.
#[derive(Default)]
pub struct HostBridge {
    inner: Mutex<Inner>,
    notify: Notify,
    wakes: Arc<Wakes>,
}

impl HostBridge {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// How replies wake their consumers; the node runs its pump while it runs.
    pub fn wakes(&self) -> Arc<Wakes> {
        Arc::clone(&self.wakes)
    }

    /// Whether a host is pulling requests.
    pub fn attached(&self) -> bool {
        let g = self.lock();
        g.attached && !g.closed
    }

    /// Send `kind` with `params` to the host. Fails at once when no host is attached or the
    /// bridge is full.
    pub fn call(self: &Arc<Self>, kind: HostKind, params: Value) -> Result<HostCall> {
        let (tx, rx) = mpsc::channel(REPLY_BUFFER);
        let id = {
            let mut g = self.lock();
            if !g.attached || g.closed {
                return Err(Error::new(
                    ErrorCode::NotRunning,
                    format!("host request {kind}: the OpenClaw host is not attached to the core"),
                ));
            }
            if g.pending.len() >= MAX_PENDING || g.queue.len() >= MAX_QUEUED {
                return Err(Error::new(
                    ErrorCode::Unreachable,
                    format!(
                        "host request {kind}: {} host calls already in flight (limit {MAX_PENDING})",
                        g.pending.len()
                    ),
                ));
            }
            g.next_id += 1;
            let id = g.next_id;
            g.pending.insert(id, tx);
            g.queue.push_back(HostRequest { id, kind, params });
            id
        };
        self.notify.notify_one();
        Ok(HostCall {
            id,
            kind,
            rx,
            waker: WrappedWaker::default(),
            bridge: Arc::clone(self),
            done: false,
        })
    }

    /// The next request for the host, waiting for one; `None` once the bridge is closed. The
    /// first call marks the host as attached.
    pub async fn next_request(&self) -> Option<HostRequest> {
        loop {
            let notified = self.notify.notified();
            {
                let mut g = self.lock();
                if g.closed {
                    return None;
                }
                g.attached = true;
                if let Some(r) = g.queue.pop_front() {
                    return Some(r);
                }
            }
            notified.await;
        }
    }

    /// Deliver the host's answer for call `id`. `Ok(false)`: the call is gone (cancelled or
    /// answered already) and the reply was discarded, which the host may ignore.
    pub fn reply(&self, id: u64, reply: Result<HostReply>) -> bool {
        let last = !matches!(reply, Ok(HostReply::Event(_)));
        let mut g = self.lock();
        let Some(tx) = g.pending.get(&id) else {
            return false;
        };
        match tx.try_send(reply) {
            Ok(()) => {
                if last {
                    g.pending.remove(&id);
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The consumer fell REPLY_BUFFER replies behind: fail the call rather than
                // buffer without bound. The consumer sees the channel close and reports it.
                g.pending.remove(&id);
                drop(g);
                self.cancel_on_host(id);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                g.pending.remove(&id);
                false
            }
        }
    }

    /// Detach: every pending call fails (`NotRunning`), `next_request` returns `None`.
    pub fn close(&self) {
        let pending: Vec<_> = {
            let mut g = self.lock();
            g.closed = true;
            g.queue.clear();
            g.pending.drain().map(|(_, tx)| tx).collect()
        };
        for tx in pending {
            let _ = tx.try_send(Err(Error::new(
                ErrorCode::NotRunning,
                "the node stopped before the host answered",
            )));
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// Reopen after a stop (the host attaches again when it pulls). A bridge that was never
    /// closed keeps its attached host: the shim starts pulling before `start()`.
    pub fn reopen(&self) {
        let mut g = self.lock();
        if g.closed {
            g.closed = false;
            g.attached = false;
        }
    }

    /// Calls in flight.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    fn cancel_on_host(&self, id: u64) {
        {
            let mut g = self.lock();
            if g.closed {
                return;
            }
            // A request the host has not pulled yet is simply withdrawn.
            if let Some(pos) = g.queue.iter().position(|r| r.id == id) {
                g.queue.remove(pos);
                return;
            }
            g.queue.push_back(HostRequest {
                id,
                kind: KIND_CANCEL,
                params: serde_json::json!({ "id": id }),
            });
        }
        self.notify.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One call to the host. Dropping it before the last reply cancels it on the host.
pub struct HostCall {
    id: u64,
    kind: HostKind,
    rx: mpsc::Receiver<Result<HostReply>>,
    /// The consumer's waker, wrapped so the host's replies wake it through the bridge's wakes.
    waker: WrappedWaker,
    bridge: Arc<HostBridge>,
    done: bool,
}

impl HostCall {
    /// The call's id (as the host sees it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next reply; `None` after the result or an error.
    pub async fn next(&mut self) -> Option<Result<HostReply>> {
        if self.done {
            return None;
        }
        let (rx, waker, wakes) = (&mut self.rx, &mut self.waker, &self.bridge.wakes);
        let item = std::future::poll_fn(|cx| waker.poll(Some(wakes), cx, |cx| rx.poll_recv(cx)));
        let item = match item.await {
            Some(item) => item,
            None => Err(Error::new(
                ErrorCode::Internal,
                format!(
                    "host request {}: more than {REPLY_BUFFER} unread replies; the call was dropped",
                    self.kind
                ),
            )),
        };
        if !matches!(item, Ok(HostReply::Event(_))) {
            self.done = true;
        }
        Some(item)
    }

    /// Wait for the final value, skipping events.
    pub async fn result(mut self) -> Result<Value> {
        while let Some(item) = self.next().await {
            match item? {
                HostReply::Event(_) => continue,
                HostReply::Result(v) => return Ok(v),
            }
        }
        Err(Error::new(
            ErrorCode::Internal,
            format!("host request {}: ended without a result", self.kind),
        ))
    }
}

impl Drop for HostCall {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let was_pending = self.bridge.lock().pending.remove(&self.id).is_some();
        if was_pending {
            self.bridge.cancel_on_host(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn without_a_host_calls_fail_at_once() {
        let b = HostBridge::new();
        let e = b.call(HostKind::ModelUpstream, json!({})).err().unwrap();
        assert_eq!(e.code, ErrorCode::NotRunning);
        assert!(e.message.contains("model.upstream"), "{}", e.message);
    }

    #[test]
    fn events_then_result_in_order_and_late_replies_are_discarded() {
        rt().block_on(async {
            let b = HostBridge::new();
            let host = Arc::clone(&b);
            let first = tokio::spawn(async move { host.next_request().await });
            tokio::task::yield_now().await;
            let mut call = b.call(HostKind::AgentRun, json!({"task": "x"})).unwrap();
            let req = first.await.unwrap().unwrap();
            assert_eq!(req.kind, HostKind::AgentRun);
            assert_eq!(req.params, json!({"task": "x"}));
            assert!(b.reply(req.id, Ok(HostReply::Event(json!(1)))));
            assert!(b.reply(req.id, Ok(HostReply::Event(json!(2)))));
            assert!(b.reply(req.id, Ok(HostReply::Result(json!("done")))));
            assert!(!b.reply(req.id, Ok(HostReply::Result(json!("again")))));
            assert_eq!(
                call.next().await.unwrap().unwrap(),
                HostReply::Event(json!(1))
            );
            assert_eq!(
                call.next().await.unwrap().unwrap(),
                HostReply::Event(json!(2))
            );
            assert_eq!(
                call.next().await.unwrap().unwrap(),
                HostReply::Result(json!("done"))
            );
            assert!(call.next().await.is_none());
            assert_eq!(b.pending(), 0);
        });
    }

    #[test]
    fn dropping_a_pulled_call_sends_cancel_and_an_unpulled_one_is_withdrawn() {
        rt().block_on(async {
            let b = HostBridge::new();
            b.lock().attached = true;
            let pulled = b.call(HostKind::AgentsList, json!(null)).unwrap();
            let unpulled = b.call(HostKind::AgentSend, json!(null)).unwrap();
            let r = b.next_request().await.unwrap();
            assert_eq!(r.kind, HostKind::AgentsList);
            drop(unpulled);
            drop(pulled);
            let c = b.next_request().await.unwrap();
            assert_eq!(c.kind, KIND_CANCEL);
            assert_eq!(c.params, json!({"id": r.id}));
            assert!(
                b.lock().queue.is_empty(),
                "the unpulled request was withdrawn"
            );
            assert!(!b.reply(r.id, Ok(HostReply::Result(json!(1)))));
        });
    }

    #[test]
    fn a_host_that_outruns_its_consumer_fails_that_call_only() {
        rt().block_on(async {
            let b = HostBridge::new();
            b.lock().attached = true;
            let mut slow = b.call(HostKind::AgentRun, json!(null)).unwrap();
            let mut other = b.call(HostKind::AgentSend, json!(null)).unwrap();
            let s = b.next_request().await.unwrap();
            let o = b.next_request().await.unwrap();
            for i in 0..REPLY_BUFFER {
                assert!(b.reply(s.id, Ok(HostReply::Event(json!(i)))));
            }
            assert!(!b.reply(s.id, Ok(HostReply::Event(json!("overflow")))));
            assert!(b.reply(o.id, Ok(HostReply::Result(json!("fine")))));
            assert_eq!(
                other.next().await.unwrap().unwrap(),
                HostReply::Result(json!("fine"))
            );
            for _ in 0..REPLY_BUFFER {
                assert!(matches!(slow.next().await, Some(Ok(HostReply::Event(_)))));
            }
            let e = slow.next().await.unwrap().unwrap_err();
            assert!(e.message.contains("unread replies"), "{}", e.message);
            let cancel = b.next_request().await.unwrap();
            assert_eq!(cancel.kind, KIND_CANCEL);
        });
    }

    #[test]
    fn close_fails_pending_calls_and_ends_the_pull() {
        rt().block_on(async {
            let b = HostBridge::new();
            b.lock().attached = true;
            let call = b.call(HostKind::AgentRun, json!(null)).unwrap();
            b.close();
            let e = call.result().await.unwrap_err();
            assert_eq!(e.code, ErrorCode::NotRunning);
            assert!(b.next_request().await.is_none());
            assert!(b.call(HostKind::AgentSend, json!(null)).is_err());
            b.reopen();
            assert!(!b.attached());
        });
    }

    /// A host thread replying faster than once per tick wakes its consumer through the pump
    /// (coalesced), and every reply still arrives, in order.
    #[test]
    fn a_busy_host_wakes_its_consumer_once_per_tick_and_loses_nothing() {
        const EVENTS: usize = 1000;
        let node_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let b = HostBridge::new();
        b.lock().attached = true;
        let pump = node_rt.spawn(b.wakes().pump());
        let mut call = b.call(HostKind::AgentRun, json!(null)).unwrap();
        let id = node_rt.block_on(b.next_request()).unwrap().id;
        let consumer = node_rt.spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = call.next().await {
                match item.unwrap() {
                    HostReply::Event(v) => got.push(v.as_u64().unwrap()),
                    HostReply::Result(_) => break,
                }
            }
            got
        });
        let host = Arc::clone(&b);
        std::thread::spawn(move || {
            for i in 0..EVENTS {
                assert!(host.reply(id, Ok(HostReply::Event(json!(i)))));
                if i % 100 == 99 {
                    // Let the consumer catch up so the bounded buffer never fills.
                    std::thread::sleep(std::time::Duration::from_millis(3));
                }
            }
            assert!(host.reply(id, Ok(HostReply::Result(json!("done")))));
        })
        .join()
        .unwrap();
        let got = node_rt
            .block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), consumer).await
            })
            .expect("every reply within 10 s")
            .unwrap();
        assert_eq!(got, (0..EVENTS as u64).collect::<Vec<_>>());
        let (direct, coalesced) = b.wakes().counts();
        assert!(coalesced > 0, "no wake was coalesced ({direct} direct)");
        pump.abort();
    }

    #[test]
    fn the_pending_bound_is_enforced() {
        let b = HostBridge::new();
        b.lock().attached = true;
        let mut calls = Vec::new();
        for _ in 0..MAX_PENDING {
            calls.push(b.call(HostKind::AgentRun, Value::Null).unwrap());
        }
        let e = b.call(HostKind::AgentRun, Value::Null).err().unwrap();
        assert!(e.message.contains("limit"), "{}", e.message);
    }

    #[test]
    fn every_kind_has_its_own_dotted_name() {
        let names: std::collections::HashSet<&str> =
            HostKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), HostKind::ALL.len());
        assert_eq!(HostKind::AgentRun.to_string(), "agent.run");
        assert_eq!(KIND_CANCEL.as_str(), "cancel");
    }
}
