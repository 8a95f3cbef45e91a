//! The local OpenAI-compatible model proxy on `127.0.0.1:<proxyPort>` (hyper).
//!
//! Today it serves `GET /v1/models` (the models this node shares) and answers every other route
//! with an OpenAI-shaped error; the mesh tunnel for `/v1/chat/completions` is built on top of the
//! mesh (see the README's roadmap). Errors always carry `x-clawmatrix-error` naming the cause.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::node::EventQueue;

/// Accept and serve until shutdown; each connection runs in its own task and is told to finish
/// gracefully when shutdown fires.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    mut shutdown: watch::Receiver<bool>,
    events: Arc<EventQueue>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, _peer)) => {
                    let config = config.clone();
                    let mut conn_shutdown = shutdown.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| handle(req, config.clone()));
                        let conn = http1::Builder::new().serve_connection(TokioIo::new(sock), svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = conn_shutdown.changed() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    });
                }
                Err(e) => {
                    events.warn(format!("model proxy: accept failed: {e}"));
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn handle(
    req: Request<Incoming>,
    config: Arc<Config>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/v1/models") => {
            let data: Vec<serde_json::Value> = config
                .models
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.id,
                        "object": "model",
                        "owned_by": config.node_id,
                    })
                })
                .collect();
            json_response(
                StatusCode::OK,
                &serde_json::json!({ "object": "list", "data": data }),
                None,
            )
        }
        ("POST", "/v1/chat/completions") => error_response(
            StatusCode::NOT_IMPLEMENTED,
            "the mesh model tunnel is not built in this version of clawmatrix yet",
            "not_implemented",
            "CLAWMATRIX_NOT_IMPLEMENTED",
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            &format!("no route for {} {path}", req.method()),
            "invalid_request_error",
            "not_found",
        ),
    };
    Ok(resp)
}

fn json_response(
    status: StatusCode,
    body: &serde_json::Value,
    cause: Option<&str>,
) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    if let Some(c) = cause {
        b = b.header("x-clawmatrix-error", c);
    }
    b.body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: &str,
) -> Response<Full<Bytes>> {
    json_response(
        status,
        &serde_json::json!({ "error": { "message": message, "type": kind, "code": code } }),
        Some(code),
    )
}
