//! Dialers: one task per configured peer that keeps a link to it up.
//!
//! Loop: (skip while the peer is connected inbound; re-checked every attempt) → TCP connect →
//! TLS for `wss://` → WebSocket upgrade → handshake expecting the configured `nodeId`
//! (`wrong_node` otherwise) → run the link in this same task → on loss, back off.
//!
//! Backoff (see [`super::backoff`]): 1 s doubling to 60 s, ±20 % jitter from a seed drawn from
//! the OS. It resets to 1 s only after a link proved healthy: it stayed up for at least one
//! heartbeat interval AND a pong was received on it (so the peer really processed our frames).
//! A link that authenticates and dies at once keeps backing off.
//!
//! Shutdown: connect, TLS and upgrade race the shutdown signal; the handshake watches it too;
//! a running link is closed gracefully by the actor (leave, flush, close 1000), after which the
//! loop sees the signal and ends. Sleeping in backoff ends at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::backoff::Backoff;
use super::link::{self, HandshakeFailure, LinkCtx};
use super::ws::Role;
use crate::config::PeerConfig;
use crate::events::Level;
use crate::mesh::Direction;
use crate::proto::handshake::HANDSHAKE_TIMEOUT_MS;
use crate::proto::RejectCode;

/// TCP connect timeout: 10 s, like the handshake. A blackholed address must not keep the dialer
/// from backing off.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// While the peer is connected inbound, check again this often whether we should dial.
pub const CONNECTED_RECHECK: Duration = Duration::from_secs(1);

/// One dialer's configuration.
pub(crate) struct DialTarget {
    pub peer: PeerConfig,
    /// Present when the URL is `wss://`.
    pub tls: Option<TlsConnector>,
    /// Heartbeat interval: the minimum uptime of a healthy link.
    pub heartbeat: Duration,
    /// Jitter seed.
    pub seed: u64,
    /// During a secret rotation: dial with the previous secret first (set after the peer
    /// refused the current one with `bad_mac`, cleared when it refuses that one too).
    pub previous_first: std::sync::atomic::AtomicBool,
}

enum Attempt {
    /// A link ran and ended.
    Linked(link::LinkEnd),
    /// No link: why (already logged when it was a handshake rejection).
    Failed { why: String, logged: bool },
    /// Shutdown while connecting.
    Stopped,
}

