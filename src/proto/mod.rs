//! Wire protocol: frames, codec and handshake. Sans-IO: no sockets, no clock, no RNG.
//!
//! # Layout
//! - [`hex`] — fixed-size ids and byte strings carried as lowercase hex (`FrameId`, `CallId`, `Bytes32`).
//! - [`frame`] — the binary-frame header (envelope) and its tagged [`Body`], plus [`NodeRecord`].
//! - [`codec`] — `[payload][JSON header][u32 BE header len]` encode/decode with size limits.
//! - [`header_json`] — the header's canonical JSON written and read without serde (hot path).
//! - [`signed`] — signed records and leaves: the gossip payload form, signing, verifying.
//! - [`handshake_frame`] — the TEXT handshake frames ([`HandshakeFrame`]) and rejection codes.
//! - [`auth`] — the SPAKE2 exchange, the key-confirmation transcript and MACs (constant-time
//!   verification), the recent-nonce cache.
//! - [`handshake`] — the [`Dialer`] and [`Acceptor`] state machines.
//! - [`tool_result`] — a `tool.call`'s final payload (JSON and raw forms), cut into result
//!   parts and put back together (`tools::result` streams and offloads it).
//!
//! The normative description is `docs/PROTOCOL.md`.

pub mod auth;
pub mod codec;
pub mod frame;
pub mod handshake;
pub mod handshake_frame;
pub mod header_json;
pub mod hex;
pub mod signed;
pub mod tool_result;

pub use auth::NonceCache;
pub use codec::{
    decode, decode_owned, encode, encode_owned, CodecError, MAX_FRAME_BYTES, MAX_HEADER_BYTES,
};
pub use frame::{
    AgentInfo, Body, DigestSum, Frame, Header, LinkInfo, ModelInfo, NodeId, NodeRecord,
};
pub use handshake::{Acceptor, Dialer, HandshakeConfig, Step};
pub use handshake_frame::{HandshakeFrame, RejectCode};
pub use hex::{Bytes32, CallId, FrameId, PakeShare, Sig64};

/// Wire version spoken by this build (the handshake's `version`). Version 2 replaced the v1
/// HMAC challenge, which handed anyone who connected material to guess the secret offline, with
/// a SPAKE2 exchange (`docs/PROTOCOL.md` §3). The binary envelope after the handshake is
/// unchanged and keeps its own `v` ([`frame::ENVELOPE_VERSION`] = 1).
pub const PROTOCOL_VERSION: u16 = 3;
/// Version 3 adds node identity: each side announces its Ed25519 node key and signs the
/// transcript with it, records and leaves are signed, and routed traffic is sealed end to end.
/// Oldest peer version we accept: a v2 peer (no node keys) or a v1 peer is refused with `incompatible_version` (its
/// handshake is the offline guessing oracle v2 removes, so there is no fallback to it).
pub const MIN_VERSION: u16 = 3;
/// Newest peer version we accept.
pub const MAX_VERSION: u16 = 3;
/// Feature bit 0: binary frames with the envelope of `docs/PROTOCOL.md` §4 (required).
pub const FEATURE_BINARY_FRAMES: u64 = 1 << 0;
/// Feature bit 1: chunked streams (`chunk`/`end`).
pub const FEATURE_STREAMS: u64 = 1 << 1;
/// Feature bit 2: a large frame may travel in pieces with other frames between them
/// (`docs/PROTOCOL.md` §4.4); a link sends pieces only when both sides offer it.
pub const FEATURE_PIECES: u64 = 1 << 2;
/// Stream flow-control window, in chunks: a server may have this many chunks in flight beyond
/// the credit the receiver granted (implicit at call open). 64 × [`MAX_CHUNK_BYTES`] = 16 MiB,
/// one maximum frame, so a stalled consumer pins at most that much per stream.
pub const STREAM_WINDOW_CHUNKS: u64 = 64;
/// Largest payload of one `chunk`, in bytes: 256 KiB keeps one chunk well under a link's writer
/// queue and interleaves streams finely; larger payloads are split by the sender.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// Features this build offers.
pub const FEATURES: u64 = FEATURE_BINARY_FRAMES | FEATURE_STREAMS | FEATURE_PIECES;
/// Features a peer must offer to be accepted.
pub const FEATURES_REQUIRED: u64 = FEATURE_BINARY_FRAMES;
