//! The consumer side: one HTTP request on `127.0.0.1:<proxyPort>` → auth, body limit, model
//! routing, the mesh call with retries before the first byte, and the response streamed back
//! byte for byte.
//!
//! Routes (each also under `/node/<nodeId>` to pin the serving node, which is how the per-node
//! OpenClaw providers address their node):
//! - `GET /v1/models`: every model in the mesh.
//! - `POST /v1/chat/completions`, `/v1/responses`, `/v1/messages`: tunnelled to a serving node.
//!
//! Deadline: one overall deadline per request (`proxyTimeoutMs`) from arrival to the last byte;
//! each attempt gets what is left of it, never a fresh timeout.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use super::body::respond;
use super::errors::{json, ProxyBody, ProxyError};
use super::route::{self, ModelCandidate, ModelQuery, NoRoute};
use super::tunnel::{self, TunnelEnd, TunnelHead, TunnelRequest};
use super::ProxyCtx;
use crate::error::ErrorCode;
use crate::rpc::{CallStream, StreamItem};

/// Largest request body accepted (16 MiB: long conversations with images inline fit; more is
/// refused with 413 before anything is sent into the mesh).
pub const MAX_REQUEST_BODY: usize = 16 << 20;

pub(super) type Reply = Response<ProxyBody>;

/// Serve one request. Never fails: every problem is an OpenAI-shaped error response.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ProxyCtx>,
) -> Result<Reply, std::convert::Infallible> {
    let arrived = Instant::now();
    Ok(match route_request(req, &ctx, arrived).await {
        Ok(r) => r,
        Err(e) => e.response(),
    })
}

/// `(pinned node, path under /v1)` from a URL path.
fn split_path(path: &str) -> (Option<&str>, &str) {
    if let Some(rest) = path.strip_prefix("/node/") {
        if let Some((node, tail)) = rest.split_once('/') {
            if !node.is_empty() {
                return (
                    Some(node),
                    if tail.is_empty() {
                        "/"
                    } else {
                        &path[6 + node.len()..]
                    },
                );
            }
        }
    }
    (None, path)
}

async fn route_request(
    req: Request<Incoming>,
    ctx: &ProxyCtx,
    arrived: Instant,
) -> Result<Reply, ProxyError> {
    let full_path = req.uri().path().to_string();
    let (pin, path) = split_path(&full_path);
    let method = req.method().clone();
    let known = path == "/v1/models" || tunnel::api_for_path(path).is_some();
    if !known {
        return Err(ProxyError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {method} {full_path}: this proxy serves /v1/models, /v1/chat/completions, /v1/responses and /v1/messages"),
        ));
    }
    authorize(&req, &ctx.token)?;
    match (method.as_str(), path) {
        ("GET", "/v1/models") => Ok(models(ctx, pin)),
        ("POST", p) if p != "/v1/models" => {
            tunnel_request(req, ctx, pin, p.to_string(), arrived).await
        }
        (m, p) => Err(ProxyError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{m} is not allowed on {p}"),
        )),
    }
}

/// The local token, as `Authorization: Bearer <t>` or `x-api-key: <t>` (Anthropic clients).
fn authorize(req: &Request<Incoming>, token: &str) -> Result<(), ProxyError> {
    let h = req.headers();
    let bearer = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let api_key = h
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let given = bearer.or(api_key);
    match given {
        Some(t) if super::token::matches(t.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ProxyError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the API key is not this node's clawmatrix proxy token",
        )),
        None => Err(ProxyError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "missing API key: send the node's clawmatrix proxy token as `Authorization: Bearer <token>`",
        )),
    }
}

