//! Child mode (`--scale-child`): one OS process holding a few nodes of the mesh, driven by the
//! parent over stdin/stdout, one command line in and one JSON line out.
//!
//! Each node owns its own tokio runtime (one worker, as in a gateway). Grouping nodes per
//! process lets the parent read CPU time, RSS and bytes written per process without mixing in
//! the other nodes.
//!
//! Commands:
//! - `start`: start the nodes (hubs start at launch, before `ready`, so leaves know the ports).
//! - `reach`: how many nodes see all `n - 1` others reachable.
//! - `rest-begin`: a [`sample`](Sample) and start the status poller (every node's `status()`
//!   once a second: latency, lowest reachable count).
//! - `rest-end`: a sample, the poller's latencies and lowest counts.
//! - `stop`: stop the nodes and exit.
//!
//! The child exits on stdin EOF (the parent is gone) and after [`MAX_LIFE`] in any case.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::status::PeerState;
use serde_json::{json, Map, Value};

use super::report::status_field;
use super::topo;
use super::BenchResult;

/// The child exits on its own after this long, whatever the parent does.
const MAX_LIFE: Duration = Duration::from_secs(20 * 60);
/// Attempts to start one node (a fresh proxy/listen port each time: another process may have
/// taken the port between our pick and the bind).
const START_ATTEMPTS: usize = 5;
/// Period of `status()` calls per node while at rest.
const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// What the child was launched with.
pub struct ChildArgs {
    pub hub: bool,
    pub n: usize,
    pub first: usize,
    pub count: usize,
    pub hub_ports: Vec<u16>,
}

struct Poller {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<PollResult>,
    started: Instant,
}

#[derive(Default)]
struct PollResult {
    /// `status()` wall times, µs.
    latencies_us: Vec<u64>,
    /// Per node: the lowest reachable count seen.
    min_reach: Vec<usize>,
    /// The sum of this process's nodes' `bytes_out`, once per poll round (≈ 1 s), from the
    /// start of the rest.
    bytes_series: Vec<u64>,
}

struct State {
    args: ChildArgs,
    /// (index, node); started nodes only after `start`.
    nodes: Vec<(usize, Arc<Node>)>,
    rss_before_kib: u64,
    poller: Option<Poller>,
    /// TCP byte counters per socket when the rest began.
    tcp_at_rest: HashMap<u64, (u64, u64)>,
}

/// Run the child until `stop` or EOF.
pub fn run(args: ChildArgs) -> BenchResult<()> {
    std::thread::spawn(|| {
        std::thread::sleep(MAX_LIFE);
        eprintln!("scale child: exceeded {} s, exiting", MAX_LIFE.as_secs());
        std::process::exit(3);
    });
    let mut st = State {
        rss_before_kib: status_field("self", "VmRSS").unwrap_or(0),
        args,
        nodes: Vec::new(),
        poller: None,
        tcp_at_rest: HashMap::new(),
    };
    let ready = if st.args.hub {
        match st.start() {
            Ok(ports) => json!({"ready": true, "ports": ports}),
            Err(e) => json!({"error": e}),
        }
    } else {
        json!({"ready": true})
    };
    st.reply(&ready)?;
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        let read = stdin.lock().read_line(&mut line);
        if matches!(read, Ok(0) | Err(_)) {
            st.stop_nodes();
            return Ok(());
        }
        let reply = match line.trim() {
            "start" => match st.start() {
                Ok(_) => json!({"started": st.nodes.len()}),
                Err(e) => json!({"error": e}),
            },
            "reach" => st.reach(),
            "rest-begin" => {
                let s = st.sample();
                st.tcp_at_rest = tcp_bytes();
                st.begin_poll();
                s
            }
            "rest-end" => {
                let (secs, poll) = st.end_poll();
                let tcp = tcp_delta(&st.tcp_at_rest, &tcp_bytes());
                let mut s = st.sample();
                if let Some(o) = s.as_object_mut() {
                    o.insert("rest_secs".into(), json!(secs));
                    o.insert("status_us".into(), json!(poll.latencies_us));
                    o.insert("min_reach".into(), json!(poll.min_reach));
                    o.insert("bytes_series".into(), json!(poll.bytes_series));
                    o.insert("tcp".into(), tcp);
                }
                s
            }
            "stop" => {
                st.stop_nodes();
                st.reply(&json!({"stopped": true}))?;
                return Ok(());
            }
            other => json!({"error": format!("unknown command {other:?}")}),
        };
        st.reply(&reply)?;
    }
}

