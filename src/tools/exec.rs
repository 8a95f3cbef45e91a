//! Remote `exec`: run a command on this node, stream its output, capture a bounded copy.
//!
//! # How a command runs
//! - [`Command::Shell`] runs `/bin/sh -c <command>`, as 0.1.8 did, so pipes, redirections and
//!   `&&` work; the caller is trusted with a shell (that is what allowing `exec` means).
//!   [`Command::Argv`] runs a program directly with exact arguments, no shell parsing.
//! - stdin is `/dev/null`; the environment is reduced to [`INHERITED_ENV`] (no API keys or
//!   tokens of the gateway); the working directory is inside
//!   the filesystem root (default: the root itself).
//! - The command leads its own process group and runs under a supervisor that keeps every
//!   process it starts findable ([`crate::tools::reaper`]). On timeout or cancel, or when the
//!   call is dropped, all of them get `SIGKILL`: grandchildren (`sh -c 'make & sleep 100'`),
//!   `setsid` daemons and double-forked orphans alike; the call returns at once, whoever still
//!   holds its pipes.
//! - A normal run ends when the command has exited *and* its stdout and stderr are closed: a
//!   background job that keeps the pipes open keeps the call open until the timeout (and is
//!   killed then). Start services detached (`nohup svc >log 2>&1 &`): those outlive a call
//!   that ends normally.
//!
//! # Output
//! Chunks are sent as progress on a bounded channel with `try_send`: when the consumer is slow,
//! chunks are dropped and counted, the child is never blocked. Progress and capture stop at
//! the same per-stream budget. The captured copy is bounded by `max_output_bytes` for stdout
//! and stderr together: each stream is guaranteed half, and a stream that needs less leaves
//! the rest to the other; the head of each stream is kept (cut at a UTF-8 boundary) and a
//! marker `[clawmatrix: output truncated: <total> bytes total, <kept> shown]` states the
//! original size. Output that is not UTF-8 (or holds NUL) is returned lossily decoded with
//! `binary: true`.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, ErrorCode};
use crate::tools::paths::Root;
use crate::tools::reaper::Tree;

/// Default timeout of one command, in seconds: 30 minutes, as 0.1.8 (`cluster_exec.timeout`).
pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;
/// Longest timeout a caller may ask for, in seconds: 24 hours; longer jobs belong in a service.
pub const MAX_TIMEOUT_SECS: u64 = 24 * 60 * 60;
/// Most arguments in [`Command::Argv`]; far above any real command line.
pub const MAX_ARGV: usize = 4096;
/// Read size from the child's pipes, in bytes.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A shell command line, run as `/bin/sh -c <line>` (0.1.8 behaviour).
    Shell(String),
    /// A program and its arguments, run directly (no shell). Never empty.
    Argv(Vec<String>),
}

/// A validated exec request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// What to run.
    pub command: Command,
    /// Resolved working directory (inside the root).
    pub workdir: PathBuf,
    /// Time after which every process of the command is killed.
    pub timeout: Duration,
    /// Budget for the captured stdout + stderr, in bytes.
    pub max_output_bytes: usize,
}

impl ExecRequest {
    /// Validates a request against the root: `workdir` (relative to the root, default the root)
    /// must resolve to a directory inside it; `timeout_secs` defaults to
    /// [`DEFAULT_TIMEOUT_SECS`] and must be 1..=[`MAX_TIMEOUT_SECS`].
    pub fn new(
        root: &Root,
        command: Command,
        workdir: Option<&str>,
        timeout_secs: Option<u64>,
        max_output_bytes: usize,
    ) -> Result<ExecRequest, Error> {
        let invalid = |m: String| Err(Error::new(ErrorCode::InvalidArgument, m));
        match &command {
            Command::Shell(line) => {
                if line.trim().is_empty() {
                    return invalid("exec.command: must not be empty".into());
                }
                if line.contains('\0') {
                    return invalid("exec.command: must not contain NUL".into());
                }
            }
            Command::Argv(argv) => {
                if argv.is_empty() || argv[0].is_empty() {
                    return invalid("exec.argv: must start with a program name".into());
                }
                if argv.len() > MAX_ARGV {
                    return invalid(format!(
                        "exec.argv: too many arguments ({}, limit {MAX_ARGV})",
                        argv.len()
                    ));
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return invalid("exec.argv: arguments must not contain NUL".into());
                }
            }
        }
        let secs = timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if secs == 0 || secs > MAX_TIMEOUT_SECS {
            return invalid(format!(
                "exec.timeout: must be between 1 and {MAX_TIMEOUT_SECS} seconds, got {secs}"
            ));
        }
        let workdir = root.resolve_dir(workdir)?;
        Ok(ExecRequest {
            command,
            workdir,
            timeout: Duration::from_secs(secs),
            max_output_bytes,
        })
    }
}

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl StreamKind {
    /// `"stdout"` or `"stderr"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// A piece of output, sent as progress while the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecChunk {
    /// Its stream.
    pub stream: StreamKind,
    /// The raw bytes (not necessarily UTF-8, not aligned to lines or characters).
    pub bytes: Vec<u8>,
}

