//! The node actor: one task owns the sans-IO [`Mesh`] and everything that must agree with it
//! (the live link writers, pending requests, the published snapshot).
//!
//! Flow:
//! ```text
//! link tasks / listener / dialers / Node handle ──Input (bounded mpsc, send().await)──▶ actor
//!     actor: feed the mesh (handle_link_up / handle_data / start_call / ...), tick when due
//!     actor: drain mesh.poll_output():
//!         Send    → that link's bounded writer queue (try_send; full → drop, count, maybe close)
//!         Close   → the link task's close request (on the same queue, seen first)
//!         Deliver → app dispatch: `call` → a registered [`Service`] task (bounded);
//!                   reply/chunk/end → pending requests and open streams (bounded, try_send);
//!                   credit/cancel/unreachable → the served call's credit and cancel signal
//!         Event   → one log line, snapshot refreshed
//!     actor ──watch──▶ MeshSnapshot (Node::status stays synchronous)
//! ```
//! # Layout
//! - `mod.rs`: the actor's state, its run loop (inputs in batches, ticks, outputs, snapshot),
//!   shutdown, and `spawn` with the supervision that restarts it after a panic.
//! - `handle`: the actor's inputs and `ActorHandle` (also the features' `rpc::Port`).
//! - `calls`: calls started here (requests, streams, credit) and served here (one task per
//!   call, credit, cancel), and the dispatch of frames addressed to this node.
//! - `links`: the live link table, carrying out the core's outputs (writer queues, the
//!   slow-peer rule, closes) and one log line per mesh event.
//!
//! Edges into the actor await (backpressure on a link reader is fine: it just stops reading);
//! edges out of it never await, so a slow peer can neither stall the actor nor other links, and
//! no cycle of bounded channels can deadlock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Semaphore};

pub(crate) use super::queue::CloseCmd;
mod calls;
mod handle;
mod links;

use super::queue::{LinkOut, PushError, QueueSender};
use super::supervisor::ActorHealth;
use crate::error::{panic_message, Error, ErrorCode, Result};
use crate::events::{EventQueue, Level};
use crate::identity::key::{Fingerprint, PublicKey};
use crate::mesh::{CallFailure, Direction, DownReason, LinkId, Mesh, MeshEvent, Output, SendError};
use crate::proto::{Body, CallId, CodecError, Header, NodeId, RejectCode, STREAM_WINDOW_CHUNKS};
use crate::rpc::port::WaitingSend;
use crate::rpc::stream::{StreamMsg, STREAM_CHANNEL};
use crate::rpc::{
    CallCtx, ChunkSink, Command, MeshClient, MeshSnapshot, Port, Services, StreamItem,
    MAX_SERVED_CALLS,
};

/// Capacity of the actor's input channel, in messages. Large enough that link readers rarely
/// wait on a busy actor; small enough that a stalled actor stops the readers (and so the
/// peers, through TCP) instead of buffering without bound.
pub const INPUT_QUEUE: usize = 4096;
/// Most inputs the actor handles in one turn before it ticks, drains outputs and publishes:
/// amortises that per-turn work over a burst, while a turn stays a few hundred µs at most.
const INPUT_BATCH: usize = 64;
pub use super::queue::{WRITER_QUEUE_BYTES, WRITER_QUEUE_FRAMES};
/// A link whose queue refuses frames and does not drain back to half of its bounds within this
/// time is closed as a slow peer: 5 s is far longer than any healthy burst takes to drain, and
/// short enough that callers fail over.
pub const SLOW_PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// ... or after this many frames dropped in that state, whichever comes first: a peer that is
/// 256 frames behind a full queue is not catching up.
pub const SLOW_PEER_MAX_DROPS: u32 = 256;
/// WebSocket close code for a slow peer: 1013 "try again later" (RFC 6455 registry). The
/// protocol's 4000-range codes are for handshake and protocol errors; this is neither.
pub const CLOSE_SLOW_PEER: u16 = 1013;
/// Reason sent with [`CLOSE_SLOW_PEER`] and logged.
pub const SLOW_PEER_REASON: &str = "send queue full (slow peer)";
/// Counters-only snapshot refreshes are throttled to one per 100 ms; events publish at once.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);
/// Most credit a served call may bank beyond its window: a buggy or hostile caller cannot
/// overflow the semaphore or let a producer run unbounded ahead.
const MAX_BANKED_CREDIT: usize = 4 * STREAM_WINDOW_CHUNKS as usize;

