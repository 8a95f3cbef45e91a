//! Which key each node id is trusted with: pinned by config, or bound on first contact
//! (trust on first use) and remembered; revoked keys are refused whatever the node id.
//!
//! The core consults it for every handshake (`Mesh::admit`), record and `leave`; the shell
//! persists what the core learns (`MeshEvent::KeyLearned`) and loads it back at start, and an
//! operator's trust reset removes a binding. Bounded: at most `max_learned` first-seen bindings
//! (pins come from config and do not count), beyond which new node ids are refused.

use crate::identity::key::{Fingerprint, PublicKey};
use crate::proto::NodeId;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Where a trusted binding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustSource {
    /// `identity.pins` in config.
    Pinned,
    /// The first key seen for this node id (persisted).
    FirstSeen,
}

impl TrustSource {
    /// Stable string for status.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustSource::Pinned => "pinned",
            TrustSource::FirstSeen => "first_seen",
        }
    }
}

/// Why a key was refused for a node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node id is trusted with another key (pinned, or first seen).
    KeyChanged {
        trusted: Fingerprint,
        source: TrustSource,
    },
    /// The key is revoked.
    Revoked,
    /// A new node id while `max_learned` bindings are held.
    Full,
}

impl Refusal {
    /// Stable code (also the `recordsRefused` reason).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::KeyChanged { .. } => "key_changed",
            Refusal::Revoked => "revoked",
            Refusal::Full => "trust_full",
        }
    }
}

/// A different key offered for a trusted node id, kept for status and reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub offered: PublicKey,
    /// Mesh clock (ms) of the last report.
    pub reported_at: u64,
    /// How many times it was refused.
    pub count: u64,
}

/// One row of the trust view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRow {
    pub node: NodeId,
    /// `None` for a pin whose node has not been seen yet.
    pub key: Option<PublicKey>,
    pub fingerprint: Fingerprint,
    pub source: TrustSource,
    pub conflict: Option<Conflict>,
}

/// A refused key is reported again at most this often per node id (ms): a peer that keeps
/// offering new keys must not flood the log.
pub const REPORT_EVERY_MS: u64 = 60_000;

/// The trust book. See the module docs.
#[derive(Debug, Default)]
pub struct TrustBook {
    pins: HashMap<NodeId, Fingerprint>,
    revoked: HashSet<Fingerprint>,
    /// Bindings: pinned nodes once seen, and first-seen ones.
    known: HashMap<NodeId, (PublicKey, TrustSource)>,
    learned: usize,
    max_learned: usize,
    conflicts: BTreeMap<NodeId, Conflict>,
    /// Bumped by every change a [`TrustBook::rows`] view would show.
    changes: u64,
}

impl TrustBook {
    /// A book with `pins`, `revoked`, and the bindings `remembered` from earlier runs.
    pub fn new(
        pins: HashMap<NodeId, Fingerprint>,
        revoked: HashSet<Fingerprint>,
        remembered: impl IntoIterator<Item = (NodeId, PublicKey)>,
        max_learned: usize,
    ) -> TrustBook {
        let mut book = TrustBook {
            pins,
            revoked,
            max_learned,
            ..TrustBook::default()
        };
        for (node, key) in remembered {
            // A pin overrides whatever was remembered; a remembered revoked key is dropped
            // (the node must present another, which is then first seen).
            if book.pins.contains_key(&node) || book.revoked.contains(&Fingerprint::of(&key)) {
                continue;
            }
            if book.learned < book.max_learned
                && book
                    .known
                    .insert(node, (key, TrustSource::FirstSeen))
                    .is_none()
            {
                book.learned += 1;
            }
        }
        book
    }

    /// Whether `key` may speak for `node`; `Ok(true)` when it would be a new binding.
    pub fn check(&self, node: &str, key: &PublicKey) -> Result<bool, Refusal> {
        let fp = Fingerprint::of(key);
        if self.revoked.contains(&fp) {
            return Err(Refusal::Revoked);
        }
        if let Some(pin) = self.pins.get(node) {
            return if *pin == fp {
                Ok(!self.known.contains_key(node))
            } else {
                Err(Refusal::KeyChanged {
                    trusted: *pin,
                    source: TrustSource::Pinned,
                })
            };
        }
        match self.known.get(node) {
            Some((k, _)) if k == key => Ok(false),
            Some((k, source)) => Err(Refusal::KeyChanged {
                trusted: Fingerprint::of(k),
                source: *source,
            }),
            None if self.learned >= self.max_learned => Err(Refusal::Full),
            None => Ok(true),
        }
    }

    /// Bind `key` to `node` after [`TrustBook::check`] said `Ok(true)`; `true` if it is a new
    /// first-seen binding (the shell persists those).
    pub fn learn(&mut self, node: &str, key: PublicKey) -> bool {
        if self.known.contains_key(node) {
            return false;
        }
        let source = if self.pins.contains_key(node) {
            TrustSource::Pinned
        } else {
            self.learned += 1;
            TrustSource::FirstSeen
        };
        self.known.insert(node.to_string(), (key, source));
        self.changes += 1;
        source == TrustSource::FirstSeen
    }

    /// Note a refused key offered for a trusted `node`; `true` when it should be reported now
    /// (a new offered key, or the last report is [`REPORT_EVERY_MS`] old).
    pub fn note_conflict(&mut self, node: &str, offered: PublicKey, now: u64) -> bool {
        if !self.conflicts.contains_key(node) && self.conflicts.len() >= self.max_learned {
            return false;
        }
        self.changes += 1;
        match self.conflicts.get_mut(node) {
            Some(c) => {
                c.count += 1;
                let report =
                    c.offered != offered || now >= c.reported_at.saturating_add(REPORT_EVERY_MS);
                if report {
                    c.offered = offered;
                    c.reported_at = now;
                }
                report
            }
            None => {
                self.conflicts.insert(
                    node.to_string(),
                    Conflict {
                        offered,
                        reported_at: now,
                        count: 1,
                    },
                );
                true
            }
        }
    }

