//! The mesh listener: accepts inbound connections on `listenHost:listenPort`, optionally wraps
//! them in TLS, upgrades to WebSocket and hands each one to its own link task.
//!
//! Flow per connection (one task): TLS accept (if configured) → WebSocket upgrade with small
//! pre-auth limits, then our own framing ([`super::ws`]) → handshake
//! ([`super::link::accept_handshake`]) → the full frame limits → [`super::link::run`].
//!
//! At most [`MAX_PENDING_HANDSHAKES`] connections may be unauthenticated at once; extra ones are
//! closed at accept. Each pending one is bounded in time (the handshake deadline, also applied to
//! TLS and the upgrade) and in memory (`link::HANDSHAKE_MAX_MESSAGE`), so a flood of idle or
//! junk sockets costs at most 64 × a few KiB and goes away within the handshake timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{Either, OptionFuture};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::events::Level;
use super::link::{self, LinkCtx};
use super::ws::Role;
use crate::mesh::Direction;
use crate::proto::handshake::HANDSHAKE_TIMEOUT_MS;
use crate::proto::{NonceCache, RejectCode};

/// Most inbound connections that may be in TLS/upgrade/handshake at once. 64 covers a burst of
/// every peer of a large mesh reconnecting together; beyond it sockets are closed at accept.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Everything the accept loop shares with its connection tasks.
pub(crate) struct Listener {
    pub ctx: Arc<LinkCtx>,
    pub tls: Option<TlsAcceptor>,
    /// The listener-wide replay cache. A std `Mutex`: it is held only for one synchronous
    /// `Acceptor::on_frame` call, never across an `.await`.
    pub nonces: Arc<Mutex<NonceCache>>,
}

/// Accept until shutdown. Dropping the listener on return releases the port; connection tasks
/// already running are then awaited (the actor closes registered links gracefully).
pub(crate) async fn serve(listener: TcpListener, this: Listener) {
    let this = Arc::new(this);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut shutdown = this.ctx.shutdown.clone();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // 1. Shutdown first: a stop must never wait behind a flood of connections.
            _ = shutdown.changed() => break,
            // 2. Inbound connections.
            accepted = listener.accept() => match accepted {
                Ok((sock, addr)) => match pending.clone().try_acquire_owned() {
                    Ok(permit) => {
                        conns.spawn(connection(this.clone(), sock, addr, permit));
                    }
                    Err(_) => {
                        this.ctx.events.push(
                            Level::Debug,
                            format!("mesh listener: {addr} closed at accept: \
                                     {MAX_PENDING_HANDSHAKES} handshakes already pending"),
                        );
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
    permit: OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let _ = sock.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let pre_auth = Box::pin(authenticate(this.clone(), sock, addr, deadline));
    async move {
        let authed = pre_auth.await;
        drop(permit);
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
    Plain(link::WsLink<TcpStream>, crate::proto::NodeId),
    Tls(
        link::WsLink<tokio_rustls::server::TlsStream<TcpStream>>,
        crate::proto::NodeId,
    ),
}

/// TLS accept (if configured), WebSocket upgrade and handshake, bounded by `deadline`.
async fn authenticate(
    this: Arc<Listener>,
    sock: TcpStream,
    addr: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<Authed> {
    let Some(acceptor) = &this.tls else {
        let (ws, peer) = upgrade(&this, sock, addr, deadline).await?;
        return Some(Authed::Plain(ws, peer));
    };
    let mut shutdown = this.ctx.shutdown.clone();
    // Shutdown first, then the TLS handshake (bounded by the handshake deadline).
    let tls = tokio::select! {
        biased;
        _ = shutdown.changed() => return None,
        r = tokio::time::timeout_at(deadline, acceptor.accept(sock)) => r,
    };
    match tls {
        Ok(Ok(stream)) => {
            let (ws, peer) = upgrade(&this, stream, addr, deadline).await?;
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
    addr: SocketAddr,
    deadline: tokio::time::Instant,
) -> Option<(link::WsLink<S>, crate::proto::NodeId)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ctx = &this.ctx;
    let mut shutdown = ctx.shutdown.clone();
    let accepted = tokio::select! {
        biased;
        _ = shutdown.changed() => return None,
        r = tokio::time::timeout_at(
            deadline,
            tokio_tungstenite::accept_async_with_config(stream, Some(link::ws_handshake_config())),
        ) => r,
    };
    let mut ws = match accepted {
        // tungstenite did the HTTP upgrade; our framing takes the socket from here (the dialer
        // sends nothing before our 101, so no bytes are left in tungstenite's buffer).
        Ok(Ok(ws)) => link::WsLink::new(ws.into_inner(), Role::Server),
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
    let peer = link::accept_handshake(&mut ws, ctx, &this.nonces, addr)
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

    #[tokio::test]
    async fn an_idle_inbound_link_task_stays_small() {
        let (ctx, _rx, _stop) = LinkCtx::for_test();
        let this = Arc::new(Listener {
            ctx,
            tls: None,
            nonces: Arc::new(Mutex::new(NonceCache::default())),
        });
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (sock, addr) = l.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let task = connection(this, sock, addr, permit);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MAX_CONNECTION_FUTURE,
            "connection future is {size} bytes (bound {MAX_CONNECTION_FUTURE})"
        );
    }
}
