//! Binary frame codec: `[payload bytes][UTF-8 JSON header][u32 BE header length]`.
//!
//! The header trails the payload so that the owned forms never move the payload:
//! [`decode_owned`] parses the trailer and truncates the message buffer to the payload, and
//! [`encode_owned`] appends a header to the payload buffer (a relay re-encodes the header in
//! the buffer it received, and a 1 MiB payload crosses every hop without being copied in user
//! space). [`encode`] / [`decode`] are the borrowing forms (they copy the payload).
//!
//! Decoding checks sizes before it parses anything, tells an unknown body `type` apart from a
//! malformed header, and never panics on any input.

use super::frame::{valid_node_id, Body, Frame, Header, BODY_TYPES, ENVELOPE_VERSION};

/// Largest binary frame, header and payload included: 16 MiB. Big enough for a long model
/// response or a file read in one frame; larger transfers are streamed as `chunk`s.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// Largest JSON header: 64 KiB. Gossip batches are split to stay below it.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Length of the header-length trailer.
pub const TRAILER_BYTES: usize = 4;

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

/// Encode a header and payload into one binary frame (copies the payload).
pub fn encode(header: &Header, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    check_frame(payload.len(), 0)?;
    let mut out = Vec::with_capacity(payload.len() + 256);
    out.extend_from_slice(payload);
    encode_owned(header, out)
}

fn check_frame(payload: usize, header: usize) -> Result<(), CodecError> {
    if header > MAX_HEADER_BYTES {
        return Err(CodecError::TooLarge {
            what: "header",
            size: header,
            limit: MAX_HEADER_BYTES,
        });
    }
    let total = payload + header + TRAILER_BYTES;
    if total > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            what: "frame",
            size: total,
            limit: MAX_FRAME_BYTES,
        });
    }
    Ok(())
}

/// Encode a header behind `payload`, in `payload`'s own buffer (no copy of the payload).
pub fn encode_owned(header: &Header, mut payload: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    let plen = payload.len();
    check_frame(plen, 0)?;
    if let Err(e) = super::header_json::write(&mut payload, header) {
        return Err(bad(e.to_string()));
    }
    let hlen = payload.len() - plen;
    check_frame(plen, hlen)?;
    // Cannot truncate: hlen <= MAX_HEADER_BYTES < u32::MAX.
    payload.extend_from_slice(&(hlen as u32).to_be_bytes());
    Ok(payload)
}

/// Where the header of a frame of `len` bytes starts and ends, from its trailer.
fn locate(bytes: &[u8]) -> Result<(usize, usize), CodecError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            what: "frame",
            size: bytes.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let Some(at) = bytes.len().checked_sub(TRAILER_BYTES) else {
        return Err(CodecError::Truncated {
            need: TRAILER_BYTES,
            have: bytes.len(),
        });
    };
    let t = &bytes[at..];
    let hlen = u32::from_be_bytes([t[0], t[1], t[2], t[3]]) as usize;
    if hlen > MAX_HEADER_BYTES {
        return Err(CodecError::TooLarge {
            what: "header",
            size: hlen,
            limit: MAX_HEADER_BYTES,
        });
    }
    let Some(start) = at.checked_sub(hlen) else {
        return Err(CodecError::Truncated {
            need: TRAILER_BYTES + hlen,
            have: bytes.len(),
        });
    };
    Ok((start, at))
}

/// Decode one binary frame (copies the payload).
pub fn decode(bytes: &[u8]) -> Result<Frame, CodecError> {
    let (start, end) = locate(bytes)?;
    let header = decode_header(&bytes[start..end])?;
    Ok(Frame {
        header,
        payload: bytes[..start].to_vec(),
    })
}

/// Decode one binary frame in its own buffer: the buffer becomes the payload (no copy).
pub fn decode_owned(mut bytes: Vec<u8>) -> Result<Frame, CodecError> {
    let (start, end) = locate(&bytes)?;
    let header = decode_header(&bytes[start..end])?;
    bytes.truncate(start);
    Ok(Frame {
        header,
        payload: bytes,
    })
}

/// Encode a body and payload the way a sealed frame carries them inside: `payload | body JSON |
/// u32 BE length` (the frame layout with the body in place of the header; the outer header
/// carries the rest). The payload is not copied.
pub fn encode_body_owned(body: &Body, mut payload: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    let plen = payload.len();
    check_frame(plen, 0)?;
    if let Err(e) = super::header_json::write_body_only(&mut payload, body) {
        return Err(bad(e.to_string()));
    }
    let blen = payload.len() - plen;
    check_frame(plen, blen)?;
    payload.extend_from_slice(&(blen as u32).to_be_bytes());
    Ok(payload)
}

/// The inverse of [`encode_body_owned`]: the body and the payload (in the same buffer).
pub fn decode_body_owned(mut bytes: Vec<u8>) -> Result<(Body, Vec<u8>), CodecError> {
    let (start, end) = locate(&bytes)?;
    let json = &bytes[start..end];
    let body: Body = match super::header_json::read_body_only(json) {
        Some(b) => b,
        None => serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?,
    };
    bytes.truncate(start);
    Ok((body, bytes))
}

/// Decode a JSON header on its own.
pub fn decode_header(json: &[u8]) -> Result<Header, CodecError> {
    // Fastest path: the canonical form every node writes, read without serde. Anything else
    // goes straight into the typed header through serde; only when that fails is the input
    // parsed again as a generic value, so an unknown `type` and a wrong `v` get their own codes.
    let header: Header = match super::header_json::read(json) {
        Some(h) => h,
        None => match serde_json::from_slice(json) {
            Ok(h) => h,
            Err(e) => return Err(classify(json, e)),
        },
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
