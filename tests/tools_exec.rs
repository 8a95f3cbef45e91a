//! Remote exec: output and exit status, argv without a shell, timeout and cancel killing the
//! whole process tree, the output cap and its marker, binary output, progress that never
//! blocks the child, workdir checks.

#![cfg(unix)]

mod tools_support;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use clawmatrix::error::ErrorCode;
use clawmatrix::tools::exec::{self, Command, ExecChunk, ExecOutcome, ExecRequest, StreamKind};
use clawmatrix::tools::paths::Root;
use tokio::sync::{mpsc, watch};
use tools_support::{live_group_members, TempDir};

/// Every test that runs processes is bounded.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .expect("test exceeded 15 s")
}

fn shell(root: &Path, line: &str, timeout: Duration, max: usize) -> ExecRequest {
    ExecRequest {
        command: Command::Shell(line.to_owned()),
        workdir: root.to_path_buf(),
        timeout,
        max_output_bytes: max,
    }
}

fn no_cancel() -> watch::Receiver<bool> {
    // The sender is dropped at once: nobody can cancel.
    watch::channel(false).1
}

async fn run_shell(root: &Path, line: &str) -> ExecOutcome {
    exec::run(
        shell(root, line, Duration::from_secs(10), 1 << 20),
        None,
        no_cancel(),
    )
    .await
    .expect("runs")
}

/// Waits (up to 3 s) for the group to have no live member.
async fn assert_group_gone(pgid: i32) {
    for _ in 0..60 {
        if live_group_members(pgid).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "process group {pgid} still has live members: {:?}",
        live_group_members(pgid)
    );
}

/// Runs `line` (which must print `$$` first) with progress, returning the group id.
async fn first_line_pid(rx: &mut mpsc::Receiver<ExecChunk>) -> i32 {
    let mut seen = Vec::new();
    while let Some(chunk) = rx.recv().await {
        seen.extend_from_slice(&chunk.bytes);
        if let Some(nl) = seen.iter().position(|b| *b == b'\n') {
            return String::from_utf8_lossy(&seen[..nl])
                .trim()
                .parse()
                .expect("pid line");
        }
    }
    panic!("no pid printed");
}

#[tokio::test]
async fn echo_returns_stdout_and_exit_code_zero() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let out = run_shell(tmp.path(), "echo hello; echo oops >&2").await;
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "oops\n");
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(out.signal, None);
        assert!(!out.timed_out && !out.cancelled && !out.truncated && !out.binary);
        assert_eq!(out.stdout_bytes, 6);
    })
    .await;
}

#[tokio::test]
async fn a_failing_command_reports_its_exit_code() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let out = run_shell(tmp.path(), "exit 3").await;
        assert_eq!(out.exit_code, Some(3));
        let out = run_shell(tmp.path(), "kill -TERM $$").await;
        assert_eq!(out.exit_code, None);
        assert_eq!(out.signal, Some(15));
    })
    .await;
}

#[tokio::test]
async fn argv_runs_without_a_shell() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let req = ExecRequest {
            command: Command::Argv(vec!["echo".into(), "$HOME; ls".into()]),
            ..shell(tmp.path(), "", Duration::from_secs(10), 4096)
        };
        let out = exec::run(req, None, no_cancel()).await.unwrap();
        assert_eq!(out.stdout, "$HOME; ls\n");
    })
    .await;
}

#[tokio::test]
async fn a_missing_program_is_not_found() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let req = ExecRequest {
            command: Command::Argv(vec!["/nonexistent/clawmatrix-nope".into()]),
            ..shell(tmp.path(), "", Duration::from_secs(10), 4096)
        };
        let err = exec::run(req, None, no_cancel()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound, "{}", err.message);
    })
    .await;
}

#[tokio::test]
async fn timeout_kills_the_child_and_its_grandchildren() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let (tx, mut rx) = mpsc::channel(64);
        let req = shell(
            tmp.path(),
            "echo $$; sleep 100 & sleep 100 & sleep 100",
            Duration::from_millis(700),
            4096,
        );
        let run = tokio::spawn(exec::run(req, Some(tx), no_cancel()));
        let pgid = first_line_pid(&mut rx).await;
        assert!(
            !live_group_members(pgid).is_empty(),
            "group alive while running"
        );
        let out = run.await.unwrap().unwrap();
        assert!(out.timed_out);
        assert_eq!(out.signal, Some(9));
        assert!(out.duration_ms < 5000, "{}", out.duration_ms);
        assert_group_gone(pgid).await;
    })
    .await;
}

