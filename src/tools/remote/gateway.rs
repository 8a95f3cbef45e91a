//! Other tools through this node's own gateway: `POST http://127.0.0.1:<port>/tools/invoke`
//! (see "Other tools: which gateway interface" in [`super`]).

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{GATEWAY_TIMEOUT, MAX_GATEWAY_REPLY_BYTES};
use crate::error::{Error, ErrorCode, Result};
use crate::tools::serve::ToolReply;

/// How this node reaches its own gateway's tool-invoke interface.
#[derive(Debug, Clone, Default)]
pub struct GatewayTarget {
    pub port: Option<u16>,
    pub token: Option<String>,
}

/// Run `tool` through this node's gateway: `POST http://127.0.0.1:<port>/tools/invoke` with
/// `Authorization: Bearer <token>`.
pub(super) async fn gateway_invoke(
    gw: &GatewayTarget,
    node: &str,
    tool: &str,
    args: &Value,
    mut cancel: watch::Receiver<bool>,
) -> Result<ToolReply> {
    let missing = |what: &str| {
        Error::new(
            ErrorCode::ConfigInvalid,
            format!(
                "{node} cannot run {tool} through its gateway: {what} is unknown (the gateway \
                 must expose gateway.port and gateway.auth.token, or OPENCLAW_GATEWAY_TOKEN)"
            ),
        )
    };
    let port = gw.port.ok_or_else(|| missing("the gateway port"))?;
    let token = gw
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| missing("the gateway token"))?;
    let work = async {
        let io_err = |e: &dyn std::fmt::Display| {
            Error::new(
                ErrorCode::Io,
                format!("{node}: gateway tools.invoke on 127.0.0.1:{port}: {e}"),
            )
        };
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| io_err(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| io_err(&e))?;
        let conn = tokio::spawn(conn);
        let body = json!({"tool": tool, "args": args}).to_string();
        let req = Request::post("/tools/invoke")
            .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| io_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| io_err(&e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_GATEWAY_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| io_err(&e))?
            .to_bytes();
        conn.abort();
        Ok::<_, Error>(gateway_reply(node, tool, status, &bytes))
    };
    tokio::select! {
        biased;
        _ = cancel.wait_for(|c| *c) => Err(Error::new(
            ErrorCode::Cancelled,
            format!("{tool}: cancelled by the caller"),
        )),
        r = tokio::time::timeout(GATEWAY_TIMEOUT, work) => match r {
            Ok(r) => r?,
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!("{node}: the gateway did not answer {tool} within {} s", GATEWAY_TIMEOUT.as_secs()),
            )),
        },
    }
}

/// Turn the gateway's answer into the tool's reply or error, as the tool returned it.
fn gateway_reply(node: &str, tool: &str, status: StatusCode, bytes: &[u8]) -> Result<ToolReply> {
    let v: Value = serde_json::from_slice(bytes).unwrap_or_else(
        |_| json!({"ok": false, "error": {"message": String::from_utf8_lossy(bytes)}}),
    );
    if status.is_success() && v["ok"].as_bool() != Some(false) {
        let result = v.get("result").cloned().unwrap_or(Value::Null);
        let text = match result.get("content").and_then(Value::as_array) {
            Some(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            None => match &result {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        };
        let details = result.get("details").cloned().unwrap_or(Value::Null);
        return Ok(ToolReply { text, details });
    }
    let message = v["error"]["message"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string());
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => ErrorCode::Denied,
        StatusCode::BAD_REQUEST => ErrorCode::InvalidArgument,
        _ => ErrorCode::Remote,
    };
    Err(Error::new(
        code,
        format!(
            "{tool} on {node}'s gateway (HTTP {}): {message}",
            status.as_u16()
        ),
    ))
}
