//! One task per WebSocket: the handshake, then the pump between the socket and the actor.
//!
//! tungstenite performs only the HTTP upgrade; from then on the socket is framed by
//! [`super::ws`] (both halves of one stream, [`WsLink`]).
//!
//! Flow:
//! ```text
//! handshake (TEXT frames, Dialer or Acceptor, deadline = the machine's deadline())
//!     rejected → one log line (peer address, code, reason), counted, `reject` frame if the
//!                peer is still talking, WS close with the code's close code; task ends
//!     done     → register with the actor (LinkUp), then pump:
//! select! (biased):
//!     1. close request from the actor (it owns shutdown for registered links: on stop it sends
//!        `leave`, then asks every link to flush briefly and close with 1000)
//!     2. inbound: BINARY → actor (send().await: a busy actor slows this reader, nobody else)
//!     3. outbound: the bounded writer queue → socket: a lone frame is one vectored write,
//!        a burst (what is queued, at most BURST_FRAMES) is coalesced and flushed once
//! ```
//! No application frame is read before the handshake succeeded and the link is registered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::OptionFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::actor::{now_ms, ActorHandle, CloseCmd, LinkRegistration};
use super::admission::{ProtocolClose, ShellCounters};
use super::queue::{link_queue, LinkOut, QueueReceiver};
use super::ws::{Reassembly, Role, WsError, WsMessage, WsReader, WsWriter};
use crate::events::{EventQueue, Level};
use crate::identity::key::PublicKey;
use crate::mesh::{Direction, LinkId};
use crate::proto::handshake_frame::MAX_HANDSHAKE_BYTES;
use crate::proto::{
    Acceptor, Dialer, HandshakeConfig, HandshakeFrame, NodeId, NonceCache, RejectCode, Step,
    FEATURE_PIECES, MAX_FRAME_BYTES,
};

/// Largest WebSocket message during the handshake (inbound): 4× the largest handshake frame, so
/// an oversized frame still reaches the decoder (and gets a proper `malformed` reject) while an
/// unauthenticated peer can pin at most this much memory per pending handshake.
pub const HANDSHAKE_MAX_MESSAGE: usize = 4 * MAX_HANDSHAKE_BYTES;
/// Read buffer during the handshake: handshake frames are tiny.
const HANDSHAKE_READ_BUFFER: usize = 4 * 1024;
/// How long the writer may take to flush already-queued frames on a graceful close (500 ms):
/// enough for the `leave` frames to leave, short enough that `stop()` stays prompt.
pub const CLOSE_FLUSH: Duration = Duration::from_millis(500);
/// How long we wait for the peer's close reply after sending ours (so the kernel does not reset
/// the connection under unread data and swallow our last frames).
const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// What every link task needs.
pub(crate) struct LinkCtx {
    pub actor: ActorHandle,
    pub events: Arc<EventQueue>,
    pub handshake: HandshakeConfig,
    pub epoch: Instant,
    pub next_link: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    /// Hostile-input counters kept by the shell (pre-auth rejections, 4010 closes).
    pub counters: Arc<ShellCounters>,
}

impl LinkCtx {
    fn new_link_id(&self) -> LinkId {
        LinkId(self.next_link.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
impl LinkCtx {
    /// A context for tests of link tasks that never reach the actor: its input channel's
    /// receiver and the shutdown sender are returned so the caller keeps them open.
    pub(crate) fn for_test() -> (
        Arc<LinkCtx>,
        tokio::sync::mpsc::Receiver<super::actor::Input>,
        watch::Sender<bool>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (stop, shutdown) = watch::channel(false);
        let ctx = Arc::new(LinkCtx {
            actor: ActorHandle { tx },
            events: Arc::new(EventQueue::new()),
            handshake: HandshakeConfig::new(
                "n",
                b"s".to_vec(),
                Arc::new(crate::identity::NodeKey::from_seed(&[7; 32])),
            ),
            epoch: Instant::now(),
            next_link: AtomicU64::new(1),
            shutdown,
            counters: Arc::default(),
        });
        (ctx, rx, stop)
    }
}

/// WebSocket limits for the HTTP upgrade (tungstenite does only the upgrade; the socket is
/// then framed by [`super::ws`]): small buffers, handshake-sized messages.
pub fn ws_handshake_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(HANDSHAKE_READ_BUFFER)
        .max_message_size(Some(HANDSHAKE_MAX_MESSAGE))
        .max_frame_size(Some(HANDSHAKE_MAX_MESSAGE))
}

/// An upgraded socket framed by [`super::ws`]: the two halves of one stream.
pub(crate) struct WsLink<S> {
    pub rd: WsReader<ReadHalf<S>>,
    pub wr: WsWriter<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> WsLink<S> {
    /// Frame `stream` (just upgraded; `socket` is the TCP socket under it) for `role`, accepting handshake-sized messages until
    /// [`WsLink::authenticated`].
    pub fn new(stream: S, role: Role, socket: Option<super::ws::SocketFd>) -> Self {
        let (r, w) = tokio::io::split(stream);
        // Masking keys only need to be unpredictable to third parties (RFC 6455 §10.3).
        let seed = getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15);
        let mut rd = WsReader::new(r, role, HANDSHAKE_MAX_MESSAGE);
        // Only large messages consult it, and the handshake's are at most 4 KiB.
        rd.set_socket(socket);
        let mut wr = WsWriter::new(w, role, seed);
        wr.set_socket(socket);
        WsLink { rd, wr }
    }

    /// The peer authenticated: accept messages up to one maximum frame.
    pub fn authenticated(&mut self) {
        self.rd.set_max_message(MAX_FRAME_BYTES);
    }
}

/// 32 fresh bytes from the OS: the secret seed of one handshake (its nonce and SPAKE2 scalar
/// are derived from it, `proto::auth`).
pub(crate) fn os_nonce() -> Result<[u8; 32], String> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| format!("OS randomness unavailable: {e}"))?;
    Ok(n)
}

