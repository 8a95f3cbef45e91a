//! Link-state routing: shortest paths from us over the graph the records describe.
//!
//! Vertices are our node and every live record. Our own edges come from our live links
//! (weight: our smoothed RTT). Any other edge A–B exists only if A's record lists B **and** B's
//! record lists A, so a silently dead node's stale record stops routing as soon as its
//! neighbours drop it. Remote weight = mean of both ends' reported RTTs (a zero report means
//! unmeasured), at least 1 ms. Dijkstra orders by (latency, hops, next hop id).

use crate::proto::{NodeId, NodeRecord};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// How to reach one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The neighbour to hand frames to.
    pub next_hop: NodeId,
    /// Links on the path.
    pub hops: u32,
    /// Sum of link RTTs along the path, ms.
    pub latency_ms: u64,
    /// The node before the destination on the path (for `path`).
    pub prev: NodeId,
}

/// Routes from us to every reachable node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: BTreeMap<NodeId, Route>,
}

impl RouteTable {
    /// The route to `dst`, if reachable.
    pub fn get(&self, dst: &str) -> Option<&Route> {
        self.routes.get(dst)
    }

    /// All routes by destination.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Route)> {
        self.routes.iter()
    }

    /// Nodes on the path from us to `dst` (excluding us, including `dst`).
    pub fn path(&self, dst: &str) -> Option<Vec<NodeId>> {
        let mut path = vec![dst.to_string()];
        let mut cur = self.routes.get(dst)?;
        while cur.hops > 1 {
            path.push(cur.prev.clone());
            cur = self.routes.get(&cur.prev)?;
        }
        path.reverse();
        Some(path)
    }
}

fn weight(a: u32, b: u32) -> u64 {
    let w = match (a, b) {
        (0, 0) => 1,
        (0, x) | (x, 0) => u64::from(x),
        (x, y) => (u64::from(x) + u64::from(y)) / 2,
    };
    w.max(1)
}

/// Compute the table. `own_links` = (peer, smoothed RTT ms or 0) of our live links.
pub fn compute<'a>(
    self_id: &str,
    own_links: &[(NodeId, u32)],
    records: impl Iterator<Item = &'a NodeRecord>,
) -> RouteTable {
    let records: Vec<&NodeRecord> = records.filter(|r| r.node != self_id).collect();
    let graph = Graph::build(self_id, own_links, &records);
    let best = graph.shortest_paths();
    let ids = &graph.ids;
    let mut routes = BTreeMap::new();
    for (i, b) in best.iter().enumerate() {
        if let Some((lat, hops, first, prev)) = b {
            routes.insert(
                ids[i].to_string(),
                Route {
                    next_hop: ids[*first].to_string(),
                    hops: *hops,
                    latency_ms: *lat,
                    prev: ids[*prev].to_string(),
                },
            );
        }
    }
    RouteTable { routes }
}

/// Best path found to one vertex: (latency, hops, first hop index, predecessor index).
type Best = Option<(u64, u32, usize, usize)>;

/// The graph routes run over: vertices by index, with symmetric edge weights.
struct Graph<'a> {
    /// Vertex ids in id order, so index order == id order (deterministic tie-breaks).
    ids: Vec<&'a str>,
    /// Our own index.
    me: usize,
    /// Edges per vertex: (neighbour index, weight ms).
    adj: Vec<Vec<(usize, u64)>>,
}

impl<'a> Graph<'a> {
    /// Vertices: us, our link peers and every record's node. Edges: our links (weighted with
    /// the peer's report of the link back to us), and every link two records both report.
    fn build(self_id: &'a str, own_links: &'a [(NodeId, u32)], records: &[&'a NodeRecord]) -> Self {
        let mut ids: Vec<&str> = records.iter().map(|r| r.node.as_str()).collect();
        ids.push(self_id);
        for (p, _) in own_links {
            ids.push(p);
        }
        ids.sort_unstable();
        ids.dedup();
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        let me = index[self_id];
        // Reported links per vertex: neighbour index -> rtt.
        let mut reported: Vec<HashMap<usize, u32>> = vec![HashMap::new(); ids.len()];
        for r in records {
            let u = index[r.node.as_str()];
            for l in &r.links {
                if let Some(&v) = index.get(l.peer.as_str()) {
                    reported[u].insert(v, l.rtt_ms);
                }
            }
        }
        let mut adj: Vec<Vec<(usize, u64)>> = vec![Vec::new(); ids.len()];
        for (p, rtt) in own_links {
            let v = index[p.as_str()];
            let back = reported[v].get(&me).copied().unwrap_or(0);
            // The same symmetric weight every other node computes for this edge (our advertised
            // RTT and the peer's), so all views agree once records have spread.
            adj[me].push((v, weight(*rtt, back)));
        }
        for u in 0..ids.len() {
            if u == me {
                continue;
            }
            for (&v, &rtt) in &reported[u] {
                if v == me || v == u {
                    continue;
                }
                if let Some(&back) = reported[v].get(&u) {
                    adj[u].push((v, weight(rtt, back)));
                }
            }
        }
        Graph { ids, me, adj }
    }

    /// Dijkstra from us: key (latency, hops, first hop index, vertex, predecessor).
    fn shortest_paths(&self) -> Vec<Best> {
        let (me, adj) = (self.me, &self.adj);
        let mut best: Vec<Best> = vec![None; self.ids.len()];
        let mut heap = BinaryHeap::new();
        let mut done = vec![false; self.ids.len()];
        done[me] = true;
        for &(v, w) in &adj[me] {
            heap.push(Reverse((w, 1u32, v, v, me)));
        }
        while let Some(Reverse((lat, hops, first, u, prev))) = heap.pop() {
            if done[u] {
                continue;
            }
            done[u] = true;
            best[u] = Some((lat, hops, first, prev));
            for &(v, w) in &adj[u] {
                if !done[v] {
                    heap.push(Reverse((lat + w, hops + 1, first, v, u)));
                }
            }
        }
        best
    }
}
