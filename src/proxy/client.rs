//! A minimal HTTP/1.1 client for upstream model APIs over TCP or TLS (rustls with the system
//! roots): request body sent whole, response body streamed.
//!
//! Connections are kept alive in a small pool per upstream (at most [`POOL_MAX_IDLE`] idle ones,
//! reused only within [`POOL_MAX_IDLE_AGE`], shorter than common server keep-alive timeouts, so a
//! reused socket is not one the server is closing). A connection goes back to the pool only after
//! its response body was read to the end; a cancelled request drops its body and connection,
//! which closes the socket at once: that is how the upstream learns the client went away.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::UpstreamUrl;

/// Time allowed to connect (TCP + TLS) to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections kept per upstream.
pub const POOL_MAX_IDLE: usize = 16;
/// An idle connection older than this is closed instead of reused.
pub const POOL_MAX_IDLE_AGE: Duration = Duration::from_secs(4);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An upstream's identity for pooling: `tls`, host, port.
type UpstreamKey = (bool, String, u16);

/// Idle connections by upstream.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<UpstreamKey, Vec<(Instant, Sender)>>>,
}

impl Pool {
    fn take(&self, url: &UpstreamUrl) -> Option<Sender> {
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = g.get_mut(&(url.tls, url.host.clone(), url.port))?;
        while let Some((at, s)) = list.pop() {
            if at.elapsed() < POOL_MAX_IDLE_AGE && !s.is_closed() && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Return a connection whose last response was read to the end.
    pub fn put(&self, url: &UpstreamUrl, s: Sender) {
        if s.is_closed() {
            return;
        }
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = g.entry((url.tls, url.host.clone(), url.port)).or_default();
        list.retain(|(at, s)| at.elapsed() < POOL_MAX_IDLE_AGE && !s.is_closed());
        if list.len() < POOL_MAX_IDLE {
            list.push((Instant::now(), s));
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Why a request did not get a response head.
#[derive(Debug)]
pub enum SendError {
    /// TCP/TLS connect failed or timed out (nothing was sent: safe to try elsewhere).
    Connect(String),
    /// The request was sent (maybe partly) but no response head came back.
    Exchange(String),
}

fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    static CONNECTOR: OnceLock<Result<tokio_rustls::TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            crate::node::tls::client(&crate::config::TlsConfig::default()).map_err(|e| e.message)
        })
        .clone()
}

async fn connect(url: &UpstreamUrl) -> Result<Pin<Box<dyn Io>>, SendError> {
    let host = url.host.clone();
    let fut = async {
        let tcp = TcpStream::connect((host.as_str(), url.port))
            .await
            .map_err(|e| SendError::Connect(format!("connect {}: {e}", url.authority())))?;
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return Ok(Box::pin(tcp) as Pin<Box<dyn Io>>);
        }
        let connector = tls_connector().map_err(SendError::Connect)?;
        let name = crate::node::tls::server_name(&url.host).map_err(SendError::Connect)?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| SendError::Connect(format!("TLS with {}: {e}", url.authority())))?;
        Ok(Box::pin(tls) as Pin<Box<dyn Io>>)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| {
            SendError::Connect(format!(
                "connect {}: no answer within {} s",
                url.authority(),
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
}

async fn fresh(url: &UpstreamUrl) -> Result<Sender, SendError> {
    let io = connect(url).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(format!("HTTP handshake with {}: {e}", url.authority())))?;
    // The connection task ends when the sender and the response body are gone.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Send `req` to `url`'s host and return the response head with its streaming body, and the
/// connection's sender (give it back with [`Pool::put`] once the body was read to the end; drop
/// it otherwise). A pooled connection the server closed meanwhile is replaced by a fresh one when
/// the request was not sent on it.
pub async fn send(
    pool: &Pool,
    url: &UpstreamUrl,
    req: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Sender), SendError> {
    let exchange = |e: hyper::Error| SendError::Exchange(format!("{}: {e}", url.authority()));
    if let Some(mut pooled) = pool.take(url) {
        match pooled.try_send_request(req).await {
            Ok(resp) => return Ok((resp, pooled)),
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    let mut sender = fresh(url).await?;
                    let resp = sender.send_request(req).await.map_err(exchange)?;
                    return Ok((resp, sender));
                }
                None => return Err(exchange(e.into_error())),
            },
        }
    }
    let mut sender = fresh(url).await?;
    let resp = sender.send_request(req).await.map_err(exchange)?;
    Ok((resp, sender))
}
