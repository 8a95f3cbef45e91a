//! The handshake state machines: [`Dialer`] (the side that opened the WebSocket) and
//! [`Acceptor`] (the listening side). Each consumes TEXT frames and returns a [`Step`]: a frame
//! to send, success, or a rejection with its close code. No I/O, no clock reads, no RNG: the
//! caller passes `now` and a fresh secret 32-byte seed (the nonce and the SPAKE2 scalar are
//! derived from it, [`super::auth`]).
//!
//! Flow (`docs/PROTOCOL.md` §3), wire version 3:
//! ```text
//! Dialer::new                   -> hello (nonce, SPAKE2 share X, node key)
//! Acceptor::on_frame(hello)     -> challenge (nonce, share Y, node key; no MAC) | reject
//! Dialer::on_frame(challenge)   -> auth (confirmation MAC, key proof)           | reject
//! Acceptor::on_frame(auth)      -> Done + welcome (MAC, key proof)              | reject
//! Dialer::on_frame(welcome)     -> Done                                        | reject
//! ```
//! The listener reveals a value that depends on the secret only after the dialer proved it;
//! the dialer's proof is keyed with the SPAKE2 output, so a fake listener can test only the one
//! guess it put into its share. "Duplicate node already connected" is decided by the mesh,
//! passed in as `admit`.

use super::auth::{
    compute_mac, nonce_from_seed, previous_seed, verify_mac, NonceCache, Pake, Role, SessionKey,
    Transcript,
};
use super::frame::{valid_node_id, NodeId};
use super::handshake_frame::{claimed_version, HandshakeFrame, RejectCode};
use super::hex::{Bytes32, PakeShare, Sig64};
use super::{FEATURES, FEATURES_REQUIRED, MAX_VERSION, MIN_VERSION, PROTOCOL_VERSION};
use crate::identity::key::{verify, NodeKey, PublicKey};
use std::sync::Arc;

/// `Mesh::admit` as the handshake asks it: may this node id, proving this node key, link?
pub trait Admit: FnOnce(&str, &PublicKey) -> Result<(), RejectCode> {}
impl<F: FnOnce(&str, &PublicKey) -> Result<(), RejectCode>> Admit for F {}

/// Time allowed from the WebSocket upgrade to `welcome`, in ms.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// What a side needs to authenticate.
#[derive(Clone)]
pub struct HandshakeConfig {
    /// Our node id.
    pub node_id: NodeId,
    /// The mesh-wide shared secret (never sent; it only blinds the SPAKE2 share).
    pub secret: Vec<u8>,
    /// Version we speak (normally [`PROTOCOL_VERSION`]).
    pub version: u16,
    /// Feature bits we offer (normally [`FEATURES`]).
    pub features: u64,
    /// Our node key: announced in `hello`/`challenge`, proved by signing the transcript.
    pub identity: Arc<NodeKey>,
    /// During a secret rotation (`secretPrevious`): the other secret. A listener accepts it
    /// besides `secret` (its challenge carries a second share); a dialer whose peer refused
    /// `secret` dials with this one ([`HandshakeConfig::previous_first`]).
    pub previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .field("version", &self.version)
            .field("features", &self.features)
            .field("identity", &self.identity.fingerprint())
            .field("previous", &self.previous.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HandshakeConfig {
    /// Config with this build's version and features.
    pub fn new(
        node_id: impl Into<NodeId>,
        secret: impl Into<Vec<u8>>,
        identity: Arc<NodeKey>,
    ) -> Self {
        HandshakeConfig {
            node_id: node_id.into(),
            secret: secret.into(),
            version: PROTOCOL_VERSION,
            features: FEATURES,
            identity,
            previous: None,
        }
    }

    /// This config with `secret` and `previous` swapped: what a dialer uses after its peer
    /// refused `secret` (the peer may not have the new secret yet, or only the new one).
    pub fn previous_first(&self) -> HandshakeConfig {
        let mut c = self.clone();
        if let Some(p) = c.previous.take() {
            c.previous = Some(std::mem::replace(&mut c.secret, p));
        }
        c
    }
}

/// Result of feeding one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this frame and wait for the next one.
    Send(HandshakeFrame),
    /// Authenticated. Send `send` (the acceptor's `welcome`) if present, then switch to binary
    /// frames and call `Mesh::handle_link_up`.
    Done {
        send: Option<HandshakeFrame>,
        peer: NodeId,
        /// The node key the peer proved it holds.
        peer_key: PublicKey,
        features: u64,
    },
    /// Refused. Send `send` if present, close with `code.close_code()`, log `reason` once and
    /// count it (`Mesh::note_handshake_reject`). `by_peer` = the peer sent us a `reject`.
    Rejected {
        send: Option<HandshakeFrame>,
        code: RejectCode,
        reason: String,
        by_peer: bool,
    },
}

fn reject(code: RejectCode) -> Step {
    reject_because(code, code.reason().to_string())
}

/// A rejection whose reason (sent to the peer and logged) says more than the code's default.
fn reject_because(code: RejectCode, reason: String) -> Step {
    Step::Rejected {
        send: Some(HandshakeFrame::Reject {
            code,
            reason: reason.clone(),
        }),
        code,
        reason,
        by_peer: false,
    }
}

fn peer_rejected(code: RejectCode, reason: String) -> Step {
    Step::Rejected {
        send: None,
        code,
        reason,
        by_peer: true,
    }
}

/// `incompatible_version` naming both versions, e.g. for a version 1 peer.
fn wrong_version(peer: u64, ours: u16) -> Step {
    reject_because(RejectCode::IncompatibleVersion, version_reason(peer, ours))
}

fn version_reason(peer: u64, ours: u16) -> String {
    format!("peer speaks wire version {peer}, this node speaks {ours}")
}

/// The rejection, if the peer's `version` is outside our range or its `features` lack a
/// required one (`ours` is the version we speak, named in the reason).
fn version_refusal(version: u16, features: u64, ours: u16) -> Option<Step> {
    if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
        return Some(wrong_version(u64::from(version), ours));
    }
    if features & FEATURES_REQUIRED != FEATURES_REQUIRED {
        return Some(reject_because(
            RejectCode::IncompatibleVersion,
            format!(
                "peer offers features {features:#x}, this node requires {FEATURES_REQUIRED:#x}"
            ),
        ));
    }
    None
}

