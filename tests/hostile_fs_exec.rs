//! Hostile filesystems and hostile commands against the serving node's native tools.
//!
//! - While `read` / `write` / `edit` run thousands of times, another thread swaps a directory
//!   inside the root for a symlink to a directory outside it (an atomic `RENAME_EXCHANGE`, in a
//!   tight loop). No call may return outside content or change anything outside, through the
//!   `openat2` resolver or the per-component walk used where `openat2` is missing.
//! - `exec` timeouts and cancels kill every process the command started, including ones that
//!   left the process group with `setsid` and double-forked orphans, and return promptly even
//!   when such a daemon holds stdout open. Processes are found by a marker in their environment.

#![cfg(target_os = "linux")]

mod loopback_common;
mod tools_support;

use std::ffi::CString;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::error::{Error, ErrorCode};
use clawmatrix::tools::exec::{self, Command, ExecRequest};
use clawmatrix::tools::fs::{self, Replacement};
use clawmatrix::tools::paths::Root;
use clawmatrix::tools::remote::{ToolCaller, ToolEvent};
use clawmatrix::tools::ToolOutput;
use loopback_common::{config, is_direct, reserve_port, start, start_with, wait_for};
use serde_json::{json, Value};
use tokio::sync::watch;
use tools_support::TempDir;

const MAX: usize = 1 << 20;
/// How long each race runs at most.
const RACE_FOR: Duration = Duration::from_secs(3);
/// How many rounds of calls each race makes at most.
const RACE_ROUNDS: usize = 20_000;
const SECRET: &str = "OUTSIDE-SECRET";

/// `<tmp>/root` with `d/` (a directory holding `secret.txt` = "inside" and `e.txt`) and `d-swap`
/// (a symlink to `<tmp>/outside`, which holds `secret.txt` = [`SECRET`] and `e.txt`).
struct Arena {
    tmp: TempDir,
    root_dir: PathBuf,
}

impl Arena {
    fn new() -> Arena {
        let tmp = TempDir::new("hostile-fs");
        let root_dir = tmp.join("root");
        let outside = tmp.join("outside");
        std::fs::create_dir_all(root_dir.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root_dir.join("d/secret.txt"), "inside").unwrap();
        std::fs::write(root_dir.join("d/e.txt"), "value=0").unwrap();
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        std::fs::write(outside.join("e.txt"), "value=0").unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("d-swap")).unwrap();
        Arena { tmp, root_dir }
    }

    fn outside(&self) -> PathBuf {
        self.tmp.join("outside")
    }

    /// The outside directory is exactly as created: same names, same content.
    fn outside_untouched(&self) -> Result<(), String> {
        let mut names: Vec<String> = std::fs::read_dir(self.outside())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if names != ["e.txt", "secret.txt"] {
            return Err(format!("the outside directory now holds {names:?}"));
        }
        let e = std::fs::read_to_string(self.outside().join("e.txt")).unwrap();
        if e != "value=0" {
            return Err(format!("outside e.txt was rewritten to {e:?}"));
        }
        Ok(())
    }
}

/// Exchanges `root/d` and `root/d-swap` (a directory and a symlink out) until stopped.
struct Swapper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Swapper {
    fn start(root_dir: &Path) -> Swapper {
        let a = CString::new(root_dir.join("d").as_os_str().as_bytes()).unwrap();
        let b = CString::new(root_dir.join("d-swap").as_os_str().as_bytes()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                assert_eq!(r, 0, "renameat2: {}", std::io::Error::last_os_error());
                swaps += 1;
            }
            swaps
        });
        Swapper {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    ok: usize,
    refused: usize,
}

