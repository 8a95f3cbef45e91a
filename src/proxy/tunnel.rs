//! The mesh call that carries one model request (`model.http`, docs/PROTOCOL.md §8.6).
//!
//! Request payload: one line of JSON ([`TunnelRequest`]), `\n`, then the client's body bytes
//! unchanged. Answer: a stream whose first chunk is the upstream's response head
//! ([`TunnelHead`], JSON), then the upstream's body bytes as they arrive (any chunking), then an
//! end payload ([`TunnelEnd`], JSON) that says whether the upstream body completed. A serving
//! node that fails before the head sends no chunk, only a `TunnelEnd` with `ok: false`, the HTTP
//! status it suggests and whether another node may be tried (`retry`).

use serde::{Deserialize, Serialize};

use crate::config::ModelApi;

/// The mesh method name.
pub const METHOD_MODEL: &str = "model.http";
/// What the consumer adds to the time left of its `proxyTimeoutMs` for the mesh call's own
/// deadline, so its overall deadline (with the clearer message) fires first. The serving node
/// takes it off again to learn the time the consumer has left.
pub const MESH_DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_secs(1);

/// Client headers forwarded to the upstream (lower case). Everything else is dropped: the
/// consumer's `authorization` in particular is the local proxy token, never forwarded.
pub const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "x-stainless-helper-method",
];

/// Upstream response headers never passed back (hop-by-hop, or recomputed by the proxy).
pub const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The protocol a request speaks, from its path.
pub fn api_for_path(path: &str) -> Option<ModelApi> {
    match path {
        "/v1/chat/completions" => Some(ModelApi::OpenAiCompletions),
        "/v1/responses" => Some(ModelApi::OpenAiResponses),
        "/v1/messages" => Some(ModelApi::AnthropicMessages),
        _ => None,
    }
}

/// The proxy path of a protocol.
pub fn path_for_api(api: ModelApi) -> &'static str {
    match api {
        ModelApi::OpenAiCompletions => "/v1/chat/completions",
        ModelApi::OpenAiResponses => "/v1/responses",
        ModelApi::AnthropicMessages => "/v1/messages",
    }
}

/// The header line of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelRequest {
    /// The proxy path (`/v1/chat/completions`), which fixes the protocol.
    pub path: String,
    /// The model id as the serving node knows it.
    pub model: String,
    /// Whether the client asked for a stream (informational; the body says it too).
    #[serde(default)]
    pub stream: bool,
    /// Forwarded client headers (see [`FORWARDED_REQUEST_HEADERS`]).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// The upstream's response head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelHead {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// How the served call ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelEnd {
    pub ok: bool,
    /// Stable cause (`model_not_served`, `upstream_connect`, `upstream_body`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The HTTP status the consumer should answer with (before the head only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Another node may be tried (before the head only).
    #[serde(default)]
    pub retry: bool,
}

impl TunnelEnd {
    pub fn ok() -> Self {
        TunnelEnd {
            ok: true,
            ..Default::default()
        }
    }

    pub fn fail(status: u16, cause: &str, message: impl Into<String>, retry: bool) -> Self {
        TunnelEnd {
            ok: false,
            cause: Some(cause.to_string()),
            message: Some(message.into()),
            status: Some(status),
            retry,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"ok\":false}".to_vec())
    }
}

/// Build a request payload.
pub fn encode_request(req: &TunnelRequest, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(req).unwrap_or_default();
    out.reserve(body.len() + 1);
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// Split a request payload into its header and the body bytes.
pub fn decode_request(payload: &[u8]) -> Result<(TunnelRequest, &[u8]), String> {
    let nl = payload
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| "model request: missing header line".to_string())?;
    let req: TunnelRequest = serde_json::from_slice(&payload[..nl])
        .map_err(|e| format!("model request: bad header line: {e}"))?;
    if api_for_path(&req.path).is_none() {
        return Err(format!("model request: path: unsupported {:?}", req.path));
    }
    if req.model.is_empty() {
        return Err("model request: model: empty".into());
    }
    Ok((req, &payload[nl + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_keeps_the_body_bytes() {
        let req = TunnelRequest {
            path: "/v1/chat/completions".into(),
            model: "m".into(),
            stream: true,
            headers: vec![("accept".into(), "text/event-stream".into())],
        };
        let body = b"{\"model\":\"m\",\n\"x\":\"\xff\"}";
        let p = encode_request(&req, body);
        let (r, b) = decode_request(&p).unwrap();
        assert_eq!(r, req);
        assert_eq!(b, body);
    }

    #[test]
    fn bad_payloads_are_named() {
        assert!(decode_request(b"no newline")
            .unwrap_err()
            .contains("missing header"));
        assert!(decode_request(b"{}\n").unwrap_err().contains("bad header"));
        let p = br#"{"path":"/v1/embeddings","model":"m"}"#.to_vec();
        let mut p2 = p.clone();
        p2.push(b'\n');
        assert!(decode_request(&p2).unwrap_err().contains("path"));
        assert!(
            decode_request(b"{\"path\":\"/v1/messages\",\"model\":\"\"}\n")
                .unwrap_err()
                .contains("model")
        );
    }
}