/// Decode a frame; with `first`, one the strict decoder refuses but that claims another wire
/// version (a v1 `hello` or `challenge`) is `incompatible_version`, not `malformed`.
fn decode(text: &str, first: bool, ours: u16) -> Result<HandshakeFrame, (RejectCode, String)> {
    HandshakeFrame::decode(text).map_err(|code| match claimed_version(text) {
        Some(v) if first && v != u64::from(ours) => {
            (RejectCode::IncompatibleVersion, version_reason(v, ours))
        }
        _ => (code, code.reason().to_string()),
    })
}

enum DialerState {
    AwaitChallenge {
        pake: Pake,
    },
    AwaitWelcome {
        peer: NodeId,
        /// The session key for the challenge's share, and for its second share if any.
        keys: (SessionKey, Option<SessionKey>),
        transcript: Box<Transcript>,
    },
    Finished,
}

/// The dialing side.
pub struct Dialer {
    cfg: HandshakeConfig,
    expected: Option<NodeId>,
    /// Kept to run SPAKE2 a second time against a listener's second share (the same seed gives
    /// the same scalar and share).
    seed: [u8; 32],
    nonce: Bytes32,
    share: PakeShare,
    deadline: u64,
    state: DialerState,
}

impl Dialer {
    /// Start a handshake; returns the machine and the `hello` to send. `expected_peer` is the
    /// node id configured for this URL, if any. `seed` must be 32 fresh random bytes, kept
    /// secret: the hello nonce and the SPAKE2 scalar are derived from it.
    pub fn new(
        cfg: HandshakeConfig,
        expected_peer: Option<NodeId>,
        seed: [u8; 32],
        now: u64,
    ) -> (Self, HandshakeFrame) {
        let nonce = nonce_from_seed(&seed);
        let (pake, share) = Pake::start(&cfg.secret, &seed);
        let hello = HandshakeFrame::Hello {
            version: cfg.version,
            features: cfg.features,
            node: cfg.node_id.clone(),
            nonce,
            pake: share,
            key: cfg.identity.public(),
        };
        let d = Dialer {
            cfg,
            expected: expected_peer,
            seed,
            nonce,
            share,
            deadline: now.saturating_add(HANDSHAKE_TIMEOUT_MS),
            state: DialerState::AwaitChallenge { pake },
        };
        (d, hello)
    }

    /// When the handshake times out.
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// `Some(timeout rejection)` once `now` passed the deadline of an unfinished handshake.
    pub fn on_tick(&mut self, now: u64) -> Option<Step> {
        if matches!(self.state, DialerState::Finished) || now < self.deadline {
            return None;
        }
        self.state = DialerState::Finished;
        Some(reject(RejectCode::Timeout))
    }

