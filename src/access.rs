//! Per-caller access rules on the serving node (`access` in the config): which calling nodes,
//! and optionally which of their agents, may use which tools, models and agents here.
//!
//! Pure and sans-IO: [`Access::decide`] takes the verified calling node (the mesh's
//! authenticated source, never a payload field), the calling agent the request names (if any),
//! the kind of request and the name asked for, and answers `Ok(())` or a [`Refusal`] naming
//! the rule that refused.
//!
//! # Evaluation
//! Rules are tried in order; the first that matches decides (its `effect`). A rule matches a
//! request when:
//! - its `nodes` hold the calling node or `"*"`;
//! - it has no `callerAgents`, or they hold the agent the request names or `"*"` (a request
//!   that names no agent, like every `model.http`, never matches a rule with `callerAgents`);
//! - its list for the request's kind (`tools`, `models` or `agents`) holds the name or `"*"`.
//!   Tool names match ignoring ASCII case, like `toolProxy.deny`, so `"EXEC"` cannot slip past
//!   a rule about `"exec"` to a gateway that normalises names; node, agent and model ids match
//!   exactly.
//!
//! No rule matching: `access.default` decides (`"allow"` unless configured).
//!
//! Cost: with no rules and the default `"allow"` (every 0.1.8 config) a decision is one branch;
//! otherwise a scan of at most [`crate::config::ACCESS_RULES_MAX`] short lists. Nothing is
//! allocated unless the request is refused.

use std::fmt;
use std::sync::Arc;

use crate::config::{
    AccessConfig, AccessEffect, AccessRule, ACCESS_DEFAULT_LABEL, ACCESS_WILDCARD,
};
use crate::error::{Error, ErrorCode};

/// Longest requested name or calling agent echoed back in a refusal, in characters: they come
/// from the wire.
const SHOWN_MAX_CHARS: usize = 128;

/// What a request asks to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A tool (`tool.call`).
    Tool,
    /// A model (`model.http`), by the id this node serves it under.
    Model,
    /// An agent (`agent.handoff`, `agent.send`), by its resolved id.
    Agent,
}

impl Kind {
    /// `tool`, `model` or `agent`, as refusals say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Model => "model",
            Kind::Agent => "agent",
        }
    }
}

/// A refused request: which rule refused it (`None`: `access.default`) and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The index of the refusing rule in `access.rules`, `None` for the default.
    pub rule_index: Option<usize>,
    /// The rule's label: its `name`, or `rules[i]`; `default` for `access.default`.
    pub rule: String,
    /// `refused by access rule 'no-exec' (access.rules[1]): node home-01 may not use tool exec`.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::new(ErrorCode::Denied, r.message)
    }
}

/// The rules of one serving node, built once from its config; share it behind an [`Arc`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    config: AccessConfig,
}

impl Access {
    /// The rules of `config` (`Config::access`).
    pub fn new(config: &AccessConfig) -> Arc<Access> {
        Arc::new(Access {
            config: config.clone(),
        })
    }

    /// May `caller_node` (through `caller_agent`, if the request names one) use the `kind`
    /// called `name` here? `Err` names the rule that refused.
    pub fn decide(
        &self,
        caller_node: &str,
        caller_agent: Option<&str>,
        kind: Kind,
        name: &str,
    ) -> Result<(), Refusal> {
        if self.config.allows_everything() {
            return Ok(());
        }
        let found = self
            .config
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| matches(r, caller_node, caller_agent, kind, name));
        let who = Who {
            node: caller_node,
            agent: caller_agent,
        };
        match found {
            Some((_, rule)) if rule.effect == AccessEffect::Allow => Ok(()),
            Some((i, rule)) => {
                let label = rule.name.clone().unwrap_or_else(|| format!("rules[{i}]"));
                let message = format!(
                    "refused by access rule '{label}' (access.rules[{i}]): {who} may not use {} {}",
                    kind.as_str(),
                    shown(name)
                );
                Err(Refusal {
                    rule_index: Some(i),
                    rule: label,
                    message,
                })
            }
            None if self.config.default == AccessEffect::Allow => Ok(()),
            None => Err(Refusal {
                rule_index: None,
                rule: ACCESS_DEFAULT_LABEL.to_owned(),
                message: format!(
                    "refused by access.default \"deny\": no rule lets {who} use {} {}",
                    kind.as_str(),
                    shown(name)
                ),
            }),
        }
    }
}

fn matches(
    rule: &AccessRule,
    caller_node: &str,
    caller_agent: Option<&str>,
    kind: Kind,
    name: &str,
) -> bool {
    if !rule
        .nodes
        .iter()
        .any(|n| n == ACCESS_WILDCARD || n == caller_node)
    {
        return false;
    }
    if let Some(agents) = &rule.caller_agents {
        let Some(agent) = caller_agent else {
            return false;
        };
        if !agents.iter().any(|a| a == ACCESS_WILDCARD || a == agent) {
            return false;
        }
    }
    let (list, fold_case) = match kind {
        Kind::Tool => (&rule.tools, true),
        Kind::Model => (&rule.models, false),
        Kind::Agent => (&rule.agents, false),
    };
    list.iter().any(|x| {
        x == ACCESS_WILDCARD
            || if fold_case {
                x.eq_ignore_ascii_case(name)
            } else {
                x == name
            }
    })
}

/// The caller as a refusal names it: `node home-01`, or `node home-01 (agent main)`.
struct Who<'a> {
    node: &'a str,
    agent: Option<&'a str>,
}

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", shown(self.node))?;
        if let Some(a) = self.agent {
            write!(f, " (agent {})", shown(a))?;
        }
        Ok(())
    }
}

