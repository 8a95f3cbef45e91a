//! Wire protocol: frames, codec and handshake. Sans-IO: no sockets, no clock, no RNG.
//!
//! # Layout
//! - [`hex`] — fixed-size ids and byte strings carried as lowercase hex (`FrameId`, `CallId`, `Bytes32`).
//! - [`frame`] — the binary-frame header (envelope) and its tagged [`Body`], plus [`NodeRecord`].
//! - [`codec`] — `[payload][JSON header][u32 BE header len]` encode/decode with size limits.
//! - [`header_json`] — the header's canonical JSON written and read without serde (hot path).
//! - [`handshake_frame`] — the TEXT handshake frames ([`HandshakeFrame`]) and rejection codes.
//! - [`auth`] — HMAC transcript, constant-time verification, the recent-nonce cache.
//! - [`handshake`] — the [`Dialer`] and [`Acceptor`] state machines.
//!
//! The normative description is `docs/PROTOCOL.md`.

pub mod auth;
pub mod codec;
pub mod frame;
pub mod handshake;
pub mod handshake_frame;
pub mod header_json;
pub mod hex;

pub use auth::NonceCache;
pub use codec::{
    decode, decode_owned, encode, encode_owned, CodecError, MAX_FRAME_BYTES, MAX_HEADER_BYTES,
};
pub use frame::{
    AgentInfo, Body, DigestSum, Frame, Header, LinkInfo, ModelInfo, NodeId, NodeRecord,
};
pub use handshake::{Acceptor, Dialer, HandshakeConfig, Step};
pub use handshake_frame::{HandshakeFrame, RejectCode};
pub use hex::{Bytes32, CallId, FrameId};

/// Wire version spoken by this build (handshake `version`, envelope `v`).
pub const PROTOCOL_VERSION: u16 = 1;
/// Oldest peer version we accept.
pub const MIN_VERSION: u16 = 1;
/// Newest peer version we accept.
pub const MAX_VERSION: u16 = 1;
/// Feature bit 0: binary frames with the envelope of `docs/PROTOCOL.md` §4 (required in v1).
pub const FEATURE_BINARY_FRAMES: u64 = 1 << 0;
/// Feature bit 1: chunked streams (`chunk`/`end`).
pub const FEATURE_STREAMS: u64 = 1 << 1;
/// Stream flow-control window, in chunks: a server may have this many chunks in flight beyond
/// the credit the receiver granted (implicit at call open). 64 × [`MAX_CHUNK_BYTES`] = 16 MiB,
/// one maximum frame, so a stalled consumer pins at most that much per stream.
pub const STREAM_WINDOW_CHUNKS: u64 = 64;
/// Largest payload of one `chunk`, in bytes: 256 KiB keeps one chunk well under a link's writer
/// queue and interleaves streams finely; larger payloads are split by the sender.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// Features this build offers.
pub const FEATURES: u64 = FEATURE_BINARY_FRAMES | FEATURE_STREAMS;
/// Features a peer must offer to be accepted.
pub const FEATURES_REQUIRED: u64 = FEATURE_BINARY_FRAMES;
