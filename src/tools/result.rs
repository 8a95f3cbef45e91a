//! Sending and reading a tool's final result over a call: the wire forms are
//! [`crate::proto::tool_result`]; this module streams the pieces under the caller's credit and
//! moves large encodes, parses and UTF-8 checks to the blocking pool (escaping or unescaping a
//! MiB of text takes about a millisecond, which would hold up every link and call on the node's
//! single worker meanwhile).

use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};
use crate::proto::tool_result::{
    encode_json_err, encode_json_ok, encode_raw_head, parse_json, parse_raw_head, text_utf8, Piece,
    Pieces, WireResult,
};
use crate::rpc::ChunkSink;

/// JSON results at least this large are encoded and parsed on the blocking pool: escaping or
/// unescaping a MiB of text takes about a millisecond, which would hold up every link and call
/// on the node's single worker meanwhile.
const OFFLOAD_RESULT_BYTES: usize = 64 * 1024;
/// Raw texts are only checked for UTF-8 (fast): on the blocking pool from this size.
const OFFLOAD_UTF8_BYTES: usize = 4 * 1024 * 1024;

fn internal(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Internal, format!("tool result: {e}"))
}

/// Send a tool's successful result: raw when the caller asked for it, JSON otherwise. Returns
/// the `end` payload (the last piece).
pub async fn send_ok(
    sink: &mut ChunkSink,
    text: String,
    details: Value,
    raw: bool,
) -> Result<Vec<u8>> {
    if raw {
        let (fixed, head) = encode_raw_head(text.len(), &details)?;
        return send_pieces(sink, &[&fixed, &head, text.as_bytes()]).await;
    }
    let out = if text.len() >= OFFLOAD_RESULT_BYTES {
        tokio::task::spawn_blocking(move || encode_json_ok(&text, &details))
            .await
            .map_err(internal)??
    } else {
        encode_json_ok(&text, &details)?
    };
    send_pieces(sink, &[&out]).await
}

/// Send a refusal or failure (always JSON, always small enough to be one payload).
pub async fn send_err(sink: &mut ChunkSink, code: &str, message: &str) -> Result<Vec<u8>> {
    send_pieces(sink, &[&encode_json_err(code, message)]).await
}

/// Cut the concatenation of `parts` into result-part chunks (sent under the caller's credit)
/// and return the last piece, the `end` payload. A payload of at most one chunk is returned
/// whole. Each piece is copied once, straight from `parts`, when its turn comes.
pub async fn send_pieces(sink: &mut ChunkSink, parts: &[&[u8]]) -> Result<Vec<u8>> {
    let mut pieces = Pieces::new(parts);
    loop {
        match pieces.next_piece() {
            Piece::Chunk(c) => sink.send(c).await?,
            Piece::End(e) => return Ok(e),
        }
    }
}

/// Parse a JSON final payload (on the blocking pool when large).
pub async fn decode_json(bytes: Vec<u8>) -> std::result::Result<WireResult, String> {
    let big = bytes.len() >= OFFLOAD_RESULT_BYTES;
    offload_if(move || parse_json(&bytes), big).await
}

/// A raw result's details and its text as a string (the prefix included); an offset in an
/// error counts from the start of the text as sent, not of the prefix.
pub async fn decode_raw(
    head: Vec<u8>,
    text: Vec<u8>,
    prefix_len: usize,
) -> std::result::Result<(Value, String), String> {
    let details = parse_raw_head(&head)?;
    let big = text.len() >= OFFLOAD_UTF8_BYTES;
    let text = offload_if(move || text_utf8(text, prefix_len), big).await?;
    Ok((details, text))
}

async fn offload_if<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, String> + Send + 'static,
    big: bool,
) -> std::result::Result<T, String> {
    if big {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string())?
    } else {
        f()
    }
}
