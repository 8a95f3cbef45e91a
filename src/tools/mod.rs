//! The agent tools: their public definitions ([`catalog`]) and argument validation, the
//! serving side of remote tool calls, and their calling side.
//!
//! The shim registers whatever [`catalog::TOOLS`] lists and forwards calls unchanged. On the
//! serving node, [`serve::ToolServer`] checks [`policy`] first, runs `exec` / `read` / `write` /
//! `edit` natively ([`exec`], [`fs`], bounded by the [`paths`] root), hands other tools back for
//! the local gateway, and records every call in the [`audit`] log.
//!
//! The executors use Unix process groups and file APIs; they are built on Unix only. On
//! Linux, [`reaper`] keeps every process a command starts findable for the kill.
//!
//! # Layout
//! - [`catalog`]: the `cluster_*` tool definitions and the argument validator.
//! - [`policy`]: the serving node's allow / deny rules.
//! - [`serve`]: one served call: policy, arguments, executor, reply cap, audit.
//! - [`exec`]: running a command: its process, output capture and progress, timeout and cancel.
//! - [`reaper`]: the process tree of a command, and killing all of it (Linux).
//! - [`fs`]: `read`, `write` (atomic) and `edit` (exact replacements).
//! - [`paths`]: the filesystem root and the path walk every file tool and workdir goes through.
//! - [`audit`]: the audit log and its summary.
//! - [`result`]: a tool's final result sent and read over a call (large ones in pieces).
//! - [`remote`]: `tool.call` on the mesh: its caller (target resolution, fail-over before the
//!   call reaches a node, the streamed steps), the consumer's [`remote::ToolCall`], the service
//!   that hands a call to [`serve::ToolServer`], and gateway tools through `/tools/invoke`.

pub mod audit;
pub mod catalog;
#[cfg(unix)]
pub mod exec;
#[cfg(unix)]
pub mod fs;
#[cfg(unix)]
pub mod paths;
pub mod policy;
#[cfg(unix)]
pub(crate) mod reaper;
#[cfg(unix)]
pub mod remote;
#[cfg(unix)]
pub mod result;
#[cfg(unix)]
pub mod serve;

/// The final output of a tool call: the text the model sees plus structured details.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub text: String,
    pub details: serde_json::Value,
}
