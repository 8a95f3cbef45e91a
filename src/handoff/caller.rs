//! The calling side's entry points: `cluster_handoff` and `cluster_send` start here (arguments
//! read, the task spawned, the cancel wired), plus what both share: the target, why nothing
//! matches it, and the calling agent's id. The handoff itself runs in [`super::retry`] and
//! [`super::attempt`], the message in [`super::send`].

use super::retry::{run_handoff, HandoffAsk};
use super::send::run_send;
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

/// The target as the user wrote it, for messages.
pub(super) fn describe(t: &Target) -> String {
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
    let ask = HandoffAsk {
        target,
        task: s("task").unwrap_or_default(),
        context: s("context"),
        caller_agent: sendable_agent_id(&caller),
    };
    let (tx, rx) = mpsc::channel(STEP_QUEUE);
    let (cancel, cancel_rx) = watch::channel(false);
    runtime.spawn(async move {
        let r = run_handoff(&ctx, ask, &tx, cancel_rx).await;
        let step = r.map(ToolEvent::Result);
        let _ = tx.send(step).await;
    });
    ToolCall::new(rx, cancel)
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
    let caller_agent = sendable_agent_id(&caller);
    let (tx, rx) = mpsc::channel(1);
    let (cancel, mut cancel_rx) = watch::channel(false);
    runtime.spawn(async move {
        let r = tokio::select! {
            biased;
            _ = cancel_rx.wait_for(|c| *c) => Err(Error::new(ErrorCode::Cancelled, "cluster_send: cancelled by the caller")),
            r = run_send(&ctx, target, message, caller_agent) => r,
        };
        let _ = tx.send(r.map(ToolEvent::Result)).await;
    });
    ToolCall::new(rx, cancel)
}

/// The calling agent's id as the request carries it: only an id the serving node accepts
/// (OpenClaw's agent ids always are); anything else is left out rather than failing the call.
fn sendable_agent_id(caller: &ToolCaller) -> Option<String> {
    caller
        .agent_id
        .clone()
        .filter(|a| crate::config::is_valid_id(a))
}

/// Why no node can take a handoff to `target` (worded for `cluster_handoff`).
pub(super) fn no_candidate(self_id: &str, target: &Target) -> Error {
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
