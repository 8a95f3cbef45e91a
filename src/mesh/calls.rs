//! Caller-side correlation of in-flight calls and streams: destination, inactivity deadline,
//! bounded count. The serving side keeps no per-call state in the core.

use crate::proto::{CallId, NodeId};
use std::collections::HashMap;

/// Default bound on in-flight calls per node.
pub const DEFAULT_MAX_INFLIGHT_CALLS: usize = 1024;

/// One in-flight call.
#[derive(Debug, Clone)]
pub struct CallState {
    pub dst: NodeId,
    pub method: String,
    /// Inactivity window in ms; each chunk received and each credit granted moves
    /// `deadline_at` to `now + deadline_ms`.
    pub deadline_ms: u64,
    pub deadline_at: u64,
    /// The `seq` the next stream chunk must carry: a chunk missing, replayed or out of order
    /// fails the call.
    pub next_seq: u64,
}

impl CallState {
    /// A chunk came back, so the `call` frame has left this node: a `cancel` for it may go
    /// urgent (ahead of queued bulk) without ever overtaking the call it cancels.
    pub fn answered(&self) -> bool {
        self.next_seq > 0
    }
}

/// The in-flight table.
///
/// The earliest deadline is kept as a lower bound instead of being searched for: the node asks
/// for it on every turn of its loop, and a scan of 1000 open handoff streams per turn was a
/// visible part of a node's CPU. Deadlines only move later (`touch`) or leave (`remove`), so a
/// bound taken at insertion stays below every deadline; when it comes due, `take_expired`
/// recomputes it exactly. A stale bound costs one early tick, never a late timeout.
#[derive(Debug)]
pub struct Calls {
    map: HashMap<CallId, CallState>,
    max: usize,
    /// ≤ every `deadline_at` in `map` (None when empty).
    earliest: Option<u64>,
}

impl Calls {
    /// A table holding at most `max` calls.
    pub fn new(max: usize) -> Self {
        Calls {
            map: HashMap::new(),
            max,
            earliest: None,
        }
    }

    /// Whether another call fits.
    pub fn has_room(&self) -> bool {
        self.map.len() < self.max
    }

    /// Track a call.
    pub fn insert(&mut self, id: CallId, state: CallState) {
        let at = state.deadline_at;
        self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
        self.map.insert(id, state);
    }

    /// Look up a call.
    pub fn get(&self, id: &CallId) -> Option<&CallState> {
        self.map.get(id)
    }

    /// Forget a call, returning it.
    pub fn remove(&mut self, id: &CallId) -> Option<CallState> {
        let c = self.map.remove(id);
        if self.map.is_empty() {
            self.earliest = None;
        }
        c
    }

    /// The call, mutably.
    pub fn get_mut(&mut self, id: &CallId) -> Option<&mut CallState> {
        self.map.get_mut(id)
    }

    /// A chunk arrived: extend the inactivity deadline (never earlier than it was).
    pub fn touch(&mut self, id: &CallId, now: u64) {
        if let Some(c) = self.map.get_mut(id) {
            c.deadline_at = c.deadline_at.max(now.saturating_add(c.deadline_ms));
        }
    }

    /// Remove and return calls whose deadline passed, in id order (deterministic). Before the
    /// earliest deadline this is free; from then on it scans once and re-learns the earliest.
    pub fn take_expired(&mut self, now: u64) -> Vec<(CallId, CallState)> {
        if self.earliest.is_none_or(|e| e > now) {
            return Vec::new();
        }
        self.earliest = self
            .map
            .values()
            .map(|c| c.deadline_at)
            .filter(|&d| d > now)
            .min();
        let mut ids: Vec<CallId> = self
            .map
            .iter()
            .filter(|(_, c)| c.deadline_at <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.map.remove(&id).map(|c| (id, c)))
            .collect()
    }

    /// Remove and return calls whose destination satisfies `gone`, in id order (the earliest
    /// deadline stays a valid lower bound).
    pub fn take_where(
        &mut self,
        mut gone: impl FnMut(&CallState) -> bool,
    ) -> Vec<(CallId, CallState)> {
        let mut ids: Vec<CallId> = self
            .map
            .iter()
            .filter(|(_, c)| gone(c))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.map.remove(&id).map(|c| (id, c)))
            .collect()
    }

    /// When the next deadline may be due: at or before the earliest one (see the type's doc).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.map.is_empty() {
            None
        } else {
            self.earliest
        }
    }

    /// Number of in-flight calls.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is in flight.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(deadline_at: u64) -> CallState {
        CallState {
            dst: "b".into(),
            method: "m".into(),
            deadline_ms: 100,
            deadline_at,
            next_seq: 0,
        }
    }

    fn id(n: u8) -> CallId {
        CallId([n; 16])
    }

    #[test]
    fn the_next_deadline_is_never_late_and_is_relearned_when_it_comes_due() {
        let mut c = Calls::new(16);
        assert_eq!(c.next_deadline(), None);
        c.insert(id(1), call(100));
        c.insert(id(2), call(150));
        c.insert(id(3), call(120));
        assert_eq!(c.next_deadline(), Some(100));
        // Touches move deadlines later: the bound stays (an early tick, never a late one).
        c.touch(&id(1), 90); // 1 -> 190
        c.touch(&id(3), 95); // 3 -> 195
        assert_eq!(c.next_deadline(), Some(100));
        assert!(c.take_expired(99).is_empty());
        // At the bound nothing expired, but the exact earliest (2 at 150) is learned.
        assert!(c.take_expired(100).is_empty());
        assert_eq!(c.next_deadline(), Some(150));
        let gone = c.take_expired(160);
        assert_eq!(
            gone.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![id(2)]
        );
        assert_eq!(c.next_deadline(), Some(190));
        // A removal leaves a valid bound; the last removal clears it.
        c.remove(&id(1));
        assert_eq!(c.next_deadline(), Some(190));
        c.remove(&id(3));
        assert_eq!(c.next_deadline(), None);
        // A new call lowers the bound at once.
        c.insert(id(4), call(300));
        c.insert(id(5), call(250));
        assert_eq!(c.next_deadline(), Some(250));
    }

    #[test]
    fn every_expired_call_is_taken_whatever_the_order_of_touches() {
        let mut c = Calls::new(64);
        for n in 0..50u8 {
            c.insert(id(n), call(1_000 + u64::from(n)));
        }
        for n in (0..50u8).step_by(2) {
            c.touch(&id(n), 5_000); // even ones -> 5100
        }
        let mut now = 0;
        let mut taken = Vec::new();
        while let Some(d) = c.next_deadline() {
            assert!(d >= now, "deadlines never go back");
            now = d;
            for (i, s) in c.take_expired(now) {
                assert!(s.deadline_at <= now);
                taken.push(i);
            }
        }
        assert_eq!(taken.len(), 50);
        assert!(c.is_empty());
    }
}
