//! The handshake state machines: [`Dialer`] (the side that opened the WebSocket) and
//! [`Acceptor`] (the listening side). Each consumes TEXT frames and returns a [`Step`]: a frame
//! to send, success, or a rejection with its close code. No I/O, no clock reads, no RNG: the
//! caller passes `now` and a fresh 32-byte nonce.
//!
//! Flow (`docs/PROTOCOL.md` §3):
//! ```text
//! Dialer::new            -> hello
//! Acceptor::on_frame(hello)     -> challenge (listener MAC)   | reject
//! Dialer::on_frame(challenge)   -> auth (dialer MAC)          | reject
//! Acceptor::on_frame(auth)      -> Done + welcome             | reject
//! Dialer::on_frame(welcome)     -> Done                       | reject
//! ```
//! "Duplicate node already connected" is decided by the mesh, passed in as `admit`.

use super::auth::{compute_mac, verify_mac, NonceCache, Role, Transcript};
use super::frame::{valid_node_id, NodeId};
use super::handshake_frame::{HandshakeFrame, RejectCode};
use super::hex::Bytes32;
use super::{FEATURES, FEATURES_REQUIRED, MAX_VERSION, MIN_VERSION, PROTOCOL_VERSION};

/// Time allowed from the WebSocket upgrade to `welcome`, in ms.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// What a side needs to authenticate.
#[derive(Clone)]
pub struct HandshakeConfig {
    /// Our node id.
    pub node_id: NodeId,
    /// The mesh-wide shared secret (never sent).
    pub secret: Vec<u8>,
    /// Version we speak (normally [`PROTOCOL_VERSION`]).
    pub version: u16,
    /// Feature bits we offer (normally [`FEATURES`]).
    pub features: u64,
}

impl std::fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("node_id", &self.node_id)
            .field("secret", &"<redacted>")
            .field("version", &self.version)
            .field("features", &self.features)
            .finish()
    }
}

