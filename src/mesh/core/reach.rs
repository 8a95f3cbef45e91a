//! Reachability: recomputing routes when something changed (reachable / unreachable events,
//! calls failed for want of a route), forgetting nodes unreachable for `forget_after_ms`, and
//! the two read views built on the routes: [`Mesh::peers`] and [`Mesh::resolve`].

use super::Mesh;
use crate::mesh::records::RecordStore;
use crate::mesh::routes::{self, Route};
use crate::mesh::target::{self, Candidate, Reach, Target};
use crate::mesh::{CallFailure, MeshEvent, PeerState, PeerView};
use crate::proto::NodeId;
use std::collections::HashMap;

/// Whether `a`'s record lists a link to `b`.
fn lists(records: &RecordStore, a: &str, b: &str) -> bool {
    records
        .get(a)
        .is_some_and(|e| e.left_at.is_none() && e.record.links.iter().any(|l| l.peer == b))
}

impl Mesh {
    /// Every known node as seen from here (routes as of the last tick), in node-id order.
    pub fn peers(&self) -> Vec<PeerView> {
        self.records
            .iter()
            .map(|(node, e)| {
                let route = if e.left_at.is_some() {
                    None
                } else {
                    self.routes.get(node)
                };
                let direct = self.by_peer.get(node).and_then(|l| self.links.get(l));
                let state = match (direct, route) {
                    (Some(_), _) => PeerState::Direct,
                    (None, Some(r)) => PeerState::Via {
                        next_hop: r.next_hop.clone(),
                        hops: r.hops,
                    },
                    (None, None) => PeerState::Unreachable {
                        since: e.unreachable_since.or(e.left_at).unwrap_or(e.last_seen),
                    },
                };
                PeerView {
                    node: node.clone(),
                    state,
                    latency_ms: route.map(|r| self.path_latency(r)),
                    link_rtt: direct.and_then(|l| l.rtt_window.percentiles(self.last_now)),
                    hops: route.map(|r| r.hops),
                    listen: e.record.listen,
                    agents: e.record.agents.clone(),
                    models: e.record.models.clone(),
                    tags: e.record.tags.clone(),
                    last_seen_ms: direct.map_or(e.last_seen, |l| l.last_seen.max(e.last_seen)),
                    incarnation: e.record.incarnation,
                    version: e.record.version,
                    key: e.record.key,
                }
            })
            .collect()
    }

    /// What status shows as a route's latency: the measured smoothed RTT of the first link,
    /// plus the advertised RTT buckets of the links beyond it (records carry buckets, §6.3, so
    /// that part is an upper estimate). Routes themselves weigh every link by its buckets.
    fn path_latency(&self, r: &Route) -> u64 {
        let measured = self
            .by_peer
            .get(&r.next_hop)
            .and_then(|l| self.links.get(l))
            .and_then(|l| l.ping.srtt_ms());
        let first_weight = self
            .routes
            .get(&r.next_hop)
            .filter(|f| f.hops == 1)
            .map(|f| f.latency_ms);
        match (measured, first_weight) {
            (Some(m), Some(w)) => r.latency_ms.saturating_sub(w).saturating_add(m),
            _ => r.latency_ms,
        }
    }

    /// Ordered candidates for `target` among reachable nodes within `default_ttl` hops, minus
    /// `exclude` (nodes that already failed this request). Our own node is never a candidate.
    pub fn resolve(&self, target: &Target, exclude: &[NodeId]) -> Vec<Candidate> {
        let ttl = u32::from(self.cfg.default_ttl);
        let reach = self.records.iter().filter_map(|(node, e)| {
            if e.left_at.is_some() {
                return None;
            }
            let r = self.routes.get(node)?;
            (r.hops <= ttl).then(|| Reach {
                record: &e.record,
                direct: self.by_peer.contains_key(node),
                latency_ms: r.latency_ms,
                hops: r.hops,
            })
        });
        target::resolve(target, reach, exclude)
    }

    /// Recompute routes if anything changed; emit reachability events and fail calls whose
    /// destination has no route any more.
    pub(super) fn refresh_routes(&mut self, now: u64) {
        if !self.routes_dirty {
            return;
        }
        self.routes_dirty = false;
        // Weigh our own links with the RTT we advertised, not the live one: every node must
        // compute routes over the same edge weights, or hop-by-hop forwarding can bounce a frame
        // back the way it came (dropped as a loop) while views disagree.
        let own_links: Vec<(NodeId, u32)> = self
            .links
            .values()
            .map(|l| (l.peer.clone(), l.advertised_rtt))
            .collect();
        let new = routes::compute(&self.cfg.node_id, &own_links, self.records.live());
        let old = std::mem::replace(&mut self.routes, new);
        let mut events = Vec::new();
        for (node, e) in self.records.iter_mut() {
            match (old.get(node), self.routes.get(node)) {
                (o, Some(n)) => {
                    e.unreachable_since = None;
                    if o.is_none_or(|o| o.next_hop != n.next_hop) {
                        events.push(MeshEvent::Reachable {
                            node: node.clone(),
                            next_hop: n.next_hop.clone(),
                            hops: n.hops,
                        });
                    }
                }
                (Some(_), None) => {
                    e.unreachable_since.get_or_insert(now);
                    events.push(MeshEvent::Unreachable { node: node.clone() });
                }
                (None, None) => {
                    e.unreachable_since.get_or_insert(now);
                }
            }
        }
        for ev in events {
            self.event(ev);
        }
        let routes = &self.routes;
        for (call_id, c) in self.calls.take_where(|c| routes.get(&c.dst).is_none()) {
            self.fail_call(call_id, c.dst, CallFailure::Unreachable);
        }
        // A call whose path lost a link may have lost frames on it (a relay killed or cut
        // off mid-stream): it fails now, with the reason, rather than waiting out its deadline
        // for chunks that will never come or failing later on a gap in the stream.
        let (records, by_peer, self_id) = (&self.records, &self.by_peer, &self.cfg.node_id);
        let mut intact: HashMap<NodeId, bool> = HashMap::new();
        let broken = self.calls.take_where(|c| {
            !*intact.entry(c.dst.clone()).or_insert_with(|| {
                old.path(&c.dst).is_none_or(|path| {
                    let mut from: &str = self_id;
                    path.iter().all(|to| {
                        let ok = if from == self_id.as_str() {
                            by_peer.contains_key(to)
                        } else {
                            lists(records, from, to) && lists(records, to, from)
                        };
                        from = to;
                        ok
                    })
                })
            })
        });
        for (call_id, c) in broken {
            // Best effort: the server stops work nobody will read (sent on the new path).
            let body = crate::proto::Body::Cancel {
                call_id,
                reason: "path_broken".to_string(),
            };
            let _ = self.send(now, c.dst.clone(), body, Vec::new());
            self.fail_call(call_id, c.dst, CallFailure::PathBroken);
        }
    }

    pub(super) fn forget(&mut self, now: u64) {
        self.records.expire_tombstones(now);
        let after = self.cfg.forget_after_ms;
        let due: Vec<NodeId> = self
            .records
            .iter()
            .filter(|(_, e)| {
                e.unreachable_since
                    .or(e.left_at)
                    .is_some_and(|s| now >= s.saturating_add(after))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            if self.records.forget(&node, now.saturating_add(after)) {
                self.e2e.forget(&node);
                self.event(MeshEvent::Forgotten { node });
                self.routes_dirty = true;
            }
        }
        self.refresh_routes(now);
    }
}