/// How a link ended, for the dialer's backoff.
#[derive(Debug, Clone)]
pub(crate) struct LinkEnd {
    /// How long the link was registered with the actor.
    pub up_for: Duration,
    /// A pong was received on the link.
    pub proved: bool,
    pub reason: String,
}

/// Why a handshake did not produce a link.
#[derive(Debug, Clone)]
pub(crate) enum HandshakeFailure {
    /// Refused with a code (logged and counted already).
    Rejected(RejectCode),
    /// The socket failed or closed, or we are shutting down (logged at debug level).
    Aborted(String),
}

enum Next {
    Text(String),
    Stop(String),
    Malformed(String),
}

/// Read the next handshake TEXT message (or the reason there is none) before `deadline`,
/// `None` when the deadline passed. The pongs answering the peer's pings are written within the
/// same deadline: a peer that pings and never reads stalls only itself, until the deadline.
async fn next_text<S>(
    ws: &mut WsLink<S>,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Next>
where
    S: AsyncRead + AsyncWrite,
{
    tokio::select! {
        biased;
        // Shutdown first, then the peer's next message (bounded by the deadline).
        _ = shutdown.changed() => Some(Next::Stop("node stopping".into())),
        r = tokio::time::timeout_at(deadline, next_text_now(ws)) => r.ok(),
    }
}

async fn next_text_now<S>(ws: &mut WsLink<S>) -> Next
where
    S: AsyncRead + AsyncWrite,
{
    loop {
        let msg = ws.rd.next().await;
        return match msg {
            Ok(Some(WsMessage::Text(t))) => Next::Text(t),
            Ok(Some(WsMessage::Binary(_))) => {
                Next::Malformed("BINARY message before the handshake completed".into())
            }
            Ok(Some(WsMessage::Ping(p))) => {
                if ws.wr.feed_pong(p).await.is_err() || ws.wr.flush().await.is_err() {
                    return Next::Stop("socket error during the handshake".into());
                }
                continue;
            }
            Ok(Some(WsMessage::Pong)) => continue,
            Ok(Some(WsMessage::Close(f))) => Next::Stop(format!(
                "peer closed during the handshake{}",
                f.map(|(code, reason)| format!(" ({code} {reason})"))
                    .unwrap_or_default()
            )),
            Err(e @ WsError::TooLarge { .. }) => {
                Next::Malformed(format!("handshake message too large: {e}"))
            }
            Err(e) => Next::Stop(format!("socket error during the handshake: {e}")),
            Ok(None) => Next::Stop("peer closed during the handshake".into()),
        };
    }
}

/// Log once, count, then send `frame` if any and close with the code's close code, all of the
/// writing and the linger for the peer's close ending by `deadline.hard`.
#[allow(clippy::too_many_arguments)]
async fn reject<S>(
    ws: &mut WsLink<S>,
    ctx: &LinkCtx,
    who: &str,
    peer: Option<&str>,
    send: Option<HandshakeFrame>,
    code: RejectCode,
    reason: &str,
    by_peer: bool,
    deadline: PreauthDeadline,
) -> HandshakeFailure
where
    S: AsyncRead + AsyncWrite,
{
    let node = peer.map(|p| format!(", node {p:?}")).unwrap_or_default();
    let by = if by_peer { " by peer" } else { "" };
    ctx.events.warn(format!(
        "mesh: handshake rejected{by} ({who}{node}): {code}: {reason}"
    ));
    ctx.actor.handshake_rejected(code).await;
    let _ = tokio::time::timeout_at(deadline.hard, async {
        if let Some(f) = send {
            let _ = tokio::time::timeout(CLOSE_FLUSH, ws.wr.send_text(&f.encode())).await;
        }
        close_ws(ws, code.close_code(), code.as_str()).await;
    })
    .await;
    HandshakeFailure::Rejected(code)
}

/// Close frame, then wait briefly for the peer's reply.
async fn close_ws<S>(ws: &mut WsLink<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite,
{
    if tokio::time::timeout(CLOSE_FLUSH, ws.wr.close(code, reason))
        .await
        .is_ok_and(|r| r.is_ok())
    {
        linger(&mut ws.rd).await;
    }
}

/// After our close frame: read (and drop) until the peer's close or the end of the stream, at
/// most [`CLOSE_LINGER`], so the kernel does not reset the connection under unread data.
async fn linger<R: AsyncRead + Unpin>(rd: &mut WsReader<R>) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Ok(Some(m)) = rd.next().await {
            if matches!(m, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn deadline_instant(epoch: Instant, deadline_ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch + Duration::from_millis(deadline_ms))
}

/// The end of a listener's pre-auth budget kept for its `timeout` rejection: writing the
/// `reject` frame and the close into the socket's buffer takes microseconds for a peer that
/// reads; for one that does not, nothing would help. 100 ms leaves the peer 9.9 of its 10 s.
const REJECT_GRACE: Duration = Duration::from_millis(100);

/// The time budget of a connection before it authenticated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreauthDeadline {
    /// The peer's part ends here: reading its frames, and writing ours that it must read
    /// (pongs, `challenge`, `welcome`). Past it the handshake is rejected with `timeout`.
    pub read: tokio::time::Instant,
    /// Everything ends here, the rejection's `reject` frame, close and linger included.
    pub hard: tokio::time::Instant,
}

impl PreauthDeadline {
    /// The listener's budget for a connection accepted at `start`: `timeout` in all, the last
    /// [`REJECT_GRACE`] of it (a tenth of a short one) kept for telling the peer why it is
    /// being closed.
    pub fn inbound(start: tokio::time::Instant, timeout: Duration) -> Self {
        let hard = start + timeout;
        PreauthDeadline {
            read: hard - REJECT_GRACE.min(timeout / 10),
            hard,
        }
    }

    /// The dialer's budget: the handshake's own deadline, then the usual close bounds.
    fn outbound(read: tokio::time::Instant) -> Self {
        PreauthDeadline {
            read,
            hard: read + CLOSE_FLUSH + CLOSE_LINGER,
        }
    }

    /// Reads end at the earlier of ours and the handshake state machine's own deadline.
    fn capped(self, machine: tokio::time::Instant) -> Self {
        PreauthDeadline {
            read: self.read.min(machine),
            hard: self.hard,
        }
    }
}

/// The next handshake TEXT frame, or the failure that ends the handshake: malformed input
/// (rejected with `malformed`), shutdown or a closed socket (aborted), or the deadline (the
/// state machine's own rejection from `on_timeout`). Shared by both sides of the handshake.
#[allow(clippy::too_many_arguments)]
async fn handshake_text<S>(
    ws: &mut WsLink<S>,
    ctx: &LinkCtx,
    who: &str,
    peer: Option<&str>,
    deadline: PreauthDeadline,
    shutdown: &mut watch::Receiver<bool>,
    on_timeout: impl FnOnce() -> Step,
) -> Result<String, HandshakeFailure>
where
    S: AsyncRead + AsyncWrite,
{
    match next_text(ws, deadline.read, shutdown).await {
        Some(Next::Text(t)) => Ok(t),
        Some(Next::Malformed(why)) => {
            let code = RejectCode::Malformed;
            let f = reject_frame(code);
            Err(reject(ws, ctx, who, peer, f, code, &why, false, deadline).await)
        }
        Some(Next::Stop(why)) => {
            ctx.events.push(
                Level::Debug,
                format!("mesh: handshake aborted ({who}): {why}"),
            );
            Err(HandshakeFailure::Aborted(why))
        }
        None => Err(finish_rejected(ws, ctx, who, peer, on_timeout(), deadline).await),
    }
}

/// Send one handshake frame within the read deadline (the peer must read it to go on); `Err`
/// with the failure when it could not be written, or not in time (a `timeout` rejection).
async fn send_handshake<S>(
    ws: &mut WsLink<S>,
    ctx: &LinkCtx,
    who: &str,
    peer: Option<&str>,
    frame: &HandshakeFrame,
    deadline: PreauthDeadline,
    on_timeout: impl FnOnce() -> Step,
) -> Result<(), HandshakeFailure>
where
    S: AsyncRead + AsyncWrite,
{
    match tokio::time::timeout_at(deadline.read, ws.wr.send_text(&frame.encode())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(HandshakeFailure::Aborted(e.to_string())),
        Err(_) => Err(finish_rejected(ws, ctx, who, peer, on_timeout(), deadline).await),
    }
}

/// An authenticated peer: its node id and the node key it proved.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub node: NodeId,
    pub key: PublicKey,
    /// The features both sides offered.
    pub features: u64,
}

/// A handshake that ended refusing the peer's key after it proved the secret and the key:
/// the core counts and reports it (the node id and key come from the peer's hello or
/// challenge, which the proofs covered).
async fn report_refused_key(
    ctx: &LinkCtx,
    step: &Step,
    peer: &Option<NodeId>,
    key: &Option<PublicKey>,
) {
    if let (
        Step::Rejected {
            code: RejectCode::KeyChanged | RejectCode::Revoked,
            by_peer: false,
            ..
        },
        Some(node),
        Some(key),
    ) = (step, peer, key)
    {
        ctx.actor.key_refused(node, key).await;
    }
}

/// The listener side of the handshake. Returns the authenticated peer.
pub(crate) async fn accept_handshake<S>(
    ws: &mut WsLink<S>,
    ctx: &LinkCtx,
    nonces: &Mutex<NonceCache>,
    addr: SocketAddr,
    deadline: PreauthDeadline,
) -> Result<Peer, HandshakeFailure>
where
    S: AsyncRead + AsyncWrite,
{
    let who = format!("inbound from {addr}");
    let nonce = os_nonce().map_err(HandshakeFailure::Aborted)?;
    let mut acceptor = Acceptor::new(ctx.handshake.clone(), nonce, now_ms(ctx.epoch));
    let deadline = deadline.capped(deadline_instant(ctx.epoch, acceptor.deadline()));
    let mut shutdown = ctx.shutdown.clone();
    let mut peer: Option<NodeId> = None;
    let mut peer_key: Option<PublicKey> = None;
    loop {
        let on_timeout = || {
            acceptor
                .on_tick(now_ms(ctx.epoch).max(acceptor.deadline()))
                .unwrap_or_else(timeout_step)
        };
        let text = handshake_text(
            ws,
            ctx,
            &who,
            peer.as_deref(),
            deadline,
            &mut shutdown,
            on_timeout,
        )
        .await?;
        // `admit` is the actor's answer, fetched before feeding the frame that needs it (the
        // state machine calls it synchronously, with the nonce cache locked).
        let decoded = HandshakeFrame::decode(&text).ok();
        if let Some(HandshakeFrame::Hello { node, key, .. }) = &decoded {
            peer.get_or_insert_with(|| node.clone());
            peer_key.get_or_insert(*key);
        }
        let verdict = match (&decoded, &peer, &peer_key) {
            (Some(HandshakeFrame::Auth { .. }), Some(p), Some(k)) => ctx.actor.admit(p, k).await,
            _ => Ok(()),
        };
        let step = {
            // Held only for this synchronous call; never across an await.
            let mut cache = nonces.lock().unwrap_or_else(|p| p.into_inner());
            acceptor.on_frame(&text, &mut cache, |_, _| verdict)
        };
        report_refused_key(ctx, &step, &peer, &peer_key).await;
        match step {
            Step::Send(f) => {
                send_handshake(ws, ctx, &who, peer.as_deref(), &f, deadline, timeout_step).await?;
            }
            Step::Done {
                send,
                peer,
                peer_key,
                features,
            } => {
                if let Some(f) = send {
                    send_handshake(ws, ctx, &who, Some(&peer), &f, deadline, timeout_step).await?;
                }
                return Ok(Peer {
                    node: peer,
                    key: peer_key,
                    features,
                });
            }
            step @ Step::Rejected { .. } => {
                let failure = finish_rejected(ws, ctx, &who, peer.as_deref(), step, deadline);
                return Err(failure.await);
            }
        }
    }
}

/// The dialer side of the handshake against the node configured as `expected`.
pub(crate) async fn dial_handshake<S>(
    ws: &mut WsLink<S>,
    ctx: &LinkCtx,
    expected: &str,
    url: &str,
    previous_first: bool,
) -> Result<Peer, HandshakeFailure>
where
    S: AsyncRead + AsyncWrite,
{
    let who = format!("outbound to {url}");
    let nonce = os_nonce().map_err(HandshakeFailure::Aborted)?;
    // During a secret rotation a peer that refused our current secret gets the previous one.
    let cfg = if previous_first {
        ctx.handshake.previous_first()
    } else {
        ctx.handshake.clone()
    };
    let (mut dialer, hello) =
        Dialer::new(cfg, Some(expected.to_string()), nonce, now_ms(ctx.epoch));
    let deadline = PreauthDeadline::outbound(deadline_instant(ctx.epoch, dialer.deadline()));
    let mut shutdown = ctx.shutdown.clone();
    if let Err(e) = ws.wr.send_text(&hello.encode()).await {
        return Err(HandshakeFailure::Aborted(e.to_string()));
    }
    let mut peer: Option<NodeId> = None;
    let mut peer_key: Option<PublicKey> = None;
    loop {
        let on_timeout = || {
            dialer
                .on_tick(now_ms(ctx.epoch).max(dialer.deadline()))
                .unwrap_or_else(timeout_step)
        };
        let text = handshake_text(
            ws,
            ctx,
            &who,
            peer.as_deref(),
            deadline,
            &mut shutdown,
            on_timeout,
        )
        .await?;
        let decoded = HandshakeFrame::decode(&text).ok();
        if let Some(HandshakeFrame::Challenge { node, key, .. }) = &decoded {
            peer.get_or_insert_with(|| node.clone());
            peer_key.get_or_insert(*key);
        }
        let verdict = match (&decoded, &peer, &peer_key) {
            (Some(HandshakeFrame::Welcome { .. }), Some(p), Some(k)) => ctx.actor.admit(p, k).await,
            _ => Ok(()),
        };
        let step = dialer.on_frame(&text, |_, _| verdict);
        report_refused_key(ctx, &step, &peer, &peer_key).await;
        match step {
            Step::Send(f) => {
                if let Err(e) = ws.wr.send_text(&f.encode()).await {
                    return Err(HandshakeFailure::Aborted(e.to_string()));
                }
            }
            Step::Done {
                peer,
                peer_key,
                features,
                ..
            } => {
                return Ok(Peer {
                    node: peer,
                    key: peer_key,
                    features,
                })
            }
            step @ Step::Rejected { .. } => {
                let failure = finish_rejected(ws, ctx, &who, peer.as_deref(), step, deadline);
                return Err(failure.await);
            }
        }
    }
}

fn reject_frame(code: RejectCode) -> Option<HandshakeFrame> {
    Some(HandshakeFrame::Reject {
        code,
        reason: code.reason().to_string(),
    })
}

fn timeout_step() -> Step {
    Step::Rejected {
        send: reject_frame(RejectCode::Timeout),
        code: RejectCode::Timeout,
        reason: RejectCode::Timeout.reason().to_string(),
        by_peer: false,
    }
}

async fn finish_rejected<S>(
    ws: &mut WsLink<S>,
    ctx: &LinkCtx,
    who: &str,
    peer: Option<&str>,
    step: Step,
    deadline: PreauthDeadline,
) -> HandshakeFailure
where
    S: AsyncRead + AsyncWrite,
{
    match step {
        Step::Rejected {
            send,
            code,
            reason,
            by_peer,
        } => reject(ws, ctx, who, peer, send, code, &reason, by_peer, deadline).await,
        // Not reachable: callers pass rejections only.
        _ => HandshakeFailure::Aborted("handshake ended unexpectedly".into()),
    }
}

enum End {
    /// The actor asked us to close (or is gone: `None`).
    Close(Option<CloseCmd>),
    Read(String),
    /// The peer broke the framing rules (a message over `MAX_FRAME_BYTES`, a WebSocket
    /// protocol violation): closed with 4010 `protocol_error`, counted.
    Protocol(ProtocolClose, String),
    Write(String),
}

/// The close code for a peer that broke the protocol after the handshake (PROTOCOL.md §3.4).
pub use crate::mesh::CLOSE_PROTOCOL_ERROR;

/// Most frames one writer burst coalesces before it flushes (bounds the time a burst holds the
/// socket's write side without a flush; frames beyond it start the next burst).
const BURST_FRAMES: usize = 256;

/// Register an authenticated link with the actor and pump until it ends.
///
/// An idle link is this future parked in [`Established::pump`], for as long as the link lives,
/// so only the pump's own state is kept inline:
/// - `ws` is handed to the boxed registration at once: an `async fn`'s arguments stay in its
///   future for its whole life, even after they were moved out;
/// - everything awaited once (registration, the close paths, `link_down`) is boxed, alive only
///   while it runs (a queued send to the actor alone is a few hundred bytes);
/// - values that are awaited are moved whole, never destructured across an `.await` (a
///   partly moved local keeps its storage).
///
/// `tests::an_idle_link_pump_stays_small_and_queue_items_stay_small` bounds the pump, and the
/// listener's and dialer's tests bound the whole task.
pub(crate) fn run<'a, S>(
    ws: WsLink<S>,
    ctx: &'a LinkCtx,
    peer: Peer,
    direction: Direction,
    addr: String,
) -> impl std::future::Future<Output = LinkEnd> + 'a
where
    S: AsyncRead + AsyncWrite + 'a,
{
    let link = ctx.new_link_id();
    let Peer {
        node: peer,
        key,
        features,
    } = peer;
    let registered = Box::pin(register(
        ws,
        ctx,
        link,
        (peer.clone(), key, features),
        direction,
        addr,
    ));
    async move {
        let started = Instant::now();
        let serving = registered.await.map(|l| l.serve(ctx, link, peer, started));
        OptionFuture::from(serving)
            .await
            .unwrap_or_else(|| LinkEnd {
                up_for: Duration::ZERO,
                proved: false,
                reason: "node stopping".into(),
            })
    }
}

