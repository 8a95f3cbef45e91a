//! The serving side of remote tool calls: policy, argument checks, the native executors, the
//! reply cap and the audit trail, behind one [`ToolServer::call`].
//!
//! # Flow of one call
//! 1. The policy ([`ToolPolicy`]) is checked first, then the access rules
//!    ([`crate::access`], kind `tool`), before the arguments are even parsed: a refused caller
//!    learns nothing about this node. An access refusal is audited with the rule's name.
//! 2. `exec`, `read`, `write` and `edit` run here, natively (OpenClaw cannot invoke its own for
//!    a plugin). Their arguments are checked strictly: unknown fields, missing or mistyped
//!    fields and oversized strings are refused, naming the field.
//! 3. Any other tool is handed back as [`Dispatch::Gateway`], for the caller of this module to
//!    run through the local gateway; [`GatewayCall::finish`] caps and audits its reply.
//! 4. Every call is audited, including refusals and errors ([`AuditLog`]).
//!
//! # Arguments of the native tools
//! | tool | arguments |
//! |---|---|
//! | `exec` | `command` (shell line, `/bin/sh -c`) or `argv` (array, no shell); `workdir?` (inside the root); `timeout?` or `timeoutSeconds?` (seconds, default 1800, max 86400) |
//! | `read` | `path` |
//! | `write` | `path`, `content` |
//! | `edit` | `path`, and `oldText` + `newText` or `edits: [{oldText, newText}]` (OpenClaw's edit shape); `replaceAll?` |
//!
//! The reply text is capped at `toolProxy.maxOutputBytes`. `read` refuses a file that does not
//! fit; `exec` keeps the head of its output within the cap, with a marker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use crate::access::{Access, Kind};
use crate::config::Config;
use crate::error::json_type_name as type_name;
use crate::error::{Error, ErrorCode};
use crate::tools::audit::{args_digest, AuditEntry, AuditLog, AuditSummary, Outcome};
use crate::tools::catalog::MAX_STRING_ARG_BYTES;
use crate::tools::exec::{self, Command, ExecChunk, ExecOutcome, ExecRequest};
use crate::tools::fs::{self, Replacement, MAX_WRITE_BYTES};
use crate::tools::paths::Root;
use crate::tools::policy::{shown_name, ToolPolicy};

/// The tools this module runs natively.
pub const NATIVE_TOOLS: [&str; 4] = ["exec", "read", "write", "edit"];
/// Largest arguments object accepted, in bytes of canonical JSON: one maximal string plus
/// room for the other fields.
pub const MAX_ARGS_BYTES: u64 = MAX_STRING_ARG_BYTES as u64 + 64 * 1024;
/// Most replacements in one `edit`.
pub const MAX_EDITS: usize = 1024;
/// Bytes of the reply cap kept free for exec's stream headers, markers and status line.
const EXEC_REPLY_RESERVE_BYTES: usize = 512;

/// Who is calling (from the mesh request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The calling node id (authenticated by the mesh).
    pub node: String,
    /// The calling agent, if known.
    pub agent: Option<String>,
    /// The fingerprint of the calling node's verified key, if the mesh knows it.
    pub key: Option<crate::identity::Fingerprint>,
}

/// A tool's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolReply {
    /// Text for the model (capped).
    pub text: String,
    /// Structured facts (exit code, sizes, flags); small.
    pub details: Value,
}

/// Where a call goes after the policy allowed it.
#[derive(Debug)]
pub enum Dispatch {
    /// Ran here; the reply is capped and the call audited.
    Native(ToolReply),
    /// Not a native tool: run it through the local gateway, then call
    /// [`GatewayCall::finish`].
    Gateway(GatewayCall),
}

/// Where the filesystem root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootSource {
    /// `toolProxy.root`.
    Configured(PathBuf),
    /// The agent workspace passed by the shim.
    Workspace(PathBuf),
    /// Neither: file tools and exec refuse.
    Missing,
}

