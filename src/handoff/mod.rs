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
//!
//! # Layout
//! Calling side (`cluster_handoff`, `cluster_send`):
//! - `caller`: the tool entry points (arguments read, task spawned, cancel wired),
//!   [`HandoffLimits`], and what both tools share: the target, why nothing matches it, the
//!   calling agent's id.
//! - `retry`: one `cluster_handoff` as a whole: choosing each attempt's candidate, its request
//!   (handoff id, remaining time), whether a failure fails over to another node, the final
//!   error with the earlier attempts' failures.
//! - `attempt`: one attempt on one node: opening the stream, the read loop under the
//!   inactivity timeout, the hard cap and the cancel, accumulating the output, mapping the end
//!   (or the failure) to the result or an error, the attempt's status record.
//! - `send`: `cluster_send`: delivery to the first reachable candidate, the acknowledgement.
//!
//! Serving side (`agent.handoff`, `agent.send`):
//! - `serve`: the services ([`AgentHost`], [`HandoffService`], [`SendService`]): checking
//!   requests and the agent, serving a message.
//! - `relay`: one served handoff: the host run, forwarding its output under credit (reader,
//!   outbox, sender), the abort path, the end payload and the status record.
//!
//! Both sides:
//! - `log`: the status section ([`HandoffLog`]).
//! - this file: constants, wire payloads, session keys, request field checks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch, Notify};

use crate::error::{Error, ErrorCode, Result};
use crate::host::{HostBridge, HostKind, HostReply};
use crate::mesh::Target;
use crate::rpc::MeshClient;
use crate::rpc::StreamItem;
use crate::rpc::{BoxFuture, CallCtx, Service};
use crate::tools::remote::{ToolCall, ToolCaller, ToolEvent};
use crate::tools::ToolOutput;

/// The mesh method of a handoff (streamed).
pub const METHOD_HANDOFF: &str = "agent.handoff";
/// The mesh method of a message (unary).
pub const METHOD_SEND: &str = "agent.send";
/// Host request: run an agent turn, streaming `{type:"delta",text}` / `{type:"tool",name}` /
/// `{type:"started",runId}` events, result `{status, text, runId, error?}`.
pub const HOST_AGENT_RUN: HostKind = HostKind::AgentRun;
/// Host request: abort the run of a session and wait until it stopped (`{aborted, drained}`).
pub const HOST_AGENT_ABORT: HostKind = HostKind::AgentAbort;
/// Host request: start a turn in a session without waiting for it (`{runId}`).
pub const HOST_AGENT_SEND: HostKind = HostKind::AgentSend;
/// Host request: the agent ids OpenClaw knows on this gateway (`{agents: [id, …]}`).
pub const HOST_AGENTS_LIST: HostKind = HostKind::AgentsList;

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
/// How long past the run's own bound the serving node waits for the host to end it.
const HOST_SLACK: Duration = Duration::from_secs(30);
/// How long a `cluster_send` may take end to end (delivery only, not the turn).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Steps buffered between the caller task and the tool's consumer.
const STEP_QUEUE: usize = 64;
/// Handoffs remembered for the status report (each side).
const RECENT_HANDOFFS: usize = 32;

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

/// Hex digits of a handoff id (a v4 UUID without dashes).
const HANDOFF_ID_HEX: usize = 32;

/// Whether `id` has the documented form of a handoff id (docs/PROTOCOL.md §8.4): 32 lowercase
/// hex digits, plus `-r1` … `-r{MAX_RETRIES}` on retries. It becomes part of an OpenClaw session
/// key on the serving node, so nothing else is accepted there.
pub fn valid_handoff_id(id: &str) -> bool {
    let (hex, retry) = match id.split_at_checked(HANDOFF_ID_HEX) {
        Some(parts) => parts,
        None => return false,
    };
    let hex_ok = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let retry_ok = retry.is_empty() || (1..=MAX_RETRIES).any(|n| retry == format!("-r{n}"));
    hex_ok && retry_ok
}

