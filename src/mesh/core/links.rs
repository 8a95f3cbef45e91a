//! Link lifecycle: admission, link up (with the duplicate tie-break) and down, graceful
//! shutdown, and pongs (the RTT they measure). Heartbeats and verdicts are in `liveness`.

use super::Mesh;
use crate::identity::key::PublicKey;
use crate::mesh::link::{Direction, Link, LinkId, RttWindow, RTT_MIN_BUCKET_MS};
use crate::mesh::ping::PingTracker;
use crate::mesh::trust::Refusal;
use crate::mesh::{DownReason, MeshEvent, Output, CLOSE_NORMAL};
use crate::proto::signed::leave_message;
use crate::proto::{Body, NodeId, RejectCode};

impl Mesh {
    /// Number of live links.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The peer of a live link.
    pub fn link_peer(&self, link: LinkId) -> Option<&str> {
        self.links.get(&link).map(|l| l.peer.as_str())
    }

    /// The node key in `node`'s record (the key that signed it and seals its calls).
    pub fn key_of(&self, node: &str) -> Option<PublicKey> {
        self.records.get(node).map(|e| e.record.key)
    }

    /// Moves whenever [`Mesh::trust_rows`] would change.
    pub fn trust_changes(&self) -> u64 {
        self.trust.changes()
    }

    /// What this node trusts, node by node (pins, first-seen keys, refused keys), for status.
    pub fn trust_rows(&self) -> Vec<crate::mesh::trust::TrustRow> {
        self.trust.rows()
    }

    /// Forget the key trusted for `node` (an operator's trust reset): its next key is first
    /// seen again. `true` if anything was dropped. A pin stays.
    pub fn reset_trust(&mut self, node: &str) -> bool {
        self.trust.reset(node)
    }

    /// Smoothed RTT of the live link to `peer`, ms.
    pub fn link_rtt(&self, peer: &str) -> Option<u64> {
        let id = self.by_peer.get(peer)?;
        self.links.get(id)?.ping.srtt_ms()
    }

    /// Whether `node`, announcing `key`, may open a link now (`Mesh::admit` in the handshake):
    /// not us, the key trusted for its node id and not revoked, no live link to it, room for a
    /// link. No side effect: the shell asks before the peer's proofs are checked; the binding
    /// is made at [`Mesh::handle_link_up_keyed`], and a refusal the handshake ended with is
    /// reported through [`Mesh::note_refused_key`].
    pub fn admit(&self, node: &str, key: &PublicKey) -> Result<(), RejectCode> {
        if node == self.cfg.node_id {
            return Err(RejectCode::SelfId);
        }
        self.trust.check(node, key).map_err(reject_code)?;
        if self.by_peer.contains_key(node) {
            return Err(RejectCode::DuplicateNode);
        }
        if self.links.len() >= self.cfg.max_links {
            return Err(RejectCode::Capacity);
        }
        Ok(())
    }

    /// A handshake ended refusing `node`'s `key` after the peer proved the secret and the key
    /// (`key_changed`, `revoked`): count and report it like a refused record.
    pub fn note_refused_key(&mut self, now: u64, node: &str, key: &PublicKey) {
        self.touch(now);
        if let Err(refusal) = self.trust.check(node, key) {
            self.refuse_key(now, node, *key, refusal, "handshake");
        }
    }

    /// [`Mesh::handle_link_up`] for a link whose peer proved `key` in the handshake: the key is
    /// checked once more (another link may have bound the node id meanwhile) and bound to the
    /// node id if it is the first one seen ([`MeshEvent::KeyLearned`]); a refused key closes
    /// the link with its rejection code.
    pub fn handle_link_up_keyed(
        &mut self,
        now: u64,
        link: LinkId,
        peer: NodeId,
        key: PublicKey,
        direction: Direction,
    ) {
        self.touch(now);
        match self.trust.check(&peer, &key) {
            Err(refusal) => {
                self.refuse_key(now, &peer, key, refusal, "handshake");
                let code = reject_code(refusal);
                self.close(link, code.close_code(), code.as_str());
            }
            Ok(new) => {
                if new && self.trust.learn(&peer, key) {
                    self.event(MeshEvent::KeyLearned {
                        node: peer.clone(),
                        key,
                    });
                }
                self.handle_link_up(now, link, peer, direction);
            }
        }
    }

    /// Count a handshake rejection (the shell logs it once with its reason).
    pub fn note_handshake_reject(&mut self, code: RejectCode) {
        *self
            .stats
            .handshake_rejects
            .entry(code.as_str().to_string())
            .or_insert(0) += 1;
    }

