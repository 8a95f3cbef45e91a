//! Signed gossip (`docs/PROTOCOL.md` §6.4): every record and every `leave` is signed by the node
//! it describes, and travels exactly as it was signed, so relays forward it byte for byte and
//! every receiver verifies the owner's signature itself.
//!
//! A `gossip` frame's payload is its records one after another, each as
//! `u32 BE length | record JSON | 64-byte Ed25519 signature`; the signature covers
//! [`RECORD_DOMAIN`] followed by the JSON bytes. A `leave` carries its signature over
//! [`leave_message`] in its header.

use super::frame::NodeRecord;
use super::hex::Sig64;
use crate::identity::key::{verify, NodeKey, PublicKey};
use std::sync::Arc;

/// Signature domain of a record.
pub const RECORD_DOMAIN: &[u8] = b"clawmatrix-record-v1\n";
/// Signature domain of a leave.
pub const LEAVE_DOMAIN: &[u8] = b"clawmatrix-leave-v1\n";
/// Bytes a signed record adds to its JSON: the length prefix and the signature.
pub const SIGNED_OVERHEAD: usize = 4 + 64;

/// A record with the exact bytes its owner signed: `record` to look at, `wire` (length, JSON,
/// signature) to forward.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedRecord {
    pub record: NodeRecord,
    pub wire: Arc<[u8]>,
}

impl SignedRecord {
    /// Serialize `record` and sign it with `key` (our own record).
    pub fn sign(record: NodeRecord, key: &NodeKey) -> Result<SignedRecord, serde_json::Error> {
        let json = serde_json::to_vec(&record)?;
        let sig = key.sign(&record_message(&json));
        let mut wire = Vec::with_capacity(json.len() + SIGNED_OVERHEAD);
        wire.extend_from_slice(&(json.len() as u32).to_be_bytes());
        wire.extend_from_slice(&json);
        wire.extend_from_slice(&sig.0);
        Ok(SignedRecord {
            record,
            wire: Arc::from(wire),
        })
    }

    /// The JSON bytes inside `wire`.
    pub fn json(&self) -> &[u8] {
        let end = self.wire.len().saturating_sub(64);
        self.wire.get(4..end).unwrap_or_default()
    }
}

/// What a signature over a record's JSON covers.
fn record_message(json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(RECORD_DOMAIN.len() + json.len());
    m.extend_from_slice(RECORD_DOMAIN);
    m.extend_from_slice(json);
    m
}

/// Whether `sig` is `key`'s signature of the record JSON `json`.
pub fn verify_record(key: &PublicKey, json: &[u8], sig: &Sig64) -> bool {
    verify(key, &record_message(json), sig)
}

/// What a leave's signature covers: the domain, the node id and the incarnation.
pub fn leave_message(node: &str, incarnation: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(LEAVE_DOMAIN.len() + node.len() + 12);
    m.extend_from_slice(LEAVE_DOMAIN);
    m.extend_from_slice(&(node.len() as u32).to_be_bytes());
    m.extend_from_slice(node.as_bytes());
    m.extend_from_slice(&incarnation.to_be_bytes());
    m
}

/// One entry of a gossip payload, not yet parsed or verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// Length prefix, JSON and signature: what is stored and forwarded.
    pub wire: &'a [u8],
    pub json: &'a [u8],
    pub sig: Sig64,
}

/// Why a gossip payload could not be split into its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("gossip payload ends inside record {0}")]
    Truncated(u32),
    #[error("gossip payload has bytes after its {0} records")]
    Trailing(u32),
}

/// The `count` entries of a gossip payload, in order. The whole payload must be exactly those
/// entries; a record's size limit is checked by the caller on `json.len()`.
pub fn split(payload: &[u8], count: u32) -> Result<Vec<RawRecord<'_>>, SplitError> {
    // Never reserve for the announced count: each entry needs at least SIGNED_OVERHEAD bytes.
    let mut out = Vec::with_capacity((count as usize).min(payload.len() / SIGNED_OVERHEAD));
    let mut at = 0usize;
    for i in 0..count {
        let Some(len) = payload.get(at..at + 4) else {
            return Err(SplitError::Truncated(i));
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = at
            .checked_add(4 + len + 64)
            .filter(|e| *e <= payload.len())
            .ok_or(SplitError::Truncated(i))?;
        let wire = &payload[at..end];
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&wire[4 + len..]);
        out.push(RawRecord {
            wire,
            json: &wire[4..4 + len],
            sig: Sig64(sig),
        });
        at = end;
    }
    if at != payload.len() {
        return Err(SplitError::Trailing(count));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::hex::Bytes32;

    fn record(key: &NodeKey) -> NodeRecord {
        NodeRecord {
            node: "office-01".into(),
            incarnation: 1,
            version: 2,
            key: key.public(),
            xkey: Bytes32([9; 32]),
            listen: false,
            agents: vec![],
            models: vec![],
            tags: vec!["gpu".into()],
            links: vec![],
        }
    }

    #[test]
    fn a_signed_record_splits_back_and_verifies_only_unaltered_and_with_its_key() {
        let key = NodeKey::from_seed(&[1; 32]);
        let a = SignedRecord::sign(record(&key), &key).expect("signed");
        let mut payload = a.wire.to_vec();
        payload.extend_from_slice(&a.wire);
        let parts = split(&payload, 2).expect("split");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].wire, &a.wire[..]);
        assert_eq!(parts[0].json, a.json());
        assert!(verify_record(&key.public(), parts[1].json, &parts[1].sig));
        let other = NodeKey::from_seed(&[2; 32]);
        assert!(!verify_record(
            &other.public(),
            parts[0].json,
            &parts[0].sig
        ));
        let mut flipped = a.json().to_vec();
        flipped[10] ^= 1;
        assert!(!verify_record(&key.public(), &flipped, &parts[0].sig));
    }

    #[test]
    fn split_refuses_truncated_and_trailing_payloads_and_huge_announced_lengths() {
        let key = NodeKey::from_seed(&[1; 32]);
        let a = SignedRecord::sign(record(&key), &key).expect("signed");
        assert_eq!(split(&a.wire, 2), Err(SplitError::Truncated(1)));
        assert_eq!(
            split(&a.wire[..a.wire.len() - 1], 1),
            Err(SplitError::Truncated(0))
        );
        let mut extra = a.wire.to_vec();
        extra.push(0);
        assert_eq!(split(&extra, 1), Err(SplitError::Trailing(1)));
        assert_eq!(
            split(&[0xff, 0xff, 0xff, 0xff], 1),
            Err(SplitError::Truncated(0))
        );
        assert_eq!(split(&[], u32::MAX), Err(SplitError::Truncated(0)));
        assert_eq!(split(&[], 0), Ok(vec![]));
    }

    #[test]
    fn a_leave_message_binds_node_and_incarnation() {
        assert_ne!(leave_message("a", 1), leave_message("a", 2));
        assert_ne!(leave_message("ab", 1), leave_message("a", 1));
    }
}
