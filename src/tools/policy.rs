//! The serving node's tool policy (`toolProxy.enabled` / `allow` / `deny`), exactly as 0.1.8.
//!
//! Evaluated on the serving node and only there: a caller's own settings never matter. The
//! check runs before anything else about a call (argument parsing, path resolution), so a
//! refused caller learns nothing about this node beyond the refusal.
//!
//! Rules, in order:
//! 1. `enabled: false` (the default) refuses every tool.
//! 2. A name in `deny` is refused; `"*"` in `deny` refuses every tool. Deny wins over allow.
//!    Deny matches ignoring ASCII case, so `"Browser"` cannot slip past `deny: ["browser"]` to
//!    a gateway that might normalise names; allow matches exactly.
//! 3. `allow: []` or an `allow` containing `"*"` allows every tool; otherwise only the names
//!    listed.

use std::collections::BTreeSet;

use crate::config::ToolProxyConfig;
use crate::error::{Error, ErrorCode};

/// The wildcard that stands for every tool in `allow` / `deny`.
pub const WILDCARD: &str = "*";

/// The policy of one node, built once from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPolicy {
    node_id: String,
    enabled: bool,
    allow_all: bool,
    allow: BTreeSet<String>,
    deny_all: bool,
    deny: BTreeSet<String>,
}

impl ToolPolicy {
    /// The policy of node `node_id` (named in refusals so the caller knows which node said no).
    pub fn from_config(node_id: &str, config: &ToolProxyConfig) -> ToolPolicy {
        ToolPolicy {
            node_id: node_id.to_owned(),
            enabled: config.enabled,
            allow_all: config.allow.is_empty() || config.allow.iter().any(|a| a == WILDCARD),
            allow: config.allow.iter().cloned().collect(),
            deny_all: config.deny.iter().any(|d| d == WILDCARD),
            deny: config.deny.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }

    /// The `allow` list as configured (`["*"]` when everything is allowed).
    pub fn allow_list(&self) -> Vec<String> {
        if self.allow_all {
            vec![WILDCARD.to_owned()]
        } else {
            self.allow.iter().cloned().collect()
        }
    }

    /// The `deny` list (lower-cased; `["*"]` when everything is denied).
    pub fn deny_list(&self) -> Vec<String> {
        if self.deny_all {
            vec![WILDCARD.to_owned()]
        } else {
            self.deny.iter().cloned().collect()
        }
    }

    /// Whether remote tool calls are accepted at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `Ok` if `tool` may run here; otherwise a [`ErrorCode::Denied`] error naming the rule.
    pub fn check(&self, tool: &str) -> Result<(), Error> {
        let denied = |why: String| Err(Error::new(ErrorCode::Denied, why));
        let node = &self.node_id;
        if !self.enabled {
            return denied(format!(
                "tool proxy is disabled on {node} (toolProxy.enabled is false)"
            ));
        }
        let shown = shown_name(tool);
        if self.deny_all || self.deny.contains(&tool.to_ascii_lowercase()) {
            return denied(format!(
                "tool \"{shown}\" is denied by toolProxy.deny on {node}"
            ));
        }
        if !self.allow_all && !self.allow.contains(tool) {
            return denied(format!(
                "tool \"{shown}\" is not in toolProxy.allow on {node}"
            ));
        }
        Ok(())
    }
}

/// Longest tool name echoed back in a refusal, in characters; longer names are cut with `…`.
const SHOWN_NAME_MAX_CHARS: usize = 128;

/// A tool name as echoed in messages: control characters escaped, length bounded.
pub(crate) fn shown_name(tool: &str) -> String {
    let mut out: String = tool
        .chars()
        .take(SHOWN_NAME_MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if tool.chars().count() > SHOWN_NAME_MAX_CHARS {
        out.push('…');
    }
    out
}
