//! Responses the proxy itself makes: OpenAI-shaped JSON errors with headers naming the cause and
//! the node, JSON bodies, and the SSE error event that ends a stream that failed mid-way.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

/// The proxy's response body type: full bodies and streams alike.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Header naming the stable cause of an error (`unknown_model`, `upstream_connect`, …).
pub const HEADER_ERROR: &str = "x-clawmatrix-error";
/// Header naming the node that answered (or failed).
pub const HEADER_NODE: &str = "x-clawmatrix-node";

/// A proxy error: status, stable cause, message, and the node involved if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub status: StatusCode,
    pub cause: String,
    pub message: String,
    pub node: Option<String>,
    /// `Retry-After` to send (seconds), for 429/503.
    pub retry_after: Option<String>,
}

impl ProxyError {
    pub fn new(status: StatusCode, cause: &str, message: impl Into<String>) -> Self {
        ProxyError {
            status,
            cause: cause.to_string(),
            message: message.into(),
            node: None,
            retry_after: None,
        }
    }

    pub fn on(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// The OpenAI `error.type` for this status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 413 | 415 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "api_error",
        }
    }

    /// The OpenAI error JSON: `{"error": {"message", "type", "code", "param"}}`.
    pub fn body(&self) -> serde_json::Value {
        let mut message = self.message.clone();
        if let Some(n) = &self.node {
            if !message.contains(n.as_str()) {
                message = format!("{message} (node {n})");
            }
        }
        serde_json::json!({
            "error": {
                "message": message,
                "type": self.kind(),
                "code": self.cause,
                "param": null,
            }
        })
    }

    pub fn response(&self) -> Response<ProxyBody> {
        let mut b = Response::builder()
            .status(self.status)
            .header("content-type", "application/json")
            .header(HEADER_ERROR, self.cause.as_str());
        if let Some(n) = &self.node {
            b = b.header(HEADER_NODE, n.as_str());
        }
        if let Some(r) = &self.retry_after {
            b = b.header("retry-after", r.as_str());
        }
        let bytes = serde_json::to_vec(&self.body()).unwrap_or_default();
        b.body(full(bytes))
            .unwrap_or_else(|_| Response::new(full(Vec::new())))
    }

    /// The SSE event that ends a failed stream: `data: {"error": …}` and a blank line.
    pub fn sse_event(&self) -> Bytes {
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(&serde_json::to_vec(&self.body()).unwrap_or_default());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// A full body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A JSON response.
pub fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(full(Vec::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape_and_headers() {
        let mut e = ProxyError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "upstream_rate_limited",
            "slow down",
        )
        .on("office");
        e.retry_after = Some("7".into());
        let r = e.response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[HEADER_ERROR], "upstream_rate_limited");
        assert_eq!(r.headers()[HEADER_NODE], "office");
        assert_eq!(r.headers()["retry-after"], "7");
        let b = e.body();
        assert_eq!(b["error"]["type"], "rate_limit_error");
        assert_eq!(b["error"]["code"], "upstream_rate_limited");
        assert_eq!(b["error"]["message"], "slow down (node office)");
        assert!(e.sse_event().starts_with(b"data: {\"error\""));
        assert!(e.sse_event().ends_with(b"\n\n"));
    }
}