/// `GET /v1/models`: every model announced in the mesh (this node's own included), with the
/// nodes serving it and its metadata.
fn models(ctx: &ProxyCtx, pin: Option<&str>) -> Reply {
    let snapshot = ctx.mesh.snapshot();
    let mut data = Vec::new();
    for p in snapshot
        .peers
        .iter()
        .filter(|p| pin.is_none_or(|n| n == p.node))
    {
        let reachable = !matches!(p.state, crate::mesh::PeerState::Unreachable { .. });
        for m in &p.models {
            let mut meta = m.extra.clone();
            if let Some(d) = &m.description {
                meta.insert("description".into(), d.clone().into());
            }
            meta.insert("node".into(), p.node.clone().into());
            meta.insert("reachable".into(), reachable.into());
            data.push(serde_json::json!({
                "id": if pin.is_some() { m.id.clone() } else { format!("{}/{}", p.node, m.id) },
                "object": "model",
                "created": 0,
                "owned_by": p.node,
                "clawmatrix": meta,
            }));
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "object": "list", "data": data }),
    )
}

#[derive(Deserialize)]
struct Peek {
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

async fn read_body(req: Request<Incoming>) -> Result<(hyper::HeaderMap, Bytes), ProxyError> {
    let too_large = || {
        ProxyError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("request body over {MAX_REQUEST_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(c) => Ok((parts.headers, c.to_bytes())),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ProxyError::new(
            StatusCode::BAD_REQUEST,
            "bad_request_body",
            format!("could not read the request body: {e}"),
        )),
    }
}

async fn tunnel_request(
    req: Request<Incoming>,
    ctx: &ProxyCtx,
    pin: Option<&str>,
    path: String,
    arrived: Instant,
) -> Result<Reply, ProxyError> {
    let (headers, body) = read_body(req).await?;
    let (model, stream) = peek(&body)?;
    let deadline = arrived + Duration::from_millis(ctx.config.proxy_timeout_ms);
    let peers = ctx.mesh.with_snapshot(|s| s.peers.clone());
    let candidates = route::candidates(
        ModelQuery {
            model: &model,
            pinned_node: pin,
        },
        &ctx.config,
        &peers,
    )
    .map_err(|e| no_route(e, &model, pin))?;
    let forwarded: Vec<(String, String)> = tunnel::FORWARDED_REQUEST_HEADERS
        .iter()
        .filter_map(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect();
    let tunnel = Tunnel {
        ctx,
        path,
        model,
        stream,
        body,
        forwarded,
        peers,
        deadline,
    };
    tunnel.fail_over(&candidates).await
}

/// The request's `model` (a non-empty string) and `stream` (a boolean, default `false`).
fn peek(body: &[u8]) -> Result<(String, bool), ProxyError> {
    let bad = |m: String| ProxyError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
    let peek: Peek = serde_json::from_slice(body)
        .map_err(|e| bad(format!("request body: invalid JSON: {e}")))?;
    let model = match peek.model {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s,
        Some(other) => {
            return Err(bad(format!(
                "model: expected a non-empty string, got {}",
                crate::error::json_type_name(&other)
            )))
        }
        None => return Err(bad("model: required".into())),
    };
    let stream = match peek.stream {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(other) => {
            return Err(bad(format!(
                "stream: expected a boolean, got {}",
                crate::error::json_type_name(&other)
            )))
        }
    };
    Ok((model, stream))
}

/// Why no node can be asked for `model`.
fn no_route(e: NoRoute, model: &str, pin: Option<&str>) -> ProxyError {
    match e {
        NoRoute::UnknownModel => ProxyError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "model {model:?}: no node in the mesh serves it{}",
                pin.map(|n| format!(" (pinned to {n})")).unwrap_or_default()
            ),
        ),
        NoRoute::UnknownNode(n) => ProxyError::new(
            StatusCode::NOT_FOUND,
            "node_not_found",
            format!("node {n:?} is not known in the mesh"),
        ),
        NoRoute::Unreachable(nodes) => {
            let mut e = ProxyError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_reachable_node",
                format!(
                    "model {model:?}: served by {} but none is reachable now",
                    nodes.join(", ")
                ),
            );
            e.retry_after = Some("5".into());
            e
        }
    }
}

