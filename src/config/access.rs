//! The `access` section: per-caller rules the serving node applies to the tools, models and
//! agents it offers ([`AccessConfig`]), read and validated here; evaluated by
//! [`crate::access`].
//!
//! ```json
//! "access": {
//!   "default": "allow",
//!   "rules": [
//!     {"name": "home-read-only", "nodes": ["home-01"], "callerAgents": ["main"],
//!      "tools": ["read"], "models": ["*"], "effect": "allow"},
//!     {"name": "no-exec", "nodes": ["*"], "tools": ["exec"], "effect": "deny"}
//!   ]
//! }
//! ```
//! Absent, the section means "every mesh member may use everything" (0.1.8).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::parse::{is_valid_id, quote_key, tool_name_problem, REASON_REQUIRED};
use super::url::quote;
use super::{ConfigIssue, ID_MAX_CHARS, MODEL_ID_MAX_CHARS};
use crate::error::json_type_name as type_name;

/// The wildcard that matches every node, calling agent, tool, model or agent in a rule.
pub const ACCESS_WILDCARD: &str = "*";
/// Most rules in `access.rules`: every call scans them in order, and a longer list is a policy
/// nobody can read any more.
pub const ACCESS_RULES_MAX: usize = 256;
/// Most entries in one list of a rule (`nodes`, `callerAgents`, `tools`, `models`, `agents`).
pub const ACCESS_LIST_MAX: usize = 256;

/// The label of `access.default` in refusals and audit lines, hence not a rule name.
pub const ACCESS_DEFAULT_LABEL: &str = "default";

const ACCESS_KEYS: &[&str] = &["default", "rules"];
const RULE_KEYS: &[&str] = &[
    "name",
    "nodes",
    "callerAgents",
    "tools",
    "models",
    "agents",
    "effect",
];

/// What a rule (or the default) does with a request it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessEffect {
    /// `"allow"` (the default of `access.default`).
    #[default]
    Allow,
    /// `"deny"`.
    Deny,
}

impl AccessEffect {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessEffect::Allow => "allow",
            AccessEffect::Deny => "deny",
        }
    }

    fn parse(s: &str) -> Option<AccessEffect> {
        match s {
            "allow" => Some(AccessEffect::Allow),
            "deny" => Some(AccessEffect::Deny),
            _ => None,
        }
    }
}

/// Per-caller rules (`access`). The default value allows everything, as 0.1.8 did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessConfig {
    /// What happens to a request no rule matches (`access.default`).
    pub default: AccessEffect,
    /// The rules, in order; the first that matches a request decides it (`access.rules`).
    pub rules: Vec<AccessRule>,
}

/// One rule (`access.rules[i]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    /// The name given in the config; refusals say `rules[i]` for a rule without one.
    pub name: Option<String>,
    /// Calling node ids, or `"*"`. Never empty.
    pub nodes: Vec<String>,
    /// `None`: any caller, including one that names no agent. `Some`: the request must name
    /// one of these calling agents (`"*"`: any named agent). Never `Some` of an empty list.
    pub caller_agents: Option<Vec<String>>,
    /// Tool names (or `"*"`) the rule covers; empty: no tool.
    pub tools: Vec<String>,
    /// Model ids (as this node serves them, or `"*"`) the rule covers; empty: no model.
    pub models: Vec<String>,
    /// Agent ids (or `"*"`) the rule covers; empty: no agent.
    pub agents: Vec<String>,
    /// Allow or deny.
    pub effect: AccessEffect,
}

impl AccessConfig {
    /// Whether the section is the 0.1.8 behaviour (no rules, default allow).
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty() && self.default == AccessEffect::Allow
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "default": self.default.as_str(),
            "rules": self.rules.iter().map(AccessRule::to_json).collect::<Vec<_>>(),
        })
    }
}

