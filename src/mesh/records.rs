//! The record store: the latest known [`NodeRecord`] of every other node, merge by
//! `(incarnation, version)`, leave marks, and tombstones of forgotten nodes.
//!
//! Rules (`docs/PROTOCOL.md` §6): a record replaces ours only if strictly newer; a left node
//! ignores records up to the incarnation it left with; a forgotten node ignores records up to
//! the stamp it was forgotten at until the tombstone expires. The store never holds our own
//! record (the core owns it), never more than `max_nodes` entries and never more than its
//! memory budget ([`held_bytes`] summed over the entries).

use crate::proto::{NodeId, NodeRecord};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One known node.
#[derive(Debug, Clone)]
pub struct Entry {
    pub record: NodeRecord,
    /// The record exactly as its owner signed it (length, JSON, signature): what we forward.
    pub wire: Arc<[u8]>,
    /// Last time we heard of this node (record change or a frame from it), ms.
    pub last_seen: u64,
    /// `Some(t)`: left gracefully at `t` (no routes through or to it).
    pub left_at: Option<u64>,
    /// `Some(t)`: no route to it since `t`.
    pub unreachable_since: Option<u64>,
    /// [`held_bytes`] of `record`, counted into the store's total when it was merged (so a
    /// replacement or a forget does not estimate the old record again).
    held: usize,
}

impl Entry {
    /// The keys in the record (the node key that signed it, the X25519 key of its process).
    pub fn keys(&self) -> crate::mesh::e2e::PeerKeys {
        crate::mesh::e2e::PeerKeys {
            ed: self.record.key,
            x: self.record.xkey,
        }
    }
}

/// Outcome of [`RecordStore::merge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Stored: it was new or newer.
    Accepted,
    /// Not newer than what we hold, or blocked by a leave/tombstone.
    Ignored,
    /// A new node while the store is full.
    Full,
    /// Storing it would take the store past its memory budget.
    OverBudget,
}

/// Weights for estimating a record's size in one walk over its strings and entries: each
/// string costs `str_fixed + str_per_byte × len`, each entry its fixed part, extra model
/// metadata `extra_per_byte ×` its JSON size.
pub struct SizeModel {
    pub base: usize,
    pub str_fixed: usize,
    pub str_per_byte: usize,
    pub agent: usize,
    pub model: usize,
    pub link: usize,
    pub extra_per_byte: usize,
}

/// An upper estimate of a record's JSON size (every byte escaped, quotes and commas): gossip
/// batching runs per link per tick, and exact sizes would cost a serialization each time.
pub const JSON_UPPER: SizeModel = SizeModel {
    base: 120,
    str_fixed: 3,
    str_per_byte: 2,
    agent: 40,
    model: 40,
    link: 30,
    extra_per_byte: 1,
};

/// Estimated memory a stored record holds: every string's bytes plus its `String` header and
/// allocation (48), every entry's fixed part, extra model metadata at twice its JSON size. A
/// record of 6,000 one-letter tags counts as ~300 KiB although its JSON is 24 KiB, which is
/// what it really costs in memory.
pub const HELD: SizeModel = SizeModel {
    base: 256,
    str_fixed: 48,
    str_per_byte: 1,
    agent: 64,
    model: 96,
    link: 32,
    extra_per_byte: 2,
};

/// `r`'s size under `m`.
pub fn estimate(r: &NodeRecord, m: &SizeModel) -> usize {
    let s = |x: &str| m.str_fixed + m.str_per_byte * x.len();
    let strs = |v: &[String]| v.iter().map(|x| s(x)).sum::<usize>();
    let agents: usize = r
        .agents
        .iter()
        .map(|a| m.agent + s(&a.id) + s(&a.description) + strs(&a.tags))
        .sum();
    let models: usize = r
        .models
        .iter()
        .map(|x| {
            let extra = if x.extra.is_empty() {
                0
            } else {
                serde_json::to_vec(&x.extra).map_or(super::MAX_RECORD_BYTES, |v| v.len())
            };
            m.model + s(&x.id) + x.description.as_deref().map_or(0, s) + m.extra_per_byte * extra
        })
        .sum();
    let links: usize = r.links.iter().map(|l| m.link + s(&l.peer)).sum();
    m.base + s(&r.node) + agents + models + strs(&r.tags) + links
}

/// Estimated memory a stored record holds ([`HELD`]).
pub fn held_bytes(r: &NodeRecord) -> usize {
    estimate(r, &HELD)
}