    /// An authenticated link came up (after the handshake's `Done`).
    pub fn handle_link_up(&mut self, now: u64, link: LinkId, peer: NodeId, direction: Direction) {
        self.touch(now);
        if self.shut_down || self.links.contains_key(&link) {
            return;
        }
        if peer == self.cfg.node_id {
            self.close(link, RejectCode::SelfId.close_code(), "self_id");
            return;
        }
        if let Some(&old) = self.by_peer.get(&peer) {
            if !self.new_link_wins(now, link, old, &peer, direction) {
                return;
            }
        }
        if self.links.len() >= self.cfg.max_links {
            self.close(link, RejectCode::Capacity.close_code(), "capacity");
            return;
        }
        let ping = PingTracker::new(
            now,
            self.cfg.heartbeat_interval_ms,
            self.cfg.heartbeat_misses,
        );
        self.links.insert(
            link,
            Link {
                peer: peer.clone(),
                direction,
                ping,
                up_since: now,
                last_seen: now,
                advertised_rtt: RTT_MIN_BUCKET_MS,
                probe: None,
                rtt_window: RttWindow::default(),
            },
        );
        self.by_peer.insert(peer.clone(), link);
        self.event(MeshEvent::PeerUp { node: peer, link });
        self.own_dirty = true;
        self.routes_dirty = true;
        self.work_pending = true;
        self.send_digest(now, link, false);
    }

    /// A second link `link` to `peer`, which already has the live link `old`: both sides keep
    /// the link whose dialer has the smaller node id (§6.1). `true` if the new link wins (the
    /// old one is dropped and closed), `false` if it loses (the new one is closed).
    fn new_link_wins(
        &mut self,
        now: u64,
        link: LinkId,
        old: LinkId,
        peer: &str,
        direction: Direction,
    ) -> bool {
        let new_dialer = match direction {
            Direction::Inbound => peer,
            Direction::Outbound => self.cfg.node_id.as_str(),
        };
        let old_dialer = self
            .links
            .get(&old)
            .map(|l| l.dialer(&self.cfg.node_id).to_string())
            .unwrap_or_default();
        let code = RejectCode::DuplicateNode.close_code();
        if new_dialer < old_dialer.as_str() {
            self.drop_link(now, old, DownReason::Duplicate);
            self.close(old, code, "duplicate_node");
            true
        } else {
            self.close(link, code, "duplicate_node");
            false
        }
    }

    /// The shell saw a link close or fail. Unknown links are ignored.
    pub fn handle_link_down(&mut self, now: u64, link: LinkId, reason: String) {
        self.touch(now);
        self.drop_link(now, link, DownReason::Closed(reason));
    }

    pub(super) fn close(&mut self, link: LinkId, code: u16, reason: &str) {
        self.outputs.push_back(Output::Close {
            link,
            code,
            reason: reason.to_string(),
        });
    }

    pub(super) fn drop_link(&mut self, _now: u64, link: LinkId, reason: DownReason) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        if self.by_peer.get(&l.peer) == Some(&link) {
            self.by_peer.remove(&l.peer);
        }
        self.event(MeshEvent::PeerDown {
            node: l.peer,
            link,
            reason,
        });
        self.own_dirty = true;
        self.routes_dirty = true;
        self.work_pending = true;
    }

    /// Graceful shutdown: `leave` on every link, then close them all (1000). Later inputs are
    /// ignored and `send` fails with `shut_down`.
    pub fn shutdown(&mut self, now: u64) {
        self.touch(now);
        if self.shut_down {
            return;
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        let incarnation = self.own.incarnation;
        let sig = self
            .cfg
            .identity
            .sign(&leave_message(&self.cfg.node_id, incarnation));
        for link in links {
            let body = Body::Leave {
                node: self.cfg.node_id.clone(),
                incarnation,
                sig,
            };
            self.send_local(now, link, body);
            self.drop_link(now, link, DownReason::Shutdown);
            self.close(link, CLOSE_NORMAL, "leaving");
        }
        self.shut_down = true;
    }

    pub(super) fn on_pong(&mut self, now: u64, link: LinkId, seq: u64, t: u64) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        l.rtt_window.answered(seq, t, now);
        if l.ping.on_pong(now, seq, t).is_none() {
            return;
        }
        // Only a change of the advertised bucket is worth a record version (see `link`).
        let significant = l.readvertise().is_some();
        if significant {
            self.routes_dirty = true;
            self.work_pending = true;
            self.note_rtt_change(now);
        }
    }
}

/// The handshake rejection for a refused key.
fn reject_code(refusal: Refusal) -> RejectCode {
    match refusal {
        Refusal::Revoked => RejectCode::Revoked,
        Refusal::KeyChanged { .. } => RejectCode::KeyChanged,
        Refusal::Full => RejectCode::Capacity,
    }
}
