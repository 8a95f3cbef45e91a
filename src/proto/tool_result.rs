//! The final payload of a `tool.call` on the wire (docs/PROTOCOL.md §8.3): its two forms, how a
//! large one is cut into result-part chunks, and how the caller puts it back together.
//!
//! - **JSON** (every peer): `{"ok":true,"text":…,"details":{…}}` or
//!   `{"ok":false,"code":…,"message":…}`.
//! - **Raw** (a caller that asked with `"rawResult": true`, for a tool that ran): the byte
//!   [`RAW_RESULT`], the text's length (u64 BE), the head's length (u32 BE), the head
//!   `{"ok":true,"details":{…}}` and the text's UTF-8 bytes as they are. A MiB of file text
//!   then costs two copies and a UTF-8 check instead of JSON escaping on the server and
//!   unescaping on the caller (a third of the CPU of a 1 MiB `cluster_read` in perf), and the
//!   caller assembles the text in one buffer of the announced size, ready to become the
//!   result string without another copy.
//!
//! Either form larger than one chunk travels as result parts: chunks of `0x00` + a piece of at
//! most `MAX_CHUNK_BYTES − 1` bytes, and the last piece as the `end` payload.

use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};
use crate::proto::MAX_CHUNK_BYTES;

/// First byte of a chunk that carries a piece of the result (progress chunks are JSON objects,
/// which never start with it).
pub const RESULT_PART: u8 = 0;
/// First byte of a raw final payload (a JSON one starts with `{`).
pub const RAW_RESULT: u8 = 1;
/// Marker, text length (u64 BE), head length (u32 BE).
pub const RAW_FIXED: usize = 1 + 8 + 4;
/// Largest result a caller assembles from pieces: one maximum frame, the limit of a result that
/// travelled as a single reply before results were streamed.
pub const MAX_RESULT_BYTES: usize = crate::proto::MAX_FRAME_BYTES;

/// The JSON form of a tool that ran.
#[derive(serde::Serialize)]
struct WireOk<'a> {
    ok: bool,
    text: &'a str,
    details: &'a Value,
}

/// The raw form's head.
#[derive(serde::Serialize)]
struct RawHeadOut<'a> {
    ok: bool,
    details: &'a Value,
}

#[derive(serde::Deserialize)]
struct RawHeadIn {
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    details: Value,
}

/// What the caller reads from a JSON final payload (success or refusal).
#[derive(serde::Deserialize)]
pub struct WireResult {
    #[serde(default)]
    pub ok: Option<bool>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub details: Value,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The JSON form of a tool that ran.
pub fn encode_json_ok(text: &str, details: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(&WireOk {
        ok: true,
        text,
        details,
    })
    .map_err(|e| Error::new(ErrorCode::Internal, format!("tool result: {e}")))
}

/// The JSON form of a refusal or failure (always small enough to be one payload).
pub fn encode_json_err(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"ok": false, "code": code, "message": message})
        .to_string()
        .into_bytes()
}

/// The raw form's fixed prefix and head for a text of `text_len` bytes; the text follows them.
pub fn encode_raw_head(text_len: usize, details: &Value) -> Result<([u8; RAW_FIXED], Vec<u8>)> {
    let head = serde_json::to_vec(&RawHeadOut { ok: true, details })
        .map_err(|e| Error::new(ErrorCode::Internal, format!("tool result: {e}")))?;
    let mut fixed = [0u8; RAW_FIXED];
    fixed[0] = RAW_RESULT;
    fixed[1..9].copy_from_slice(&(text_len as u64).to_be_bytes());
    fixed[9..].copy_from_slice(&(head.len() as u32).to_be_bytes());
    Ok((fixed, head))
}

/// Parse a JSON final payload.
pub fn parse_json(bytes: &[u8]) -> std::result::Result<WireResult, String> {
    serde_json::from_slice::<WireResult>(bytes).map_err(|e| e.to_string())
}

/// A raw result's head: its details (a raw result is always a success).
pub fn parse_raw_head(head: &[u8]) -> std::result::Result<Value, String> {
    let h: RawHeadIn = serde_json::from_slice(head).map_err(|e| format!("raw result head: {e}"))?;
    if h.ok != Some(true) {
        return Err("raw result head: ok must be true (refusals travel as JSON)".into());
    }
    Ok(h.details)
}

