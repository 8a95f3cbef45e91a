//! One served handoff, after its request was checked: start the run on the host, relay its
//! output to the caller under credit, abort it on a cancel or a limit, and map how it ended to
//! the stream's end payload and the status record.
//!
//! ```text
//! host "agent.run" events ─▶ read_host_run ─▶ Outbox ─▶ send_outbox ─▶ caller (under credit)
//!              never waits for the caller ─┘   merged deltas, last tool; at most
//!                                              MAX_PENDING_OUTPUT_BYTES
//! result | error | cancel | give-up ─▶ Served::settle ─▶ abort on the host | finish | error
//! ```

use std::sync::MutexGuard;

use super::serve::{handoff_deadline, origin};
use super::*;
use crate::host::{HostCall, HostDeadline};
use crate::rpc::ChunkSink;

/// Serve a checked `agent.handoff` request: the stream's end payload, or why it failed.
pub(super) async fn serve_handoff(
    h: &AgentHost,
    ctx: CallCtx,
    req: HandoffRequest,
) -> Result<Value> {
    let max_ms = req.max_ms.clamp(1, h.max_ms);
    let deadline = handoff_deadline(ctx.deadline, max_ms, &ctx.from);
    let mut cancel = ctx.cancel.clone();
    // The check may wait long for a busy OpenClaw: a caller that gives up meanwhile ends it
    // (dropping the host request withdraws it there).
    let agent = tokio::select! {
        biased;
        _ = cancel.wait_for(|c| *c) => {
            return Err(Error::new(
                ErrorCode::Cancelled,
                "cancelled by the caller while OpenClaw was checking the agent",
            ))
        }
        r = h.check_agent(&ctx.from, req.caller_agent.as_deref(), req.agent.as_deref(), &deadline) => r?,
    };
    let served = Served::new(h, &req, agent);
    let run = served.start(&req, &ctx.from)?;
    let relayed = relay(run, ctx.sink, ctx.cancel.clone(), &served).await;
    let cancelled = *ctx.cancel.borrow();
    served.settle(relayed, cancelled).await
}

/// The handoff being served: where it runs and how long it may.
struct Served<'a> {
    h: &'a AgentHost,
    /// The handoff id (the status record's key and the run's idempotency key).
    id: &'a str,
    agent: String,
    session_key: String,
    /// The run's bound: the caller's remaining time, at most this node's `handoffMaxMs`.
    max_ms: u64,
}

/// How the relay ended.
struct Relayed {
    /// The host's result value, or why the run ended without one.
    outcome: Result<Value>,
    /// From the host's `started` event.
    run_id: Option<String>,
    /// Characters of output read from the host.
    chars: u64,
    /// Chunks sent to the caller.
    chunks: u64,
    /// The host call; dropping it before its result cancels it on the host.
    run: HostCall,
}

/// Run the reader (host → outbox) and the sender (outbox → caller) until both are done.
async fn relay(
    run: HostCall,
    sink: ChunkSink,
    cancel: watch::Receiver<bool>,
    served: &Served<'_>,
) -> Relayed {
    let outbox = Outbox::default();
    // The reader finishes first (result, error or cancel); then the sender drains.
    let reader = async {
        let r = read_host_run(run, cancel, served, &outbox).await;
        outbox.close();
        r
    };
    let ((outcome, events, run), chunks) = tokio::join!(reader, send_outbox(&outbox, sink));
    Relayed {
        outcome,
        run_id: events.run_id,
        chars: events.chars,
        chunks,
        run,
    }
}

impl<'a> Served<'a> {
    fn new(h: &'a AgentHost, req: &'a HandoffRequest, agent: String) -> Self {
        Served {
            h,
            id: &req.handoff_id,
            session_key: handoff_session_key(&agent, &req.handoff_id),
            agent,
            max_ms: req.max_ms.clamp(1, h.max_ms),
        }
    }

    /// Record the handoff and start the run on the host.
    fn start(&self, req: &HandoffRequest, from: &str) -> Result<HostCall> {
        let caller = origin(req.caller_agent.as_deref(), from);
        let mut message = req.task.clone();
        if let Some(c) = req.context.as_deref().filter(|c| !c.trim().is_empty()) {
            message.push_str("\n\nContext:\n");
            message.push_str(c);
        }
        let system = format!(
            "This task was handed off to you by {caller} through the ClawMatrix mesh. Work on it \
             here on {} and answer with the result; your reply is streamed back to the caller.",
            self.h.node_id
        );
        self.h.log.begin(HandoffRecord {
            role: "server",
            id: self.id.to_string(),
            peer: from.to_string(),
            agent: self.agent.clone(),
            session_key: Some(self.session_key.clone()),
            ..HandoffRecord::default()
        });
        self.h.host.call(
            HOST_AGENT_RUN,
            json!({
                "agentId": self.agent,
                "sessionKey": self.session_key,
                "message": message,
                "extraSystemPrompt": system,
                "idempotencyKey": self.id,
                "timeoutMs": self.max_ms,
            }),
        )
    }

