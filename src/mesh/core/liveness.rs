//! Liveness: heartbeats on every link, the verdict on a silent peer, indirect probes (SWIM's
//! ping-req) and local health (Lifeguard). See `mesh::ping` for the per-link clock and
//! `mesh::health` for the score.
//!
//! Flow, per link and tick:
//! ```text
//! silence ≥ T/2  ─▶ Suspect: `probe {node}` to up to PROBE_HELPERS talking neighbours
//!                   (neighbours the peer's record names first); each answers `probe_ack`
//!                   with how long ago it last heard the peer on its own link
//! silence ≥ T    ─▶ Dead, unless every neighbour asked stayed silent too: then the trouble is
//!                   more likely here (our network, our process) — local health drops (T
//!                   stretches) once per silent spell, and the verdict waits
//! ```
//! A dead link is closed either way; a neighbour that still hears the peer only means the peer
//! stays reachable through it (routes need both ends' records, so it is not declared
//! unreachable) and is counted as `heartbeat_timeouts_peer_alive`.
//!
//! A tick that comes late by a stall (see `LocalHealth::stall`) forgives every link the stall
//! and drops local health: nothing was read while we were not running.

use super::Mesh;
use crate::mesh::health::LocalHealth;
use crate::mesh::link::{LinkId, Probe};
use crate::mesh::ping::PingAction;
use crate::mesh::{DownReason, CLOSE_HEARTBEAT_TIMEOUT};
use crate::proto::frame::MAX_NODE_ID_BYTES;
use crate::proto::{Body, NodeId};

/// Neighbours asked about one silent peer.
pub const PROBE_HELPERS: usize = 2;

impl Mesh {
    pub(super) fn heartbeats(&mut self, now: u64) {
        let base = self.base_timeout_ms();
        let scale = self.health.scale();
        let due = self.links.values().map(|l| l.ping.deadline(scale)).min();
        if let Some(stall) =
            due.and_then(|d| LocalHealth::stall(now, d, self.cfg.heartbeat_interval_ms))
        {
            self.stats.local_stalls += 1;
            self.health.raise(now);
            for l in self.links.values_mut() {
                l.ping.forgive(now, stall);
            }
        }
        self.health.decay(now, base);
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            // Each poll either reports one due action or `Idle`; three actions (suspect, ping,
            // dead) are the most one tick can have.
            for _ in 0..4 {
                let jitter = self.rand();
                let scale = self.health.scale();
                let Some(l) = self.links.get_mut(&id) else {
                    break;
                };
                match l.ping.poll(now, jitter, scale) {
                    PingAction::Idle => break,
                    PingAction::Send { seq } => {
                        self.stats.pings_out += 1;
                        l.rtt_window.sent(seq, now);
                        self.send_local(now, id, Body::Ping { seq, t: now });
                    }
                    PingAction::Suspect => self.probe_indirectly(now, id),
                    PingAction::Dead => {
                        if !self.doubt_self(now, id) {
                            self.declare_dead(now, id);
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Ask up to [`PROBE_HELPERS`] talking neighbours whether they still hear `link`'s peer.
    fn probe_indirectly(&mut self, now: u64, link: LinkId) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let peer = l.peer.clone();
        let talking = self.base_timeout_ms() / 2;
        // The peer's own record names its neighbours: they are the ones likely to hear it.
        let named: Vec<&str> = self
            .records
            .get(&peer)
            .map(|e| e.record.links.iter().map(|x| x.peer.as_str()).collect())
            .unwrap_or_default();
        let mut helpers: Vec<(bool, LinkId)> = self
            .links
            .iter()
            .filter(|(id, h)| **id != link && h.ping.silence_ms(now) < talking)
            .map(|(id, h)| (!named.contains(&h.peer.as_str()), *id))
            .collect();
        helpers.sort();
        helpers.truncate(PROBE_HELPERS);
        let seq = self.rand();
        for (_, h) in &helpers {
            self.stats.probes_sent += 1;
            self.send_local(
                now,
                *h,
                Body::Probe {
                    node: peer.clone(),
                    seq,
                },
            );
        }
        if let Some(l) = self.links.get_mut(&link) {
            l.probe = Some(Probe {
                seq,
                asked: helpers.len() as u8,
                ..Probe::default()
            });
        }
    }

    /// At the timeout: blame ourselves instead of the peer if every neighbour we asked stayed
    /// silent as well (once per silent spell). `true` if the verdict waits.
    fn doubt_self(&mut self, now: u64, link: LinkId) -> bool {
        let Some(p) = self.links.get_mut(&link).and_then(|l| l.probe.as_mut()) else {
            return false;
        };
        if p.asked == 0 || p.answered > 0 || p.doubted {
            return false;
        }
        p.doubted = true;
        self.stats.self_doubts += 1;
        self.health.raise(now);
        true
    }

    fn declare_dead(&mut self, now: u64, link: LinkId) {
        self.stats.heartbeat_timeouts += 1;
        if self
            .links
            .get(&link)
            .and_then(|l| l.probe.as_ref())
            .is_some_and(|p| p.peer_heard)
        {
            self.stats.heartbeat_timeouts_peer_alive += 1;
        }
        self.drop_link(now, link, DownReason::HeartbeatTimeout);
        self.close(link, CLOSE_HEARTBEAT_TIMEOUT, "heartbeat_timeout");
    }

    /// A neighbour asks whether we still hear `node`: answer from our own link to it.
    pub(super) fn on_probe(&mut self, now: u64, link: LinkId, node: NodeId, seq: u64) {
        if node.is_empty() || node.len() > MAX_NODE_ID_BYTES {
            self.count_decode_code("bad_probe");
            return;
        }
        let heard_ms = self
            .by_peer
            .get(&node)
            .and_then(|id| self.links.get(id))
            .map(|l| l.ping.silence_ms(now));
        self.stats.probes_served += 1;
        self.send_local(
            now,
            link,
            Body::ProbeAck {
                node,
                seq,
                heard_ms,
            },
        );
    }

    /// An answer to one of our probes, from `link`'s peer.
    pub(super) fn on_probe_ack(
        &mut self,
        link: LinkId,
        node: NodeId,
        seq: u64,
        heard_ms: Option<u64>,
    ) {
        let talking = self.base_timeout_ms() / 2;
        if !self.links.contains_key(&link) {
            return;
        }
        let Some(l) = self
            .by_peer
            .get(&node)
            .and_then(|id| self.links.get_mut(id))
        else {
            return;
        };
        let Some(p) = l.probe.as_mut().filter(|p| p.seq == seq) else {
            return;
        };
        self.stats.probe_acks += 1;
        p.answered = p.answered.saturating_add(1);
        p.peer_heard |= heard_ms.is_some_and(|h| h < talking);
    }

    /// Bytes of a frame arrived on `link` at `at` (a large message still in transit): the
    /// peer is talking even though no whole frame came yet. An `at` older than what was
    /// already heard changes nothing.
    pub fn handle_link_activity(&mut self, at: u64, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if at <= l.ping.last_heard() {
            return;
        }
        l.last_seen = l.last_seen.max(at);
        l.ping.on_activity(at);
        l.probe = None;
    }

    /// Links whose peer is suspected now (silent for half the timeout).
    pub fn suspected_links(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.links
            .iter()
            .filter(|(_, l)| l.ping.suspected())
            .map(|(id, _)| *id)
    }
}