/// Refuse a caller-supplied agent id that is not an agent id (1-64 of `A-Z a-z 0-9 . _ -`,
/// starting with a letter or digit): it is shown to the serving agent, so it must not carry
/// text of its own (a newline and an instruction, brackets that end the origin line).
fn check_caller_agent(method: &str, agent: Option<&str>) -> Result<()> {
    match agent {
        Some(a) if !crate::config::is_valid_id(a) => Err(invalid(
            &format!("{method} request.callerAgent"),
            format!(
                "must be an agent id (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or \
                 digit), got {}",
                excerpt(a)
            ),
        )),
        _ => Ok(()),
    }
}

/// A refused value as it appears in an error: quoted, escaped, at most 40 characters.
fn excerpt(v: &str) -> String {
    const MAX: usize = 40;
    let head: String = v.chars().take(MAX).collect();
    let more = if v.chars().count() > MAX { "…" } else { "" };
    format!("{head:?}{more}")
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidArgument, format!("{field}: {reason}"))
}

mod attempt;
mod caller;
mod log;
mod relay;
mod retry;
mod send;
mod serve;

pub use caller::HandoffLimits;
pub(crate) use caller::{start_handoff, start_send, CallerCtx};
pub use log::{HandoffLog, HandoffRecord};
pub use serve::{AgentHost, HandoffService, SendService};

#[cfg(test)]
mod tests {
    use super::log::{tail_of, TAIL_CHARS};
    use super::*;

    #[test]
    fn handoff_ids_have_exactly_the_documented_form() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert!(valid_handoff_id(hex));
        assert!(valid_handoff_id(&format!("{hex}-r1")));
        assert!(valid_handoff_id(&format!("{hex}-r2")));
        for bad in [
            String::new(),
            "x".into(),
            hex[..31].to_string(),
            format!("{hex}0"),
            hex.to_uppercase(),
            format!("{hex}-r0"),
            format!("{hex}-r3"),
            format!("{hex}-r01"),
            format!("{hex}:main"),
            format!("{}:{}", &hex[..16], &hex[..15]),
            format!("{hex}-r1\n"),
            "é".repeat(16),
        ] {
            assert!(!valid_handoff_id(&bad), "{bad:?} accepted");
        }
    }

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

    #[test]
    fn a_handoff_older_than_the_recent_list_still_ends_and_leaves_the_running_count() {
        // More handoffs at once than the list shows (1000 streams in the bench): the first one
        // ending must still leave `running` (it used to stay counted forever once it had
        // dropped out of the bounded list).
        let log = HandoffLog::default();
        let n = RECENT_HANDOFFS * 3;
        for i in 0..n {
            log.begin(HandoffRecord {
                role: "server",
                id: format!("h{i}"),
                ..HandoffRecord::default()
            });
        }
        for i in 0..n {
            log.update("server", &format!("h{i}"), |r| {
                r.chunks = 7;
                r.state = if i == 0 { "cancelled" } else { "ok" }.into();
            });
        }
        // A late amendment of a finished record (the server records the abort time after the
        // state) reaches it while it is in the finished ring.
        log.update("server", &format!("h{}", n - 1), |r| {
            r.abort_to_stop_ms = Some(3)
        });
        let v = log.to_json();
        assert_eq!(v["running"], 0);
        assert_eq!(v["served"], n as u64);
        let recent = v["recent"].as_array().cloned().unwrap_or_default();
        assert_eq!(recent.len(), RECENT_HANDOFFS);
        assert!(recent
            .iter()
            .all(|r| r["state"] == "ok" && r["chunks"] == 7));
        assert_eq!(recent[RECENT_HANDOFFS - 1]["id"], format!("h{}", n - 1));
        assert_eq!(recent[RECENT_HANDOFFS - 1]["abortToStopMs"], 3);
    }

    #[test]
    fn running_handoffs_are_listed_with_the_finished_ones_by_start() {
        let log = HandoffLog::default();
        for id in ["a", "b", "c"] {
            log.begin(HandoffRecord {
                role: "caller",
                id: id.into(),
                ..HandoffRecord::default()
            });
            std::thread::sleep(Duration::from_millis(2));
        }
        log.update("caller", "b", |r| r.state = "error".into());
        let v = log.to_json();
        let ids: Vec<&str> = v["recent"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(v["recent"][1]["state"], "error");
        assert_eq!(v["recent"][0]["state"], "running");
        assert_eq!(v["running"], 2);
    }
}
