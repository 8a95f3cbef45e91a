//! Remote tools end to end: the `tool.call` service on the serving node and the caller side of
//! `cluster_exec` / `cluster_read` / `cluster_write` / `cluster_tool`.
//!
//! ```text
//! caller (home)                                   server (office)
//! Node::start_tool(name, args, caller)
//!   validate (catalog) → resolve `node` (id or tags:)
//!   call_stream(dst, "tool.call", {tool, args, callerAgent?}) ──▶ ToolService
//!                                                      ToolServer::call (policy, args, audit)
//!   ToolEvent::Progress ◀── chunk {"stream":"stdout","text":…} ◀── exec output (bounded)
//!                                                      Dispatch::Gateway → POST /tools/invoke
//!   (result parts, reassembled) ◀── chunk 0x00 + ≤ 256 KiB piece of the result ◀── result > 256 KiB
//!                                        (raw: 0x01, sizes, head JSON, text bytes; or JSON)
//!   ToolEvent::Result / error ◀── end {"ok":true,"text","details"} | {"ok":false,"code","message"}
//! ToolCall::cancel() / drop ──────── cancel ─────────▶ cancel watch → every process exec started is killed
//! ```
//! A result larger than one chunk is streamed: its bytes are cut into pieces that travel as
//! chunks marked with a leading 0x00 byte (progress chunks are JSON objects), under the caller's
//! credit, and the last piece is the `end` payload; the caller reassembles at most
//! `tool_result::MAX_RESULT_BYTES`. So the hops pipeline, and other frames on the same links (a
//! heartbeat, another call) wait for at most one piece instead of the whole result. This
//! version's callers ask for the raw form (`rawResult`), which carries the text's bytes without
//! JSON escaping ([`crate::proto::tool_result`]); JSON results of 64 KiB and more are encoded and parsed
//! on the blocking pool, not on the node's worker.
//!
//! Tool outcomes (including refusals) travel inside a successful `end`, so a tool's own error
//! code (`CLAWMATRIX_DENIED`, …) reaches the caller unchanged; transport failures
//! (unreachable, timeout, busy) are mesh errors.
//!
//! # Other tools: which gateway interface
//! OpenClaw offers two ways to run a tool by name: the WS RPC `tools.invoke` and HTTP
//! `POST /tools/invoke`. Both resolve tools the same way (surface `"http"`: web_*, sessions_*,
//! memory_*, plugin tools, never the coding tools, hence the native executors). A plugin service
//! cannot use `api.runtime.gateway.request` (refused for third-party plugins), and the WS RPC
//! needs the full `connect` handshake; the HTTP endpoint is always enabled and takes the
//! gateway's shared token as `Authorization: Bearer`, so the core calls
//! `POST http://127.0.0.1:<gateway.port>/tools/invoke` with body `{"tool", "args"}` itself
//! (hyper client, answer limited to 16 MiB, cancelled with the call). The gateway may take as
//! long as the call allows: the caller's deadline (at most [`TOOL_DEADLINE`]) less the answer's
//! way back, so a gateway whose event loop stalls for a while delays the call, and one that
//! never answers fails it with an error naming the tool and the timeout. HTTP 200
//! `{ok:true,result:{content,details}}` → the result; 404 → `NotFound`, 401/403 → `Denied`,
//! 400 → `InvalidArgument`, other → `Remote`, each with the gateway's own message. Without a
//! known port or token the call fails with `ConfigInvalid` naming what is missing.
//!
//! A `node` equal to this node's id is refused (`InvalidArgument`): the agent has its own
//! local tools, and the tool policy is about remote callers.
//!
//! # Layout
//! - [`caller`]: the calling side: a `cluster_*` call mapped to its remote tool, the target
//!   resolved, fail-over before the call reaches a node, the streamed steps relayed
//!   ([`start_remote`]).
//! - [`steps`]: the consumer's handle on a running call ([`ToolCall`], [`ToolEvent`]).
//! - [`service`]: the serving side, the `tool.call` service ([`ToolService`]).
//! - [`gateway`]: other tools through this node's gateway (`POST /tools/invoke`).

use std::time::Duration;

mod caller;
mod gateway;
mod service;
mod steps;

pub(crate) use caller::start_remote;
pub use caller::ToolCaller;
pub use gateway::GatewayTarget;
pub use service::ToolService;
pub use steps::{ToolCall, ToolEvent};

/// The method remote tool calls use.
pub const METHOD_TOOL_CALL: &str = "tool.call";
/// Inactivity deadline of non-exec tool calls: 120 s covers a large file over a slow link and
/// a gateway tool such as `web_fetch`.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(120);
/// Slack added to an exec's own timeout for the call deadline (process start, transfer).
pub const EXEC_DEADLINE_SLACK: Duration = Duration::from_secs(30);
/// Largest `POST /tools/invoke` answer read, in bytes (the reply is capped further by
/// `toolProxy.maxOutputBytes`).
pub const MAX_GATEWAY_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// Progress events buffered between the exec and the stream (dropped beyond, never blocking).
const PROGRESS_QUEUE: usize = 64;
/// Steps buffered between the caller task and the consumer of a [`ToolCall`].
const STEP_QUEUE: usize = 16;
