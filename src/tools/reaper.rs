//! The process tree of one remote command, and killing all of it.
//!
//! A process group is not enough to find what a command started: `setsid` leaves it, and a
//! double fork re-parents the grandchild to init. So on Linux every command runs under a
//! small supervisor process:
//!
//! ```text
//! node ── supervisor (child subreaper; the process tokio knows) ── command (leads its group)
//!                                                                   └── … setsid, double forks
//! ```
//!
//! - The supervisor is the child the node spawns; in its `pre_exec` it becomes a *child
//!   subreaper* (`PR_SET_CHILD_SUBREAPER`) and forks the command, which leads a new process
//!   group as before (`$$` is its group id) and then `exec`s. The supervisor itself never
//!   `exec`s: it resets signal handlers, closes every descriptor but one status pipe (so it
//!   holds neither the output pipes nor std's exec-error pipe), and reaps in a loop. It writes
//!   the command's wait status to the pipe when the command ends, and exits when it has no
//!   descendant left.
//! - Orphans re-parent to the nearest living subreaper, so for as long as the supervisor
//!   lives every process the command started, by `setsid`, double fork or otherwise, stays
//!   its descendant, even after the command itself has exited.
//! - Timeout, cancel, or the call dropped: [`Tree::kill`] walks `/proc` for the supervisor's
//!   descendants, sends each `SIGSTOP` (no more forks) then `SIGKILL`, and repeats until none
//!   is left (bounded); then the supervisor is killed and reaped. A tree dropped mid-run does
//!   the same on a thread of its own, never on the runtime worker that drops it.
//! - A normal end (the command exited and its output pipes closed) releases the tree: the
//!   supervisor is killed, and a service the command detached on purpose (`nohup svc >log
//!   2>&1 &`) re-parents to init and keeps running, as before.
//!
//! # Limits
//! This finds what a command starts by accident or by ordinary daemonizing, not a command
//! that works to escape: exec runs with the user's rights, so it can kill its supervisor
//! first (its descendants then go to init), ask systemd or cron to start something, or use a
//! setuid program the user cannot signal. Pids from the `/proc` scan are signalled by number;
//! one exiting and being reused between the scan and the signal is possible but needs the pid
//! space to wrap within microseconds.
//!
//! Elsewhere than Linux there is no subreaper: the command is the direct child, leads its
//! process group, and the group is killed (what `setsid` escapes).

use std::io;
use std::process::ExitStatus;
#[cfg(target_os = "linux")]
use std::time::Duration;

use tokio::process::Child;

/// How many scan-and-kill rounds [`Tree::kill`] makes before giving up on processes it
/// cannot kill (a setuid program); each round ends with a [`KILL_ROUND_PAUSE`] so its SIGKILLs land before the next scan.
#[cfg(target_os = "linux")]
const KILL_ROUNDS: usize = 200;
/// Pause between kill rounds: lets `SIGKILL` land before the next scan (200 × 2 ms ≈ 0.4 s).
#[cfg(target_os = "linux")]
const KILL_ROUND_PAUSE: Duration = Duration::from_millis(2);
/// How long to wait for the supervisor to report the killed command's status.
#[cfg(target_os = "linux")]
const STATUS_WAIT: Duration = Duration::from_secs(1);

/// A command running under its supervisor (see the module docs).
pub(crate) struct Tree {
    /// The direct child: the supervisor on Linux, the command elsewhere.
    child: Child,
    pid: Option<i32>,
    /// The command's wait status, written once by the supervisor (Linux).
    #[cfg(target_os = "linux")]
    status: Option<tokio::net::unix::pipe::Receiver>,
    /// Until the tree is killed or released, dropping kills it.
    armed: bool,
}

