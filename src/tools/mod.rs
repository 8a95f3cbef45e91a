//! The agent tools: their public definitions ([`catalog`]) and argument validation, and the
//! serving side of remote tool calls.
//!
//! The shim registers whatever [`catalog::TOOLS`] lists and forwards calls unchanged. On the
//! serving node, [`serve::ToolServer`] checks [`policy`] first, runs `exec` / `read` / `write` /
//! `edit` natively ([`exec`], [`fs`], bounded by the [`paths`] root), hands other tools back for
//! the local gateway, and records every call in the [`audit`] log.
//!
//! The calling side of remote tools is [`remote`]: the `tool.call` method on the mesh, its
//! caller (target resolution, fail-over before the call reaches a node, the streamed steps) and
//! the service that hands a call to [`serve::ToolServer`].
//!
//! The executors use Unix process groups and file APIs; they are built on Unix only. On
//! Linux, [`reaper`] keeps every process a command starts findable for the kill.

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