impl RootSource {
    /// Open the root (blocking: canonicalize and open a directory handle).
    fn open(&self, node_id: &str) -> Result<Root, Error> {
        match self {
            RootSource::Configured(p) => Root::open(p)
                .map_err(|e| Error::new(e.code, format!("{} (toolProxy.root)", e.message))),
            RootSource::Workspace(p) => Root::open(p),
            RootSource::Missing => Err(Error::new(
                ErrorCode::Denied,
                format!(
                    "no filesystem root on {node_id}: set toolProxy.root (no agent workspace is \
                     known either), so exec, read, write and edit are refused"
                ),
            )),
        }
    }
}

/// Serves remote tool calls for one node. Share it behind an `Arc`.
#[derive(Debug)]
pub struct ToolServer {
    node_id: String,
    policy: ToolPolicy,
    access: Arc<Access>,
    root: RootSource,
    max_output_bytes: usize,
    audit: Arc<AuditLog>,
}

impl ToolServer {
    /// A server for `config`. The filesystem root is `toolProxy.root` if set, else
    /// `workspace_dir` (the OpenClaw agent workspace); the audit log goes to
    /// `<state_dir>/audit.log` (memory only without a state dir).
    pub fn new(
        config: &Config,
        workspace_dir: Option<PathBuf>,
        state_dir: Option<PathBuf>,
    ) -> ToolServer {
        let root = match (&config.tool_proxy.root, workspace_dir) {
            (Some(r), _) => RootSource::Configured(PathBuf::from(r)),
            (None, Some(w)) => RootSource::Workspace(w),
            (None, None) => RootSource::Missing,
        };
        ToolServer {
            node_id: config.node_id.clone(),
            policy: ToolPolicy::from_config(&config.node_id, &config.tool_proxy),
            access: Access::new(&config.access),
            root,
            max_output_bytes: config.tool_proxy.max_output_bytes,
            audit: Arc::new(AuditLog::open(state_dir.as_deref())),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &ToolPolicy {
        &self.policy
    }

    /// The configured root path (not yet checked), if any.
    pub fn root_path(&self) -> Option<&std::path::Path> {
        match &self.root {
            RootSource::Configured(p) | RootSource::Workspace(p) => Some(p),
            RootSource::Missing => None,
        }
    }

    /// The audit counters, for `clawmatrix.status`.
    pub fn audit_summary(&self) -> AuditSummary {
        self.audit.summary()
    }

    /// Serves one call: policy, arguments, execution, reply cap, audit. `progress` receives
    /// exec output as it comes (dropped when full); `cancel` turning `true` kills a running
    /// command and every process it started.
    pub async fn call(
        &self,
        caller: &Caller,
        tool: &str,
        args: Value,
        progress: Option<mpsc::Sender<ExecChunk>>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Dispatch, Error> {
        let at = SystemTime::now();
        let started = Instant::now();
        let (digest, bytes_in) = args_digest(&args);
        let pending = PendingAudit {
            at,
            started,
            caller: caller.clone(),
            tool: tool.to_owned(),
            args_sha256: digest,
            bytes_in,
        };
        if let Err((e, rule)) = self.admit(caller, tool) {
            let mut entry = pending.entry(Outcome::Denied, 0);
            entry.rule = rule;
            self.audit.record(&entry);
            return Err(e);
        }
        let result = self
            .dispatch(tool, args, bytes_in, progress, cancel)
            .await
            .map(|routed| match routed {
                Routed::Native(reply, outcome) => {
                    Routed::Native(cap_reply(reply, self.max_output_bytes), outcome)
                }
                other => other,
            });
        match result {
            Ok(Routed::Native(reply, outcome)) => {
                self.audit
                    .record(&pending.entry(outcome, reply_bytes(&reply)));
                Ok(Dispatch::Native(reply))
            }
            Ok(Routed::Gateway(tool, args)) => Ok(Dispatch::Gateway(GatewayCall {
                tool,
                args,
                max_output_bytes: self.max_output_bytes,
                audit: Arc::clone(&self.audit),
                pending: Some(pending),
            })),
            Err(e) => {
                self.audit.record(&pending.entry(outcome_of(&e), 0));
                Err(e)
            }
        }
    }

    /// `toolProxy` first, then the access rules; the refusal, with the refusing access rule's
    /// label when it was one.
    fn admit(&self, caller: &Caller, tool: &str) -> Result<(), (Error, Option<String>)> {
        self.policy.check(tool).map_err(|e| (e, None))?;
        self.access
            .decide(&caller.node, caller.agent.as_deref(), Kind::Tool, tool)
            .map_err(|r| {
                let rule = r.rule.clone();
                (Error::from(r), Some(rule))
            })
    }

    async fn dispatch(
        &self,
        tool: &str,
        args: Value,
        bytes_in: u64,
        progress: Option<mpsc::Sender<ExecChunk>>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Routed, Error> {
        if bytes_in > MAX_ARGS_BYTES {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "{}: arguments are {bytes_in} bytes, over the {MAX_ARGS_BYTES}-byte limit",
                    shown_name(tool)
                ),
            ));
        }
        if !NATIVE_TOOLS.contains(&tool) {
            return Ok(Routed::Gateway(tool.to_owned(), args));
        }
        match tool {
            "exec" => self.exec(args, progress, cancel).await,
            "read" => self.read(args).await,
            "write" => self.write(args).await,
            _ => self.edit(args).await,
        }
    }

    /// The filesystem root, opened (canonicalized, then a directory handle) on the blocking
    /// pool together with `then`, which works inside it: none of these syscalls runs on the
    /// runtime worker that carries the node's links.
    async fn with_root<T: Send + 'static>(
        &self,
        then: impl FnOnce(Root) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let source = self.root.clone();
        let node_id = self.node_id.clone();
        blocking(move || then(source.open(&node_id)?)).await
    }