    /// Feed one TEXT frame from the listener.
    pub fn on_frame(&mut self, text: &str, admit: impl Admit) -> Step {
        let state = std::mem::replace(&mut self.state, DialerState::Finished);
        let first = matches!(state, DialerState::AwaitChallenge { .. });
        let frame = match decode(text, first, self.cfg.version) {
            Ok(f) => f,
            Err((code, reason)) => return reject_because(code, reason),
        };
        if let HandshakeFrame::Reject { code, reason } = frame {
            if first && code == RejectCode::Malformed && reason == code.reason() {
                // A version 1 listener's strict decoder refuses our hello's `pake` field with
                // the bare reason; a version 2 listener says what was wrong with the hello.
                let v = self.cfg.version;
                return peer_rejected(
                    code,
                    format!(
                        "{reason} (a wire version 1 listener answers a version {v} hello this way)"
                    ),
                );
            }
            return peer_rejected(code, reason);
        }
        match (state, frame) {
            (
                DialerState::AwaitChallenge { pake },
                HandshakeFrame::Challenge {
                    version,
                    features,
                    node,
                    nonce,
                    pake: share,
                    key,
                    pake2,
                },
            ) => self.on_challenge(
                pake,
                Greeting {
                    version,
                    features,
                    node,
                    nonce,
                    share,
                    key,
                },
                pake2,
            ),
            (
                DialerState::AwaitWelcome {
                    peer,
                    keys,
                    transcript,
                },
                HandshakeFrame::Welcome { mac, sig, .. },
            ) => {
                // The listener confirmed with the key of whichever share matched our secret.
                let key = match &keys {
                    (k1, Some(k2)) if !verify_mac(k1, Role::Listener, &transcript, &mac) => k2,
                    (k1, _) => k1,
                };
                self.on_welcome(peer, key, &transcript, (&mac, &sig), admit)
            }
            _ => reject(RejectCode::Malformed),
        }
    }

    /// The listener's challenge: check it, finish SPAKE2 (twice when it carries a second share
    /// for its previous secret), prove the key.
    fn on_challenge(&mut self, pake: Pake, challenge: Greeting, share2: Option<PakeShare>) -> Step {
        let Greeting {
            version,
            features,
            node,
            nonce,
            share: peer_share,
            key: peer_key,
        } = challenge;
        if !valid_node_id(&node) {
            return reject(RejectCode::Malformed);
        }
        if let Some(step) = version_refusal(version, features, self.cfg.version) {
            return step;
        }
        if version > self.cfg.version {
            // The listener must agree on a version we speak.
            return wrong_version(u64::from(version), self.cfg.version);
        }
        if node == self.cfg.node_id {
            return reject(RejectCode::SelfId);
        }
        if self.expected.as_ref().is_some_and(|e| *e != node) {
            return reject(RejectCode::WrongNode);
        }
        let Ok(key) = pake.finish(&peer_share) else {
            return reject(RejectCode::Malformed);
        };
        let key2 = match &share2 {
            Some(s2) => match Pake::start(&self.cfg.secret, &self.seed).0.finish(s2) {
                Ok(k) => Some(k),
                Err(_) => return reject(RejectCode::Malformed),
            },
            None => None,
        };
        let transcript = Transcript {
            dialer: self.cfg.node_id.clone(),
            listener: node.clone(),
            dialer_nonce: self.nonce,
            listener_nonce: nonce,
            dialer_version: self.cfg.version,
            version,
            dialer_features: self.cfg.features,
            listener_features: features,
            dialer_share: self.share,
            listener_share: peer_share,
            dialer_key: self.cfg.identity.public(),
            listener_key: peer_key,
            listener_share2: share2,
        };
        let mac = compute_mac(&key, Role::Dialer, &transcript);
        let mac2 = key2
            .as_ref()
            .map(|k| compute_mac(k, Role::Dialer, &transcript));
        let sig = self
            .cfg
            .identity
            .sign(&transcript.key_proof_message(Role::Dialer));
        self.state = DialerState::AwaitWelcome {
            peer: node,
            keys: (key, key2),
            transcript: Box::new(transcript),
        };
        Step::Send(HandshakeFrame::Auth { mac, sig, mac2 })
    }

