//! Handshake cryptography: the domain-separated transcript, HMAC-SHA256 MACs with
//! constant-time verification, and the bounded cache of recently seen hello nonces.
//!
//! The transcript is a sequence of length-prefixed fields (u32 BE length + bytes) so distinct
//! field sequences never collide; `role` differs per direction so a MAC cannot be reflected.

use super::hex::Bytes32;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};

/// Domain separation tag, first field of every transcript.
pub const DOMAIN: &[u8] = b"clawmatrix-hs-v1";

/// Which side produced a MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Listener,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"dialer",
            Role::Listener => b"listener",
        }
    }
}

/// Everything a MAC is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    pub dialer: &'a str,
    pub listener: &'a str,
    pub dialer_nonce: &'a Bytes32,
    pub listener_nonce: &'a Bytes32,
    pub version: u16,
    pub dialer_features: u64,
    pub listener_features: u64,
}

fn keyed(secret: &[u8], role: Role, t: &Transcript<'_>) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this never fails; an empty key is still a key.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => <Hmac<Sha256> as KeyInit>::new(&Default::default()),
    };
    let fields: [&[u8]; 9] = [
        DOMAIN,
        role.label(),
        t.dialer.as_bytes(),
        t.listener.as_bytes(),
        &t.dialer_nonce.0,
        &t.listener_nonce.0,
        &t.version.to_be_bytes(),
        &t.dialer_features.to_be_bytes(),
        &t.listener_features.to_be_bytes(),
    ];
    for f in fields {
        mac.update(&(f.len() as u32).to_be_bytes());
        mac.update(f);
    }
    mac
}

/// Compute the MAC `role` sends for transcript `t`.
pub fn compute_mac(secret: &[u8], role: Role, t: &Transcript<'_>) -> Bytes32 {
    let out = keyed(secret, role, t).finalize().into_bytes();
    let mut b = [0u8; 32];
    b.copy_from_slice(&out);
    Bytes32(b)
}

/// Constant-time check that `mac` is what `role` must send for `t`.
pub fn verify_mac(secret: &[u8], role: Role, t: &Transcript<'_>, mac: &Bytes32) -> bool {
    keyed(secret, role, t).verify_slice(&mac.0).is_ok()
}

/// Recent hello nonces a listener has seen (FIFO, fixed capacity).
pub const NONCE_CACHE_CAPACITY: usize = 4096;

/// Bounded set of recently seen nonces: a ring plus a hash set, evicting the oldest.
#[derive(Debug)]
pub struct NonceCache {
    order: VecDeque<[u8; 32]>,
    set: HashSet<[u8; 32]>,
    capacity: usize,
}

impl Default for NonceCache {
    fn default() -> Self {
        Self::new(NONCE_CACHE_CAPACITY)
    }
}

impl NonceCache {
    /// A cache holding at most `capacity` (≥ 1) nonces.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        NonceCache {
            order: VecDeque::with_capacity(capacity),
            set: HashSet::with_capacity(capacity),
            capacity,
        }
    }

    /// Record `nonce`; `false` if it was already present (a replay).
    pub fn insert(&mut self, nonce: &Bytes32) -> bool {
        if self.set.contains(&nonce.0) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(nonce.0);
        self.set.insert(nonce.0);
        true
    }

    /// Number of nonces held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}