    /// How the relay ended → the end payload or the error; a cancel, a limit or a timeout
    /// aborts the run on the host first.
    async fn settle(&self, r: Relayed, cancelled: bool) -> Result<Value> {
        let Relayed {
            outcome,
            run_id,
            chars,
            chunks,
            run,
        } = r;
        match outcome {
            Err(e)
                if cancelled
                    || matches!(
                        e.code,
                        ErrorCode::Cancelled | ErrorCode::TooLarge | ErrorCode::Timeout
                    ) =>
            {
                Err(self.abort(e, run_id, run, chunks, chars).await)
            }
            Err(e) => {
                self.h.log.update("server", self.id, |r| {
                    r.state = "error".into();
                    r.chunks = chunks;
                    r.chars = chars;
                    r.error = Some(e.message.clone());
                });
                Err(e)
            }
            Ok(v) => self.finish(&v, run_id, chunks, chars),
        }
    }

    /// Abort the run on the host and wait until it stopped, so the session is settled before
    /// anything else touches it; the time is recorded for status. Returns `e`.
    async fn abort(
        &self,
        e: Error,
        run_id: Option<String>,
        run: HostCall,
        chunks: u64,
        chars: u64,
    ) -> Error {
        let t0 = Instant::now();
        let aborted = match self.h.host.call(
            HOST_AGENT_ABORT,
            json!({"sessionKey": self.session_key, "runId": run_id, "reason": e.message}),
        ) {
            Ok(call) => {
                let wait = self.h.host_timeout_ms;
                let deadline = HostDeadline::after(
                    Duration::from_millis(wait),
                    format!("hostTimeoutMs ({wait} ms)"),
                );
                call.result_by(&deadline).await
            }
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
        self.h.log.update("server", self.id, |r| {
            r.state = state.into();
            r.abort_to_stop_ms = Some(ms);
            r.chunks = chunks;
            r.chars = chars;
            r.error = Some(note);
        });
        e
    }

    /// The host's result `{status, text, runId, error?}` → the end payload or the error, and
    /// the status record's end.
    fn finish(&self, v: &Value, run_id: Option<String>, chunks: u64, chars: u64) -> Result<Value> {
        let status = v.get("status").and_then(Value::as_str).unwrap_or("");
        let run_id = v
            .get("runId")
            .and_then(Value::as_str)
            .map(String::from)
            .or(run_id);
        let (state, result) = match status {
            "ok" => ("ok", Ok(self.answer(v, &run_id, chunks))),
            "timeout" | "pending" => (
                "timeout",
                Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "agent {} on {} did not finish within {} ms (handoffMaxMs)",
                        self.agent, self.h.node_id, self.max_ms
                    ),
                )),
            ),
            "error" => (
                "error",
                Err(Error::new(
                    ErrorCode::Remote,
                    format!(
                        "agent {} on {} failed: {}",
                        self.agent,
                        self.h.node_id,
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
                        "host agent.run result: status: expected ok, error or timeout, got \
                         {other:?}"
                    ),
                )),
            ),
        };
        self.h.log.update("server", self.id, |r| {
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

    /// The end payload of a run that finished `ok`.
    fn answer(&self, v: &Value, run_id: &Option<String>, chunks: u64) -> Value {
        let text = v.get("text").and_then(Value::as_str).unwrap_or("");
        json!({
            "ok": true,
            "text": text,
            "node": self.h.node_id,
            "agent": self.agent,
            "sessionKey": self.session_key,
            "runId": run_id,
            "chunks": chunks,
        })
    }
}

// ----- the reader: host events into the outbox ----------------------------------------------

/// What the reader learned from the host's events.
#[derive(Default)]
struct HostEvents {
    run_id: Option<String>,
    /// Characters of all deltas read.
    chars: u64,
}

/// Read the run's events into the outbox until its result, an error, the caller's cancel or
/// the give-up deadline; never waits for the caller.
async fn read_host_run(
    mut run: HostCall,
    mut cancel: watch::Receiver<bool>,
    served: &Served<'_>,
    outbox: &Outbox,
) -> (Result<Value>, HostEvents, HostCall) {
    let max_ms = served.max_ms;
    let mut events = HostEvents::default();
    // The host bounds the run by `timeoutMs`; this bounds our wait even if the host does not.
    let give_up = tokio::time::Instant::now() + Duration::from_millis(max_ms) + HOST_SLACK;
    // Created once, not per event: a timer armed and a watch waiter registered for every delta
    // cost more than reading the delta.
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
        let event = match item {
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
        if let Err(e) = events.take(&event, outbox, &served.h.log, served.id) {
            break Err(e);
        }
    };
    (outcome, events, run)
}

impl HostEvents {
    /// One `agent.run` event: `started` (the run id), `delta` (output), `tool` (activity).
    /// Unknown kinds are ignored (forward compatible), never fatal.
    fn take(&mut self, item: &Value, outbox: &Outbox, log: &HandoffLog, id: &str) -> Result<()> {
        match ev_kind(item) {
            Some("started") => {
                self.run_id = item.get("runId").and_then(Value::as_str).map(String::from);
                let r = self.run_id.clone();
                log.update("server", id, |rec| rec.run_id = r);
            }
            Some("delta") => {
                let Some(text) = item.get("text").and_then(Value::as_str) else {
                    return Err(Error::new(
                        ErrorCode::Internal,
                        format!("host agent.run event: delta without a text string: {item}"),
                    ));
                };
                if text.is_empty() {
                    return Ok(());
                }
                self.chars += text.chars().count() as u64;
                outbox.push_delta(text)?;
            }
            Some("tool") => {
                let name = item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("tool")
                    .to_string();
                outbox.set_tool(name);
            }
            _ => {}
        }
        Ok(())
    }
}

fn ev_kind(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

// ----- the outbox and the sender: output to the caller under credit -------------------------

/// Output waiting for credit, shared by the reader (which fills it) and the sender (which
/// empties it).
#[derive(Default)]
struct Outbox {
    pending: Mutex<Pending>,
    /// Wakes the sender: new output, or the run closed.
    notify: Notify,
}

/// The outbox's contents.
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

/// What the sender takes from the outbox.
enum Next {
    /// A chunk to send.
    Chunk(Vec<u8>),
    /// Nothing left and the run is over.
    Done,
    /// Nothing yet: wait.
    Wait,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Merge a delta into the pending text; fails once the sender failed or when the caller is
    /// [`MAX_PENDING_OUTPUT_BYTES`] behind.
    fn push_delta(&self, text: &str) -> Result<()> {
        let mut p = self.lock();
        if p.failed {
            return Err(Error::new(
                ErrorCode::Cancelled,
                "the stream to the caller closed",
            ));
        }
        if p.text.len() + text.len() > MAX_PENDING_OUTPUT_BYTES {
            return Err(Error::new(
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
        self.notify.notify_one();
        Ok(())
    }

    /// Note tool activity (the latest tool's name).
    fn set_tool(&self, name: String) {
        self.lock().tool = Some(name);
        self.notify.notify_one();
    }

    /// The run is over: the sender sends what is left, then stops.
    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// The sender could not send: the reader stops at its next delta.
    fn sender_failed(&self) {
        self.lock().failed = true;
        self.notify.notify_waiters();
    }

    /// The next chunk (number `seq`): all pending text merged, else the last tool.
    fn take(&self, seq: u64) -> Next {
        let mut p = self.lock();
        if !p.text.is_empty() {
            p.tool = None;
            Next::Chunk(chunk_bytes(seq, "delta", &std::mem::take(&mut p.text)))
        } else if let Some(t) = p.tool.take() {
            Next::Chunk(chunk_bytes(seq, "tool", &t))
        } else if p.closed {
            Next::Done
        } else {
            Next::Wait
        }
    }
}

/// The sender: takes whatever output is pending (merged) and sends it as one chunk once the
/// caller grants credit. Separate from the reader so that waiting for credit never stops
/// reading the host (whose per-call buffer is bounded too). Returns the chunks sent.
async fn send_outbox(outbox: &Outbox, mut sink: ChunkSink) -> u64 {
    let mut seq: u64 = 0;
    loop {
        let notified = outbox.notify.notified();
        match outbox.take(seq) {
            Next::Chunk(chunk) => {
                if sink.send(chunk).await.is_err() {
                    outbox.sender_failed();
                    return seq;
                }
                seq += 1;
            }
            Next::Done => return seq,
            Next::Wait => notified.await,
        }
    }
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