/// A raw result's text as a string (the prefix included); an offset in an error counts from
/// the start of the text as sent, not of the prefix.
pub fn text_utf8(text: Vec<u8>, prefix_len: usize) -> std::result::Result<String, String> {
    String::from_utf8(text).map_err(|e| {
        format!(
            "raw result text is not UTF-8 (at byte {})",
            e.utf8_error().valid_up_to().saturating_sub(prefix_len)
        )
    })
}

/// One piece of a final payload on the wire.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A result-part chunk: [`RESULT_PART`] and the piece.
    Chunk(Vec<u8>),
    /// The last piece: the `end` payload.
    End(Vec<u8>),
}

/// The pieces of the concatenation of some slices, in order (see `tools::result::send_pieces`).
pub struct Pieces<'a> {
    cut: Cutter<'a>,
    /// Result-part chunks still to come before the end.
    chunks_left: usize,
    last: usize,
}

impl<'a> Pieces<'a> {
    pub fn new(parts: &'a [&'a [u8]]) -> Self {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let piece = MAX_CHUNK_BYTES - 1;
        let chunks = if total <= MAX_CHUNK_BYTES {
            0
        } else {
            total.div_ceil(piece) - 1
        };
        Pieces {
            cut: Cutter::new(parts),
            chunks_left: chunks,
            last: total - chunks * piece,
        }
    }

    /// The next piece; after the `End`, further calls give empty ends.
    pub fn next_piece(&mut self) -> Piece {
        if self.chunks_left > 0 {
            self.chunks_left -= 1;
            return Piece::Chunk(self.cut.take(MAX_CHUNK_BYTES - 1, Some(RESULT_PART)));
        }
        Piece::End(self.cut.take(std::mem::take(&mut self.last), None))
    }
}

/// Reads consecutive bytes out of a list of slices.
struct Cutter<'a> {
    parts: &'a [&'a [u8]],
    part: usize,
    pos: usize,
}

impl<'a> Cutter<'a> {
    fn new(parts: &'a [&'a [u8]]) -> Self {
        Cutter {
            parts,
            part: 0,
            pos: 0,
        }
    }

    /// The next `n` bytes (fewer at the end), after `marker` if given.
    fn take(&mut self, n: usize, marker: Option<u8>) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + usize::from(marker.is_some()));
        out.extend(marker);
        let mut want = n;
        while want > 0 && self.part < self.parts.len() {
            let p = self.parts[self.part];
            let k = want.min(p.len() - self.pos);
            out.extend_from_slice(&p[self.pos..self.pos + k]);
            self.pos += k;
            want -= k;
            if self.pos == p.len() {
                self.part += 1;
                self.pos = 0;
            }
        }
        out
    }
}

/// Why a result could not be put together.
#[derive(Debug, PartialEq, Eq)]
pub enum AssemblyError {
    /// More than [`MAX_RESULT_BYTES`] (sent or announced): the caller refuses and cancels.
    TooLarge(String),
    /// Bytes that do not form a result of either form.
    Malformed(String),
}

type Assembly<T> = std::result::Result<T, AssemblyError>;

/// A finished result, as the caller read it.
pub enum Assembled {
    /// A JSON payload: parse it with [`parse_json`]; `prefix` (the assembler's) goes in front
    /// of its text.
    Json { bytes: Vec<u8>, prefix: String },
    /// A raw one: its head, and its text behind the assembler's prefix (`prefix_len` bytes).
    Raw {
        head: Vec<u8>,
        text: Vec<u8>,
        prefix_len: usize,
    },
}

/// The caller's side: feeds result parts and the `end` payload in order, bounded by
/// [`MAX_RESULT_BYTES`]. Errors name what was wrong with the bytes.
pub struct Assembler {
    /// Bytes before the form is known, and the whole of a JSON payload.
    buf: Vec<u8>,
    raw: Option<RawParts>,
    total: usize,
    prefix: String,
}

