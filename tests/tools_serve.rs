//! The whole serving path through `ToolServer`: policy first, strict arguments (missing,
//! extra, mistyped, huge), the native tools on a temporary root, gateway hand-off, the reply
//! cap, cancel, and the audit trail (secrets never logged).

#![cfg(unix)]

mod tools_support;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use clawmatrix::error::{Error, ErrorCode};
use clawmatrix::tools::exec::ExecChunk;
use clawmatrix::tools::serve::{Caller, Dispatch, ToolReply, ToolServer};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tools_support::{config_with, TempDir};

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("test exceeded 15 s")
}

struct Env {
    tmp: TempDir,
    server: ToolServer,
}

impl Env {
    fn root(&self) -> PathBuf {
        self.tmp.join("workspace")
    }
    fn audit_text(&self) -> String {
        std::fs::read_to_string(self.tmp.join("state/audit.log")).unwrap_or_default()
    }
}

/// A server for `office-01` whose root is the agent workspace `<tmp>/workspace`.
fn env(tool_proxy: Value) -> Env {
    let tmp = TempDir::new("serve");
    std::fs::create_dir(tmp.join("workspace")).unwrap();
    let server = ToolServer::new(
        &config_with(tool_proxy),
        Some(tmp.join("workspace")),
        Some(tmp.join("state")),
    );
    Env { tmp, server }
}

fn enabled() -> Env {
    env(json!({"enabled": true, "maxOutputBytes": 4096}))
}

fn caller() -> Caller {
    Caller {
        node: "home-01".into(),
        agent: Some("main".into()),
        key: None,
    }
}

async fn call_with(
    s: &ToolServer,
    tool: &str,
    args: Value,
    progress: Option<mpsc::Sender<ExecChunk>>,
    cancel: watch::Receiver<bool>,
) -> Result<Dispatch, Error> {
    s.call(&caller(), tool, args, progress, cancel).await
}

async fn call(s: &ToolServer, tool: &str, args: Value) -> Result<ToolReply, Error> {
    match call_with(s, tool, args, None, watch::channel(false).1).await? {
        Dispatch::Native(r) => Ok(r),
        Dispatch::Gateway(g) => panic!("{} went to the gateway", g.tool),
    }
}

