//! End-to-end protection of routed traffic (`docs/PROTOCOL.md` §7.1): every routed frame a
//! node originates is sealed for its destination, so relays see only the routing header and a
//! destination verifies the origin itself, never from the link a frame arrived on.
//!
//! Per pair of nodes there is one session: both nodes' per-process X25519 keys (published in
//! their signed records) agree a shared secret, and HKDF-SHA256 derives one AES-256-GCM key per
//! direction, bound to both node ids and both nodes' Ed25519 and X25519 keys. A frame is sealed
//! under the sender's direction key with the nonce `0⁴ ‖ ctr` (a per-session counter from 1) and
//! the associated data `domain ‖ frame id ‖ call id ‖ ctr`; what is encrypted is the whole inner
//! frame (header and payload, the normal encoding). Both X25519 keys are fresh per process, so a
//! session, its counters and its nonces never outlive either process, and a frame recorded before
//! a restart opens under no later key. Within a session the receiver keeps a sliding window of
//! the last [`WINDOW`] counters and refuses one seen before or older than the window.

use crate::identity::key::{ExchangeKey, PublicKey};
use crate::proto::{Bytes32, CallId, FrameId, NodeId};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use std::collections::HashMap;

/// Domain of the key derivation and of every frame's associated data.
pub const E2E_DOMAIN: &[u8] = b"clawmatrix-e2e-v1";
/// Bytes sealing adds to a frame's payload (the AES-GCM tag).
pub const TAG_BYTES: usize = 16;
/// Counters a receiver remembers below the highest it accepted: frames may arrive out of order
/// by up to this many (a route change), not more.
pub const WINDOW: u64 = 1024;

/// Why a frame could not be sealed or opened. Codes are stable (`e2eRefused` in status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E2eError {
    /// We hold no record of the peer, so no keys for it.
    NoKey,
    /// No key could be agreed with the peer (its X25519 key is a low-order point).
    NoSession,
    /// The tag did not verify: altered, injected, or sealed under another session.
    BadTag,
    /// The counter was seen before, or is older than the window.
    Replay,
    /// This session's counter is exhausted (2^64 frames; never in practice).
    Exhausted,
}

impl E2eError {
    /// Stable code.
    pub fn code(self) -> &'static str {
        match self {
            E2eError::NoKey => "no_key",
            E2eError::NoSession => "no_session",
            E2eError::BadTag => "bad_tag",
            E2eError::Replay => "replay",
            E2eError::Exhausted => "exhausted",
        }
    }
}

/// Both public keys of a peer, from its verified record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKeys {
    pub ed: PublicKey,
    pub x: Bytes32,
}

/// Counters accepted so far: the highest, and a bitmap of the [`WINDOW`] below it.
#[derive(Debug, Clone, Default)]
struct Window {
    top: u64,
    bits: [u64; (WINDOW / 64) as usize],
}

impl Window {
    fn bit(&self, ctr: u64) -> (usize, u64) {
        let i = (ctr % WINDOW) as usize;
        (i / 64, 1u64 << (i % 64))
    }

    fn fresh(&self, ctr: u64) -> bool {
        if ctr == 0 {
            return false;
        }
        if ctr > self.top {
            return true;
        }
        if self.top - ctr >= WINDOW {
            return false;
        }
        let (w, b) = self.bit(ctr);
        self.bits[w] & b == 0
    }

    fn accept(&mut self, ctr: u64) {
        if ctr > self.top {
            if ctr - self.top >= WINDOW {
                self.bits = Default::default();
            } else {
                for c in self.top + 1..ctr {
                    let (w, b) = self.bit(c);
                    self.bits[w] &= !b;
                }
            }
            self.top = ctr;
        }
        let (w, b) = self.bit(ctr);
        self.bits[w] |= b;
    }
}

struct Session {
    peer_ed: PublicKey,
    peer_x: Bytes32,
    tx: LessSafeKey,
    rx: LessSafeKey,
    next_ctr: u64,
    window: Window,
}