    async fn exec(
        &self,
        args: Value,
        progress: Option<mpsc::Sender<ExecChunk>>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Routed, Error> {
        let mut a = Args::new(
            "exec",
            args,
            &["command", "argv", "workdir", "timeout", "timeoutSeconds"],
        )?;
        let command = a.string("command", false)?;
        let argv = a.string_array("argv")?;
        let workdir = a.string("workdir", false)?;
        let timeout = a.positive_integer("timeout")?;
        let timeout_seconds = a.positive_integer("timeoutSeconds")?;
        let command = match (command, argv) {
            (Some(c), None) => Command::Shell(c),
            (None, Some(v)) => Command::Argv(v),
            (Some(_), Some(_)) => {
                return Err(invalid("exec: give either command or argv, not both"))
            }
            (None, None) => return Err(invalid("exec.command: required (or argv)")),
        };
        let timeout = match (timeout, timeout_seconds) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "exec: give either timeout or timeoutSeconds, not both",
                ))
            }
            (t, u) => t.or(u),
        };
        let budget = self
            .max_output_bytes
            .saturating_sub(EXEC_REPLY_RESERVE_BYTES)
            .max(1);
        let req = self
            .with_root(move |root| {
                ExecRequest::new(&root, command, workdir.as_deref(), timeout, budget)
            })
            .await?;
        let timeout_secs = req.timeout.as_secs();
        let out = exec::run(req, progress, cancel).await?;
        if out.cancelled {
            return Err(Error::new(
                ErrorCode::Cancelled,
                "exec was cancelled by the caller; every process it started was killed",
            ));
        }
        let outcome = if out.timed_out {
            Outcome::Error(ErrorCode::Timeout.as_str())
        } else {
            Outcome::Ok
        };
        let details = json!({
            "exitCode": out.exit_code,
            "signal": out.signal,
            "timedOut": out.timed_out,
            "truncated": out.truncated,
            "binary": out.binary,
            "stdoutBytes": out.stdout_bytes,
            "stderrBytes": out.stderr_bytes,
            "droppedProgress": out.dropped_progress,
            "durationMs": out.duration_ms,
        });
        let text = exec_text(&out, timeout_secs);
        Ok(Routed::Native(ToolReply { text, details }, outcome))
    }

    async fn read(&self, args: Value) -> Result<Routed, Error> {
        let mut a = Args::new("read", args, &["path"])?;
        let path = a.required_string("path")?;
        let max = self.max_output_bytes;
        let p = path.clone();
        let r = self.with_root(move |root| fs::read(&root, &p, max)).await?;
        let details = json!({"path": path, "size": r.size, "encoding": r.encoding.as_str()});
        Ok(Routed::Native(
            ToolReply {
                text: r.content,
                details,
            },
            Outcome::Ok,
        ))
    }

    async fn write(&self, args: Value) -> Result<Routed, Error> {
        let mut a = Args::new("write", args, &["path", "content"])?;
        let path = a.required_string("path")?;
        let content = a
            .string("content", true)?
            .ok_or_else(|| a.err("content", "required"))?;
        let p = path.clone();
        let r = self
            .with_root(move |root| fs::write(&root, &p, content.as_bytes(), MAX_WRITE_BYTES))
            .await?;
        let verb = if r.created { "created" } else { "replaced" };
        Ok(Routed::Native(
            ToolReply {
                text: format!("{verb} {path} ({} bytes)", r.size),
                details: json!({"path": path, "size": r.size, "created": r.created}),
            },
            Outcome::Ok,
        ))
    }

    async fn edit(&self, args: Value) -> Result<Routed, Error> {
        let mut a = Args::new(
            "edit",
            args,
            &["path", "oldText", "newText", "edits", "replaceAll"],
        )?;
        let path = a.required_string("path")?;
        let old = a.string("oldText", false)?;
        let new = a.string("newText", true)?;
        let edits = a.edits("edits")?;
        let replace_all = a.boolean("replaceAll")?.unwrap_or(false);
        let replacements = match (old, new, edits) {
            (Some(old_text), Some(new_text), None) => vec![Replacement { old_text, new_text }],
            (None, None, Some(list)) => list,
            (Some(_), None, None) => return Err(invalid("edit.newText: required with oldText")),
            (None, Some(_), None) => return Err(invalid("edit.oldText: required with newText")),
            (None, None, None) => {
                return Err(invalid(
                    "edit: give oldText and newText, or edits: [{oldText, newText}]",
                ))
            }
            _ => {
                return Err(invalid(
                    "edit: give either oldText/newText or edits, not both",
                ))
            }
        };
        let p = path.clone();
        let r = self
            .with_root(move |root| fs::edit(&root, &p, &replacements, replace_all, MAX_WRITE_BYTES))
            .await?;
        Ok(Routed::Native(
            ToolReply {
                text: format!(
                    "edited {path}: {} replacement{} ({} bytes)",
                    r.replacements,
                    if r.replacements == 1 { "" } else { "s" },
                    r.size
                ),
                details: json!({"path": path, "replacements": r.replacements, "size": r.size}),
            },
            Outcome::Ok,
        ))
    }
}

