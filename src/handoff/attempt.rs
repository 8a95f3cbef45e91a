//! One attempt of a `cluster_handoff` on one node: open the stream, read it under the
//! inactivity timeout, the hard cap and the caller's cancel, accumulate the output, and turn how
//! it ended into the tool's result or an [`AttemptError`] for the retry decision
//! ([`super::retry`]). Every way out ends the attempt's status record.
//!
//! ```text
//! Attempt::new ─ open ─▶ read loop ─┬─ chunk → take_chunk → Progress (waits for the consumer)
//!                                   ├─ end   → answered | end_refused
//!                                   ├─ error → stream_failed
//!                                   └─ cancel | hard cap | idle → cancel the stream, fail
//! ```

use super::caller::CallerCtx;
use super::log::tail_of;
use super::*;
use crate::rpc::CallStream;

/// How often a running handoff's status record follows its stream (chunks, characters, tail).
const LOG_EVERY: Duration = Duration::from_millis(200);

/// A `handoff_stream` chunk: `{"seq": n, "delta": text}` or `{"seq": n, "tool": name}`. Other
/// fields are ignored (forward compatible); a field of the wrong type makes it unreadable.
#[derive(serde::Deserialize)]
struct StreamChunk<'a> {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<std::borrow::Cow<'a, str>>,
}

/// What an attempt's stream delivered so far, for its status record.
struct Seen {
    chunks: u64,
    chars: u64,
    first_chunk_ms: Option<u64>,
    tail: Option<String>,
}

impl Seen {
    fn new(chunks: u64, chars: u64, first_chunk_ms: Option<u64>, acc: &str) -> Self {
        Seen {
            chunks,
            chars,
            first_chunk_ms,
            tail: (!acc.is_empty()).then(|| tail_of(acc)),
        }
    }

    fn record(self, r: &mut HandoffRecord) {
        r.chunks = self.chunks;
        r.chars = self.chars;
        r.first_chunk_ms = self.first_chunk_ms;
        if self.tail.is_some() {
            r.tail = self.tail;
        }
    }
}

/// Why one attempt ended without a result.
pub(super) struct AttemptError {
    pub(super) error: Error,
    /// Output (chunks) had arrived: never retried.
    pub(super) output_seen: bool,
    /// Worth another node: timeout or unreachable before any output, or `busy`.
    pub(super) retryable: bool,
}

/// Ends an attempt's status record with `state` and the error's message (and, once the stream
/// is open, exactly what it delivered, since the record otherwise follows the stream only every
/// [`LOG_EVERY`]).
fn fail(
    log: &HandoffLog,
    id: &str,
    state: &str,
    error: Error,
    output_seen: bool,
    retryable: bool,
    seen: Option<Seen>,
) -> AttemptError {
    let st = state.to_string();
    let msg = error.message.clone();
    log.update("caller", id, |r| {
        r.state = st;
        r.error = Some(msg);
        if let Some(seen) = seen {
            seen.record(r);
        }
    });
    AttemptError {
        error,
        output_seen,
        retryable,
    }
}

/// Run one attempt: `req` to `agent` (its label) on `node`, bounded by `hard`, progress to `tx`.
pub(super) async fn attempt_once(
    ctx: &CallerCtx,
    node: &str,
    agent: &str,
    req: &HandoffRequest,
    hard: tokio::time::Instant,
    tx: &mpsc::Sender<Result<ToolEvent>>,
    cancel: &mut watch::Receiver<bool>,
) -> std::result::Result<ToolOutput, AttemptError> {
    let mut attempt = Attempt::new(ctx, node, agent, &req.handoff_id);
    let mut stream = attempt.open(req).await?;
    attempt.read(&mut stream, hard, tx, cancel).await
}

/// One attempt's state: who it goes to, when it started, what its stream delivered.
struct Attempt<'a> {
    ctx: &'a CallerCtx,
    node: &'a str,
    /// The agent's label (`(default agent)` when the target was a node).
    agent: &'a str,
    /// This attempt's handoff id (the status record's key).
    id: &'a str,
    /// `cluster_handoff to <agent> on <node>`: the prefix of every error.
    who: String,
    t0: Instant,
    /// The inactivity deadline, moved by every chunk (the timer follows it lazily).
    idle_at: tokio::time::Instant,
    expect_seq: u64,
    chunks: u64,
    /// The accumulated deltas (cut at [`MAX_ACCUMULATED_BYTES`] with a marker).
    acc: String,
    truncated: bool,
    /// Characters of all deltas, including those beyond the cut.
    acc_chars: u64,
    first_chunk_ms: Option<u64>,
    /// When the status record last followed the stream (at most every [`LOG_EVERY`]).
    logged_at: Option<tokio::time::Instant>,
}

