//! The three benchmark topologies, built from real [`Node`]s in this process on 127.0.0.1:
//!
//! ```text
//! direct:   A ──dials──▶ B
//! relay1:   A ──dials──▶ R ◀──dials── B
//! relay2:   A ──dials──▶ R1 ◀──dials── R2 ◀──dials── B
//! ```
//!
//! A is always the client and B the `mesh.echo` responder. Listeners start before dialers; then
//! [`build`] waits (bounded) until A's status lists B as reachable and a probe `mesh.echo`
//! round trip succeeds, which proves the route both ways.
//!
//! Every node owns its own tokio runtime (as every OpenClaw gateway would), so the process runs
//! one worker thread per node by default (`CLAWMATRIX_WORKER_THREADS`): 2 for `direct`, 3 for
//! `relay1`, 4 for `relay2` on this machine's cores.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::config::Config;
use clawmatrix::status::PeerState;
use serde_json::json;

use super::report::{emit, status_field};
use super::BenchResult;

/// The mesh-wide secret of every bench node (≥ 16 characters).
pub const SECRET: &str = "clawmatrix-bench-secret-0123456789";
/// Longest wait for routes to come up after the last node started.
const ROUTE_DEADLINE: Duration = Duration::from_secs(20);
/// Status poll period while waiting for routes.
const ROUTE_POLL: Duration = Duration::from_millis(20);
/// Wait before reading counters: longer than the node's 100 ms snapshot throttle.
const COUNTERS_SETTLE: Duration = Duration::from_millis(300);
/// Timeout of one probe round trip while waiting for routes.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Direct,
    Relay1,
    Relay2,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::Direct => "direct",
            Topology::Relay1 => "relay1",
            Topology::Relay2 => "relay2",
        }
    }

    /// Relays between A and B.
    pub fn relays(self) -> u32 {
        match self {
            Topology::Direct => 0,
            Topology::Relay1 => 1,
            Topology::Relay2 => 2,
        }
    }

    /// Node specs in start order: listeners before the nodes that dial them.
    fn specs(self) -> Vec<Spec> {
        match self {
            Topology::Direct => vec![Spec::listen("B", &[]), Spec::dial("A", &["B"])],
            Topology::Relay1 => vec![
                Spec::listen("R", &[]),
                Spec::dial("B", &["R"]),
                Spec::dial("A", &["R"]),
            ],
            Topology::Relay2 => vec![
                Spec::listen("R1", &[]),
                Spec::listen("R2", &["R1"]),
                Spec::dial("B", &["R2"]),
                Spec::dial("A", &["R1"]),
            ],
        }
    }
}

struct Spec {
    id: &'static str,
    listen: bool,
    dials: Vec<&'static str>,
}

impl Spec {
    fn listen(id: &'static str, dials: &[&'static str]) -> Spec {
        Spec {
            id,
            listen: true,
            dials: dials.to_vec(),
        }
    }
    fn dial(id: &'static str, dials: &[&'static str]) -> Spec {
        Spec {
            id,
            listen: false,
            dials: dials.to_vec(),
        }
    }
}

/// A running topology. Nodes stop when it is dropped (or explicitly with [`Mesh::stop`]).
pub struct Mesh {
    pub topology: Topology,
    /// The client node A.
    pub client: Arc<Node>,
    /// B's node id, the destination of every request.
    pub dst: String,
    /// Every node with its id, in start order.
    nodes: Vec<(&'static str, Arc<Node>)>,
}

/// A currently free loopback port (the OS picks it; we release it for the node to bind), never
/// the same one twice in this process: two picks made before either node binds could collide.
pub fn free_port() -> BenchResult<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free loopback port: {e}"))?;
        if !seen.contains(&port) {
            seen.push(port);
            return Ok(port);
        }
    }
    Err("no fresh loopback port after 1000 tries".into())
}

/// A bench node config: loopback only, default heartbeats, no agents or models.
pub fn node_config(
    id: &str,
    listen_port: Option<u16>,
    peers: &[(&str, u16)],
) -> BenchResult<Config> {
    let proxy_port = free_port()?;
    // listenPort must differ from proxyPort even when not listening.
    let listen_port_value = match listen_port {
        Some(p) => p,
        None => free_port()?,
    };
    let peers: Vec<_> = peers
        .iter()
        .map(|(node, port)| json!({"nodeId": node, "url": format!("ws://127.0.0.1:{port}")}))
        .collect();
    let v = json!({
        "nodeId": id,
        "secret": SECRET,
        "listen": listen_port.is_some(),
        "listenHost": "127.0.0.1",
        "listenPort": listen_port_value,
        "proxyPort": proxy_port,
        "peers": peers,
    });
    Config::from_json(&v)
        .map(|valid| valid.config)
        .map_err(|e| format!("bench config for {id} is invalid: {e}"))
}

