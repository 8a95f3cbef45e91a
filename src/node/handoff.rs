//! Handoff and messages: `cluster_handoff` (delegate a task to an agent on another node and
//! stream its output back) and `cluster_send` (a one-way message into a remote agent's session).
//!
//! ```text
//! caller (home)                                     server (office)
//! Node::start_tool("cluster_handoff")
//!   validate → resolve target (agent id | tags: | node id) → ordered candidates
//!   call_stream(node, "agent.handoff", HandoffRequest) ──▶ HandoffService
//!                                                        agent offered in agents[]?
//!                                                        host "agents.list" → exists in OpenClaw?
//!                                                        host "agent.run" (subagent.run +
//!                                                          onAgentEvent + waitForRun)
//!   ToolEvent::Progress ◀── chunk {"seq":n,"delta":…} ◀── host events {type:"delta"} (merged
//!     (idle timer reset)  ◀── chunk {"seq":n,"tool":…} ◀──   while the caller holds no credit)
//!   ToolEvent::Result   ◀── end {"ok":true,"text",…}  ◀── host result {status,text,runId}
//! cancel (AbortSignal) ─── cancel ───────────────────▶ cancel watch → host "agent.abort"
//!                                                        (abortAndDrain; time to stop recorded)
//! ```
//!
//! Decisions live here, not in the shim: target resolution, the inactivity timeout
//! (`handoffTimeout`, reset by every chunk) and the hard cap (`handoffMaxMs`, whole handoff),
//! retries (at most [`MAX_RETRIES`], on another node matching the target, only while no output
//! was seen), output accumulation and the final text (the final reply, or the accumulated
//! stream when the reply is empty). The host handlers (`js/agents.ts`) each translate one
//! OpenClaw runtime call.
//!
//! # Buffers and a slow consumer
//! Every handoff is its own mesh stream with credit flow control (`STREAM_WINDOW_CHUNKS`), so
//! a caller that stops reading parks only its own producer. On the serving node the agent keeps
//! running meanwhile: its deltas are read from the host without waiting and merged into one
//! pending buffer that is sent as one chunk as soon as credit returns (order kept, nothing
//! dropped). That buffer is bounded by [`MAX_PENDING_OUTPUT_BYTES`]; a caller that stays that
//! far behind fails its own handoff with a clear error (the run is aborted), never the others.
//!
//! # Messages
//! `cluster_send` delivers the text as a new turn in the target agent's main session
//! (`agent:<id>:main`) through `api.runtime.subagent.run` and acknowledges once OpenClaw
//! accepted the run (`delivered`, with the run id), or says why not (unknown agent, unreachable
//! node). A system event (`enqueueSystemEvent`) would only be read at the agent's next turn,
//! which may never come on a node without heartbeats; a turn makes the agent read it now and
//! leaves it in the session transcript for later turns.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch, Notify};

use super::actor::ActorHandle;
use super::host::{HostBridge, HostReply};
use super::remote_tools::{ToolCall, ToolCaller, ToolEvent};
use super::service::{BoxFuture, CallCtx, Service};
use super::stream::StreamItem;
use super::ToolOutput;
use crate::error::{Error, ErrorCode, Result};
use crate::mesh::Target;

/// The mesh method of a handoff (streamed).
pub const METHOD_HANDOFF: &str = "agent.handoff";
/// The mesh method of a message (unary).
pub const METHOD_SEND: &str = "agent.send";
/// Host request: run an agent turn, streaming `{type:"delta",text}` / `{type:"tool",name}` /
/// `{type:"started",runId}` events, result `{status, text, runId, error?}`.
pub const HOST_AGENT_RUN: &str = "agent.run";
/// Host request: abort the run of a session and wait until it stopped (`{aborted, drained}`).
pub const HOST_AGENT_ABORT: &str = "agent.abort";
/// Host request: start a turn in a session without waiting for it (`{runId}`).
pub const HOST_AGENT_SEND: &str = "agent.send";
/// Host request: the agent ids OpenClaw knows on this gateway (`{agents: [id, …]}`).
pub const HOST_AGENTS_LIST: &str = "agents.list";

