//! The handshake targets' fixed parties and the honest exchange they are measured against.
//!
//! The fuzzer plays the other side of one of our state machines. It does not know the mesh
//! secret or the other party's node key, but it may replay what an honest party (holding a
//! secret the flags choose: the right one, a wrong one, or the previous one of a rotation)
//! would send at each step, send its own text instead, or let time pass. The machine under test
//! may then only reach "authenticated" when every frame it was fed says the same as the honest
//! party's, that party holds a secret the machine accepts, and admission allowed the peer; and
//! it must reach it when the whole exchange was honest and allowed.
//!
//! The honest exchange is a pure function of the flags (fixed seeds, fixed keys), computed once
//! per flags byte and cached: the crypto of a full exchange would otherwise cost every run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use clawmatrix::identity::key::NodeKey;
use clawmatrix::proto::{
    Acceptor, Bytes32, Dialer, HandshakeConfig, HandshakeFrame, NonceCache, Step,
};

pub const SECRET: &str = "fuzz mesh secret: correct horse";
pub const OTHER: &str = "fuzz mesh secret: wrong battery";
pub const PREVIOUS: &str = "fuzz mesh secret: the older one";
pub const LISTENER: &str = "listener-01";
pub const DIALER: &str = "dialer-01";
pub const ELSEWHERE: &str = "elsewhere-09";
/// The clock at the start of every exchange (ms).
pub const NOW: u64 = 1_000;

pub fn listener_key() -> Arc<NodeKey> {
    static K: OnceLock<Arc<NodeKey>> = OnceLock::new();
    K.get_or_init(|| Arc::new(NodeKey::from_seed(&[0x11; 32])))
        .clone()
}

pub fn dialer_key() -> Arc<NodeKey> {
    static K: OnceLock<Arc<NodeKey>> = OnceLock::new();
    K.get_or_init(|| Arc::new(NodeKey::from_seed(&[0x22; 32])))
        .clone()
}

fn cfg(node: &str, secret: &str, previous: Option<&str>, key: Arc<NodeKey>) -> HandshakeConfig {
    let mut c = HandshakeConfig::new(node, secret.as_bytes().to_vec(), key);
    c.previous = previous.map(|p| p.as_bytes().to_vec());
    c
}

/// Seeds of the two parties: four variants, chosen by the flags' top bits.
pub fn seeds(flags: u8) -> ([u8; 32], [u8; 32]) {
    let v = flags >> 6;
    ([0x30 | v; 32], [0x40 | v; 32])
}

/// The listener target: our [`Acceptor`] holds [`SECRET`] (and [`PREVIOUS`] with bit 2); the
/// fuzzer's honest dialer holds, by bits 0-1, [`SECRET`], [`OTHER`], [`PREVIOUS`], [`SECRET`];
/// bit 3: admission refuses; bit 4: the dialer claims the listener's own id; bit 5: the
/// dialer expects another listener (so it gives up after the challenge).
pub struct ListenerCase {
    pub flags: u8,
}

impl ListenerCase {
    pub fn dialer_secret(&self) -> &'static str {
        [SECRET, OTHER, PREVIOUS, SECRET][usize::from(self.flags & 3)]
    }
    pub fn has_previous(&self) -> bool {
        self.flags & 4 != 0
    }
    pub fn admit_ok(&self) -> bool {
        self.flags & 8 == 0
    }
    pub fn dialer_id(&self) -> &'static str {
        if self.flags & 16 != 0 {
            LISTENER
        } else {
            DIALER
        }
    }
    /// The listener accepts the dialer's secret.
    pub fn accepts(&self) -> bool {
        let s = self.dialer_secret();
        s == SECRET || (self.has_previous() && s == PREVIOUS)
    }
    pub fn ours(&self) -> Acceptor {
        let prev = self.has_previous().then_some(PREVIOUS);
        Acceptor::new(
            cfg(LISTENER, SECRET, prev, listener_key()),
            seeds(self.flags).0,
            NOW,
        )
    }
    fn honest_dialer(&self) -> (Dialer, HandshakeFrame) {
        let expected = (self.flags & 32 != 0).then(|| ELSEWHERE.to_string());
        let c = cfg(self.dialer_id(), self.dialer_secret(), None, dialer_key());
        Dialer::new(c, expected, seeds(self.flags).1, NOW)
    }

    /// What the honest dialer sends: its hello, then its auth (if it accepted the challenge).
    pub fn honest(&self) -> Arc<Vec<HandshakeFrame>> {
        cached(0, self.flags, || {
            let (mut d, hello) = self.honest_dialer();
            let mut frames = vec![hello.clone()];
            let mut acc = self.ours();
            let mut nonces = NonceCache::new(4);
            if let Step::Send(challenge) = acc.on_frame(&hello.encode(), &mut nonces, |_, _| Ok(()))
            {
                if let Step::Send(auth) = d.on_frame(&challenge.encode(), |_, _| Ok(())) {
                    frames.push(auth);
                }
            }
            frames
        })
    }
}

/// The dialer target: our [`Dialer`] holds [`SECRET`]; the fuzzer's honest listener holds, by
/// bits 0-1, [`SECRET`], [`OTHER`], [`OTHER`] with [`SECRET`] as its previous one, [`SECRET`]
/// with [`PREVIOUS`]; bit 2: we expect the listener's id; bit 3: admission refuses; bit 4: we
/// expect another id; bit 5: the listener has our id.
pub struct DialerCase {
    pub flags: u8,
}