#[tokio::test]
async fn a_disabled_proxy_refuses_and_audits_the_call() {
    bounded(async {
        let e = env(json!({}));
        let err = call(&e.server, "read", json!({"path": "x"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied);
        assert_eq!(
            err.message,
            "tool proxy is disabled on office-01 (toolProxy.enabled is false)"
        );
        let line: Value = serde_json::from_str(e.audit_text().trim()).unwrap();
        assert_eq!(line["outcome"], "denied");
        assert_eq!(line["caller_node"], "home-01");
        assert_eq!(line["tool"], "read");
        assert_eq!(e.server.audit_summary().denied, 1);
    })
    .await;
}

#[tokio::test]
async fn policy_is_checked_before_anything_about_the_arguments() {
    bounded(async {
        let e = env(json!({"enabled": true, "deny": ["read"]}));
        // Bad arguments and an escaping path: a denied caller only hears "denied".
        for args in [
            json!({"path": "/etc/shadow"}),
            json!({"bogus": 1}),
            json!(42),
        ] {
            let err = call(&e.server, "read", args).await.unwrap_err();
            assert_eq!(
                err.message,
                "tool \"read\" is denied by toolProxy.deny on office-01"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn exec_runs_in_the_workspace_and_reports_output_and_status() {
    bounded(async {
        let e = enabled();
        let r = call(
            &e.server,
            "exec",
            json!({"command": "pwd; echo warn >&2; exit 2"}),
        )
        .await
        .unwrap();
        let root = std::fs::canonicalize(e.root()).unwrap();
        assert_eq!(
            r.text,
            format!("{}\n[stderr]\nwarn\n[exit code 2]", root.display())
        );
        assert_eq!(r.details["exitCode"], 2);
        assert_eq!(r.details["timedOut"], false);
        let r = call(&e.server, "exec", json!({"argv": ["printf", "%s", "a b"]}))
            .await
            .unwrap();
        assert_eq!(r.text, "a b\n[exit code 0]");
    })
    .await;
}

#[tokio::test]
async fn exec_streams_progress_through_the_server() {
    bounded(async {
        let e = enabled();
        let (tx, mut rx) = mpsc::channel(16);
        let d = call_with(
            &e.server,
            "exec",
            json!({"command": "echo streamed"}),
            Some(tx),
            watch::channel(false).1,
        )
        .await
        .unwrap();
        assert!(matches!(d, Dispatch::Native(_)));
        assert_eq!(rx.recv().await.unwrap().bytes, b"streamed\n");
    })
    .await;
}

#[tokio::test]
async fn exec_timeout_returns_the_partial_output_and_is_audited_as_a_timeout() {
    bounded(async {
        let e = enabled();
        let r = call(
            &e.server,
            "exec",
            json!({"command": "echo started; sleep 30", "timeout": 1}),
        )
        .await
        .unwrap();
        assert_eq!(
            r.text,
            "started\n[timed out after 1 s: every process it started was killed]"
        );
        assert_eq!(r.details["timedOut"], true);
        assert!(e
            .audit_text()
            .contains("\"outcome\":\"error:CLAWMATRIX_TIMEOUT\""));
    })
    .await;
}

#[tokio::test]
async fn cancel_through_the_server_is_an_error_and_is_audited() {
    bounded(async {
        let e = enabled();
        let (tx, rx) = watch::channel(false);
        let server = &e.server;
        // Cancel once the command runs (its first output), not after a guessed delay.
        let (ptx, mut prx) = mpsc::channel(16);
        let fut = call_with(
            server,
            "exec",
            json!({"command": "echo started; sleep 30"}),
            Some(ptx),
            rx,
        );
        let cancel = async {
            let first = prx.recv().await.expect("the command's first output");
            assert_eq!(first.bytes, b"started\n");
            tx.send(true).unwrap();
        };
        let (res, ()) = tokio::join!(fut, cancel);
        assert_eq!(res.unwrap_err().code, ErrorCode::Cancelled);
        assert!(e.audit_text().contains("error:CLAWMATRIX_CANCELLED"));
    })
    .await;
}

#[tokio::test]
async fn the_exec_reply_never_exceeds_max_output_bytes() {
    bounded(async {
        let e = enabled();
        let r = call(
            &e.server,
            "exec",
            json!({"command": "head -c 50000 /dev/zero | tr '\\0' a; head -c 50000 /dev/zero >&2"}),
        )
        .await
        .unwrap();
        assert!(r.text.len() <= 4096, "{}", r.text.len());
        assert!(r.text.contains("50000 bytes total"));
        assert_eq!(r.details["truncated"], true);
        assert_eq!(r.details["binary"], true, "NUL bytes on stderr");
    })
    .await;
}

#[tokio::test]
async fn write_read_and_edit_round_trip() {
    bounded(async {
        let e = enabled();
        let r = call(
            &e.server,
            "write",
            json!({"path": "src/a.txt", "content": "one two"}),
        )
        .await
        .unwrap();
        assert_eq!(r.text, "created src/a.txt (7 bytes)");
        let r = call(
            &e.server,
            "edit",
            json!({"path": "src/a.txt", "oldText": "two", "newText": "2"}),
        )
        .await
        .unwrap();
        assert_eq!(r.details["replacements"], 1);
        // OpenClaw's own edit shape.
        call(
            &e.server,
            "edit",
            json!({"path": "src/a.txt", "edits": [{"oldText": "one", "newText": "1"}]}),
        )
        .await
        .unwrap();
        let r = call(&e.server, "read", json!({"path": "src/a.txt"}))
            .await
            .unwrap();
        assert_eq!(r.text, "1 2");
        assert_eq!(
            r.details,
            json!({"path": "src/a.txt", "size": 3, "encoding": "utf8"})
        );
        let r = call(
            &e.server,
            "write",
            json!({"path": "src/a.txt", "content": ""}),
        )
        .await
        .unwrap();
        assert_eq!(r.text, "replaced src/a.txt (0 bytes)");
    })
    .await;
}

#[tokio::test]
async fn reading_a_file_over_the_reply_cap_is_refused_with_sizes() {
    bounded(async {
        let e = enabled();
        std::fs::write(e.root().join("big.txt"), "x".repeat(5000)).unwrap();
        let err = call(&e.server, "read", json!({"path": "big.txt"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert_eq!(
            err.message,
            "\"big.txt\" is 5000 bytes, over the 4096-byte limit"
        );
    })
    .await;
}

#[tokio::test]
async fn bad_arguments_are_refused_naming_the_field() {
    bounded(async {
        let e = enabled();
        let rows: Vec<(&str, Value, ErrorCode, &str)> = vec![
            ("exec", json!({}), ErrorCode::InvalidArgument, "exec.command: required (or argv)"),
            ("exec", json!({"command": "ls", "cwd": "/"}), ErrorCode::InvalidArgument,
             "exec.cwd: unknown argument (expected one of command, argv, workdir, timeout, timeoutSeconds)"),
            ("exec", json!({"command": 5}), ErrorCode::InvalidArgument, "exec.command: expected a string, got number"),
            ("exec", json!({"command": "ls", "argv": ["ls"]}), ErrorCode::InvalidArgument, "either command or argv"),
            ("exec", json!({"argv": ["ls", 3]}), ErrorCode::InvalidArgument, "exec.argv[1]: expected a string, got number"),
            ("exec", json!({"argv": "ls"}), ErrorCode::InvalidArgument, "exec.argv: expected an array of strings"),
            ("exec", json!({"argv": []}), ErrorCode::InvalidArgument, "exec.argv: must not be empty"),
            ("exec", json!({"command": "ls", "timeout": "5"}), ErrorCode::InvalidArgument, "exec.timeout: expected a positive integer, got string"),
            ("exec", json!({"command": "ls", "timeout": -1}), ErrorCode::InvalidArgument, "exec.timeout: expected a positive integer, got -1"),
            ("exec", json!({"command": "ls", "timeout": 1, "timeoutSeconds": 1}), ErrorCode::InvalidArgument, "either timeout or timeoutSeconds"),
            ("exec", json!({"command": "ls", "timeout": 100000}), ErrorCode::InvalidArgument, "between 1 and 86400"),
            ("exec", json!({"command": "ls", "workdir": "/"}), ErrorCode::Denied, "outside the filesystem root"),
            ("exec", json!(["ls"]), ErrorCode::InvalidArgument, "exec: arguments must be an object, got array"),
            ("read", json!({}), ErrorCode::InvalidArgument, "read.path: required"),
            ("read", Value::Null, ErrorCode::InvalidArgument, "read.path: required"),
            ("read", json!({"path": ""}), ErrorCode::InvalidArgument, "read.path: must not be empty"),
            ("read", json!({"path": "a", "offset": 1}), ErrorCode::InvalidArgument, "read.offset: unknown argument (expected one of path)"),
            ("read", json!({"path": "../x"}), ErrorCode::Denied, "\"..\" is not allowed"),
            ("read", json!({"path": "nope.txt"}), ErrorCode::NotFound, "\"nope.txt\": not found"),
            ("write", json!({"path": "a"}), ErrorCode::InvalidArgument, "write.content: required"),
            ("write", json!({"path": "a", "content": {"x": 1}}), ErrorCode::InvalidArgument, "write.content: expected a string, got object"),
            ("edit", json!({"path": "a", "oldText": "x"}), ErrorCode::InvalidArgument, "edit.newText: required with oldText"),
            ("edit", json!({"path": "a", "oldText": "", "newText": "y"}), ErrorCode::InvalidArgument, "edit.oldText: must not be empty"),
            ("edit", json!({"path": "a", "edits": [{"oldText": "x"}]}), ErrorCode::InvalidArgument, "edit.edits[0].newText: required"),
            ("edit", json!({"path": "a", "edits": [{"oldText": "x", "newText": "y", "z": 1}]}), ErrorCode::InvalidArgument, "edit.edits[0].z: unknown argument"),
            ("edit", json!({"path": "a", "oldText": "x", "newText": "y", "replaceAll": "yes"}), ErrorCode::InvalidArgument, "edit.replaceAll: expected a boolean, got string"),
        ];
        for (tool, args, code, msg) in rows {
            let err = call(&e.server, tool, args.clone()).await.unwrap_err();
            assert_eq!(err.code, code, "{tool} {args}: {}", err.message);
            assert!(err.message.contains(msg), "{tool} {args}: got {:?}, want {msg:?}", err.message);
        }
        assert_eq!(e.server.audit_summary().calls, 26, "every refusal is audited");
    })
    .await;
}

#[tokio::test]
async fn huge_arguments_are_refused_before_running() {
    bounded(async {
        let e = enabled();
        let huge = "x".repeat(17 * 1024 * 1024);
        let err = call(
            &e.server,
            "write",
            json!({"path": "h.txt", "content": huge}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge, "{}", err.message);
        assert!(!e.root().join("h.txt").exists());
        let many: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        let err = call(&e.server, "exec", json!({"argv": many}))
            .await
            .unwrap_err();
        assert!(err.message.contains("too many items"), "{}", err.message);
    })
    .await;
}

#[tokio::test]
async fn binary_files_come_back_as_base64() {
    bounded(async {
        let e = enabled();
        std::fs::write(e.root().join("b.bin"), [0u8, 159, 146, 150]).unwrap();
        let r = call(&e.server, "read", json!({"path": "b.bin"}))
            .await
            .unwrap();
        assert_eq!(r.text, "AJ+Slg==");
        assert_eq!(r.details["encoding"], "base64");
    })
    .await;
}

#[tokio::test]
async fn other_tools_go_to_the_gateway_and_are_audited_when_finished() {
    bounded(async {
        let e = env(json!({"enabled": true, "deny": ["browser"], "maxOutputBytes": 1024}));
        let d = call_with(
            &e.server,
            "web_search",
            json!({"query": "rust"}),
            None,
            watch::channel(false).1,
        )
        .await
        .unwrap();
        let Dispatch::Gateway(g) = d else {
            panic!("expected a gateway dispatch")
        };
        assert_eq!(
            (g.tool.as_str(), &g.args),
            ("web_search", &json!({"query": "rust"}))
        );
        assert_eq!(e.server.audit_summary().calls, 0, "audited when finished");
        let reply = g
            .finish(Ok(ToolReply {
                text: "r".repeat(5000),
                details: json!({}),
            }))
            .unwrap();
        assert!(reply.text.len() <= 1024);
        assert!(reply.text.contains("5000 bytes total"));
        assert_eq!(e.server.audit_summary().ok, 1);

        // Dropped unfinished (the caller went away): audited as cancelled.
        let d = call_with(
            &e.server,
            "web_fetch",
            json!({}),
            None,
            watch::channel(false).1,
        )
        .await
        .unwrap();
        drop(d);
        assert!(e.audit_text().contains("error:CLAWMATRIX_CANCELLED"));

        let err = call(&e.server, "browser", json!({})).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::Denied);
    })
    .await;
}

#[tokio::test]
async fn secrets_in_arguments_never_reach_the_audit_log() {
    bounded(async {
        let e = enabled();
        let secret = "sk-live-4f9b2c7d1e8a6f3b";
        call(
            &e.server,
            "write",
            json!({"path": "env.txt", "content": format!("KEY={secret}")}),
        )
        .await
        .unwrap();
        let _ = call(
            &e.server,
            "exec",
            json!({"command": format!("echo {secret}")}),
        )
        .await;
        let _ = call(&e.server, "read", json!({"path": "env.txt"})).await;
        let _ = call(
            &e.server,
            "edit",
            json!({"path": "env.txt", "oldText": secret, "newText": "x"}),
        )
        .await;
        let log = e.audit_text();
        assert_eq!(log.lines().count(), 4);
        assert!(!log.contains(secret), "{log}");
        assert!(!log.contains("env.txt"), "paths are arguments too: {log}");
        let s = e.server.audit_summary();
        assert_eq!(s.ok, 4);
        assert_eq!(s.by_tool.len(), 4);
    })
    .await;
}

#[tokio::test]
async fn without_any_root_the_file_tools_refuse_clearly() {
    bounded(async {
        let server = ToolServer::new(&config_with(json!({"enabled": true})), None, None);
        for (tool, args) in [
            ("read", json!({"path": "a"})),
            ("exec", json!({"command": "ls"})),
        ] {
            let err = call(&server, tool, args).await.unwrap_err();
            assert_eq!(err.code, ErrorCode::Denied);
            assert!(
                err.message.starts_with("no filesystem root on office-01"),
                "{}",
                err.message
            );
        }
    })
    .await;
}

#[tokio::test]
async fn tool_proxy_root_wins_over_the_workspace() {
    bounded(async {
        let tmp = TempDir::new("serve-root");
        std::fs::create_dir(tmp.join("configured")).unwrap();
        std::fs::create_dir(tmp.join("workspace")).unwrap();
        let root = tmp.join("configured");
        let cfg = config_with(json!({"enabled": true, "root": root.to_str().unwrap()}));
        let server = ToolServer::new(&cfg, Some(tmp.join("workspace")), None);
        call(&server, "write", json!({"path": "f.txt", "content": "c"}))
            .await
            .unwrap();
        assert!(tmp.join("configured/f.txt").exists());
        assert!(!tmp.join("workspace/f.txt").exists());

        let cfg = config_with(json!({"enabled": true, "root": tmp.join("gone").to_str().unwrap()}));
        let server = ToolServer::new(&cfg, Some(tmp.join("workspace")), None);
        let err = call(&server, "read", json!({"path": "f.txt"}))
            .await
            .unwrap_err();
        assert!(err.message.ends_with("(toolProxy.root)"), "{}", err.message);
    })
    .await;
}