/// Retries after the first attempt, each on another node (0.1.8: up to 2).
pub const MAX_RETRIES: usize = 2;
/// Output the serving node holds for a caller that does not take it (merged deltas), in bytes.
/// 4 MiB is far more than an agent writes while a healthy caller catches up.
pub const MAX_PENDING_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
/// Most output a caller accumulates for the final text, in bytes; beyond, the stream is still
/// shown as progress but the accumulated copy is cut with a marker.
pub const MAX_ACCUMULATED_BYTES: usize = 16 * 1024 * 1024;
/// Slack added to `handoffTimeout` for the mesh-level inactivity deadline, so the handoff's own
/// timer (with its clearer message) fires first.
const MESH_DEADLINE_SLACK: Duration = Duration::from_secs(5);
/// How long the serving node waits for the host to confirm an abort.
pub const ABORT_WAIT: Duration = Duration::from_secs(15);
/// How long past the run's own bound the serving node waits for the host to end it.
const HOST_SLACK: Duration = Duration::from_secs(30);
/// How long a `cluster_send` may take end to end (delivery only, not the turn).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Steps buffered between the caller task and the tool's consumer.
const STEP_QUEUE: usize = 64;
/// Handoffs remembered for the status report (each side).
const RECENT_HANDOFFS: usize = 32;

// ----- status log ----------------------------------------------------------------------------

/// One handoff as the status report shows it (caller or server side).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffRecord {
    /// `caller` or `server`.
    pub role: &'static str,
    pub id: String,
    /// The other node (the serving node for a caller, the calling node for a server).
    pub peer: String,
    pub agent: String,
    /// `running`, `ok`, `error`, `timeout`, `cancelled`.
    pub state: String,
    pub chunks: u64,
    pub chars: u64,
    pub started_ms_ago: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_chunk_ms: Option<u64>,
    /// Server: the OpenClaw session key and run id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Server, after a cancel: from the cancel reaching this node to OpenClaw confirming the run
    /// stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_to_stop_ms: Option<u64>,
    /// Caller: the last characters streamed so far (what the remote agent is writing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail: Option<String>,
    /// Caller: the accumulated deltas equal the final reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_matches_final: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

/// Counters and the most recent handoffs, shared by the service and the caller side.
#[derive(Default)]
pub struct HandoffLog {
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    recent: std::collections::VecDeque<HandoffRecord>,
    served: u64,
    called: u64,
    sent: u64,
    received: u64,
    running: u64,
}

impl HandoffLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(&self, mut r: HandoffRecord) {
        r.started = Some(Instant::now());
        r.state = "running".into();
        let mut g = self.lock();
        if r.role == "server" {
            g.served += 1;
        } else {
            g.called += 1;
        }
        g.running += 1;
        if g.recent.len() >= RECENT_HANDOFFS {
            g.recent.pop_front();
        }
        g.recent.push_back(r);
    }

    fn update(&self, role: &str, id: &str, f: impl FnOnce(&mut HandoffRecord)) {
        let mut g = self.lock();
        if let Some(r) = g
            .recent
            .iter_mut()
            .rev()
            .find(|r| r.role == role && r.id == id)
        {
            let was_running = r.state == "running";
            f(r);
            if was_running && r.state != "running" {
                r.duration_ms = r.started.map(|s| s.elapsed().as_millis() as u64);
                g.running = g.running.saturating_sub(1);
            }
        }
    }

    fn count_send(&self, received: bool) {
        let mut g = self.lock();
        if received {
            g.received += 1;
        } else {
            g.sent += 1;
        }
    }

    /// The `handoffs` section of the status report.
    pub fn to_json(&self) -> Value {
        let g = self.lock();
        let recent: Vec<Value> = g
            .recent
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.started_ms_ago = r
                    .started
                    .map(|s| s.elapsed().as_millis() as u64)
                    .unwrap_or(0);
                serde_json::to_value(r).unwrap_or(Value::Null)
            })
            .collect();
        json!({
            "served": g.served,
            "called": g.called,
            "running": g.running,
            "messagesSent": g.sent,
            "messagesReceived": g.received,
            "recent": recent,
        })
    }
}

