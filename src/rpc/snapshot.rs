//! [`MeshSnapshot`]: the mesh as the actor last published it (read without a round trip).

use crate::mesh::{MeshStats, PeerView};

/// The mesh as last published by the actor.
#[derive(Debug, Clone, Default)]
pub struct MeshSnapshot {
    /// Every known node as seen from here.
    pub peers: Vec<PeerView>,
    /// The core's counters.
    pub stats: MeshStats,
    /// Live links.
    pub links_up: usize,
    /// Frames dropped because a link's writer queue was full.
    pub slow_peer_drops: u64,
    /// Links closed as slow peers.
    pub slow_peer_closes: u64,
    /// Mesh clock (ms since node start) when this snapshot was taken.
    pub at_ms: u64,
    /// What the node trusts (pins, first-seen keys, refused keys).
    /// Shared between snapshots: rebuilt only when it changes.
    pub trust: std::sync::Arc<Vec<crate::mesh::trust::TrustRow>>,
}