impl State {
    fn reply(&self, v: &Value) -> BenchResult<()> {
        let line = format!("{v}\n");
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| format!("scale child: stdout: {e}"))
    }

    /// Start every node of this child (idempotent); returns the hubs' listen ports.
    fn start(&mut self) -> BenchResult<Vec<u16>> {
        if !self.nodes.is_empty() {
            return Ok(self.args.hub_ports.clone());
        }
        for i in self.args.first..self.args.first + self.args.count {
            let node = self.start_one(i)?;
            self.nodes.push((i, Arc::new(node)));
        }
        Ok(self.args.hub_ports.clone())
    }

    fn start_one(&mut self, i: usize) -> BenchResult<Node> {
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let proxy = free_port()?;
            let listen = if i < topo::HUBS {
                Some(free_port()?)
            } else {
                None
            };
            let cfg = topo::config(i, listen, proxy, &self.args.hub_ports)?;
            let node = Node::new(cfg);
            match node.start(&StartOptions::default()) {
                Ok(info) => {
                    if let Some(addr) = info.listen_addr {
                        // Hubs start in index order, so hub i's port lands at index i.
                        self.args.hub_ports.push(addr.port());
                    }
                    return Ok(node);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!(
            "{}: start failed {START_ATTEMPTS} times: {last}",
            topo::node_id(i)
        ))
    }

    fn reachable(&self, node: &Node) -> usize {
        node.status()
            .peers
            .iter()
            .filter(|p| matches!(p.state, PeerState::Direct | PeerState::Relayed))
            .count()
    }

    fn reach(&self) -> Value {
        let want = self.args.n - 1;
        let counts: Vec<usize> = self.nodes.iter().map(|(_, n)| self.reachable(n)).collect();
        json!({
            "converged": counts.iter().filter(|&&c| c >= want).count(),
            "min_reach": counts.iter().min().copied().unwrap_or(0),
        })
    }

    /// Per node counters, and this process's CPU time, RSS and bytes written.
    fn sample(&self) -> Value {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|(i, node)| {
                let status = node.status();
                let reach = status
                    .peers
                    .iter()
                    .filter(|p| matches!(p.state, PeerState::Direct | PeerState::Relayed))
                    .count();
                json!({
                    "i": i, "id": topo::node_id(*i), "reach": reach,
                    "links_up": status.mesh.links_up,
                    "refusals": refusals(&status.mesh),
                    "stats": numeric_fields(node.mesh_stats().map(|s| serde_json::to_value(s).unwrap_or(Value::Null))),
                })
            })
            .collect();
        // The newest version of every node's record any of our nodes holds: the parent takes the
        // maximum over all children at both ends of the rest; the difference is how often each
        // node re-published its record at rest.
        let mut versions: HashMap<String, u64> = HashMap::new();
        for (_, node) in &self.nodes {
            for p in node.mesh_snapshot().map(|s| s.peers).unwrap_or_default() {
                let v = versions.entry(p.node.to_string()).or_insert(0);
                *v = (*v).max(p.version);
            }
        }
        json!({
            "nodes": nodes,
            "versions": versions,
            "cpu_us": process_cpu_us(),
            "rss_kib": status_field("self", "VmRSS"),
            "rss_before_kib": self.rss_before_kib,
            "threads": status_field("self", "Threads"),
        })
    }

    fn begin_poll(&mut self) {
        if self.poller.is_some() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let nodes: Vec<Arc<Node>> = self.nodes.iter().map(|(_, n)| n.clone()).collect();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut r = PollResult {
                latencies_us: Vec::new(),
                min_reach: vec![usize::MAX; nodes.len()],
                bytes_series: Vec::new(),
            };
            if nodes.is_empty() {
                return r;
            }
            // One node every STATUS_PERIOD / count: each node once per period, spread out.
            let step = STATUS_PERIOD / nodes.len() as u32;
            let mut k = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let idx = k % nodes.len();
                if idx == 0 {
                    let sum = nodes
                        .iter()
                        .filter_map(|n| n.mesh_stats())
                        .map(|s| s.bytes_out)
                        .sum();
                    r.bytes_series.push(sum);
                }
                let t0 = Instant::now();
                let status = nodes[idx].status();
                r.latencies_us.push(t0.elapsed().as_micros() as u64);
                let reach = status
                    .peers
                    .iter()
                    .filter(|p| matches!(p.state, PeerState::Direct | PeerState::Relayed))
                    .count();
                r.min_reach[idx] = r.min_reach[idx].min(reach);
                k += 1;
                std::thread::sleep(step);
            }
            r
        });
        self.poller = Some(Poller {
            stop,
            thread,
            started: Instant::now(),
        });
    }

    fn end_poll(&mut self) -> (f64, PollResult) {
        match self.poller.take() {
            Some(p) => {
                let secs = p.started.elapsed().as_secs_f64();
                p.stop.store(true, Ordering::Relaxed);
                (secs, p.thread.join().unwrap_or_default())
            }
            None => (0.0, PollResult::default()),
        }
    }

    /// Stop every node at once (each stop may wait for its links to close).
    fn stop_nodes(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        std::thread::scope(|s| {
            for (_, n) in &nodes {
                s.spawn(|| n.stop());
            }
        });
    }
}