impl Tree {
    /// Spawns `cmd` under a supervisor. The caller has set everything else (stdio, env,
    /// workdir); `process_group` and `pre_exec` are set here.
    pub(crate) fn spawn(mut cmd: tokio::process::Command) -> io::Result<Tree> {
        #[cfg(target_os = "linux")]
        {
            let (read, write) = status_pipe()?;
            let write_fd = std::os::fd::AsRawFd::as_raw_fd(&write);
            cmd.process_group(0);
            // SAFETY: the closure runs in the forked child before exec and only makes
            // async-signal-safe system calls (see `supervise`); it allocates nothing.
            unsafe {
                cmd.pre_exec(move || fork_under_supervisor(write_fd));
            }
            let child = cmd.spawn()?;
            drop(write); // only the supervisor writes; its exit is our EOF
            let pid = child.id().and_then(|id| i32::try_from(id).ok());
            let status = match tokio::net::unix::pipe::Receiver::from_owned_fd(read) {
                Ok(status) => status,
                Err(e) => {
                    // No kill_on_drop on Linux: end what was started before giving up.
                    kill_descendants(pid);
                    signal(pid, libc::SIGKILL);
                    return Err(e);
                }
            };
            Ok(Tree {
                child,
                pid,
                status: Some(status),
                armed: true,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            cmd.process_group(0);
            let child = cmd.spawn()?;
            let pid = child.id().and_then(|id| i32::try_from(id).ok());
            Ok(Tree {
                child,
                pid,
                armed: true,
            })
        }
    }

    /// The direct child (for its pipes).
    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The command's exit status, when it ends. Cancel-safe. If the supervisor dies without
    /// reporting (someone killed it), its own status stands in.
    pub(crate) async fn command_exit(&mut self) -> io::Result<ExitStatus> {
        #[cfg(target_os = "linux")]
        if let Some(rx) = &mut self.status {
            use std::os::unix::process::ExitStatusExt;
            use tokio::io::AsyncReadExt;
            let mut raw = [0u8; 4];
            let n = rx.read(&mut raw).await.unwrap_or(0);
            self.status = None;
            // A 4-byte pipe write is atomic: all of it or nothing (EOF).
            if n == raw.len() {
                return Ok(ExitStatus::from_raw(i32::from_ne_bytes(raw)));
            }
        }
        self.child.wait().await
    }

    /// Kills every process of the tree (see the module docs) and returns the command's exit
    /// status when it could be learned.
    pub(crate) async fn kill(&mut self) -> Option<ExitStatus> {
        let pid = self.pid;
        #[cfg(target_os = "linux")]
        {
            let _ = tokio::task::spawn_blocking(move || kill_descendants(pid)).await;
            // The supervisor reaps the killed command and reports it.
            let status = if self.status.is_some() {
                tokio::time::timeout(STATUS_WAIT, self.command_exit())
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            signal(pid, libc::SIGKILL);
            let _ = self.child.wait().await;
            self.armed = false;
            status
        }
        #[cfg(not(target_os = "linux"))]
        {
            if let Some(pid) = pid {
                signal(Some(-pid), libc::SIGKILL);
            }
            self.armed = false;
            self.child.wait().await.ok()
        }
    }

    /// A normal end: the command exited and its output closed. What it detached keeps
    /// running; the supervisor is ended and reaped.
    pub(crate) async fn release(&mut self) {
        #[cfg(target_os = "linux")]
        {
            signal(self.pid, libc::SIGKILL);
            let _ = self.child.wait().await;
        }
        self.armed = false;
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The call went away mid-run: nothing it started may outlive it.
        #[cfg(target_os = "linux")]
        {
            // The kill scans /proc and pauses between rounds (up to ~0.4 s for a tree that
            // resists), so it runs on a thread of its own, never on the one dropping us (a
            // runtime worker that carries every link). The supervisor is not killed on drop
            // (no `kill_on_drop` on Linux): it stays alive until the scan is done, so what it
            // started stays findable through it; then it is killed, and tokio reaps it.
            let pid = self.pid;
            let kill = move || {
                kill_descendants(pid);
                signal(pid, libc::SIGKILL);
            };
            let spawned = std::thread::Builder::new()
                .name("clawmatrix-kill".into())
                .spawn(kill);
            if spawned.is_err() {
                kill_descendants(pid);
                signal(pid, libc::SIGKILL);
            }
        }
        // tokio's kill_on_drop then kills and reaps the direct child.
        #[cfg(not(target_os = "linux"))]
        signal(self.pid.map(|p| -p), libc::SIGKILL);
    }
}

fn signal(pid: Option<i32>, sig: libc::c_int) {
    if let Some(pid) = pid.filter(|p| *p != 0 && *p != 1 && *p != -1) {
        // SAFETY: kill(2) has no memory-safety preconditions; ESRCH (already gone) is fine.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

#[cfg(target_os = "linux")]
fn status_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Runs in the spawned child between fork and exec: becomes the subreaper, forks the
/// command (which returns to exec), and supervises (never returns).
///
/// Only async-signal-safe system calls: the parent is multi-threaded, and this child has one
/// thread holding a copy of whatever locks the others held. The fork is a raw `clone` where
/// the argument order is known, so no `pthread_atfork` handler of the node process runs.
#[cfg(target_os = "linux")]
fn fork_under_supervisor(status_fd: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with an integer option has no memory-safety preconditions.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let pid = raw_fork();
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The command: lead a group of its own, then exec (std continues).
        // SAFETY: setpgid on ourselves has no memory-safety preconditions.
        if unsafe { libc::setpgid(0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    supervise(pid, status_fd)
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn raw_fork() -> libc::pid_t {
    // SAFETY: clone with only SIGCHLD and no stack is fork(2) without glibc's atfork
    // handlers; on these architectures all other arguments are 0 in any order.
    let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
    libc::pid_t::try_from(r).unwrap_or(-1)
}

#[cfg(all(
    target_os = "linux",
    not(any(target_arch = "x86_64", target_arch = "aarch64"))
))]
fn raw_fork() -> libc::pid_t {
    // SAFETY: fork(2) in a single-threaded child; the atfork handlers run on state the first
    // fork left consistent.
    unsafe { libc::fork() }
}

/// The supervisor's life (see the module docs). Never returns.
#[cfg(target_os = "linux")]
fn supervise(command: libc::pid_t, status_fd: libc::c_int) -> ! {
    // SAFETY: every call below is an async-signal-safe system call on integers or on
    // stack memory owned here.
    unsafe {
        // Handlers inherited from the node process must not run here; a closed status pipe
        // must not kill us (our descendants would escape to init).
        for sig in 1..65 {
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        close_all_but(status_fd);
        let mut report = status_fd;
        loop {
            let mut st: libc::c_int = 0;
            let r = libc::waitpid(-1, &mut st, libc::__WALL);
            if r == command && report >= 0 {
                let bytes = st.to_ne_bytes();
                libc::write(report, bytes.as_ptr().cast(), bytes.len());
                libc::close(report);
                report = -1;
            } else if r < 0 && *libc::__errno_location() != libc::EINTR {
                break; // ECHILD: no descendant left
            }
        }
        libc::_exit(0)
    }
}

/// Closes every descriptor but `keep`: the output pipes (whose EOF ends a call) and std's
/// exec-error pipe (whose EOF ends `spawn`) must not stay open in the supervisor.
#[cfg(target_os = "linux")]
unsafe fn close_all_but(keep: libc::c_int) {
    let keep = u32::try_from(keep).unwrap_or(0);
    let below = keep == 0 || libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32) == 0;
    let above = libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32) == 0;
    if below && above {
        return;
    }
    // Before Linux 5.9: one by one, up to the descriptor limit.
    let mut rl: libc::rlimit = std::mem::zeroed();
    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
        rl.rlim_cur.min(1 << 20)
    } else {
        1 << 16
    };
    let max = libc::c_int::try_from(max).unwrap_or(1 << 16);
    for fd in 0..max {
        if u32::try_from(fd).ok() != Some(keep) {
            libc::close(fd);
        }
    }
}

/// Stops and kills every live descendant of `root` (not `root` itself), scanning `/proc`
/// again until none is left or [`KILL_ROUNDS`] have passed.
#[cfg(target_os = "linux")]
pub(crate) fn kill_descendants(root: Option<i32>) {
    let Some(root) = root.filter(|p| *p > 1) else {
        return;
    };
    for _ in 0..KILL_ROUNDS {
        let found = descendants(root);
        if found.is_empty() {
            return;
        }
        // Stop all first, so none forks between its parent's kill and its own; signal right
        // after the scan (no pause that lets what it found fork), then give SIGKILL time to
        // land before the next scan.
        for &pid in &found {
            signal(Some(pid), libc::SIGSTOP);
        }
        for &pid in &found {
            signal(Some(pid), libc::SIGKILL);
        }
        std::thread::sleep(KILL_ROUND_PAUSE);
    }
}

/// Live (not zombie) descendants of `root`, from the parent links in `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn descendants(root: i32) -> Vec<i32> {
    // (pid, parent, zombie)
    let mut all: Vec<(i32, i32, bool)> = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // exited meanwhile
        };
        // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let zombie = fields.next() == Some("Z");
        if let Some(ppid) = fields.next().and_then(|p| p.parse::<i32>().ok()) {
            all.push((pid, ppid, zombie));
        }
    }
    let mut tree = vec![root];
    let mut out = Vec::new();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid, zombie) in &all {
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
                if !zombie {
                    out.push(pid);
                }
            }
        }
        i += 1;
    }
    out
}
