//! In-memory network for the sans-IO mesh core: N [`Mesh`] instances, a virtual clock, per-link
//! latency, seeded xorshift randomness for topology and loss, links that can be cut cleanly or
//! silently, and nodes that can die silently. No sockets, no sleeps, fully deterministic.
//!
//! Link ids are connection indices: both ends of connection `c` use `LinkId(c)`.

#![allow(dead_code)]

use clawmatrix::mesh::{
    Direction, LinkId, LocalInfo, Mesh, MeshConfig, MeshEvent, Output, PeerState,
};
use clawmatrix::proto::{Header, NodeId};
use std::collections::{BTreeMap, VecDeque};

/// Deterministic keys for a simulated node: its node key from its name, its exchange key from
/// its name and `seed` (a new seed is a new process).
pub fn sim_keys(
    name: &str,
    seed: u64,
) -> (
    std::sync::Arc<clawmatrix::identity::NodeKey>,
    std::sync::Arc<clawmatrix::identity::ExchangeKey>,
) {
    use sha2::{Digest, Sha256};
    let ed: [u8; 32] = Sha256::digest(format!("sim node key {name}").as_bytes()).into();
    let x: [u8; 32] = Sha256::digest(format!("sim exchange key {name} {seed}").as_bytes()).into();
    (
        std::sync::Arc::new(clawmatrix::identity::NodeKey::from_seed(&ed)),
        std::sync::Arc::new(clawmatrix::identity::ExchangeKey::from_secret(x)),
    )
}

/// [`MeshConfig::new`] with [`sim_keys`].
pub fn sim_config(name: &str, incarnation: u64, seed: u64) -> MeshConfig {
    let (ed, x) = sim_keys(name, seed);
    MeshConfig::new(name, incarnation, seed, ed, x)
}

/// xorshift64*: small, seeded, good enough for topology and loss.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        for c in b.chunks_mut(8) {
            c.copy_from_slice(&self.next_u64().to_be_bytes());
        }
        b
    }
}

pub struct SimNode {
    pub mesh: Mesh,
    pub alive: bool,
    pub deliveries: Vec<(NodeId, Header, Vec<u8>)>,
    pub events: Vec<(u64, MeshEvent)>,
    timer: Option<u64>,
    /// The node's process is stopped until then (`Sim::pause`): no tick, no input.
    paused_until: u64,
}

pub struct Conn {
    pub a: usize,
    pub b: usize,
    pub latency: u64,
    /// false once closed cleanly or cut silently: frames are dropped.
    pub up: bool,
    /// Arrival time of the last frame each way (a→b, b→a): jittered frames never overtake
    /// each other on one link, as on a TCP stream.
    last_at: [u64; 2],
}

enum Msg {
    Data(Vec<u8>),
    Close,
}

pub struct Sim {
    pub now: u64,
    pub nodes: Vec<SimNode>,
    pub conns: Vec<Conn>,
    queue: BTreeMap<(u64, u64), (usize, usize, Msg)>,
    seq: u64,
    pub rng: XorShift,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Frames handed to the network (including lost ones).
    pub frames_sent: u64,
    /// Bytes handed to the network.
    pub bytes_sent: u64,
    /// Extra one-way delay per frame, uniform in `0..=jitter` ms (FIFO per link direction kept).
    pub jitter: u64,
    /// Occasional long delays, as a busy process or a congested path has them: with probability
    /// `spike.0` a frame is held `spike.1` ms more (and the frames behind it on that link too).
    pub spike: (f64, u64),
}

pub fn node_name(i: usize) -> String {
    format!("n{i:03}")
}

pub fn index_of(name: &str) -> usize {
    name[1..].parse().expect("sim node name")
}