impl AccessRule {
    fn to_json(&self) -> Value {
        let mut obj = Map::new();
        if let Some(n) = &self.name {
            obj.insert("name".to_owned(), Value::from(n.as_str()));
        }
        obj.insert("nodes".to_owned(), json!(self.nodes));
        if let Some(a) = &self.caller_agents {
            obj.insert("callerAgents".to_owned(), json!(a));
        }
        obj.insert("tools".to_owned(), json!(self.tools));
        obj.insert("models".to_owned(), json!(self.models));
        obj.insert("agents".to_owned(), json!(self.agents));
        obj.insert("effect".to_owned(), Value::from(self.effect.as_str()));
        Value::Object(obj)
    }
}

/// Reads `access` (the value of the key), recording every problem in `errors` with its path.
/// Invalid rules are left out of the result (the config is refused anyway).
pub(super) fn parse(v: &Value, errors: &mut Vec<ConfigIssue>) -> AccessConfig {
    let mut r = Reader { errors };
    r.access(v)
}

struct Reader<'a> {
    errors: &'a mut Vec<ConfigIssue>,
}

/// Why an id (node id, agent id) in a rule list is invalid, if it is.
fn id_problem(s: &str) -> Option<String> {
    if s == ACCESS_WILDCARD || is_valid_id(s) {
        None
    } else {
        Some(format!(
            "invalid id {}: use 1-{ID_MAX_CHARS} characters of A-Z a-z 0-9 . _ -, starting with \
             a letter or digit, or \"*\"",
            quote(s)
        ))
    }
}

/// Why a model id in a rule list is invalid, if it is (the `models[].id` rule, or `"*"`).
fn model_problem(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.chars().count() <= MODEL_ID_MAX_CHARS
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        None
    } else {
        Some(format!(
            "invalid model id {}: use 1-{MODEL_ID_MAX_CHARS} characters without whitespace, or \
             \"*\"",
            quote(s)
        ))
    }
}