// ----- wire payloads -------------------------------------------------------------------------

/// The `agent.handoff` request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffRequest {
    /// The agent to run; `None` = the serving node's first offered agent (target was a node id).
    #[serde(default)]
    pub agent: Option<String>,
    pub task: String,
    #[serde(default)]
    pub context: Option<String>,
    /// Unique per handoff attempt chain: the OpenClaw session key and idempotency key derive
    /// from it.
    pub handoff_id: String,
    #[serde(default)]
    pub caller_agent: Option<String>,
    /// The caller's remaining hard cap in ms; the run is bounded by it.
    pub max_ms: u64,
}

/// The `agent.send` request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendRequest {
    #[serde(default)]
    pub agent: Option<String>,
    pub message: String,
    #[serde(default)]
    pub caller_agent: Option<String>,
}

/// The OpenClaw session key of a handoff. Not `:subagent:`: OpenClaw gives subagent keys the
/// subagent tool policy, and a delegated agent should keep its own tools (docs/PROTOCOL.md §8.4).
pub fn handoff_session_key(agent: &str, handoff_id: &str) -> String {
    format!("agent:{agent}:clawmatrix:handoff:{handoff_id}")
}

/// The session a message goes to: the agent's main session.
pub fn send_session_key(agent: &str) -> String {
    format!("agent:{agent}:main")
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidArgument, format!("{field}: {reason}"))
}