enum Routed {
    Native(ToolReply, Outcome),
    Gateway(String, Value),
}

/// The audit facts known when a call arrives.
#[derive(Debug)]
struct PendingAudit {
    at: SystemTime,
    started: Instant,
    caller: Caller,
    tool: String,
    args_sha256: String,
    bytes_in: u64,
}

impl PendingAudit {
    fn entry(&self, outcome: Outcome, bytes_out: u64) -> AuditEntry {
        AuditEntry {
            at: self.at,
            caller_node: self.caller.node.clone(),
            caller_agent: self.caller.agent.clone(),
            caller_key: self.caller.key,
            tool: self.tool.clone(),
            args_sha256: self.args_sha256.clone(),
            outcome,
            bytes_in: self.bytes_in,
            bytes_out,
            duration: self.started.elapsed(),
            rule: None,
        }
    }
}

/// A call the policy allowed for a non-native tool, to be run by the local gateway.
///
/// Audited once: by [`GatewayCall::finish`], or as cancelled if dropped unfinished.
#[derive(Debug)]
pub struct GatewayCall {
    /// The tool name.
    pub tool: String,
    /// Its arguments, unchanged.
    pub args: Value,
    max_output_bytes: usize,
    audit: Arc<AuditLog>,
    pending: Option<PendingAudit>,
}

