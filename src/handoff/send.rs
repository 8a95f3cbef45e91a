//! `cluster_send` on the calling node: deliver the message to the first reachable node matching
//! the target (at most `1 + MAX_RETRIES` tried, moving on only while nothing was delivered)
//! and read its acknowledgement.

use super::caller::{describe, no_candidate, CallerCtx};
use super::*;
use crate::mesh::Candidate;

/// Deliver `message` from `caller_agent` to `target`.
pub(super) async fn run_send(
    ctx: &CallerCtx,
    target: Target,
    message: String,
    caller_agent: Option<String>,
) -> Result<ToolOutput> {
    let want = describe(&target);
    let candidates = ctx.mesh.resolve(target.clone(), Vec::new()).await;
    if candidates.is_empty() {
        let e = no_candidate(&ctx.self_id, &target);
        return Err(Error::new(
            e.code,
            e.message.replace("cluster_handoff", "cluster_send"),
        ));
    }
    let mut unreachable = Vec::new();
    for cand in candidates.iter().take(1 + MAX_RETRIES) {
        let req = SendRequest {
            agent: cand.agent.clone(),
            message: message.clone(),
            caller_agent: caller_agent.clone(),
        };
        match send_to(ctx, cand, &req).await? {
            Delivery::Acknowledged(out) => return Ok(out),
            // Not delivered anywhere yet: the next matching node may take it.
            Delivery::Unreachable(why) => unreachable.push(why),
        }
    }
    Err(Error::new(
        ErrorCode::Unreachable,
        format!(
            "cluster_send to {want}: not delivered, no matching node is reachable: {}",
            unreachable.join("; ")
        ),
    ))
}

/// How one candidate took the message, when it did not fail outright.
enum Delivery {
    Acknowledged(ToolOutput),
    /// `<node>: <why>`: nothing was delivered, the next candidate may take it.
    Unreachable(String),
}

/// Send the message to one candidate and read its acknowledgement.
async fn send_to(ctx: &CallerCtx, cand: &Candidate, req: &SendRequest) -> Result<Delivery> {
    let payload =
        serde_json::to_vec(req).map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
    let who = format!(
        "cluster_send to {} on {}",
        cand.agent.as_deref().unwrap_or("(default agent)"),
        cand.node
    );
    let bytes = match ctx
        .mesh
        .request(&cand.node, METHOD_SEND, payload, SEND_TIMEOUT)
        .await
    {
        Ok(b) => b,
        Err(e) if e.code == ErrorCode::Unreachable => {
            return Ok(Delivery::Unreachable(format!(
                "{}: {}",
                cand.node, e.message
            )))
        }
        Err(e) => return Err(Error::new(e.code, format!("{who}: {}", e.message))),
    };
    let out = acknowledgement(&who, &cand.node, &bytes)?;
    ctx.log.count_send(false);
    Ok(Delivery::Acknowledged(out))
}

/// The serving node's answer: `{"ok": true, "agent", "sessionKey", "runId"}` or a refusal.
fn acknowledgement(who: &str, node: &str, bytes: &[u8]) -> Result<ToolOutput> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorCode::Remote,
            format!("{who}: unreadable acknowledgement: {e}"),
        )
    })?;
    if v.get("ok").and_then(Value::as_bool) != Some(true) {
        let code = v
            .get("code")
            .and_then(Value::as_str)
            .and_then(ErrorCode::parse)
            .unwrap_or(ErrorCode::Remote);
        let msg = v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        return Err(Error::new(code, format!("{who}: not delivered: {msg}")));
    }
    let agent = v.get("agent").and_then(Value::as_str).unwrap_or("?");
    let session = v.get("sessionKey").and_then(Value::as_str).unwrap_or("?");
    Ok(ToolOutput {
        text: format!("delivered to {agent} on {node} (session {session})"),
        details: json!({
            "delivered": true,
            "node": node,
            "agent": agent,
            "sessionKey": session,
            "runId": v.get("runId").cloned().unwrap_or(Value::Null),
        }),
    })
}