impl HandshakeConfig {
    /// Config with this build's version and features.
    pub fn new(node_id: impl Into<NodeId>, secret: impl Into<Vec<u8>>) -> Self {
        HandshakeConfig {
            node_id: node_id.into(),
            secret: secret.into(),
            version: PROTOCOL_VERSION,
            features: FEATURES,
        }
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
    Step::Rejected {
        send: Some(HandshakeFrame::Reject {
            code,
            reason: code.reason().to_string(),
        }),
        code,
        reason: code.reason().to_string(),
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

fn version_ok(v: u16, features: u64) -> bool {
    (MIN_VERSION..=MAX_VERSION).contains(&v) && features & FEATURES_REQUIRED == FEATURES_REQUIRED
}

enum DialerState {
    AwaitChallenge,
    AwaitWelcome { peer: NodeId },
    Finished,
}

/// The dialing side.
pub struct Dialer {
    cfg: HandshakeConfig,
    expected: Option<NodeId>,
    nonce: Bytes32,
    deadline: u64,
    state: DialerState,
}

impl Dialer {
    /// Start a handshake; returns the machine and the `hello` to send. `expected_peer` is the
    /// node id configured for this URL, if any.
    pub fn new(
        cfg: HandshakeConfig,
        expected_peer: Option<NodeId>,
        nonce: [u8; 32],
        now: u64,
    ) -> (Self, HandshakeFrame) {
        let hello = HandshakeFrame::Hello {
            version: cfg.version,
            features: cfg.features,
            node: cfg.node_id.clone(),
            nonce: Bytes32(nonce),
        };
        let d = Dialer {
            cfg,
            expected: expected_peer,
            nonce: Bytes32(nonce),
            deadline: now.saturating_add(HANDSHAKE_TIMEOUT_MS),
            state: DialerState::AwaitChallenge,
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
    pub fn on_frame(
        &mut self,
        text: &str,
        admit: impl FnOnce(&str) -> Result<(), RejectCode>,
    ) -> Step {
        let state = std::mem::replace(&mut self.state, DialerState::Finished);
        let frame = match HandshakeFrame::decode(text) {
            Ok(f) => f,
            Err(code) => return reject(code),
        };
        if let HandshakeFrame::Reject { code, reason } = frame {
            return peer_rejected(code, reason);
        }
        match (state, frame) {
            (
                DialerState::AwaitChallenge,
                HandshakeFrame::Challenge {
                    version,
                    features,
                    node,
                    nonce,
                    mac,
                },
            ) => {
                if !valid_node_id(&node) {
                    return reject(RejectCode::Malformed);
                }
                if !version_ok(version, features) || version > self.cfg.version {
                    return reject(RejectCode::IncompatibleVersion);
                }
                if node == self.cfg.node_id {
                    return reject(RejectCode::SelfId);
                }
                if self.expected.as_ref().is_some_and(|e| *e != node) {
                    return reject(RejectCode::WrongNode);
                }
                let t = Transcript {
                    dialer: &self.cfg.node_id,
                    listener: &node,
                    dialer_nonce: &self.nonce,
                    listener_nonce: &nonce,
                    version,
                    dialer_features: self.cfg.features,
                    listener_features: features,
                };
                if !verify_mac(&self.cfg.secret, Role::Listener, &t, &mac) {
                    return reject(RejectCode::BadMac);
                }
                let mac = compute_mac(&self.cfg.secret, Role::Dialer, &t);
                self.state = DialerState::AwaitWelcome { peer: node };
                Step::Send(HandshakeFrame::Auth { mac })
            }
            (DialerState::AwaitWelcome { peer }, HandshakeFrame::Welcome { features }) => {
                if let Err(code) = admit(&peer) {
                    return reject(code);
                }
                Step::Done {
                    send: None,
                    peer,
                    features: features & self.cfg.features,
                }
            }
            _ => reject(RejectCode::Malformed),
        }
    }
}

enum AcceptorState {
    AwaitHello,
    AwaitAuth {
        peer: NodeId,
        peer_nonce: Bytes32,
        peer_features: u64,
        version: u16,
    },
    Finished,
}

/// The listening side.
pub struct Acceptor {
    cfg: HandshakeConfig,
    nonce: Bytes32,
    deadline: u64,
    state: AcceptorState,
}

impl Acceptor {
    /// A fresh acceptor for one inbound WebSocket; `nonce` must be fresh random bytes.
    pub fn new(cfg: HandshakeConfig, nonce: [u8; 32], now: u64) -> Self {
        Acceptor {
            cfg,
            nonce: Bytes32(nonce),
            deadline: now.saturating_add(HANDSHAKE_TIMEOUT_MS),
            state: AcceptorState::AwaitHello,
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
    pub fn on_frame(
        &mut self,
        text: &str,
        nonces: &mut NonceCache,
        admit: impl FnOnce(&str) -> Result<(), RejectCode>,
    ) -> Step {
        let state = std::mem::replace(&mut self.state, AcceptorState::Finished);
        let frame = match HandshakeFrame::decode(text) {
            Ok(f) => f,
            Err(code) => return reject(code),
        };
        if let HandshakeFrame::Reject { code, reason } = frame {
            return peer_rejected(code, reason);
        }
        match (state, frame) {
            (
                AcceptorState::AwaitHello,
                HandshakeFrame::Hello {
                    version,
                    features,
                    node,
                    nonce,
                },
            ) => {
                if !valid_node_id(&node) {
                    return reject(RejectCode::Malformed);
                }
                if !version_ok(version, features) {
                    return reject(RejectCode::IncompatibleVersion);
                }
                if node == self.cfg.node_id {
                    return reject(RejectCode::SelfId);
                }
                if !nonces.insert(&nonce) {
                    return reject(RejectCode::Replay);
                }
                let version = version.min(self.cfg.version);
                let t = Transcript {
                    dialer: &node,
                    listener: &self.cfg.node_id,
                    dialer_nonce: &nonce,
                    listener_nonce: &self.nonce,
                    version,
                    dialer_features: features,
                    listener_features: self.cfg.features,
                };
                let mac = compute_mac(&self.cfg.secret, Role::Listener, &t);
                let challenge = HandshakeFrame::Challenge {
                    version,
                    features: self.cfg.features,
                    node: self.cfg.node_id.clone(),
                    nonce: self.nonce,
                    mac,
                };
                self.state = AcceptorState::AwaitAuth {
                    peer: node,
                    peer_nonce: nonce,
                    peer_features: features,
                    version,
                };
                Step::Send(challenge)
            }
            (
                AcceptorState::AwaitAuth {
                    peer,
                    peer_nonce,
                    peer_features,
                    version,
                },
                HandshakeFrame::Auth { mac },
            ) => {
                let t = Transcript {
                    dialer: &peer,
                    listener: &self.cfg.node_id,
                    dialer_nonce: &peer_nonce,
                    listener_nonce: &self.nonce,
                    version,
                    dialer_features: peer_features,
                    listener_features: self.cfg.features,
                };
                if !verify_mac(&self.cfg.secret, Role::Dialer, &t, &mac) {
                    return reject(RejectCode::BadMac);
                }
                if let Err(code) = admit(&peer) {
                    return reject(code);
                }
                let features = peer_features & self.cfg.features;
                Step::Done {
                    send: Some(HandshakeFrame::Welcome { features }),
                    peer,
                    features,
                }
            }
            _ => reject(RejectCode::Malformed),
        }
    }
}
