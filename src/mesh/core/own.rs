//! Our own record: what we offer (`update_local`), publishing a new version at the tick
//! (with our links and their re-advertised RTT buckets, at most one RTT-driven version per
//! heartbeat interval), and copies of our record that come back to us.

use super::Mesh;
use crate::mesh::{LocalInfo, UpdateError, MAX_RECORD_BYTES, MAX_RECORD_STAMP};
use crate::proto::LinkInfo;

impl Mesh {
    /// Replace what we offer; bumps our version and gossips it at the next tick.
    pub fn update_local(&mut self, now: u64, local: LocalInfo) -> Result<(), UpdateError> {
        self.touch(now);
        let mut candidate = self.own.clone();
        candidate.listen = local.listen;
        candidate.agents = local.agents;
        candidate.models = local.models;
        candidate.tags = local.tags;
        let size = serde_json::to_vec(&candidate)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_RECORD_BYTES {
            return Err(UpdateError::RecordTooLarge {
                size,
                limit: MAX_RECORD_BYTES,
            });
        }
        self.own = candidate;
        self.own_dirty = true;
        self.work_pending = true;
        Ok(())
    }

    pub(super) fn publish_own(&mut self) {
        for l in self.links.values_mut() {
            if let Some(bucket) = l.readvertise() {
                l.advertised_rtt = bucket;
            }
        }
        self.own.links = self
            .links
            .values()
            .map(|l| LinkInfo {
                peer: l.peer.clone(),
                rtt_ms: l.advertised_rtt,
            })
            .collect();
        self.own.links.sort_by(|a, b| a.peer.cmp(&b.peer));
        // Stamps stay within MAX_RECORD_STAMP (records past it are refused everywhere): at the
        // last version the incarnation moves on; at the last of both (only a forged copy of
        // our record can get us there) we keep publishing at that stamp.
        if self.own.version < MAX_RECORD_STAMP {
            self.own.version += 1;
        } else if self.own.incarnation < MAX_RECORD_STAMP {
            self.own.incarnation += 1;
            self.own.version = 1;
        }
        self.sign_own();
        self.own_dirty = false;
        self.rtt_bump_pending = false;
        self.routes_dirty = true;
        self.flood.push((self.cfg.node_id.clone(), None));
    }

    /// A copy of our own record came back. An echo of what we published (same or older
    /// stamp: it went around a loop) changes nothing: re-versioning on an echo is what made
    /// meshes with loops flood themselves at rest. A copy *newer* than ours (we restarted
    /// within the same incarnation, or someone forged one) never replaces what we own: we
    /// publish our own content again with a stamp just past it, so every node prefers ours.
    pub(super) fn on_own_record_copy(&mut self, stamp: (u64, u64)) {
        if stamp <= self.own.stamp() {
            self.stats.own_record_echoes += 1;
            return;
        }
        self.stats.own_record_superseded += 1;
        let (incarnation, version) = stamp;
        // The version is bumped once more when we publish.
        self.own.incarnation = incarnation;
        self.own.version = version;
        self.own_dirty = true;
        self.work_pending = true;
    }

    /// A link's advertised RTT bucket changed: publish a new version now, or, if the last
    /// RTT-driven version is less than a heartbeat interval old, once that interval is up.
    pub(super) fn note_rtt_change(&mut self, now: u64) {
        let interval = self.rtt_bump_interval_ms();
        match self.last_rtt_bump {
            Some(b) if now < b.saturating_add(interval) => self.rtt_bump_pending = true,
            _ => {
                self.last_rtt_bump = Some(now);
                self.own_dirty = true;
            }
        }
    }

    /// At the tick: an RTT change held back by [`Mesh::note_rtt_change`] is published once
    /// its interval is up.
    pub(super) fn rtt_bump(&mut self, now: u64) {
        if self.rtt_bump_pending
            && self
                .last_rtt_bump
                .is_some_and(|b| now >= b.saturating_add(self.rtt_bump_interval_ms()))
        {
            self.last_rtt_bump = Some(now);
            self.own_dirty = true;
        }
    }
}