impl DialerCase {
    fn listener_secrets(&self) -> (&'static str, Option<&'static str>) {
        match self.flags & 3 {
            0 => (SECRET, None),
            1 => (OTHER, None),
            2 => (OTHER, Some(SECRET)),
            _ => (SECRET, Some(PREVIOUS)),
        }
    }
    pub fn admit_ok(&self) -> bool {
        self.flags & 8 == 0
    }
    pub fn expected(&self) -> Option<String> {
        if self.flags & 16 != 0 {
            Some(ELSEWHERE.into())
        } else if self.flags & 4 != 0 {
            Some(self.listener_id().into())
        } else {
            None
        }
    }
    pub fn listener_id(&self) -> &'static str {
        if self.flags & 32 != 0 {
            DIALER
        } else {
            LISTENER
        }
    }
    /// The listener holds our secret, is who we expect, and is not us.
    pub fn accepts(&self) -> bool {
        let (s, p) = self.listener_secrets();
        (s == SECRET || p == Some(SECRET))
            && self.expected().is_none_or(|e| e == self.listener_id())
            && self.listener_id() != DIALER
    }
    /// Our dialer and the hello it sends.
    pub fn ours(&self) -> (Dialer, HandshakeFrame) {
        let c = cfg(DIALER, SECRET, None, dialer_key());
        Dialer::new(c, self.expected(), seeds(self.flags).1, NOW)
    }
    fn honest_listener(&self) -> Acceptor {
        let (s, p) = self.listener_secrets();
        let c = cfg(self.listener_id(), s, p, listener_key());
        Acceptor::new(c, seeds(self.flags).0, NOW)
    }

    /// What the honest listener sends: its challenge, then its welcome (if it accepted our
    /// auth).
    pub fn honest(&self) -> Arc<Vec<HandshakeFrame>> {
        cached(1, self.flags, || {
            let (mut d, hello) = self.ours();
            let mut acc = self.honest_listener();
            let mut nonces = NonceCache::new(4);
            let mut frames = Vec::new();
            if let Step::Send(challenge) = acc.on_frame(&hello.encode(), &mut nonces, |_, _| Ok(()))
            {
                frames.push(challenge.clone());
                if let Step::Send(auth) = d.on_frame(&challenge.encode(), |_, _| Ok(())) {
                    if let Step::Done {
                        send: Some(welcome),
                        ..
                    } = acc.on_frame(&auth.encode(), &mut nonces, |_, _| Ok(()))
                    {
                        frames.push(welcome);
                    }
                }
            }
            frames
        })
    }
}

type Cache = Mutex<HashMap<(u8, u8), Arc<Vec<HandshakeFrame>>>>;

fn cached(
    side: u8,
    flags: u8,
    make: impl FnOnce() -> Vec<HandshakeFrame>,
) -> Arc<Vec<HandshakeFrame>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(f) = cache.lock().expect("cache lock").get(&(side, flags)) {
        return f.clone();
    }
    let f = Arc::new(make());
    cache
        .lock()
        .expect("cache lock")
        .insert((side, flags), f.clone());
    f
}

/// What of a frame the machine under test relies on, for comparing a fed frame with the honest
/// one: a `welcome`'s `features` copy is ignored by the dialer (it takes the negotiated set from
/// the authenticated transcript), and of an `auth`'s two MACs the listener uses only the one for
/// the secret that matched (`mac` for the current secret, `mac2` for the previous one).
pub fn relied_on(frame: HandshakeFrame, dialer_used_previous: bool) -> HandshakeFrame {
    match frame {
        HandshakeFrame::Welcome { mac, sig, .. } => HandshakeFrame::Welcome {
            features: 0,
            mac,
            sig,
        },
        HandshakeFrame::Auth { mac, sig, mac2 } => {
            let used = if dialer_used_previous {
                mac2
            } else {
                Some(mac)
            };
            HandshakeFrame::Auth {
                mac: used.unwrap_or(Bytes32([0; 32])),
                sig,
                mac2: None,
            }
        }
        other => other,
    }
}

/// One input's script: per step, `0` = the honest frame of this step, `1` = the honest frame
/// of another step (`[1][index]`), `2` = the fuzzer's own text (`[2][u16 len][bytes]`), `3` =
/// time passes (`[3][u16 seconds]`).
pub enum Op {
    Honest,
    Replay(usize),
    Text(String),
    Tick(u64),
}

pub fn next_op(input: &mut crate::Input<'_>) -> Option<Op> {
    if input.is_empty() {
        return None;
    }
    Some(match input.u8() % 4 {
        0 => Op::Honest,
        1 => Op::Replay(usize::from(input.u8())),
        2 => Op::Text(String::from_utf8_lossy(input.bytes()).into_owned()),
        _ => Op::Tick(NOW + u64::from(input.u16()) * 1000),
    })
}

/// Appends an op (for the seed generator).
pub fn push_op(out: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Honest => out.push(0),
        Op::Replay(i) => out.extend_from_slice(&[1, *i as u8]),
        Op::Text(t) => {
            out.push(2);
            crate::push_bytes(out, t.as_bytes());
        }
        Op::Tick(at) => {
            out.push(3);
            let s = u16::try_from(at.saturating_sub(NOW) / 1000).unwrap_or(u16::MAX);
            out.extend_from_slice(&s.to_be_bytes());
        }
    }
}
