//! The serving side: the `agent.handoff` and `agent.send` services, which check the agent and
//! run it through the host bridge (`agent.run` / `agent.abort` / `agent.send`).

use super::*;

/// How long the host may take for the quick requests (`agents.list`, `agent.send`): they only
/// read config or queue a run. Both together stay under the caller's `SEND_TIMEOUT` (30 s).
const HOST_QUICK_TIMEOUT: Duration = Duration::from_secs(10);

/// One host request's final value, bounded in time.
async fn host_result(
    host: &Arc<HostBridge>,
    kind: &str,
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
}

impl AgentHost {
    /// The agent to run: offered here and known to OpenClaw.
    async fn check_agent(&self, requested: Option<&str>) -> Result<String> {
        let agent = match requested {
            Some(a) => a.to_string(),
            None => self.offered.first().cloned().ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!("{} offers no agents (agents[] is empty)", self.node_id),
                )
            })?,
        };
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
fn origin(caller_agent: Option<&str>, from: &str) -> String {
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

/// Output waiting for credit on the serving side.
#[derive(Default)]
struct Pending {
    /// Merged deltas not sent yet.
    text: String,
    /// Tool activity seen since the last chunk (sent when there is no text).
    tool: Option<String>,
    /// The run finished: send what is left, then stop.
    closed: bool,
    /// The sender failed (cancelled); stop reading.
    failed: bool,
}

impl Service for HandoffService {
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let h = self.0.clone();
        Box::pin(async move {
            let req: HandoffRequest = serde_json::from_slice(&payload)
                .map_err(|e| invalid("agent.handoff request", e))?;
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
            let out = match serve_handoff(&h, ctx, req).await {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "code": e.code.as_str(), "message": e.message}),
            };
            Ok(out.to_string().into_bytes())
        })
    }
}

