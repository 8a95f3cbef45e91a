//! Handshake cryptography (`docs/PROTOCOL.md` §3): the SPAKE2 exchange that turns the shared
//! secret into a per-connection session key, the domain-separated transcript, the HMAC-SHA256
//! key-confirmation MACs with constant-time verification, and the bounded cache of recently
//! seen hello nonces.
//!
//! Why a PAKE: in wire version 1 the listener answered any `hello` with
//! `HMAC(secret, transcript)`, so whoever could open a socket took home a value to test secret
//! guesses against offline, as fast as they could compute HMACs. Here the secret only enters
//! the SPAKE2 shares, which are uniformly random points to anyone who does not know it, and the
//! MACs are keyed with the SPAKE2 output: checking a guess requires having put that guess into
//! a share of a live exchange, so each connection tests at most one guess.
//!
//! The transcript is a sequence of length-prefixed fields (u32 BE length + bytes) so distinct
//! field sequences never collide; `role` differs per direction so a MAC cannot be reflected.
//!
//! Sans-IO: the caller supplies 32 fresh secret random bytes (the seed) per handshake; the
//! public nonce and the SPAKE2 scalar are derived from it with domain-separated SHA-512, so the
//! nonce reveals nothing about the scalar.

use super::hex::{Bytes32, PakeShare};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::collections::{HashSet, VecDeque};

/// Domain separation tag, first field of every transcript (and of the seed derivations).
pub const DOMAIN: &[u8] = b"clawmatrix-hs-v3";
/// The SPAKE2 symmetric-mode identity: one constant for the whole mesh, because every node holds
/// the same secret and the dialer does not know the listener's id when it sends its share. Node
/// ids are bound by the key-confirmation transcript instead.
pub const PAKE_IDENTITY: &[u8] = b"clawmatrix mesh";
/// First byte of every SPAKE2 share in symmetric mode (`'S'`).
pub const PAKE_SIDE_SYMMETRIC: u8 = 0x53;

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

/// The public nonce for a handshake seed: `SHA-256(DOMAIN | "nonce" | seed)`. One-way, so the
/// nonce on the wire says nothing about the SPAKE2 scalar drawn from the same seed.
pub fn nonce_from_seed(seed: &[u8; 32]) -> Bytes32 {
    let out = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(b"nonce")
        .chain_update(seed)
        .finalize();
    let mut b = [0u8; 32];
    b.copy_from_slice(&out);
    Bytes32(b)
}

/// The seed of a listener's second SPAKE2 share (for its previous secret, during a rotation):
/// `SHA-256(DOMAIN | "previous secret" | seed)`, so the two shares use unrelated scalars.
pub fn previous_seed(seed: &[u8; 32]) -> [u8; 32] {
    let out = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(b"previous secret")
        .chain_update(seed)
        .finalize();
    let mut b = [0u8; 32];
    b.copy_from_slice(&out);
    b
}

/// The randomness SPAKE2 draws its scalar from: SHA-512 in counter mode over the secret seed
/// (`DOMAIN | "pake scalar" | seed | counter`). `Scalar::random` asks for 64 bytes once.
struct SeedRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 64],
    used: usize,
}

impl SeedRng {
    fn new(seed: &[u8; 32]) -> Self {
        SeedRng {
            seed: *seed,
            counter: 0,
            block: [0; 64],
            used: 64,
        }
    }
}

impl rand_core::RngCore for SeedRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            if self.used == self.block.len() {
                let out = Sha512::new()
                    .chain_update(DOMAIN)
                    .chain_update(b"pake scalar")
                    .chain_update(self.seed)
                    .chain_update(self.counter.to_be_bytes())
                    .finalize();
                self.block.copy_from_slice(&out);
                self.counter += 1;
                self.used = 0;
            }
            *b = self.block[self.used];
            self.used += 1;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// The seed is fresh OS randomness per handshake (`node::link::os_nonce`) and SHA-512 is a PRF
// over it, so the stream is as unpredictable as the seed.
impl rand_core::CryptoRng for SeedRng {}

/// Why a peer's SPAKE2 share was refused: wrong length or side byte, or not a curve point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadShare;

/// One side's SPAKE2 state, between sending its share and receiving the peer's.
pub struct Pake(Spake2<Ed25519Group>);

impl std::fmt::Debug for Pake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pake(<secret state>)")
    }
}

