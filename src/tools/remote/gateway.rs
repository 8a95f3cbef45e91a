//! Other tools through this node's own gateway: `POST http://127.0.0.1:<port>/tools/invoke`
//! (see "Other tools: which gateway interface" in [`super`]).

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::watch;

use super::{MAX_GATEWAY_REPLY_BYTES, TOOL_DEADLINE};
use crate::error::{Error, ErrorCode, Result};
use crate::host::{fmt_secs, HostDeadline};
use crate::tools::serve::ToolReply;

/// How this node reaches its own gateway's tool-invoke interface.
#[derive(Debug, Clone, Default)]
pub struct GatewayTarget {
    pub port: Option<u16>,
    pub token: Option<String>,
}

/// How long the gateway may take to run a tool for a call from `from`: the caller's deadline
/// for the call (nothing flows back meanwhile), at most [`TOOL_DEADLINE`] (what this version's
/// callers give any tool but exec, which never goes through the gateway), less the answer's way
/// back.
pub(super) fn gateway_deadline(caller: Option<Duration>, from: &str) -> HostDeadline {
    HostDeadline::serving([
        caller.map(|d| {
            (
                d,
                format!("the tool call's deadline ({}, sent by {from})", fmt_secs(d)),
            )
        }),
        Some((
            TOOL_DEADLINE,
            format!(
                "the bound of a gateway tool call ({})",
                fmt_secs(TOOL_DEADLINE)
            ),
        )),
    ])
}

/// Run `tool` through this node's gateway: `POST http://127.0.0.1:<port>/tools/invoke` with
/// `Authorization: Bearer <token>`, waiting for its answer until `deadline`.
pub(super) async fn gateway_invoke(
    gw: &GatewayTarget,
    node: &str,
    tool: &str,
    args: &Value,
    mut cancel: watch::Receiver<bool>,
    deadline: &HostDeadline,
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
    let t0 = tokio::time::Instant::now();
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
        r = tokio::time::timeout_at(deadline.at(), work) => match r {
            Ok(r) => r?,
            Err(_) => Err(deadline.expired(
                &format!("{node}: gateway tools.invoke {tool}"),
                t0.elapsed(),
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

/// A gateway whose event loop is stalled answers late: the call waits as long as its own
/// deadline allows (tokio's paused clock: the 12 s pass at once, the sockets are real).
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot `POST /tools/invoke` that answers `{ok: true}` `delay` after the request.
    async fn late_gateway(delay: Duration) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            // The request is small: its head and body arrive before the answer is due.
            while !String::from_utf8_lossy(&buf).contains("\"tool\"") {
                let n = s.read(&mut tmp).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            tokio::time::sleep(delay).await;
            let body =
                json!({"ok": true, "result": {"content": [{"type": "text", "text": "late"}]}})
                    .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
        port
    }

    async fn invoke_within(caller_deadline: Duration) -> (Result<ToolReply>, Duration) {
        let gw = GatewayTarget {
            port: Some(late_gateway(Duration::from_secs(12)).await),
            token: Some("tok".into()),
        };
        let (_cancel, cancel) = watch::channel(false);
        let deadline = gateway_deadline(Some(caller_deadline), "home");
        let t0 = tokio::time::Instant::now();
        let r = gateway_invoke(&gw, "office", "web_fetch", &json!({}), cancel, &deadline).await;
        (r, t0.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_answer_after_12_s_serves_a_tool_call_whose_deadline_is_60_s() {
        let (r, took) = invoke_within(Duration::from_secs(60)).await;
        assert_eq!(r.expect("the late answer").text, "late");
        assert!(took >= Duration::from_secs(12), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_slower_than_the_tool_calls_deadline_fails_it_naming_the_tool_and_deadline() {
        let (r, took) = invoke_within(Duration::from_secs(10)).await;
        let Err(e) = r else {
            panic!("a timeout expected")
        };
        assert_eq!(e.code, ErrorCode::Timeout);
        assert!(
            e.message.starts_with(
                "office: gateway tools.invoke web_fetch: no answer from OpenClaw within 9.0 s"
            ),
            "{}",
            e.message
        );
        assert!(
            e.message
                .contains("the tool call's deadline (10.0 s, sent by home)"),
            "{}",
            e.message
        );
        assert_eq!(took, Duration::from_secs(9));
    }

    #[test]
    fn a_callers_deadline_beyond_the_tool_call_bound_is_cut_to_it() {
        let d = gateway_deadline(Some(Duration::from_secs(24 * 3600)), "home");
        assert_eq!(d.total(), TOOL_DEADLINE - crate::host::ANSWER_MARGIN);
        assert!(
            d.why()
                .contains("the bound of a gateway tool call (120.0 s)"),
            "{}",
            d.why()
        );
        let d = gateway_deadline(None, "home");
        assert_eq!(d.total(), TOOL_DEADLINE - crate::host::ANSWER_MARGIN);
    }
}