/// A registered link: its socket's two halves, its writer queue, and the frames its peer
/// sends in pieces being put back together.
struct Established<R, W> {
    rd: WsReader<R>,
    wr: WsWriter<W>,
    queue: QueueReceiver,
    pieces: Reassembly,
}

/// Hand the link to the actor; `None` (socket closed with 1001) when the actor is gone.
async fn register<S>(
    mut ws: WsLink<S>,
    ctx: &LinkCtx,
    link: LinkId,
    (peer, key, features): (NodeId, PublicKey, u64),
    direction: Direction,
    addr: String,
) -> Option<Established<ReadHalf<S>, WriteHalf<S>>>
where
    S: AsyncRead + AsyncWrite,
{
    // The writer queue carries the actor's close request too; the reader answers WebSocket
    // pings through it (only while the actor still holds the link).
    let (queue_tx, queue) = link_queue();
    let reg = LinkRegistration {
        link,
        peer,
        key,
        direction,
        addr,
        queue: queue_tx,
    };
    ws.authenticated();
    ws.wr.set_pieces(features & FEATURE_PIECES != 0);
    if !ctx.actor.link_up(reg).await {
        close_ws(&mut ws, 1001, "node stopping").await;
        return None;
    }
    let WsLink { rd, wr } = ws;
    Some(Established {
        rd,
        wr,
        queue,
        pieces: Reassembly::default(),
    })
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Established<R, W> {
    /// Pump until the link ends, close its socket, tell the actor.
    async fn serve(
        mut self,
        ctx: &LinkCtx,
        link: LinkId,
        peer: NodeId,
        started: Instant,
    ) -> LinkEnd {
        let end = self.pump(&ctx.actor, link).await;
        if let End::Protocol(why, detail) = &end {
            ctx.counters.protocol_close(*why);
            ctx.events.warn(format!(
                "mesh: link {} with {peer} closed with {CLOSE_PROTOCOL_ERROR} protocol_error: \
                 {detail}",
                link.0
            ));
        }
        let reason = Box::pin(self.finish(end)).await;
        Box::pin(ctx.actor.link_down(link, reason.clone())).await;
        ctx.events.push(
            Level::Debug,
            format!("mesh: link {} with {peer} ended: {reason}", link.0),
        );
        LinkEnd {
            up_for: started.elapsed(),
            proved: self.queue.proved(),
            reason,
        }
    }

    /// Until the actor asks to close or a side of the socket ends.
    async fn pump(&mut self, actor: &ActorHandle, link: LinkId) -> End {
        let Established {
            rd,
            wr,
            queue,
            pieces,
        } = self;
        let queue = &*queue;
        let reader = async {
            loop {
                // While a message is incomplete, a rise of the bytes received towards it tells
                // the actor the peer is talking (a large frame over a slow path outlasts the
                // heartbeat timeout); one comparison per pending poll.
                let mut seen = rd.pending_bytes();
                let next = std::future::poll_fn(|cx| {
                    let r = rd.poll_next(cx);
                    if r.is_pending() {
                        let now = rd.pending_bytes();
                        if now > seen {
                            queue.note_rx_progress();
                        }
                        seen = now;
                    }
                    r
                });
                match next.await {
                    Ok(Some(WsMessage::Binary(b))) => {
                        let b = match pieces.push(b, MAX_FRAME_BYTES) {
                            Ok(Some(frame)) => frame,
                            Ok(None) => continue,
                            Err(e) => {
                                return End::Protocol(ProtocolClose::FrameTooLarge, e.to_string())
                            }
                        };
                        let alive = match actor.try_data(link, b) {
                            Ok(alive) => alive,
                            // The actor's queue is full: wait (boxed: rare, and large inline).
                            Err(input) => Box::pin(actor.send(input)).await,
                        };
                        if !alive {
                            return End::Read("node stopping".to_string());
                        }
                    }
                    Ok(Some(WsMessage::Text(_))) => Box::pin(actor.text_after_handshake()).await,
                    // Best effort: a peer that floods pings into a full queue loses pongs.
                    Ok(Some(WsMessage::Ping(p))) => queue.push_pong(p),
                    Ok(Some(WsMessage::Pong)) => {}
                    Ok(Some(WsMessage::Close(f))) => {
                        return End::Read(match f {
                            Some((code, reason)) => format!("peer closed ({code} {reason})"),
                            None => "peer closed".to_string(),
                        })
                    }
                    Err(e @ WsError::TooLarge { .. }) => {
                        return End::Protocol(ProtocolClose::FrameTooLarge, e.to_string())
                    }
                    Err(e @ WsError::Protocol(_)) => {
                        return End::Protocol(ProtocolClose::BadFraming, e.to_string())
                    }
                    Err(e) => return End::Read(format!("read error: {e}")),
                    Ok(None) => return End::Read("connection closed".to_string()),
                }
            }
        };
        let writer = async {
            while let Some(first) = queue.recv().await {
                // A lone frame: let the tasks already runnable on this thread run first, so what
                // they queue goes out in the same write (the scheduler runs the task a push woke
                // next, so without this every producer's frame would be its own syscall).
                if queue.is_empty() {
                    YieldToRunnable::default().await;
                }
                // The write futures are boxed: they are large and only alive while writing, and
                // inline they would be part of every idle link's task.
                let r = match queue.try_recv() {
                    // A lone frame: one vectored write, no copy.
                    None => Box::pin(write_lone(wr, queue, first)).await,
                    // A burst: coalesce, then one flush.
                    Some(second) => Box::pin(write_burst(wr, queue, [first, second])).await,
                };
                if let Err(e) = r {
                    return format!("write error: {e}");
                }
            }
            String::new()
        };
        tokio::select! {
            biased;
            // 1. The actor's close request (shutdown, heartbeat timeout, slow peer, duplicate), or
            //    the actor let go of the link.
            c = queue.closed() => End::Close(c),
            // 2. Inbound frames.
            r = reader => r,
            // 3. Outbound frames.
            w = writer => {
                // The queue closes only when the actor dropped the link; its close request (if
                // any) was made first.
                if w.is_empty() { End::Close(queue.try_closed()) } else { End::Write(w) }
            }
        }
    }

    /// Flush and close as asked, or answer the peer's close; the reason the link ended.
    async fn finish(&mut self, end: End) -> String {
        let Established { rd, wr, queue, .. } = self;
        match end {
            End::Close(cmd) => {
                let cmd = cmd.unwrap_or(CloseCmd {
                    code: 1001,
                    reason: "node stopping".into(),
                    flush: true,
                });
                if cmd.flush {
                    let _ = tokio::time::timeout(CLOSE_FLUSH, async {
                        while let Some(out) = queue.try_recv() {
                            if feed(wr, out).await.is_err() {
                                return;
                            }
                        }
                        let _ = wr.flush().await;
                    })
                    .await;
                }
                if tokio::time::timeout(CLOSE_FLUSH, wr.close(cmd.code, &cmd.reason))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    linger(rd).await;
                }
                format!("closed by us ({} {})", cmd.code, cmd.reason)
            }
            End::Read(r) => {
                // Answer the peer's close without waiting long.
                let _ = tokio::time::timeout(Duration::from_millis(100), wr.close(1000, "")).await;
                r
            }
            End::Protocol(_, detail) => {
                // Nothing more is read from a peer that broke the framing: close and go.
                let code = CLOSE_PROTOCOL_ERROR;
                let _ = tokio::time::timeout(CLOSE_FLUSH, wr.close(code, "protocol_error")).await;
                format!("closed by us ({code} protocol_error: {detail})")
            }
            End::Write(w) => w,
        }
    }
}

