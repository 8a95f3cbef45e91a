//! Other nodes' records: the checks a received record or `leave` must pass, merging into the
//! store, digests (full at link up, a summary for periodic anti-entropy), gossip batching, and
//! the per-tick flood of accepted records and leaves to every link but the one they came from.

use super::Mesh;
use crate::mesh::link::LinkId;
use crate::mesh::records::Merge;
use crate::mesh::{MeshEvent, Output, MAX_RECORD_BYTES, MAX_RECORD_STAMP};
use crate::proto::codec::{self, MAX_HEADER_BYTES};
use crate::proto::frame::valid_node_id;
use crate::proto::{Body, DigestSum, NodeId, NodeRecord};
use std::collections::HashMap;
use std::sync::Arc;

/// Encoded frames shared by every link they go to.
type SharedFrames = Vec<Arc<[u8]>>;

/// Gossip and digest frames are split so their header stays under this many bytes
/// (half of `MAX_HEADER_BYTES`, leaving room for the envelope and one more record).
const GOSSIP_BATCH_BYTES: usize = MAX_HEADER_BYTES / 2;

/// Upper estimate of a record's JSON size without serializing it (gossip batching).
fn approx_record_bytes(r: &NodeRecord) -> usize {
    crate::mesh::records::estimate(r, &crate::mesh::records::JSON_UPPER)
}

/// Why a received record is refused before anything else looks at it: every name in it
/// follows the node-id rule and its stamp is within [`MAX_RECORD_STAMP`].
fn check_record(r: &NodeRecord) -> Result<(), &'static str> {
    let names_ok = valid_node_id(&r.node)
        && r.links.iter().all(|l| valid_node_id(&l.peer))
        && r.agents.iter().all(|a| valid_node_id(&a.id));
    if !names_ok {
        return Err("bad_node_id");
    }
    check_stamp(r.incarnation.max(r.version))
}

/// A `leave` is held to the same rules as a record: its node id, its incarnation.
fn check_leave(node: &str, incarnation: u64) -> Result<(), &'static str> {
    if !valid_node_id(node) {
        return Err("bad_node_id");
    }
    check_stamp(incarnation)
}

fn check_stamp(highest: u64) -> Result<(), &'static str> {
    if highest > MAX_RECORD_STAMP {
        return Err("absurd_stamp");
    }
    Ok(())
}

impl Mesh {
    pub(super) fn on_record(&mut self, now: u64, from: Option<LinkId>, r: NodeRecord) {
        if let Err(why) = check_record(&r) {
            self.refuse_record(why);
            return;
        }
        if r.node == self.cfg.node_id {
            self.on_own_record_copy(r.stamp());
            return;
        }
        if !self.records.would_take(&r.node, r.stamp()) {
            self.stats.records_ignored += 1;
            return;
        }
        // Only a record we would store pays for the exact size (a serialization).
        let size = serde_json::to_vec(&r).map_or(usize::MAX, |v| v.len());
        if size > MAX_RECORD_BYTES {
            self.refuse_record("too_large");
            return;
        }
        let node = r.node.clone();
        let version = r.version;
        match self.records.merge(r, now) {
            Merge::Accepted => {
                self.stats.records_accepted += 1;
                self.event(MeshEvent::RecordChanged {
                    node: node.clone(),
                    version,
                });
                self.flood.push((node, from));
                self.routes_dirty = true;
                self.work_pending = true;
            }
            Merge::Ignored => self.stats.records_ignored += 1,
            Merge::Full => self.refuse_record("full"),
            Merge::OverBudget => self.refuse_record("budget"),
        }
    }

    /// A `leave` from `link`: the node is marked left and the leave flooded at the next tick.
    /// A leave for us, or one that changes nothing, is dropped.
    pub(super) fn on_leave(&mut self, now: u64, link: LinkId, node: NodeId, incarnation: u64) {
        if let Err(why) = check_leave(&node, incarnation) {
            self.refuse_record(why);
        } else if node != self.cfg.node_id && self.records.leave(&node, incarnation, now) {
            self.event(MeshEvent::Left { node: node.clone() });
            self.leaves.push((node, incarnation, Some(link)));
            self.routes_dirty = true;
            self.work_pending = true;
        }
    }