// ----- serving side --------------------------------------------------------------------------

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
        let listed = self
            .host
            .call(HOST_AGENTS_LIST, json!({}))?
            .result()
            .await?;
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
    let caller = match &req.caller_agent {
        Some(a) => format!("agent {a} on {}", ctx.from),
        None => ctx.from.clone(),
    };
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
                    Some(json!({"seq": seq, "delta": std::mem::take(&mut p.text)}))
                } else if let Some(t) = p.tool.take() {
                    Some(json!({"seq": seq, "tool": t}))
                } else if p.closed {
                    return seq;
                } else {
                    None
                }
            };
            match next {
                Some(chunk) => {
                    if sink.send(chunk.to_string().into_bytes()).await.is_err() {
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
        let outcome: Result<Value> = loop {
            let item = tokio::select! {
                biased;
                _ = cancel.wait_for(|c| *c) => break Err(Error::new(ErrorCode::Cancelled, "cancelled by the caller")),
                _ = tokio::time::sleep_until(give_up) => break Err(Error::new(
                    ErrorCode::Timeout,
                    format!("the host did not end the run within {max_ms} ms (handoffMaxMs) + {} s; the run was stopped", HOST_SLACK.as_secs()),
                )),
                item = run.next() => item,
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

/// Characters of output kept in a caller record's `tail`.
const TAIL_CHARS: usize = 160;

fn tail_of(s: &str) -> String {
    let start = s
        .char_indices()
        .rev()
        .nth(TAIL_CHARS - 1)
        .map(|(i, _)| i)
        .unwrap_or(0);
    s[start..].to_string()
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
    let who = match &req.caller_agent {
        Some(a) => format!("agent {a} on {from}"),
        None => from.to_string(),
    };
    let text = format!(
        "[ClawMatrix message from {who}; one-way, no reply is expected by the sender]\n{}",
        req.message
    );
    let v = h
        .host
        .call(
            HOST_AGENT_SEND,
            json!({"agentId": agent, "sessionKey": session_key, "message": text}),
        )?
        .result()
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

// ----- caller side ---------------------------------------------------------------------------

/// Limits of a handoff on the calling node (from its config).
#[derive(Debug, Clone, Copy)]
pub struct HandoffLimits {
    /// `handoffTimeout`: inactivity, reset by every chunk.
    pub idle: Duration,
    /// `handoffMaxMs`: the whole handoff, retries included.
    pub max: Duration,
}

/// Context the caller side needs.
pub(crate) struct CallerCtx {
    pub actor: ActorHandle,
    pub self_id: String,
    pub limits: HandoffLimits,
    pub log: Arc<HandoffLog>,
}

fn parse_target(tool: &str, args: &Map<String, Value>) -> Result<Target> {
    let raw = args.get("target").and_then(Value::as_str).unwrap_or("");
    Target::parse(raw).map_err(|e| {
        invalid(
            &format!("{tool}.target"),
            format!("{e} (give an agent id, tags:a,b or a node id)"),
        )
    })
}

fn describe(t: &Target) -> String {
    match t {
        Target::Name(n) => n.clone(),
        Target::Tags(tags) => format!("tags:{}", tags.join(",")),
    }
}

/// Start `cluster_handoff` (arguments validated) on the node's runtime.
pub(crate) fn start_handoff(
    runtime: &tokio::runtime::Handle,
    ctx: CallerCtx,
    args: &Map<String, Value>,
    caller: ToolCaller,
) -> ToolCall {
    let target = match parse_target("cluster_handoff", args) {
        Ok(t) => t,
        Err(e) => return ToolCall::ready(Err(e)),
    };
    let s = |k: &str| args.get(k).and_then(Value::as_str).map(String::from);
    let task = s("task").unwrap_or_default();
    let context = s("context");
    let (tx, rx) = mpsc::channel(STEP_QUEUE);
    let (cancel, cancel_rx) = watch::channel(false);
    runtime.spawn(async move {
        let r = run_handoff(&ctx, target, task, context, caller, &tx, cancel_rx).await;
        let step = r.map(ToolEvent::Result);
        let _ = tx.send(step).await;
    });
    ToolCall::new(rx, cancel)
}

/// Why one attempt ended without a result.
struct AttemptError {
    error: Error,
    /// Output (chunks) had arrived: never retried.
    output_seen: bool,
    /// Worth another node: timeout or unreachable before any output, or `busy`.
    retryable: bool,
}

async fn run_handoff(
    ctx: &CallerCtx,
    target: Target,
    task: String,
    context: Option<String>,
    caller: ToolCaller,
    tx: &mpsc::Sender<Result<ToolEvent>>,
    mut cancel: watch::Receiver<bool>,
) -> Result<ToolOutput> {
    let started = Instant::now();
    let hard = tokio::time::Instant::from_std(started + ctx.limits.max);
    let handoff_id = uuid::Uuid::new_v4().simple().to_string();
    let want = describe(&target);
    let mut exclude: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut last: Option<Error> = None;
    for attempt in 0..=MAX_RETRIES {
        let candidates = ctx.actor.resolve(target.clone(), exclude.clone()).await;
        let Some(cand) = candidates.into_iter().find(|c| !exclude.contains(&c.node)) else {
            return Err(match last.take() {
                None => no_candidate(&ctx.self_id, &target),
                Some(e) => Error::new(
                    e.code,
                    format!(
                        "{}; not retried: no other reachable node matches {want}",
                        e.message
                    ),
                ),
            });
        };
        let agent_label = cand
            .agent
            .clone()
            .unwrap_or_else(|| "(default agent)".into());
        let remaining = hard.saturating_duration_since(tokio::time::Instant::now());
        let req = HandoffRequest {
            agent: cand.agent.clone(),
            task: task.clone(),
            context: context.clone(),
            // One id per attempt: a retry must not join the failed attempt's session.
            handoff_id: if attempt == 0 {
                handoff_id.clone()
            } else {
                format!("{handoff_id}-r{attempt}")
            },
            caller_agent: caller.agent_id.clone(),
            max_ms: remaining.as_millis().max(1) as u64,
        };
        ctx.log.begin(HandoffRecord {
            role: "caller",
            id: req.handoff_id.clone(),
            peer: cand.node.clone(),
            agent: agent_label.clone(),
            ..HandoffRecord::default()
        });
        let r = attempt_once(ctx, &cand.node, &agent_label, &req, hard, tx, &mut cancel).await;
        match r {
            Ok(out) => {
                let mut out = out;
                failures.extend(last.take().map(|e| e.message));
                if !failures.is_empty() {
                    out.details["retriedAfter"] = json!(failures);
                }
                return Ok(out);
            }
            Err(a) => {
                let msg = a.error.message.clone();
                if a.retryable && !a.output_seen && attempt < MAX_RETRIES && !*cancel.borrow() {
                    if last.is_some() {
                        failures.push(last.take().map(|e| e.message).unwrap_or_default());
                    }
                    last = Some(a.error);
                    exclude.push(cand.node.clone());
                    continue;
                }
                let mut message = msg;
                if a.output_seen && a.error.code != ErrorCode::Cancelled {
                    message.push_str(
                        "; not retried: output had already arrived and the remote agent may \
                         have acted (side effects)",
                    );
                }
                failures.extend(last.take().map(|e| e.message));
                if !failures.is_empty() {
                    message.push_str(&format!(
                        " (after {} earlier attempt(s): {})",
                        failures.len(),
                        failures.join("; ")
                    ));
                }
                return Err(Error::new(a.error.code, message));
            }
        }
    }
    Err(Error::new(
        ErrorCode::Unreachable,
        format!(
            "cluster_handoff to {want}: every attempt failed: {}",
            failures.join("; ")
        ),
    ))
}

fn no_candidate(self_id: &str, target: &Target) -> Error {
    let what = match target {
        Target::Name(n) if n == self_id => {
            return invalid(
                "cluster_handoff.target",
                format!(
                    "{n} is this node; run local agents directly (handoff goes to other nodes)"
                ),
            )
        }
        Target::Name(n) => {
            format!("no reachable node offers agent {n:?} and no node is named {n:?}")
        }
        Target::Tags(t) => format!("no reachable node or agent matches tags:{}", t.join(",")),
    };
    Error::new(
        ErrorCode::Unreachable,
        format!("cluster_handoff: {what} (see cluster_peers)"),
    )
}

#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    ctx: &CallerCtx,
    node: &str,
    agent: &str,
    req: &HandoffRequest,
    hard: tokio::time::Instant,
    tx: &mpsc::Sender<Result<ToolEvent>>,
    cancel: &mut watch::Receiver<bool>,
) -> std::result::Result<ToolOutput, AttemptError> {
    let t0 = Instant::now();
    let who = format!("cluster_handoff to {agent} on {node}");
    let id = req.handoff_id.clone();
    let log = &ctx.log;
    let fail = |state: &str, error: Error, output_seen: bool, retryable: bool| {
        let st = state.to_string();
        let msg = error.message.clone();
        log.update("caller", &id, |r| {
            r.state = st;
            r.error = Some(msg);
        });
        AttemptError {
            error,
            output_seen,
            retryable,
        }
    };
    let payload = serde_json::to_vec(req).map_err(|e| {
        fail(
            "error",
            Error::new(ErrorCode::Internal, e.to_string()),
            false,
            false,
        )
    })?;
    let mut stream = match ctx
        .actor
        .open_stream(
            node,
            METHOD_HANDOFF,
            payload,
            ctx.limits.idle + MESH_DEADLINE_SLACK,
        )
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let retry = e.code == ErrorCode::Unreachable;
            let state = if retry { "unreachable" } else { "error" };
            return Err(fail(
                state,
                Error::new(e.code, format!("{who}: {}", e.message)),
                false,
                retry,
            ));
        }
    };
    let idle = ctx.limits.idle;
    let mut idle_at = tokio::time::Instant::now() + idle;
    let mut expect_seq: u64 = 0;
    let mut chunks: u64 = 0;
    let mut acc = String::new();
    let mut truncated = false;
    let mut acc_chars: u64 = 0;
    let mut first_chunk_ms: Option<u64> = None;
    let summary = |chunks: u64, acc: &str| {
        if chunks == 0 {
            "no output had arrived".to_string()
        } else {
            format!(
                "{chunks} chunk(s), {} characters of output had arrived",
                acc.chars().count()
            )
        }
    };
    loop {
        let item = tokio::select! {
            biased;
            _ = cancel.wait_for(|c| *c) => {
                stream.cancel();
                let e = Error::new(ErrorCode::Cancelled, format!(
                    "{who}: cancelled by the caller ({}); the remote run is being aborted",
                    summary(chunks, &acc)));
                return Err(fail("cancelled", e, chunks > 0, false));
            }
            _ = tokio::time::sleep_until(hard) => {
                stream.cancel();
                let e = Error::new(ErrorCode::Timeout, format!(
                    "{who}: the hard cap handoffMaxMs ({} ms) was reached after {} ms; {}",
                    ctx.limits.max.as_millis(), t0.elapsed().as_millis(), summary(chunks, &acc)));
                return Err(fail("timeout", e, chunks > 0, false));
            }
            _ = tokio::time::sleep_until(idle_at) => {
                stream.cancel();
                let e = Error::new(ErrorCode::Timeout, format!(
                    "{who}: no output for {} ms (handoffTimeout, the inactivity timeout); {}",
                    idle.as_millis(), summary(chunks, &acc)));
                return Err(fail("timeout", e, chunks > 0, chunks == 0));
            }
            item = stream.next() => item,
        };
        let item = match item {
            Some(i) => i,
            None => {
                let e = Error::new(
                    ErrorCode::Internal,
                    format!("{who}: the stream ended without a result"),
                );
                return Err(fail("error", e, chunks > 0, false));
            }
        };
        match item {
            Err(e) => {
                let before = chunks == 0;
                let retry = before && matches!(e.code, ErrorCode::Unreachable | ErrorCode::Timeout)
                    || (before && e.code == ErrorCode::Remote && e.message.contains("busy"));
                let state = match e.code {
                    ErrorCode::Unreachable => "unreachable",
                    ErrorCode::Timeout => "timeout",
                    _ => "error",
                };
                let detail = if e.code == ErrorCode::Unreachable {
                    format!("{node} became unreachable ({})", e.message)
                } else {
                    e.message.clone()
                };
                let err = Error::new(
                    e.code,
                    format!("{who}: {detail}; {}", summary(chunks, &acc)),
                );
                return Err(fail(state, err, !before, retry));
            }
            Ok(StreamItem::Chunk(bytes)) => {
                let v: Value = match serde_json::from_slice(&bytes) {
                    Ok(v) => v,
                    Err(err) => {
                        stream.cancel();
                        let e = Error::new(
                            ErrorCode::Remote,
                            format!("{who}: unreadable handoff_stream chunk {expect_seq}: {err}"),
                        );
                        return Err(fail("error", e, true, false));
                    }
                };
                let seq = v.get("seq").and_then(Value::as_u64);
                if seq != Some(expect_seq) {
                    stream.cancel();
                    let e = Error::new(
                        ErrorCode::Remote,
                        format!(
                            "{who}: handoff_stream chunk out of order or lost: expected seq \
                         {expect_seq}, got {}",
                            v.get("seq").unwrap_or(&Value::Null)
                        ),
                    );
                    return Err(fail("error", e, true, false));
                }
                expect_seq += 1;
                chunks += 1;
                idle_at = tokio::time::Instant::now() + idle;
                first_chunk_ms.get_or_insert(t0.elapsed().as_millis() as u64);
                let Some(delta) = v.get("delta").and_then(Value::as_str) else {
                    // Tool activity: keeps the handoff alive, shows nothing.
                    continue;
                };
                acc_chars += delta.chars().count() as u64;
                if !truncated {
                    if acc.len() + delta.len() > MAX_ACCUMULATED_BYTES {
                        truncated = true;
                        acc.push_str("\n[… output truncated: more than 16 MiB …]");
                    } else {
                        acc.push_str(delta);
                    }
                }
                let c = chunks;
                let chars = acc_chars;
                log.update("caller", &id, |r| {
                    r.chunks = c;
                    r.chars = chars;
                    r.first_chunk_ms = first_chunk_ms;
                    r.tail = Some(tail_of(&acc));
                });
                let step = ToolEvent::Progress {
                    text: delta.to_string(),
                    details: json!({"node": node, "agent": agent, "seq": seq, "handoffId": id}),
                };
                // Waiting here stops reading the stream, which stops the credit: backpressure.
                // The cancel signal and the hard cap still apply while we wait.
                let sent = tokio::select! {
                    biased;
                    _ = cancel.wait_for(|c| *c) => false,
                    _ = tokio::time::sleep_until(hard) => false,
                    r = tx.send(Ok(step)) => r.is_ok(),
                };
                if !sent {
                    stream.cancel();
                    let e = Error::new(
                        ErrorCode::Cancelled,
                        format!("{who}: the tool call was cancelled or dropped while output was pending"),
                    );
                    return Err(fail("cancelled", e, true, false));
                }
            }
            Ok(StreamItem::End(bytes)) => {
                let v: Value = serde_json::from_slice(&bytes).map_err(|err| {
                    fail(
                        "error",
                        Error::new(
                            ErrorCode::Remote,
                            format!("{who}: unreadable result: {err}"),
                        ),
                        chunks > 0,
                        false,
                    )
                })?;
                if v.get("ok").and_then(Value::as_bool) != Some(true) {
                    let code = v
                        .get("code")
                        .and_then(Value::as_str)
                        .and_then(ErrorCode::parse)
                        .unwrap_or(ErrorCode::Remote);
                    let msg = v.get("message").and_then(Value::as_str).unwrap_or("failed");
                    let e = Error::new(code, format!("{who}: {msg}; {}", summary(chunks, &acc)));
                    return Err(fail("error", e, chunks > 0, false));
                }
                let final_text = v.get("text").and_then(Value::as_str).unwrap_or("");
                let answered_agent = v
                    .get("agent")
                    .and_then(Value::as_str)
                    .unwrap_or(agent)
                    .to_string();
                // OpenClaw trims the final reply; compare modulo surrounding whitespace.
                let matches = final_text.trim() == acc.trim();
                let text = if final_text.trim().is_empty() {
                    acc.clone()
                } else {
                    final_text.to_string()
                };
                let duration = t0.elapsed().as_millis() as u64;
                let c = chunks;
                let chars = acc_chars;
                log.update("caller", &id, |r| {
                    r.state = "ok".into();
                    r.agent = answered_agent.clone();
                    r.chunks = c;
                    r.chars = chars;
                    r.stream_matches_final = Some(matches);
                    r.first_chunk_ms = first_chunk_ms;
                    r.run_id = v.get("runId").and_then(Value::as_str).map(String::from);
                    r.session_key = v
                        .get("sessionKey")
                        .and_then(Value::as_str)
                        .map(String::from);
                });
                let details = json!({
                    "node": node,
                    "agent": answered_agent,
                    "handoffId": id,
                    "runId": v.get("runId").cloned().unwrap_or(Value::Null),
                    "sessionKey": v.get("sessionKey").cloned().unwrap_or(Value::Null),
                    "chunks": chunks,
                    "streamedChars": chars,
                    "streamMatchesFinal": matches,
                    "usedStreamAsFinal": final_text.trim().is_empty(),
                    "firstChunkMs": first_chunk_ms,
                    "durationMs": duration,
                });
                return Ok(ToolOutput {
                    text: format!("[handoff: {answered_agent} on {node} answered]\n{text}"),
                    details,
                });
            }
        }
    }
}

/// Start `cluster_send` (arguments validated) on the node's runtime.
pub(crate) fn start_send(
    runtime: &tokio::runtime::Handle,
    ctx: CallerCtx,
    args: &Map<String, Value>,
    caller: ToolCaller,
) -> ToolCall {
    let target = match parse_target("cluster_send", args) {
        Ok(t) => t,
        Err(e) => return ToolCall::ready(Err(e)),
    };
    let message = args
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (tx, rx) = mpsc::channel(1);
    let (cancel, mut cancel_rx) = watch::channel(false);
    runtime.spawn(async move {
        let r = tokio::select! {
            biased;
            _ = cancel_rx.wait_for(|c| *c) => Err(Error::new(ErrorCode::Cancelled, "cluster_send: cancelled by the caller")),
            r = run_send(&ctx, target, message, caller) => r,
        };
        let _ = tx.send(r.map(ToolEvent::Result)).await;
    });
    ToolCall::new(rx, cancel)
}

async fn run_send(
    ctx: &CallerCtx,
    target: Target,
    message: String,
    caller: ToolCaller,
) -> Result<ToolOutput> {
    let want = describe(&target);
    let candidates = ctx.actor.resolve(target.clone(), Vec::new()).await;
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
            caller_agent: caller.agent_id.clone(),
        };
        let payload =
            serde_json::to_vec(&req).map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
        let who = format!(
            "cluster_send to {} on {}",
            cand.agent.as_deref().unwrap_or("(default agent)"),
            cand.node
        );
        let bytes = match ctx
            .actor
            .request(&cand.node, METHOD_SEND, payload, SEND_TIMEOUT)
            .await
        {
            Ok(b) => b,
            // Not delivered anywhere yet: the next matching node may take it.
            Err(e) if e.code == ErrorCode::Unreachable => {
                unreachable.push(format!("{}: {}", cand.node, e.message));
                continue;
            }
            Err(e) => return Err(Error::new(e.code, format!("{who}: {}", e.message))),
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
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
        ctx.log.count_send(false);
        let agent = v.get("agent").and_then(Value::as_str).unwrap_or("?");
        let session = v.get("sessionKey").and_then(Value::as_str).unwrap_or("?");
        return Ok(ToolOutput {
            text: format!("delivered to {agent} on {} (session {session})", cand.node),
            details: json!({
                "delivered": true,
                "node": cand.node,
                "agent": agent,
                "sessionKey": session,
                "runId": v.get("runId").cloned().unwrap_or(Value::Null),
            }),
        });
    }
    Err(Error::new(
        ErrorCode::Unreachable,
        format!(
            "cluster_send to {want}: not delivered, no matching node is reachable: {}",
            unreachable.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_per_handoff_and_never_subagent_keys() {
        let k = handoff_session_key("coder", "abc");
        assert_eq!(k, "agent:coder:clawmatrix:handoff:abc");
        assert!(!k.contains(":subagent:"));
        assert_eq!(send_session_key("coder"), "agent:coder:main");
    }

    #[test]
    fn the_tail_keeps_the_last_characters_on_char_boundaries() {
        assert_eq!(tail_of("short"), "short");
        let long: String = "é".repeat(TAIL_CHARS + 10);
        let t = tail_of(&long);
        assert_eq!(t.chars().count(), TAIL_CHARS);
    }

    #[test]
    fn the_log_keeps_a_bounded_recent_list_and_counts_running() {
        let log = HandoffLog::default();
        for i in 0..(RECENT_HANDOFFS + 5) {
            log.begin(HandoffRecord {
                role: "caller",
                id: format!("h{i}"),
                ..HandoffRecord::default()
            });
        }
        log.update("caller", &format!("h{}", RECENT_HANDOFFS + 4), |r| {
            r.state = "ok".into()
        });
        let v = log.to_json();
        assert_eq!(v["recent"].as_array().map(Vec::len), Some(RECENT_HANDOFFS));
        assert_eq!(v["called"], RECENT_HANDOFFS as u64 + 5);
        assert_eq!(v["running"], RECENT_HANDOFFS as u64 + 4);
        assert!(v["recent"][RECENT_HANDOFFS - 1]["durationMs"].is_u64());
    }
}