/// Milliseconds since `epoch` (the node's monotonic mesh clock).
pub(crate) fn now_ms(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

use calls::{OpenStream, PendingRequest, Served};
pub(crate) use handle::{ActorHandle, Input, LinkRegistration};
use links::LinkEntry;

/// The actor's state. Built by [`spawn`]; lives in one task.
struct Actor {
    mesh: Mesh,
    epoch: Instant,
    node_id: NodeId,
    links: HashMap<LinkId, LinkEntry>,
    pending: HashMap<CallId, PendingRequest>,
    streams: HashMap<CallId, OpenStream>,
    served: HashMap<(NodeId, CallId), Served>,
    services: Arc<Services>,
    /// Our own input queue, for the tasks of served calls.
    port: Arc<dyn Port>,
    events: Arc<EventQueue>,
    /// Shared with the supervisor, so a restarted actor publishes to the same receivers.
    snapshot: Arc<watch::Sender<MeshSnapshot>>,
    slow_peer_drops: u64,
    slow_peer_closes: u64,
    /// Counters changed since the last publish.
    dirty: bool,
    /// Something an operator would look at changed: publish now.
    urgent: bool,
    last_publish: Instant,
    trust: TrustSink,
    /// The trust rows last published, and the core's trust counter they were built at.
    trust_rows: (Option<u64>, Arc<Vec<crate::mesh::trust::TrustRow>>),
}

/// A change to what the node trusts, for the shell to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustChange {
    /// `node` was bound to `key` on first contact.
    Learned { node: NodeId, key: PublicKey },
    /// `offered` was refused for `node` (kept for status).
    Refused { node: NodeId, offered: PublicKey },
    /// An operator reset `node`'s trust: forget its key.
    Reset { node: NodeId },
}

/// Where trust changes go (the app persists them off the actor's thread).
pub type TrustSink = Arc<dyn Fn(TrustChange) + Send + Sync>;

/// Builds a fresh mesh core for a restarted actor.
pub(crate) type MeshFactory = Box<dyn FnMut() -> Result<Mesh> + Send>;

/// Start the actor task on the current runtime. Returns the handle, the snapshot receiver and
/// the task's future (the caller spawns it into its `JoinSet`). The task supervises the actor:
/// a panic is recorded in `health` and a fresh actor (on a core from `remake`) takes over the
/// same channels after a backoff (see [`super::supervisor`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    mesh: Mesh,
    mut remake: MeshFactory,
    epoch: Instant,
    events: Arc<EventQueue>,
    shutdown: watch::Receiver<bool>,
    services: Services,
    health: Arc<ActorHealth>,
    trust: TrustSink,
) -> (
    ActorHandle,
    watch::Receiver<MeshSnapshot>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, mut rx) = mpsc::channel(INPUT_QUEUE);
    let (snap_tx, snap_rx) = watch::channel(MeshSnapshot::default());
    let snapshot = Arc::new(snap_tx);
    let services = Arc::new(services);
    let handle = ActorHandle { tx: tx.clone() };
    let task = async move {
        let mut shutdown = shutdown;
        let mut mesh = mesh;
        loop {
            let actor = Actor::new(
                mesh,
                epoch,
                Arc::clone(&events),
                Arc::clone(&snapshot),
                Arc::clone(&services),
                Arc::new(ActorHandle { tx: tx.clone() }),
                Arc::clone(&trust),
            );
            // The actor borrows the channel: a panic drops the actor (and with it its links,
            // pending calls and served calls) but not the channel the handles send on.
            let run = std::panic::AssertUnwindSafe(actor.run(&mut rx, &mut shutdown));
            let reason = match futures_util::FutureExt::catch_unwind(run).await {
                Ok(()) => return,
                Err(panic) => super::supervisor::panic_reason(&*panic),
            };
            mesh = match restart(reason, &health, &events, &mut shutdown, &mut remake).await {
                Some(m) => m,
                None => return,
            };
        }
    };
    (handle, snap_rx, task)
}

