//! The audit trail of remote tool calls served by this node.
//!
//! Every call a remote node makes here (allowed, denied or failed) is appended as one JSON line
//! to `<state dir>/audit.log` (created `0600`), and counted in an in-memory [`AuditSummary`]
//! that `clawmatrix.status` shows. A line holds when, who (caller node, the fingerprint of its
//! verified key when the mesh knows it, and the calling agent), which tool,
//! the SHA-256 of the canonical JSON arguments, the outcome, the bytes in and out and the
//! duration — never the arguments or any file content, so commands, file bodies and whatever
//! secrets they carry stay out of the log. (A digest of a short, guessable argument can be
//! confirmed by hashing guesses; the digest is there to correlate identical calls.)
//!
//! The file is bounded: past [`AUDIT_ROTATE_BYTES`] it is renamed to `audit.log.1` (replacing
//! the previous one) and a new file is started. If the file cannot be written the call still
//! proceeds (auditing fails open) and the failure is counted in the summary.
//!
//! ```text
//! {"ts":"2026-09-06T12:00:00.123Z","caller_node":"home-01","caller_agent":"main","tool":"exec",
//!  "args_sha256":"9f86…","outcome":"ok","bytes_in":24,"bytes_out":311,"duration_ms":12}
//! ```
//! `caller_key` (`"ed25519:…"`) is added when the caller's key is known, and `rule` (the
//! access rule's name, or `default`) when an access rule refused the call.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

pub use crate::status::rfc3339_utc;
use sha2::{Digest, Sha256};

/// File name of the audit log inside the plugin state directory.
pub const AUDIT_FILE_NAME: &str = "audit.log";
/// Size at which the audit log is rotated to `audit.log.1`, in bytes: 10 MiB keeps about
/// 40 000 calls per file, and two files bound the disk use to 20 MiB.
pub const AUDIT_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// Longest caller node, agent or tool name written to the log, in characters: these come from
/// the wire and must not bloat the log.
const NAME_MAX_CHARS: usize = 128;

/// The result of one call as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The tool ran and answered (a command's non-zero exit status is still `ok`).
    Ok,
    /// Refused by policy (`toolProxy`, `access`, the filesystem root).
    Denied,
    /// Failed with this error code (`CLAWMATRIX_NOT_FOUND`, `CLAWMATRIX_TIMEOUT`, ...).
    Error(&'static str),
}

impl Outcome {
    /// `"ok"`, `"denied"` or `"error:<code>"`.
    pub fn as_string(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Denied => "denied".to_owned(),
            Outcome::Error(code) => format!("error:{code}"),
        }
    }
}

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When the call arrived.
    pub at: SystemTime,
    /// The calling node (authenticated by the mesh).
    pub caller_node: String,
    /// The calling agent, if the caller said.
    pub caller_agent: Option<String>,
    /// The fingerprint of the calling node's verified key, if known.
    pub caller_key: Option<crate::identity::Fingerprint>,
    /// The tool name as requested.
    pub tool: String,
    /// [`args_digest`] of the arguments.
    pub args_sha256: String,
    /// What happened.
    pub outcome: Outcome,
    /// Size of the canonical JSON arguments, in bytes.
    pub bytes_in: u64,
    /// Size of the reply, in bytes.
    pub bytes_out: u64,
    /// Wall time from arrival to reply.
    pub duration: Duration,
    /// The access rule that refused the call (its name, `rules[i]` or `default`), if one did.
    pub rule: Option<String>,
}

/// The last call, as shown in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCall {
    /// RFC 3339 UTC time of the call.
    pub ts: String,
    /// The calling node.
    pub caller_node: String,
    /// The calling agent, if known.
    pub caller_agent: Option<String>,
    /// The tool.
    pub tool: String,
    /// `ok`, `denied` or `error:<code>`.
    pub outcome: String,
    /// Wall time, in ms.
    pub duration_ms: u64,
}

/// Counters of served calls since the node started.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditSummary {
    /// All calls.
    pub calls: u64,
    /// Calls that ran and answered.
    pub ok: u64,
    /// Calls refused by policy.
    pub denied: u64,
    /// Calls that failed otherwise.
    pub errors: u64,
    /// Calls per tool name.
    pub by_tool: BTreeMap<String, u64>,
    /// The most recent call.
    pub last: Option<LastCall>,
    /// Audit lines that could not be written to the file.
    pub write_errors: u64,
    /// The log file, if a state directory was given.
    pub log_path: Option<PathBuf>,
}

impl AuditSummary {
    /// The summary as status JSON (camelCase).
    pub fn to_json(&self) -> Value {
        json!({
            "calls": self.calls,
            "ok": self.ok,
            "denied": self.denied,
            "errors": self.errors,
            "byTool": self.by_tool,
            "last": self.last.as_ref().map(|l| json!({
                "ts": l.ts,
                "callerNode": l.caller_node,
                "callerAgent": l.caller_agent,
                "tool": l.tool,
                "outcome": l.outcome,
                "durationMs": l.duration_ms,
            })),
            "writeErrors": self.write_errors,
            "logPath": self.log_path.as_ref().map(|p| p.to_string_lossy().into_owned()),
        })
    }
}

/// Distinct tool names tracked in [`AuditSummary::by_tool`]; further names count under
/// `"(other)"`, so a caller sending random names cannot grow the map without bound.
const BY_TOOL_MAX: usize = 256;

