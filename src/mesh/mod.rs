//! The sans-IO mesh core: links and heartbeats, records and gossip, link-state routes, relay
//! with TTL and dedup, calls and target resolution.
//!
//! [`Mesh`] is one plain struct. The shell feeds it `handle_*(now, …)` calls with a monotonic
//! clock in ms, drains [`Mesh::poll_output`] after each call, and calls [`Mesh::handle_tick`]
//! at [`Mesh::poll_timeout`]. The core never reads the clock, the network or an RNG.
//!
//! # Layout
//! - [`core`] — the [`Mesh`] struct: its fields, construction, accessors, the output queue,
//!   frame headers and ids, and the timers (`poll_timeout`, `handle_tick`). Its `impl` is split
//!   by concern into private files:
//!   - `core::links` — link lifecycle: admission, link up (duplicate tie-break) and down,
//!     shutdown, heartbeats and pongs.
//!   - `core::inbound` — one message from a link: decode, count errors, dispatch link-local
//!     bodies; routed frames go to `core::relay`.
//!   - `core::gossip` — other nodes' records: checks, merge, leaves, digests and anti-entropy,
//!     gossip batching and the per-tick flood.
//!   - `core::own` — our own record: `update_local`, publishing versions (RTT re-advertising
//!     included), copies of it coming back.
//!   - `core::reach` — reachability: route recomputation and its events, forgetting
//!     unreachable nodes, the `peers` view and target resolution.
//!   - `core::relay` — routed frames: sending ours, forwarding others' (TTL, dedup, loops),
//!     bouncing undeliverable calls.
//!   - `core::calls` — calls we originate: start, cancel, credit, deadlines, and delivery of
//!     frames addressed to us.
//! - [`link`] — one live link (peer, direction, heartbeat, RTT bucket to advertise).
//! - [`ping`] — heartbeat and liveness tracker (silence, suspicion, death) with smoothed RTT.
//! - [`health`] — local health (Lifeguard): a stalled node stretches its timeouts.
//! - [`records`] — the record store (merge, leave, forget, memory budget).
//! - [`routes`] — link-state shortest paths over the records' graph.
//! - [`dedup`] — bounded duplicate filter for relayed frames.
//! - [`calls`] — the table of calls we originate (correlation, deadlines).
//! - [`target`] — `Target` parsing and candidate ordering.
//! - [`stats`] — counters.
//! - this file — configuration ([`MeshConfig`], [`LocalInfo`]), the output and event types,
//!   errors with stable codes, close codes and record limits.

pub mod calls;
pub mod core;
pub mod dedup;
pub mod e2e;
pub mod health;
pub mod link;
pub mod ping;
pub mod records;
pub mod routes;
pub mod stats;
pub mod target;
pub mod trust;

pub use self::core::Mesh;
pub use link::{Direction, LinkId};
pub use stats::MeshStats;
pub use target::{Candidate, Target, TargetError};