impl GatewayCall {
    /// Records the gateway's answer and returns it capped at `toolProxy.maxOutputBytes`.
    pub fn finish(mut self, result: Result<ToolReply, Error>) -> Result<ToolReply, Error> {
        let result = result.map(|r| cap_reply(r, self.max_output_bytes));
        if let Some(p) = self.pending.take() {
            let entry = match &result {
                Ok(r) => p.entry(Outcome::Ok, reply_bytes(r)),
                Err(e) => p.entry(outcome_of(e), 0),
            };
            self.audit.record(&entry);
        }
        result
    }
}

impl Drop for GatewayCall {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            self.audit
                .record(&p.entry(Outcome::Error(ErrorCode::Cancelled.as_str()), 0));
        }
    }
}

fn outcome_of(e: &Error) -> Outcome {
    if e.code == ErrorCode::Denied {
        Outcome::Denied
    } else {
        Outcome::Error(e.code.as_str())
    }
}

fn reply_bytes(r: &ToolReply) -> u64 {
    (r.text.len() + r.details.to_string().len()) as u64
}

/// Cuts the reply text to `max` bytes (at a UTF-8 boundary, marker included) when needed.
fn cap_reply(mut reply: ToolReply, max: usize) -> ToolReply {
    if reply.text.len() <= max {
        return reply;
    }
    let total = reply.text.len() as u64;
    // The marker is at most ~80 bytes; reserve 128 for it.
    let mut keep = max.saturating_sub(128);
    while keep > 0 && !reply.text.is_char_boundary(keep) {
        keep -= 1;
    }
    reply.text.truncate(keep);
    reply
        .text
        .push_str(&exec::truncation_marker(total, keep as u64));
    if let Some(obj) = reply.details.as_object_mut() {
        obj.insert("truncated".to_owned(), Value::Bool(true));
    }
    reply
}

/// The model-facing text of an exec run: stdout, then stderr under a header, then a status
/// line.
fn exec_text(o: &ExecOutcome, timeout_secs: u64) -> String {
    let mut t = String::with_capacity(o.stdout.len() + o.stderr.len() + 64);
    t.push_str(&o.stdout);
    if !o.stderr.is_empty() {
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        t.push_str("[stderr]\n");
        t.push_str(&o.stderr);
    }
    if !t.is_empty() && !t.ends_with('\n') {
        t.push('\n');
    }
    if o.timed_out {
        t.push_str(&format!(
            "[timed out after {timeout_secs} s: every process it started was killed]"
        ));
    } else if let Some(code) = o.exit_code {
        t.push_str(&format!("[exit code {code}]"));
    } else if let Some(sig) = o.signal {
        t.push_str(&format!("[killed by signal {sig}]"));
    }
    if o.binary {
        t.push_str("\n[output is not UTF-8 text: shown lossily]");
    }
    t
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("file task failed: {e}")))?
}

fn invalid(msg: &str) -> Error {
    Error::new(ErrorCode::InvalidArgument, msg)
}

/// Strict reader of one tool's arguments: every field is taken at most once, and unknown
/// fields are refused up front, naming the field and the known ones.
struct Args {
    tool: &'static str,
    map: Map<String, Value>,
}