impl<'a> Attempt<'a> {
    fn new(ctx: &'a CallerCtx, node: &'a str, agent: &'a str, id: &'a str) -> Self {
        let t0 = Instant::now();
        Attempt {
            ctx,
            node,
            agent,
            id,
            who: format!("cluster_handoff to {agent} on {node}"),
            t0,
            idle_at: tokio::time::Instant::now(),
            expect_seq: 0,
            chunks: 0,
            acc: String::new(),
            truncated: false,
            acc_chars: 0,
            first_chunk_ms: None,
            logged_at: None,
        }
    }

    /// Open the handoff stream to the node; failing to is retryable when it was unreachable.
    async fn open(&self, req: &HandoffRequest) -> std::result::Result<CallStream, AttemptError> {
        let log = &self.ctx.log;
        let payload = serde_json::to_vec(req).map_err(|e| {
            let e = Error::new(ErrorCode::Internal, e.to_string());
            fail(log, self.id, "error", e, false, false, None)
        })?;
        let deadline = self.ctx.limits.idle + MESH_DEADLINE_SLACK;
        match self
            .ctx
            .mesh
            .open_stream(self.node, METHOD_HANDOFF, payload, deadline)
            .await
        {
            Ok(s) => Ok(s),
            Err(e) => {
                let retry = e.code == ErrorCode::Unreachable;
                let state = if retry { "unreachable" } else { "error" };
                let e = Error::new(e.code, format!("{}: {}", self.who, e.message));
                Err(fail(log, self.id, state, e, false, retry, None))
            }
        }
    }

    /// Read the stream to its end, forwarding deltas as progress.
    async fn read(
        &mut self,
        stream: &mut CallStream,
        hard: tokio::time::Instant,
        tx: &mpsc::Sender<Result<ToolEvent>>,
        cancel: &mut watch::Receiver<bool>,
    ) -> std::result::Result<ToolOutput, AttemptError> {
        // The three ways out besides the stream itself are created once per attempt, not once
        // per chunk: a timer armed and a watch waiter registered for every chunk were a fifth of
        // the caller's CPU at 1000 streams. The inactivity timer is re-armed lazily: every chunk
        // only moves `idle_at`, and when the timer fires early it is set to the new `idle_at`.
        self.idle_at = tokio::time::Instant::now() + self.ctx.limits.idle;
        let idle_timer = tokio::time::sleep_until(self.idle_at);
        let hard_timer = tokio::time::sleep_until(hard);
        let cancelled = cancel.wait_for(|c| *c);
        tokio::pin!(idle_timer, hard_timer, cancelled);
        loop {
            // The stream first: the ways out are only polled (to register their wakers) when no
            // chunk is ready, which the stream's task budget guarantees now and then, so a
            // caller that is always busy still sees a cancel within one budget of chunks.
            let item = tokio::select! {
                biased;
                item = stream.next() => item,
                _ = &mut cancelled => {
                    stream.cancel();
                    return Err(self.cancelled());
                }
                _ = &mut hard_timer => {
                    stream.cancel();
                    return Err(self.hard_cap_reached());
                }
                _ = &mut idle_timer => {
                    if tokio::time::Instant::now() < self.idle_at {
                        // A chunk came since the timer was set: wait for the new deadline.
                        idle_timer.as_mut().reset(self.idle_at);
                        continue;
                    }
                    stream.cancel();
                    return Err(self.idle_timeout());
                }
            };
            let bytes = match item {
                None => return Err(self.ended_without_result()),
                Some(Err(e)) => return Err(self.stream_failed(e)),
                Some(Ok(StreamItem::End(bytes))) => return self.end(&bytes),
                Some(Ok(StreamItem::Chunk(bytes))) => bytes,
            };
            let step = match self.take_chunk(&bytes) {
                Ok(Some(step)) => step,
                // Tool activity: keeps the handoff alive, shows nothing.
                Ok(None) => continue,
                Err(e) => {
                    stream.cancel();
                    return Err(self.fail("error", e, true, false));
                }
            };
            // Waiting here stops reading the stream, which stops the credit: backpressure.
            // The cancel signal and the hard cap still apply while we wait.
            let sent = tokio::select! {
                biased;
                r = tx.send(Ok(step)) => r.is_ok(),
                _ = &mut cancelled => false,
                _ = &mut hard_timer => false,
            };
            if !sent {
                stream.cancel();
                return Err(self.dropped_while_pending());
            }
        }
    }