async fn serve_handoff(h: &AgentHost, ctx: CallCtx, req: HandoffRequest) -> Result<Value> {
    let agent = h.check_agent(req.agent.as_deref()).await?;
    let id = req.handoff_id.clone();
    let session_key = handoff_session_key(&agent, &id);
    let max_ms = req.max_ms.clamp(1, h.max_ms);
    let caller = origin(req.caller_agent.as_deref(), &ctx.from);
    let mut message = req.task.clone();
    if let Some(c) = req.context.as_deref().filter(|c| !c.trim().is_empty()) {
        message.push_str("\n\nContext:\n");
        message.push_str(c);
    }
    let system = format!(
        "This task was handed off to you by {caller} through the ClawMatrix mesh. Work on it \
         here on {} and answer with the result; your reply is streamed back to the caller.",
        h.node_id
    );
    h.log.begin(HandoffRecord {
        role: "server",
        id: id.clone(),
        peer: ctx.from.clone(),
        agent: agent.clone(),
        session_key: Some(session_key.clone()),
        ..HandoffRecord::default()
    });
    let mut run = h.host.call(
        HOST_AGENT_RUN,
        json!({
            "agentId": agent,
            "sessionKey": session_key,
            "message": message,
            "extraSystemPrompt": system,
            "idempotencyKey": id,
            "timeoutMs": max_ms,
        }),
    )?;

    let pending = Arc::new((Mutex::new(Pending::default()), Notify::new()));
    let mut cancel = ctx.cancel.clone();
    let mut sink = ctx.sink;
    let sender_pending = Arc::clone(&pending);
    // The sender: takes whatever output is pending (merged) and sends it as one chunk once the
    // caller grants credit. Separate from the reader so that waiting for credit never stops
    // reading the host (whose per-call buffer is bounded too).
    let sender = async move {
        let (lock, notify) = &*sender_pending;
        let mut seq: u64 = 0;
        loop {
            let notified = notify.notified();
            let next = {
                let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                if !p.text.is_empty() {
                    p.tool = None;
                    Some(chunk_bytes(seq, "delta", &std::mem::take(&mut p.text)))
                } else if let Some(t) = p.tool.take() {
                    Some(chunk_bytes(seq, "tool", &t))
                } else if p.closed {
                    return seq;
                } else {
                    None
                }
            };
            match next {
                Some(chunk) => {
                    if sink.send(chunk).await.is_err() {
                        lock.lock().unwrap_or_else(|e| e.into_inner()).failed = true;
                        notify.notify_waiters();
                        return seq;
                    }
                    seq += 1;
                }
                None => notified.await,
            }
        }
    };
    let log = Arc::clone(&h.log);
    let reader_pending = Arc::clone(&pending);
    let reader_id = id.clone();
    let reader = async move {
        let (lock, notify) = &*reader_pending;
        let mut run_id: Option<String> = None;
        let mut chars: u64 = 0;
        // The host bounds the run by `timeoutMs`; this bounds our wait even if the host does not.
        let give_up = tokio::time::Instant::now() + Duration::from_millis(max_ms) + HOST_SLACK;
        // Created once, not per event: a timer armed and a watch waiter registered for every
        // delta cost more than reading the delta.
        let give_up_timer = tokio::time::sleep_until(give_up);
        let cancelled = cancel.wait_for(|c| *c);
        tokio::pin!(give_up_timer, cancelled);
        let outcome: Result<Value> = loop {
            // The run's events first: the other two are only polled (to register their wakers)
            // when no event is ready, which tokio's task budget guarantees now and then.
            let item = tokio::select! {
                biased;
                item = run.next() => item,
                _ = &mut cancelled => break Err(Error::new(ErrorCode::Cancelled, "cancelled by the caller")),
                _ = &mut give_up_timer => break Err(Error::new(
                    ErrorCode::Timeout,
                    format!("the host did not end the run within {max_ms} ms (handoffMaxMs) + {} s; the run was stopped", HOST_SLACK.as_secs()),
                )),
            };
            let item = match item {
                None => {
                    break Err(Error::new(
                        ErrorCode::Internal,
                        "host agent.run ended without a result",
                    ))
                }
                Some(Err(e)) => break Err(e),
                Some(Ok(HostReply::Result(v))) => break Ok(v),
                Some(Ok(HostReply::Event(ev))) => ev,
            };
            match ev_kind(&item) {
                Some("started") => {
                    run_id = item.get("runId").and_then(Value::as_str).map(String::from);
                    let r = run_id.clone();
                    log.update("server", &reader_id, |rec| rec.run_id = r);
                }
                Some("delta") => {
                    let Some(text) = item.get("text").and_then(Value::as_str) else {
                        break Err(Error::new(
                            ErrorCode::Internal,
                            format!("host agent.run event: delta without a text string: {item}"),
                        ));
                    };
                    if text.is_empty() {
                        continue;
                    }
                    chars += text.chars().count() as u64;
                    let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                    if p.failed {
                        break Err(Error::new(
                            ErrorCode::Cancelled,
                            "the stream to the caller closed",
                        ));
                    }
                    if p.text.len() + text.len() > MAX_PENDING_OUTPUT_BYTES {
                        break Err(Error::new(
                            ErrorCode::TooLarge,
                            format!(
                                "the caller did not take the output: {} bytes pending (limit \
                                 {MAX_PENDING_OUTPUT_BYTES}); the run was stopped",
                                p.text.len() + text.len()
                            ),
                        ));
                    }
                    p.text.push_str(text);
                    drop(p);
                    notify.notify_one();
                }
                Some("tool") => {
                    let name = item
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("tool")
                        .to_string();
                    lock.lock().unwrap_or_else(|e| e.into_inner()).tool = Some(name);
                    notify.notify_one();
                }
                // Unknown event kinds are ignored (forward compatible), never fatal.
                _ => {}
            }
        };
        (outcome, run_id, chars, run)
    };
    // The reader finishes first (result, error or cancel); then the sender drains.
    let reader = async {
        let r = reader.await;
        let (lock, notify) = &*pending;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        notify.notify_one();
        r
    };
    let ((outcome, run_id, chars, run), chunks) = tokio::join!(reader, sender);
    let cancelled = *ctx.cancel.borrow();
    let outcome = match outcome {
        Err(e)
            if cancelled
                || matches!(
                    e.code,
                    ErrorCode::Cancelled | ErrorCode::TooLarge | ErrorCode::Timeout
                ) =>
        {
            // Abort the run on the host and wait until it stopped, so the session is settled
            // before anything else touches it; the time is recorded for status.
            let t0 = Instant::now();
            let aborted = match h.host.call(
                HOST_AGENT_ABORT,
                json!({"sessionKey": session_key, "runId": run_id, "reason": e.message}),
            ) {
                Ok(call) => match tokio::time::timeout(ABORT_WAIT, call.result()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::new(
                        ErrorCode::Timeout,
                        format!("the host did not confirm the abort within {ABORT_WAIT:?}"),
                    )),
                },
                Err(e) => Err(e),
            };
            drop(run);
            let ms = t0.elapsed().as_millis() as u64;
            let state = if e.code == ErrorCode::Cancelled {
                "cancelled"
            } else {
                "error"
            };
            let note = match &aborted {
                Ok(v) => format!("{}; run aborted ({v})", e.message),
                Err(a) => format!("{}; abort failed: {}", e.message, a.message),
            };
            h.log.update("server", &id, |r| {
                r.state = state.into();
                r.abort_to_stop_ms = Some(ms);
                r.chunks = chunks;
                r.chars = chars;
                r.error = Some(note);
            });
            return Err(e);
        }
        other => other,
    };
    let v = match outcome {
        Ok(v) => v,
        Err(e) => {
            h.log.update("server", &id, |r| {
                r.state = "error".into();
                r.chunks = chunks;
                r.chars = chars;
                r.error = Some(e.message.clone());
            });
            return Err(e);
        }
    };
    let status = v.get("status").and_then(Value::as_str).unwrap_or("");
    let text = v
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let run_id = v
        .get("runId")
        .and_then(Value::as_str)
        .map(String::from)
        .or(run_id);
    let (state, result) = match status {
        "ok" => (
            "ok",
            Ok(json!({
                "ok": true,
                "text": text,
                "node": h.node_id,
                "agent": agent,
                "sessionKey": session_key,
                "runId": run_id,
                "chunks": chunks,
            })),
        ),
        "timeout" | "pending" => (
            "timeout",
            Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "agent {agent} on {} did not finish within {max_ms} ms (handoffMaxMs)",
                    h.node_id
                ),
            )),
        ),
        "error" => (
            "error",
            Err(Error::new(
                ErrorCode::Remote,
                format!(
                    "agent {agent} on {} failed: {}",
                    h.node_id,
                    v.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                ),
            )),
        ),
        other => (
            "error",
            Err(Error::new(
                ErrorCode::Internal,
                format!(
                    "host agent.run result: status: expected ok, error or timeout, got {other:?}"
                ),
            )),
        ),
    };
    h.log.update("server", &id, |r| {
        r.state = state.into();
        r.chunks = chunks;
        r.chars = chars;
        r.run_id = run_id.clone();
        if let Err(e) = &result {
            r.error = Some(e.message.clone());
        }
    });
    result
}

