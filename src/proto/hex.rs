//! Fixed-size byte strings that travel as lowercase hex in JSON: frame ids, call ids (16 bytes),
//! nonces and MACs (32 bytes), SPAKE2 shares (33 bytes). Parsing rejects wrong lengths and
//! non-hex characters.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    // Hex digits are ASCII.
    String::from_utf8(s).unwrap_or_default()
}

/// Append the lowercase hex of `bytes` to `out` (the frame header writer's form of [`encode`]).
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 0xf) as usize]);
    }
}

/// Value of each byte as a hex digit (either case); 0xFF = not a hex digit. A table because every
/// frame header carries one or two ids and this runs per frame on every hop.
const NIBBLE: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match c as u8 {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => 0xFF,
        };
        c += 1;
    }
    t
};

pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0xF);
    }
    // Any invalid digit set the high bits (0xFF); valid digits never do.
    (bad & 0xF0 == 0).then_some(out)
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
hex_id!(
    /// 64 bytes: an Ed25519 signature (records, leaves, the handshake's key proof).
    Sig64,
    64
);
hex_id!(
    /// 33 bytes: one side's SPAKE2 message in the handshake, the side byte `0x53` (`'S'`,
    /// symmetric mode) followed by a compressed Edwards25519 point.
    PakeShare,
    33
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_parse_either_case_and_refuse_any_other_byte_anywhere() {
        let id = FrameId::from_hex("00ff10AbcDEf9a8b7c6d5e4f3a2b1c0d").expect("valid");
        assert_eq!(id.encode(), "00ff10abcdef9a8b7c6d5e4f3a2b1c0d");
        assert_eq!(FrameId::from_hex(&id.encode()), Some(id));
        for pos in 0..32 {
            for bad in (0u8..=255).filter(|b| !b.is_ascii_hexdigit()) {
                let mut s = id.encode().into_bytes();
                s[pos] = bad;
                if let Ok(s) = std::str::from_utf8(&s) {
                    assert_eq!(FrameId::from_hex(s), None, "{s:?}");
                }
            }
        }
        assert_eq!(FrameId::from_hex("00ff"), None);
        assert_eq!(FrameId::from_hex(&"0".repeat(34)), None);
    }
}