    /// The listener's proof of the key: verify it and admit the peer.
    fn on_welcome(
        &self,
        peer: NodeId,
        key: &SessionKey,
        transcript: &Transcript,
        proof: (&Bytes32, &Sig64),
        admit: impl Admit,
    ) -> Step {
        if let Err(code) = check_proof(key, Role::Listener, transcript, proof, &peer, admit) {
            return reject(code);
        }
        // The negotiated set from the authenticated transcript, not the welcome's copy.
        Step::Done {
            send: None,
            peer,
            peer_key: transcript.listener_key,
            features: transcript.listener_features & self.cfg.features,
        }
    }
}

/// What a hello and a challenge both carry: the sender's version, features, id, nonce,
/// SPAKE2 share and node key.
struct Greeting {
    version: u16,
    features: u64,
    node: NodeId,
    nonce: Bytes32,
    share: PakeShare,
    key: PublicKey,
}

/// The peer's key confirmation (its MAC over the transcript, made as `role`: it knows the
/// secret), its node key's signature over the same transcript (it holds the key it announced),
/// then admission (the key is the one its node id is trusted with): `Err` is the rejection to
/// answer with.
fn check_proof(
    key: &SessionKey,
    role: Role,
    transcript: &Transcript,
    (mac, sig): (&Bytes32, &Sig64),
    peer: &str,
    admit: impl Admit,
) -> Result<(), RejectCode> {
    if !verify_mac(key, role, transcript, mac) {
        return Err(RejectCode::BadMac);
    }
    let peer_key = match role {
        Role::Dialer => &transcript.dialer_key,
        Role::Listener => &transcript.listener_key,
    };
    if !verify(peer_key, &transcript.key_proof_message(role), sig) {
        return Err(RejectCode::BadSignature);
    }
    admit(peer, peer_key)
}

enum AcceptorState {
    AwaitHello {
        pake: Pake,
        /// For the previous secret, during a rotation (boxed: rarely there, and large).
        pake2: Option<Box<Pake>>,
    },
    AwaitAuth {
        peer: NodeId,
        keys: (SessionKey, Option<SessionKey>),
        transcript: Box<Transcript>,
    },
    Finished,
}

/// The listening side.
pub struct Acceptor {
    cfg: HandshakeConfig,
    nonce: Bytes32,
    share: PakeShare,
    share2: Option<PakeShare>,
    deadline: u64,
    state: AcceptorState,
}

impl Acceptor {
    /// A fresh acceptor for one inbound WebSocket; `seed` must be 32 fresh random bytes, kept
    /// secret (the nonce and the SPAKE2 scalar are derived from it).
    pub fn new(cfg: HandshakeConfig, seed: [u8; 32], now: u64) -> Self {
        let (pake, share) = Pake::start(&cfg.secret, &seed);
        let second = cfg
            .previous
            .as_ref()
            .map(|p| Pake::start(p, &previous_seed(&seed)));
        let (pake2, share2) = match second {
            Some((p, s)) => (Some(Box::new(p)), Some(s)),
            None => (None, None),
        };
        Acceptor {
            cfg,
            nonce: nonce_from_seed(&seed),
            share,
            share2,
            deadline: now.saturating_add(HANDSHAKE_TIMEOUT_MS),
            state: AcceptorState::AwaitHello { pake, pake2 },
        }
    }

    /// When the handshake times out.
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// `Some(timeout rejection)` once `now` passed the deadline of an unfinished handshake.
    pub fn on_tick(&mut self, now: u64) -> Option<Step> {
        if matches!(self.state, AcceptorState::Finished) || now < self.deadline {
            return None;
        }
        self.state = AcceptorState::Finished;
        Some(reject(RejectCode::Timeout))
    }

