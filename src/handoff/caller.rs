//! The calling side of `cluster_handoff` and `cluster_send`: target resolution, attempts with
//! the inactivity timeout and hard cap, retries before output, cancel, the final text.

use super::log::tail_of;
use super::*;

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
    pub mesh: MeshClient,
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
        let candidates = ctx.mesh.resolve(target.clone(), exclude.clone()).await;
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
            caller_agent: sendable_agent_id(&caller),
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

/// The calling agent's id as the request carries it: only an id the serving node accepts
/// (OpenClaw's agent ids always are); anything else is left out rather than failing the call.
fn sendable_agent_id(caller: &ToolCaller) -> Option<String> {
    caller
        .agent_id
        .clone()
        .filter(|a| crate::config::is_valid_id(a))
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
    // Ends the attempt's status record: its state and error, and (once the stream is open) what
    // it delivered, exactly, since the record otherwise follows the stream only every LOG_EVERY.
    let fail =
        |state: &str, error: Error, output_seen: bool, retryable: bool, seen: Option<Seen>| {
            let st = state.to_string();
            let msg = error.message.clone();
            log.update("caller", &id, |r| {
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
        };
    let payload = serde_json::to_vec(req).map_err(|e| {
        fail(
            "error",
            Error::new(ErrorCode::Internal, e.to_string()),
            false,
            false,
            None,
        )
    })?;
    let mut stream = match ctx
        .mesh
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
                None,
            ));
        }
    };
    let idle = ctx.limits.idle;
    // The three ways out besides the stream itself are created once per attempt, not once per
    // chunk: a timer armed and a watch waiter registered for every chunk were a fifth of the
    // caller's CPU at 1000 streams. The inactivity timer is re-armed lazily: every chunk only
    // moves `idle_at`, and when the timer fires early it is set to the new `idle_at`.
    let mut idle_at = tokio::time::Instant::now() + idle;
    let idle_timer = tokio::time::sleep_until(idle_at);
    let hard_timer = tokio::time::sleep_until(hard);
    let cancelled = cancel.wait_for(|c| *c);
    tokio::pin!(idle_timer, hard_timer, cancelled);
    let mut expect_seq: u64 = 0;
    let mut chunks: u64 = 0;
    let mut acc = String::new();
    let mut truncated = false;
    let mut acc_chars: u64 = 0;
    let mut first_chunk_ms: Option<u64> = None;
    // The status record follows the stream at most every LOG_EVERY (and always at the end).
    let mut logged_at: Option<tokio::time::Instant> = None;
    macro_rules! seen {
        () => {
            Some(Seen::new(chunks, acc_chars, first_chunk_ms, &acc))
        };
    }
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
        // The stream first: the ways out are only polled (to register their wakers) when no
        // chunk is ready, which the stream's task budget guarantees now and then, so a caller
        // that is always busy still sees a cancel within one budget of chunks.
        let item = tokio::select! {
            biased;
            item = stream.next() => item,
            _ = &mut cancelled => {
                stream.cancel();
                let e = Error::new(ErrorCode::Cancelled, format!(
                    "{who}: cancelled by the caller ({}); the remote run is being aborted",
                    summary(chunks, &acc)));
                return Err(fail("cancelled", e, chunks > 0, false, seen!()));
            }
            _ = &mut hard_timer => {
                stream.cancel();
                let e = Error::new(ErrorCode::Timeout, format!(
                    "{who}: the hard cap handoffMaxMs ({} ms) was reached after {} ms; {}",
                    ctx.limits.max.as_millis(), t0.elapsed().as_millis(), summary(chunks, &acc)));
                return Err(fail("timeout", e, chunks > 0, false, seen!()));
            }
            _ = &mut idle_timer => {
                if tokio::time::Instant::now() < idle_at {
                    // A chunk came since the timer was set: wait for the new deadline.
                    idle_timer.as_mut().reset(idle_at);
                    continue;
                }
                stream.cancel();
                let e = Error::new(ErrorCode::Timeout, format!(
                    "{who}: no output for {} ms (handoffTimeout, the inactivity timeout); {}",
                    idle.as_millis(), summary(chunks, &acc)));
                return Err(fail("timeout", e, chunks > 0, chunks == 0, seen!()));
            }
        };
        let item = match item {
            Some(i) => i,
            None => {
                let e = Error::new(
                    ErrorCode::Internal,
                    format!("{who}: the stream ended without a result"),
                );
                return Err(fail("error", e, chunks > 0, false, seen!()));
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
                return Err(fail(state, err, !before, retry, seen!()));
            }
            Ok(StreamItem::Chunk(bytes)) => {
                let chunk: StreamChunk = match serde_json::from_slice(&bytes) {
                    Ok(c) => c,
                    Err(err) => {
                        stream.cancel();
                        let e = Error::new(
                            ErrorCode::Remote,
                            format!("{who}: unreadable handoff_stream chunk {expect_seq}: {err}"),
                        );
                        return Err(fail("error", e, true, false, seen!()));
                    }
                };
                if chunk.seq != Some(expect_seq) {
                    stream.cancel();
                    let got = chunk.seq.map_or("none".to_string(), |s| s.to_string());
                    let e = Error::new(
                        ErrorCode::Remote,
                        format!(
                            "{who}: handoff_stream chunk out of order or lost: expected seq \
                         {expect_seq}, got {got}"
                        ),
                    );
                    return Err(fail("error", e, true, false, seen!()));
                }
                let seq = expect_seq;
                expect_seq += 1;
                chunks += 1;
                let now = tokio::time::Instant::now();
                idle_at = now + idle;
                first_chunk_ms.get_or_insert_with(|| t0.elapsed().as_millis() as u64);
                let Some(delta) = chunk.delta else {
                    // Tool activity: keeps the handoff alive, shows nothing.
                    continue;
                };
                acc_chars += delta.chars().count() as u64;
                if !truncated {
                    if acc.len() + delta.len() > MAX_ACCUMULATED_BYTES {
                        truncated = true;
                        acc.push_str("\n[… output truncated: more than 16 MiB …]");
                    } else {
                        acc.push_str(&delta);
                    }
                }
                if logged_at.is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY) {
                    logged_at = Some(now);
                    let seen = Seen::new(chunks, acc_chars, first_chunk_ms, &acc);
                    log.update("caller", &id, |r| seen.record(r));
                }
                let step = ToolEvent::Progress {
                    text: delta.into_owned(),
                    details: json!({"node": node, "agent": agent, "seq": seq, "handoffId": id}),
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
                    let e = Error::new(
                        ErrorCode::Cancelled,
                        format!("{who}: the tool call was cancelled or dropped while output was pending"),
                    );
                    return Err(fail("cancelled", e, true, false, seen!()));
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
                        seen!(),
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
                    return Err(fail("error", e, chunks > 0, false, seen!()));
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
                let seen = Seen::new(chunks, acc_chars, first_chunk_ms, &acc);
                log.update("caller", &id, |r| {
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
                    "node": node,
                    "agent": answered_agent,
                    "handoffId": id,
                    "runId": v.get("runId").cloned().unwrap_or(Value::Null),
                    "sessionKey": v.get("sessionKey").cloned().unwrap_or(Value::Null),
                    "chunks": chunks,
                    "streamedChars": acc_chars,
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
            caller_agent: sendable_agent_id(&caller),
        };
        let payload =
            serde_json::to_vec(&req).map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
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
