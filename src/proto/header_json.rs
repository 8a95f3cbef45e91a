//! The JSON header of a binary frame, written and read without serde on the hot path.
//!
//! The wire format is unchanged: [`write`] produces exactly the bytes `serde_json::to_writer`
//! produces for a [`Header`] (same key order, same escaping), and [`read`] accepts exactly that
//! canonical form. Profiles of 1 KiB request traffic put serde's header decode and encode at
//! about a third of a node's CPU (the internally tagged `body` is buffered into an intermediate
//! tree, ids are parsed through `Cow<str>`); the hand-written forms cost a fraction of that.
//!
//! [`read`] is a fast path, not a second parser of record: it returns `None` for anything
//! outside the canonical form (another key order, whitespace, escapes in strings, unknown or
//! missing keys, `digest` bodies, numbers out of range), and the caller then runs
//! serde, which decides and reports the error. So the two can only disagree by the fast path
//! accepting something serde would read differently, which the differential tests rule out.
//! [`write`] falls back to serde for strings that need escaping and for `digest`.

use super::frame::{Body, Header};
use super::hex::{push_hex, CallId, FrameId, Sig64};

/// Append the JSON form of `h` to `out` (byte-identical to `serde_json::to_writer`).
pub fn write(out: &mut Vec<u8>, h: &Header) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"v\":");
    write_u64(out, u64::from(h.v));
    out.extend_from_slice(b",\"id\":");
    write_hex(out, &h.id.0);
    out.extend_from_slice(b",\"src\":");
    write_str(out, &h.src)?;
    out.extend_from_slice(b",\"dst\":");
    match &h.dst {
        Some(d) => write_str(out, d)?,
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ttl\":");
    write_u64(out, u64::from(h.ttl));
    out.extend_from_slice(b",\"hops\":");
    write_u64(out, u64::from(h.hops));
    out.extend_from_slice(b",\"ts\":");
    write_u64(out, h.ts);
    out.extend_from_slice(b",\"body\":");
    write_body(out, &h.body)?;
    out.push(b'}');
    Ok(())
}

/// Append the JSON form of `body` alone (what a sealed frame carries inside, `mesh::e2e`),
/// byte-identical to `serde_json::to_writer(out, body)`.
pub fn write_body_only(out: &mut Vec<u8>, body: &Body) -> Result<(), serde_json::Error> {
    write_body(out, body)
}

/// Read a body written by [`write_body_only`]; `None` = let serde decide.
pub fn read_body_only(json: &[u8]) -> Option<Body> {
    let mut c = Cur { b: json, i: 0 };
    c.lit(b"{\"type\":")?;
    let body = read_body(&mut c)?;
    c.lit(b"}")?;
    (c.i == json.len()).then_some(body)
}