/// After a panic: record it, and unless the restart budget is spent or the node is stopping,
/// wait out the backoff and build a fresh core (`None`: do not restart).
async fn restart(
    reason: String,
    health: &ActorHealth,
    events: &EventQueue,
    shutdown: &mut watch::Receiver<bool>,
    remake: &mut MeshFactory,
) -> Option<Mesh> {
    let Some(delay) = health.fail(reason.clone()) else {
        events.push(
            Level::Error,
            format!(
                "{reason}; it failed {} times within {} s, so it is not restarted again: \
             restart the clawmatrix service",
                super::supervisor::MAX_RESTARTS + 1,
                super::supervisor::RESTART_WINDOW.as_secs()
            ),
        );
        return None;
    };
    events.push(
        Level::Error,
        format!(
            "{reason}; restarting it in {} ms (links reconnect)",
            delay.as_millis()
        ),
    );
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|s| *s) => {
            health.give_up(None);
            return None;
        }
        _ = tokio::time::sleep(delay) => {}
    }
    let mesh = match remake() {
        Ok(m) => m,
        Err(e) => {
            events.push(
                Level::Error,
                format!("node actor: cannot restart: {}", e.message),
            );
            health.give_up(Some(e.message));
            return None;
        }
    };
    let n = health.restarted();
    events.warn(format!(
        "node actor restarted ({n} restart{} since start)",
        if n == 1 { "" } else { "s" }
    ));
    Some(mesh)
}

impl Actor {
    fn new(
        mesh: Mesh,
        epoch: Instant,
        events: Arc<EventQueue>,
        snapshot: Arc<watch::Sender<MeshSnapshot>>,
        services: Arc<Services>,
        port: Arc<dyn Port>,
        trust: TrustSink,
    ) -> Self {
        Actor {
            node_id: mesh.node_id().to_string(),
            mesh,
            epoch,
            links: HashMap::new(),
            pending: HashMap::new(),
            streams: HashMap::new(),
            served: HashMap::new(),
            services,
            port,
            events,
            snapshot,
            slow_peer_drops: 0,
            slow_peer_closes: 0,
            dirty: true,
            urgent: true,
            last_publish: Instant::now(),
            trust,
            trust_rows: (None, Arc::default()),
        }
    }