    /// Forget what `node` is trusted with (an operator's trust reset): its next key is first
    /// seen again. A pin stays (edit the config to change it). `true` if anything was dropped.
    pub fn reset(&mut self, node: &str) -> bool {
        let mut dropped = self.conflicts.remove(node).is_some();
        if self
            .known
            .get(node)
            .is_some_and(|(_, s)| *s == TrustSource::FirstSeen)
        {
            self.known.remove(node);
            self.learned -= 1;
            dropped = true;
        }
        if dropped {
            self.changes += 1;
        }
        dropped
    }

    /// A counter that moves whenever [`TrustBook::rows`] would change: views are rebuilt only
    /// then.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The key `node` is trusted with, if any.
    pub fn key_of(&self, node: &str) -> Option<&PublicKey> {
        self.known.get(node).map(|(k, _)| k)
    }

    /// Every binding and pin, in node-id order, with any refused key.
    pub fn rows(&self) -> Vec<TrustRow> {
        let mut rows: BTreeMap<&str, TrustRow> = BTreeMap::new();
        for (node, fp) in &self.pins {
            rows.insert(
                node,
                TrustRow {
                    node: node.clone(),
                    key: None,
                    fingerprint: *fp,
                    source: TrustSource::Pinned,
                    conflict: None,
                },
            );
        }
        for (node, (key, source)) in &self.known {
            rows.insert(
                node,
                TrustRow {
                    node: node.clone(),
                    key: Some(*key),
                    fingerprint: Fingerprint::of(key),
                    source: *source,
                    conflict: None,
                },
            );
        }
        for (node, c) in &self.conflicts {
            if let Some(r) = rows.get_mut(node.as_str()) {
                r.conflict = Some(*c);
            }
        }
        rows.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    fn key(n: u8) -> PublicKey {
        NodeKey::from_seed(&[n; 32]).public()
    }

    #[test]
    fn the_first_key_binds_and_another_key_for_the_same_id_is_refused_until_reset() {
        let mut t = TrustBook::new(HashMap::new(), HashSet::new(), [], 8);
        assert_eq!(t.check("a", &key(1)), Ok(true));
        assert_eq!(t.changes(), 0, "a check changes nothing");
        assert!(t.learn("a", key(1)));
        assert_eq!(t.changes(), 1);
        assert_eq!(t.check("a", &key(1)), Ok(false));
        assert!(matches!(
            t.check("a", &key(2)),
            Err(Refusal::KeyChanged {
                source: TrustSource::FirstSeen,
                ..
            })
        ));
        assert!(t.note_conflict("a", key(2), 0));
        assert!(
            !t.note_conflict("a", key(2), 1),
            "the same key again is not re-reported"
        );
        assert!(t.note_conflict("a", key(3), 2), "another key is");
        assert!(t.note_conflict("a", key(3), 2 + REPORT_EVERY_MS));
        assert_eq!(t.rows()[0].conflict.map(|c| c.count), Some(4));
        assert_eq!(t.changes(), 5, "every refusal moves the count status shows");
        assert!(t.reset("a"));
        assert_eq!(t.changes(), 6);
        assert!(!t.reset("a"), "nothing left to reset");
        assert_eq!(t.changes(), 6);
        assert_eq!(t.check("a", &key(2)), Ok(true));
    }

    #[test]
    fn a_pin_wins_over_first_use_and_a_revoked_key_is_refused_for_every_id() {
        let pins = HashMap::from([("p".to_string(), Fingerprint::of(&key(1)))]);
        let revoked = HashSet::from([Fingerprint::of(&key(9))]);
        let t = TrustBook::new(pins, revoked, [("p".to_string(), key(2))], 8);
        assert_eq!(t.check("p", &key(1)), Ok(true));
        assert!(matches!(
            t.check("p", &key(2)),
            Err(Refusal::KeyChanged {
                source: TrustSource::Pinned,
                ..
            })
        ));
        assert_eq!(t.check("p", &key(9)), Err(Refusal::Revoked));
        assert_eq!(t.check("q", &key(9)), Err(Refusal::Revoked));
    }

    #[test]
    fn first_seen_bindings_are_bounded_and_a_reset_frees_one() {
        let mut t = TrustBook::new(HashMap::new(), HashSet::new(), [], 2);
        assert!(t.learn("a", key(1)));
        assert!(t.learn("b", key(2)));
        assert_eq!(t.check("c", &key(3)), Err(Refusal::Full));
        assert_eq!(t.check("a", &key(1)), Ok(false), "known ones still pass");
        assert!(t.reset("a"));
        assert_eq!(t.check("c", &key(3)), Ok(true));
    }

    #[test]
    fn remembered_bindings_load_except_revoked_or_pinned_ones() {
        let pins = HashMap::from([("p".to_string(), Fingerprint::of(&key(1)))]);
        let revoked = HashSet::from([Fingerprint::of(&key(9))]);
        let t = TrustBook::new(
            pins,
            revoked,
            [
                ("a".to_string(), key(2)),
                ("r".to_string(), key(9)),
                ("p".to_string(), key(3)),
            ],
            8,
        );
        assert_eq!(t.key_of("a"), Some(&key(2)));
        assert_eq!(t.key_of("r"), None);
        assert_eq!(t.check("r", &key(4)), Ok(true));
        assert_eq!(t.check("p", &key(1)), Ok(true));
    }
}
