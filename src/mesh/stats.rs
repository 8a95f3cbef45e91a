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
    /// Received records refused as hostile or over a bound, by reason (`bad_node_id`,
    /// `absurd_stamp`, `too_large`, `budget`, `full`); each is also in `records_ignored`.
    pub records_refused: BTreeMap<String, u64>,
    /// Gauge, not a counter: estimated bytes held now for other nodes' records (bounded by
    /// `MAX_RECORDS_HELD_BYTES`). Filled from the record store by `Mesh::stats`.
    pub records_held_bytes: u64,
    /// Copies of our own record that came back no newer than ours (a loop echo; ignored).
    pub own_record_echoes: u64,
    /// Copies of our own record newer than ours (a restart within one incarnation, or a
    /// forgery): we re-publish our own content past them.
    pub own_record_superseded: u64,
    pub digests_out: u64,
    /// Summary digests received that matched our own set (nothing to repair).
    pub digest_sums_matched: u64,
    /// Summary digests received that differed: a full exchange followed.
    pub digest_sums_differed: u64,
    pub pings_out: u64,
    pub heartbeat_timeouts: u64,
    /// Heartbeat timeouts where a neighbour still heard the peer (the link failed, not the
    /// peer; it stays reachable through that neighbour).
    pub heartbeat_timeouts_peer_alive: u64,
    /// Indirect probes sent (one per neighbour asked), answers received, probes we answered.
    pub probes_sent: u64,
    pub probe_acks: u64,
    pub probes_served: u64,
    /// Ticks that came late by a stall (the process or its threads did not run): links were
    /// forgiven the time and local health dropped.
    pub local_stalls: u64,
    /// Silences blamed on ourselves (probes nobody answered) instead of the peer.
    pub self_doubts: u64,
    /// Gauge, not a counter: the local health score now (0 = healthy, see `mesh::health`).
    /// Filled by `Mesh::stats`.
    pub local_health: u64,
    /// Handshake rejections by code (`bad_mac`, `replay`, …).
    pub handshake_rejects: BTreeMap<String, u64>,
    pub calls_started: u64,
    pub calls_failed: u64,
    /// Keys refused for a node id, by reason (`key_changed`, `revoked`, `trust_full`), in
    /// handshakes, records and leaves.
    pub key_refusals: BTreeMap<String, u64>,
    /// Routed frames for us refused by the end-to-end check, by reason (`bad_tag`, `replay`,
    /// `unsealed`, `no_key`, `mismatch`, `bad_inner`, `no_session`), and stream chunks out of
    /// order (`seq`).
    pub e2e_refused: BTreeMap<String, u64>,
    /// Routed frames we sealed / opened.
    pub e2e_sealed: u64,
    pub e2e_opened: u64,
}