impl Sim {
    /// `n` nodes with default config except what `tweak` changes.
    pub fn new(n: usize, seed: u64, tweak: impl Fn(&mut MeshConfig)) -> Sim {
        let mut rng = XorShift::new(seed);
        let nodes = (0..n)
            .map(|i| {
                let mut cfg = sim_config(&node_name(i), 1, rng.next_u64());
                tweak(&mut cfg);
                let local = LocalInfo {
                    listen: i % 2 == 0,
                    ..LocalInfo::default()
                };
                SimNode {
                    mesh: Mesh::new(cfg, local, 0),
                    alive: true,
                    deliveries: Vec::new(),
                    events: Vec::new(),
                    timer: None,
                    paused_until: 0,
                }
            })
            .collect();
        let mut sim = Sim {
            now: 0,
            nodes,
            conns: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            rng,
            loss: 0.0,
            frames_sent: 0,
            bytes_sent: 0,
            jitter: 0,
            spike: (0.0, 0),
        };
        for i in 0..n {
            sim.drain(i);
        }
        sim
    }

    pub fn mesh(&self, i: usize) -> &Mesh {
        &self.nodes[i].mesh
    }

    pub fn mesh_mut(&mut self, i: usize) -> &mut Mesh {
        &mut self.nodes[i].mesh
    }

