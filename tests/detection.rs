//! Failure detection with real processes and the default heartbeat (1.25 s × 3): a hub node
//! here, 20 peer nodes in child processes (this same binary, started with `CM_DETECT_CHILD`)
//! dialing it over loopback.
//!
//! - crash: `kill -9` of each child (the kernel closes its socket): the hub logs the link down
//!   in under 100 ms, every trial;
//! - silent: `SIGSTOP` of each child (the socket stays open, nothing is sent): the hub drops
//!   the link on heartbeat timeout within 5 s, every trial.
//!
//! Prints p50/p99 of both (the README's figures). `harness = false`: the child mode is a
//! `main` branch, not a test; the result line has libtest's shape so `npm test` counts it.

mod loopback_common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clawmatrix::app::Node;
use clawmatrix::config::{DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_MISSES};
use loopback_common::{config, is_direct, reserve_port, start};
use serde_json::json;

const TRIALS: usize = 20;
const HUB: &str = "hub";

fn defaults() -> serde_json::Value {
    json!({
        "heartbeatIntervalMs": DEFAULT_HEARTBEAT_INTERVAL_MS,
        "heartbeatMisses": DEFAULT_HEARTBEAT_MISSES,
    })
}

fn main() {
    if let Ok(spec) = std::env::var("CM_DETECT_CHILD") {
        child(&spec);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut passed = 0;
    let mut failed = 0;
    for (name, kind) in [("crash", Kind::Crash), ("silent", Kind::Stop)] {
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(120), trials(kind))
                .await
                .unwrap_or_else(|_| Err(format!("{name}: trials did not finish in 120 s")))
        });
        match r {
            Ok(line) => {
                println!("test detection::{name} ... ok\n  {line}");
                passed += 1;
            }
            Err(e) => {
                println!("test detection::{name} ... FAILED\n  {e}");
                failed += 1;
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out"
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// A peer node in this process until the parent closes our stdin (or 5 minutes pass).
fn child(spec: &str) {
    let (id, port) = spec.split_once(':').expect("CM_DETECT_CHILD is id:port");
    let port: u16 = port.parse().expect("port");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _node = rt.block_on(async { start(config(id, None, &[(HUB, port)], defaults())) });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = std::io::stdin().read(&mut b);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(300));
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Crash,
    Stop,
}

struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SAFETY: kill(2) on our own child's pid; a stopped child must run again to die
            // of the closed stdin, and SIGKILL works either way.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

async fn trials(kind: Kind) -> Result<String, String> {
    let port = reserve_port();
    let hub = start(config(HUB, Some(port), &[], defaults()));
    let events = hub.events();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let ids: Vec<String> = (0..TRIALS).map(|i| format!("peer-{i:02}")).collect();
    let mut kids = Kids(Vec::new());
    for id in &ids {
        let c = Command::new(&exe)
            .env("CM_DETECT_CHILD", format!("{id}:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {id}: {e}"))?;
        kids.0.push(c);
    }
    wait(&hub, Duration::from_secs(60), |h| {
        ids.iter().all(|id| is_direct(h, id))
    })
    .await
    .map_err(|_| "not every child linked to the hub within 60 s".to_string())?;
    // Let the links settle past their first heartbeats, and drop the log so far.
    tokio::time::sleep(Duration::from_millis(2 * DEFAULT_HEARTBEAT_INTERVAL_MS)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(5), events.next()).await {}

    let mut times = Vec::with_capacity(TRIALS);
    for (i, id) in ids.iter().enumerate() {
        // One child at a time, at a different phase of the heartbeat each trial.
        tokio::time::sleep(Duration::from_millis(37 * i as u64 % 1_250)).await;
        let pid = kids.0[i].id() as i32;
        let sig = match kind {
            Kind::Crash => libc::SIGKILL,
            Kind::Stop => libc::SIGSTOP,
        };
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(format!("kill {id}: {}", std::io::Error::last_os_error()));
        }
        let want = format!("mesh: link down with {id}:");
        let why = match kind {
            Kind::Crash => ": closed:",
            Kind::Stop => ": heartbeat timeout",
        };
        let took = loop {
            let left = Duration::from_secs(15).saturating_sub(t0.elapsed());
            match tokio::time::timeout(left, events.next()).await {
                Ok(Some(e)) if e.message.starts_with(&want) && e.message.contains(why) => {
                    break t0.elapsed()
                }
                Ok(Some(e)) if e.message.starts_with(&want) => {
                    return Err(format!("{id}: expected '{why}': {}", e.message))
                }
                Ok(Some(e)) if e.message.starts_with("mesh: link down with") => {
                    return Err(format!("another link went down: {}", e.message))
                }
                Ok(Some(_)) => continue,
                _ => return Err(format!("{id}: no link down within 15 s")),
            }
        };
        times.push(took.as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let (p50, p99, max) = (p(0.5), p(0.99), times[times.len() - 1]);
    // The status snapshot is published at most every 100 ms: wait for the last verdict in it.
    let timeouts = if kind == Kind::Stop { TRIALS as u64 } else { 0 };
    let _ = wait(&hub, Duration::from_secs(2), |h| {
        h.status().mesh.heartbeat_timeouts >= timeouts
    })
    .await;
    let st = hub.status().mesh;
    let line = format!(
        "{} trials: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; hub heartbeat timeouts {}",
        TRIALS, st.heartbeat_timeouts
    );
    eprintln!("[detection] {line}");
    match kind {
        Kind::Crash if max >= 100.0 => Err(format!("crash detection over 100 ms: {line}")),
        Kind::Crash if st.heartbeat_timeouts != 0 => {
            Err(format!("a crash was seen as silence: {line}"))
        }
        Kind::Stop if max > 5_000.0 => Err(format!("silent detection over 5 s: {line}")),
        Kind::Stop if st.heartbeat_timeouts != TRIALS as u64 => {
            Err(format!("every stopped child must time out, once: {line}"))
        }
        _ => Ok(line),
    }
}

async fn wait(n: &Node, within: Duration, f: impl Fn(&Node) -> bool) -> Result<(), ()> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if f(n) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(())
}