struct RawParts {
    head_len: usize,
    text_len: usize,
    head: Vec<u8>,
    /// The prefix, then the text.
    text: Vec<u8>,
    prefix_len: usize,
}

impl Assembler {
    /// `prefix` goes in front of a raw text (the caller's `[tool ran on node]` line), so the
    /// result string is built without copying the text again.
    pub fn new(prefix: String) -> Self {
        Assembler {
            buf: Vec::new(),
            raw: None,
            total: 0,
            prefix,
        }
    }

    /// Bytes the assembler holds (its buffers' capacity): what a peer's parts and announced
    /// lengths cost the caller (the fuzz target checks it against [`MAX_RESULT_BYTES`]).
    #[doc(hidden)]
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
            + self
                .raw
                .as_ref()
                .map_or(0, |r| r.head.capacity() + r.text.capacity())
    }

    pub fn push(&mut self, bytes: &[u8]) -> Assembly<()> {
        self.total += bytes.len();
        if self.total > MAX_RESULT_BYTES {
            return Err(AssemblyError::TooLarge(format!(
                "result larger than {MAX_RESULT_BYTES} bytes"
            )));
        }
        let Some(raw) = &mut self.raw else {
            let need = self.buf.len() + bytes.len();
            if need > self.buf.capacity() {
                // Doubling as `Vec` does, but never past the limit: a result just under it
                // must not hold nearly twice its size (`need` ≤ `total` ≤ the limit here).
                let cap = need
                    .max(self.buf.capacity().saturating_mul(2))
                    .min(MAX_RESULT_BYTES);
                self.buf.reserve_exact(cap - self.buf.len());
            }
            self.buf.extend_from_slice(bytes);
            if self.buf.first() == Some(&RAW_RESULT) && self.buf.len() >= RAW_FIXED {
                self.start_raw()?;
            }
            return Ok(());
        };
        raw.feed(bytes)
    }

    fn start_raw(&mut self) -> Assembly<()> {
        let b = std::mem::take(&mut self.buf);
        let text_len = u64::from_be_bytes(b[1..9].try_into().unwrap_or([0xff; 8]));
        let head_len = u32::from_be_bytes(b[9..RAW_FIXED].try_into().unwrap_or([0xff; 4]));
        let announced = (text_len as u128) + (head_len as u128) + RAW_FIXED as u128;
        if announced > MAX_RESULT_BYTES as u128 {
            return Err(AssemblyError::TooLarge(format!(
                "raw result announces {announced} bytes, more than {MAX_RESULT_BYTES}"
            )));
        }
        let (text_len, head_len) = (text_len as usize, head_len as usize);
        let mut text = Vec::with_capacity(self.prefix.len() + text_len);
        text.extend_from_slice(self.prefix.as_bytes());
        let mut raw = RawParts {
            head_len,
            text_len,
            head: Vec::with_capacity(head_len),
            text,
            prefix_len: self.prefix.len(),
        };
        raw.feed(&b[RAW_FIXED..])?;
        self.raw = Some(raw);
        Ok(())
    }

    pub fn finish(self) -> Assembly<Assembled> {
        match self.raw {
            None if self.buf.first() == Some(&RAW_RESULT) => Err(AssemblyError::Malformed(
                format!("raw result cut short: {} bytes", self.buf.len()),
            )),
            None => Ok(Assembled::Json {
                bytes: self.buf,
                prefix: self.prefix,
            }),
            Some(r) => {
                let got = r.text.len() - r.prefix_len;
                if r.head.len() < r.head_len || got < r.text_len {
                    return Err(AssemblyError::Malformed(format!(
                        "raw result cut short: {} of {} head bytes, {got} of {} text bytes",
                        r.head.len(),
                        r.head_len,
                        r.text_len
                    )));
                }
                Ok(Assembled::Raw {
                    head: r.head,
                    text: r.text,
                    prefix_len: r.prefix_len,
                })
            }
        }
    }
}

