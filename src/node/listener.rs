//! The mesh listener: accepts inbound connections on `listenHost:listenPort`, optionally wraps
//! them in TLS, upgrades to WebSocket and hands each one to its own link task.
//!
//! Flow per connection (one task): TLS accept (if configured) → WebSocket upgrade with small
//! pre-auth limits, then our own framing ([`super::ws`]) → handshake
//! ([`super::link::accept_handshake`]) → the full frame limits → [`super::link::run`].
//!
//! Admission ([`super::admission`]): at most [`MAX_PENDING_HANDSHAKES`] connections may be
//! unauthenticated at once, and at most [`MAX_PENDING_PER_SOURCE`] from one source; extra ones
//! are closed at accept and counted. Each pending one is bounded in memory
//! (`link::HANDSHAKE_MAX_MESSAGE`) and in time by one hard deadline, [`HANDSHAKE_TIMEOUT_MS`]
//! after accept, that covers TLS, the upgrade, the handshake and every write on the way (pongs,
//! handshake frames, the rejection and its close): the peer's part ends 100 ms before it (then
//! it is rejected with `timeout`), and whatever still runs at the deadline is dropped with the
//! socket. So a
//! flood of idle, junk or never-reading sockets costs at most 64 × a few KiB, each goes away
//! within the deadline, and one address cannot take more than 8 of the 64 slots.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{Either, OptionFuture};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::admission::{Admission, PreauthReject, Slot};
pub use super::admission::{MAX_PENDING_HANDSHAKES, MAX_PENDING_PER_SOURCE};
use super::link::{self, LinkCtx, PreauthDeadline};
use super::ws::Role;
use crate::events::Level;
use crate::mesh::Direction;
pub use crate::proto::handshake::HANDSHAKE_TIMEOUT_MS;
use crate::proto::{NonceCache, RejectCode};

/// The kernel's queue of connections not yet accepted (capped at `net.core.somaxconn`, 4096 on
/// current Linux). A flood of connects fills a short queue (std's default is 128) faster than
/// the accept loop drains it, and a real peer's SYN that finds it full is dropped and only
/// retried a second later; the accept loop refuses a flooding socket in microseconds, so a long
/// queue costs nothing but absorbs the burst.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listening socket the embedder bound and hands to [`crate::app::Node::start`] (through
/// `StartOptions::listener` or `StartOptions::proxy_listener`) instead of letting the node bind
/// the configured port: the port is then never released between choosing it and serving on it
/// (tests bind `127.0.0.1:0` once and hand the socket over, with no bind-release-rebind race).
///
/// Contract: the socket must already listen, and its port must be the configured one
/// (`listenPort` / `proxyPort`, which status and the providers keep reporting); a socket on
/// another port fails `start()` with `CLAWMATRIX_BIND_FAILED` naming the field. Its address
/// and accept backlog are the embedder's (the node binds its own with [`LISTEN_BACKLOG`]).
/// The handle is cloneable so `StartOptions` stays `Clone`; the socket goes to the first
/// `start()` that binds, so a later restart (after `stop()`) binds the configured port itself.
/// A `listener` handed to a node with `listen: false` is dropped.
#[derive(Debug, Clone)]
pub struct PreBound(Arc<Mutex<Option<std::net::TcpListener>>>);

impl PreBound {
    pub fn new(listener: std::net::TcpListener) -> PreBound {
        PreBound(Arc::new(Mutex::new(Some(listener))))
    }