/// One tunnelled request, as it is offered to each candidate node in turn.
struct Tunnel<'a> {
    ctx: &'a ProxyCtx,
    /// The path under `/v1`.
    path: String,
    /// The model as the client named it.
    model: String,
    /// The client asked for a streamed (SSE) answer.
    stream: bool,
    body: Bytes,
    /// The request headers passed on to the upstream.
    forwarded: Vec<(String, String)>,
    /// The peers the candidates were chosen from (for their descriptions).
    peers: Vec<crate::mesh::PeerView>,
    deadline: Instant,
}

impl Tunnel<'_> {
    /// Tries the candidates in order until one answers with a head, while the deadline allows
    /// and the failures are retryable.
    async fn fail_over(&self, candidates: &[ModelCandidate]) -> Result<Reply, ProxyError> {
        let mut last: Option<ProxyError> = None;
        for cand in candidates {
            let now = Instant::now();
            if now >= self.deadline {
                break;
            }
            match attempt(self.ctx, cand, self.payload(cand), self.deadline).await {
                Ok((head, stream_call)) => {
                    return Ok(respond(head, stream_call, cand, self.stream, self.deadline))
                }
                Err((e, retry)) => {
                    self.ctx.events.info(format!(
                        "model proxy: {} on {}: {} ({})",
                        self.model, cand.node, e.message, e.cause
                    ));
                    if !retry {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(self.exhausted(last))
    }

    /// The `model.http` payload for `cand`.
    fn payload(&self, cand: &ModelCandidate) -> Vec<u8> {
        let body_for = with_description(
            &self.body,
            route::description(&self.ctx.config, &self.peers, cand).as_deref(),
            &self.path,
            &self.model,
            cand,
        );
        let treq = TunnelRequest {
            path: self.path.clone(),
            model: cand.model.clone(),
            stream: self.stream,
            headers: self.forwarded.clone(),
        };
        tunnel::encode_request(&treq, &body_for)
    }

    /// The error once no candidate answered: the last failure, or the deadline.
    fn exhausted(&self, last: Option<ProxyError>) -> ProxyError {
        let model = &self.model;
        let timeout_ms = self.ctx.config.proxy_timeout_ms;
        match last {
            Some(e) if Instant::now() < self.deadline => e,
            Some(e) => ProxyError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline",
                format!(
                    "model {model:?}: no node answered within proxyTimeoutMs ({timeout_ms} ms); \
                     last: {}",
                    e.message
                ),
            ),
            None => ProxyError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline",
                format!("model {model:?}: proxyTimeoutMs ({timeout_ms} ms) passed"),
            ),
        }
    }
}

/// The body with the `[Model: …]` system line inserted (chat completions only) and the
/// qualified model name replaced by the served id; the raw bytes when neither applies.
fn with_description(
    body: &Bytes,
    description: Option<&str>,
    path: &str,
    asked: &str,
    cand: &ModelCandidate,
) -> Bytes {
    let renamed = asked != cand.model;
    let describe = description.is_some() && path == "/v1/chat/completions";
    if !renamed && !describe {
        return body.clone();
    }
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return body.clone();
    };
    if renamed {
        obj.insert("model".into(), cand.model.clone().into());
    }
    if let (true, Some(d), Some(serde_json::Value::Array(msgs))) =
        (describe, description, obj.get_mut("messages"))
    {
        msgs.insert(
            0,
            serde_json::json!({ "role": "system", "content": format!("[Model: {d}]") }),
        );
    }
    serde_json::to_vec(&serde_json::Value::Object(obj))
        .map(Bytes::from)
        .unwrap_or_else(|_| body.clone())
}