/// Connections this node refused, by reason, since it started: the status maps of handshake
/// rejections and pre-auth refusals (`handshakeRejects`, `preauthRejects`; the latter exists
/// only in cores with listener admission). Read by name so the bench builds against both.
fn refusals(mesh: &clawmatrix::status::MeshCounters) -> Value {
    let v = serde_json::to_value(mesh).unwrap_or(Value::Null);
    let mut out = Map::new();
    for key in ["handshakeRejects", "preauthRejects"] {
        if let Some(Value::Object(m)) = v.get(key) {
            for (reason, n) in m {
                out.insert(format!("{key}.{reason}"), n.clone());
            }
        }
    }
    Value::Object(out)
}

/// The top-level numbers of a serialized `MeshStats` (by name, so the bench keeps working when
/// the core adds or renames counters).
fn numeric_fields(v: Option<Value>) -> Value {
    let mut out = Map::new();
    if let Some(Value::Object(o)) = v {
        for (k, x) in o {
            if x.is_u64() {
                out.insert(k, x);
            }
        }
    }
    Value::Object(out)
}

/// A free loopback port picked by the OS (released for the node to bind; a race with another
/// process is caught by the node's bind and retried).
fn free_port() -> BenchResult<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// This process's CPU time (user + system) in µs, ns resolution.
fn process_cpu_us() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3)
}

/// What the TCP sockets present at both readings sent and received in between, and how many
/// sockets came or went (a reconnect during the rest loses its bytes: reported, not hidden).
fn tcp_delta(a: &HashMap<u64, (u64, u64)>, b: &HashMap<u64, (u64, u64)>) -> Value {
    let (mut sent, mut recv, mut common) = (0u64, 0u64, 0usize);
    for (inode, (s1, r1)) in b {
        if let Some((s0, r0)) = a.get(inode) {
            sent += s1.saturating_sub(*s0);
            recv += r1.saturating_sub(*r0);
            common += 1;
        }
    }
    json!({
        "sent": sent, "received": recv, "sockets": common,
        "opened": b.keys().filter(|k| !a.contains_key(k)).count(),
        "closed": a.keys().filter(|k| !b.contains_key(k)).count(),
    })
}

/// Bytes acknowledged and received on every TCP socket this process holds, by socket inode
/// (`TCP_INFO`'s `tcpi_bytes_acked` / `tcpi_bytes_received`): what really crossed the wire,
/// WebSocket framing included. Listening sockets count 0.
fn tcp_bytes() -> HashMap<u64, (u64, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|f| f.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let Some(inode) = target.to_str().and_then(|t| {
            t.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        }) else {
            continue;
        };
        // SAFETY: an all-zero tcp_info is a valid value (plain integers).
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` is writable for `len` bytes and the kernel writes at most `len`. The fd
        // may have been closed (or reused) since readdir: then the call fails or describes
        // another socket, which changes a figure but is not unsound.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            out.insert(inode, (info.tcpi_bytes_acked, info.tcpi_bytes_received));
        }
    }
    out
}
