//! Handshake frames (WebSocket TEXT, JSON) and the stable rejection codes with their WebSocket
//! close codes. The flow is in [`super::handshake`] and `docs/PROTOCOL.md` §3.

use super::frame::NodeId;
use super::hex::{Bytes32, PakeShare, Sig64};
use serde::{Deserialize, Serialize};

/// Largest handshake frame in bytes; anything longer is `malformed` before parsing.
pub const MAX_HANDSHAKE_BYTES: usize = 4096;

/// One handshake message (wire version 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HandshakeFrame {
    /// Dialer → listener: who I am, my fresh nonce and my SPAKE2 share.
    Hello {
        version: u16,
        features: u64,
        node: NodeId,
        nonce: Bytes32,
        pake: PakeShare,
        /// The dialer's Ed25519 node key (proved in `auth`).
        key: Bytes32,
    },
    /// Listener → dialer: who I am, my fresh nonce and my SPAKE2 share. Deliberately no MAC:
    /// the listener proves nothing before the dialer has.
    Challenge {
        version: u16,
        features: u64,
        node: NodeId,
        nonce: Bytes32,
        pake: PakeShare,
        /// The listener's Ed25519 node key (proved in `welcome`).
        key: Bytes32,
        /// During a secret rotation: the listener's share for its previous secret (the dialer
        /// confirms both in `auth`, and the listener accepts the one that matches).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pake2: Option<PakeShare>,
    },
    /// Dialer → listener: key confirmation, the dialer's MAC over the transcript, and its node
    /// key's signature over the same transcript.
    Auth {
        mac: Bytes32,
        sig: Sig64,
        /// The confirmation for the challenge's `pake2`, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac2: Option<Bytes32>,
    },
    /// Listener → dialer: accepted; `features` is the negotiated set, `mac` the listener's key
    /// confirmation (sent only after it verified the dialer's).
    Welcome {
        features: u64,
        mac: Bytes32,
        sig: Sig64,
    },
    /// Either way: refused, then the socket is closed with `code.close_code()`.
    Reject { code: RejectCode, reason: String },
}

impl HandshakeFrame {
    /// JSON text for a WebSocket TEXT message.
    pub fn encode(&self) -> String {
        // Serializing these plain structs cannot fail; fall back to an empty object rather
        // than panic.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Parse a TEXT message; oversized or invalid input is `malformed`.
    pub fn decode(text: &str) -> Result<Self, RejectCode> {
        if text.len() > MAX_HANDSHAKE_BYTES {
            return Err(RejectCode::Malformed);
        }
        serde_json::from_str(text).map_err(|_| RejectCode::Malformed)
    }
}

/// The wire version a `hello` or `challenge` claims, read leniently (other fields ignored), for
/// a frame the strict decoder refused: a version 1 peer's frames lack the `pake` field (and its
/// challenge carries a `mac`), and it must hear `incompatible_version` naming both versions,
/// not `malformed`. `None` for anything else or anything over [`MAX_HANDSHAKE_BYTES`].
pub fn claimed_version(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Claim {
        #[serde(rename = "type")]
        kind: String,
        version: u64,
    }
    if text.len() > MAX_HANDSHAKE_BYTES {
        return None;
    }
    let c: Claim = serde_json::from_str(text).ok()?;
    matches!(c.kind.as_str(), "hello" | "challenge").then_some(c.version)
}

/// Why a handshake (or a duplicate link) was refused. Codes are stable API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    Malformed,
    BadMac,
    Replay,
    DuplicateNode,
    SelfId,
    IncompatibleVersion,
    Timeout,
    WrongNode,
    Capacity,
    /// The peer's node key is not the one this node id is trusted with (pinned, or first seen).
    KeyChanged,
    /// The peer's node key is revoked.
    Revoked,
    /// The peer's node key did not sign the transcript.
    BadSignature,
}

impl RejectCode {
    /// Every code, for stats tables.
    pub const ALL: [RejectCode; 12] = [
        RejectCode::Malformed,
        RejectCode::BadMac,
        RejectCode::Replay,
        RejectCode::DuplicateNode,
        RejectCode::SelfId,
        RejectCode::IncompatibleVersion,
        RejectCode::Timeout,
        RejectCode::WrongNode,
        RejectCode::Capacity,
        RejectCode::KeyChanged,
        RejectCode::Revoked,
        RejectCode::BadSignature,
    ];

    /// Stable string code.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::Malformed => "malformed",
            RejectCode::BadMac => "bad_mac",
            RejectCode::Replay => "replay",
            RejectCode::DuplicateNode => "duplicate_node",
            RejectCode::SelfId => "self_id",
            RejectCode::IncompatibleVersion => "incompatible_version",
            RejectCode::Timeout => "timeout",
            RejectCode::WrongNode => "wrong_node",
            RejectCode::Capacity => "capacity",
            RejectCode::KeyChanged => "key_changed",
            RejectCode::Revoked => "revoked",
            RejectCode::BadSignature => "bad_signature",
        }
    }

    /// WebSocket close code (4000 range, `docs/PROTOCOL.md` §3.4).
    pub fn close_code(self) -> u16 {
        match self {
            RejectCode::Malformed => 4000,
            RejectCode::BadMac => 4001,
            RejectCode::Replay => 4002,
            RejectCode::DuplicateNode => 4003,
            RejectCode::SelfId => 4004,
            RejectCode::IncompatibleVersion => 4005,
            RejectCode::Timeout => 4006,
            RejectCode::WrongNode => 4007,
            RejectCode::Capacity => 4008,
            RejectCode::KeyChanged => 4011,
            RejectCode::Revoked => 4012,
            RejectCode::BadSignature => 4013,
        }
    }

    /// Default human reason sent in `reject`. Deliberately vague for `bad_mac`.
    pub fn reason(self) -> &'static str {
        match self {
            RejectCode::Malformed => "malformed handshake frame",
            RejectCode::BadMac => "authentication failed",
            RejectCode::Replay => "nonce replayed",
            RejectCode::DuplicateNode => "node id already connected",
            RejectCode::SelfId => "peer claims our own node id",
            RejectCode::IncompatibleVersion => "incompatible protocol version or features",
            RejectCode::Timeout => "handshake timed out",
            RejectCode::WrongNode => "unexpected node id for this peer",
            RejectCode::Capacity => "too many links",
            RejectCode::KeyChanged => "node key differs from the key this node id is trusted with",
            RejectCode::Revoked => "node key revoked",
            RejectCode::BadSignature => "node key proof failed",
        }
    }
}

impl std::fmt::Display for RejectCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
