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
//! Edges into the actor await (backpressure on a link reader is fine: it just stops reading);
//! edges out of it never await, so a slow peer can neither stall the actor nor other links, and
//! no cycle of bounded channels can deadlock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Semaphore};

pub(crate) use super::queue::CloseCmd;
use super::queue::{LinkOut, PushError, QueueSender};
use super::supervisor::ActorHealth;
use crate::error::{panic_message, Error, ErrorCode, Result};
use crate::events::{EventQueue, Level};
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

/// Everything the actor needs to drive one authenticated link.
pub(crate) struct LinkRegistration {
    pub link: LinkId,
    pub peer: NodeId,
    pub direction: Direction,
    pub addr: String,
    /// The link's writer queue; it also carries the close request and the "proved" flag.
    pub queue: QueueSender,
}

/// Inputs of the actor.
pub(crate) enum Input {
    /// May `node` open a link now (`Mesh::admit`)?
    Admit {
        node: NodeId,
        reply: oneshot::Sender<std::result::Result<(), RejectCode>>,
    },
    /// Is a live link to `node` up (dialers skip peers connected inbound)?
    Connected {
        node: NodeId,
        reply: oneshot::Sender<bool>,
    },
    /// A handshake failed with `code` (already logged by the link task).
    HandshakeRejected { code: RejectCode },
    /// An authenticated link is ready to pump.
    LinkUp(Box<LinkRegistration>),
    /// One BINARY message from a link.
    Data { link: LinkId, bytes: Vec<u8> },
    /// A TEXT message after the handshake: counted as a decode error and dropped.
    TextAfterHandshake,
    /// The link task ended (peer closed, I/O error, or after our close).
    LinkDown { link: LinkId, reason: String },
    /// A command from a feature: a call, a stream, credit, a served call's output, a route.
    Call(Command),
    /// Panic in the actor (tests of the supervision: [`super::Node::debug_panic_actor`]).
    Panic { reason: String },
}

/// Cloneable handle to the actor's input channel.
#[derive(Clone)]
pub(crate) struct ActorHandle {
    pub(crate) tx: mpsc::Sender<Input>,
}

impl ActorHandle {
    /// `Mesh::admit(node)`; a stopped actor refuses with `capacity`.
    pub async fn admit(&self, node: &str) -> std::result::Result<(), RejectCode> {
        let (reply, rx) = oneshot::channel();
        let input = Input::Admit {
            node: node.to_string(),
            reply,
        };
        if self.tx.send(input).await.is_err() {
            return Err(RejectCode::Capacity);
        }
        rx.await.unwrap_or(Err(RejectCode::Capacity))
    }

    /// Whether a live link to `node` exists.
    pub async fn connected(&self, node: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        let input = Input::Connected {
            node: node.to_string(),
            reply,
        };
        if self.tx.send(input).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    pub async fn handshake_rejected(&self, code: RejectCode) {
        let _ = self.tx.send(Input::HandshakeRejected { code }).await;
    }

    /// Register a link; `false` when the actor is gone (the node is stopping).
    pub async fn link_up(&self, reg: LinkRegistration) -> bool {
        self.tx.send(Input::LinkUp(Box::new(reg))).await.is_ok()
    }

    /// Forward one binary message without waiting: `Ok(false)` when the actor is gone,
    /// `Err(input)` when its queue is full (the caller then waits with [`ActorHandle::send`]).
    pub fn try_data(&self, link: LinkId, bytes: Vec<u8>) -> std::result::Result<bool, Input> {
        match self.tx.try_send(Input::Data { link, bytes }) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(input)) => Err(input),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
        }
    }

    /// Queue `input`, waiting while the actor's queue is full; `false` when the actor is gone.
    pub async fn send(&self, input: Input) -> bool {
        self.tx.send(input).await.is_ok()
    }

    pub async fn text_after_handshake(&self) {
        let _ = self.tx.send(Input::TextAfterHandshake).await;
    }

    pub async fn link_down(&self, link: LinkId, reason: String) {
        let _ = self.tx.send(Input::LinkDown { link, reason }).await;
    }

    /// The features' API on this actor, reading `snapshot`.
    pub fn client(&self, snapshot: watch::Receiver<MeshSnapshot>) -> MeshClient {
        MeshClient::new(Arc::new(self.clone()), snapshot)
    }

    /// Make the actor panic with `reason` (tests of the supervision); `false` when its queue
    /// is full or it is gone.
    pub fn panic(&self, reason: &str) -> bool {
        self.tx
            .try_send(Input::Panic {
                reason: reason.to_string(),
            })
            .is_ok()
    }
}