/// One attempt on one node: open the call and wait for the head. `Err((error, retry))`.
async fn attempt(
    ctx: &ProxyCtx,
    cand: &ModelCandidate,
    payload: Vec<u8>,
    deadline: Instant,
) -> Result<(TunnelHead, CallStream), (ProxyError, bool)> {
    // The mesh call's own inactivity deadline is set past ours, so the overall deadline (checked
    // here and in the pump) is what fires and is reported as `deadline`.
    let left = deadline.saturating_duration_since(Instant::now()) + tunnel::MESH_DEADLINE_SLACK;
    let mesh_err = |e: crate::error::Error| {
        let (status, cause, retry) = match e.code {
            ErrorCode::Timeout => (StatusCode::GATEWAY_TIMEOUT, "mesh_timeout", true),
            ErrorCode::Unreachable => (StatusCode::BAD_GATEWAY, "node_unreachable", true),
            ErrorCode::NotRunning => (StatusCode::SERVICE_UNAVAILABLE, "not_running", false),
            _ => (StatusCode::BAD_GATEWAY, "mesh_error", true),
        };
        (
            ProxyError::new(status, cause, e.message).on(&cand.node),
            retry,
        )
    };
    let mut call = ctx
        .mesh
        .open_stream(&cand.node, tunnel::METHOD_MODEL, payload, left)
        .await
        .map_err(mesh_err)?;
    let first = tokio::time::timeout_at(deadline, call.next()).await;
    match first {
        Err(_) => Err((
            ProxyError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline",
                "no response head before proxyTimeoutMs",
            )
            .on(&cand.node),
            false,
        )),
        Ok(None) => Err((
            ProxyError::new(
                StatusCode::BAD_GATEWAY,
                "mesh_error",
                "the call ended without an answer",
            )
            .on(&cand.node),
            true,
        )),
        Ok(Some(Err(e))) => Err(mesh_err(e)),
        Ok(Some(Ok(StreamItem::Chunk(bytes)))) => {
            match serde_json::from_slice::<TunnelHead>(&bytes) {
                Ok(head) => Ok((head, call)),
                Err(e) => Err((
                    ProxyError::new(
                        StatusCode::BAD_GATEWAY,
                        "protocol_error",
                        format!("unreadable response head: {e}"),
                    )
                    .on(&cand.node),
                    true,
                )),
            }
        }
        Ok(Some(Ok(StreamItem::End(bytes)))) => {
            let end: TunnelEnd = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                TunnelEnd::fail(502, "protocol_error", format!("unreadable end: {e}"), true)
            });
            let status = end
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let e = ProxyError::new(
                status,
                end.cause.as_deref().unwrap_or("remote_error"),
                end.message
                    .unwrap_or_else(|| "the serving node failed".into()),
            )
            .on(&cand.node);
            Err((e, end.retry))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_pins_are_split_from_the_path() {
        assert_eq!(
            split_path("/node/office-01/v1/chat/completions"),
            (Some("office-01"), "/v1/chat/completions")
        );
        assert_eq!(split_path("/v1/models"), (None, "/v1/models"));
        assert_eq!(split_path("/node//v1/models"), (None, "/node//v1/models"));
        assert_eq!(split_path("/node/x/"), (Some("x"), "/"));
    }

    #[test]
    fn description_and_renaming_touch_the_body_only_when_needed() {
        let cand = ModelCandidate {
            node: "office".into(),
            model: "m".into(),
            direct: true,
            latency_ms: 1,
            hops: 1,
        };
        let raw = Bytes::from_static(
            b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"zzz\":1}",
        );
        assert_eq!(
            with_description(&raw, None, "/v1/chat/completions", "m", &cand),
            raw
        );
        let out = with_description(&raw, Some("fast"), "/v1/chat/completions", "m", &cand);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["messages"][0],
            serde_json::json!({"role": "system", "content": "[Model: fast]"})
        );
        assert_eq!(v["messages"][1]["content"], "hi");
        assert_eq!(v["zzz"], 1);
        let out = with_description(&raw, None, "/v1/chat/completions", "office/m", &cand);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "m");
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    }
}
