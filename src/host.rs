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
//!
//! # How long the core waits for the host
//! The host is OpenClaw's JavaScript: a loaded gateway can leave its event loop blocked for
//! seconds, while the core (its own threads) keeps answering the mesh. So no host round trip
//! has a fixed deadline of its own; each waits for a [`HostDeadline`]:
//! - one that serves a mesh call (the `agents.list` check of a handoff or a message, the
//!   `agent.send` of a message, the `model.upstream` of a model request) waits as long as that
//!   call's own timeout allows: the caller's deadline as its `call` frame carried it, at most the
//!   call's bound on this node, less [`answer_margin`] so the answer (or the error naming the
//!   request) reaches the caller before it gives up on its own ([`HostDeadline::serving`]);
//! - one that serves no call (the provider sync, the abort of a run the caller gave up on)
//!   waits `hostTimeoutMs` ([`crate::config::Config::host_timeout_ms`]).
//!
//! Running out fails with `Timeout` naming the request, how long it waited and the timeout
//! that governed it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Most of a caller's deadline kept back so the serving node's answer reaches the caller in
/// time: 1 s covers a relayed hop on a loaded machine.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// Stands in for a deadline beyond what an `Instant` can hold: about 30 years.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// The part of a caller's `limit` kept back for the answer's way back: [`ANSWER_MARGIN`], or a
/// tenth of a short limit (so a 1 s limit still leaves 900 ms to wait).
pub fn answer_margin(limit: Duration) -> Duration {
    ANSWER_MARGIN.min(limit / 10)
}

/// How long a host round trip may take, and which timeout said so (named in the error when it
/// runs out). Several round trips of one call may share one deadline.
#[derive(Debug, Clone)]
pub struct HostDeadline {
    at: tokio::time::Instant,
    total: Duration,
    why: String,
}

impl HostDeadline {
    /// `total` from now, set by `why` (e.g. `hostTimeoutMs (30000 ms)`).
    pub fn after(total: Duration, why: impl Into<String>) -> Self {
        let now = tokio::time::Instant::now();
        HostDeadline {
            // A caller's deadline is not trusted to be sane: no overflow, just "very late".
            at: now.checked_add(total).unwrap_or(now + FAR_FUTURE),
            total,
            why: why.into(),
        }
    }

    /// For a round trip that serves a mesh call: the smallest of `limits` (each a timeout of
    /// that call, counted from now, and what it is: the caller's deadline, the call's bound
    /// here), less [`answer_margin`] so the answer reaches the caller before that timeout fires
    /// there. `None` entries (a deadline the caller did not send) are skipped; with none left
    /// the round trip may not wait at all.
    pub fn serving(limits: impl IntoIterator<Item = Option<(Duration, String)>>) -> Self {
        let (limit, why) = limits
            .into_iter()
            .flatten()
            .min_by_key(|(d, _)| *d)
            .unwrap_or((Duration::ZERO, "no timeout".into()));
        let margin = answer_margin(limit);
        let why = if margin.is_zero() {
            why
        } else {
            format!("{why} less {} for the answer's way back", fmt_secs(margin))
        };
        Self::after(limit - margin, why)
    }

    /// The time this deadline allowed in all.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// When it runs out.
    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }

    /// What set it.
    pub fn why(&self) -> &str {
        &self.why
    }

    /// The `Timeout` error of `what` (e.g. `host agents.list`) after waiting `waited`.
    pub fn expired(&self, what: &str, waited: Duration) -> Error {
        // A deadline shared by several round trips leaves the later ones only its rest.
        let of = if self.total.saturating_sub(waited) < Duration::from_millis(50) {
            "the deadline".to_string()
        } else {
            format!("the rest of a {} deadline", fmt_secs(self.total))
        };
        Error::new(
            ErrorCode::Timeout,
            format!(
                "{what}: no answer from OpenClaw within {}, {of} set by {}; OpenClaw may be \
                 overloaded or its event loop blocked",
                fmt_secs(waited),
                self.why
            ),
        )
    }
}

/// A duration as seconds with one decimal (`12.0 s`), for messages.
pub fn fmt_secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
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

    /// Wait for the final value (skipping events) until `deadline`; running out fails with
    /// `Timeout` naming the request, how long it waited and what set the deadline, and cancels
    /// the request on the host.
    pub async fn result_by(self, deadline: &HostDeadline) -> Result<Value> {
        let kind = self.kind;
        let t0 = tokio::time::Instant::now();
        match tokio::time::timeout_at(deadline.at, self.result()).await {
            Ok(r) => r,
            Err(_) => Err(deadline.expired(&format!("host {kind}"), t0.elapsed())),
        }
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

    /// A current-thread runtime on tokio's paused clock (deadlines pass at once).
    fn paused_rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_serving_deadline_is_the_smallest_limit_less_the_answers_way_back() {
        let rt = paused_rt();
        rt.block_on(async {
            let d = HostDeadline::serving([
                Some((Duration::from_secs(60), "a".to_string())),
                None,
                Some((Duration::from_secs(20), "b".to_string())),
            ]);
            assert_eq!(d.total(), Duration::from_secs(19));
            assert_eq!(d.why(), "b less 1.0 s for the answer's way back");
            // A short limit keeps nine tenths of itself.
            let d = HostDeadline::serving([Some((Duration::from_secs(2), "c".to_string()))]);
            assert_eq!(d.total(), Duration::from_millis(1800));
            // No limit at all: no wait.
            assert_eq!(HostDeadline::serving([None]).total(), Duration::ZERO);
            // A caller's absurd deadline neither overflows nor panics.
            let d = HostDeadline::after(Duration::MAX, "x");
            assert!(d.at() > tokio::time::Instant::now() + Duration::from_secs(365 * 86400));
        });
    }

    #[test]
    fn a_host_call_past_its_deadline_fails_naming_what_governed_it_and_is_cancelled_on_the_host() {
        let rt = paused_rt();
        rt.block_on(async {
            let b = HostBridge::new();
            b.lock().attached = true;
            let call = b.call(HostKind::AgentsList, json!({})).unwrap();
            let pulled = b.next_request().await.unwrap();
            let d = HostDeadline::after(Duration::from_secs(12), "the test's 12 s");
            let e = call.result_by(&d).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::Timeout);
            assert_eq!(
                e.message,
                "host agents.list: no answer from OpenClaw within 12.0 s, the deadline set by \
                 the test's 12 s; OpenClaw may be overloaded or its event loop blocked"
            );
            let cancel = b.next_request().await.unwrap();
            assert_eq!(cancel.kind, KIND_CANCEL);
            assert_eq!(cancel.params, json!({"id": pulled.id}));
            // A second call sharing the deadline gets only its rest, and says so.
            let call = b.call(HostKind::AgentSend, json!({})).unwrap();
            let d = HostDeadline::after(Duration::from_secs(30), "y");
            tokio::time::sleep(Duration::from_secs(20)).await;
            let e = call.result_by(&d).await.unwrap_err();
            assert!(
                e.message.starts_with(
                    "host agent.send: no answer from OpenClaw within 10.0 s, the rest of a \
                     30.0 s deadline set by y;"
                ),
                "{}",
                e.message
            );
        });
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