/// How a command ended, with its captured output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Exit status, if it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did (9 after a timeout or cancel).
    pub signal: Option<i32>,
    /// The timeout fired and every process of the command was killed.
    pub timed_out: bool,
    /// The cancel signal fired and every process of the command was killed.
    pub cancelled: bool,
    /// Captured stdout (lossy UTF-8), with the truncation marker if cut.
    pub stdout: String,
    /// Captured stderr (lossy UTF-8), with the truncation marker if cut.
    pub stderr: String,
    /// Either stream was cut.
    pub truncated: bool,
    /// Either stream was not valid UTF-8 text (or contained NUL).
    pub binary: bool,
    /// Bytes the command wrote to stdout in total.
    pub stdout_bytes: u64,
    /// Bytes the command wrote to stderr in total.
    pub stderr_bytes: u64,
    /// Progress chunks dropped because the consumer was slow.
    pub dropped_progress: u64,
    /// Wall time from spawn to the end, in ms.
    pub duration_ms: u64,
}

/// One pipe being read.
struct Pipe {
    kind: StreamKind,
    captured: Vec<u8>,
    total: u64,
    open: bool,
}

impl Pipe {
    fn new(kind: StreamKind) -> Pipe {
        Pipe {
            kind,
            captured: Vec::new(),
            total: 0,
            open: true,
        }
    }

    /// Keeps what fits in `budget`; returns the kept part for progress.
    fn take<'a>(&mut self, data: &'a [u8], budget: usize) -> &'a [u8] {
        self.total += data.len() as u64;
        let room = budget.saturating_sub(self.captured.len());
        let kept = &data[..data.len().min(room)];
        self.captured.extend_from_slice(kept);
        kept
    }
}

/// Variables a remote command inherits from the gateway; everything else (API keys, tokens,
/// `OPENCLAW_*`) is withheld. A caller who needs more sets it in the command line.
pub const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
];

fn inherited_env(name: &str) -> bool {
    INHERITED_ENV.contains(&name) || name.starts_with("LC_")
}

/// Runs the request to completion, timeout or cancel (`cancel` turning `true`).
///
/// Progress goes to `progress` with `try_send` (dropped and counted when full). Fails only if
/// the command cannot be started; a non-zero exit, a timeout or a cancel is an [`ExecOutcome`].
pub async fn run(
    req: ExecRequest,
    progress: Option<mpsc::Sender<ExecChunk>>,
    cancel: watch::Receiver<bool>,
) -> Result<ExecOutcome, Error> {
    let (cmd, program) = command(&req);
    let started = Instant::now();
    // Dropping `tree` before it is killed or released (an error return, the call dropped)
    // kills every process the command started.
    let mut tree = Tree::spawn(cmd).map_err(|e| spawn_error(&program, &e))?;
    let child = tree.child_mut();
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::new(ErrorCode::Internal, "exec: child pipes missing"));
    };
    // Each stream may fill the whole budget while running; the fair split happens at the end.
    let mut capture = Capture::new(req.max_output_bytes, progress);
    let mut end = wait(&mut tree, out, err, &mut capture, cancel, req.timeout).await?;
    if end.timed_out || end.cancelled {
        // Everything the command started dies, however it detached; the output pipes are not
        // waited for.
        let killed = tree.kill().await;
        end.status = end.status.or(killed);
    } else {
        tree.release().await;
    }
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(capture.outcome(end, duration_ms))
}