impl Port for ActorHandle {
    fn try_send(
        &self,
        cmd: Command,
    ) -> std::result::Result<(), mpsc::error::TrySendError<Command>> {
        use mpsc::error::TrySendError;
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(Input::Call(cmd));
                Ok(())
            }
            Err(TrySendError::Full(())) => Err(TrySendError::Full(cmd)),
            Err(TrySendError::Closed(())) => Err(TrySendError::Closed(cmd)),
        }
    }

    fn send_waiting(&self, cmd: Command) -> WaitingSend<'_> {
        Box::pin(async move { self.tx.send(Input::Call(cmd)).await.is_ok() })
    }
}

struct LinkEntry {
    peer: NodeId,
    direction: Direction,
    addr: String,
    queue: QueueSender,
    /// Frames dropped on this link because its queue was full.
    dropped: u64,
    /// Frames dropped since the queue was last at most half full.
    drops_while_full: u32,
    /// When the queue first refused a frame since it was last at most half full.
    full_since: Option<Instant>,
}

/// A stream we opened.
struct OpenStream {
    dst: NodeId,
    tx: mpsc::Sender<StreamMsg>,
    /// Chunks the server may still send (window plus grants minus chunks received).
    allowed: u64,
    deadline_ms: u64,
    /// Chunks the consumer took (written by the `CallStream`), and the value last seen here.
    taken: Arc<AtomicU64>,
    seen_taken: u64,
}

/// A call we serve.
struct Served {
    credit: Arc<Semaphore>,
    cancel: watch::Sender<bool>,
    chunks: u64,
    cancelled: bool,
}

impl Drop for Served {
    /// A served call the actor forgets is over for the service too: when the actor is dropped
    /// (a panic and restart, or the node stopping) its services must stop their work (a remote
    /// exec's process tree, a handoff's agent run) instead of reading the dropped sender as
    /// "nobody can cancel any more". After a normal end the service has returned already.
    fn drop(&mut self) {
        let _ = self.cancel.send(true);
    }
}

struct PendingRequest {
    dst: NodeId,
    timeout_ms: u64,
    reply: oneshot::Sender<Result<Vec<u8>>>,
}

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
}

/// Builds a fresh mesh core for a restarted actor.
pub(crate) type MeshFactory = Box<dyn FnMut() -> Result<Mesh> + Send>;

/// Start the actor task on the current runtime. Returns the handle, the snapshot receiver and
/// the task's future (the caller spawns it into its `JoinSet`). The task supervises the actor:
/// a panic is recorded in `health` and a fresh actor (on a core from `remake`) takes over the
/// same channels after a backoff (see [`super::supervisor`]).
pub(crate) fn spawn(
    mesh: Mesh,
    mut remake: MeshFactory,
    epoch: Instant,
    events: Arc<EventQueue>,
    shutdown: watch::Receiver<bool>,
    services: Services,
    health: Arc<ActorHealth>,
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
            );
            // The actor borrows the channel: a panic drops the actor (and with it its links,
            // pending calls and served calls) but not the channel the handles send on.
            let run = std::panic::AssertUnwindSafe(actor.run(&mut rx, &mut shutdown));
            let panic = match futures_util::FutureExt::catch_unwind(run).await {
                Ok(()) => return,
                Err(panic) => panic,
            };
            let reason = super::supervisor::panic_reason(&*panic);
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
                return;
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
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            mesh = match remake() {
                Ok(m) => m,
                Err(e) => {
                    events.push(
                        Level::Error,
                        format!("node actor: cannot restart: {}", e.message),
                    );
                    health.give_up(Some(e.message));
                    return;
                }
            };
            let n = health.restarted();
            events.warn(format!(
                "node actor restarted ({n} restart{} since start)",
                if n == 1 { "" } else { "s" }
            ));
        }
    };
    (handle, snap_rx, task)
}

