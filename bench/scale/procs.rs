//! The parent's side of the child processes: spawn the bench binary with `--scale-child`, send
//! one command line, read one JSON line back (bounded in time), kill what is left on drop.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::BenchResult;

/// One child process and its reply channel.
pub struct Proc {
    pub hub: bool,
    pub first: usize,
    pub count: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Spawn a child holding nodes `first..first + count` of a mesh of `n`.
    pub fn spawn(
        hub: bool,
        n: usize,
        first: usize,
        count: usize,
        hub_ports: &[u16],
    ) -> BenchResult<Proc> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let ports: Vec<String> = hub_ports.iter().map(|p| p.to_string()).collect();
        let mut cmd = Command::new(exe);
        cmd.args(["--scale-child", if hub { "hub" } else { "leaf" }])
            .args(["--n", &n.to_string()])
            .args(["--first", &first.to_string()])
            .args(["--count", &count.to_string()]);
        if !ports.is_empty() {
            cmd.args(["--hub-ports", &ports.join(",")]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn scale child: {e}"))?;
        let stdout = child.stdout.take().ok_or("scale child without stdout")?;
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            hub,
            first,
            count,
            child,
            stdin,
            lines,
        })
    }

    pub fn send(&mut self, cmd: &str) -> BenchResult<()> {
        let stdin = self.stdin.as_mut().ok_or("scale child stdin closed")?;
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("scale child {}: send {cmd}: {e}", self.first))
    }

    /// The next reply, at most `within`; a reply `{"error": ...}` is an error.
    pub fn recv(&self, within: Duration) -> BenchResult<Value> {
        let line = self.lines.recv_timeout(within).map_err(|_| {
            format!(
                "scale child {} (nodes {}..{}) did not answer within {} s",
                self.child.id(),
                self.first,
                self.first + self.count,
                within.as_secs()
            )
        })?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("scale child said {line:?}: {e}"))?;
        match v.get("error") {
            Some(e) => Err(format!("scale child {}: {e}", self.first)),
            None => Ok(v),
        }
    }

    /// Close stdin and wait for the exit, at most `within`; then kill this child.
    pub fn finish(&mut self, within: Duration) {
        self.stdin.take();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Send `cmd` to every child, then collect every reply (each within `within`).
pub fn all(procs: &mut [Proc], cmd: &str, within: Duration) -> BenchResult<Vec<Value>> {
    for p in procs.iter_mut() {
        p.send(cmd)?;
    }
    procs.iter().map(|p| p.recv(within)).collect()
}