impl RawParts {
    fn feed(&mut self, mut bytes: &[u8]) -> Assembly<()> {
        let k = bytes.len().min(self.head_len - self.head.len());
        self.head.extend_from_slice(&bytes[..k]);
        bytes = &bytes[k..];
        if bytes.len() > self.text_len - (self.text.len() - self.prefix_len) {
            return Err(AssemblyError::Malformed(format!(
                "raw result longer than the {} text bytes it announced",
                self.text_len
            )));
        }
        self.text.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::result::decode_raw;
    use serde_json::json;

    /// The pieces a server sends for `parts`, fed to a caller's assembler.
    fn travel(parts: &[&[u8]], prefix: &str) -> (usize, Assembly<Assembled>) {
        let mut pieces = Pieces::new(parts);
        let mut asm = Assembler::new(prefix.to_string());
        let mut chunks = 0;
        loop {
            match pieces.next_piece() {
                Piece::Chunk(c) => {
                    assert_eq!(c[0], RESULT_PART);
                    assert!(c.len() <= MAX_CHUNK_BYTES);
                    chunks += 1;
                    if let Err(e) = asm.push(&c[1..]) {
                        return (chunks, Err(e));
                    }
                }
                Piece::End(e) => {
                    assert!(e.len() <= MAX_CHUNK_BYTES);
                    let r = asm.push(&e).and_then(|()| asm.finish());
                    return (chunks, r);
                }
            }
        }
    }

    fn raw_parts(text: &str, details: &Value) -> (Vec<u8>, Vec<u8>) {
        let head = serde_json::to_vec(&json!({"ok": true, "details": details})).unwrap();
        let mut fixed = vec![RAW_RESULT];
        fixed.extend_from_slice(&(text.len() as u64).to_be_bytes());
        fixed.extend_from_slice(&(head.len() as u32).to_be_bytes());
        (fixed, head)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    #[test]
    fn pieces_cover_the_payload_once_at_every_size_around_the_piece_boundary() {
        let piece = MAX_CHUNK_BYTES - 1;
        for total in [
            0,
            1,
            piece,
            MAX_CHUNK_BYTES,
            MAX_CHUNK_BYTES + 1,
            2 * piece + 1,
            3 * piece + 17,
        ] {
            // Never 0x01 first: that is the raw form's marker (a JSON payload starts with `{`).
            let data: Vec<u8> = (0..total).map(|i| (i % 250) as u8 + 2).collect();
            // Split the same bytes over three slices at odd places.
            let (a, rest) = data.split_at(total / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            let (chunks, r) = travel(&[a, b, c], "");
            let want_chunks = if total <= MAX_CHUNK_BYTES {
                0
            } else {
                total.div_ceil(piece) - 1
            };
            assert_eq!(chunks, want_chunks, "total {total}");
            match r {
                Ok(Assembled::Json { bytes, .. }) => assert_eq!(bytes, data, "total {total}"),
                _ => panic!("total {total}: not the bytes sent"),
            }
        }
    }

    #[test]
    fn a_raw_result_arrives_as_its_text_behind_the_prefix_across_pieces() {
        // Multi-byte characters so that piece boundaries fall inside them; details large
        // enough that the head itself spans a piece boundary in the second case.
        let text: String = "é🦀 line of text\n".repeat(40_000);
        for details in [
            json!({"bytes": text.len()}),
            json!({"pad": "p".repeat(300_000)}),
        ] {
            let (fixed, head) = raw_parts(&text, &details);
            let (chunks, r) = travel(&[&fixed, &head, text.as_bytes()], "[read ran on office]\n");
            assert!(chunks >= 3);
            let Ok(Assembled::Raw {
                head,
                text: got,
                prefix_len,
            }) = r
            else {
                panic!("not a raw result")
            };
            let (d, s) = rt()
                .block_on(decode_raw(head, got, prefix_len))
                .expect("decodes");
            assert_eq!(d, details);
            assert_eq!(s, format!("[read ran on office]\n{text}"));
        }
    }

    #[test]
    fn small_and_empty_raw_results_are_one_end_payload() {
        for text in ["", "x", "é"] {
            let details = json!({});
            let (fixed, head) = raw_parts(text, &details);
            let (chunks, r) = travel(&[&fixed, &head, text.as_bytes()], "P:");
            assert_eq!(chunks, 0);
            let Ok(Assembled::Raw {
                head,
                text: got,
                prefix_len,
            }) = r
            else {
                panic!("not a raw result")
            };
            let (_, s) = rt()
                .block_on(decode_raw(head, got, prefix_len))
                .expect("decodes");
            assert_eq!(s, format!("P:{text}"));
        }
    }

    #[test]
    fn bad_raw_results_are_refused_naming_what_is_wrong() {
        let details = json!({});
        let (fixed, head) = raw_parts("hello", &details);
        let whole: Vec<u8> = [fixed.as_slice(), &head, b"hello"].concat();

        // Cut short: in the fixed part, in the head, in the text.
        for cut in [5, fixed.len() + 2, whole.len() - 1] {
            let mut a = Assembler::new(String::new());
            a.push(&whole[..cut]).expect("a prefix is fine so far");
            match a.finish() {
                Err(AssemblyError::Malformed(m)) => assert!(m.contains("cut short"), "{m}"),
                _ => panic!("cut at {cut}: accepted"),
            }
        }
        // More text than announced.
        let mut a = Assembler::new(String::new());
        match a.push(&[whole.as_slice(), b"!"].concat()) {
            Err(AssemblyError::Malformed(m)) => assert!(m.contains("longer than the 5"), "{m}"),
            r => panic!("accepted: {r:?}"),
        }
        // An announced size over the limit is refused before anything is reserved.
        let mut huge = fixed.clone();
        huge[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        match Assembler::new(String::new()).push(&huge) {
            Err(AssemblyError::TooLarge(m)) => assert!(m.contains("announces"), "{m}"),
            r => panic!("accepted: {r:?}"),
        }
        // Too many bytes in total, whatever the form.
        let mut a = Assembler::new(String::new());
        let block = vec![b' '; MAX_CHUNK_BYTES];
        let mut refused = None;
        for _ in 0..=(MAX_RESULT_BYTES / MAX_CHUNK_BYTES) {
            if let Err(e) = a.push(&block) {
                refused = Some(e);
                break;
            }
        }
        assert!(matches!(refused, Some(AssemblyError::TooLarge(_))));
        // Not UTF-8, or a head that is not an ok result.
        let (fixed, head) = raw_parts("ab", &details);
        // (behind a prefix: the offset still counts from the text's first byte)
        let mut a = Assembler::new("[read ran on x]\n".into());
        a.push(&[fixed.as_slice(), &head, &[b'a', 0xff]].concat())
            .expect("sizes fit");
        let Ok(Assembled::Raw {
            head,
            text,
            prefix_len,
        }) = a.finish()
        else {
            panic!("not raw")
        };
        let e = rt()
            .block_on(decode_raw(head, text, prefix_len))
            .expect_err("not UTF-8");
        assert!(e.contains("not UTF-8 (at byte 1)"), "{e}");
        let e = rt()
            .block_on(decode_raw(br#"{"ok":false}"#.to_vec(), b"x".to_vec(), 0))
            .expect_err("not ok");
        assert!(e.contains("ok must be true"), "{e}");
        let e = rt()
            .block_on(decode_raw(b"{".to_vec(), b"x".to_vec(), 0))
            .expect_err("bad head");
        assert!(e.contains("raw result head"), "{e}");
    }

    /// Found by the `tool_result` fuzz target: parts of 300,000 bytes grew the JSON buffer by
    /// doubling to 19.2 MB for a result of 16.5 MB, over the limit the assembler promises.
    #[test]
    fn a_json_result_near_the_limit_never_holds_more_than_the_limit() {
        let part = vec![b'x'; 300_000];
        let mut asm = Assembler::new(String::new());
        let mut pushed = 0;
        while pushed + part.len() <= MAX_RESULT_BYTES {
            asm.push(&part).expect("under the limit");
            pushed += part.len();
            assert!(
                asm.held_bytes() <= MAX_RESULT_BYTES,
                "holds {} bytes after {pushed} pushed",
                asm.held_bytes()
            );
        }
        assert!(matches!(asm.push(&part), Err(AssemblyError::TooLarge(_))));
    }
}
