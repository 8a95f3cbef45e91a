//! Other nodes' records: the checks a received record or `leave` must pass (names, stamps,
//! size, the owner's signature, the key its node id is trusted with), merging into the store,
//! digests (full at link up, a summary for periodic anti-entropy), gossip batching, and the
//! per-tick flood of accepted records and leaves to every link but the one they came from.
//! Records travel as their owners signed them (`proto::signed`) and are forwarded byte for byte.

use super::Mesh;
use crate::identity::key::{verify, PublicKey};
use crate::mesh::link::LinkId;
use crate::mesh::records::Merge;
use crate::mesh::trust::Refusal;
use crate::mesh::{MeshEvent, Output, MAX_RECORD_BYTES, MAX_RECORD_STAMP};
use crate::proto::codec::{self, MAX_HEADER_BYTES};
use crate::proto::frame::valid_node_id;
use crate::proto::signed::{self, leave_message, verify_record, RawRecord};
use crate::proto::{Body, DigestSum, NodeId, NodeRecord, Sig64, MAX_CHUNK_BYTES};
use std::collections::HashMap;
use std::sync::Arc;

/// Encoded frames shared by every link they go to.
type SharedFrames = Vec<Arc<[u8]>>;

/// Digest frames are split so their header stays under this many bytes (half of
/// `MAX_HEADER_BYTES`, leaving room for the envelope).
const DIGEST_BATCH_BYTES: usize = MAX_HEADER_BYTES / 2;

