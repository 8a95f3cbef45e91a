//! A minimal HTTP/1.1 client for upstream model APIs over TCP or TLS (rustls with the system
//! roots): request body sent whole, response body streamed.
//!
//! A connection has no task of its own: [`Conn`] holds hyper's request handle *and* its connection
//! future, and whoever uses the connection drives it while waiting for the head
//! ([`Conn::request`]) or the body ([`Conn::gather`]). That is what lets [`Conn::gather`] take
//! every body frame the socket already holds in one go: hyper hands a body over one frame at a
//! time (a one-slot channel between the connection and the body), so with the connection in a
//! task of its own each frame cost a round trip through the scheduler and the caller never saw
//! two at once.
//!
//! Connections are kept alive in a small pool per upstream (at most [`POOL_MAX_IDLE`] idle ones,
//! reused only within [`POOL_MAX_IDLE_AGE`], shorter than common server keep-alive timeouts, so a
//! reused socket is not one the server is closing). A connection goes back to the pool only after
//! its response body was read to the end; a cancelled request drops its body and connection,
//! which closes the socket at once: that is how the upstream learns the client went away.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
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
type Connection = hyper::client::conn::http1::Connection<TokioIo<Pin<Box<dyn Io>>>, Full<Bytes>>;

/// One upstream connection: hyper's request handle and its connection future, driven by the
/// task that uses it (see the module docs).
pub struct Conn {
    sender: Sender,
    /// `None` once the connection future finished (closed or failed).
    conn: Option<Connection>,
}

/// What [`Conn::gather`] found.
#[derive(Debug)]
pub enum Gathered {
    /// Some body bytes (appended to the buffer); more may follow.
    More,
    /// The body ended (the buffer may hold its last bytes).
    End,
    /// The body broke off (the buffer may hold bytes that came before).
    Failed(hyper::Error),
}

impl Conn {
    /// Let the connection read, parse and write as far as it can without waiting.
    fn drive(&mut self, cx: &mut Context<'_>) {
        drive(&mut self.conn, cx);
    }

    /// Drive once without a task (before pooling and reuse, so an idle connection settles and
    /// a connection the server closed is noticed).
    fn settle(&mut self) {
        let waker = std::task::Waker::noop();
        self.drive(&mut Context::from_waker(waker));
    }

    fn is_usable(&self) -> bool {
        self.conn.is_some() && !self.sender.is_closed()
    }