    fn refuse_record(&mut self, why: &'static str) {
        self.stats.records_ignored += 1;
        *self
            .stats
            .records_refused
            .entry(why.to_string())
            .or_insert(0) += 1;
    }

    pub(super) fn on_digest(
        &mut self,
        now: u64,
        link: LinkId,
        entries: Vec<(NodeId, u64, u64)>,
        ask: bool,
    ) {
        let theirs: HashMap<NodeId, (u64, u64)> =
            entries.into_iter().map(|(n, i, v)| (n, (i, v))).collect();
        let newer = |r: &NodeRecord| theirs.get(&r.node).is_none_or(|s| *s < r.stamp());
        let mut out: Vec<NodeRecord> = self.records.live().filter(|r| newer(r)).cloned().collect();
        if newer(&self.own) {
            out.push(self.own.clone());
        }
        self.send_gossip(now, link, out);
        if ask {
            self.send_digest(now, link, false);
        }
    }

    /// Every `(node, incarnation, version)` we would put in a full digest, in node-id order.
    fn digest_entries(&self) -> Vec<(&str, u64, u64)> {
        let mut entries: Vec<(&str, u64, u64)> = self
            .records
            .live()
            .map(|r| (r.node.as_str(), r.incarnation, r.version))
            .collect();
        let own = (
            self.own.node.as_str(),
            self.own.incarnation,
            self.own.version,
        );
        let at = entries.partition_point(|e| e.0 < own.0);
        entries.insert(at, own);
        entries
    }

    /// A summary digest: if it matches our own set, both sides hold the same records and
    /// nothing is sent; otherwise we send our full digest and ask for theirs, which repairs
    /// both sides exactly as a full exchange at link up does.
    pub(super) fn on_digest_sum(&mut self, now: u64, link: LinkId, theirs: DigestSum) {
        let ours = DigestSum::of(self.digest_entries().into_iter());
        if ours == theirs {
            self.stats.digest_sums_matched += 1;
        } else {
            self.stats.digest_sums_differed += 1;
            self.send_digest(now, link, true);
        }
    }

    /// Periodic anti-entropy on `link`: the summary form, one hash whatever the mesh size
    /// (every peer speaks wire version 2, which has it).
    fn send_anti_entropy(&mut self, now: u64, link: LinkId) {
        let sum = DigestSum::of(self.digest_entries().into_iter());
        self.stats.digests_out += 1;
        let body = Body::Digest {
            entries: Vec::new(),
            sum: Some(sum),
            ask: false,
        };
        self.send_local(now, link, body);
    }

    /// The full digest, split so every header stays under the batch budget. `ask` asks the
    /// peer to answer with its own full digest too.
    pub(super) fn send_digest(&mut self, now: u64, link: LinkId, ask: bool) {
        let entries: Vec<(NodeId, u64, u64)> = self
            .digest_entries()
            .into_iter()
            .map(|(n, i, v)| (n.to_string(), i, v))
            .collect();
        let digest = |entries| Body::Digest {
            entries,
            sum: None,
            ask,
        };
        let mut batch = Vec::new();
        let mut size = 0;
        for e in entries {
            let est = e.0.len() + 48;
            if size + est > GOSSIP_BATCH_BYTES && !batch.is_empty() {
                self.stats.digests_out += 1;
                let entries = std::mem::take(&mut batch);
                self.send_local(now, link, digest(entries));
                size = 0;
            }
            size += est;
            batch.push(e);
        }
        if !batch.is_empty() {
            self.stats.digests_out += 1;
            self.send_local(now, link, digest(batch));
        }
    }