impl Args {
    fn new(tool: &'static str, args: Value, known: &[&str]) -> Result<Args, Error> {
        let map = match args {
            Value::Null => Map::new(),
            Value::Object(m) => m,
            other => {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "{tool}: arguments must be an object, got {}",
                        type_name(&other)
                    ),
                ))
            }
        };
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{tool}.{}: unknown argument (expected one of {})",
                    shown_name(k),
                    known.join(", ")
                ),
            ));
        }
        Ok(Args { tool, map })
    }

    fn err(&self, field: &str, reason: impl std::fmt::Display) -> Error {
        Error::new(
            ErrorCode::InvalidArgument,
            format!("{}.{field}: {reason}", self.tool),
        )
    }

    /// Takes the field; JSON `null` counts as absent.
    fn take(&mut self, field: &str) -> Option<Value> {
        match self.map.remove(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn check_len(&self, field: &str, s: &str) -> Result<(), Error> {
        if s.len() > MAX_STRING_ARG_BYTES {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!(
                    "{}.{field}: too large ({} bytes, limit {MAX_STRING_ARG_BYTES})",
                    self.tool,
                    s.len()
                ),
            ));
        }
        Ok(())
    }

    fn string(&mut self, field: &str, allow_empty: bool) -> Result<Option<String>, Error> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => {
                if s.is_empty() && !allow_empty {
                    return Err(self.err(field, "must not be empty"));
                }
                self.check_len(field, &s)?;
                Ok(Some(s))
            }
            Some(other) => Err(self.err(
                field,
                format!("expected a string, got {}", type_name(&other)),
            )),
        }
    }

    fn required_string(&mut self, field: &str) -> Result<String, Error> {
        self.string(field, false)?
            .ok_or_else(|| self.err(field, "required"))
    }

    fn positive_integer(&mut self, field: &str) -> Result<Option<u64>, Error> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) if x >= 1 => Ok(Some(x)),
                _ => Err(self.err(field, format!("expected a positive integer, got {n}"))),
            },
            Some(other) => Err(self.err(
                field,
                format!("expected a positive integer, got {}", type_name(&other)),
            )),
        }
    }

    fn boolean(&mut self, field: &str) -> Result<Option<bool>, Error> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.err(
                field,
                format!("expected a boolean, got {}", type_name(&other)),
            )),
        }
    }

    /// Take `field` as a non-empty array of at most `max` items (`None` when absent).
    /// `what` names the items in messages ("strings", "objects"; "items"/"edits" for the limit).
    fn bounded_array(
        &mut self,
        field: &str,
        what: &str,
        counted: &str,
        max: usize,
    ) -> Result<Option<Vec<Value>>, Error> {
        let items = match self.take(field) {
            None => return Ok(None),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.err(
                    field,
                    format!("expected an array of {what}, got {}", type_name(&other)),
                ))
            }
        };
        if items.is_empty() {
            return Err(self.err(field, "must not be empty"));
        }
        if items.len() > max {
            return Err(self.err(
                field,
                format!("too many {counted} ({}, limit {max})", items.len()),
            ));
        }
        Ok(Some(items))
    }

    fn string_array(&mut self, field: &str) -> Result<Option<Vec<String>>, Error> {
        let Some(items) = self.bounded_array(field, "strings", "items", exec::MAX_ARGV)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::String(s) => {
                    self.check_len(field, &s)?;
                    out.push(s);
                }
                other => {
                    return Err(self.err(
                        &format!("{field}[{i}]"),
                        format!("expected a string, got {}", type_name(&other)),
                    ))
                }
            }
        }
        Ok(Some(out))
    }

    fn edits(&mut self, field: &str) -> Result<Option<Vec<Replacement>>, Error> {
        let Some(items) = self.bounded_array(field, "objects", "edits", MAX_EDITS)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let at = format!("{field}[{i}]");
            let Value::Object(mut obj) = item else {
                return Err(self.err(&at, "expected an object {oldText, newText}"));
            };
            if let Some(k) = obj.keys().find(|k| *k != "oldText" && *k != "newText") {
                return Err(self.err(
                    &format!("{at}.{}", shown_name(k)),
                    "unknown argument (expected oldText, newText)",
                ));
            }
            let mut get = |name: &str| match obj.remove(name) {
                Some(Value::String(s)) => Ok(s),
                None | Some(Value::Null) => Err(self.err(&format!("{at}.{name}"), "required")),
                Some(other) => Err(self.err(
                    &format!("{at}.{name}"),
                    format!("expected a string, got {}", type_name(&other)),
                )),
            };
            let old_text = get("oldText")?;
            let new_text = get("newText")?;
            if old_text.is_empty() {
                return Err(self.err(&format!("{at}.oldText"), "must not be empty"));
            }
            out.push(Replacement { old_text, new_text });
        }
        Ok(Some(out))
    }
}
