//! A whole `cluster_handoff` on the calling node: at most `1 + MAX_RETRIES` attempts, each on a
//! node not tried yet, all within the hard cap. It chooses the candidate, builds each attempt's
//! request (its own handoff id, the remaining time), decides whether a failed attempt is retried
//! (only before output, only when retryable, never after a cancel) and words the final error
//! with the earlier attempts' failures.

use super::attempt::{attempt_once, AttemptError};
use super::caller::{describe, no_candidate, CallerCtx};
use super::*;
use crate::mesh::Candidate;

/// What the tool was asked: the target and the task.
pub(super) struct HandoffAsk {
    pub(super) target: Target,
    pub(super) task: String,
    pub(super) context: Option<String>,
    /// The calling agent's id, if it is one the serving node accepts.
    pub(super) caller_agent: Option<String>,
}

/// Run the handoff to its result: the first attempt that answers, or the last failure.
pub(super) async fn run_handoff(
    ctx: &CallerCtx,
    ask: HandoffAsk,
    tx: &mpsc::Sender<Result<ToolEvent>>,
    mut cancel: watch::Receiver<bool>,
) -> Result<ToolOutput> {
    let mut retries = Retries::new(ctx, ask);
    for attempt in 0..=MAX_RETRIES {
        let cand = retries.next_candidate().await?;
        let agent_label = cand
            .agent
            .clone()
            .unwrap_or_else(|| "(default agent)".into());
        let req = retries.request(attempt, &cand);
        ctx.log.begin(HandoffRecord {
            role: "caller",
            id: req.handoff_id.clone(),
            peer: cand.node.clone(),
            agent: agent_label.clone(),
            ..HandoffRecord::default()
        });
        let hard = retries.hard;
        let r = attempt_once(ctx, &cand.node, &agent_label, &req, hard, tx, &mut cancel).await;
        match r {
            Ok(out) => return Ok(retries.succeeded(out)),
            Err(a) => {
                if a.retryable && !a.output_seen && attempt < MAX_RETRIES && !*cancel.borrow() {
                    retries.failed_over(a.error, cand.node);
                    continue;
                }
                return Err(retries.given_up(a));
            }
        }
    }
    Err(retries.all_failed())
}

/// The attempts so far: the nodes tried and why they failed.
struct Retries<'a> {
    ctx: &'a CallerCtx,
    ask: HandoffAsk,
    /// The target as the user wrote it, for messages.
    want: String,
    /// The first attempt's handoff id; retries append `-r<n>`.
    handoff_id: String,
    /// The hard cap (`handoffMaxMs`) of the whole handoff.
    hard: tokio::time::Instant,
    /// Nodes already tried.
    exclude: Vec<String>,
    /// Messages of the failed attempts before `last`, oldest first.
    failures: Vec<String>,
    /// The latest failed attempt's error.
    last: Option<Error>,
}

impl<'a> Retries<'a> {
    fn new(ctx: &'a CallerCtx, ask: HandoffAsk) -> Self {
        let started = Instant::now();
        Retries {
            ctx,
            hard: tokio::time::Instant::from_std(started + ctx.limits.max),
            handoff_id: uuid::Uuid::new_v4().simple().to_string(),
            want: describe(&ask.target),
            ask,
            exclude: Vec::new(),
            failures: Vec::new(),
            last: None,
        }
    }

    /// The best node matching the target that was not tried yet; none left ends the handoff
    /// with the last failure (or, before any attempt, why nothing matches).
    async fn next_candidate(&mut self) -> Result<Candidate> {
        let target = self.ask.target.clone();
        let candidates = self.ctx.mesh.resolve(target, self.exclude.clone()).await;
        match candidates
            .into_iter()
            .find(|c| !self.exclude.contains(&c.node))
        {
            Some(cand) => Ok(cand),
            None => Err(match self.last.take() {
                None => no_candidate(&self.ctx.self_id, &self.ask.target),
                Some(e) => Error::new(
                    e.code,
                    format!(
                        "{}; not retried: no other reachable node matches {}",
                        e.message, self.want
                    ),
                ),
            }),
        }
    }

    /// The request of attempt `attempt` (0 = the first) to `cand`.
    fn request(&self, attempt: usize, cand: &Candidate) -> HandoffRequest {
        let remaining = self
            .hard
            .saturating_duration_since(tokio::time::Instant::now());
        HandoffRequest {
            agent: cand.agent.clone(),
            task: self.ask.task.clone(),
            context: self.ask.context.clone(),
            // One id per attempt: a retry must not join the failed attempt's session.
            handoff_id: if attempt == 0 {
                self.handoff_id.clone()
            } else {
                format!("{}-r{attempt}", self.handoff_id)
            },
            caller_agent: self.ask.caller_agent.clone(),
            max_ms: remaining.as_millis().max(1) as u64,
        }
    }

    /// An attempt failed in a way worth another node: remember why, and never try `node` again.
    fn failed_over(&mut self, error: Error, node: String) {
        self.failures.extend(self.last.take().map(|e| e.message));
        self.last = Some(error);
        self.exclude.push(node);
    }

    /// An attempt answered: its output, naming the failures before it (`retriedAfter`).
    fn succeeded(mut self, mut out: ToolOutput) -> ToolOutput {
        self.failures.extend(self.last.take().map(|e| e.message));
        if !self.failures.is_empty() {
            out.details["retriedAfter"] = json!(self.failures);
        }
        out
    }

    /// An attempt failed and is not retried: its error, saying why not and what came before.
    fn given_up(mut self, a: AttemptError) -> Error {
        let mut message = a.error.message;
        if a.output_seen && a.error.code != ErrorCode::Cancelled {
            message.push_str(
                "; not retried: output had already arrived and the remote agent may \
                 have acted (side effects)",
            );
        }
        self.failures.extend(self.last.take().map(|e| e.message));
        if !self.failures.is_empty() {
            message.push_str(&format!(
                " (after {} earlier attempt(s): {})",
                self.failures.len(),
                self.failures.join("; ")
            ));
        }
        Error::new(a.error.code, message)
    }

    fn all_failed(&self) -> Error {
        Error::new(
            ErrorCode::Unreachable,
            format!(
                "cluster_handoff to {}: every attempt failed: {}",
                self.want,
                self.failures.join("; ")
            ),
        )
    }
}