    /// `records` cut into gossip batches of at most [`GOSSIP_BATCH_BYTES`] (estimated); a
    /// record over [`MAX_RECORD_BYTES`] is counted and left out.
    fn gossip_batches(&mut self, records: Vec<NodeRecord>) -> Vec<Vec<NodeRecord>> {
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut size = 0;
        for r in records {
            let est = approx_record_bytes(&r);
            if est > MAX_RECORD_BYTES {
                self.stats.records_ignored += 1;
                continue;
            }
            if size + est > GOSSIP_BATCH_BYTES && !batch.is_empty() {
                batches.push(std::mem::take(&mut batch));
                size = 0;
            }
            size += est;
            batch.push(r);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        batches
    }

    /// Gossip frames for `records`, batched like [`Mesh::send_gossip`], encoded once.
    fn gossip_frames(&mut self, now: u64, records: Vec<NodeRecord>) -> Vec<Arc<[u8]>> {
        let mut frames = Vec::new();
        for records in self.gossip_batches(records) {
            let h = self.header(now, None, Body::Gossip { records });
            match codec::encode(&h, &[]) {
                Ok(bytes) => frames.push(Arc::from(bytes)),
                // Only reachable with absurd records; the batcher keeps headers small.
                Err(_) => self.stats.dropped_backpressure += 1,
            }
        }
        frames
    }

    fn send_gossip(&mut self, now: u64, link: LinkId, records: Vec<NodeRecord>) {
        for records in self.gossip_batches(records) {
            self.stats.gossip_frames_out += 1;
            self.send_local(now, link, Body::Gossip { records });
        }
    }

    pub(super) fn flush_floods(&mut self, now: u64) {
        let flood = std::mem::take(&mut self.flood);
        let leaves = std::mem::take(&mut self.leaves);
        if flood.is_empty() && leaves.is_empty() {
            return;
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        // Links that get the same records get the same frames, encoded once (usually every
        // link gets the same set: our own record, or records minus the link they came from).
        let mut encoded: Vec<(Vec<NodeId>, SharedFrames)> = Vec::new();
        for link in links {
            let mut seen = std::collections::HashSet::new();
            let names: Vec<NodeId> = flood
                .iter()
                .filter(|(_, from)| *from != Some(link))
                .filter(|(n, _)| seen.insert(n.clone()))
                .map(|(n, _)| n.clone())
                .collect();
            let frames = match encoded.iter().find(|(k, _)| *k == names) {
                Some((_, frames)) => frames.clone(),
                None => {
                    let records = self.records_to_flood(&names);
                    let frames = self.gossip_frames(now, records);
                    encoded.push((names, frames.clone()));
                    frames
                }
            };
            for bytes in frames {
                self.stats.gossip_frames_out += 1;
                self.push(Output::SendShared { link, bytes });
            }
            for (node, incarnation, from) in &leaves {
                if *from != Some(link) {
                    let body = Body::Leave {
                        node: node.clone(),
                        incarnation: *incarnation,
                    };
                    self.send_local(now, link, body);
                }
            }
        }
    }

    /// The records named in a flood, as they are now: our own, or a stored one that has not
    /// left since it was accepted.
    fn records_to_flood(&self, names: &[NodeId]) -> Vec<NodeRecord> {
        names
            .iter()
            .filter_map(|n| {
                if *n == self.cfg.node_id {
                    Some(self.own.clone())
                } else {
                    self.records
                        .get(n)
                        .filter(|e| e.left_at.is_none())
                        .map(|e| e.record.clone())
                }
            })
            .collect()
    }

    /// Periodic anti-entropy, when due: a summary digest to one random link.
    pub(super) fn anti_entropy(&mut self, now: u64) {
        if now >= self.next_anti_entropy {
            self.next_anti_entropy = now.saturating_add(self.cfg.anti_entropy_interval_ms);
            if !self.links.is_empty() {
                let i = (self.rand() % self.links.len() as u64) as usize;
                if let Some(&link) = self.links.keys().nth(i) {
                    self.send_anti_entropy(now, link);
                }
            }
        }
    }
}
