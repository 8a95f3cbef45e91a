//! The binary-frame envelope ([`Header`]) and its tagged [`Body`], plus the gossiped
//! [`NodeRecord`]. See `docs/PROTOCOL.md` §4 for the field meanings and literal examples.
//!
//! A [`Frame`] is a decoded header plus the raw payload bytes; relays re-encode only the header
//! and pass the payload through untouched.

use super::hex::{Bytes32, CallId, FrameId, Sig64};
use serde::{Deserialize, Serialize};

/// A node's configured id (`nodeId`): see [`valid_node_id`].
pub type NodeId = String;

/// Longest accepted node id (and agent id), in bytes: the config's rule.
pub const MAX_NODE_ID_BYTES: usize = 64;

/// Default TTL: links a frame may cross. 8 covers any sane home/office/cloud topology.
pub const DEFAULT_TTL: u8 = 8;

/// Envelope version (`v`).
pub const ENVELOPE_VERSION: u8 = 1;

/// Whether `id` is an acceptable node id (or agent id): the config's rule, 1..=64 of
/// `[A-Za-z0-9._-]` starting with a letter or digit. The same rule holds on the wire, so a name
/// from the mesh can never carry a separator, a newline or markup into a config key, a session
/// key, a log line or a prompt.
pub fn valid_node_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    id.len() <= MAX_NODE_ID_BYTES
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The JSON header of a binary frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Envelope version, always [`ENVELOPE_VERSION`].
    pub v: u8,
    /// Frame id, unique per sender; the dedup key.
    pub id: FrameId,
    /// Originating node.
    pub src: NodeId,
    /// Final destination; `None` = link-local, never relayed.
    pub dst: Option<NodeId>,
    /// Links the frame may still cross.
    pub ttl: u8,
    /// Links crossed so far.
    pub hops: u8,
    /// Sender clock (ms), informational.
    pub ts: u64,
    /// What the frame is.
    pub body: Body,
}

/// Frame bodies. Link-local kinds first, then routed application kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// Heartbeat request; `t` is the sender clock in ms.
    Ping { seq: u64, t: u64 },
    /// Heartbeat answer echoing `seq` and `t`.
    Pong { seq: u64, t: u64 },
    /// Indirect probe (SWIM's ping-req): "do you still hear `node`?", asked of a neighbour
    /// while our own link to `node` is silent (PROTOCOL §6.6).
    Probe { node: NodeId, seq: u64 },
    /// Answer to [`Body::Probe`]: how long ago the answerer last heard `node` on its own direct
    /// link, or `None` if it has no link to it.
    ProbeAck {
        node: NodeId,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        heard_ms: Option<u64>,
    },
    /// Anti-entropy: `(node, incarnation, version)` of every known record (the full form), or
    /// only their hash (the summary form, `sum`; `entries` is then empty). See PROTOCOL §6.2.
    Digest {
        entries: Vec<(NodeId, u64, u64)>,
        /// Summary form: the count and hash of the sender's full entry set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sum: Option<DigestSum>,
        /// Answer with a full digest as well (sent after a summary did not match, so both
        /// sides learn what the other lacks).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ask: bool,
    },
    /// Records the receiver lacks or that changed: the payload holds `records` signed records
    /// (`proto::signed`), each exactly as its owner signed it.
    Gossip { records: u32 },
    /// `node` left gracefully at `incarnation`; `sig` is its owner's signature
    /// (`proto::signed::leave_message`).
    Leave {
        node: NodeId,
        incarnation: u64,
        sig: Sig64,
    },
    /// A request; the payload holds the request bytes.
    Call {
        call_id: CallId,
        method: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
    },
    /// The single final response to a call.
    Reply {
        call_id: CallId,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// One stream chunk.
    Chunk { call_id: CallId, seq: u64 },
    /// End of a stream.
    End {
        call_id: CallId,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The caller gave up.
    Cancel { call_id: CallId, reason: String },
    /// Flow control, receiver → sender of a stream: "you may send `chunks` more chunks".
    /// The first `STREAM_WINDOW_CHUNKS` are implicit at call open.
    Credit { call_id: CallId, chunks: u64 },
    /// A relay could not forward a frame of this call towards `node`.
    Unreachable { call_id: CallId, node: NodeId },
    /// End to end: one of the routed bodies above, with its payload, encrypted and
    /// authenticated for `dst` by `src` (`mesh::e2e`). `ctr` is the sender's frame counter for
    /// this pair of nodes (the AEAD nonce and the replay window's index). Relays see only this.
    Sealed { call_id: CallId, ctr: u64 },
}

/// Every `type` tag, in declaration order (used to tell `unknown_type` from `bad_header`).
pub const BODY_TYPES: &[&str] = &[
    "ping",
    "pong",
    "digest",
    "gossip",
    "leave",
    "call",
    "reply",
    "chunk",
    "end",
    "cancel",
    "unreachable",
    "credit",
    "sealed",
    "probe",
    "probe_ack",
];

impl Body {
    /// The wire `type` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Ping { .. } => "ping",
            Body::Pong { .. } => "pong",
            Body::Digest { .. } => "digest",
            Body::Gossip { .. } => "gossip",
            Body::Leave { .. } => "leave",
            Body::Call { .. } => "call",
            Body::Reply { .. } => "reply",
            Body::Chunk { .. } => "chunk",
            Body::End { .. } => "end",
            Body::Cancel { .. } => "cancel",
            Body::Unreachable { .. } => "unreachable",
            Body::Credit { .. } => "credit",
            Body::Sealed { .. } => "sealed",
            Body::Probe { .. } => "probe",
            Body::ProbeAck { .. } => "probe_ack",
        }
    }

    /// Link-local bodies are only valid with `dst: null`.
    pub fn is_link_local(&self) -> bool {
        matches!(
            self,
            Body::Ping { .. }
                | Body::Pong { .. }
                | Body::Digest { .. }
                | Body::Gossip { .. }
                | Body::Leave { .. }
                | Body::Probe { .. }
                | Body::ProbeAck { .. }
        )
    }

    /// The call this body belongs to, for routed kinds.
    pub fn call_id(&self) -> Option<CallId> {
        match self {
            Body::Call { call_id, .. }
            | Body::Reply { call_id, .. }
            | Body::Chunk { call_id, .. }
            | Body::End { call_id, .. }
            | Body::Cancel { call_id, .. }
            | Body::Unreachable { call_id, .. }
            | Body::Credit { call_id, .. }
            | Body::Sealed { call_id, .. } => Some(*call_id),
            _ => None,
        }
    }
}