/// The process to start for `req` (clean environment, workdir, `/dev/null` stdin, piped
/// output) and the program name errors show.
fn command(req: &ExecRequest) -> (tokio::process::Command, String) {
    let mut cmd = match &req.command {
        Command::Shell(line) => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(line);
            c
        }
        Command::Argv(argv) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    // A clean environment with only the variables a shell needs: the gateway's own environment
    // holds provider API keys and its token, which must never reach a remote caller.
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        if k.to_str().is_some_and(inherited_env) {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(&req.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // On Linux the tree's own Drop ends the supervisor once the tree is killed (reaper.rs).
    #[cfg(not(target_os = "linux"))]
    cmd.kill_on_drop(true);
    let program = match &req.command {
        Command::Shell(_) => "/bin/sh".to_owned(),
        Command::Argv(argv) => argv[0].clone(),
    };
    (cmd, program)
}

/// How the wait for a command ended.
struct Ending {
    /// The exit status, if it was seen.
    status: Option<std::process::ExitStatus>,
    timed_out: bool,
    cancelled: bool,
}

/// Reads both pipes into `capture` until the command has exited and both pipes are closed,
/// or the timeout or a cancel comes first. Fails only if waiting for the exit fails.
async fn wait(
    tree: &mut Tree,
    mut out: tokio::process::ChildStdout,
    mut err: tokio::process::ChildStderr,
    capture: &mut Capture,
    mut cancel: watch::Receiver<bool>,
    timeout: Duration,
) -> Result<Ending, Error> {
    let mut buf_out = vec![0u8; READ_CHUNK_BYTES];
    let mut buf_err = vec![0u8; READ_CHUNK_BYTES];
    let mut status = None;
    let mut timed_out = false;
    let mut cancelled = *cancel.borrow();
    let mut cancel_live = true;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);

    while !cancelled && (status.is_none() || capture.pipes[0].open || capture.pipes[1].open) {
        // Priority: cancel, then the deadline, then output, then the exit status (read the
        // pipes before noticing the exit so no output is lost).
        let (kind, read) = tokio::select! {
            biased;
            changed = cancel.changed(), if cancel_live => {
                match changed {
                    Ok(()) => cancelled = *cancel.borrow_and_update(),
                    // The canceller is gone: nobody can cancel any more.
                    Err(_) => cancel_live = false,
                }
                continue;
            }
            () = &mut deadline => {
                timed_out = true;
                break;
            }
            r = out.read(&mut buf_out), if capture.pipes[0].open => (0usize, r),
            r = err.read(&mut buf_err), if capture.pipes[1].open => (1usize, r),
            s = tree.command_exit(), if status.is_none() => {
                match s {
                    Ok(s) => status = Some(s),
                    Err(e) => {
                        return Err(Error::new(ErrorCode::Io, format!("exec: wait failed: {e}")));
                    }
                }
                continue;
            }
        };
        match read {
            Ok(0) | Err(_) => capture.pipes[kind].open = false,
            Ok(n) => {
                let data = if kind == 0 {
                    &buf_out[..n]
                } else {
                    &buf_err[..n]
                };
                capture.keep(kind, data);
            }
        }
    }
    Ok(Ending {
        status,
        timed_out,
        cancelled,
    })
}

/// Both pipes' captured output, and the progress sent from it.
struct Capture {
    pipes: [Pipe; 2],
    /// Budget for stdout + stderr together.
    budget: usize,
    /// `None` once the receiver is gone.
    progress: Option<mpsc::Sender<ExecChunk>>,
    dropped_progress: u64,
}

impl Capture {
    fn new(budget: usize, progress: Option<mpsc::Sender<ExecChunk>>) -> Capture {
        Capture {
            pipes: [Pipe::new(StreamKind::Stdout), Pipe::new(StreamKind::Stderr)],
            budget,
            progress,
            dropped_progress: 0,
        }
    }

    /// Keeps what of `data` fits in pipe `kind`'s budget and sends that as progress (dropped
    /// and counted when the channel is full).
    fn keep(&mut self, kind: usize, data: &[u8]) {
        let pipe = &mut self.pipes[kind];
        let kept = pipe.take(data, self.budget);
        if kept.is_empty() {
            return;
        }
        if let Some(tx) = &self.progress {
            let chunk = ExecChunk {
                stream: pipe.kind,
                bytes: kept.to_vec(),
            };
            match tx.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.dropped_progress += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => self.progress = None,
            }
        }
    }

    /// The outcome: the budget split fairly between the streams, each rendered as text.
    fn outcome(self, end: Ending, duration_ms: u64) -> ExecOutcome {
        let [p_out, p_err] = self.pipes;
        let (keep_out, keep_err) =
            split_budget(p_out.captured.len(), p_err.captured.len(), self.budget);
        let (stdout, cut_out, bin_out) = render(&p_out.captured, keep_out, p_out.total);
        let (stderr, cut_err, bin_err) = render(&p_err.captured, keep_err, p_err.total);
        ExecOutcome {
            exit_code: end.status.and_then(|s| s.code()),
            signal: end.status.and_then(|s| s.signal()),
            timed_out: end.timed_out,
            cancelled: end.cancelled,
            stdout,
            stderr,
            truncated: cut_out || cut_err,
            binary: bin_out || bin_err,
            stdout_bytes: p_out.total,
            stderr_bytes: p_err.total,
            dropped_progress: self.dropped_progress,
            duration_ms,
        }
    }
}

