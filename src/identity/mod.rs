//! Node identity: each node's Ed25519 key ([`NodeKey`]) and its public half ([`PublicKey`],
//! shown as a [`Fingerprint`]), and the per-process X25519 key ([`ExchangeKey`]) that end-to-end
//! payload keys are agreed with. Pure functions of their inputs: randomness comes from the
//! caller, files are read and written by the shell (`keyfile`, `trust_file`).
//!
//! Primitives: Ed25519 signatures and AES-256-GCM / HKDF-SHA256 from `ring` (already the TLS
//! provider, so no new crate), X25519 from `curve25519-dalek` (already in the tree through the
//! handshake's SPAKE2; `ring` only offers single-use ephemeral X25519 keys, and a node agrees one
//! key with every peer from one per-process secret).

mod files;
pub mod key;
pub mod keyfile;
pub mod trust_file;

pub use key::{ExchangeKey, Fingerprint, NodeKey, PublicKey};