/// Runs read, write (an existing parent and a new one) and edit against `root` while the
/// directory `d` flips between a real directory and a symlink out of the root.
fn race(arena: &Arena, root: &Root) -> Tally {
    let swapper = Swapper::start(&arena.root_dir);
    let mut t = Tally::default();
    let t0 = Instant::now();
    let accept = |t: &mut Tally, what: &str, r: Result<(), Error>| match r {
        Ok(()) => t.ok += 1,
        // Refused while `d` was the symlink out, or mid-swap; never another kind of error.
        Err(e) if matches!(e.code, ErrorCode::Denied | ErrorCode::NotFound) => t.refused += 1,
        Err(e) => panic!("{what}: unexpected {:?}: {}", e.code, e.message),
    };
    while t0.elapsed() < RACE_FOR && t.rounds < RACE_ROUNDS {
        let i = t.rounds;
        let r = fs::read(root, "d/secret.txt", MAX).map(|r| {
            assert!(
                !r.content.contains(SECRET),
                "read leaked the outside file after {i} rounds: {:?}",
                r.content
            );
            assert_eq!(r.content, "inside");
        });
        accept(&mut t, "read", r);
        let r = fs::write(root, "d/w.txt", b"written", MAX).map(drop);
        accept(&mut t, "write", r);
        let r = fs::write(root, &format!("d/new-{}/w.txt", i % 64), b"x", MAX).map(drop);
        accept(&mut t, "write with a new parent", r);
        let (old, new) = if i % 2 == 0 {
            ("value=0", "value=1")
        } else {
            ("value=1", "value=0")
        };
        let rep = [Replacement {
            old_text: old.into(),
            new_text: new.into(),
        }];
        match fs::edit(root, "d/e.txt", &rep, false, MAX) {
            // The inside copy may be at the other value when an earlier round was refused.
            Err(e) if e.code == ErrorCode::InvalidArgument => t.refused += 1,
            r => accept(&mut t, "edit", r.map(drop)),
        }
        if let Err(why) = arena.outside_untouched() {
            panic!("a call reached outside the root after {i} rounds: {why}");
        }
        t.rounds += 1;
    }
    let swaps = swapper.finish();
    eprintln!("{t:?} in {:?} with {swaps} swaps", t0.elapsed());
    arena.outside_untouched().unwrap();
    assert!(swaps > 100, "the swapper barely ran ({swaps} swaps)");
    assert!(
        t.ok > 0 && t.refused > 0,
        "the race was not exercised: {t:?}"
    );
    t
}

#[test]
fn file_tools_never_leave_the_root_while_a_directory_is_swapped_for_a_symlink() {
    let arena = Arena::new();
    let root = Root::open(&arena.root_dir).unwrap();
    race(&arena, &root);
}

#[test]
fn the_walk_without_openat2_never_leaves_the_root_while_a_directory_is_swapped_for_a_symlink() {
    let arena = Arena::new();
    let root = Root::open(&arena.root_dir).unwrap().without_openat2();
    race(&arena, &root);
}

/// One outcome of a file tool: the content read (or "ok" for a write), or the error code.
fn outcome<T>(r: Result<T, Error>, show: impl Fn(T) -> String) -> String {
    match r {
        Ok(v) => show(v),
        Err(e) => format!("{:?}", e.code),
    }
}