/// How many bytes of each stream to keep: each stream is guaranteed half the budget, and the
/// part a stream does not need goes to the other.
pub fn split_budget(out_len: usize, err_len: usize, budget: usize) -> (usize, usize) {
    if out_len + err_len <= budget {
        return (out_len, err_len);
    }
    let half = budget / 2;
    let keep_out = out_len.min(half.max(budget.saturating_sub(err_len)));
    let keep_err = err_len.min(budget - keep_out);
    (keep_out, keep_err)
}

/// Text of a captured stream cut to `keep` bytes: `(text, truncated, binary)`.
fn render(captured: &[u8], keep: usize, total: u64) -> (String, bool, bool) {
    let truncated = (captured.len() as u64) < total || keep < captured.len();
    let mut end = keep.min(captured.len());
    if truncated {
        end = utf8_floor(captured, end);
    }
    let kept = &captured[..end];
    let binary = std::str::from_utf8(kept).is_err() || kept.contains(&0);
    let mut text = String::from_utf8_lossy(kept).into_owned();
    if truncated {
        text.push_str(&truncation_marker(total, end as u64));
    }
    (text, truncated, binary)
}

/// The marker appended to cut output.
pub fn truncation_marker(total: u64, shown: u64) -> String {
    format!("\n[clawmatrix: output truncated: {total} bytes total, {shown} shown]")
}

/// The largest index `<= end` that does not split a UTF-8 sequence (when the data is UTF-8).
pub(crate) fn utf8_floor(data: &[u8], end: usize) -> usize {
    let end = end.min(data.len());
    if end == data.len() {
        return end;
    }
    // Back up over at most 3 continuation bytes (0b10xx_xxxx) to a sequence start.
    let mut i = end;
    while i > 0 && end - i < 3 && (data[i] & 0xC0) == 0x80 {
        i -= 1;
    }
    if (data[i] & 0xC0) == 0x80 {
        end
    } else {
        i
    }
}

fn spawn_error(program: &str, e: &std::io::Error) -> Error {
    let shown = format!("{program:?}");
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::new(
            ErrorCode::NotFound,
            format!("exec: cannot run {shown}: program not found"),
        ),
        std::io::ErrorKind::PermissionDenied => Error::new(
            ErrorCode::Io,
            format!("exec: cannot run {shown}: permission denied"),
        ),
        _ => Error::new(
            ErrorCode::Io,
            format!(
                "exec: cannot run {shown}: {}",
                crate::tools::paths::io_reason(e)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_split_is_fair_and_gives_unused_room_away() {
        assert_eq!(split_budget(10, 10, 100), (10, 10));
        assert_eq!(split_budget(1000, 1000, 100), (50, 50));
        assert_eq!(split_budget(1000, 10, 100), (90, 10));
        assert_eq!(split_budget(10, 1000, 100), (10, 90));
        assert_eq!(split_budget(1000, 0, 100), (100, 0));
    }

    #[test]
    fn cuts_never_split_a_utf8_character() {
        let s = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        for end in 0..=s.len() {
            let e = utf8_floor(s, end);
            assert!(std::str::from_utf8(&s[..e]).is_ok(), "end {end} -> {e}");
            assert!(end - e <= 3);
        }
    }

    #[test]
    fn render_marks_truncation_with_the_original_size() {
        let (text, cut, bin) = render(b"hello world", 5, 5_242_880);
        assert!(cut && !bin);
        assert_eq!(
            text,
            "hello\n[clawmatrix: output truncated: 5242880 bytes total, 5 shown]"
        );
    }
}