/// All known records but our own.
#[derive(Debug)]
pub struct RecordStore {
    entries: BTreeMap<NodeId, Entry>,
    /// Forgotten nodes: stamp at forgetting, tombstone expiry (ms).
    tombstones: BTreeMap<NodeId, ((u64, u64), u64)>,
    max_nodes: usize,
    /// Sum of [`held_bytes`] over the entries, and its limit.
    held: usize,
    budget: usize,
}

impl RecordStore {
    /// An empty store holding at most `max_nodes` nodes and `budget` bytes of [`held_bytes`].
    pub fn new(max_nodes: usize, budget: usize) -> Self {
        RecordStore {
            entries: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            max_nodes,
            held: 0,
            budget,
        }
    }

    /// Whether a record of `node` at `stamp` would be newer than what we hold and not blocked
    /// by a leave or a tombstone (a cheap check before the record is looked at closely).
    pub fn would_take(&self, node: &str, stamp: (u64, u64)) -> bool {
        if self.tombstones.get(node).is_some_and(|(t, _)| stamp <= *t) {
            return false;
        }
        match self.entries.get(node) {
            Some(e) => {
                let left_blocks = e.left_at.is_some() && stamp.0 <= e.record.incarnation;
                !left_blocks && stamp > e.record.stamp()
            }
            None => true,
        }
    }

    /// Estimated bytes held for all records ([`held_bytes`] summed).
    pub fn held(&self) -> usize {
        self.held
    }

    /// Merge a received record, `wire` being its signed form (counted into the budget).
    pub fn merge(&mut self, record: NodeRecord, wire: Arc<[u8]>, now: u64) -> Merge {
        let stamp = record.stamp();
        if !self.would_take(&record.node, stamp) {
            return Merge::Ignored;
        }
        let size = held_bytes(&record) + wire.len();
        let old = self.entries.get(&record.node).map_or(0, |e| e.held);
        if self.held - old + size > self.budget {
            return Merge::OverBudget;
        }
        match self.entries.get_mut(&record.node) {
            Some(e) => {
                self.held = self.held - old + size;
                e.record = record;
                e.wire = wire;
                e.held = size;
                e.last_seen = now;
                e.left_at = None;
                Merge::Accepted
            }
            None => {
                if self.entries.len() >= self.max_nodes {
                    return Merge::Full;
                }
                self.tombstones.remove(&record.node);
                self.held += size;
                self.entries.insert(
                    record.node.clone(),
                    Entry {
                        record,
                        wire,
                        last_seen: now,
                        left_at: None,
                        unreachable_since: None,
                        held: size,
                    },
                );
                Merge::Accepted
            }
        }
    }

    /// Apply `leave{node, incarnation}`; `true` if it changed anything (then flood it on).
    pub fn leave(&mut self, node: &str, incarnation: u64, now: u64) -> bool {
        match self.entries.get_mut(node) {
            Some(e) if e.left_at.is_none() && e.record.incarnation <= incarnation => {
                e.left_at = Some(now);
                e.unreachable_since.get_or_insert(now);
                true
            }
            _ => false,
        }
    }

    /// Drop a node's record, keeping a tombstone until `until`.
    pub fn forget(&mut self, node: &str, until: u64) -> bool {
        match self.entries.remove(node) {
            Some(e) => {
                self.held -= e.held;
                self.tombstones
                    .insert(node.to_string(), (e.record.stamp(), until));
                true
            }
            None => false,
        }
    }

    /// Drop expired tombstones.
    pub fn expire_tombstones(&mut self, now: u64) {
        self.tombstones.retain(|_, (_, until)| *until > now);
    }

    /// Earliest tombstone expiry.
    pub fn next_tombstone_expiry(&self) -> Option<u64> {
        self.tombstones.values().map(|(_, u)| *u).min()
    }

    /// Look up a node.
    pub fn get(&self, node: &str) -> Option<&Entry> {
        self.entries.get(node)
    }

    /// Look up a node mutably.
    pub fn get_mut(&mut self, node: &str) -> Option<&mut Entry> {
        self.entries.get_mut(node)
    }

    /// All entries in node-id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Entry)> {
        self.entries.iter()
    }

    /// All entries, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&NodeId, &mut Entry)> {
        self.entries.iter_mut()
    }

    /// Signed forms of the records of nodes that have not left, with their records.
    pub fn live_wires(&self) -> impl Iterator<Item = (&NodeRecord, &Arc<[u8]>)> {
        self.entries
            .values()
            .filter(|e| e.left_at.is_none())
            .map(|e| (&e.record, &e.wire))
    }

    /// Records of nodes that have not left (the routing graph's vertices).
    pub fn live(&self) -> impl Iterator<Item = &NodeRecord> {
        self.entries
            .values()
            .filter(|e| e.left_at.is_none())
            .map(|e| &e.record)
    }

    /// Number of known nodes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