/// Add one queued item to the writer's current burst.
/// Yield once to the tasks already runnable on this worker, then go on.
///
/// The task wakes itself while it is being polled, which the multi-thread scheduler takes as a
/// yield: it goes to the back of this worker's run queue (not the LIFO slot) and runs after the
/// tasks queued before it, with no I/O poll in between. `tokio::task::yield_now` defers the wake
/// until the runtime has polled its I/O driver instead: one more `epoll_wait` per lone frame,
/// which is every frame of a request/response exchange.
#[derive(Default)]
struct YieldToRunnable {
    yielded: bool,
}

impl std::future::Future for YieldToRunnable {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.yielded {
            return std::task::Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

async fn feed<W: AsyncWrite + Unpin>(wr: &mut WsWriter<W>, out: LinkOut) -> std::io::Result<()> {
    match out {
        LinkOut::Frame(bytes) => wr.feed_binary(bytes).await,
        LinkOut::Shared(bytes) => wr.feed_binary_slice(&bytes).await,
        LinkOut::Pong(p) => wr.feed_pong(p).await,
    }
}

/// [`feed`], except that a large frame on a slow link goes in pieces, with the urgent frames
/// queued meanwhile written between them.
async fn feed_interleaved<W: AsyncWrite + Unpin>(
    wr: &mut WsWriter<W>,
    queue: &QueueReceiver,
    out: LinkOut,
) -> std::io::Result<()> {
    match out {
        LinkOut::Frame(bytes) if wr.piece_for(bytes.len()).is_some() => {
            write_in_pieces(wr, queue, bytes).await
        }
        other => feed(wr, other).await,
    }
}

/// Write `bytes` as pieces (docs/PROTOCOL.md §4.4) sized by [`WsWriter::piece_for`] as it
/// learns the link's rate; after each piece but the last, the urgent frames queued meanwhile.
async fn write_in_pieces<W: AsyncWrite + Unpin>(
    wr: &mut WsWriter<W>,
    queue: &QueueReceiver,
    mut bytes: Vec<u8>,
) -> std::io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let rest = bytes.len() - at;
        let n = wr.piece_for(rest).unwrap_or(rest);
        let last = n == rest;
        wr.write_piece(&mut bytes[at..at + n], last).await?;
        at += n;
        if !last {
            let mut any = false;
            while let Some(u) = queue.try_recv_urgent() {
                feed(wr, u).await?;
                any = true;
            }
            if any {
                wr.flush().await?;
            }
        }
    }
    Ok(())
}