    /// The socket, if no `start()` took it yet.
    pub(crate) fn take(&self) -> Option<std::net::TcpListener> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Take the socket for `runtime` if it is still here: `None` when an earlier start took it
    /// (the caller then binds `port` itself), an error when it is not on `port`.
    pub(crate) fn adopt(
        &self,
        runtime: &tokio::runtime::Runtime,
        port: u16,
        field: &str,
    ) -> crate::error::Result<Option<TcpListener>> {
        use crate::error::{Error, ErrorCode};
        let Some(l) = self.take() else {
            return Ok(None);
        };
        let failed = |e: String| Error::new(ErrorCode::BindFailed, format!("{field}: {e}"));
        let addr = l
            .local_addr()
            .map_err(|e| failed(format!("handed-over socket: {e}")))?;
        if addr.port() != port {
            return Err(failed(format!(
                "the handed-over socket is bound to {addr}, not to the configured port {port}"
            )));
        }
        l.set_nonblocking(true)
            .map_err(|e| failed(format!("{addr}: {e}")))?;
        let _enter = runtime.enter();
        TcpListener::from_std(l)
            .map(Some)
            .map_err(|e| failed(format!("{addr}: {e}")))
    }
}

/// Everything the accept loop shares with its connection tasks.
pub(crate) struct Listener {
    pub ctx: Arc<LinkCtx>,
    pub tls: Option<TlsAcceptor>,
    /// The listener-wide replay cache. A std `Mutex`: it is held only for one synchronous
    /// `Acceptor::on_frame` call, never across an `.await`.
    pub nonces: Arc<Mutex<NonceCache>>,
    /// The pre-auth slots (global and per source).
    pub admission: Arc<Admission>,
    /// The hard pre-auth deadline after accept ([`HANDSHAKE_TIMEOUT_MS`] unless a test or an
    /// embedder set a shorter one through `StartOptions::handshake_timeout`).
    pub handshake_timeout: Duration,
}

