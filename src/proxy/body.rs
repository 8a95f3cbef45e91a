//! The response body of a tunnelled request: the serving node's head turned into the client
//! response, and the body's frames pulled straight from the mesh stream.

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Response, StatusCode};
use tokio::time::Instant;

use super::errors::{full, ProxyError, HEADER_NODE};
use super::http::Reply;
use super::route::ModelCandidate;
use super::tunnel::{self, TunnelEnd, TunnelHead};
use crate::error::ErrorCode;
use crate::rpc::{CallStream, StreamItem};

/// Turn the head and the open stream into the client response.
pub(super) fn respond(
    head: TunnelHead,
    call: CallStream,
    cand: &ModelCandidate,
    sse: bool,
    deadline: Instant,
) -> Reply {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY))
        .header(HEADER_NODE, cand.node.as_str());
    for (k, v) in &head.headers {
        let lk = k.to_ascii_lowercase();
        if tunnel::DROPPED_RESPONSE_HEADERS.contains(&lk.as_str()) || lk == HEADER_NODE {
            continue;
        }
        b = b.header(k.as_str(), v.as_str());
    }
    let is_sse = sse
        || head.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("content-type") && v.starts_with("text/event-stream")
        });
    let state = Body {
        call,
        node: cand.node.clone(),
        sse: is_sse,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        after: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, next_frame);
    b.body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(full(Vec::new())))
}

/// The response body: frames pulled straight from the mesh stream by hyper (no task or channel
/// in between). When the client goes away hyper drops the body, and with it the call, which
/// cancels it on the serving node. A failure after the head ends an SSE body with an error event
/// and any other body with an I/O error (the client sees a broken response, never a silently
/// short one); so does the overall deadline.
struct Body {
    call: CallStream,
    node: String,
    sse: bool,
    /// The overall deadline: one timer for the whole body (a `timeout_at` per frame registered
    /// and removed a timer entry for every chunk of a slow stream).
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// A terminal item met while coalescing, delivered after the data.
    after: Option<crate::error::Result<StreamItem>>,
    done: bool,
}

type BodyItem = Result<Frame<Bytes>, std::io::Error>;

impl Body {
    fn fail(&mut self, status: StatusCode, cause: &str, message: String) -> BodyItem {
        self.done = true;
        self.call.cancel();
        let e = ProxyError::new(status, cause, message).on(&self.node);
        if self.sse {
            Ok(Frame::data(e.sse_event()))
        } else {
            Err(std::io::Error::other(format!("{}: {}", e.cause, e.message)))
        }
    }
}

/// Most bytes gathered into one body frame from mesh chunks that are already there.
const COALESCE_BYTES: usize = 64 * 1024;

async fn next_frame(mut b: Body) -> Option<(BodyItem, Body)> {
    if b.done {
        return None;
    }
    let item = match b.after.take() {
        Some(item) => Some(item),
        None => {
            let next = tokio::select! {
                // The stream first: what has arrived is delivered even at the deadline (as
                // `timeout_at` did).
                biased;
                item = b.call.next() => Some(item),
                _ = b.deadline.as_mut() => None,
            };
            match next {
                Some(item) => item,
                None => {
                    let f = b.fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        "deadline",
                        "proxyTimeoutMs passed while streaming".into(),
                    );
                    return Some((f, b));
                }
            }
        }
    };
    match item? {
        Ok(StreamItem::Chunk(mut data)) => {
            // Take every chunk that is already here into the same frame (never wait).
            while data.len() < COALESCE_BYTES {
                match futures_util::FutureExt::now_or_never(b.call.next()) {
                    Some(Some(Ok(StreamItem::Chunk(more)))) => data.extend_from_slice(&more),
                    Some(Some(other)) => {
                        b.after = Some(other);
                        break;
                    }
                    Some(None) | None => break,
                }
            }
            Some((Ok(Frame::data(Bytes::from(data))), b))
        }
        Ok(StreamItem::End(bytes)) => {
            let end: TunnelEnd = serde_json::from_slice(&bytes).unwrap_or_default();
            if end.ok {
                b.done = true;
                return None;
            }
            let cause = end.cause.unwrap_or_else(|| "remote_error".into());
            let message = end
                .message
                .unwrap_or_else(|| "the upstream response broke off".into());
            let f = b.fail(StatusCode::BAD_GATEWAY, &cause, message);
            Some((f, b))
        }
        Err(e) => {
            let cause = match e.code {
                ErrorCode::Unreachable => "node_unreachable",
                ErrorCode::Timeout => "mesh_timeout",
                _ => "mesh_error",
            };
            let f = b.fail(StatusCode::BAD_GATEWAY, cause, e.message);
            Some((f, b))
        }
    }
}