/// Keep a link to `target.peer` until shutdown.
pub(crate) async fn run(ctx: Arc<LinkCtx>, target: DialTarget) {
    let mut backoff = Backoff::new(target.seed);
    let mut shutdown = ctx.shutdown.clone();
    let node = target.peer.node_id.as_str();
    let url = target.peer.url.as_str();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let delay = if ctx.actor.connected(node).await {
            // Connected inbound (or by another path to the same id): nothing to do now.
            CONNECTED_RECHECK
        } else {
            match attempt(&ctx, &target).await {
                Attempt::Stopped => return,
                Attempt::Linked(end) => {
                    if end.proved && end.up_for >= target.heartbeat {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    ctx.events.info(format!(
                        "mesh: link to {node} ({url}) lost after {} ms ({}); reconnecting in {} ms",
                        end.up_for.as_millis(),
                        end.reason,
                        delay.as_millis()
                    ));
                    delay
                }
                Attempt::Failed { why, logged } => {
                    let delay = backoff.next_delay();
                    let msg = format!(
                        "mesh: cannot link to {node} at {url}: {why}; retrying in {} ms",
                        delay.as_millis()
                    );
                    // Handshake rejections were logged once already (with their code).
                    ctx.events
                        .push(if logged { Level::Debug } else { Level::Warn }, msg);
                    delay
                }
            }
        };
        tokio::select! {
            biased;
            // Shutdown first: a stop must not wait out a 60 s backoff.
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn attempt(ctx: &LinkCtx, target: &DialTarget) -> Attempt {
    let mut shutdown = ctx.shutdown.clone();
    let p = &target.peer.parsed;
    let connect = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((p.host.as_str(), p.port)),
    );
    // Every connect phase races the shutdown signal, which wins ties.
    let tcp = tokio::select! {
        biased;
        _ = shutdown.changed() => return Attempt::Stopped,
        r = connect => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return failed(format!("connect: {e}")),
            Err(_) => return failed("connect: timed out".into()),
        },
    };
    let _ = tcp.set_nodelay(true);
    let socket = super::ws::socket_fd(&tcp);
    let url = || target.peer.url.to_string();
    // One `.await` of the link, plain or TLS: two would each keep a link future's worth of
    // room in this task.
    let linked = match &target.tls {
        None => match Box::pin(authenticate(ctx, target, tcp, socket)).await {
            Ok((ws, peer)) => Either::Left(link::run(ws, ctx, peer, Direction::Outbound, url())),
            Err(attempt) => return attempt,
        },
        Some(connector) => {
            let name = match crate::tls::server_name(&p.host) {
                Ok(n) => n,
                Err(e) => return failed(e),
            };
            let tls = tokio::select! {
                biased;
                _ = shutdown.changed() => return Attempt::Stopped,
                // Boxed: a TLS handshake is kilobytes of state, needed only until it is done.
                r = Box::pin(tokio::time::timeout(
                    Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                    connector.connect(name, tcp),
                )) => r,
            };
            let stream = match tls {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return failed(format!("TLS: {e}")),
                Err(_) => return failed("TLS: timed out".into()),
            };
            match Box::pin(authenticate(ctx, target, stream, socket)).await {
                Ok((ws, peer)) => {
                    Either::Right(link::run(ws, ctx, peer, Direction::Outbound, url()))
                }
                Err(attempt) => return attempt,
            }
        }
    };
    Attempt::Linked(linked.await)
}

fn failed(why: String) -> Attempt {
    Attempt::Failed { why, logged: false }
}

/// The pre-auth part of a link (upgrade and handshake). Callers box it: its state is several
/// KiB and only needed until the peer authenticated, while the task lives as long as the link;
/// they then move the result whole into [`link::run`] (a destructured value kept across an
/// `.await` would keep its storage in every idle link's task).
async fn authenticate<S>(
    ctx: &LinkCtx,
    target: &DialTarget,
    stream: S,
    socket: Option<super::ws::SocketFd>,
) -> Result<(link::WsLink<S>, link::Peer), Attempt>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut shutdown = ctx.shutdown.clone();
    let url = target.peer.url.as_str();
    let upgrade = tokio::time::timeout(
        Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        tokio_tungstenite::client_async_with_config(url, stream, Some(link::ws_handshake_config())),
    );
    let mut ws = tokio::select! {
        biased;
        _ = shutdown.changed() => return Err(Attempt::Stopped),
        r = upgrade => match r {
            // tungstenite did the HTTP upgrade; our framing takes the socket from here (the
            // listener sends nothing before our hello, so no bytes are left in its buffer).
            Ok(Ok((ws, _response))) => link::WsLink::new(ws.into_inner(), Role::Client, socket),
            Ok(Err(e)) => return Err(failed(format!("WebSocket upgrade: {e}"))),
            Err(_) => return Err(failed("WebSocket upgrade: timed out".into())),
        },
    };
    // Handshake-sized messages until the handshake succeeded; binary frames the listener sends
    // right behind `welcome` wait in our read buffer and are read with the full limits.
    use std::sync::atomic::Ordering;
    let previous_first = target.previous_first.load(Ordering::Relaxed);
    match link::dial_handshake(&mut ws, ctx, &target.peer.node_id, url, previous_first).await {
        Ok(peer) => Ok((ws, peer)),
        Err(HandshakeFailure::Rejected(code)) => {
            if code == RejectCode::BadMac && ctx.handshake.previous.is_some() {
                // The peer may hold only the other secret of the rotation: try it next.
                target
                    .previous_first
                    .store(!previous_first, Ordering::Relaxed);
            }
            Err(Attempt::Failed {
                why: format!("handshake rejected: {code}"),
                logged: true,
            })
        }
        Err(HandshakeFailure::Aborted(why)) => {
            if *shutdown.borrow() {
                return Err(Attempt::Stopped);
            }
            Err(failed(format!("handshake: {why}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerUrl;

    /// Largest future of one dialer task, in bytes: an outbound link is this task parked in
    /// its link's pump, so the TLS connect and the pre-auth part are boxed and the link is
    /// awaited in one place (1,600 bytes in a debug build; 2,568 when the plain and the TLS
    /// link were awaited in two places).
    const MAX_DIALER_FUTURE: usize = 1_800;

    #[test]
    fn an_idle_outbound_link_task_stays_small() {
        let (ctx, _rx, _stop) = LinkCtx::for_test();
        let url = "ws://127.0.0.1:9".to_string();
        let target = DialTarget {
            peer: PeerConfig {
                node_id: "p".into(),
                parsed: PeerUrl::parse(&url).unwrap(),
                url,
            },
            tls: None,
            heartbeat: Duration::from_secs(1),
            seed: 1,
            previous_first: Default::default(),
        };
        let task = run(ctx, target);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MAX_DIALER_FUTURE,
            "dialer future is {size} bytes (bound {MAX_DIALER_FUTURE})"
        );
    }
}
