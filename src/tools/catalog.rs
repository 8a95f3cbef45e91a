//! The seven `cluster_*` tools: names, labels, descriptions and parameters (the public API kept
//! from 0.1.8), plus the argument validator every call goes through before anything runs.
//!
//! The shim registers tools from [`TOOLS`] (the binding's `toolDefinitions()`), so this table is
//! the single source; a test keeps it in step with `contracts.tools` in `openclaw.plugin.json`.

use serde_json::{json, Map, Value};

use crate::error::json_type_name as type_name;
use crate::error::{Error, ErrorCode};

/// The JSON type a parameter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    String,
    /// A non-negative integer (JSON number without fraction).
    Integer,
    Object,
}

/// One tool parameter.
#[derive(Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub required: bool,
    pub description: &'static str,
}

/// One agent tool.
#[derive(Debug)]
pub struct ToolSpec {
    pub name: &'static str,
    pub label: &'static str,
    pub description: &'static str,
    pub params: &'static [ParamSpec],
    /// Changes state on the remote node (exec, write, handoff, ...).
    pub side_effecting: bool,
}

const fn p(
    name: &'static str,
    kind: ParamKind,
    required: bool,
    description: &'static str,
) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        required,
        description,
    }
}

const TARGET_DOC: &str = "An agent id (\"coder\"), a tag query (\"tags:coding\" or \"tags:gpu,linux\": all tags must match), or a node id when no agent or tag matches.";
const NODE_DOC: &str =
    "A node id (\"office-01\") or a tag query (\"tags:gpu\"); see cluster_peers for the nodes.";

/// Every tool this plugin registers, in registration order.
pub static TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "cluster_peers",
        label: "Cluster peers",
        description: "Show the ClawMatrix mesh: this node and every known node with its connection state (direct, relayed via another node, unreachable), latency, agents, models and tags.",
        params: &[],
        side_effecting: false,
    },
    ToolSpec {
        name: "cluster_handoff",
        label: "Cluster handoff",
        description: "Delegate a task to an agent on another mesh node, stream its progress, and return its final answer.",
        params: &[
            p("target", ParamKind::String, true, TARGET_DOC),
            p("task", ParamKind::String, true, "The task for the remote agent, self-contained."),
            p("context", ParamKind::String, false, "Optional background the remote agent needs."),
        ],
        side_effecting: true,
    },
    ToolSpec {
        name: "cluster_send",
        label: "Cluster send",
        description: "Send a one-way message into a remote agent's session; returns once it is delivered.",
        params: &[
            p("target", ParamKind::String, true, TARGET_DOC),
            p("message", ParamKind::String, true, "The message text."),
        ],
        side_effecting: true,
    },
    ToolSpec {
        name: "cluster_exec",
        label: "Cluster exec",
        description: "Run a shell command on a remote mesh node (under that node's tool policy) and return its exit code and output.",
        params: &[
            p("node", ParamKind::String, true, NODE_DOC),
            p("command", ParamKind::String, true, "The shell command line."),
            p("workdir", ParamKind::String, false, "Working directory on the remote node."),
            p("timeout", ParamKind::Integer, false, "Timeout in seconds (default 1800)."),
        ],
        side_effecting: true,
    },
    ToolSpec {
        name: "cluster_read",
        label: "Cluster read",
        description: "Read a file on a remote mesh node (under that node's tool policy).",
        params: &[
            p("node", ParamKind::String, true, NODE_DOC),
            p("path", ParamKind::String, true, "Path of the file on the remote node."),
        ],
        side_effecting: false,
    },
    ToolSpec {
        name: "cluster_write",
        label: "Cluster write",
        description: "Write a file on a remote mesh node (atomic replace, under that node's tool policy).",
        params: &[
            p("node", ParamKind::String, true, NODE_DOC),
            p("path", ParamKind::String, true, "Path of the file on the remote node."),
            p("content", ParamKind::String, true, "The full new file content."),
        ],
        side_effecting: true,
    },
    ToolSpec {
        name: "cluster_tool",
        label: "Cluster tool",
        description: "Call any tool on a remote mesh node by name (under that node's tool policy) and return its result.",
        params: &[
            p("node", ParamKind::String, true, NODE_DOC),
            p("tool", ParamKind::String, true, "The tool name on the remote node (exec, read, write, edit, web_search, ...)."),
            p("args", ParamKind::Object, true, "The tool's arguments."),
        ],
        side_effecting: true,
    },
];

