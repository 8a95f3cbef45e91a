//! The record store: the latest known [`NodeRecord`] of every other node, merge by
//! `(incarnation, version)`, leave marks, and tombstones of forgotten nodes.
//!
//! Rules (`docs/PROTOCOL.md` §6): a record replaces ours only if strictly newer; a left node
//! ignores records up to the incarnation it left with; a forgotten node ignores records up to
//! the stamp it was forgotten at until the tombstone expires. The store never holds our own
//! record (the core owns it) and never more than `max_nodes` entries.

use crate::proto::{NodeId, NodeRecord};
use std::collections::BTreeMap;

/// One known node.
#[derive(Debug, Clone)]
pub struct Entry {
    pub record: NodeRecord,
    /// Last time we heard of this node (record change or a frame from it), ms.
    pub last_seen: u64,
    /// `Some(t)`: left gracefully at `t` (no routes through or to it).
    pub left_at: Option<u64>,
    /// `Some(t)`: no route to it since `t`.
    pub unreachable_since: Option<u64>,
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
}

/// All known records but our own.
#[derive(Debug)]
pub struct RecordStore {
    entries: BTreeMap<NodeId, Entry>,
    /// Forgotten nodes: stamp at forgetting, tombstone expiry (ms).
    tombstones: BTreeMap<NodeId, ((u64, u64), u64)>,
    max_nodes: usize,
}

impl RecordStore {
    /// An empty store holding at most `max_nodes` nodes.
    pub fn new(max_nodes: usize) -> Self {
        RecordStore {
            entries: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            max_nodes,
        }
    }

    /// Merge a received record.
    pub fn merge(&mut self, record: NodeRecord, now: u64) -> Merge {
        let stamp = record.stamp();
        if let Some((t, _)) = self.tombstones.get(&record.node) {
            if stamp <= *t {
                return Merge::Ignored;
            }
            self.tombstones.remove(&record.node);
        }
        match self.entries.get_mut(&record.node) {
            Some(e) => {
                let left_blocks = e.left_at.is_some() && stamp.0 <= e.record.incarnation;
                if left_blocks || stamp <= e.record.stamp() {
                    return Merge::Ignored;
                }
                e.record = record;
                e.last_seen = now;
                e.left_at = None;
                Merge::Accepted
            }
            None => {
                if self.entries.len() >= self.max_nodes {
                    return Merge::Full;
                }
                self.entries.insert(
                    record.node.clone(),
                    Entry {
                        record,
                        last_seen: now,
                        left_at: None,
                        unreachable_since: None,
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
