//! Fixed-size byte strings that travel as lowercase hex in JSON: frame ids, call ids (16 bytes),
//! nonces and MACs (32 bytes). Parsing rejects wrong lengths and non-hex characters.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

macro_rules! hex_id {
    ($(#[$m:meta])* $name:ident, $n:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $n]);

        impl $name {
            /// Parse from exactly the right number of hex digits.
            pub fn from_hex(s: &str) -> Option<Self> {
                from_hex::<$n>(s).map($name)
            }
            /// Lowercase hex form (what goes on the wire).
            pub fn encode(&self) -> String {
                encode(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.encode())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.encode())
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.encode())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
                $name::from_hex(&s).ok_or_else(|| {
                    de::Error::custom(concat!("expected ", stringify!($n), " bytes as hex"))
                })
            }
        }
    };
}

hex_id!(
    /// 128-bit frame id: unique per sender, the relay dedup key.
    FrameId,
    16
);
hex_id!(
    /// 128-bit call id correlating `call` with `reply`/`chunk`/`end`/`cancel`/`unreachable`.
    CallId,
    16
);
hex_id!(
    /// 32 bytes: handshake nonces and HMAC-SHA256 tags.
    Bytes32,
    32
);