/// Start the nodes of `topology` and wait until A reaches B.
pub fn build(topology: Topology) -> BenchResult<Mesh> {
    let specs = topology.specs();
    let mut ports: Vec<(&str, u16)> = Vec::new();
    for s in specs.iter().filter(|s| s.listen) {
        ports.push((s.id, free_port()?));
    }
    let port_of = |id: &str| ports.iter().find(|(n, _)| *n == id).map(|(_, p)| *p);
    let mut nodes = Vec::new();
    let started = Instant::now();
    for s in &specs {
        let peers: Vec<(&str, u16)> = s
            .dials
            .iter()
            .map(|d| port_of(d).map(|p| (*d, p)))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("{}: a dialed node does not listen", s.id))?;
        let cfg = node_config(s.id, if s.listen { port_of(s.id) } else { None }, &peers)?;
        let node = Arc::new(Node::new(cfg));
        node.start(&StartOptions::default())
            .map_err(|e| format!("{}: start {}: {e}", topology.name(), s.id))?;
        nodes.push((s.id, node));
    }
    let client = nodes
        .iter()
        .find(|(id, _)| *id == "A")
        .map(|(_, n)| n.clone())
        .ok_or("topology without A")?;
    let mesh = Mesh {
        topology,
        client,
        dst: "B".into(),
        nodes,
    };
    mesh.wait_for_route()?;
    let hops = mesh.hops_to_dst();
    eprintln!(
        "{}: {} nodes up, route A→B ({} hops) in {} ms, {} threads in this process",
        topology.name(),
        mesh.nodes.len(),
        hops.map(|h| h.to_string()).unwrap_or_else(|| "?".into()),
        started.elapsed().as_millis(),
        status_field("self", "Threads").unwrap_or(0)
    );
    if let Some(h) = hops {
        if h != topology.relays() + 1 {
            return Err(format!(
                "{}: A reaches B in {h} hops, expected {}",
                topology.name(),
                topology.relays() + 1
            ));
        }
    }
    Ok(mesh)
}

impl Mesh {
    /// Poll A's status until B is direct/relayed, then probe with `mesh.echo` until it answers.
    fn wait_for_route(&self) -> BenchResult<()> {
        let deadline = Instant::now() + ROUTE_DEADLINE;
        let mut last = String::from("B not in A's peers");
        while Instant::now() < deadline {
            let peer = self
                .client
                .status()
                .peers
                .into_iter()
                .find(|p| p.node_id == self.dst);
            match peer.map(|p| p.state) {
                Some(PeerState::Direct | PeerState::Relayed) => match self.probe() {
                    Ok(()) => return Ok(()),
                    Err(e) => last = format!("probe failed: {e}"),
                },
                Some(PeerState::Unreachable) => last = "B is unreachable from A".into(),
                None => {}
            }
            std::thread::sleep(ROUTE_POLL);
        }
        Err(format!(
            "{}: no route A→B within {} s ({last})",
            self.topology.name(),
            ROUTE_DEADLINE.as_secs()
        ))
    }

    fn probe(&self) -> BenchResult<()> {
        let node = self.client.clone();
        let dst = self.dst.clone();
        super::measure::on_runtime(&self.client, async move {
            node.request(&dst, "mesh.echo", b"probe".to_vec(), PROBE_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?
    }

    fn hops_to_dst(&self) -> Option<u32> {
        self.client
            .status()
            .peers
            .into_iter()
            .find(|p| p.node_id == self.dst)
            .and_then(|p| p.hops)
    }

    /// One JSON line with each node's core counters: proves relays relayed, and shows drops.
    pub fn report_counters(&self) {
        // The node publishes its counters at most every 100 ms; let the last ones land.
        std::thread::sleep(COUNTERS_SETTLE);
        let mut per_node = serde_json::Map::new();
        for (id, node) in &self.nodes {
            if let Some(s) = node.mesh_stats() {
                per_node.insert(
                    (*id).into(),
                    json!({
                        "frames_in": s.frames_in, "frames_out": s.frames_out,
                        "delivered": s.delivered, "relayed": s.relayed,
                        "dropped_backpressure": s.dropped_backpressure,
                        "dropped_no_route": s.dropped_no_route, "dropped_dup": s.dropped_dup,
                        "decode_errors": s.decode_errors,
                        "calls_started": s.calls_started, "calls_failed": s.calls_failed,
                    }),
                );
            }
        }
        let relayed: u64 = per_node
            .values()
            .filter_map(|v| v["relayed"].as_u64())
            .sum();
        eprintln!(
            "{}: core counters: {relayed} frames relayed in total",
            self.topology.name()
        );
        emit(json!({"bench": "counters", "topology": self.topology.name(), "nodes": per_node}));
    }

    /// Stop every node, dialers first so listeners see clean closes.
    pub fn stop(self) {
        for (_, node) in self.nodes.iter().rev() {
            node.stop();
        }
    }
}