impl Reader<'_> {
    fn error(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigIssue::new(path, reason));
    }

    fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Value::Object(map) = v else {
            self.error(path, format!("expected an object, got {}", type_name(v)));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.error(format!("{path}.{}", quote_key(key)), "unknown field");
            }
        }
        Some(map)
    }

    fn effect(&mut self, v: &Value, path: &str) -> Option<AccessEffect> {
        let parsed = v.as_str().and_then(AccessEffect::parse);
        if parsed.is_none() {
            let got = match v {
                Value::String(s) => quote(s),
                other => type_name(other).to_owned(),
            };
            self.error(path, format!("expected \"allow\" or \"deny\", got {got}"));
        }
        parsed
    }

    fn access(&mut self, v: &Value) -> AccessConfig {
        let Some(obj) = self.object(v, "access", ACCESS_KEYS) else {
            return AccessConfig::default();
        };
        let default = match obj.get("default") {
            None => AccessEffect::Allow,
            Some(d) => self.effect(d, "access.default").unwrap_or_default(),
        };
        let items: &[Value] = match obj.get("rules") {
            None => &[],
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.error(
                    "access.rules",
                    format!("expected an array, got {}", type_name(other)),
                );
                &[]
            }
        };
        if items.len() > ACCESS_RULES_MAX {
            self.error(
                "access.rules",
                format!("too many rules ({}, limit {ACCESS_RULES_MAX})", items.len()),
            );
            return AccessConfig {
                default,
                rules: Vec::new(),
            };
        }
        let mut rules = Vec::with_capacity(items.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("access.rules[{i}]");
            let Some(rule) = self.rule(item, &path) else {
                continue;
            };
            if let Some(name) = &rule.name {
                if let Some(first) = names.get(name) {
                    self.error(
                        format!("{path}.name"),
                        format!(
                            "duplicate rule name {} (also access.rules[{first}])",
                            quote(name)
                        ),
                    );
                    continue;
                }
                names.insert(name.clone(), i);
            }
            rules.push(rule);
        }
        AccessConfig { default, rules }
    }

    fn rule(&mut self, v: &Value, path: &str) -> Option<AccessRule> {
        let obj = self.object(v, path, RULE_KEYS)?;
        let before = self.errors.len();
        let name = match obj.get("name") {
            None => None,
            Some(Value::String(s)) if s == ACCESS_DEFAULT_LABEL => {
                self.error(
                    format!("{path}.name"),
                    "\"default\" is reserved: refusals and the audit log use it for access.default",
                );
                None
            }
            Some(Value::String(s)) if is_valid_id(s) => Some(s.clone()),
            Some(Value::String(s)) => {
                self.error(
                    format!("{path}.name"),
                    format!(
                        "invalid rule name {}: use 1-{ID_MAX_CHARS} characters of A-Z a-z 0-9 . \
                         _ -, starting with a letter or digit",
                        quote(s)
                    ),
                );
                None
            }
            Some(other) => {
                self.error(
                    format!("{path}.name"),
                    format!("expected a string, got {}", type_name(other)),
                );
                None
            }
        };
        let nodes = match obj.get("nodes") {
            None => {
                self.error(format!("{path}.nodes"), REASON_REQUIRED);
                Vec::new()
            }
            Some(v) => self.list(v, &format!("{path}.nodes"), id_problem, true),
        };
        let caller_agents = obj
            .get("callerAgents")
            .map(|v| self.list(v, &format!("{path}.callerAgents"), id_problem, true));
        let tools = self.optional_list(obj, path, "tools", tool_name_problem);
        let models = self.optional_list(obj, path, "models", model_problem);
        let agents = self.optional_list(obj, path, "agents", id_problem);
        let effect = match obj.get("effect") {
            None => {
                self.error(format!("{path}.effect"), REASON_REQUIRED);
                None
            }
            Some(v) => self.effect(v, &format!("{path}.effect")),
        };
        if self.errors.len() == before && tools.is_empty() && models.is_empty() && agents.is_empty()
        {
            self.error(
                path,
                "names no tools, models or agents, so it matches nothing: list what it covers \
                 (\"*\" for everything of a kind)",
            );
        }
        if self.errors.len() > before {
            return None;
        }
        Some(AccessRule {
            name,
            nodes,
            caller_agents,
            tools,
            models,
            agents,
            effect: effect?,
        })
    }

    fn optional_list(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
        check: fn(&str) -> Option<String>,
    ) -> Vec<String> {
        match obj.get(key) {
            None => Vec::new(),
            Some(v) => self.list(v, &format!("{path}.{key}"), check, false),
        }
    }

    /// An array of at most [`ACCESS_LIST_MAX`] strings, each passing `check`; duplicates are
    /// errors (they usually hide a typo elsewhere).
    fn list(
        &mut self,
        v: &Value,
        path: &str,
        check: fn(&str) -> Option<String>,
        non_empty: bool,
    ) -> Vec<String> {
        let Value::Array(items) = v else {
            self.error(path, format!("expected an array, got {}", type_name(v)));
            return Vec::new();
        };
        if non_empty && items.is_empty() {
            self.error(path, "must not be empty");
            return Vec::new();
        }
        if items.len() > ACCESS_LIST_MAX {
            self.error(
                path,
                format!(
                    "too many entries ({}, limit {ACCESS_LIST_MAX})",
                    items.len()
                ),
            );
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match item {
                Value::String(s) => match check(s) {
                    Some(why) => self.error(p, why),
                    None if out.contains(s) => self.error(p, format!("duplicate {}", quote(s))),
                    None => out.push(s.clone()),
                },
                other => self.error(p, format!("expected a string, got {}", type_name(other))),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(v: Value) -> Vec<String> {
        let mut errors = Vec::new();
        parse(&v, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    fn parsed(v: Value) -> AccessConfig {
        let mut errors = Vec::new();
        let c = parse(&v, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        c
    }

    #[test]
    fn the_documented_example_parses_with_its_defaults() {
        let c = parsed(json!({
            "default": "deny",
            "rules": [
                {"name": "home-read-only", "nodes": ["home-01"], "callerAgents": ["main"],
                 "tools": ["read"], "models": ["*"], "agents": [], "effect": "allow"},
                {"nodes": ["*"], "tools": ["exec"], "effect": "deny"}
            ]
        }));
        assert_eq!(c.default, AccessEffect::Deny);
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].name.as_deref(), Some("home-read-only"));
        assert_eq!(c.rules[0].caller_agents, Some(vec!["main".to_owned()]));
        assert_eq!(c.rules[1].name, None);
        assert_eq!(c.rules[1].caller_agents, None);
        assert!(c.rules[1].models.is_empty() && c.rules[1].agents.is_empty());
        assert_eq!(c.rules[1].effect, AccessEffect::Deny);
        assert!(parsed(json!({})).allows_everything());
    }

    #[test]
    fn every_bad_field_is_named_with_its_path() {
        let e = errors_of(json!({
            "default": "maybe",
            "rules": [
                {"nodes": ["home-01"], "tools": ["read"], "effect": "allow"},
                {"nodes": [], "tools": ["read"], "effect": "allow"},
                {"nodes": ["home 01"], "tools": ["ex*ec"], "models": [" "], "agents": ["-x"],
                 "callerAgents": [], "effect": "permit", "extra": 1},
                {"tools": ["read"]},
                {"name": "r", "nodes": ["*"], "effect": "deny"},
                "nope"
            ]
        }));
        let want = [
            "access.default: expected \"allow\" or \"deny\", got \"maybe\"",
            "access.rules[1].nodes: must not be empty",
            "access.rules[2].extra: unknown field",
            "access.rules[2].nodes[0]: invalid id \"home 01\"",
            "access.rules[2].callerAgents: must not be empty",
            "access.rules[2].tools[0]: invalid tool name \"ex*ec\"",
            "access.rules[2].models[0]: invalid model id \" \"",
            "access.rules[2].agents[0]: invalid id \"-x\"",
            "access.rules[2].effect: expected \"allow\" or \"deny\", got \"permit\"",
            "access.rules[3].nodes: is required",
            "access.rules[3].effect: is required",
            "access.rules[4]: names no tools, models or agents",
            "access.rules[5]: expected an object, got string",
        ];
        assert_eq!(e.len(), want.len(), "{e:#?}");
        for (got, want) in e.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn duplicate_names_and_entries_are_refused() {
        let e = errors_of(json!({"rules": [
            {"name": "a", "nodes": ["*"], "tools": ["read"], "effect": "allow"},
            {"name": "a", "nodes": ["n1", "n1"], "tools": ["read"], "effect": "allow"},
            {"name": "a", "nodes": ["n1"], "tools": ["read"], "effect": "allow"},
            {"name": "default", "nodes": ["n1"], "tools": ["read"], "effect": "allow"}
        ]}));
        assert_eq!(
            e,
            [
                "access.rules[1].nodes[1]: duplicate \"n1\"",
                "access.rules[2].name: duplicate rule name \"a\" (also access.rules[0])",
                "access.rules[3].name: \"default\" is reserved: refusals and the audit log use \
                 it for access.default",
            ]
        );
    }

    #[test]
    fn rule_count_and_list_lengths_are_bounded() {
        let rule = json!({"nodes": ["*"], "tools": ["read"], "effect": "allow"});
        let e = errors_of(json!({"rules": vec![rule; ACCESS_RULES_MAX + 1]}));
        assert_eq!(e, ["access.rules: too many rules (257, limit 256)"]);
        let nodes: Vec<String> = (0..=ACCESS_LIST_MAX).map(|i| format!("n{i}")).collect();
        let e =
            errors_of(json!({"rules": [{"nodes": nodes, "tools": ["read"], "effect": "allow"}]}));
        assert_eq!(
            e,
            ["access.rules[0].nodes: too many entries (257, limit 256)"]
        );
        let e = errors_of(json!({"default": 1, "rules": {}}));
        assert_eq!(
            e,
            [
                "access.default: expected \"allow\" or \"deny\", got number",
                "access.rules: expected an array, got object",
            ]
        );
    }
}