/// Find a tool by name.
pub fn find(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The JSON Schema of a tool's parameters.
pub fn parameters_schema(spec: &ToolSpec) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for param in spec.params {
        let ty = match param.kind {
            ParamKind::String => json!({ "type": "string", "description": param.description }),
            ParamKind::Integer => {
                json!({ "type": "integer", "minimum": 1, "description": param.description })
            }
            ParamKind::Object => json!({ "type": "object", "description": param.description }),
        };
        props.insert(param.name.to_string(), ty);
        if param.required {
            required.push(Value::String(param.name.to_string()));
        }
    }
    json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

/// Tool definitions as JSON: `[{name, label, description, parameters, sideEffecting}]` (the
/// binding's typed `toolDefinitions()` has the same fields).
pub fn definitions_json() -> Value {
    Value::Array(
        TOOLS
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "label": t.label,
                    "description": t.description,
                    "parameters": parameters_schema(t),
                    "sideEffecting": t.side_effecting,
                })
            })
            .collect(),
    )
}

/// Upper bound on one string argument, in bytes: a file written through `cluster_write` is the
/// largest legitimate one; anything larger is refused before it is sent anywhere.
pub const MAX_STRING_ARG_BYTES: usize = 16 * 1024 * 1024;

/// Validate `args` against the tool's parameters: required present, types right, no unknown
/// fields, strings non-empty (except `content`) and bounded. Errors name `tool.field`.
pub fn validate_args(spec: &ToolSpec, args: &Value) -> Result<Map<String, Value>, Error> {
    let invalid = |field: &str, reason: String| {
        Error::new(
            ErrorCode::InvalidArgument,
            format!("{}.{field}: {reason}", spec.name),
        )
    };
    let obj = match args {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        other => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{}: arguments must be an object, got {}",
                    spec.name,
                    type_name(other)
                ),
            ))
        }
    };
    for key in obj.keys() {
        if !spec.params.iter().any(|p| p.name == key) {
            let known: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
            let known = if known.is_empty() {
                "it takes no arguments".to_string()
            } else {
                format!("expected one of {}", known.join(", "))
            };
            return Err(invalid(key, format!("unknown argument ({known})")));
        }
    }
    for param in spec.params {
        match obj.get(param.name) {
            None | Some(Value::Null) => {
                if param.required {
                    return Err(invalid(param.name, "required".to_string()));
                }
            }
            Some(v) => match (param.kind, v) {
                (ParamKind::String, Value::String(s)) => {
                    if s.is_empty() && param.name != "content" {
                        return Err(invalid(param.name, "must not be empty".to_string()));
                    }
                    if s.len() > MAX_STRING_ARG_BYTES {
                        return Err(invalid(
                            param.name,
                            format!(
                                "too large ({} bytes, limit {MAX_STRING_ARG_BYTES})",
                                s.len()
                            ),
                        ));
                    }
                }
                (ParamKind::Integer, Value::Number(n)) => match n.as_u64() {
                    Some(x) if x >= 1 => {}
                    _ => {
                        return Err(invalid(
                            param.name,
                            format!("expected a positive integer, got {n}"),
                        ))
                    }
                },
                (ParamKind::Object, Value::Object(_)) => {}
                (kind, other) => {
                    let want = match kind {
                        ParamKind::String => "a string",
                        ParamKind::Integer => "a positive integer",
                        ParamKind::Object => "an object",
                    };
                    return Err(invalid(
                        param.name,
                        format!("expected {want}, got {}", type_name(other)),
                    ));
                }
            },
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(tool: &str, args: Value) -> Result<(), String> {
        let spec = find(tool).ok_or("no such tool")?;
        validate_args(spec, &args)
            .map(|_| ())
            .map_err(|e| e.message)
    }

    #[test]
    fn argument_validation_table() {
        let rows: Vec<(&str, Value, Option<&str>)> = vec![
            ("cluster_peers", json!({}), None),
            ("cluster_peers", Value::Null, None),
            (
                "cluster_peers",
                json!({"x": 1}),
                Some("cluster_peers.x: unknown argument (it takes no arguments)"),
            ),
            (
                "cluster_peers",
                json!([1]),
                Some("arguments must be an object, got array"),
            ),
            (
                "cluster_handoff",
                json!({"target": "coder", "task": "t"}),
                None,
            ),
            (
                "cluster_handoff",
                json!({"target": "coder"}),
                Some("cluster_handoff.task: required"),
            ),
            (
                "cluster_handoff",
                json!({"target": "", "task": "t"}),
                Some("cluster_handoff.target: must not be empty"),
            ),
            (
                "cluster_handoff",
                json!({"target": 3, "task": "t"}),
                Some("cluster_handoff.target: expected a string, got number"),
            ),
            (
                "cluster_send",
                json!({"target": "a", "message": "m", "extra": true}),
                Some("cluster_send.extra: unknown argument (expected one of target, message)"),
            ),
            (
                "cluster_exec",
                json!({"node": "o", "command": "ls", "timeout": 5}),
                None,
            ),
            (
                "cluster_exec",
                json!({"node": "o", "command": "ls", "timeout": 0}),
                Some("cluster_exec.timeout: expected a positive integer, got 0"),
            ),
            (
                "cluster_exec",
                json!({"node": "o", "command": "ls", "timeout": 1.5}),
                Some("cluster_exec.timeout: expected a positive integer, got 1.5"),
            ),
            (
                "cluster_exec",
                json!({"node": "o", "command": "ls", "timeout": "5"}),
                Some("cluster_exec.timeout: expected a positive integer, got string"),
            ),
            (
                "cluster_write",
                json!({"node": "o", "path": "p", "content": ""}),
                None,
            ),
            (
                "cluster_write",
                json!({"node": "o", "path": "p"}),
                Some("cluster_write.content: required"),
            ),
            (
                "cluster_tool",
                json!({"node": "o", "tool": "web_search", "args": {}}),
                None,
            ),
            (
                "cluster_tool",
                json!({"node": "o", "tool": "web_search", "args": "q"}),
                Some("cluster_tool.args: expected an object, got string"),
            ),
        ];
        for (tool, args, want) in rows {
            let got = check(tool, args.clone());
            match want {
                None => assert!(got.is_ok(), "{tool} {args}: {got:?}"),
                Some(msg) => {
                    let err = got.err().unwrap_or_default();
                    assert!(
                        err.contains(msg),
                        "{tool} {args}: got {err:?}, want {msg:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn oversized_string_arguments_are_refused_before_sending() {
        let big = "x".repeat(MAX_STRING_ARG_BYTES + 1);
        let err = check(
            "cluster_write",
            json!({"node": "o", "path": "p", "content": big}),
        );
        assert!(err
            .unwrap_err()
            .contains("cluster_write.content: too large"));
    }

    #[test]
    fn definitions_match_the_manifest_contract() {
        let manifest: Value = serde_json::from_str(include_str!("../../openclaw.plugin.json"))
            .expect("manifest parses");
        let contract: Vec<&str> = manifest["contracts"]["tools"]
            .as_array()
            .expect("contracts.tools")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let ours: Vec<&str> = TOOLS.iter().map(|t| t.name).collect();
        assert_eq!(contract, ours);
        for t in TOOLS {
            let meta = &manifest["toolMetadata"][t.name];
            assert!(meta.is_object(), "toolMetadata.{} missing", t.name);
            let marked = meta["sideEffecting"].as_bool().unwrap_or(false);
            assert_eq!(marked, t.side_effecting, "sideEffecting of {}", t.name);
            let profiles: Vec<&str> = meta["profiles"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            assert!(
                profiles.contains(&"coding") && profiles.contains(&"full"),
                "{} profiles",
                t.name
            );
        }
    }

    #[test]
    fn schemas_forbid_unknown_properties_and_list_required() {
        let defs = definitions_json();
        let exec = defs
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == "cluster_exec"))
            .expect("cluster_exec");
        assert_eq!(exec["parameters"]["additionalProperties"], false);
        assert_eq!(exec["parameters"]["required"], json!(["node", "command"]));
        assert_eq!(
            exec["parameters"]["properties"]["timeout"]["type"],
            "integer"
        );
    }
}
