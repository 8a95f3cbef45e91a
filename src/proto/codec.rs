//! Binary frame codec: `[u32 BE header length][UTF-8 JSON header][payload bytes]`.
//!
//! Decoding checks sizes before it parses anything, tells an unknown body `type` apart from a
//! malformed header, and never panics on any input. Relays call [`encode`] with the payload
//! they received, so payload bytes are copied, never re-encoded.

use super::frame::{valid_node_id, Frame, Header, BODY_TYPES, ENVELOPE_VERSION};

/// Largest binary frame, header and payload included: 16 MiB. Big enough for a long model
/// response or a file read in one frame; larger transfers are streamed as `chunk`s.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Largest JSON header: 64 KiB. Gossip batches are split to stay below it.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Length of the header-length prefix.
pub const PREFIX_BYTES: usize = 4;

/// Why bytes are not a valid frame. Each has a stable [`code`](CodecError::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the prefix announces.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// The frame or its header exceeds a limit.
    #[error("frame too large: {what} is {size} bytes, limit {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// The header is not valid JSON of the envelope shape.
    #[error("bad header: {reason}")]
    BadHeader { reason: String },
    /// The body `type` is not one this build knows.
    #[error("unknown frame type {kind:?}")]
    UnknownType { kind: String },
    /// The envelope version `v` is not ours.
    #[error("wrong envelope version {got}")]
    WrongVersion { got: u64 },
}

impl CodecError {
    /// Stable string code (`truncated`, `too_large`, `bad_header`, `unknown_type`, `wrong_version`).
    pub fn code(&self) -> &'static str {
        match self {
            CodecError::Truncated { .. } => "truncated",
            CodecError::TooLarge { .. } => "too_large",
            CodecError::BadHeader { .. } => "bad_header",
            CodecError::UnknownType { .. } => "unknown_type",
            CodecError::WrongVersion { .. } => "wrong_version",
        }
    }
}

fn bad(reason: impl Into<String>) -> CodecError {
    CodecError::BadHeader {
        reason: reason.into(),
    }
}

/// Encode a header and payload into one binary frame.
pub fn encode(header: &Header, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    let json = serde_json::to_vec(header).map_err(|e| bad(e.to_string()))?;
    if json.len() > MAX_HEADER_BYTES {
        return Err(CodecError::TooLarge {
            what: "header",
            size: json.len(),
            limit: MAX_HEADER_BYTES,
        });
    }
    let total = PREFIX_BYTES + json.len() + payload.len();
    if total > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            what: "frame",
            size: total,
            limit: MAX_FRAME_BYTES,
        });
    }
    let mut out = Vec::with_capacity(total);
    // Cannot truncate: json.len() <= MAX_HEADER_BYTES < u32::MAX.
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encoded size of a header alone (used to split gossip batches).
pub fn header_len(header: &Header) -> usize {
    serde_json::to_vec(header)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

/// Decode one binary frame.
pub fn decode(bytes: &[u8]) -> Result<Frame, CodecError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            what: "frame",
            size: bytes.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let Some(prefix) = bytes.get(..PREFIX_BYTES) else {
        return Err(CodecError::Truncated {
            need: PREFIX_BYTES,
            have: bytes.len(),
        });
    };
    let hlen = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if hlen > MAX_HEADER_BYTES {
        return Err(CodecError::TooLarge {
            what: "header",
            size: hlen,
            limit: MAX_HEADER_BYTES,
        });
    }
    let Some(hbytes) = bytes.get(PREFIX_BYTES..PREFIX_BYTES + hlen) else {
        return Err(CodecError::Truncated {
            need: PREFIX_BYTES + hlen,
            have: bytes.len(),
        });
    };
    let header = decode_header(hbytes)?;
    Ok(Frame {
        header,
        payload: bytes[PREFIX_BYTES + hlen..].to_vec(),
    })
}

/// Decode a JSON header on its own.
pub fn decode_header(json: &[u8]) -> Result<Header, CodecError> {
    // Fast path: straight into the typed header. Only when that fails is the input parsed
    // again as a generic value, so an unknown `type` and a wrong `v` get their own codes.
    let header: Header = match serde_json::from_slice(json) {
        Ok(h) => h,
        Err(e) => return Err(classify(json, e)),
    };
    if header.v != ENVELOPE_VERSION {
        return Err(CodecError::WrongVersion {
            got: u64::from(header.v),
        });
    }
    if !valid_node_id(&header.src) {
        return Err(bad("invalid src node id"));
    }
    if let Some(dst) = &header.dst {
        if !valid_node_id(dst) {
            return Err(bad("invalid dst node id"));
        }
    }
    if header.body.is_link_local() != header.dst.is_none() {
        return Err(bad(
            "link-local body requires dst null, routed body requires dst",
        ));
    }
    Ok(header)
}

fn classify(json: &[u8], err: serde_json::Error) -> CodecError {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return bad(err.to_string());
    };
    let Some(obj) = value.as_object() else {
        return bad("header is not an object");
    };
    match obj.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(ENVELOPE_VERSION) => {}
        Some(v) => return CodecError::WrongVersion { got: v },
        None => return bad("missing or non-integer `v`"),
    }
    match obj
        .get("body")
        .and_then(|b| b.get("type"))
        .and_then(|t| t.as_str())
    {
        Some(kind) if !BODY_TYPES.contains(&kind) => CodecError::UnknownType {
            kind: kind.chars().take(64).collect(),
        },
        Some(_) => bad(err.to_string()),
        None => bad("missing body.type"),
    }
}