    /// Take one chunk: check its sequence number, move the inactivity deadline, accumulate the
    /// delta. `Ok(None)` for tool activity, else the progress step to show.
    fn take_chunk(&mut self, bytes: &[u8]) -> Result<Option<ToolEvent>> {
        let chunk: StreamChunk = serde_json::from_slice(bytes).map_err(|err| {
            Error::new(
                ErrorCode::Remote,
                format!(
                    "{}: unreadable handoff_stream chunk {}: {err}",
                    self.who, self.expect_seq
                ),
            )
        })?;
        if chunk.seq != Some(self.expect_seq) {
            let got = chunk.seq.map_or("none".to_string(), |s| s.to_string());
            return Err(Error::new(
                ErrorCode::Remote,
                format!(
                    "{}: handoff_stream chunk out of order or lost: expected seq {}, got {got}",
                    self.who, self.expect_seq
                ),
            ));
        }
        let seq = self.expect_seq;
        self.expect_seq += 1;
        self.chunks += 1;
        let now = tokio::time::Instant::now();
        self.idle_at = now + self.ctx.limits.idle;
        let t0 = self.t0;
        self.first_chunk_ms
            .get_or_insert_with(|| t0.elapsed().as_millis() as u64);
        let Some(delta) = chunk.delta else {
            return Ok(None);
        };
        self.accumulate(&delta);
        if self
            .logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY)
        {
            self.logged_at = Some(now);
            let seen = self.seen();
            self.ctx.log.update("caller", self.id, |r| seen.record(r));
        }
        Ok(Some(ToolEvent::Progress {
            text: delta.into_owned(),
            details: json!({
                "node": self.node,
                "agent": self.agent,
                "seq": seq,
                "handoffId": self.id,
            }),
        }))
    }

    /// Add a delta to the accumulated output, up to [`MAX_ACCUMULATED_BYTES`].
    fn accumulate(&mut self, delta: &str) {
        self.acc_chars += delta.chars().count() as u64;
        if !self.truncated {
            if self.acc.len() + delta.len() > MAX_ACCUMULATED_BYTES {
                self.truncated = true;
                self.acc
                    .push_str("\n[… output truncated: more than 16 MiB …]");
            } else {
                self.acc.push_str(delta);
            }
        }
    }

    /// The stream's end: the agent's answer, or the serving node's refusal.
    fn end(&self, bytes: &[u8]) -> std::result::Result<ToolOutput, AttemptError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|err| {
            let e = Error::new(
                ErrorCode::Remote,
                format!("{}: unreadable result: {err}", self.who),
            );
            self.fail("error", e, self.chunks > 0, false)
        })?;
        if v.get("ok").and_then(Value::as_bool) != Some(true) {
            return Err(self.end_refused(&v));
        }
        Ok(self.answered(&v))
    }

    /// An `{"ok": false, "code", "message"}` end.
    fn end_refused(&self, v: &Value) -> AttemptError {
        let code = v
            .get("code")
            .and_then(Value::as_str)
            .and_then(ErrorCode::parse)
            .unwrap_or(ErrorCode::Remote);
        let msg = v.get("message").and_then(Value::as_str).unwrap_or("failed");
        let e = Error::new(code, format!("{}: {msg}; {}", self.who, self.summary()));
        self.fail("error", e, self.chunks > 0, false)
    }

    /// An `{"ok": true, "text", …}` end: the final text (the reply, or the accumulated stream
    /// when the reply is empty) and the details; the status record ends `ok`.
    fn answered(&self, v: &Value) -> ToolOutput {
        let final_text = v.get("text").and_then(Value::as_str).unwrap_or("");
        let answered_agent = v
            .get("agent")
            .and_then(Value::as_str)
            .unwrap_or(self.agent)
            .to_string();
        // OpenClaw trims the final reply; compare modulo surrounding whitespace.
        let matches = final_text.trim() == self.acc.trim();
        let text = if final_text.trim().is_empty() {
            self.acc.clone()
        } else {
            final_text.to_string()
        };
        let duration = self.t0.elapsed().as_millis() as u64;
        let seen = self.seen();
        self.ctx.log.update("caller", self.id, |r| {
            r.state = "ok".into();
            r.agent = answered_agent.clone();
            seen.record(r);
            r.stream_matches_final = Some(matches);
            r.run_id = v.get("runId").and_then(Value::as_str).map(String::from);
            r.session_key = v
                .get("sessionKey")
                .and_then(Value::as_str)
                .map(String::from);
        });
        let details = json!({
            "node": self.node,
            "agent": answered_agent,
            "handoffId": self.id,
            "runId": v.get("runId").cloned().unwrap_or(Value::Null),
            "sessionKey": v.get("sessionKey").cloned().unwrap_or(Value::Null),
            "chunks": self.chunks,
            "streamedChars": self.acc_chars,
            "streamMatchesFinal": matches,
            "usedStreamAsFinal": final_text.trim().is_empty(),
            "firstChunkMs": self.first_chunk_ms,
            "durationMs": duration,
        });
        ToolOutput {
            text: format!(
                "[handoff: {answered_agent} on {} answered]\n{text}",
                self.node
            ),
            details,
        }
    }

    /// The stream failed (the route went, the mesh deadline, the server's error): retryable
    /// before any output when unreachable, timed out or `busy`.
    fn stream_failed(&self, e: Error) -> AttemptError {
        let before = self.chunks == 0;
        let retry = before && matches!(e.code, ErrorCode::Unreachable | ErrorCode::Timeout)
            || (before && e.code == ErrorCode::Remote && e.message.contains("busy"));
        let state = match e.code {
            ErrorCode::Unreachable => "unreachable",
            ErrorCode::Timeout => "timeout",
            _ => "error",
        };
        let detail = if e.code == ErrorCode::Unreachable {
            format!("{} became unreachable ({})", self.node, e.message)
        } else {
            e.message.clone()
        };
        let err = Error::new(
            e.code,
            format!("{}: {detail}; {}", self.who, self.summary()),
        );
        self.fail(state, err, !before, retry)
    }

    fn cancelled(&self) -> AttemptError {
        let e = Error::new(
            ErrorCode::Cancelled,
            format!(
                "{}: cancelled by the caller ({}); the remote run is being aborted",
                self.who,
                self.summary()
            ),
        );
        self.fail("cancelled", e, self.chunks > 0, false)
    }

    fn hard_cap_reached(&self) -> AttemptError {
        let e = Error::new(
            ErrorCode::Timeout,
            format!(
                "{}: the hard cap handoffMaxMs ({} ms) was reached after {} ms; {}",
                self.who,
                self.ctx.limits.max.as_millis(),
                self.t0.elapsed().as_millis(),
                self.summary()
            ),
        );
        self.fail("timeout", e, self.chunks > 0, false)
    }

    /// Silence for `handoffTimeout`: retryable only when nothing had arrived.
    fn idle_timeout(&self) -> AttemptError {
        let e = Error::new(
            ErrorCode::Timeout,
            format!(
                "{}: no output for {} ms (handoffTimeout, the inactivity timeout); {}",
                self.who,
                self.ctx.limits.idle.as_millis(),
                self.summary()
            ),
        );
        self.fail("timeout", e, self.chunks > 0, self.chunks == 0)
    }

    fn ended_without_result(&self) -> AttemptError {
        let e = Error::new(
            ErrorCode::Internal,
            format!("{}: the stream ended without a result", self.who),
        );
        self.fail("error", e, self.chunks > 0, false)
    }

    fn dropped_while_pending(&self) -> AttemptError {
        let e = Error::new(
            ErrorCode::Cancelled,
            format!(
                "{}: the tool call was cancelled or dropped while output was pending",
                self.who
            ),
        );
        self.fail("cancelled", e, true, false)
    }

    /// What had arrived, for error messages.
    fn summary(&self) -> String {
        if self.chunks == 0 {
            "no output had arrived".to_string()
        } else {
            format!(
                "{} chunk(s), {} characters of output had arrived",
                self.chunks,
                self.acc.chars().count()
            )
        }
    }

    fn seen(&self) -> Seen {
        Seen::new(self.chunks, self.acc_chars, self.first_chunk_ms, &self.acc)
    }

    /// End the status record with what the stream delivered.
    fn fail(&self, state: &str, e: Error, output_seen: bool, retryable: bool) -> AttemptError {
        let seen = Some(self.seen());
        fail(
            &self.ctx.log,
            self.id,
            state,
            e,
            output_seen,
            retryable,
            seen,
        )
    }
}