    /// Feed one TEXT frame from the dialer. `nonces` is the listener-wide replay cache;
    /// `admit` is `Mesh::admit`, asked only after the dialer proved the secret.
    pub fn on_frame(&mut self, text: &str, nonces: &mut NonceCache, admit: impl Admit) -> Step {
        let state = std::mem::replace(&mut self.state, AcceptorState::Finished);
        let first = matches!(state, AcceptorState::AwaitHello { .. });
        let frame = match decode(text, first, self.cfg.version) {
            Ok(f) => f,
            // Never the bare reason on the first frame: that is how a version 1 listener
            // answers a version 2 hello, and dialers read it so (`Dialer::on_frame`).
            Err((RejectCode::Malformed, reason)) if first => {
                let v = self.cfg.version;
                let why = format!("{reason}: the first frame is not a wire version {v} hello");
                return reject_because(RejectCode::Malformed, why);
            }
            Err((code, reason)) => return reject_because(code, reason),
        };
        if let HandshakeFrame::Reject { code, reason } = frame {
            return peer_rejected(code, reason);
        }
        match (state, frame) {
            (
                AcceptorState::AwaitHello { pake, pake2 },
                HandshakeFrame::Hello {
                    version,
                    features,
                    node,
                    nonce,
                    pake: share,
                    key,
                },
            ) => self.on_hello(
                (pake, pake2),
                Greeting {
                    version,
                    features,
                    node,
                    nonce,
                    share,
                    key,
                },
                nonces,
            ),
            (
                AcceptorState::AwaitAuth {
                    peer,
                    keys,
                    transcript,
                },
                HandshakeFrame::Auth { mac, sig, mac2 },
            ) => {
                // The dialer's secret matched the current one, or (during a rotation) the
                // previous one: confirm with the key whose MAC verified.
                let (key, mac) = match (&keys, mac2) {
                    ((k1, Some(k2)), Some(m2))
                        if !verify_mac(k1, Role::Dialer, &transcript, &mac)
                            && verify_mac(k2, Role::Dialer, &transcript, &m2) =>
                    {
                        (k2, m2)
                    }
                    ((k1, _), _) => (k1, mac),
                };
                self.on_auth(peer, key, &transcript, (&mac, &sig), admit)
            }
            _ if first => reject_because(
                RejectCode::Malformed,
                "the first frame must be a hello".to_string(),
            ),
            _ => reject(RejectCode::Malformed),
        }
    }

    /// The dialer's hello: check it, run our half of SPAKE2, answer with the challenge.
    fn on_hello(
        &mut self,
        (pake, pake2): (Pake, Option<Box<Pake>>),
        hello: Greeting,
        nonces: &mut NonceCache,
    ) -> Step {
        let Greeting {
            version,
            features,
            node,
            nonce,
            share: peer_share,
            key: peer_key,
        } = hello;
        if !valid_node_id(&node) {
            let why = "hello: the node id breaks the id rule".to_string();
            return reject_because(RejectCode::Malformed, why);
        }
        if let Some(step) = version_refusal(version, features, self.cfg.version) {
            return step;
        }
        if node == self.cfg.node_id {
            return reject(RejectCode::SelfId);
        }
        if !nonces.insert(&nonce) {
            return reject(RejectCode::Replay);
        }
        let bad_share = || {
            let why = "hello: the pake share is not a valid SPAKE2 share".to_string();
            reject_because(RejectCode::Malformed, why)
        };
        let Ok(key) = pake.finish(&peer_share) else {
            return bad_share();
        };
        let key2 = match pake2.map(|p| p.finish(&peer_share)) {
            Some(Ok(k)) => Some(k),
            Some(Err(_)) => return bad_share(),
            None => None,
        };
        let agreed = version.min(self.cfg.version);
        let transcript = Transcript {
            dialer: node.clone(),
            listener: self.cfg.node_id.clone(),
            dialer_nonce: nonce,
            listener_nonce: self.nonce,
            dialer_version: version,
            version: agreed,
            dialer_features: features,
            listener_features: self.cfg.features,
            dialer_share: peer_share,
            listener_share: self.share,
            dialer_key: peer_key,
            listener_key: self.cfg.identity.public(),
            listener_share2: self.share2,
        };
        // Only our share: nothing here depends on the secret in a way the dialer could
        // check a guess against without running the exchange with that guess.
        let challenge = HandshakeFrame::Challenge {
            version: agreed,
            features: self.cfg.features,
            node: self.cfg.node_id.clone(),
            nonce: self.nonce,
            pake: self.share,
            key: self.cfg.identity.public(),
            pake2: self.share2,
        };
        self.state = AcceptorState::AwaitAuth {
            peer: node,
            keys: (key, key2),
            transcript: Box::new(transcript),
        };
        Step::Send(challenge)
    }

    /// The dialer's proof of the key: verify it, admit the peer, send our own proof.
    fn on_auth(
        &self,
        peer: NodeId,
        key: &SessionKey,
        transcript: &Transcript,
        proof: (&Bytes32, &Sig64),
        admit: impl Admit,
    ) -> Step {
        if let Err(code) = check_proof(key, Role::Dialer, transcript, proof, &peer, admit) {
            return reject(code);
        }
        let features = transcript.dialer_features & self.cfg.features;
        let mac = compute_mac(key, Role::Listener, transcript);
        let sig = self
            .cfg
            .identity
            .sign(&transcript.key_proof_message(Role::Listener));
        Step::Done {
            send: Some(HandshakeFrame::Welcome { features, mac, sig }),
            peer,
            peer_key: transcript.dialer_key,
            features,
        }
    }
}