#[tokio::test]
async fn a_background_job_holding_the_pipes_is_killed_at_the_timeout() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let (tx, mut rx) = mpsc::channel(64);
        // The shell exits at once; its grandchild keeps stdout open.
        let req = shell(
            tmp.path(),
            "echo $$; sleep 100 &",
            Duration::from_millis(500),
            4096,
        );
        let run = tokio::spawn(exec::run(req, Some(tx), no_cancel()));
        let pgid = first_line_pid(&mut rx).await;
        let out = run.await.unwrap().unwrap();
        assert!(out.timed_out);
        assert_eq!(out.exit_code, Some(0), "the shell itself exited normally");
        assert_group_gone(pgid).await;
    })
    .await;
}

#[tokio::test]
async fn cancel_kills_the_process_tree() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let (tx, mut rx) = mpsc::channel(64);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let req = shell(
            tmp.path(),
            "echo $$; (sleep 100; echo never) & sleep 100",
            Duration::from_secs(60),
            4096,
        );
        let run = tokio::spawn(exec::run(req, Some(tx), cancel_rx));
        let pgid = first_line_pid(&mut rx).await;
        cancel_tx.send(true).unwrap();
        let out = run.await.unwrap().unwrap();
        assert!(out.cancelled && !out.timed_out);
        assert_eq!(out.signal, Some(9));
        assert_group_gone(pgid).await;
    })
    .await;
}

#[tokio::test]
async fn output_over_the_cap_is_cut_with_a_marker_stating_the_original_size() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let req = shell(
            tmp.path(),
            "head -c 100000 /dev/zero | tr '\\0' a",
            Duration::from_secs(10),
            4096,
        );
        let out = exec::run(req, None, no_cancel()).await.unwrap();
        assert!(out.truncated);
        assert_eq!(out.stdout_bytes, 100_000);
        let marker = "\n[clawmatrix: output truncated: 100000 bytes total, 4096 shown]";
        assert!(out.stdout.ends_with(marker), "{:?}", &out.stdout[4000..]);
        assert_eq!(out.stdout.len(), 4096 + marker.len());
        assert_eq!(out.exit_code, Some(0), "the command ran to the end");
    })
    .await;
}

#[tokio::test]
async fn the_cap_is_split_fairly_between_stdout_and_stderr() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let line = "head -c 10000 /dev/zero | tr '\\0' o; head -c 10000 /dev/zero | tr '\\0' e >&2";
        let out = exec::run(
            shell(tmp.path(), line, Duration::from_secs(10), 4096),
            None,
            no_cancel(),
        )
        .await
        .unwrap();
        assert!(out.stdout.starts_with(&"o".repeat(2048)));
        assert!(out.stdout.contains("10000 bytes total, 2048 shown"));
        assert!(out.stderr.contains("10000 bytes total, 2048 shown"));
        // A short stream leaves its room to the other.
        let line = "echo short >&2; head -c 10000 /dev/zero | tr '\\0' o";
        let out = exec::run(
            shell(tmp.path(), line, Duration::from_secs(10), 4096),
            None,
            no_cancel(),
        )
        .await
        .unwrap();
        assert_eq!(out.stderr, "short\n");
        assert!(
            out.stdout.contains("10000 bytes total, 4090 shown"),
            "{}",
            out.stdout.len()
        );
    })
    .await;
}

#[tokio::test]
async fn binary_output_is_flagged_and_decoded_lossily() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let out = run_shell(tmp.path(), "printf 'ab\\377\\376\\000cd'").await;
        assert!(out.binary);
        assert_eq!(out.stdout, "ab\u{fffd}\u{fffd}\0cd");
        let out = run_shell(tmp.path(), "printf 'caf\\303\\251'").await;
        assert!(!out.binary, "valid UTF-8 is text");
        assert_eq!(out.stdout, "café");
    })
    .await;
}

