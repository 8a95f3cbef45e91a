//! One live, authenticated link as the core sees it: the peer, who dialled, its heartbeat and
//! the RTT we last advertised for it in our record.

use super::ping::PingTracker;
use crate::proto::NodeId;

/// Shell-chosen link handle, unique among the shell's live sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// Who opened the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The peer dialled us.
    Inbound,
    /// We dialled the peer.
    Outbound,
}

/// A live link.
#[derive(Debug, Clone)]
pub struct Link {
    pub peer: NodeId,
    pub direction: Direction,
    pub ping: PingTracker,
    pub up_since: u64,
    pub last_seen: u64,
    /// RTT (ms) in the last record we published; 0 = not yet measured.
    pub advertised_rtt: u32,
}

impl Link {
    /// The node id of whoever dialled this link.
    pub fn dialer<'a>(&'a self, self_id: &'a str) -> &'a str {
        match self.direction {
            Direction::Inbound => &self.peer,
            Direction::Outbound => self_id,
        }
    }

    /// RTT to advertise now.
    pub fn rtt_ms(&self) -> u32 {
        self.ping
            .srtt_ms()
            .map(|r| u32::try_from(r).unwrap_or(u32::MAX))
            .unwrap_or(0)
    }
}