async fn write_lone<W: AsyncWrite + Unpin>(
    wr: &mut WsWriter<W>,
    queue: &QueueReceiver,
    out: LinkOut,
) -> std::io::Result<()> {
    match out {
        LinkOut::Frame(bytes) if wr.piece_for(bytes.len()).is_some() => {
            write_in_pieces(wr, queue, bytes).await
        }
        LinkOut::Frame(bytes) => wr.send_binary(bytes).await,
        other => {
            feed(wr, other).await?;
            wr.flush().await
        }
    }
}

/// Write `first` and whatever else is queued (at most [`BURST_FRAMES`]), then flush once.
async fn write_burst<W: AsyncWrite + Unpin>(
    wr: &mut WsWriter<W>,
    queue: &QueueReceiver,
    first: [LinkOut; 2],
) -> std::io::Result<()> {
    for out in first {
        feed_interleaved(wr, queue, out).await?;
    }
    for _ in 2..BURST_FRAMES {
        match queue.try_recv() {
            Some(out) => feed_interleaved(wr, queue, out).await?,
            None => break,
        }
    }
    wr.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest state of a link's pump (reader, writer and close arms), in bytes: what an idle
    /// link parks on for its whole life, beyond its socket halves and queue (~390 now).
    const MAX_PUMP_FUTURE: usize = 512;

    /// A stream that counts the writes reaching it.
    struct CountingStream {
        inner: tokio::io::DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for CountingStream {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingStream {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Frames queued by several tasks in one scheduler pass leave in one write, although the
    /// multi-thread scheduler runs the woken link task right after the first producer (its LIFO
    /// slot): the writer lets the runnable tasks go first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn frames_queued_by_tasks_runnable_together_leave_in_one_write() {
        use tokio::io::AsyncReadExt;
        const PRODUCERS: usize = 10;
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stream = CountingStream {
            inner: a,
            writes: Arc::clone(&writes),
        };
        let WsLink { rd, wr } = WsLink::new(stream, Role::Server, None);
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let actor = ActorHandle { tx };
        let (queue_tx, queue) = link_queue();
        let queue_tx = Arc::new(queue_tx);
        let link = tokio::spawn(async move {
            let mut link = Established {
                rd,
                wr,
                queue,
                pieces: Reassembly::default(),
            };
            link.pump(&actor, LinkId(1)).await;
        });
        // Let the link task park on its empty queue, then start the producers from one task on
        // the worker, so they are all runnable at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 0);
        let spawner = {
            let queue_tx = Arc::clone(&queue_tx);
            tokio::spawn(async move {
                let mut producers = Vec::new();
                for i in 0..PRODUCERS {
                    let q = Arc::clone(&queue_tx);
                    producers.push(tokio::spawn(async move {
                        q.try_push(LinkOut::Frame(vec![i as u8; 100]), false)
                            .unwrap();
                    }));
                }
                for p in producers {
                    p.await.unwrap();
                }
            })
        };
        spawner.await.unwrap();
        // All ten frames arrive (2-byte header + 100 bytes each, unmasked server frames; the
        // scheduler decides their order)…
        let mut got = vec![0u8; PRODUCERS * 102];
        tokio::time::timeout(Duration::from_secs(5), b.read_exact(&mut got))
            .await
            .expect("frames within 5 s")
            .unwrap();
        let mut seen: Vec<u8> = got
            .chunks(102)
            .map(|f| {
                assert_eq!(&f[..2], &[0x82, 100]);
                assert!(f[2..].iter().all(|&x| x == f[2]));
                f[2]
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..PRODUCERS as u8).collect::<Vec<_>>());
        // …in one write.
        assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1);
        link.abort();
    }

    #[tokio::test]
    async fn an_idle_link_pump_stays_small_and_queue_items_stay_small() {
        let (a, _b) = tokio::io::duplex(64);
        let WsLink { rd, wr } = WsLink::new(a, Role::Server, None);
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let actor = ActorHandle { tx };
        let (_tx, queue) = link_queue();
        let mut link = Established {
            rd,
            wr,
            queue,
            pieces: Reassembly::default(),
        };
        let pump = link.pump(&actor, LinkId(1));
        let size = std::mem::size_of_val(&pump);
        assert!(size <= MAX_PUMP_FUTURE, "pump future is {size} bytes");
        drop(pump);
        // The writer queue's slots are this big (a Vec, or an Arc'd slice, and a tag).
        assert!(std::mem::size_of::<LinkOut>() <= 32);
        // An idle link holds no read buffer, no burst buffer and no queue slots.
        assert_eq!(link.rd.buffered_capacity(), 0);
        assert_eq!(link.queue.buffered_capacity(), 0);
    }
}
