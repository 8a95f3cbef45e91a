//! Counters the core keeps for status and tests. Plain numbers; never reset by the core.

use serde::Serialize;
use std::collections::BTreeMap;

/// Cumulative counters since `Mesh::new`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MeshStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Routed frames delivered to the application here.
    pub delivered: u64,
    /// Routed frames forwarded to a next hop.
    pub relayed: u64,
    pub dropped_ttl: u64,
    pub dropped_dup: u64,
    pub dropped_no_route: u64,
    /// Routed frames whose next hop is the link they came from (transient routing loop).
    pub dropped_loop: u64,
    /// `Send` outputs dropped because `max_pending_outputs` was reached.
    pub dropped_backpressure: u64,
    /// Link-local frames whose `src` was not the link's peer.
    pub dropped_spoofed: u64,
    /// Frames that arrived on a link the core does not know (closed or never up).
    pub unknown_link: u64,
    pub decode_errors: u64,
    /// Decode errors by code (`truncated`, `too_large`, …).
    pub decode_errors_by_code: BTreeMap<String, u64>,
    /// Gossip frames sent (each may carry several records).
    pub gossip_frames_out: u64,
    /// Records received that were newer than ours.
    pub records_accepted: u64,
    /// Records received that were not newer (or blocked by a tombstone/bound).
    pub records_ignored: u64,
    pub digests_out: u64,
    pub pings_out: u64,
    pub heartbeat_timeouts: u64,
    /// Handshake rejections by code (`bad_mac`, `replay`, …).
    pub handshake_rejects: BTreeMap<String, u64>,
    pub calls_started: u64,
    pub calls_failed: u64,
}