impl Pake {
    /// Start the symmetric SPAKE2 exchange for `secret` with the scalar drawn from `seed`;
    /// returns the state and the share to send.
    pub fn start(secret: &[u8], seed: &[u8; 32]) -> (Pake, PakeShare) {
        let (state, msg) = Spake2::<Ed25519Group>::start_symmetric_with_rng(
            &Password::new(secret),
            &Identity::new(PAKE_IDENTITY),
            SeedRng::new(seed),
        );
        // The symmetric share is always 1 side byte + 32 point bytes.
        let mut share = [0u8; 33];
        debug_assert_eq!(
            msg.len(),
            share.len(),
            "spake2's symmetric share size changed"
        );
        if msg.len() == share.len() {
            share.copy_from_slice(&msg);
        }
        (Pake(state), PakeShare(share))
    }

    /// Combine with the peer's share: the session key. Both sides get the same key exactly when
    /// both used the same secret; otherwise the keys are unrelated and key confirmation fails.
    pub fn finish(self, peer: &PakeShare) -> Result<SessionKey, BadShare> {
        let key = self.0.finish(&peer.0).map_err(|_| BadShare)?;
        let mut k = [0u8; 32];
        if key.len() != k.len() {
            return Err(BadShare);
        }
        k.copy_from_slice(&key);
        Ok(SessionKey(k))
    }
}

/// The 32-byte SPAKE2 output of one handshake; keys the confirmation MACs.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(pub [u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// Everything a confirmation MAC and a key proof are bound to: both node ids, both nonces, the
/// version the dialer offered and the one agreed, both feature sets, both SPAKE2 shares, both
/// node keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub dialer: String,
    pub listener: String,
    pub dialer_nonce: Bytes32,
    pub listener_nonce: Bytes32,
    pub dialer_version: u16,
    pub version: u16,
    pub dialer_features: u64,
    pub listener_features: u64,
    pub dialer_share: PakeShare,
    pub listener_share: PakeShare,
    pub dialer_key: Bytes32,
    pub listener_key: Bytes32,
    /// The listener's share for its previous secret, during a rotation (empty when absent).
    pub listener_share2: Option<PakeShare>,
}

impl Transcript {
    /// Every field, length-prefixed (u32 BE), after the labels `domain` and `role`.
    fn encode(&self, domain: &[u8], role: Role) -> Vec<u8> {
        let share2: &[u8] = self.listener_share2.as_ref().map_or(&[], |s| &s.0[..]);
        let fields: [&[u8]; 15] = [
            domain,
            role.label(),
            self.dialer.as_bytes(),
            self.listener.as_bytes(),
            &self.dialer_nonce.0,
            &self.listener_nonce.0,
            &self.dialer_version.to_be_bytes(),
            &self.version.to_be_bytes(),
            &self.dialer_features.to_be_bytes(),
            &self.listener_features.to_be_bytes(),
            &self.dialer_share.0,
            &self.listener_share.0,
            &self.dialer_key.0,
            &self.listener_key.0,
            share2,
        ];
        let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 4).sum());
        for f in fields {
            out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    /// What `role`'s node key signs to prove it holds the key it announced: the transcript
    /// under [`KEY_PROOF_DOMAIN`], so a key proof is never a MAC input or a record signature.
    pub fn key_proof_message(&self, role: Role) -> Vec<u8> {
        self.encode(KEY_PROOF_DOMAIN, role)
    }
}

/// Domain of the handshake's node-key proofs.
pub const KEY_PROOF_DOMAIN: &[u8] = b"clawmatrix-hs-v3 key proof";

fn keyed(key: &SessionKey, role: Role, t: &Transcript) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = match Hmac::<Sha256>::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => <Hmac<Sha256> as KeyInit>::new(&Default::default()),
    };
    mac.update(&t.encode(DOMAIN, role));
    mac
}

/// The confirmation MAC `role` sends for transcript `t` under session key `key`.
pub fn compute_mac(key: &SessionKey, role: Role, t: &Transcript) -> Bytes32 {
    let out = keyed(key, role, t).finalize().into_bytes();
    let mut b = [0u8; 32];
    b.copy_from_slice(&out);
    Bytes32(b)
}

/// Constant-time check that `mac` is what `role` must send for `t` under `key`.
pub fn verify_mac(key: &SessionKey, role: Role, t: &Transcript, mac: &Bytes32) -> bool {
    keyed(key, role, t).verify_slice(&mac.0).is_ok()
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