    /// Send `req` and wait for the response head, driving the connection meanwhile.
    async fn request(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Full<Bytes>>>> {
        // The two fields are borrowed apart: the request holds the sender while the
        // connection is driven.
        let mut sent = std::pin::pin!(self.sender.try_send_request(req));
        let conn = &mut self.conn;
        std::future::poll_fn(|cx| {
            drive(conn, cx);
            sent.as_mut().poll(cx)
        })
        .await
    }

    /// Wait for body bytes, then append to `out` every data frame that is already there
    /// (driving the connection between frames; never waiting for more) up to `limit` bytes.
    pub async fn gather(
        &mut self,
        body: &mut Incoming,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Gathered {
        std::future::poll_fn(|cx| self.poll_gather(cx, body, out, limit)).await
    }

    fn poll_gather(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut Incoming,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Poll<Gathered> {
        let start = out.len();
        loop {
            self.drive(cx);
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        if out.capacity() == 0 {
                            // Room for the mesh header the actor appends (no reallocation).
                            out.reserve(d.len() + HEADER_ROOM);
                        }
                        out.extend_from_slice(&d);
                    }
                    if out.len() >= limit {
                        return Poll::Ready(Gathered::More);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Gathered::Failed(e)),
                Poll::Ready(None) => return Poll::Ready(Gathered::End),
                Poll::Pending if out.len() > start => return Poll::Ready(Gathered::More),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Poll a connection future once; forget it when it finished (closed or failed).
fn drive(conn: &mut Option<Connection>, cx: &mut Context<'_>) {
    if let Some(c) = conn.as_mut() {
        if Pin::new(c).poll(cx).is_ready() {
            *conn = None;
        }
    }
}

/// Spare capacity left behind gathered bytes for the mesh frame header (a `chunk` header is
/// ~150 bytes of JSON plus the 4-byte trailer).
const HEADER_ROOM: usize = 256;

/// An upstream's identity for pooling: `tls`, host, port.
type UpstreamKey = (bool, String, u16);

/// Idle connections by upstream.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<UpstreamKey, Vec<(Instant, Conn)>>>,
}

impl Pool {
    fn take(&self, url: &UpstreamUrl) -> Option<Conn> {
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = g.get_mut(&(url.tls, url.host.clone(), url.port))?;
        while let Some((at, mut c)) = list.pop() {
            if at.elapsed() >= POOL_MAX_IDLE_AGE {
                continue;
            }
            // Nobody drove it while idle: let it read a close from the server now.
            c.settle();
            if c.is_usable() && c.sender.is_ready() {
                return Some(c);
            }
        }
        None
    }

    /// Return a connection whose last response was read to the end.
    pub fn put(&self, url: &UpstreamUrl, mut c: Conn) {
        // Let hyper finish the exchange so the connection is ready for the next request.
        c.settle();
        if !c.is_usable() {
            return;
        }
        let mut g = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = g.entry((url.tls, url.host.clone(), url.port)).or_default();
        list.retain(|(at, c)| at.elapsed() < POOL_MAX_IDLE_AGE && c.is_usable());
        if list.len() < POOL_MAX_IDLE {
            list.push((Instant::now(), c));
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
            crate::tls::client(&crate::config::TlsConfig::default()).map_err(|e| e.message)
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
        let name = crate::tls::server_name(&url.host).map_err(SendError::Connect)?;
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

async fn fresh(url: &UpstreamUrl) -> Result<Conn, SendError> {
    let io = connect(url).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(format!("HTTP handshake with {}: {e}", url.authority())))?;
    Ok(Conn {
        sender,
        conn: Some(conn),
    })
}

/// Send `req` to `url`'s host and return the response head with its streaming body, and the
/// connection (read the body with [`Conn::gather`]; give the connection back with [`Pool::put`]
/// once the body was read to the end, drop it otherwise). A pooled connection the server closed
/// meanwhile is replaced by a fresh one when the request was not sent on it.
pub async fn send(
    pool: &Pool,
    url: &UpstreamUrl,
    req: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Conn), SendError> {
    let exchange = |e: hyper::Error| SendError::Exchange(format!("{}: {e}", url.authority()));
    let req = match pool.take(url) {
        Some(mut pooled) => match pooled.request(req).await {
            Ok(resp) => return Ok((resp, pooled)),
            Err(mut e) => match e.take_message() {
                Some(req) => req,
                None => return Err(exchange(e.into_error())),
            },
        },
        None => req,
    };
    let mut c = fresh(url).await?;
    let resp = c.request(req).await.map_err(|e| exchange(e.into_error()))?;
    Ok((resp, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that answers one request with every chunk in `chunks` in one write (chunked
    /// encoding, keep-alive). `written` fires once that write completed: on loopback the bytes
    /// are then in our socket's receive queue.
    struct Upstream {
        url: UpstreamUrl,
        written: tokio::sync::oneshot::Receiver<()>,
        /// With `close`: send to make the server close the connection (without saying so in
        /// the response, as a server does with an idle keep-alive socket)...
        close: Option<tokio::sync::oneshot::Sender<()>>,
        /// ...and this fires once it did.
        closed: tokio::sync::oneshot::Receiver<()>,
    }

    async fn upstream(chunks: &'static [&'static str]) -> Upstream {
        upstream_then(chunks, false).await
    }

    async fn upstream_then(chunks: &'static [&'static str], close: bool) -> Upstream {
        use tokio::sync::oneshot;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (written_tx, written) = oneshot::channel();
        let (close_tx, close_rx) = oneshot::channel::<()>();
        let (closed_tx, closed) = oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for c in chunks {
                out.extend_from_slice(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
            }
            out.extend_from_slice(b"0\r\n\r\n");
            s.write_all(&out).await.unwrap();
            let _ = written_tx.send(());
            if close {
                // Once the client read it to the end and pooled the connection.
                let _ = close_rx.await;
                drop(s);
                let _ = closed_tx.send(());
                return;
            }
            // Keep the connection open (keep-alive) until the client goes.
            let _ = s.read(&mut buf).await;
        });
        Upstream {
            url: UpstreamUrl::parse(&format!("http://{addr}")).unwrap(),
            written,
            close: close.then_some(close_tx),
            closed,
        }
    }

    /// Wait (bounded) for one of the upstream's signals.
    async fn signal(rx: tokio::sync::oneshot::Receiver<()>) {
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("within 5 s")
            .expect("the upstream signalled");
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/")
            .header("host", "x")
            .body(Full::default())
            .unwrap()
    }

    #[tokio::test]
    async fn gather_takes_every_frame_already_there_in_one_call() {
        let up = upstream(&["a1", "b22", "c333"]).await;
        let url = up.url;
        let pool = Pool::default();
        let (resp, mut conn) = send(&pool, &url, get()).await.unwrap();
        let mut body = resp.into_body();
        // All of it is in our socket first.
        signal(up.written).await;
        let mut out = Vec::new();
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            conn.gather(&mut body, &mut out, 1 << 16),
        )
        .await
        .unwrap();
        assert!(matches!(got, Gathered::End), "{got:?}");
        assert_eq!(out, b"a1b22c333", "in order, in one buffer");
        assert!(
            out.capacity() - out.len() >= HEADER_ROOM - 9,
            "room for the header"
        );
        pool.put(&url, conn);
        assert!(
            pool.take(&url).is_some(),
            "read to the end: pooled and reusable"
        );
    }

    #[tokio::test]
    async fn gather_stops_at_its_limit_and_keeps_the_rest_for_the_next_call() {
        let up = upstream(&["a1", "b22", "c333"]).await;
        let (resp, mut conn) = send(&Pool::default(), &up.url, get()).await.unwrap();
        let mut body = resp.into_body();
        signal(up.written).await;
        let mut all = Vec::new();
        loop {
            let mut out = Vec::new();
            let got =
                tokio::time::timeout(Duration::from_secs(5), conn.gather(&mut body, &mut out, 3))
                    .await
                    .unwrap();
            assert!(
                out.len() <= 3 + 4,
                "at most one frame past the limit: {out:?}"
            );
            all.extend_from_slice(&out);
            match got {
                Gathered::More => continue,
                Gathered::End => break,
                Gathered::Failed(e) => panic!("{e}"),
            }
        }
        assert_eq!(all, b"a1b22c333");
    }

    #[tokio::test]
    async fn the_pool_does_not_hand_out_a_connection_the_server_closed_while_it_was_idle() {
        let mut up = upstream_then(&["ok"], true).await;
        let url = up.url.clone();
        let pool = Pool::default();
        let (resp, mut conn) = send(&pool, &url, get()).await.unwrap();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Gathered::More = conn.gather(&mut body, &mut out, 1 << 16).await {}
        // Read to the end before the close: pooled.
        pool.put(&url, conn);
        // Now the server closes; nobody drives the idle connection meanwhile.
        let _ = up.close.take().expect("a closing upstream").send(());
        signal(up.closed).await;
        // `take` drives it once, sees the close, and does not hand it out.
        assert!(
            pool.take(&url).is_none(),
            "a closed connection came out of the pool"
        );
    }
}
