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
}

/// The in-flight table.
#[derive(Debug)]
pub struct Calls {
    map: HashMap<CallId, CallState>,
    max: usize,
}

impl Calls {
    /// A table holding at most `max` calls.
    pub fn new(max: usize) -> Self {
        Calls {
            map: HashMap::new(),
            max,
        }
    }

    /// Whether another call fits.
    pub fn has_room(&self) -> bool {
        self.map.len() < self.max
    }

    /// Track a call.
    pub fn insert(&mut self, id: CallId, state: CallState) {
        self.map.insert(id, state);
    }

    /// Look up a call.
    pub fn get(&self, id: &CallId) -> Option<&CallState> {
        self.map.get(id)
    }

    /// Forget a call, returning it.
    pub fn remove(&mut self, id: &CallId) -> Option<CallState> {
        self.map.remove(id)
    }

    /// A chunk arrived: extend the inactivity deadline.
    pub fn touch(&mut self, id: &CallId, now: u64) {
        if let Some(c) = self.map.get_mut(id) {
            c.deadline_at = now.saturating_add(c.deadline_ms);
        }
    }

    /// Remove and return calls whose deadline passed, in id order (deterministic).
    pub fn take_expired(&mut self, now: u64) -> Vec<(CallId, CallState)> {
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

    /// Remove and return calls whose destination satisfies `gone`, in id order.
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

    /// Earliest deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.map.values().map(|c| c.deadline_at).min()
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