/// Gossip frames carry at most this many bytes of signed records in their payload (one chunk's
/// worth, so gossip interleaves with other traffic on a link like any chunk).
const GOSSIP_BATCH_BYTES: usize = MAX_CHUNK_BYTES;

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
    /// A `gossip` frame's payload: `count` signed records, each checked on its own.
    pub(super) fn on_gossip(&mut self, now: u64, from: Option<LinkId>, count: u32, payload: &[u8]) {
        match signed::split(payload, count) {
            Ok(raws) => {
                for raw in raws {
                    self.on_record(now, from, raw);
                }
            }
            Err(_) => self.refuse_record("malformed"),
        }
    }

    pub(super) fn on_record(&mut self, now: u64, from: Option<LinkId>, raw: RawRecord<'_>) {
        if raw.json.len() > MAX_RECORD_BYTES {
            self.refuse_record("too_large");
            return;
        }
        let Ok(r) = serde_json::from_slice::<NodeRecord>(raw.json) else {
            self.refuse_record("malformed");
            return;
        };
        if let Err(why) = check_record(&r) {
            self.refuse_record(why);
            return;
        }
        if r.node == self.cfg.node_id {
            // Only a copy we signed ourselves counts; anything else is a forgery.
            if r.key == self.cfg.identity.public() && verify_record(&r.key, raw.json, &raw.sig) {
                self.on_own_record_copy(r.stamp());
            } else {
                self.refuse_record("bad_signature");
            }
            return;
        }
        if !self.records.would_take(&r.node, r.stamp()) {
            self.stats.records_ignored += 1;
            return;
        }
        // The signature first (is this what the key's holder said?), then the key (is that
        // key the one this node id is trusted with?), so a garbage record is never reported
        // as a key change.
        if !verify_record(&r.key, raw.json, &raw.sig) {
            self.refuse_record("bad_signature");
            return;
        }
        let new_binding = match self.trust.check(&r.node, &r.key) {
            Ok(new) => new,
            Err(refusal) => {
                self.refuse_key(now, &r.node, r.key, refusal, "record");
                return;
            }
        };
        let node = r.node.clone();
        let key = r.key;
        let version = r.version;
        let keys = crate::mesh::e2e::PeerKeys {
            ed: r.key,
            x: r.xkey,
        };
        match self.records.merge(r, Arc::from(raw.wire), now) {
            Merge::Accepted => {
                // A session agreed from the previous record's keys is over.
                self.e2e.forget_unless(&node, keys);
                self.stats.records_accepted += 1;
                if new_binding && self.trust.learn(&node, key) {
                    self.event(MeshEvent::KeyLearned {
                        node: node.clone(),
                        key,
                    });
                }
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

    /// A key refused for `node` (`via`: where it was offered): counted, and reported as an
    /// event at most once per offered key and minute per node.
    pub(super) fn refuse_key(
        &mut self,
        now: u64,
        node: &str,
        offered: PublicKey,
        refusal: Refusal,
        via: &'static str,
    ) {
        if via != "handshake" {
            self.refuse_record(refusal.code());
        }
        *self
            .stats
            .key_refusals
            .entry(refusal.code().to_string())
            .or_insert(0) += 1;
        if self.trust.note_conflict(node, offered, now) {
            let trusted = match refusal {
                Refusal::KeyChanged { trusted, .. } => Some(trusted),
                _ => None,
            };
            self.event(MeshEvent::KeyRefused {
                node: node.to_string(),
                offered,
                reason: refusal.code(),
                trusted,
                via,
            });
        }
    }

    /// A `leave` from `link`, signed by the node that left (checked with the key of the record
    /// we hold for it): the node is marked left and the leave flooded at the next tick. A leave
    /// for us, for a node we hold no record of, or that changes nothing, is dropped.
    pub(super) fn on_leave(
        &mut self,
        now: u64,
        link: LinkId,
        node: NodeId,
        incarnation: u64,
        sig: Sig64,
    ) {
        if let Err(why) = check_leave(&node, incarnation) {
            self.refuse_record(why);
            return;
        }
        if node == self.cfg.node_id {
            return;
        }
        let Some(key) = self.records.get(&node).map(|e| e.record.key) else {
            return;
        };
        if !verify(&key, &leave_message(&node, incarnation), &sig) {
            self.refuse_record("bad_signature");
            return;
        }
        if self.records.leave(&node, incarnation, now) {
            self.event(MeshEvent::Left { node: node.clone() });
            self.leaves.push((node, incarnation, sig, Some(link)));
            self.routes_dirty = true;
            self.work_pending = true;
        }
    }

    pub(super) fn refuse_record(&mut self, why: &'static str) {
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
        let mut out: Vec<Arc<[u8]>> = self
            .records
            .live_wires()
            .filter(|(r, _)| newer(r))
            .map(|(_, w)| w.clone())
            .collect();
        if newer(&self.own) {
            out.push(self.own_wire.clone());
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
            if size + est > DIGEST_BATCH_BYTES && !batch.is_empty() {
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

    /// Signed records cut into gossip payloads of at most [`GOSSIP_BATCH_BYTES`] (a record is
    /// never split), each with its record count.
    fn gossip_batches(records: Vec<Arc<[u8]>>) -> Vec<(u32, Vec<u8>)> {
        let mut batches = Vec::new();
        let mut batch = Vec::new();
        let mut n = 0u32;
        for r in records {
            if batch.len() + r.len() > GOSSIP_BATCH_BYTES && n > 0 {
                batches.push((n, std::mem::take(&mut batch)));
                n = 0;
            }
            batch.extend_from_slice(&r);
            n += 1;
        }
        if n > 0 {
            batches.push((n, batch));
        }
        batches
    }

    /// Gossip frames for `records`, batched like [`Mesh::send_gossip`], encoded once.
    fn gossip_frames(&mut self, now: u64, records: Vec<Arc<[u8]>>) -> Vec<Arc<[u8]>> {
        let mut frames = Vec::new();
        for (n, payload) in Self::gossip_batches(records) {
            let h = self.header(now, None, Body::Gossip { records: n });
            match codec::encode_owned(&h, payload) {
                Ok(bytes) => frames.push(Arc::from(bytes)),
                // Batches are far below the frame limit.
                Err(_) => self.stats.dropped_backpressure += 1,
            }
        }
        frames
    }

    fn send_gossip(&mut self, now: u64, link: LinkId, records: Vec<Arc<[u8]>>) {
        for bytes in self.gossip_frames(now, records) {
            self.stats.gossip_frames_out += 1;
            self.push(Output::SendShared { link, bytes });
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
            for (node, incarnation, sig, from) in &leaves {
                if *from != Some(link) {
                    let body = Body::Leave {
                        node: node.clone(),
                        incarnation: *incarnation,
                        sig: *sig,
                    };
                    self.send_local(now, link, body);
                }
            }
        }
    }

    /// The records named in a flood, as they are now: our own, or a stored one that has not
    /// left since it was accepted.
    fn records_to_flood(&self, names: &[NodeId]) -> Vec<Arc<[u8]>> {
        names
            .iter()
            .filter_map(|n| {
                if *n == self.cfg.node_id {
                    Some(self.own_wire.clone())
                } else {
                    self.records
                        .get(n)
                        .filter(|e| e.left_at.is_none())
                        .map(|e| e.wire.clone())
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