fn write_body(out: &mut Vec<u8>, body: &Body) -> Result<(), serde_json::Error> {
    let kind = |out: &mut Vec<u8>, k: &str| {
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(k.as_bytes());
        out.push(b'"');
    };
    let key = |out: &mut Vec<u8>, k: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
    };
    match body {
        Body::Ping { seq, t } | Body::Pong { seq, t } => {
            kind(out, body.kind());
            key(out, "seq");
            write_u64(out, *seq);
            key(out, "t");
            write_u64(out, *t);
        }
        Body::Leave {
            node,
            incarnation,
            sig,
        } => {
            kind(out, "leave");
            key(out, "node");
            write_str(out, node)?;
            key(out, "incarnation");
            write_u64(out, *incarnation);
            key(out, "sig");
            write_hex(out, &sig.0);
        }
        Body::Gossip { records } => {
            kind(out, "gossip");
            key(out, "records");
            write_u64(out, u64::from(*records));
        }
        Body::Sealed { call_id, ctr } => {
            kind(out, "sealed");
            key(out, "call_id");
            write_hex(out, &call_id.0);
            key(out, "ctr");
            write_u64(out, *ctr);
        }
        Body::Call {
            call_id,
            method,
            deadline_ms,
        } => {
            kind(out, "call");
            key(out, "call_id");
            write_hex(out, &call_id.0);
            key(out, "method");
            write_str(out, method)?;
            if let Some(d) = deadline_ms {
                key(out, "deadline_ms");
                write_u64(out, *d);
            }
        }
        Body::Reply {
            call_id,
            ok,
            code,
            message,
        }
        | Body::End {
            call_id,
            ok,
            code,
            message,
        } => {
            kind(out, body.kind());
            key(out, "call_id");
            write_hex(out, &call_id.0);
            key(out, "ok");
            out.extend_from_slice(if *ok { b"true" } else { b"false" });
            if let Some(c) = code {
                key(out, "code");
                write_str(out, c)?;
            }
            if let Some(m) = message {
                key(out, "message");
                write_str(out, m)?;
            }
        }
        Body::Chunk { call_id, seq } => {
            kind(out, "chunk");
            key(out, "call_id");
            write_hex(out, &call_id.0);
            key(out, "seq");
            write_u64(out, *seq);
        }
        Body::Cancel { call_id, reason } => {
            kind(out, "cancel");
            key(out, "call_id");
            write_hex(out, &call_id.0);
            key(out, "reason");
            write_str(out, reason)?;
        }
        Body::Credit { call_id, chunks } => {
            kind(out, "credit");
            key(out, "call_id");
            write_hex(out, &call_id.0);
            key(out, "chunks");
            write_u64(out, *chunks);
        }
        Body::Unreachable { call_id, node } => {
            kind(out, "unreachable");
            key(out, "call_id");
            write_hex(out, &call_id.0);
            key(out, "node");
            write_str(out, node)?;
        }
        // Rare, large and nested: serde writes them (the tag comes first there too).
        Body::Digest { .. } | Body::Probe { .. } | Body::ProbeAck { .. } => {
            return serde_json::to_writer(out, body)
        }
    }
    out.push(b'}');
    Ok(())
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    push_hex(out, bytes);
    out.push(b'"');
}

/// serde_json escapes `"`, `\` and the C0 controls; everything else (also non-ASCII) is raw.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    if s.bytes().any(needs_escape) {
        return serde_json::to_writer(out, s);
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// A cursor over the header bytes; every method returns `None` outside the canonical form.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        let end = self.i.checked_add(s.len())?;
        (self.b.get(self.i..end)? == s).then(|| self.i = end)
    }

    /// `lit` that consumes nothing when it does not match.
    fn maybe(&mut self, s: &[u8]) -> bool {
        self.lit(s).is_some()
    }

    fn u64(&mut self) -> Option<u64> {
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        // JSON has no leading zeros; leave such input (and an empty number) to serde.
        if digits == 0 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        Some(n)
    }

    fn u8(&mut self) -> Option<u8> {
        u8::try_from(self.u64()?).ok()
    }

    fn bool(&mut self) -> Option<bool> {
        if self.maybe(b"true") {
            Some(true)
        } else {
            self.lit(b"false").map(|()| false)
        }
    }

    /// A string without escapes or control characters (what `write` produces unescaped).
    fn str(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let start = self.i;
        loop {
            let c = *self.b.get(self.i)?;
            if c == b'"' {
                break;
            }
            if needs_escape(c) {
                return None;
            }
            self.i += 1;
        }
        let s = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        self.i += 1;
        Some(s)
    }

    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    /// `,"call_id":"<hex>"`, the first field of every call-scoped body.
    fn call_id(&mut self) -> Option<CallId> {
        self.lit(b",\"call_id\":")?;
        CallId::from_hex(self.str()?)
    }

    /// `,"name":` then an optional string field's value, if the key is there.
    fn opt_str(&mut self, key: &[u8]) -> Option<Option<String>> {
        if self.maybe(key) {
            self.string().map(Some)
        } else {
            Some(None)
        }
    }
}

