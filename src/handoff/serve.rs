//! The serving side: the `agent.handoff` and `agent.send` services, which check the agent (the
//! access rules for the calling node first, then `agents[]` and OpenClaw) and run it through
//! the host bridge (`agent.run` / `agent.abort` / `agent.send`).

use super::relay::serve_handoff;
use super::*;
use crate::access::{Access, Kind};
use crate::host::HostKind;

/// How long the host may take for the quick requests (`agents.list`, `agent.send`): they only
/// read config or queue a run. Both together stay under the caller's `SEND_TIMEOUT` (30 s).
const HOST_QUICK_TIMEOUT: Duration = Duration::from_secs(10);

/// One host request's final value, bounded in time.
async fn host_result(
    host: &Arc<HostBridge>,
    kind: HostKind,
    params: Value,
    within: Duration,
) -> Result<Value> {
    match tokio::time::timeout(within, host.call(kind, params)?.result()).await {
        Ok(r) => r,
        Err(_) => Err(Error::new(
            ErrorCode::Timeout,
            format!(
                "host {kind}: no answer from OpenClaw within {} s",
                within.as_secs()
            ),
        )),
    }
}

/// What both serving methods need.
#[derive(Clone)]
pub struct AgentHost {
    pub node_id: String,
    /// The agent ids this node offers (`agents[]`).
    pub offered: Vec<String>,
    pub host: Arc<HostBridge>,
    /// This node's `handoffMaxMs`: the run is bounded by the smaller of it and the caller's.
    pub max_ms: u64,
    pub log: Arc<HandoffLog>,
    /// This node's access rules (`access`), checked for every request (kind `agent`).
    pub access: Arc<Access>,
}

impl AgentHost {
    /// The agent to run: one the access rules let `from` (through `caller_agent`) use, offered
    /// here and known to OpenClaw. The rules are checked before anything else is looked at.
    pub(super) async fn check_agent(
        &self,
        from: &str,
        caller_agent: Option<&str>,
        requested: Option<&str>,
    ) -> Result<String> {
        let agent = match requested {
            Some(a) => a.to_string(),
            None => self.offered.first().cloned().ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!("{} offers no agents (agents[] is empty)", self.node_id),
                )
            })?,
        };
        self.access
            .decide(from, caller_agent, Kind::Agent, &agent)
            .map_err(Error::from)?;
        if !self.offered.contains(&agent) {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "agent {agent:?} is not offered by {} (agents[]: {})",
                    self.node_id,
                    list_or_none(&self.offered)
                ),
            ));
        }
        let listed =
            host_result(&self.host, HOST_AGENTS_LIST, json!({}), HOST_QUICK_TIMEOUT).await?;
        let known: Vec<String> = match listed.get("agents").and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            None => {
                return Err(Error::new(
                    ErrorCode::Internal,
                    format!("host agents.list: expected {{agents: [ids]}}, got {listed}"),
                ))
            }
        };
        if !known.contains(&agent) {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "agent {agent:?} is offered by {} but OpenClaw there has no such agent \
                     (agents.list: {})",
                    self.node_id,
                    list_or_none(&known)
                ),
            ));
        }
        Ok(agent)
    }
}

/// Who a handoff or message comes from, as the serving agent reads it: the calling agent (its
/// id, already checked to be an id) on the calling node (the authenticated source of the call,
/// never a payload field).
pub(super) fn origin(caller_agent: Option<&str>, from: &str) -> String {
    match caller_agent {
        Some(a) => format!("agent {a} on {from}"),
        None => from.to_string(),
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The `agent.handoff` service.
pub struct HandoffService(pub AgentHost);

impl Service for HandoffService {
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let h = self.0.clone();
        Box::pin(async move {
            let req = handoff_request(&payload)?;
            let out = match serve_handoff(&h, ctx, req).await {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "code": e.code.as_str(), "message": e.message}),
            };
            Ok(out.to_string().into_bytes())
        })
    }
}

/// Read and check an `agent.handoff` request; a refusal names the field.
fn handoff_request(payload: &[u8]) -> Result<HandoffRequest> {
    let req: HandoffRequest =
        serde_json::from_slice(payload).map_err(|e| invalid("agent.handoff request", e))?;
    if req.task.trim().is_empty() {
        return Err(invalid("agent.handoff request.task", "must not be empty"));
    }
    // Both end up in OpenClaw's session (key, prompt): only their documented forms.
    if !valid_handoff_id(&req.handoff_id) {
        return Err(invalid(
            "agent.handoff request.handoffId",
            format!(
                "must be 32 lowercase hex digits, optionally followed by -r1 … -r{MAX_RETRIES}, \
                 got {}",
                excerpt(&req.handoff_id)
            ),
        ));
    }
    check_caller_agent("agent.handoff", req.caller_agent.as_deref())?;
    Ok(req)
}

/// The `agent.send` service.
pub struct SendService(pub AgentHost);

impl Service for SendService {
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let h = self.0.clone();
        Box::pin(async move {
            let req = send_request(&payload)?;
            let out = match serve_send(&h, &ctx.from, req).await {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "code": e.code.as_str(), "message": e.message}),
            };
            Ok(out.to_string().into_bytes())
        })
    }
}

/// Read and check an `agent.send` request; a refusal names the field.
fn send_request(payload: &[u8]) -> Result<SendRequest> {
    let req: SendRequest =
        serde_json::from_slice(payload).map_err(|e| invalid("agent.send request", e))?;
    if req.message.trim().is_empty() {
        return Err(invalid("agent.send request.message", "must not be empty"));
    }
    check_caller_agent("agent.send", req.caller_agent.as_deref())?;
    Ok(req)
}

async fn serve_send(h: &AgentHost, from: &str, req: SendRequest) -> Result<Value> {
    let agent = h
        .check_agent(from, req.caller_agent.as_deref(), req.agent.as_deref())
        .await?;
    let session_key = send_session_key(&agent);
    let who = origin(req.caller_agent.as_deref(), from);
    let text = format!(
        "[ClawMatrix message from {who}; one-way, no reply is expected by the sender]\n{}",
        req.message
    );
    let v = host_result(
        &h.host,
        HOST_AGENT_SEND,
        json!({"agentId": agent, "sessionKey": session_key, "message": text}),
        HOST_QUICK_TIMEOUT,
    )
    .await?;
    h.log.count_send(true);
    Ok(json!({
        "ok": true,
        "delivered": true,
        "node": h.node_id,
        "agent": agent,
        "sessionKey": session_key,
        "runId": v.get("runId").cloned().unwrap_or(Value::Null),
    }))
}