    /// Call `f` on node `i`'s mesh at the current time, then drain its outputs.
    pub fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Mesh, u64) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[i].mesh, now);
        self.drain(i);
        r
    }

    /// Open a link a → b (a dials) with one-way `latency` ms; returns the link id.
    pub fn connect(&mut self, a: usize, b: usize, latency: u64) -> LinkId {
        let c = self.conns.len();
        self.conns.push(Conn {
            a,
            b,
            latency,
            up: true,
            last_at: [0, 0],
        });
        let link = LinkId(c as u64);
        let now = self.now;
        let (na, nb) = (node_name(a), node_name(b));
        self.nodes[a]
            .mesh
            .handle_link_up(now, link, nb, Direction::Outbound);
        self.nodes[b]
            .mesh
            .handle_link_up(now, link, na, Direction::Inbound);
        self.drain(a);
        self.drain(b);
        link
    }

    fn conn_between(&self, a: usize, b: usize) -> Option<usize> {
        self.conns
            .iter()
            .rposition(|c| c.up && ((c.a == a && c.b == b) || (c.a == b && c.b == a)))
    }

    /// Close the a–b link cleanly: both sides see the socket close now.
    pub fn cut(&mut self, a: usize, b: usize) {
        if let Some(c) = self.conn_between(a, b) {
            self.conns[c].up = false;
            let now = self.now;
            for i in [a, b] {
                self.nodes[i]
                    .mesh
                    .handle_link_down(now, LinkId(c as u64), "cut".into());
                self.drain(i);
            }
        }
    }

    /// Drop every frame on the a–b link from now on; nobody is told.
    pub fn cut_silently(&mut self, a: usize, b: usize) {
        if let Some(c) = self.conn_between(a, b) {
            self.conns[c].up = false;
        }
    }

    /// Node `i` stops: no more ticks, frames to it vanish, no close is sent.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.nodes[i].timer = None;
    }

    /// Node `i`'s process stops for `ms` (SIGSTOP, a long GC pause, a starved thread): frames
    /// for it wait in the socket, its timer fires late. When it resumes, its timer runs before
    /// the frames that waited (the worst order for a node judging its peers).
    pub fn pause(&mut self, i: usize, ms: u64) {
        self.nodes[i].paused_until = self.now + ms;
        if let Some(t) = self.nodes[i].timer.as_mut() {
            *t = (*t).max(self.now + ms);
        }
    }

    /// Graceful shutdown of node `i` (leave + close), then it stops.
    pub fn shutdown(&mut self, i: usize) {
        self.with(i, |m, now| m.shutdown(now));
        self.kill(i);
    }

    fn schedule(&mut self, at: u64, conn: usize, to: usize, msg: Msg) {
        self.seq += 1;
        self.queue.insert((at, self.seq), (conn, to, msg));
    }

    /// Carry one frame from node `i` over connection `link` (latency, loss, cut links).
    fn transmit(&mut self, i: usize, link: LinkId, bytes: Vec<u8>) {
        let c = link.0 as usize;
        self.frames_sent += 1;
        self.bytes_sent += bytes.len() as u64;
        let Some(conn) = self.conns.get(c) else {
            return;
        };
        let other = if conn.a == i { conn.b } else { conn.a };
        if !conn.up || !self.nodes[other].alive || self.rng.chance(self.loss) {
            return;
        }
        let mut extra = if self.jitter > 0 {
            self.rng.below(self.jitter + 1)
        } else {
            0
        };
        if self.spike.0 > 0.0 && self.rng.chance(self.spike.0) {
            extra += self.spike.1;
        }
        let way = usize::from(conn.a != i);
        let at = (self.now + conn.latency + extra).max(conn.last_at[way]);
        self.conns[c].last_at[way] = at;
        self.schedule(at, c, other, Msg::Data(bytes));
    }

    /// Act on every output of node `i`.
    pub fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].mesh.poll_output() {
            match out {
                Output::Send { link, bytes, .. } => self.transmit(i, link, bytes),
                Output::SendShared { link, bytes } => self.transmit(i, link, bytes.to_vec()),
                Output::Close { link, .. } => {
                    let c = link.0 as usize;
                    if let Some(conn) = self.conns.get_mut(c) {
                        let was_up = conn.up;
                        conn.up = false;
                        let other = if conn.a == i { conn.b } else { conn.a };
                        let at = self.now + conn.latency;
                        if was_up {
                            self.schedule(at, c, other, Msg::Close);
                        }
                    }
                }
                Output::Deliver {
                    from,
                    header,
                    payload,
                } => self.nodes[i].deliveries.push((from, header, payload)),
                Output::Event(e) => self.nodes[i].events.push((self.now, e)),
            }
        }
        let paused_until = self.nodes[i].paused_until;
        self.nodes[i].timer = if self.nodes[i].alive {
            self.nodes[i]
                .mesh
                .poll_timeout()
                .map(|t| t.max(paused_until))
        } else {
            None
        };
    }

    /// Process everything due up to and including `t`; the clock ends at `t`.
    pub fn run_until(&mut self, t: u64) {
        loop {
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.timer.map(|x| (x, i)))
                .min();
            let msg_first = match (next_msg, next_timer) {
                (None, None) => break,
                (Some(m), Some((x, _))) => m <= x,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if msg_first {
                let Some((&(at, s), _)) = self.queue.iter().next() else {
                    break;
                };
                if at > t {
                    break;
                }
                let Some((conn, to, msg)) = self.queue.remove(&(at, s)) else {
                    break;
                };
                if self.nodes[to].paused_until > at {
                    // Waits in the socket; delivered just after the node's first tick.
                    let later = self.nodes[to].paused_until + 1;
                    self.seq += 1;
                    self.queue.insert((later, self.seq), (conn, to, msg));
                    continue;
                }
                self.now = self.now.max(at);
                if !self.nodes[to].alive {
                    continue;
                }
                let now = self.now;
                match msg {
                    Msg::Data(bytes) => {
                        self.nodes[to]
                            .mesh
                            .handle_data(now, LinkId(conn as u64), &bytes)
                    }
                    Msg::Close => self.nodes[to].mesh.handle_link_down(
                        now,
                        LinkId(conn as u64),
                        "closed by peer".into(),
                    ),
                }
                self.drain(to);
            } else {
                let Some((at, i)) = next_timer else {
                    break;
                };
                if at > t {
                    break;
                }
                self.now = self.now.max(at);
                let now = self.now;
                self.nodes[i].mesh.handle_tick(now);
                self.drain(i);
            }
        }
        self.now = self.now.max(t);
    }

    pub fn run_for(&mut self, d: u64) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Hop distances from `src` over up links between alive nodes.
    pub fn bfs(&self, src: usize) -> Vec<Option<u32>> {
        let n = self.nodes.len();
        let mut adj = vec![Vec::new(); n];
        for c in self.conns.iter().filter(|c| c.up) {
            if self.nodes[c.a].alive && self.nodes[c.b].alive {
                adj[c.a].push(c.b);
                adj[c.b].push(c.a);
            }
        }
        let mut dist = vec![None; n];
        dist[src] = Some(0);
        let mut q = VecDeque::from([src]);
        while let Some(u) = q.pop_front() {
            let d = dist[u].unwrap_or(0);
            for &v in &adj[u] {
                if dist[v].is_none() {
                    dist[v] = Some(d + 1);
                    q.push_back(v);
                }
            }
        }
        dist
    }

    /// First reason the mesh views disagree with the true topology, if any.
    /// Correct = every alive node sees every node in its component reachable with the true hop
    /// count through a neighbour one hop closer, and everything else not reachable.
    pub fn divergence(&self) -> Option<String> {
        let n = self.nodes.len();
        let dists: Vec<Vec<Option<u32>>> = (0..n).map(|i| self.bfs(i)).collect();
        for i in (0..n).filter(|&i| self.nodes[i].alive) {
            let views: BTreeMap<NodeId, _> = self.nodes[i]
                .mesh
                .peers()
                .into_iter()
                .map(|p| (p.node.clone(), p))
                .collect();
            for (j, dj) in dists[i].iter().enumerate() {
                if j == i {
                    continue;
                }
                let view = views.get(&node_name(j));
                match (dj, view) {
                    (Some(d), None) => return Some(format!("{i} does not know {j} (dist {d})")),
                    (Some(d), Some(v)) => match (&v.state, v.hops) {
                        (PeerState::Unreachable { .. }, _) => {
                            return Some(format!("{i} sees {j} unreachable (dist {d})"))
                        }
                        (PeerState::Via { next_hop, hops }, _) => {
                            let nh = index_of(next_hop);
                            if *hops != *d || dists[nh][j] != Some(d - 1) || dists[i][nh] != Some(1)
                            {
                                return Some(format!(
                                    "{i} routes to {j} via {nh} in {hops} hops, true dist {d}"
                                ));
                            }
                        }
                        (PeerState::Direct, h) => {
                            if *d != 1 || h != Some(1) {
                                return Some(format!("{i} direct to {j} but dist {d} hops {h:?}"));
                            }
                        }
                    },
                    (None, Some(v)) => {
                        if !matches!(v.state, PeerState::Unreachable { .. }) {
                            return Some(format!("{i} still reaches {j} ({:?})", v.state));
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        None
    }

    /// Run in `step` ms slices until the views match the topology; returns the convergence time.
    pub fn run_until_converged(&mut self, max_t: u64, step: u64) -> Result<u64, String> {
        loop {
            if self.divergence().is_none() {
                return Ok(self.now);
            }
            if self.now >= max_t {
                return Err(self.divergence().unwrap_or_default());
            }
            self.run_for(step);
        }
    }

    /// Connected random graph: a random spanning tree plus `extra` random chords.
    pub fn random_topology(&mut self, extra: usize, latency: u64) {
        let n = self.nodes.len();
        for i in 1..n {
            let j = self.rng.below(i as u64) as usize;
            self.connect(i, j, latency);
        }
        let mut added = 0;
        while added < extra {
            let a = self.rng.below(n as u64) as usize;
            let b = self.rng.below(n as u64) as usize;
            if a != b && self.conn_between(a, b).is_none() {
                self.connect(a, b, latency);
                added += 1;
            }
        }
    }

    /// 0 – 1 – 2 – … – n-1.
    pub fn line_topology(&mut self, latency: u64) {
        for i in 1..self.nodes.len() {
            self.connect(i, i - 1, latency);
        }
    }

    /// Put raw bytes on the a→b link as if `a` had sent them (for crafted frames).
    pub fn inject(&mut self, a: usize, b: usize, bytes: Vec<u8>) {
        let c = self.conn_between(a, b).expect("link a-b is up");
        let at = self.now + self.conns[c].latency;
        self.schedule(at, c, b, Msg::Data(bytes));
    }

    /// Node `i`'s view of node `j`.
    pub fn view(&self, i: usize, j: usize) -> Option<clawmatrix::mesh::PeerView> {
        let name = node_name(j);
        self.nodes[i]
            .mesh
            .peers()
            .into_iter()
            .find(|p| p.node == name)
    }

    /// Events of node `i` matching `f`, with their times.
    pub fn events_where(&self, i: usize, f: impl Fn(&MeshEvent) -> bool) -> Vec<(u64, MeshEvent)> {
        self.nodes[i]
            .events
            .iter()
            .filter(|(_, e)| f(e))
            .cloned()
            .collect()
    }
}