/// An agent a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A model a node shares; unknown keys (OpenClaw model metadata) are kept verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Opaque metadata (`provider`, `contextWindow`, …), forwarded as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One direct link as advertised by its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub peer: NodeId,
    /// Smoothed RTT in ms; 0 = not measured yet.
    pub rtt_ms: u32,
}

/// The versioned description a node owns and gossips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: NodeId,
    /// Owner's start epoch; larger on every restart.
    pub incarnation: u64,
    /// Bumped by the owner on every change.
    pub version: u64,
    /// The owner's Ed25519 public key: the record is signed with it, and it must be the key
    /// this node id is trusted with (pinned, or first seen).
    pub key: Bytes32,
    /// The owner's X25519 key of this process (fresh on every start): end-to-end payload keys
    /// with this node are agreed with it.
    pub xkey: Bytes32,
    pub listen: bool,
    #[serde(default)]
    pub agents: Vec<AgentInfo>,
    #[serde(default)]
    pub models: Vec<ModelInfo>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub links: Vec<LinkInfo>,
}

impl NodeRecord {
    /// `(incarnation, version)`: records compare by this, lexicographically.
    pub fn stamp(&self) -> (u64, u64) {
        (self.incarnation, self.version)
    }
}

/// The summary form of a digest: how many `(node, incarnation, version)` entries the sender
/// holds and the SHA-256 of them in node-id order (see [`DigestSum::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSum {
    pub n: u64,
    pub h: super::hex::Bytes32,
}

impl DigestSum {
    /// The summary of `entries`, which must be sorted by node id with no duplicates: SHA-256
    /// over each entry as (u32 BE length, node id bytes, incarnation u64 BE, version u64 BE).
    pub fn of<'a>(entries: impl Iterator<Item = (&'a str, u64, u64)>) -> DigestSum {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        let mut n = 0u64;
        for (node, incarnation, version) in entries {
            n += 1;
            h.update((node.len() as u32).to_be_bytes());
            h.update(node.as_bytes());
            h.update(incarnation.to_be_bytes());
            h.update(version.to_be_bytes());
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&h.finalize());
        DigestSum {
            n,
            h: super::hex::Bytes32(out),
        }
    }
}

/// A decoded binary frame: header plus raw payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}