#[tokio::test]
async fn progress_streams_chunks_in_order() {
    bounded(async {
        let tmp = TempDir::new("exec");
        let (tx, mut rx) = mpsc::channel(64);
        let req = shell(
            tmp.path(),
            "echo one; sleep 0.1; echo two >&2",
            Duration::from_secs(10),
            4096,
        );
        let out = exec::run(req, Some(tx), no_cancel()).await.unwrap();
        let mut chunks = Vec::new();
        while let Ok(c) = rx.try_recv() {
            chunks.push(c);
        }
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(chunks[0].stream, StreamKind::Stdout);
        assert_eq!(chunks[0].bytes, b"one\n");
        assert_eq!(chunks[1].stream, StreamKind::Stderr);
        assert_eq!(out.dropped_progress, 0);
    })
    .await;
}

#[tokio::test]
async fn a_slow_progress_consumer_never_blocks_the_child() {
    bounded(async {
        let tmp = TempDir::new("exec");
        // Capacity 1 and nobody reading: every chunk after the first is dropped and counted.
        let (tx, _rx) = mpsc::channel(1);
        let req = shell(
            tmp.path(),
            "for i in $(seq 1 200); do echo line $i; sleep 0.001; done",
            Duration::from_secs(10),
            1 << 20,
        );
        let out = exec::run(req, Some(tx), no_cancel()).await.unwrap();
        assert_eq!(out.exit_code, Some(0));
        assert!(out.stdout.ends_with("line 200\n"));
        assert!(out.dropped_progress > 0);
    })
    .await;
}

#[tokio::test]
async fn workdir_defaults_to_the_root_and_may_not_leave_it() {
    bounded(async {
        let tmp = TempDir::new("exec");
        std::fs::create_dir(tmp.join("sub")).unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let shell_cmd = || Command::Shell("pwd".into());
        let req = ExecRequest::new(&root, shell_cmd(), None, None, 4096).unwrap();
        assert_eq!(req.timeout, Duration::from_secs(1800), "default timeout");
        let out = exec::run(req, None, no_cancel()).await.unwrap();
        assert_eq!(out.stdout.trim_end(), root.path().to_str().unwrap());

        let req = ExecRequest::new(&root, shell_cmd(), Some("sub"), Some(5), 4096).unwrap();
        let out = exec::run(req, None, no_cancel()).await.unwrap();
        assert!(out.stdout.trim_end().ends_with("/sub"));

        for (workdir, code) in [
            ("/", ErrorCode::Denied),
            ("../", ErrorCode::Denied),
            ("missing", ErrorCode::NotFound),
        ] {
            let err = ExecRequest::new(&root, shell_cmd(), Some(workdir), None, 4096).unwrap_err();
            assert_eq!(err.code, code, "{workdir}: {}", err.message);
        }
    })
    .await;
}

#[test]
fn bad_exec_requests_are_refused() {
    let tmp = TempDir::new("exec");
    let root = Root::open(tmp.path()).unwrap();
    let cases: Vec<(Command, Option<u64>, &str)> = vec![
        (
            Command::Shell("  ".into()),
            None,
            "exec.command: must not be empty",
        ),
        (Command::Shell("a\0b".into()), None, "must not contain NUL"),
        (
            Command::Argv(vec![]),
            None,
            "exec.argv: must start with a program name",
        ),
        (
            Command::Argv(vec![String::new()]),
            None,
            "must start with a program name",
        ),
        (
            Command::Shell("ls".into()),
            Some(0),
            "exec.timeout: must be between 1 and 86400",
        ),
        (Command::Shell("ls".into()), Some(86_401), "got 86401"),
    ];
    for (cmd, timeout, want) in cases {
        let err = ExecRequest::new(&root, cmd.clone(), None, timeout, 4096).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument, "{cmd:?}");
        assert!(err.message.contains(want), "{cmd:?}: {}", err.message);
    }
}

#[tokio::test]
async fn the_gateway_environment_does_not_reach_remote_commands() {
    bounded(async {
        // Set in this test process: a remote command must see PATH/HOME but never keys/tokens.
        std::env::set_var("CLAWMATRIX_TEST_API_KEY", "sk-should-not-leak");
        std::env::set_var("OPENCLAW_GATEWAY_TOKEN", "tok-should-not-leak");
        let tmp = TempDir::new("exec-env");
        let out = run_shell(tmp.path(), "env").await;
        assert_eq!(out.exit_code, Some(0));
        assert!(out.stdout.contains("PATH="), "{}", out.stdout);
        assert!(!out.stdout.contains("should-not-leak"), "{}", out.stdout);
        assert!(!out.stdout.contains("OPENCLAW_"), "{}", out.stdout);
    })
    .await;
}