/// Accept until shutdown. Dropping the listener on return releases the port; connection tasks
/// already running are then awaited (the actor closes registered links gracefully).
pub(crate) async fn serve(listener: TcpListener, this: Listener) {
    let this = Arc::new(this);
    let mut shutdown = this.ctx.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // 1. Shutdown first: a stop must never wait behind a flood of connections.
            _ = shutdown.changed() => break,
            // 2. Inbound connections.
            accepted = listener.accept() => match accepted {
                // Admission before anything is read: a refused socket is closed (and counted)
                // here, so a flood costs the accept loop one map update per socket.
                Ok((sock, addr)) => match this.admission.try_admit(addr.ip()) {
                    Ok(slot) => {
                        conns.spawn(connection(this.clone(), sock, addr, slot));
                    }
                    Err((why, count)) => {
                        // Logged at the 1st, 2nd, 4th, 8th... refusal of each reason: a flood
                        // must not push everything else out of the bounded event queue.
                        if count.is_power_of_two() {
                            this.ctx.events.push(
                                Level::Debug,
                                format!("mesh listener: {addr} closed at accept: {} \
                                         ({count} refused so far)", refusal(why)),
                            );
                        }
                        drop(sock);
                    }
                },
                Err(e) => {
                    this.ctx.events.warn(format!("mesh listener: accept failed: {e}"));
                    // Back off briefly on errors like EMFILE instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // 3. Reap finished connection tasks so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

fn refusal(why: PreauthReject) -> String {
    match why {
        PreauthReject::GlobalFull => {
            format!("{MAX_PENDING_HANDSHAKES} handshakes already pending")
        }
        PreauthReject::PerSource => {
            format!("{MAX_PENDING_PER_SOURCE} handshakes already pending from this source")
        }
        PreauthReject::Deadline => "pre-auth deadline".to_string(),
    }
}

/// One inbound connection's task. An idle link is this future parked in its link's pump, so:
/// the pre-auth part (TLS, upgrade, handshake) is boxed, its state is several KiB (a TLS stream
/// is kept by value while it runs) and only needed until the peer authenticated; the socket
/// goes into that box at once (an `async fn`'s arguments stay in its future for its whole
/// life); and the authenticated socket is moved whole into the link's future (see
/// [`link::run`]).
fn connection(
    this: Arc<Listener>,
    sock: TcpStream,
    addr: SocketAddr,
    slot: Slot,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let _ = sock.set_nodelay(true);
    let deadline = PreauthDeadline::inbound(tokio::time::Instant::now(), this.handshake_timeout);
    // The hard deadline over the whole pre-auth part: whatever it waits on (a write to a peer
    // that never reads, the actor), the socket is dropped and the slot freed at `hard`.
    let pre_auth = Box::pin(tokio::time::timeout_at(
        deadline.hard,
        authenticate(this.clone(), sock, addr, deadline),
    ));
    async move {
        let authed = pre_auth.await.unwrap_or_else(|_| {
            this.ctx.counters.preauth_reject(PreauthReject::Deadline);
            this.ctx.events.push(
                Level::Debug,
                format!("mesh listener: {addr} cut at the pre-auth deadline"),
            );
            None
        });
        drop(slot);
        let ctx = &this.ctx;
        let addr = addr.to_string();
        // Authenticated: `run` switches from the pre-auth limits to the frame limits.
        let linked = authed.map(|a| match a {
            Authed::Plain(ws, peer) => {
                Either::Left(link::run(ws, ctx, peer, Direction::Inbound, addr))
            }
            Authed::Tls(ws, peer) => {
                Either::Right(link::run(ws, ctx, peer, Direction::Inbound, addr))
            }
        });
        OptionFuture::from(linked).await;
    }
}

/// An authenticated inbound socket, plain or TLS, and the peer's node id.
enum Authed {
    Plain(link::WsLink<TcpStream>, link::Peer),
    Tls(
        link::WsLink<tokio_rustls::server::TlsStream<TcpStream>>,
        link::Peer,
    ),
}

/// TLS accept (if configured), WebSocket upgrade and handshake, bounded by `deadline`.
async fn authenticate(
    this: Arc<Listener>,
    sock: TcpStream,
    addr: SocketAddr,
    deadline: PreauthDeadline,
) -> Option<Authed> {
    let socket = super::ws::socket_fd(&sock);
    let Some(acceptor) = &this.tls else {
        let (ws, peer) = upgrade(&this, sock, socket, addr, deadline).await?;
        return Some(Authed::Plain(ws, peer));
    };
    let mut shutdown = this.ctx.shutdown.clone();
    // Shutdown first, then the TLS handshake (bounded by the handshake deadline).
    let tls = tokio::select! {
        biased;
        _ = shutdown.changed() => return None,
        r = tokio::time::timeout_at(deadline.read, acceptor.accept(sock)) => r,
    };
    match tls {
        Ok(Ok(stream)) => {
            let (ws, peer) = upgrade(&this, stream, socket, addr, deadline).await?;
            Some(Authed::Tls(ws, peer))
        }
        Ok(Err(e)) => {
            let why = format!("TLS: {e}");
            pre_handshake_reject(&this, addr, RejectCode::Malformed, &why).await;
            None
        }
        Err(_) => {
            let why = "TLS handshake timed out";
            pre_handshake_reject(&this, addr, RejectCode::Timeout, why).await;
            None
        }
    }
}

/// A failure before any WebSocket exists: log once and count, like a handshake rejection.
async fn pre_handshake_reject(this: &Listener, addr: SocketAddr, code: RejectCode, why: &str) {
    this.ctx.events.warn(format!(
        "mesh: handshake rejected (inbound from {addr}): {code}: {why}"
    ));
    this.ctx.actor.handshake_rejected(code).await;
}

async fn upgrade<S>(
    this: &Listener,
    stream: S,
    socket: Option<super::ws::SocketFd>,
    addr: SocketAddr,
    deadline: PreauthDeadline,
) -> Option<(link::WsLink<S>, link::Peer)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ctx = &this.ctx;
    let mut shutdown = ctx.shutdown.clone();
    let accepted = tokio::select! {
        biased;
        _ = shutdown.changed() => return None,
        r = tokio::time::timeout_at(
            deadline.read,
            tokio_tungstenite::accept_async_with_config(stream, Some(link::ws_handshake_config())),
        ) => r,
    };
    let mut ws = match accepted {
        // tungstenite did the HTTP upgrade; our framing takes the socket from here (the dialer
        // sends nothing before our 101, so no bytes are left in tungstenite's buffer).
        Ok(Ok(ws)) => link::WsLink::new(ws.into_inner(), Role::Server, socket),
        Ok(Err(e)) => {
            let why = format!("WebSocket upgrade failed: {e}");
            pre_handshake_reject(this, addr, RejectCode::Malformed, &why).await;
            return None;
        }
        Err(_) => {
            let why = "no WebSocket upgrade before the handshake deadline";
            pre_handshake_reject(this, addr, RejectCode::Timeout, why).await;
            return None;
        }
    };
    let peer = link::accept_handshake(&mut ws, ctx, &this.nonces, addr, deadline)
        .await
        .ok()?;
    Some((ws, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest future of one inbound connection's task, in bytes. An idle link keeps its whole
    /// task: this was 1,712 bytes (debug build) before the pre-auth state, the consumed
    /// arguments and the once-awaited sends left the long-lived part; it is ~1,060 now.
    const MAX_CONNECTION_FUTURE: usize = 1_200;

    fn listener(ctx: Arc<LinkCtx>, handshake_timeout: Duration) -> Arc<Listener> {
        let admission = Admission::new(
            MAX_PENDING_HANDSHAKES,
            MAX_PENDING_PER_SOURCE,
            Arc::clone(&ctx.counters),
        );
        Arc::new(Listener {
            ctx,
            tls: None,
            nonces: Arc::new(Mutex::new(NonceCache::default())),
            admission,
            handshake_timeout,
        })
    }

    #[tokio::test]
    async fn an_idle_inbound_link_task_stays_small() {
        let (ctx, _rx, _stop) = LinkCtx::for_test();
        let this = listener(ctx, Duration::from_millis(HANDSHAKE_TIMEOUT_MS));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (sock, addr) = l.accept().await.unwrap();
        let slot = this.admission.try_admit(addr.ip()).unwrap();
        let task = connection(this, sock, addr, slot);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MAX_CONNECTION_FUTURE,
            "connection future is {size} bytes (bound {MAX_CONNECTION_FUTURE})"
        );
    }

    /// Whatever the pre-auth part waits on, the connection ends at the hard deadline: here the
    /// rejection of a junk upgrade waits on an actor whose queue is full and never drained.
    #[tokio::test]
    async fn a_connection_stuck_before_auth_is_cut_at_the_hard_deadline_and_counted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ctx, _rx, _stop) = LinkCtx::for_test();
        // Fill the actor's one-slot queue: the connection's own report then waits forever.
        ctx.actor.handshake_rejected(RejectCode::Malformed).await;
        let timeout = Duration::from_millis(300);
        let this = listener(Arc::clone(&ctx), timeout);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (sock, addr) = l.accept().await.unwrap();
        let slot = this.admission.try_admit(addr.ip()).unwrap();
        assert_eq!(ctx.counters.pending(), 1);
        let t0 = tokio::time::Instant::now();
        let task = tokio::spawn(connection(Arc::clone(&this), sock, addr, slot));
        client.write_all(b"junk\r\n\r\n").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the connection task ends")
            .unwrap();
        let took = t0.elapsed();
        assert!(
            took >= timeout - Duration::from_millis(5)
                && took < timeout + Duration::from_millis(200),
            "ended after {took:?} (deadline {timeout:?})"
        );
        assert_eq!(ctx.counters.pending(), 0);
        let rejects: Vec<_> = ctx.counters.preauth_rejects().collect();
        assert!(rejects.contains(&("deadline", 1)), "{rejects:?}");
        // The socket is gone: the client reads (what was written, then) its end.
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), client.read_to_end(&mut buf))
            .await
            .expect("closed")
            .ok();
    }
}