/// A name from the wire as echoed in a message: control characters escaped, length bounded.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(SHOWN_MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if s.chars().count() > SHOWN_MAX_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn access(section: serde_json::Value) -> Arc<Access> {
        let v = json!({"nodeId": "office-01", "secret": "0123456789abcdef-xyz", "access": section});
        match Config::from_json(&v) {
            Ok(v) => Access::new(&v.config.access),
            Err(e) => panic!("{e}"),
        }
    }

    fn refused(r: Result<(), Refusal>) -> Refusal {
        match r {
            Ok(()) => panic!("expected a refusal"),
            Err(r) => r,
        }
    }

    #[test]
    fn no_access_section_allows_every_node_everything() {
        let v = json!({"nodeId": "office-01", "secret": "0123456789abcdef-xyz"});
        let a = Access::new(&Config::from_json(&v).map(|v| v.config.access).unwrap());
        for kind in [Kind::Tool, Kind::Model, Kind::Agent] {
            assert_eq!(a.decide("home-01", None, kind, "x"), Ok(()));
            assert_eq!(a.decide("home-01", Some("main"), kind, "x"), Ok(()));
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_the_refusal_names_it() {
        let a = access(json!({"rules": [
            {"name": "home-read-only", "nodes": ["home-01"], "tools": ["read"], "effect": "allow"},
            {"name": "no-exec", "nodes": ["*"], "tools": ["exec", "read"], "effect": "deny"},
            {"nodes": ["*"], "tools": ["*"], "effect": "allow"}
        ]}));
        // home-01's read matches rule 0 (allow) before rule 1 (deny).
        assert_eq!(a.decide("home-01", None, Kind::Tool, "read"), Ok(()));
        // Another node's read falls through to rule 1.
        let r = refused(a.decide("lab-02", None, Kind::Tool, "read"));
        assert_eq!(r.rule, "no-exec");
        assert_eq!(r.rule_index, Some(1));
        let r = refused(a.decide("home-01", None, Kind::Tool, "exec"));
        assert_eq!(
            r.message,
            "refused by access rule 'no-exec' (access.rules[1]): node home-01 may not use tool exec"
        );
        assert_eq!(Error::from(r).code, ErrorCode::Denied);
        assert_eq!(a.decide("home-01", None, Kind::Tool, "write"), Ok(()));
    }

    #[test]
    fn tool_names_match_ignoring_case_and_other_names_exactly() {
        let a = access(json!({"rules": [
            {"nodes": ["*"], "tools": ["exec"], "models": ["qwen"], "agents": ["coder"], "effect": "deny"}
        ]}));
        let r = refused(a.decide("home-01", None, Kind::Tool, "EXEC"));
        assert_eq!(r.rule, "rules[0]");
        assert!(
            r.message
                .starts_with("refused by access rule 'rules[0]' (access.rules[0]): "),
            "{}",
            r.message
        );
        assert!(a.decide("home-01", None, Kind::Model, "qwen").is_err());
        assert_eq!(a.decide("home-01", None, Kind::Model, "QWEN"), Ok(()));
        assert!(a.decide("home-01", None, Kind::Agent, "coder").is_err());
        assert_eq!(a.decide("home-01", None, Kind::Agent, "Coder"), Ok(()));
    }

    #[test]
    fn default_deny_refuses_what_no_rule_allows() {
        let a = access(json!({"default": "deny", "rules": [
            {"name": "home-models", "nodes": ["home-01"], "models": ["*"], "effect": "allow"}
        ]}));
        assert_eq!(a.decide("home-01", None, Kind::Model, "qwen"), Ok(()));
        let r = refused(a.decide("lab-02", None, Kind::Model, "qwen"));
        assert_eq!(r.rule_index, None);
        assert_eq!(
            r.message,
            "refused by access.default \"deny\": no rule lets node lab-02 use model qwen"
        );
        // The rule lists models only: home-01's tools and agents fall to the default.
        assert!(a.decide("home-01", None, Kind::Tool, "read").is_err());
        assert!(a.decide("home-01", None, Kind::Agent, "coder").is_err());
    }

    #[test]
    fn caller_agents_match_only_requests_that_name_one_of_them() {
        let a = access(json!({"default": "deny", "rules": [
            {"name": "main-reads", "nodes": ["home-01"], "callerAgents": ["main"],
             "tools": ["read"], "models": ["*"], "effect": "allow"},
            {"name": "named-agents", "nodes": ["lab-02"], "callerAgents": ["*"],
             "agents": ["*"], "effect": "allow"}
        ]}));
        assert_eq!(
            a.decide("home-01", Some("main"), Kind::Tool, "read"),
            Ok(())
        );
        let r = refused(a.decide("home-01", Some("other"), Kind::Tool, "read"));
        assert_eq!(
            r.message,
            "refused by access.default \"deny\": no rule lets node home-01 (agent other) use \
             tool read"
        );
        assert!(a.decide("home-01", None, Kind::Tool, "read").is_err());
        // model.http names no calling agent: a rule with callerAgents never matches it.
        assert!(a.decide("home-01", None, Kind::Model, "qwen").is_err());
        // "*" in callerAgents: any named agent, but a named one.
        assert_eq!(a.decide("lab-02", Some("x"), Kind::Agent, "coder"), Ok(()));
        assert!(a.decide("lab-02", None, Kind::Agent, "coder").is_err());
    }

    #[test]
    fn names_from_the_wire_are_escaped_and_bounded_in_refusals() {
        let a = access(json!({"default": "deny"}));
        let long = "x".repeat(500);
        let r = refused(a.decide("home-01", None, Kind::Tool, &format!("a\nb{long}")));
        assert!(r.message.contains("tool a\\nbx"), "{}", r.message);
        assert!(
            r.message.ends_with('…') && r.message.len() < 300,
            "{}",
            r.message
        );
    }
}
