//! `cargo bench --bench handoff`: many concurrent handoff streams through one relay.
//!
//! ```text
//! home ──dials──▶ relay ◀──dials── office-1 … office-4   (real Nodes, one process, 127.0.0.1)
//! ```
//! Home starts `--streams` (default 1000) `cluster_handoff` tool calls at once (their starts
//! spread over one chunk period), each to `coder`, pinned round-robin to the four offices by
//! node-id targets (an office serves at most 256 calls at once, `MAX_SERVED_CALLS`). On every
//! office a scripted host (`tests/support/fake_host.rs`, stamp mode) answers `agent.run` with one delta
//! every `1000 / --rate` ms (default 50 chunks/s) for `--secs` seconds; each delta is
//! `"<seq>:<µs since a shared epoch>;"`. Home's consumers parse every delta they get from
//! `ToolCall::next()` (the same steps the shim forwards to `onUpdate`) and record:
//! - latency = consumer receive time − the host's emit time, per delta (same clock);
//! - loss = deltas emitted but never received; reordering = a seq not greater than the last
//!   one of its stream (both must be 0);
//! - CPU = this process's user + system time over the steady window divided by wall time, in
//!   cores: `cpu_cores` for everything (nodes, fake hosts, consumers), `node_cpu_cores` for the
//!   nodes' runtime threads only (named `clawmatrix`: relay, home, offices).
//!
//! Output: JSON lines on stdout (`{"bench":"handoff_streams",…}`), a summary on stderr.

#[path = "../tests/support/fake_host.rs"]
mod fake_host;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::config::Config;
use clawmatrix::tools::remote::{ToolCaller, ToolEvent};
use fake_host::{FakeHost, FakeHostOptions};
use serde_json::json;

const SECRET: &str = "clawmatrix-bench-secret-0123456789";
const OFFICES: usize = 4;

fn free_port() -> u16 {
    static SEEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !seen.contains(&p) {
            seen.push(p);
            return p;
        }
    }
}

fn config(id: &str, listen: Option<u16>, peer: Option<u16>, agents: bool) -> Config {
    let mut v = json!({
        "nodeId": id, "secret": SECRET, "listen": listen.is_some(), "listenHost": "127.0.0.1",
        "listenPort": listen.unwrap_or_else(free_port), "proxyPort": free_port(),
        "peers": peer.map(|p| vec![json!({"nodeId": "relay", "url": format!("ws://127.0.0.1:{p}")})]).unwrap_or_default(),
        "handoffTimeout": 60_000,
    });
    if agents {
        v["agents"] = json!([{"id": "coder", "description": "bench agent", "tags": ["coding"]}]);
    }
    Config::from_json(&v).expect("bench config").config
}

/// utime + stime in µs from a `/proc/.../stat` line (USER_HZ = 100).
fn stat_cpu_us(stat: &str) -> f64 {
    let rest = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0 * 1e6
}

/// CPU µs of the whole process and of the threads whose name starts with `clawmatrix` (the
/// nodes' runtimes: relay, home, offices), leaving out the fake hosts and the consumers.
fn cpu_us() -> (f64, f64) {
    let total = stat_cpu_us(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default());
    let mut nodes = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.starts_with("clawmatrix") {
                nodes += stat_cpu_us(
                    &std::fs::read_to_string(t.path().join("stat")).unwrap_or_default(),
                );
            }
        }
    }
    (total, nodes)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Opts {
    streams: usize,
    rate: u64,
    secs: u64,
}

fn parse() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let num = |k: &str, d: u64| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    Opts {
        streams: num("--streams", 1000).clamp(1, 1000) as usize,
        rate: num("--rate", 50).clamp(1, 1000),
        secs: num("--secs", if quick { 4 } else { 10 }).clamp(1, 120),
    }
}