/// A `handoff_stream` chunk's payload: `{"seq":n,"delta":text}` or `{"seq":n,"tool":name}`.
fn chunk_bytes(seq: u64, key: &str, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 32);
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    // A string always serializes; the fallback keeps the frame valid JSON regardless.
    if serde_json::to_writer(&mut out, text).is_err() {
        out.extend_from_slice(b"\"\"");
    }
    out.push(b'}');
    out
}

fn ev_kind(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// The `agent.send` service.
pub struct SendService(pub AgentHost);

impl Service for SendService {
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let h = self.0.clone();
        Box::pin(async move {
            let req: SendRequest =
                serde_json::from_slice(&payload).map_err(|e| invalid("agent.send request", e))?;
            if req.message.trim().is_empty() {
                return Err(invalid("agent.send request.message", "must not be empty"));
            }
            check_caller_agent("agent.send", req.caller_agent.as_deref())?;
            let out = match serve_send(&h, &ctx.from, req).await {
                Ok(v) => v,
                Err(e) => json!({"ok": false, "code": e.code.as_str(), "message": e.message}),
            };
            Ok(out.to_string().into_bytes())
        })
    }
}

async fn serve_send(h: &AgentHost, from: &str, req: SendRequest) -> Result<Value> {
    let agent = h.check_agent(req.agent.as_deref()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_the_same_json_as_serde_writes() {
        for (seq, key, text) in [
            (0, "delta", "plain"),
            (
                7,
                "delta",
                "quote \" backslash \\ newline \n tab \t nul \u{0} é 🦀",
            ),
            (u64::MAX, "tool", "exec"),
            (1, "delta", ""),
        ] {
            let ours = chunk_bytes(seq, key, text);
            let theirs = serde_json::to_vec(&json!({"seq": seq, key: text})).unwrap_or_default();
            let a: Value = serde_json::from_slice(&ours).unwrap_or(Value::Null);
            let b: Value = serde_json::from_slice(&theirs).unwrap_or(Value::Null);
            assert_eq!(a, b, "{}", String::from_utf8_lossy(&ours));
            assert_ne!(a, Value::Null);
        }
    }
}