    async fn run(mut self, rx: &mut mpsc::Receiver<Input>, shutdown: &mut watch::Receiver<bool>) {
        self.publish();
        // One timer for both deadlines, re-armed only when the earliest one moves: creating a
        // fresh `Sleep` per input registered and removed a timer entry for every frame.
        let timer = tokio::time::sleep_until(far_future());
        tokio::pin!(timer);
        let mut armed: Option<tokio::time::Instant> = None;
        let mut batch = 0;
        loop {
            let tick_at = self
                .mesh
                .poll_timeout()
                .map(|t| tokio::time::Instant::from_std(self.epoch + Duration::from_millis(t)));
            let publish_at = self
                .dirty
                .then(|| tokio::time::Instant::from_std(self.last_publish + SNAPSHOT_INTERVAL));
            let wake = match (tick_at, publish_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if wake != armed {
                if let Some(w) = wake {
                    timer.as_mut().reset(w);
                }
                armed = wake;
            }
            tokio::select! {
                biased;
                // 1. Shutdown first: a stop must never wait behind traffic.
                _ = shutdown.changed() => break,
                // 2. Inbound: link data, link lifecycle, handle commands; what is already
                //    queued is handled in the same turn (bounded), so the per-turn work below
                //    (deadlines, outputs, snapshot) is paid once per batch, not per frame.
                input = rx.recv() => match input {
                    Some(input) => {
                        self.handle(input);
                        batch = 1;
                        while batch < INPUT_BATCH {
                            match rx.try_recv() {
                                Ok(input) => self.handle(input),
                                Err(_) => break,
                            }
                            batch += 1;
                        }
                    }
                    None => break,
                },
                // 3. Timers: the mesh's next deadline or the throttled snapshot (run below).
                _ = &mut timer, if wake.is_some() => armed = None,
            }
            // Run a due tick here, also under a steady stream of inputs.
            let now = now_ms(self.epoch);
            if self.mesh.poll_timeout().is_some_and(|t| t <= now) {
                self.touch_streams();
                self.note_rx_progress(now);
                self.mesh.handle_tick(now);
                self.dirty = true;
            }
            self.drain_outputs();
            self.maybe_publish();
            if batch == INPUT_BATCH {
                // A full batch: let the link writers (same worker) take what we queued before
                // we take more. `try_recv` does not count against tokio's cooperative budget,
                // so without this the actor could fill a writer queue faster than it drains.
                tokio::task::yield_now().await;
            }
            batch = 0;
        }
        self.shutdown();
    }

    /// Graceful stop: `leave` on every link, close them with 1000 after a bounded flush (the
    /// link tasks do the flushing), fail pending requests, publish a final snapshot.
    fn shutdown(&mut self) {
        let now = now_ms(self.epoch);
        self.mesh.shutdown(now);
        self.drain_outputs();
        let left: Vec<LinkId> = self.links.keys().copied().collect();
        for link in left {
            self.close_link(link, crate::mesh::CLOSE_NORMAL, "leaving", true);
        }
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(Error::new(
                ErrorCode::Cancelled,
                format!("request to {}: the node stopped before an answer", p.dst),
            )));
        }
        for (_, s) in self.streams.drain() {
            let _ = s.tx.try_send(Err(Error::new(
                ErrorCode::Cancelled,
                format!("stream from {}: the node stopped before the end", s.dst),
            )));
        }
        for (_, s) in self.served.drain() {
            let _ = s.cancel.send(true);
            s.credit.close();
        }
        self.urgent = true;
        self.maybe_publish();
    }

    fn handle(&mut self, input: Input) {
        let now = now_ms(self.epoch);
        self.dirty = true;
        match input {
            Input::Admit { node, key, reply } => {
                let _ = reply.send(self.mesh.admit(&node, &key));
            }
            Input::KeyRefused { node, key } => {
                self.mesh.note_refused_key(now, &node, &key);
                self.urgent = true;
            }
            Input::ResetTrust { node, reply } => {
                let had = self.mesh.reset_trust(&node);
                self.events.info(format!(
                    "mesh: trust of {node} reset by the operator{}: its next key is trusted on \
                     first use",
                    if had { "" } else { " (no key was trusted)" }
                ));
                (self.trust)(TrustChange::Reset { node });
                self.urgent = true;
                let _ = reply.send(had);
            }
            Input::Connected { node, reply } => {
                let up = self.links.values().any(|l| l.peer == node);
                let _ = reply.send(up);
            }
            Input::HandshakeRejected { code } => {
                self.mesh.note_handshake_reject(code);
                self.urgent = true;
            }
            Input::LinkUp(reg) => {
                let reg = *reg;
                self.links.insert(
                    reg.link,
                    LinkEntry {
                        peer: reg.peer.clone(),
                        direction: reg.direction,
                        addr: reg.addr,
                        queue: reg.queue,
                        dropped: 0,
                        drops_while_full: 0,
                        full_since: None,
                    },
                );
                // The core may refuse (duplicate tie-break, capacity, self): it then emits a
                // Close for this link, which drain_outputs routes to the entry just added.
                self.mesh
                    .handle_link_up_keyed(now, reg.link, reg.peer, reg.key, reg.direction);
            }
            Input::Data { link, bytes } => {
                self.mesh.handle_data_owned(now, link, bytes);
                if let Some(e) = self.links.get(&link) {
                    if !e.queue.proved() && self.mesh.link_rtt(&e.peer).is_some() {
                        e.queue.set_proved();
                    }
                }
            }
            Input::TextAfterHandshake => {
                self.mesh.count_decode_error(&CodecError::BadHeader {
                    reason: "TEXT message after the handshake".to_string(),
                });
            }
            Input::LinkDown { link, reason } => {
                if self.links.remove(&link).is_some() {
                    self.mesh.handle_link_down(now, link, reason);
                }
            }
            Input::Call(cmd) => self.command(now, cmd),
            Input::Panic { reason } => panic!("{reason}"),
        }
    }

    fn maybe_publish(&mut self) {
        if self.urgent || (self.dirty && self.last_publish.elapsed() >= SNAPSHOT_INTERVAL) {
            self.publish();
        }
    }

    /// The trust rows for a snapshot, rebuilt only when the core's trust changed since.
    fn trust_view(&mut self) -> Arc<Vec<crate::mesh::trust::TrustRow>> {
        let now = self.mesh.trust_changes();
        if self.trust_rows.0 != Some(now) {
            self.trust_rows = (Some(now), Arc::new(self.mesh.trust_rows()));
        }
        Arc::clone(&self.trust_rows.1)
    }

    fn publish(&mut self) {
        let snap = MeshSnapshot {
            peers: self.mesh.peers(),
            stats: self.mesh.stats(),
            links_up: self.mesh.link_count(),
            slow_peer_drops: self.slow_peer_drops,
            slow_peer_closes: self.slow_peer_closes,
            at_ms: now_ms(self.epoch),
            trust: self.trust_view(),
        };
        self.snapshot.send_replace(snap);
        self.dirty = false;
        self.urgent = false;
        self.last_publish = Instant::now();
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}
