//! The audit log: one JSON line per call with the documented fields, never the arguments,
//! `0600`, rotated when full, and the in-memory summary.

mod tools_support;

use std::time::{Duration, UNIX_EPOCH};

use clawmatrix::tools::audit::{args_digest, AuditEntry, AuditLog, Outcome};
use serde_json::{json, Value};
use tools_support::TempDir;

fn entry(tool: &str, outcome: Outcome) -> AuditEntry {
    let (digest, len) = args_digest(&json!({"command": "echo sk-live-SECRET"}));
    AuditEntry {
        at: UNIX_EPOCH + Duration::from_millis(1_757_160_000_123),
        caller_node: "home-01".into(),
        caller_agent: Some("main".into()),
        tool: tool.into(),
        args_sha256: digest,
        outcome,
        bytes_in: len,
        bytes_out: 42,
        duration: Duration::from_millis(12),
        caller_key: None,
        rule: None,
    }
}

#[test]
fn a_line_names_the_callers_key_and_the_refusing_access_rule_when_known() {
    let tmp = TempDir::new("audit-key");
    let log = AuditLog::open(Some(tmp.path()));
    let key = clawmatrix::identity::Fingerprint([0xab; 16]);
    log.record(&AuditEntry {
        caller_key: Some(key),
        rule: Some("no-exec".into()),
        ..entry("exec", Outcome::Denied)
    });
    let text = std::fs::read_to_string(tmp.join("audit.log")).unwrap();
    let line: Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(line["caller_key"], key.to_string());
    assert!(line["caller_key"].as_str().unwrap().starts_with("ed25519:"));
    assert_eq!(line["rule"], "no-exec");
    assert_eq!(line["caller_node"], "home-01");
    assert_eq!(line["outcome"], "denied");
}

#[test]
fn each_call_is_one_json_line_with_the_documented_fields() {
    let tmp = TempDir::new("audit");
    let log = AuditLog::open(Some(tmp.path()));
    log.record(&entry("exec", Outcome::Ok));
    log.record(&entry("write", Outcome::Denied));
    log.record(&entry("read", Outcome::Error("CLAWMATRIX_NOT_FOUND")));
    let text = std::fs::read_to_string(tmp.join("audit.log")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let (digest, len) = args_digest(&json!({"command": "echo sk-live-SECRET"}));
    assert_eq!(
        lines[0],
        json!({
            "ts": "2025-09-06T12:00:00.123Z", "caller_node": "home-01", "caller_agent": "main",
            "tool": "exec", "args_sha256": digest, "outcome": "ok", "bytes_in": len,
            "bytes_out": 42, "duration_ms": 12
        })
    );
    assert_eq!(lines[1]["outcome"], "denied");
    assert_eq!(lines[2]["outcome"], "error:CLAWMATRIX_NOT_FOUND");
    assert!(!text.contains("SECRET"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.join("audit.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn the_summary_counts_calls_by_outcome_and_tool() {
    let log = AuditLog::open(None);
    log.record(&entry("exec", Outcome::Ok));
    log.record(&entry("exec", Outcome::Denied));
    log.record(&entry("read", Outcome::Error("CLAWMATRIX_NOT_FOUND")));
    let s = log.summary();
    assert_eq!((s.calls, s.ok, s.denied, s.errors), (3, 1, 1, 1));
    assert_eq!(s.by_tool.get("exec"), Some(&2));
    assert_eq!(s.by_tool.get("read"), Some(&1));
    let last = s.last.clone().unwrap();
    assert_eq!(last.tool, "read");
    assert_eq!(last.outcome, "error:CLAWMATRIX_NOT_FOUND");
    assert_eq!(s.write_errors, 0);
    let j = s.to_json();
    assert_eq!(j["byTool"]["exec"], 2);
    assert_eq!(j["last"]["callerNode"], "home-01");
    assert_eq!(j["logPath"], Value::Null);
}

#[test]
fn the_log_rotates_when_full() {
    let tmp = TempDir::new("audit");
    let log = AuditLog::with_rotate_bytes(Some(tmp.path()), 1000);
    for _ in 0..10 {
        log.record(&entry("exec", Outcome::Ok));
    }
    let current = std::fs::metadata(tmp.join("audit.log")).unwrap().len();
    let rotated = std::fs::metadata(tmp.join("audit.log.1")).unwrap().len();
    assert!(current <= 1000, "{current}");
    assert!(rotated <= 1000 && rotated > 0, "{rotated}");
    assert_eq!(log.summary().calls, 10);
}

#[test]
fn wire_supplied_names_are_bounded_in_the_log() {
    let tmp = TempDir::new("audit");
    let log = AuditLog::open(Some(tmp.path()));
    let mut e = entry(&"t".repeat(10_000), Outcome::Denied);
    e.caller_agent = Some("a\n\"}{".repeat(1000));
    log.record(&e);
    let text = std::fs::read_to_string(tmp.join("audit.log")).unwrap();
    assert_eq!(text.lines().count(), 1, "newlines stay escaped");
    assert!(text.len() < 2000, "{}", text.len());
}

#[test]
fn an_unwritable_log_is_counted_not_fatal() {
    let tmp = TempDir::new("audit");
    // The state "directory" is a file: the log cannot be created.
    std::fs::write(tmp.join("state"), "x").unwrap();
    let log = AuditLog::open(Some(&tmp.join("state")));
    log.record(&entry("exec", Outcome::Ok));
    let s = log.summary();
    assert_eq!((s.calls, s.write_errors), (1, 1));
}