/// Every kind of path the rules distinguish, read and written through `root`.
fn semantics(tmp: &TempDir, root: &Root) -> Vec<(String, String)> {
    let r = root.path();
    let outside = tmp.join("outside");
    std::fs::write(r.join("a.txt"), "a").unwrap();
    std::fs::create_dir(r.join("real")).unwrap();
    std::fs::write(r.join("real/x.txt"), "x").unwrap();
    let link =
        |target: &Path, name: &str| std::os::unix::fs::symlink(target, r.join(name)).unwrap();
    link(Path::new("real"), "alias");
    link(&r.join("real"), "abs-alias");
    link(Path::new("real/../a.txt"), "climb");
    link(Path::new("../outside"), "up");
    link(&outside.join("secret.txt"), "abs-out");
    link(&outside.join("later.txt"), "dangling-out");
    link(Path::new("sub/later.txt"), "dangling-in");
    link(Path::new("loop2"), "loop1");
    link(Path::new("loop1"), "loop2");
    std::fs::hard_link(outside.join("secret.txt"), r.join("hard.txt")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(r.join("fifo"))
        .status()
        .unwrap();
    assert!(status.success());

    let mut got = Vec::new();
    for path in [
        "a.txt",
        "alias/x.txt",
        "abs-alias/x.txt",
        "climb",
        "up/secret.txt",
        "abs-out",
        "dangling-out",
        "dangling-in",
        "hard.txt",
        "fifo",
        "loop1",
        "a.txt/x",
        "real",
    ] {
        let r = fs::read(root, path, MAX);
        got.push((format!("read {path}"), outcome(r, |r| r.content)));
    }
    for path in [
        "alias/new.txt",
        "abs-alias/new2.txt",
        "dangling-in",
        "n1/n2/n3/f.txt",
        "dangling-out",
        "abs-out",
        "up/x.txt",
        "up/deep/x.txt",
        "hard.txt",
        "fifo",
        "real",
    ] {
        let w = fs::write(root, path, b"w", MAX);
        got.push((format!("write {path}"), outcome(w, |_| "ok".into())));
    }
    for (path, want) in [
        ("real/new.txt", "w"),
        ("real/new2.txt", "w"),
        ("sub/later.txt", "w"),
        ("n1/n2/n3/f.txt", "w"),
    ] {
        assert_eq!(
            std::fs::read_to_string(r.join(path)).unwrap(),
            want,
            "{path}"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["secret.txt"], "nothing written outside");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        SECRET
    );
    got
}

#[test]
fn openat2_and_the_walk_give_the_same_answers_for_every_kind_of_path() {
    let run = |walk_only: bool| {
        let tmp = TempDir::new("hostile-fs-semantics");
        std::fs::create_dir_all(tmp.join("root")).unwrap();
        std::fs::create_dir_all(tmp.join("outside")).unwrap();
        std::fs::write(tmp.join("outside/secret.txt"), SECRET).unwrap();
        let root = Root::open(tmp.join("root")).unwrap();
        let root = if walk_only {
            root.without_openat2()
        } else {
            root
        };
        semantics(&tmp, &root)
    };
    let with_openat2 = run(false);
    let walk_only = run(true);
    assert_eq!(with_openat2, walk_only);
    let want = [
        ("read a.txt", "a"),
        ("read alias/x.txt", "x"),
        ("read abs-alias/x.txt", "x"),
        ("read climb", "a"),
        ("read up/secret.txt", "Denied"),
        ("read abs-out", "Denied"),
        ("read dangling-out", "Denied"),
        ("read dangling-in", "NotFound"),
        ("read hard.txt", "Denied"),
        ("read fifo", "NotAFile"),
        ("read loop1", "Io"),
        ("read a.txt/x", "NotAFile"),
        ("read real", "NotAFile"),
        ("write alias/new.txt", "ok"),
        ("write abs-alias/new2.txt", "ok"),
        ("write dangling-in", "ok"),
        ("write n1/n2/n3/f.txt", "ok"),
        ("write dangling-out", "Denied"),
        ("write abs-out", "Denied"),
        ("write up/x.txt", "Denied"),
        ("write up/deep/x.txt", "Denied"),
        ("write hard.txt", "Denied"),
        ("write fifo", "NotAFile"),
        ("write real", "NotAFile"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(walk_only, want);
}

// ---------------------------------------------------------------------------------------------
// exec

static NEXT_MARK: AtomicU64 = AtomicU64::new(0);

/// Processes carrying `CLAWMATRIX_TEST_MARK=<mark>` in their environment; each is killed when
/// the guard drops, so a failing test leaves nothing behind.
struct Marked(String);

impl Marked {
    fn new() -> Marked {
        let n = NEXT_MARK.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).unwrap();
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        Marked(format!("{}-{n}-{hex}", std::process::id()))
    }

    fn live(&self) -> Vec<i32> {
        let needle = format!("CLAWMATRIX_TEST_MARK={}", self.0);
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            if !zombie && env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }

    async fn wait_for(&self, what: &str, within: Duration, done: impl Fn(usize) -> bool) {
        let t0 = Instant::now();
        loop {
            let n = self.live().len();
            if done(n) {
                return;
            }
            assert!(
                t0.elapsed() < within,
                "{what}: still {n} marked processes after {within:?}: {:?}",
                self.live()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        for pid in self.live() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A command whose processes escape the process group: a `setsid` daemon, a `setsid` shell
/// with its own background job, a double-forked `setsid` orphan, a plain double-forked orphan,
/// then a foreground sleep. Seven marked processes once all are up (plus the shell itself).
fn escaping_tree(mark: &Marked) -> String {
    format!(
        "export CLAWMATRIX_TEST_MARK={}; \
         setsid sleep 1000 & \
         setsid sh -c 'sleep 1000 & sleep 1000; true' & \
         (setsid sleep 1000 &); \
         sh -c 'sleep 1000 &'; \
         sleep 1000",
        mark.0
    )
}
const ESCAPING_TREE_PROCESSES: usize = 7;

fn request(tmp: &TempDir, line: String, timeout: Duration) -> ExecRequest {
    ExecRequest {
        command: Command::Shell(line),
        workdir: tmp.path().to_path_buf(),
        timeout,
        max_output_bytes: 4096,
    }
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test exceeded 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_timeout_kills_setsid_daemons_and_double_forked_orphans() {
    bounded(async {
        let tmp = TempDir::new("hostile-exec");
        let mark = Marked::new();
        let req = request(&tmp, escaping_tree(&mark), Duration::from_secs(4));
        let run = tokio::spawn(exec::run(req, None, watch::channel(false).1));
        mark.wait_for("the tree starts", Duration::from_millis(3500), |n| {
            n >= ESCAPING_TREE_PROCESSES
        })
        .await;
        let out = run.await.unwrap().unwrap();
        assert!(out.timed_out, "{out:?}");
        let t0 = Instant::now();
        mark.wait_for("after the timeout", Duration::from_secs(2), |n| n == 0)
            .await;
        eprintln!("tree gone {:?} after the call returned", t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_cancel_kills_setsid_daemons_and_double_forked_orphans() {
    bounded(async {
        let tmp = TempDir::new("hostile-exec");
        let mark = Marked::new();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let req = request(&tmp, escaping_tree(&mark), Duration::from_secs(60));
        let run = tokio::spawn(exec::run(req, None, cancel_rx));
        mark.wait_for("the tree starts", Duration::from_secs(5), |n| {
            n >= ESCAPING_TREE_PROCESSES
        })
        .await;
        let t0 = Instant::now();
        cancel_tx.send(true).unwrap();
        let out = run.await.unwrap().unwrap();
        assert!(out.cancelled && !out.timed_out, "{out:?}");
        eprintln!("cancel returned after {:?}", t0.elapsed());
        mark.wait_for("after the cancel", Duration::from_secs(2), |n| n == 0)
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_returns_promptly_and_kills_a_daemon_holding_stdout_after_the_shell_exited() {
    bounded(async {
        let tmp = TempDir::new("hostile-exec");
        let mark = Marked::new();
        // The shell exits at once; the setsid daemon keeps stdout open and is nobody's child.
        let line = format!(
            "export CLAWMATRIX_TEST_MARK={}; setsid sleep 1000 & echo started",
            mark.0
        );
        let t0 = Instant::now();
        let out = exec::run(
            request(&tmp, line, Duration::from_secs(1)),
            None,
            watch::channel(false).1,
        )
        .await
        .unwrap();
        let took = t0.elapsed();
        assert!(out.timed_out, "{out:?}");
        assert_eq!(out.exit_code, Some(0), "the shell itself exited normally");
        assert_eq!(out.stdout, "started\n");
        assert!(took < Duration::from_secs(3), "returned after {took:?}");
        mark.wait_for("after the timeout", Duration::from_secs(2), |n| n == 0)
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_running_exec_kills_its_whole_tree() {
    bounded(async {
        let tmp = TempDir::new("hostile-exec");
        let mark = Marked::new();
        let req = request(&tmp, escaping_tree(&mark), Duration::from_secs(60));
        // The call goes away mid-run (its connection closed, its task aborted).
        let run = tokio::spawn(exec::run(req, None, watch::channel(false).1));
        mark.wait_for("the tree starts", Duration::from_secs(5), |n| {
            n >= ESCAPING_TREE_PROCESSES
        })
        .await;
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        mark.wait_for("after the drop", Duration::from_secs(2), |n| n == 0)
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_detached_on_purpose_outlives_a_call_that_ends_normally() {
    bounded(async {
        let tmp = TempDir::new("hostile-exec");
        let mark = Marked::new();
        let line = format!(
            "export CLAWMATRIX_TEST_MARK={}; nohup sleep 1000 >/dev/null 2>&1 & echo started",
            mark.0
        );
        let t0 = Instant::now();
        let out = exec::run(
            request(&tmp, line, Duration::from_secs(10)),
            None,
            watch::channel(false).1,
        )
        .await
        .unwrap();
        assert!(!out.timed_out && out.exit_code == Some(0), "{out:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // The service is up (its marker shows once it exec'd), and it stays up for longer
        // than a kill of the tree would take (bounded rounds, ~0.4 s at most); the guard
        // kills it at the end of the test.
        mark.wait_for("the detached service up", Duration::from_secs(2), |n| {
            n == 1
        })
        .await;
        let t1 = Instant::now();
        while t1.elapsed() < Duration::from_secs(1) {
            assert_eq!(mark.live().len(), 1, "the detached service was killed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// the same through the mesh: home calls office's tools over a real loopback link

struct Pair {
    office: Node,
    home: Node,
    _state: TempDir,
}

/// office (listening; tool proxy on for exec/read/write/edit with `root`) and home dialing it.
async fn pair(root: &Path) -> Pair {
    let state = TempDir::new("hostile-state");
    let port = reserve_port();
    let office = start_with(
        config(
            "office",
            Some(port),
            &[],
            json!({"toolProxy": {"enabled": true, "allow": ["exec", "read", "write", "edit"],
                                 "root": root.to_string_lossy()}}),
        ),
        StartOptions {
            state_dir: Some(state.path().to_path_buf()),
            ..StartOptions::default()
        },
    );
    let home = start(config("home", None, &[("office", port)], json!({})));
    wait_for("home and office linked", Duration::from_secs(10), || {
        is_direct(&home, "office") && is_direct(&office, "home")
    })
    .await;
    Pair {
        office,
        home,
        _state: state,
    }
}

async fn remote(node: &Node, name: &str, args: Value) -> Result<ToolOutput, Error> {
    let call = node.start_tool(name, &args, ToolCaller::default());
    while let Some(step) = call.next().await {
        match step {
            Ok(ToolEvent::Progress { .. }) => {}
            Ok(ToolEvent::Result(out)) => return Ok(out),
            Err(e) => return Err(e),
        }
    }
    panic!("{name}: no result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_reads_and_writes_through_the_mesh_stay_inside_the_root_while_it_changes() {
    bounded(async {
        let arena = Arena::new();
        let p = pair(&arena.root_dir).await;
        let swapper = Swapper::start(&arena.root_dir);
        let t0 = Instant::now();
        let mut t = Tally::default();
        while t0.elapsed() < RACE_FOR && t.rounds < RACE_ROUNDS {
            let i = t.rounds;
            let read = remote(
                &p.home,
                "cluster_read",
                json!({"node": "office", "path": "d/secret.txt"}),
            )
            .await;
            let write = remote(
                &p.home,
                "cluster_write",
                json!({"node": "office", "path": format!("d/new-{}/w.txt", i % 64),
                       "content": "x"}),
            )
            .await;
            if let Ok(out) = &read {
                assert!(
                    !out.text.contains(SECRET),
                    "a remote read leaked the outside file after {i} rounds: {}",
                    out.text
                );
            }
            for r in [read.map(drop), write.map(drop)] {
                match r {
                    Ok(()) => t.ok += 1,
                    Err(e) if matches!(e.code, ErrorCode::Denied | ErrorCode::NotFound) => {
                        t.refused += 1
                    }
                    Err(e) => panic!("unexpected {:?}: {}", e.code, e.message),
                }
            }
            if let Err(why) = arena.outside_untouched() {
                panic!("a remote call reached outside the root after {i} rounds: {why}");
            }
            t.rounds += 1;
        }
        let swaps = swapper.finish();
        eprintln!(
            "{t:?} through the mesh in {:?}, {swaps} swaps",
            t0.elapsed()
        );
        assert!(t.ok > 0 && t.refused > 0, "not exercised: {t:?}");
        drop(p.office);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_remote_exec_kills_its_setsid_daemons_on_the_serving_node() {
    bounded(async {
        let root = TempDir::new("hostile-exec-root");
        let p = pair(root.path()).await;
        let mark = Marked::new();
        let call = p.home.start_tool(
            "cluster_exec",
            &json!({"node": "office", "command": escaping_tree(&mark)}),
            ToolCaller::default(),
        );
        mark.wait_for("the tree starts", Duration::from_secs(5), |n| {
            n >= ESCAPING_TREE_PROCESSES
        })
        .await;
        call.cancel();
        match call.next().await {
            Some(Err(e)) => assert_eq!(e.code, ErrorCode::Cancelled, "{}", e.message),
            other => panic!("expected the cancel error, got {other:?}"),
        }
        mark.wait_for("after the remote cancel", Duration::from_secs(3), |n| {
            n == 0
        })
        .await;
    })
    .await;
}
