//! A minimal HTTP/1.1 client for upstream model APIs: one connection per request over TCP or
//! TLS (rustls with the system roots), request body sent whole, response body streamed. Keeping
//! no pool means a cancelled request closes its socket at once, which is how the upstream learns
//! the client went away.

use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::UpstreamUrl;

/// Time allowed to connect (TCP + TLS) to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Send `req` to `url`'s host and return the response head with its streaming body. The
/// connection lives as long as the body; dropping the body closes the socket.
pub async fn send(
    url: &UpstreamUrl,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, SendError> {
    let io = connect(url).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Connect(format!("HTTP handshake with {}: {e}", url.authority())))?;
    // The connection task ends when the response body is dropped or finished.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| SendError::Exchange(format!("{}: {e}", url.authority())))
}