/// The append-only audit log plus its summary. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct AuditLog {
    path: Option<PathBuf>,
    rotate_bytes: u64,
    // A std mutex: the critical section is a counter update and one small `write` to an
    // `O_APPEND` file, never held across an `.await`.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    file: Option<File>,
    size: u64,
    summary: AuditSummary,
}

impl AuditLog {
    /// A log under `state_dir` (created if missing), or in memory only when `None`.
    pub fn open(state_dir: Option<&Path>) -> AuditLog {
        AuditLog::with_rotate_bytes(state_dir, AUDIT_ROTATE_BYTES)
    }

    /// Like [`AuditLog::open`] with another rotation size (tests).
    pub fn with_rotate_bytes(state_dir: Option<&Path>, rotate_bytes: u64) -> AuditLog {
        let path = state_dir.map(|d| d.join(AUDIT_FILE_NAME));
        let summary = AuditSummary {
            log_path: path.clone(),
            ..AuditSummary::default()
        };
        AuditLog {
            path,
            rotate_bytes,
            state: Mutex::new(State {
                file: None,
                size: 0,
                summary,
            }),
        }
    }

    /// The log file path, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Counts the call and appends its line. Never fails: a write error is counted.
    pub fn record(&self, entry: &AuditEntry) {
        let ts = rfc3339_utc(entry.at);
        let outcome = entry.outcome.as_string();
        let duration_ms = u64::try_from(entry.duration.as_millis()).unwrap_or(u64::MAX);
        let caller_node = bounded(&entry.caller_node);
        let caller_agent = entry.caller_agent.as_deref().map(bounded);
        let tool = bounded(&entry.tool);
        let mut line = json!({
            "ts": ts,
            "caller_node": caller_node,
            "caller_agent": caller_agent,
            "tool": tool,
            "args_sha256": entry.args_sha256,
            "outcome": outcome,
            "bytes_in": entry.bytes_in,
            "bytes_out": entry.bytes_out,
            "duration_ms": duration_ms,
        });
        if let Some(obj) = line.as_object_mut() {
            if let Some(k) = entry.caller_key {
                obj.insert("caller_key".to_owned(), Value::from(k.to_string()));
            }
            if let Some(r) = &entry.rule {
                obj.insert("rule".to_owned(), Value::from(bounded(r)));
            }
        }
        let mut line = line.to_string();
        line.push('\n');

        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let s = &mut st.summary;
        s.calls += 1;
        match entry.outcome {
            Outcome::Ok => s.ok += 1,
            Outcome::Denied => s.denied += 1,
            Outcome::Error(_) => s.errors += 1,
        }
        let key = if s.by_tool.contains_key(&tool) || s.by_tool.len() < BY_TOOL_MAX {
            tool.clone()
        } else {
            "(other)".to_owned()
        };
        *s.by_tool.entry(key).or_insert(0) += 1;
        s.last = Some(LastCall {
            ts,
            caller_node,
            caller_agent,
            tool,
            outcome,
            duration_ms,
        });
        if self.path.is_some() && self.append(&mut st, line.as_bytes()).is_err() {
            st.summary.write_errors += 1;
            // Reopen on the next call: the directory may have been recreated.
            st.file = None;
        }
    }

    /// A snapshot of the counters.
    pub fn summary(&self) -> AuditSummary {
        match self.state.lock() {
            Ok(g) => g.summary.clone(),
            Err(poisoned) => poisoned.into_inner().summary.clone(),
        }
    }

    fn append(&self, st: &mut State, line: &[u8]) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let len = line.len() as u64;
        if st.file.is_some() && st.size > 0 && st.size + len > self.rotate_bytes {
            st.file = None;
            let mut rotated = path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(path, PathBuf::from(rotated))?;
        }
        if st.file.is_none() {
            let (file, size) = open_append(path)?;
            st.file = Some(file);
            st.size = size;
            if size > 0 && size + len > self.rotate_bytes {
                // A file left large by an earlier run: rotate it before writing.
                st.file = None;
                let mut rotated = path.clone().into_os_string();
                rotated.push(".1");
                std::fs::rename(path, PathBuf::from(rotated))?;
                let (file, size) = open_append(path)?;
                st.file = Some(file);
                st.size = size;
            }
        }
        if let Some(f) = st.file.as_mut() {
            f.write_all(line)?;
            st.size += len;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

fn bounded(s: &str) -> String {
    if s.chars().count() <= NAME_MAX_CHARS {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(NAME_MAX_CHARS).collect();
        out.push('…');
        out
    }
}

/// SHA-256 (lowercase hex) of the canonical JSON of `args`, and that JSON's length in bytes.
/// Canonical: object keys sorted, no whitespace, serde_json's number and string escaping.
pub fn args_digest(args: &Value) -> (String, u64) {
    let mut canonical = String::new();
    write_canonical(args, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    (hex(digest.as_slice()), canonical.len() as u64)
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(inner) = map.get(k) {
                    write_canonical(inner, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            rfc3339_utc(at(1_709_251_199, 999)),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_utc(at(4_102_444_800, 0)),
            "2100-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn args_digest_ignores_key_order() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b = json!({"a": {"x": "s", "y": [1, 2]}, "b": 1});
        assert_eq!(args_digest(&a), args_digest(&b));
        let (hex_digest, len) = args_digest(&json!({}));
        assert_eq!(len, 2);
        // sha256("{}")
        assert_eq!(
            hex_digest,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}