fn main() {
    let o = parse();
    let epoch = Instant::now();
    let relay_port = free_port();
    let relay = Node::new(config("relay", Some(relay_port), None, false));
    relay.start(&StartOptions::default()).expect("relay");
    let hosts_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fake-host")
        .enable_all()
        .build()
        .expect("host runtime");
    let mut offices = Vec::new();
    for i in 1..=OFFICES {
        let n = Node::new(config(&format!("office-{i}"), None, Some(relay_port), true));
        n.start(&StartOptions::default()).expect("office");
        let mut opts = FakeHostOptions::agents(&["coder"]);
        opts.stamp_epoch = Some(epoch);
        let bridge = n.host();
        let _host: FakeHost = hosts_rt.block_on(async { FakeHost::spawn(bridge, opts) });
        offices.push(n);
    }
    let home = Arc::new(Node::new(config("home", None, Some(relay_port), false)));
    home.start(&StartOptions::default()).expect("home");
    let t_wait = Instant::now();
    loop {
        let st = home.status();
        let ok = (1..=OFFICES).all(|i| {
            st.peers
                .iter()
                .any(|p| p.node_id == format!("office-{i}") && p.hops == Some(2))
        });
        if ok {
            break;
        }
        assert!(
            t_wait.elapsed() < Duration::from_secs(20),
            "routes did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let consumers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("consumer")
        .enable_all()
        .build()
        .expect("consumer runtime");
    let period_ms = 1000 / o.rate;
    let chunks = o.rate * o.secs;
    let received = Arc::new(AtomicU64::new(0));
    let reordered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let lats: Arc<Mutex<Vec<f64>>> =
        Arc::new(Mutex::new(Vec::with_capacity(o.streams * chunks as usize)));
    // Steady window: from when every stream started until the first one may end.
    let warm = Duration::from_millis(1500.min(o.secs * 300));
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0..o.streams {
        let home = Arc::clone(&home);
        let task = format!("stream {chunks} every {period_ms}");
        let target = format!("office-{}", i % OFFICES + 1);
        let (received, reordered, failed, lats) = (
            Arc::clone(&received),
            Arc::clone(&reordered),
            Arc::clone(&failed),
            Arc::clone(&lats),
        );
        let offset = Duration::from_micros((period_ms * 1000) * i as u64 / o.streams as u64);
        handles.push(consumers.spawn(async move {
            tokio::time::sleep(offset).await;
            let call = home.start_tool(
                "cluster_handoff",
                &json!({"target": target, "task": task}),
                ToolCaller::default(),
            );
            let mut last: i64 = -1;
            let mut mine = Vec::new();
            while let Some(step) = call.next().await {
                match step {
                    Ok(ToolEvent::Progress { text, .. }) => {
                        let now = epoch.elapsed().as_micros() as f64;
                        for entry in text.split(';').filter(|e| !e.is_empty()) {
                            let Some((s, ts)) = entry.split_once(':') else {
                                continue;
                            };
                            let (Ok(s), Ok(ts)) = (s.parse::<i64>(), ts.parse::<f64>()) else {
                                continue;
                            };
                            if s <= last {
                                reordered.fetch_add(1, Ordering::Relaxed);
                            }
                            last = s;
                            received.fetch_add(1, Ordering::Relaxed);
                            mine.push((now - ts) / 1000.0);
                        }
                    }
                    Ok(ToolEvent::Result(_)) => break,
                    Err(e) => {
                        eprintln!("handoff {i} failed: {}", e.message);
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            lats.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
        }));
    }
    std::thread::sleep(warm);
    let (cpu0, w0) = (cpu_us(), Instant::now());
    let steady = Duration::from_millis(
        (o.secs * 1000)
            .saturating_sub(warm.as_millis() as u64 + 500)
            .max(500),
    );
    std::thread::sleep(steady);
    let (cpu1, w1) = (cpu_us(), Instant::now());
    consumers.block_on(async {
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(o.secs + 60), h).await;
        }
    });
    let total = t0.elapsed();
    let secs = (w1 - w0).as_secs_f64();
    let cores = (cpu1.0 - cpu0.0) / 1e6 / secs;
    let node_cores = (cpu1.1 - cpu0.1) / 1e6 / secs;
    let mut l = std::mem::take(&mut *lats.lock().unwrap_or_else(|p| p.into_inner()));
    l.sort_by(|a, b| a.total_cmp(b));
    let expected = o.streams as u64 * chunks;
    let got = received.load(Ordering::Relaxed);
    let row = json!({
        "bench": "handoff_streams", "impl": "clawmatrix",
        "streams": o.streams, "chunks_per_s": o.rate, "secs": o.secs, "relays": 1,
        "expected_chunks": expected, "received_chunks": got,
        "lost": expected.saturating_sub(got), "reordered": reordered.load(Ordering::Relaxed),
        "failed_streams": failed.load(Ordering::Relaxed),
        "p50_ms": (pct(&l, 50.0) * 100.0).round() / 100.0,
        "p99_ms": (pct(&l, 99.0) * 100.0).round() / 100.0,
        "max_ms": (l.last().copied().unwrap_or(0.0) * 100.0).round() / 100.0,
        "cpu_cores": (cores * 1000.0).round() / 1000.0,
        "node_cpu_cores": (node_cores * 1000.0).round() / 1000.0,
        "wall_s": (total.as_secs_f64() * 100.0).round() / 100.0,
    });
    let mut row = row;
    // Why streams failed under overload: links closed as slow peers, frames dropped.
    let counters = |n: &Node| {
        let m = n.status().mesh;
        json!({"slowPeerCloses": m.slow_peer_closes, "dropped": m.dropped, "heartbeatTimeouts": m.heartbeat_timeouts})
    };
    row["relay_counters"] = counters(&relay);
    row["home_counters"] = counters(&home);
    println!("{row}");
    eprintln!(
        "handoff: {} streams × {}/s × {} s through 1 relay: p50 {:.2} ms, p99 {:.2} ms, lost {}, \
         reordered {}, failed {}, CPU {:.3} cores (nodes {:.3}, the rest is fake hosts + consumers)",
        o.streams,
        o.rate,
        o.secs,
        pct(&l, 50.0),
        pct(&l, 99.0),
        expected.saturating_sub(got),
        reordered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        cores,
        node_cores
    );
    home.stop();
    for n in offices {
        n.stop();
    }
    relay.stop();
    drop(hosts_rt);
}