use crate::identity::key::{ExchangeKey, Fingerprint, NodeKey, PublicKey};
use crate::proto::{AgentInfo, CallId, Header, ModelInfo, NodeId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Close code: normal closure (after `leave`).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: heartbeat timeout.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4009;
/// Close code: protocol error (oversized or spoofed frame).
pub const CLOSE_PROTOCOL_ERROR: u16 = 4010;

/// Largest own record, serialized, in bytes: keeps gossip headers well under
/// `MAX_HEADER_BYTES` even with a couple of records per frame.
pub const MAX_RECORD_BYTES: usize = 32 * 1024;

/// Largest incarnation or version a record (or `leave`) may carry: 2^53 − 1, the largest
/// integer JavaScript (status, peers) represents exactly. Incarnations are start times in ms
/// (about 2^41 today) and versions count changes, so honest records never come near it;
/// anything past it is refused (`records_refused.absurd_stamp`), and no arithmetic on a stamp
/// can overflow.
pub const MAX_RECORD_STAMP: u64 = (1 << 53) - 1;

/// Most memory the record store may hold for other nodes' records, estimated per string and
/// entry ([`records::held_bytes`]): 16 MiB, i.e. 4096 nodes of 4 KiB each, far above real
/// records (~1 KiB). A record that would push the store past it is refused
/// (`records_refused.budget`) and the store keeps what it had.
pub const MAX_RECORDS_HELD_BYTES: usize = 16 << 20;

/// Core configuration. Build with [`MeshConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub node_id: NodeId,
    /// Our start epoch (e.g. wall clock ms at start); must grow across restarts.
    pub incarnation: u64,
    /// Seed for frame/call ids and jitter; the shell passes OS randomness.
    pub rng_seed: u64,
    /// Ping period per link, ms. Default 15 000.
    pub heartbeat_interval_ms: u64,
    /// Consecutive unanswered pings before a link is declared dead. Default 3.
    pub heartbeat_misses: u32,
    /// How long an unreachable node is kept before it is forgotten, ms. Default 600 000.
    pub forget_after_ms: u64,
    /// Period of the background digest exchange with one random link, ms. Default 10 000.
    pub anti_entropy_interval_ms: u64,
    /// TTL of frames we originate. Default 8.
    pub default_ttl: u8,
    /// Dedup cache capacity in frame ids. Default 65 536.
    pub dedup_capacity: usize,
    /// Most simultaneous links. Default 1024 (a cloud relay serves many home/office nodes).
    pub max_links: usize,
    /// Most in-flight calls we originate. Default 1024.
    pub max_inflight_calls: usize,
    /// Most known nodes. Default 4096.
    pub max_nodes: usize,
    /// Most undrained outputs; extra `Send`s are dropped and counted. Default 65 536.
    pub max_pending_outputs: usize,
    /// Our node key: signs our record and our `leave`.
    pub identity: Arc<NodeKey>,
    /// This process's X25519 key for end-to-end sessions: fresh for every core, so sessions,
    /// counters and nonces never outlive it.
    pub exchange: Arc<ExchangeKey>,
    /// `identity.pins`: node ids accepted only with these keys.
    pub pins: HashMap<NodeId, Fingerprint>,
    /// `identity.revoked`: keys refused for every node id.
    pub revoked: HashSet<Fingerprint>,
    /// First-seen bindings remembered from earlier runs (the trust file).
    pub trusted: Vec<(NodeId, PublicKey)>,
}

impl MeshConfig {
    /// Defaults for everything but identity, keys and seed. `exchange` must be fresh randomness
    /// for every core built (never reused after a restart).
    pub fn new(
        node_id: impl Into<NodeId>,
        incarnation: u64,
        rng_seed: u64,
        identity: Arc<NodeKey>,
        exchange: Arc<ExchangeKey>,
    ) -> Self {
        MeshConfig {
            node_id: node_id.into(),
            incarnation,
            rng_seed,
            heartbeat_interval_ms: 15_000,
            heartbeat_misses: 3,
            forget_after_ms: 600_000,
            anti_entropy_interval_ms: 10_000,
            default_ttl: crate::proto::frame::DEFAULT_TTL,
            dedup_capacity: dedup::DEFAULT_DEDUP_CAPACITY,
            max_links: 1024,
            max_inflight_calls: calls::DEFAULT_MAX_INFLIGHT_CALLS,
            max_nodes: 4096,
            max_pending_outputs: 65_536,
            identity,
            exchange,
            pins: HashMap::new(),
            revoked: HashSet::new(),
            trusted: Vec::new(),
        }
    }
}

/// What this node offers (the owner-controlled part of its record).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalInfo {
    pub listen: bool,
    pub agents: Vec<AgentInfo>,
    pub models: Vec<ModelInfo>,
    pub tags: Vec<String>,
}

/// Something the shell must do or know.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send one BINARY WebSocket message on `link` (use `try_send`; drop and count if full).
    /// `urgent`: a small control frame that may overtake the bulk frames queued on the link
    /// (`ping`, `pong`, our own `credit`, and our own `cancel` of a call that was answered
    /// with a chunk, so it never overtakes the call it cancels): its delay is the link's
    /// liveness and the caller's flow control, and none of them is ordered against data.
    Send {
        link: LinkId,
        bytes: Vec<u8>,
        urgent: bool,
    },
    /// Like `Send`, for a frame that goes unchanged to several links (gossip of the same
    /// records): encoded once and shared, so a change flooded to N links costs one buffer.
    SendShared {
        link: LinkId,
        bytes: std::sync::Arc<[u8]>,
    },
    /// Close `link` with a WebSocket close code. The core has already forgotten the link.
    Close {
        link: LinkId,
        code: u16,
        reason: String,
    },
    /// An application frame addressed to us.
    Deliver {
        from: NodeId,
        header: Header,
        payload: Vec<u8>,
    },
    /// A state change worth telling the application.
    Event(MeshEvent),
}