impl Actor {
    fn new(
        mesh: Mesh,
        epoch: Instant,
        events: Arc<EventQueue>,
        snapshot: Arc<watch::Sender<MeshSnapshot>>,
        services: Arc<Services>,
        port: Arc<dyn Port>,
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
            Input::Admit { node, reply } => {
                let _ = reply.send(self.mesh.admit(&node));
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
                    .handle_link_up(now, reg.link, reg.peer, reg.direction);
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

    /// A command from a feature (through [`MeshClient`], a [`CallStream`] or a served call).
    ///
    /// [`CallStream`]: crate::rpc::CallStream
    fn command(&mut self, now: u64, cmd: Command) {
        match cmd {
            Command::Request {
                dst,
                method,
                payload,
                timeout_ms,
                reply,
            } => {
                match self
                    .mesh
                    .start_call(now, dst.clone(), method, payload, timeout_ms)
                {
                    Ok(call_id) => {
                        self.pending.insert(
                            call_id,
                            PendingRequest {
                                dst,
                                timeout_ms,
                                reply,
                            },
                        );
                    }
                    Err(e) => {
                        let _ = reply.send(Err(send_error(&dst, &e)));
                    }
                }
            }
            Command::OpenStream {
                dst,
                method,
                payload,
                deadline_ms,
                reply,
            } => match self
                .mesh
                .start_call(now, dst.clone(), method, payload, deadline_ms)
            {
                Ok(call_id) => {
                    let (tx, rx) = mpsc::channel(STREAM_CHANNEL);
                    let taken = Arc::new(AtomicU64::new(0));
                    self.streams.insert(
                        call_id,
                        OpenStream {
                            dst,
                            tx,
                            allowed: STREAM_WINDOW_CHUNKS,
                            deadline_ms,
                            taken: Arc::clone(&taken),
                            seen_taken: 0,
                        },
                    );
                    if reply.send(Ok((call_id, rx, taken))).is_err() {
                        self.streams.remove(&call_id);
                        self.mesh.cancel_call(now, call_id, "caller gone");
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(send_error(&dst, &e)));
                }
            },
            Command::StreamCredit { call_id, chunks } => {
                if let Some(s) = self.streams.get_mut(&call_id) {
                    s.allowed = s.allowed.saturating_add(chunks);
                    self.mesh.send_credit(now, call_id, chunks);
                }
            }
            Command::StreamCancel { call_id } => {
                if self.streams.remove(&call_id).is_some() {
                    self.mesh
                        .cancel_call(now, call_id, "cancelled by the caller");
                }
            }
            Command::ServedChunk {
                from,
                call_id,
                bytes,
            } => {
                let Some(s) = self.served.get_mut(&(from.clone(), call_id)) else {
                    return;
                };
                if s.cancelled {
                    return;
                }
                let seq = s.chunks;
                s.chunks += 1;
                let body = Body::Chunk { call_id, seq };
                if let Err(e) = self.mesh.send(now, from.clone(), body, bytes) {
                    self.events.push(
                        Level::Debug,
                        format!("mesh: cannot stream to {from}: {e}; cancelling the call"),
                    );
                    self.cancel_served(&from, call_id);
                }
            }
            Command::ServedDone {
                from,
                call_id,
                result,
            } => {
                let Some(s) = self.served.remove(&(from.clone(), call_id)) else {
                    return;
                };
                if s.cancelled {
                    return;
                }
                let (ok, code, message, payload) = match result {
                    Ok(p) => (true, None, None, p),
                    Err(e) => (
                        false,
                        Some(e.code.as_str().to_string()),
                        Some(e.message),
                        Vec::new(),
                    ),
                };
                let body = if s.chunks > 0 {
                    Body::End {
                        call_id,
                        ok,
                        code,
                        message,
                    }
                } else {
                    Body::Reply {
                        call_id,
                        ok,
                        code,
                        message,
                    }
                };
                if let Err(e) = self.mesh.send(now, from.clone(), body, payload) {
                    self.events.push(
                        Level::Debug,
                        format!("mesh: cannot answer a call from {from}: {e}"),
                    );
                }
            }
            Command::Resolve {
                target,
                exclude,
                reply,
            } => {
                let _ = reply.send(self.mesh.resolve(&target, &exclude));
            }
        }
    }

    /// Before call deadlines are checked: a stream whose consumer took chunks since the last
    /// check is making progress (it may be draining a full buffer while the server waits for
    /// credit), so its inactivity deadline restarts.
    fn touch_streams(&mut self) {
        let now = now_ms(self.epoch);
        for (id, s) in &mut self.streams {
            let taken = s.taken.load(Ordering::Relaxed);
            if taken != s.seen_taken {
                s.seen_taken = taken;
                self.mesh.touch_call(now, *id);
            }
        }
    }

    /// Signal a served call's task to stop; its later chunks and result are dropped.
    fn cancel_served(&mut self, from: &str, call_id: CallId) {
        if let Some(s) = self.served.get_mut(&(from.to_string(), call_id)) {
            s.cancelled = true;
            let _ = s.cancel.send(true);
            s.credit.close();
        }
    }

    /// Start serving a `call`: a registered service runs as its own task (bounded).
    fn serve_call(&mut self, from: NodeId, call_id: CallId, method: String, payload: Vec<u8>) {
        let now = now_ms(self.epoch);
        let refuse = |code: &str, message: String| Body::Reply {
            call_id,
            ok: false,
            code: Some(code.to_string()),
            message: Some(message),
        };
        let key = (from.clone(), call_id);
        if let Some(answer) = self
            .services
            .get(&method)
            .and_then(|s| s.answer_inline(&payload))
        {
            let (body, payload) = match answer {
                Ok(p) => (
                    Body::Reply {
                        call_id,
                        ok: true,
                        code: None,
                        message: None,
                    },
                    p,
                ),
                Err(e) => (refuse(e.code.as_str(), e.message), Vec::new()),
            };
            if let Err(e) = self.mesh.send(now, from.clone(), body, payload) {
                self.events.push(
                    Level::Debug,
                    format!("mesh: cannot answer {method} from {from}: {e}"),
                );
            }
            return;
        }
        let body = match self.services.get(&method) {
            None => Some(refuse(
                "unknown_method",
                format!("unknown method {method:?} on {}", self.node_id),
            )),
            Some(_) if self.served.contains_key(&key) => None,
            Some(_) if self.served.len() >= MAX_SERVED_CALLS => Some(refuse(
                "busy",
                format!(
                    "{} is serving {MAX_SERVED_CALLS} calls already; try again later",
                    self.node_id
                ),
            )),
            Some(svc) => {
                let svc = Arc::clone(svc);
                let credit = Arc::new(Semaphore::new(STREAM_WINDOW_CHUNKS as usize));
                let (cancel, cancel_rx) = watch::channel(false);
                self.served.insert(
                    key,
                    Served {
                        credit: Arc::clone(&credit),
                        cancel,
                        chunks: 0,
                        cancelled: false,
                    },
                );
                let port = Arc::clone(&self.port);
                let task_from = from.clone();
                let ctx = CallCtx {
                    from: from.clone(),
                    method,
                    sink: ChunkSink::new(
                        Arc::clone(&port),
                        from.clone(),
                        call_id,
                        credit,
                        cancel_rx.clone(),
                    ),
                    cancel: cancel_rx,
                };
                tokio::spawn(async move {
                    // A panic in the service is caught here so that it still frees the served
                    // slot and answers the caller (one task per call, not a task per call plus
                    // one to watch it).
                    let call = std::panic::AssertUnwindSafe(svc.call(ctx, payload));
                    let result = match futures_util::FutureExt::catch_unwind(call).await {
                        Ok(r) => r,
                        Err(panic) => Err(Error::new(
                            ErrorCode::Internal,
                            format!(
                                "the service failed: task panicked: {}",
                                panic_message(&*panic)
                            ),
                        )),
                    };
                    let done = Command::ServedDone {
                        from: task_from,
                        call_id,
                        result,
                    };
                    crate::rpc::port::send(&*port, done).await;
                });
                None
            }
        };
        if let Some(body) = body {
            if let Err(e) = self.mesh.send(now, from.clone(), body, Vec::new()) {
                self.events.push(
                    Level::Debug,
                    format!("mesh: cannot answer a call from {from}: {e}"),
                );
            }
        }
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.mesh.poll_output() {
            self.dirty = true;
            match out {
                Output::Send { link, bytes } => self.send_to_link(link, LinkOut::Frame(bytes)),
                Output::SendShared { link, bytes } => {
                    self.send_to_link(link, LinkOut::Shared(bytes))
                }
                Output::Close { link, code, reason } => {
                    self.close_link(link, code, &reason, true);
                }
                Output::Deliver {
                    from,
                    header,
                    payload,
                } => self.dispatch(from, header, payload),
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    /// Queue one frame on a link without ever waiting (house rule: edges out use try_send).
    fn send_to_link(&mut self, link: LinkId, bytes: LinkOut) {
        let Some(e) = self.links.get_mut(&link) else {
            // The link task already ended; its LinkDown is on the way.
            return;
        };
        // A shared frame counts in full on every link that queues it (a conservative bound).
        match e.queue.try_push(bytes) {
            // Small frames may still slip into a queue that is full for big ones: only a
            // queue that drained to half of both bounds counts as having caught up.
            Ok(drained) => {
                if drained {
                    e.drops_while_full = 0;
                    e.full_since = None;
                }
                return;
            }
            Err(PushError::Full) => {}
            Err(PushError::Closed) => return,
        }
        e.dropped += 1;
        e.drops_while_full += 1;
        self.slow_peer_drops += 1;
        let since = *e.full_since.get_or_insert_with(Instant::now);
        if e.drops_while_full >= SLOW_PEER_MAX_DROPS || since.elapsed() >= SLOW_PEER_TIMEOUT {
            self.events.warn(format!(
                "mesh: closing link to {} ({}): {SLOW_PEER_REASON}; {} frames dropped, \
                 queue full for {} ms",
                e.peer,
                e.addr,
                e.dropped,
                since.elapsed().as_millis()
            ));
            self.slow_peer_closes += 1;
            self.mesh
                .handle_link_down(now_ms(self.epoch), link, SLOW_PEER_REASON.to_string());
            self.close_link(link, CLOSE_SLOW_PEER, SLOW_PEER_REASON, false);
        }
    }

    /// Forget a link and ask its task to close the socket.
    fn close_link(&mut self, link: LinkId, code: u16, reason: &str, flush: bool) {
        if let Some(e) = self.links.remove(&link) {
            e.queue.close(CloseCmd {
                code,
                reason: reason.to_string(),
                flush,
            });
        }
    }

    /// Application dispatch of a frame addressed to us.
    fn dispatch(&mut self, from: NodeId, header: Header, payload: Vec<u8>) {
        match header.body {
            Body::Call {
                call_id, method, ..
            } => self.serve_call(from, call_id, method, payload),
            Body::Reply {
                call_id,
                ok,
                code,
                message,
            }
            | Body::End {
                call_id,
                ok,
                code,
                message,
            } => {
                let remote = |dst: &str| {
                    Error::new(
                        ErrorCode::Remote,
                        format!(
                            "{dst}: {}: {}",
                            code.as_deref().unwrap_or("error"),
                            message.as_deref().unwrap_or("")
                        ),
                    )
                };
                if let Some(p) = self.pending.remove(&call_id) {
                    let result = if ok { Ok(payload) } else { Err(remote(&p.dst)) };
                    let _ = p.reply.send(result);
                } else if let Some(s) = self.streams.remove(&call_id) {
                    let item = if ok {
                        Ok(StreamItem::End(payload))
                    } else {
                        Err(remote(&s.dst))
                    };
                    // The channel always has room for the terminal item (see stream.rs).
                    let _ = s.tx.try_send(item);
                }
            }
            Body::Chunk { call_id, .. } => {
                let now = now_ms(self.epoch);
                let Some(s) = self.streams.get_mut(&call_id) else {
                    return;
                };
                if s.dst != from {
                    return;
                }
                let ok = s.allowed > 0 && s.tx.try_send(Ok(StreamItem::Chunk(payload))).is_ok();
                if ok {
                    s.allowed -= 1;
                    return;
                }
                // The server ignored its window: fail the stream rather than buffer without
                // bound (or silently drop a chunk).
                if let Some(s) = self.streams.remove(&call_id) {
                    let _ = s.tx.try_send(Err(Error::new(
                        ErrorCode::Remote,
                        format!(
                            "{}: protocol_error: stream exceeded its credit window",
                            s.dst
                        ),
                    )));
                }
                self.mesh.cancel_call(now, call_id, "window exceeded");
            }
            Body::Credit { call_id, chunks } => {
                if let Some(s) = self.served.get(&(from, call_id)) {
                    let room = MAX_BANKED_CREDIT.saturating_sub(s.credit.available_permits());
                    let add = usize::try_from(chunks).unwrap_or(usize::MAX).min(room);
                    s.credit.add_permits(add);
                }
            }
            Body::Cancel { call_id, .. } => self.cancel_served(&from, call_id),
            // A relay could not deliver a frame of a call we serve to its caller.
            Body::Unreachable { call_id, node } => self.cancel_served(&node, call_id),
            _ => {}
        }
    }

    fn on_event(&mut self, e: MeshEvent) {
        self.urgent = true;
        let msg = match e {
            MeshEvent::PeerUp { node, link } => {
                let (dir, addr) = self
                    .links
                    .get(&link)
                    .map(|l| {
                        let dir = match l.direction {
                            Direction::Inbound => "inbound from",
                            Direction::Outbound => "outbound to",
                        };
                        (dir, l.addr.as_str())
                    })
                    .unwrap_or(("", ""));
                format!("mesh: link up with {node} ({dir} {addr})")
            }
            MeshEvent::PeerDown { node, reason, .. } => {
                let why = match reason {
                    DownReason::Closed(r) => format!("closed: {r}"),
                    DownReason::HeartbeatTimeout => "heartbeat timeout".to_string(),
                    DownReason::ProtocolError(r) => format!("protocol error: {r}"),
                    DownReason::Duplicate => "duplicate link".to_string(),
                    DownReason::Shutdown => "shutting down".to_string(),
                };
                format!("mesh: link down with {node}: {why}")
            }
            MeshEvent::Reachable {
                node,
                next_hop,
                hops,
            } => format!("mesh: {node} reachable via {next_hop} ({hops} hops)"),
            MeshEvent::Unreachable { node } => {
                let gone: Vec<CallId> = self
                    .served
                    .keys()
                    .filter(|(f, _)| *f == node)
                    .map(|(_, c)| *c)
                    .collect();
                for call_id in gone {
                    self.cancel_served(&node, call_id);
                }
                format!("mesh: {node} unreachable")
            }
            MeshEvent::Left { node } => format!("mesh: {node} left the mesh"),
            MeshEvent::Forgotten { node } => format!("mesh: {node} forgotten"),
            MeshEvent::RecordChanged { node, version } => {
                self.events.push(
                    Level::Debug,
                    format!("mesh: record of {node} is now v{version}"),
                );
                return;
            }
            MeshEvent::CallFailed {
                call_id,
                dst,
                reason,
            } => {
                if let Some(s) = self.streams.remove(&call_id) {
                    let err = match reason {
                        CallFailure::Deadline => Error::new(
                            ErrorCode::Timeout,
                            format!(
                                "stream from {dst}: nothing for {} ms (inactivity deadline)",
                                s.deadline_ms
                            ),
                        ),
                        CallFailure::Unreachable => Error::new(
                            ErrorCode::Unreachable,
                            format!("stream from {dst}: the node became unreachable"),
                        ),
                    };
                    let _ = s.tx.try_send(Err(err));
                }
                if let Some(p) = self.pending.remove(&call_id) {
                    let err = match reason {
                        CallFailure::Deadline => Error::new(
                            ErrorCode::Timeout,
                            format!("request to {dst}: no answer within {} ms", p.timeout_ms),
                        ),
                        CallFailure::Unreachable => Error::new(
                            ErrorCode::Unreachable,
                            format!("request to {dst}: the node became unreachable"),
                        ),
                    };
                    let _ = p.reply.send(Err(err));
                }
                return;
            }
        };
        self.events.info(msg);
    }

    fn maybe_publish(&mut self) {
        if self.urgent || (self.dirty && self.last_publish.elapsed() >= SNAPSHOT_INTERVAL) {
            self.publish();
        }
    }

    fn publish(&mut self) {
        let snap = MeshSnapshot {
            peers: self.mesh.peers(),
            stats: self.mesh.stats().clone(),
            links_up: self.mesh.link_count(),
            slow_peer_drops: self.slow_peer_drops,
            slow_peer_closes: self.slow_peer_closes,
            at_ms: now_ms(self.epoch),
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

/// Map a refused `start_call` to the crate error.
fn send_error(dst: &str, e: &SendError) -> Error {
    let code = match e {
        SendError::NoRoute(_) | SendError::TooFar { .. } => ErrorCode::Unreachable,
        SendError::ShutDown => ErrorCode::NotRunning,
        SendError::TooManyCalls(_) => ErrorCode::Cancelled,
        SendError::TooLarge(_) => ErrorCode::TooLarge,
        SendError::ToSelf | SendError::InvalidBody => ErrorCode::InvalidArgument,
    };
    Error::new(code, format!("request to {dst}: {e}"))
}