/// Read a header in the canonical form [`write`] produces; `None` = let serde decide.
pub fn read(json: &[u8]) -> Option<Header> {
    let mut c = Cur { b: json, i: 0 };
    c.lit(b"{\"v\":")?;
    let v = c.u8()?;
    c.lit(b",\"id\":")?;
    let id = FrameId::from_hex(c.str()?)?;
    c.lit(b",\"src\":")?;
    let src = c.string()?;
    c.lit(b",\"dst\":")?;
    let dst = if c.maybe(b"null") {
        None
    } else {
        Some(c.string()?)
    };
    c.lit(b",\"ttl\":")?;
    let ttl = c.u8()?;
    c.lit(b",\"hops\":")?;
    let hops = c.u8()?;
    c.lit(b",\"ts\":")?;
    let ts = c.u64()?;
    c.lit(b",\"body\":{\"type\":")?;
    let body = read_body(&mut c)?;
    c.lit(b"}}")?;
    (c.i == json.len()).then_some(Header {
        v,
        id,
        src,
        dst,
        ttl,
        hops,
        ts,
        body,
    })
}

/// The body after `"type":`: one arm per body type, fields in the order `write_body` writes
/// them.
#[inline]
fn read_body(c: &mut Cur<'_>) -> Option<Body> {
    let body = match c.str()? {
        "ping" => {
            let (seq, t) = seq_t(c)?;
            Body::Ping { seq, t }
        }
        "pong" => {
            let (seq, t) = seq_t(c)?;
            Body::Pong { seq, t }
        }
        "leave" => {
            c.lit(b",\"node\":")?;
            let node = c.string()?;
            c.lit(b",\"incarnation\":")?;
            let incarnation = c.u64()?;
            c.lit(b",\"sig\":")?;
            Body::Leave {
                node,
                incarnation,
                sig: Sig64::from_hex(c.str()?)?,
            }
        }
        "gossip" => {
            c.lit(b",\"records\":")?;
            Body::Gossip {
                records: u32::try_from(c.u64()?).ok()?,
            }
        }
        "sealed" => {
            let call_id = c.call_id()?;
            c.lit(b",\"ctr\":")?;
            Body::Sealed {
                call_id,
                ctr: c.u64()?,
            }
        }
        "call" => {
            let call_id = c.call_id()?;
            c.lit(b",\"method\":")?;
            let method = c.string()?;
            let deadline_ms = if c.maybe(b",\"deadline_ms\":") {
                Some(c.u64()?)
            } else {
                None
            };
            Body::Call {
                call_id,
                method,
                deadline_ms,
            }
        }
        "reply" => {
            let (call_id, ok, code, message) = outcome(c)?;
            Body::Reply {
                call_id,
                ok,
                code,
                message,
            }
        }
        "end" => {
            let (call_id, ok, code, message) = outcome(c)?;
            Body::End {
                call_id,
                ok,
                code,
                message,
            }
        }
        "chunk" => {
            let call_id = c.call_id()?;
            c.lit(b",\"seq\":")?;
            Body::Chunk {
                call_id,
                seq: c.u64()?,
            }
        }
        "cancel" => {
            let call_id = c.call_id()?;
            c.lit(b",\"reason\":")?;
            Body::Cancel {
                call_id,
                reason: c.string()?,
            }
        }
        "credit" => {
            let call_id = c.call_id()?;
            c.lit(b",\"chunks\":")?;
            Body::Credit {
                call_id,
                chunks: c.u64()?,
            }
        }
        "unreachable" => {
            let call_id = c.call_id()?;
            c.lit(b",\"node\":")?;
            Body::Unreachable {
                call_id,
                node: c.string()?,
            }
        }
        _ => return None,
    };
    Some(body)
}

/// `,"seq":N,"t":N` of a ping or pong.
fn seq_t(c: &mut Cur<'_>) -> Option<(u64, u64)> {
    c.lit(b",\"seq\":")?;
    let seq = c.u64()?;
    c.lit(b",\"t\":")?;
    Some((seq, c.u64()?))
}

/// The fields of a `reply` or `end`.
type Outcome = (CallId, bool, Option<String>, Option<String>);

fn outcome(c: &mut Cur<'_>) -> Option<Outcome> {
    let call_id = c.call_id()?;
    c.lit(b",\"ok\":")?;
    let ok = c.bool()?;
    let code = c.opt_str(b",\"code\":")?;
    let message = c.opt_str(b",\"message\":")?;
    Some((call_id, ok, code, message))
}