/// All sessions of one node. See the module docs.
pub struct E2e {
    me: NodeId,
    my_ed: PublicKey,
    x: std::sync::Arc<ExchangeKey>,
    sessions: HashMap<NodeId, Session>,
}

impl std::fmt::Debug for E2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "E2e({} sessions)", self.sessions.len())
    }
}

/// The direction key `from → to` for the agreed secret `shared`.
fn direction_key(
    shared: &[u8; 32],
    from: (&str, &PublicKey, &Bytes32),
    to: (&str, &PublicKey, &Bytes32),
) -> Option<LessSafeKey> {
    let mut info = Vec::with_capacity(256);
    for part in [from, to] {
        info.extend_from_slice(&(part.0.len() as u32).to_be_bytes());
        info.extend_from_slice(part.0.as_bytes());
        info.extend_from_slice(&part.1 .0);
        info.extend_from_slice(&part.2 .0);
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, E2E_DOMAIN).extract(shared);
    let info = [info.as_slice()];
    let okm = prk.expand(&info, &aead::AES_256_GCM).ok()?;
    Some(LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce(ctr: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(id: &FrameId, call_id: &CallId, ctr: u64) -> [u8; 17 + 16 + 16 + 8] {
    let mut a = [0u8; 17 + 16 + 16 + 8];
    a[..17].copy_from_slice(E2E_DOMAIN);
    a[17..33].copy_from_slice(&id.0);
    a[33..49].copy_from_slice(&call_id.0);
    a[49..].copy_from_slice(&ctr.to_be_bytes());
    a
}

impl E2e {
    /// Sessions for node `me` with Ed25519 key `my_ed` and this process's exchange key `x`.
    pub fn new(me: NodeId, my_ed: PublicKey, x: std::sync::Arc<ExchangeKey>) -> E2e {
        E2e {
            me,
            my_ed,
            x,
            sessions: HashMap::new(),
        }
    }

    /// Our X25519 public key (for our record).
    pub fn public(&self) -> Bytes32 {
        self.x.public()
    }

    /// The session with `peer`: the one held, or a new one from `keys` (its record's keys; the
    /// core calls [`E2e::forget`] when a record with other keys replaces the one a session was
    /// agreed from, so a held session is always the current one).
    fn session(
        &mut self,
        peer: &str,
        keys: impl FnOnce() -> Option<PeerKeys>,
    ) -> Result<&mut Session, E2eError> {
        if !self.sessions.contains_key(peer) {
            let keys = keys().ok_or(E2eError::NoKey)?;
            let shared = self.x.agree(&keys.x).ok_or(E2eError::NoSession)?;
            let mine = (self.me.as_str(), &self.my_ed, &self.x.public());
            let theirs = (peer, &keys.ed, &keys.x);
            let tx = direction_key(&shared, mine, theirs).ok_or(E2eError::NoSession)?;
            let rx = direction_key(&shared, theirs, mine).ok_or(E2eError::NoSession)?;
            self.sessions.insert(
                peer.to_string(),
                Session {
                    peer_ed: keys.ed,
                    peer_x: keys.x,
                    tx,
                    rx,
                    next_ctr: 1,
                    window: Window::default(),
                },
            );
        }
        self.sessions.get_mut(peer).ok_or(E2eError::NoSession)
    }

    /// Seal `buf` (an encoded inner frame) for `peer` in place, appending the tag; returns the
    /// counter to put in the outer header.
    pub fn seal(
        &mut self,
        peer: &str,
        keys: impl FnOnce() -> Option<PeerKeys>,
        id: &FrameId,
        call_id: &CallId,
        buf: &mut Vec<u8>,
    ) -> Result<u64, E2eError> {
        let s = self.session(peer, keys)?;
        let ctr = s.next_ctr;
        s.next_ctr = ctr.checked_add(1).ok_or(E2eError::Exhausted)?;
        let tag =
            s.tx.seal_in_place_separate_tag(nonce(ctr), Aad::from(aad(id, call_id, ctr)), buf)
                .map_err(|_| E2eError::Exhausted)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(ctr)
    }

    /// Open a frame `peer` sealed for us, in place (the tag is cut off). The counter enters the
    /// replay window only once the tag verified, so nothing forged moves it.
    pub fn open(
        &mut self,
        peer: &str,
        keys: impl FnOnce() -> Option<PeerKeys>,
        (id, call_id, ctr): (&FrameId, &CallId, u64),
        buf: &mut Vec<u8>,
    ) -> Result<(), E2eError> {
        let s = self.session(peer, keys)?;
        if !s.window.fresh(ctr) {
            return Err(E2eError::Replay);
        }
        let plain =
            s.rx.open_in_place(nonce(ctr), Aad::from(aad(id, call_id, ctr)), buf)
                .map_err(|_| E2eError::BadTag)?
                .len();
        buf.truncate(plain);
        s.window.accept(ctr);
        Ok(())
    }

    /// Drop the session with `peer` (its record was forgotten).
    pub fn forget(&mut self, peer: &str) {
        self.sessions.remove(peer);
    }

    /// Drop the session with `peer` if it was agreed from other keys than `keys` (a new record
    /// of the peer: it restarted, or its trust was reset).
    pub fn forget_unless(&mut self, peer: &str, keys: PeerKeys) {
        if self
            .sessions
            .get(peer)
            .is_some_and(|s| s.peer_ed != keys.ed || s.peer_x != keys.x)
        {
            self.sessions.remove(peer);
        }
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use std::sync::Arc;

    struct Side {
        e2e: E2e,
        ed: PublicKey,
        x: Bytes32,
    }

    fn side(name: &str, n: u8) -> Side {
        let ed = NodeKey::from_seed(&[n; 32]).public();
        let x = Arc::new(ExchangeKey::from_secret([n + 100; 32]));
        let xp = x.public();
        Side {
            e2e: E2e::new(name.into(), ed, x),
            ed,
            x: xp,
        }
    }

    fn keys(s: &Side) -> (PublicKey, Bytes32) {
        (s.ed, s.x)
    }

    const ID: FrameId = FrameId([1; 16]);
    const CALL: CallId = CallId([2; 16]);

    #[test]
    fn a_sealed_frame_opens_once_at_its_destination_and_nowhere_else() {
        let mut a = side("a", 1);
        let mut b = side("b", 2);
        let mut c = side("c", 3);
        let (bed, bx) = keys(&b);
        let (aed, ax) = keys(&a);
        let mut buf = b"inner frame".to_vec();
        let ctr = a
            .e2e
            .seal(
                "b",
                || Some(PeerKeys { ed: bed, x: bx }),
                &ID,
                &CALL,
                &mut buf,
            )
            .expect("sealed");
        assert_eq!(ctr, 1);
        assert!(!buf.windows(5).any(|w| w == b"inner"), "ciphertext");
        let sealed = buf.clone();
        let from_a = PeerKeys { ed: aed, x: ax };
        b.e2e
            .open("a", || Some(from_a), (&ID, &CALL, ctr), &mut buf)
            .expect("opens");
        assert_eq!(buf, b"inner frame");
        // A replay of the same frame.
        let mut again = sealed.clone();
        assert_eq!(
            b.e2e
                .open("a", || Some(from_a), (&ID, &CALL, ctr), &mut again),
            Err(E2eError::Replay)
        );
        // A third node cannot open it, nor can b read it as if it came from c.
        let mut other = sealed.clone();
        assert_eq!(
            c.e2e
                .open("a", || Some(from_a), (&ID, &CALL, ctr), &mut other),
            Err(E2eError::BadTag)
        );
        // Another frame id, call id or counter in the header: refused.
        for (id, call, n) in [
            (FrameId([9; 16]), CALL, 2),
            (ID, CallId([9; 16]), 2),
            (ID, CALL, 2),
        ] {
            let mut x = sealed.clone();
            assert_eq!(
                b.e2e.open("a", || Some(from_a), (&id, &call, n), &mut x),
                Err(E2eError::BadTag)
            );
        }
        // A flipped bit anywhere.
        for i in 0..sealed.len() {
            let mut x = sealed.clone();
            x[i] ^= 0x10;
            let mut fresh = side("b", 2);
            assert_eq!(
                fresh
                    .e2e
                    .open("a", || Some(from_a), (&ID, &CALL, ctr), &mut x),
                Err(E2eError::BadTag),
                "byte {i}"
            );
        }
        // The reverse direction uses its own key: b's frame to a does not open as a's to b.
        // (b's second frame: counter 2, which b's own window has not seen from a.)
        let _ = b
            .e2e
            .seal("a", || Some(from_a), &ID, &CALL, &mut b"first".to_vec());
        let mut back = b"reply".to_vec();
        let n = b
            .e2e
            .seal("a", || Some(from_a), &ID, &CALL, &mut back)
            .expect("sealed");
        assert_eq!(n, 2);
        let mut reflected = back.clone();
        let from_b = PeerKeys { ed: bed, x: bx };
        assert_eq!(
            b.e2e
                .open("a", || Some(from_a), (&ID, &CALL, n), &mut reflected),
            Err(E2eError::BadTag)
        );
        a.e2e
            .open("b", || Some(from_b), (&ID, &CALL, n), &mut back)
            .expect("opens");
    }

    #[test]
    fn the_window_takes_reordered_counters_once_and_refuses_ones_too_old() {
        let mut w = Window::default();
        assert!(!w.fresh(0));
        for c in [5, 3, 4, 1, 2] {
            assert!(w.fresh(c), "{c}");
            w.accept(c);
            assert!(!w.fresh(c), "{c} twice");
        }
        w.accept(5 + WINDOW);
        assert!(!w.fresh(5), "older than the window");
        assert!(w.fresh(6 + 1), "inside the window and unseen");
        assert!(!w.fresh(5 + WINDOW));
        w.accept(10 * WINDOW);
        assert!(w.fresh(10 * WINDOW - 1));
        assert!(!w.fresh(9 * WINDOW));
    }

    #[test]
    fn a_restarted_peer_gets_a_new_session_and_old_frames_do_not_open() {
        let mut a = side("a", 1);
        let mut b = side("b", 2);
        let (bed, bx) = keys(&b);
        let (aed, ax) = keys(&a);
        let to_b = || Some(PeerKeys { ed: bed, x: bx });
        let from_a = PeerKeys { ed: aed, x: ax };
        let mut first = b"first".to_vec();
        let n1 = a
            .e2e
            .seal("b", to_b, &ID, &CALL, &mut first)
            .expect("sealed");
        b.e2e
            .open("a", || Some(from_a), (&ID, &CALL, n1), &mut first)
            .expect("opens");
        let mut old = b"before".to_vec();
        let n = a.e2e.seal("b", to_b, &ID, &CALL, &mut old).expect("sealed");
        // a restarts: same node key, new exchange key; b sees its new record.
        let x2 = Arc::new(ExchangeKey::from_secret([77; 32]));
        let ax2 = x2.public();
        a.e2e = E2e::new("a".into(), aed, x2);
        let from_a2 = PeerKeys { ed: aed, x: ax2 };
        b.e2e.forget_unless("a", from_a);
        assert_eq!(b.e2e.len(), 1, "the same keys keep the session");
        b.e2e.forget_unless("a", from_a2);
        assert!(b.e2e.is_empty(), "other keys end it");
        assert_eq!(
            b.e2e.open("a", || Some(from_a2), (&ID, &CALL, n), &mut old),
            Err(E2eError::BadTag),
            "a frame of the old process opens under no new key"
        );
        let mut new = b"after".to_vec();
        let n = a.e2e.seal("b", to_b, &ID, &CALL, &mut new).expect("sealed");
        assert_eq!(n, 1);
        b.e2e
            .open("a", || Some(from_a2), (&ID, &CALL, n), &mut new)
            .expect("opens");
    }
}
