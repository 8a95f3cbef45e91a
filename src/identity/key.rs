//! Keys: [`NodeKey`] (Ed25519, the node's long-term identity), [`PublicKey`] and its
//! [`Fingerprint`], and [`ExchangeKey`] (X25519, fresh per process).

use crate::proto::hex::{self, Bytes32, Sig64};
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// An Ed25519 public key (32 bytes; 64 hex digits on the wire).
pub type PublicKey = Bytes32;

/// A node's long-term Ed25519 signing key. The 32-byte seed is the whole secret; it is kept so
/// the shell can write it to the key file, and never printed.
pub struct NodeKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl NodeKey {
    /// The key whose seed is `seed` (32 bytes of OS randomness for a new key, or the key file's).
    pub fn from_seed(seed: &[u8; 32]) -> NodeKey {
        // `from_seed_unchecked` only fails on a seed of the wrong length, which the type rules out;
        // fall back to a fixed failure-free path anyway rather than panic.
        let pair = match Ed25519KeyPair::from_seed_unchecked(seed) {
            Ok(p) => p,
            Err(_) => unreachable_seed(),
        };
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        NodeKey {
            pair,
            public: Bytes32(public),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The public key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.public)
    }

    /// Sign `msg` (deterministic, RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> Sig64 {
        let sig = self.pair.sign(msg);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        Sig64(out)
    }
}

#[cold]
fn unreachable_seed() -> ! {
    // A 32-byte seed is always accepted by ring; this documents the one impossible branch
    // instead of an `expect` (denied outside tests).
    std::process::abort()
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.fingerprint())
    }
}

/// Whether `sig` is `key`'s Ed25519 signature of `msg`.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &Sig64) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, &key.0)
        .verify(msg, &sig.0)
        .is_ok()
}

/// The short form of a public key people compare and pin: `ed25519:` and the first 16 bytes of
/// its SHA-256 in lowercase hex (`ed25519:3f2a…`, 40 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 16]);

impl Fingerprint {
    /// The prefix of every fingerprint's text form.
    pub const PREFIX: &'static str = "ed25519:";

    /// The fingerprint of `key`.
    pub fn of(key: &PublicKey) -> Fingerprint {
        let d = Sha256::digest(key.0);
        let mut out = [0u8; 16];
        out.copy_from_slice(&d[..16]);
        Fingerprint(out)
    }

    /// Parse the text form (`ed25519:` + 32 hex digits, either case), or explain what is wrong.
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let Some(rest) = s.strip_prefix(Fingerprint::PREFIX) else {
            return Err(format!(
                "a key fingerprint starts with '{}' (as `openclaw clawmatrix status` shows it)",
                Fingerprint::PREFIX
            ));
        };
        hex::from_hex::<16>(rest)
            .map(Fingerprint)
            .ok_or_else(|| "a key fingerprint is 'ed25519:' followed by 32 hex digits".to_string())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Fingerprint::PREFIX, hex::encode(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A per-process X25519 key: end-to-end payload keys between two nodes are agreed from both
/// nodes' exchange keys (each published in its signed record). Fresh on every start, so payload
/// keys (and their nonce counters) never outlive a process.
pub struct ExchangeKey {
    secret: [u8; 32],
    public: Bytes32,
}

impl ExchangeKey {
    /// The key with secret scalar bytes `secret` (32 bytes of OS randomness; clamped by X25519).
    pub fn from_secret(secret: [u8; 32]) -> ExchangeKey {
        let public =
            curve25519_dalek::montgomery::MontgomeryPoint::mul_base_clamped(secret).to_bytes();
        ExchangeKey {
            secret,
            public: Bytes32(public),
        }
    }

    /// The public half, as published in our record.
    pub fn public(&self) -> Bytes32 {
        self.public
    }

    /// The X25519 shared secret with `peer`'s public key, or `None` when the result is all
    /// zeros (a low-order point: the peer's key contributes nothing, so no key is agreed).
    pub fn agree(&self, peer: &Bytes32) -> Option<[u8; 32]> {
        let shared = curve25519_dalek::montgomery::MontgomeryPoint(peer.0)
            .mul_clamped(self.secret)
            .to_bytes();
        let zero = shared.iter().fold(0u8, |acc, b| acc | b) == 0;
        (!zero).then_some(shared)
    }
}

impl fmt::Debug for ExchangeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExchangeKey({})", self.public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_key_and_message() {
        let a = NodeKey::from_seed(&[1; 32]);
        let b = NodeKey::from_seed(&[2; 32]);
        let sig = a.sign(b"record");
        assert!(verify(&a.public(), b"record", &sig));
        assert!(!verify(&a.public(), b"recorD", &sig));
        assert!(!verify(&b.public(), b"record", &sig));
        let mut bad = sig;
        bad.0[5] ^= 1;
        assert!(!verify(&a.public(), b"record", &bad));
    }

    #[test]
    fn the_same_seed_gives_the_same_key_and_fingerprints_round_trip() {
        let a = NodeKey::from_seed(&[7; 32]);
        assert_eq!(a.public(), NodeKey::from_seed(&[7; 32]).public());
        let fp = a.fingerprint();
        let text = fp.to_string();
        assert!(text.starts_with("ed25519:") && text.len() == 40, "{text}");
        assert_eq!(Fingerprint::parse(&text), Ok(fp));
        assert_eq!(
            Fingerprint::parse(&text.to_uppercase().replace("ED25519", "ed25519")),
            Ok(fp)
        );
        assert!(Fingerprint::parse(&text[8..])
            .unwrap_err()
            .contains("starts with"));
        assert!(Fingerprint::parse("ed25519:12")
            .unwrap_err()
            .contains("32 hex"));
        assert!(!format!("{a:?}").contains(&hex::encode(&[7; 32])));
    }

    #[test]
    fn both_sides_agree_the_same_secret_and_a_low_order_point_agrees_none() {
        let a = ExchangeKey::from_secret([3; 32]);
        let b = ExchangeKey::from_secret([4; 32]);
        let ab = a.agree(&b.public()).expect("agreed");
        assert_eq!(Some(ab), b.agree(&a.public()));
        assert_ne!(
            Some(ab),
            a.agree(&ExchangeKey::from_secret([5; 32]).public())
        );
        assert_eq!(a.agree(&Bytes32([0; 32])), None);
    }
}