/// Why a link went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// The shell saw the socket close or fail.
    Closed(String),
    /// Nothing heard for `heartbeat_interval_ms × heartbeat_misses` (× local health).
    HeartbeatTimeout,
    /// The peer broke the protocol.
    ProtocolError(String),
    /// A duplicate link to the same node lost the tie-break.
    Duplicate,
    /// We are shutting down.
    Shutdown,
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// No reply/chunk within the inactivity deadline.
    Deadline,
    /// The destination became unreachable (no alternative path), or a relay said so.
    Unreachable,
    /// A link on the call's path went down (a relay died or was cut off): frames on it may be
    /// lost. The destination may still be reachable another way; the caller retries there.
    PathBroken,
    /// A frame of the call failed the end-to-end check (altered, injected or replayed on the
    /// way), or a stream chunk was missing or out of order.
    Integrity,
}

/// Events for the application (status, routing, call failures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    PeerUp {
        node: NodeId,
        link: LinkId,
    },
    PeerDown {
        node: NodeId,
        link: LinkId,
        reason: DownReason,
    },
    /// Newly reachable, or its next hop changed.
    Reachable {
        node: NodeId,
        next_hop: NodeId,
        hops: u32,
    },
    Unreachable {
        node: NodeId,
    },
    RecordChanged {
        node: NodeId,
        version: u64,
    },
    /// The node sent `leave`.
    Left {
        node: NodeId,
    },
    /// Unreachable for `forget_after_ms`: its record was dropped.
    Forgotten {
        node: NodeId,
    },
    CallFailed {
        call_id: CallId,
        dst: NodeId,
        reason: CallFailure,
    },
    /// A node id was bound to its key for the first time (persist it).
    KeyLearned {
        node: NodeId,
        key: PublicKey,
    },
    /// A key was refused for `node` (another key is trusted for it, or it is revoked): report
    /// loudly. At most once per offered key and minute per node.
    KeyRefused {
        node: NodeId,
        offered: PublicKey,
        /// `key_changed`, `revoked` or `trust_full`.
        reason: &'static str,
        /// The key trusted for the node, when there is one.
        trusted: Option<Fingerprint>,
        /// Where the key was offered: `handshake`, `record` or `leave`.
        via: &'static str,
    },
    /// A routed frame for us failed the end-to-end check (`reason`: `bad_tag`, `replay`,
    /// `unsealed`, `no_key`, `mismatch`, `bad_inner`, `seq`); `call_id` names the call it claimed.
    IntegrityFailed {
        node: NodeId,
        call_id: Option<CallId>,
        reason: &'static str,
    },
}

/// Why `send`/`start_call` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no route to {0}")]
    NoRoute(NodeId),
    #[error("{node} is {hops} hops away, beyond ttl {ttl}")]
    TooFar { node: NodeId, hops: u32, ttl: u8 },
    #[error("destination is this node")]
    ToSelf,
    #[error("too many calls in flight ({0})")]
    TooManyCalls(usize),
    #[error("frame too large: {0}")]
    TooLarge(String),
    #[error("link-local body kinds cannot be sent to a node")]
    InvalidBody,
    #[error("mesh is shut down")]
    ShutDown,
    #[error("no end-to-end session with {0}: {1}")]
    NoSession(NodeId, &'static str),
}

impl SendError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            SendError::NoRoute(_) => "no_route",
            SendError::TooFar { .. } => "too_far",
            SendError::ToSelf => "to_self",
            SendError::TooManyCalls(_) => "too_many_calls",
            SendError::TooLarge(_) => "too_large",
            SendError::InvalidBody => "invalid_body",
            SendError::ShutDown => "shut_down",
            SendError::NoSession(..) => "no_session",
        }
    }
}

/// Why `update_local` refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("own record is {size} bytes, limit {limit}")]
    RecordTooLarge { size: usize, limit: usize },
}

impl UpdateError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        "record_too_large"
    }
}

/// How another node looks from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    /// We hold a live link to it.
    Direct,
    /// Reached through `next_hop`.
    Via { next_hop: NodeId, hops: u32 },
    /// No route since `since` (ms), or it left.
    Unreachable { since: u64 },
}

/// One row of `peers()`.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub node: NodeId,
    pub state: PeerState,
    /// Path latency (sum of link RTTs), when reachable.
    pub latency_ms: Option<u64>,
    /// RTT percentiles of the direct link's recent heartbeats, when there is one.
    pub link_rtt: Option<link::RttPercentiles>,
    pub hops: Option<u32>,
    pub listen: bool,
    pub agents: Vec<AgentInfo>,
    pub models: Vec<ModelInfo>,
    pub tags: Vec<String>,
    pub last_seen_ms: u64,
    pub incarnation: u64,
    pub version: u64,
    /// The node key its record carries (verified: it signed the record).
    pub key: PublicKey,
}
