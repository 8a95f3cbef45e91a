//! Our WebSocket frame reader (`node::ws::WsReader`, both roles) against tungstenite's on the
//! same bytes, handed out in the same fuzzer-chosen pieces: both give the same messages up to
//! the first close and then end the same way (clean end or both refuse).
//!
//! Input: `[flags][piece seed][stream…]`; flags bit 0 = the role we read as (0: server, reading
//! a client's masked frames), bits 1-2 = the message limit (125, 1000, 20000, 1 MiB), the same
//! for both readers (`max_message_size` = `max_frame_size` = ours).
//!
//! Intentional differences, normalised here (each is also said in the README):
//! - A pong's payload: ours drops it (the link ignores pongs).
//! - A close frame: the comparison stops at the first one (after it, the link is closed either
//!   way). Tungstenite reports a code that may not appear on the wire as 1002 and refuses a
//!   reason that is not UTF-8; ours reports code and reason as sent (lossy UTF-8): both close.
//! - UTF-8 of a fragmented TEXT message: tungstenite refuses at the first bad fragment, ours
//!   once the message is whole; control frames (and a close) between the two are delivered by
//!   ours only. The link refuses such a message all the same (or has closed).
//! - When the checks run: ours refuses a frame at its header (limit, RSV, mask, opcode, control
//!   rules), tungstenite once its payload has arrived, and a fragmented TEXT message's UTF-8 per
//!   fragment where ours checks the whole message. A stream that ends before that point: ours
//!   refused, tungstenite saw the end; checked exactly by giving tungstenite the same stream
//!   followed by zeros (which complete the frame and add only empty frames): it must refuse
//!   then. And tungstenite may refuse a fragmented TEXT message before control frames that ours
//!   delivers; those may be the only extra messages on our side.

#![no_main]

use std::task::{Context, Poll, Waker};

use clawmatrix::node::ws::{Role, WsError, WsMessage, WsReader};
use clawmatrix_fuzz::Pieces;
use libfuzzer_sys::fuzz_target;
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role as TRole, WebSocket, WebSocketConfig};
use tungstenite::{Error as TError, Message};

const LIMITS: [usize; 4] = [125, 1000, 20_000, 1 << 20];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Stopped at a close frame (the last message).
    Closed,
    /// The stream ended (cleanly or inside a frame or message).
    Eof,
    /// Refused the bytes.
    Refused(String),
}

fn ours(stream: &[u8], seed: u8, role: Role, max: usize) -> (Vec<Msg>, End) {
    let mut r = WsReader::new(Pieces::new(stream, seed), role, max);
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    loop {
        let Poll::Ready(next) = r.poll_next(&mut cx) else {
            panic!("our reader returned Pending on a stream that is always ready");
        };
        match next {
            Ok(Some(m)) => {
                let closed = matches!(m, WsMessage::Close(_));
                got.push(match m {
                    WsMessage::Text(t) => Msg::Text(t),
                    WsMessage::Binary(b) => Msg::Binary(b),
                    WsMessage::Ping(p) => Msg::Ping(p),
                    WsMessage::Pong => Msg::Pong,
                    WsMessage::Close(c) => Msg::Close(c),
                });
                if closed {
                    return (got, End::Closed);
                }
            }
            Ok(None) | Err(WsError::Io(_)) => return (got, End::Eof),
            Err(e) => return (got, End::Refused(e.to_string())),
        }
        // What a peer's announced lengths cost: never more than the limit (plus the read
        // buffer), whatever they announce.
        assert!(
            r.buffered_capacity() <= 2 * max + 2 * clawmatrix::node::ws::READ_CHUNK,
            "reader holds {} bytes with a {max}-byte limit",
            r.buffered_capacity()
        );
    }
}

fn theirs(stream: &[u8], seed: u8, role: Role, max: usize) -> (Vec<Msg>, End) {
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let trole = match role {
        Role::Server => TRole::Server,
        Role::Client => TRole::Client,
    };
    let mut ws = WebSocket::from_raw_socket(Pieces::new(stream, seed), trole, Some(cfg));
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(m) => {
                let closed = matches!(m, Message::Close(_));
                got.push(match m {
                    Message::Text(t) => Msg::Text(t.as_str().to_owned()),
                    Message::Binary(b) => Msg::Binary(b.to_vec()),
                    Message::Ping(p) => Msg::Ping(p.to_vec()),
                    Message::Pong(_) => Msg::Pong,
                    Message::Close(c) => {
                        Msg::Close(c.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
                    }
                    Message::Frame(_) => unreachable!("read() never returns raw frames"),
                });
                if closed {
                    return (got, End::Closed);
                }
            }
            Err(TError::Protocol(ProtocolError::ResetWithoutClosingHandshake))
            | Err(TError::Io(_))
            | Err(TError::ConnectionClosed)
            | Err(TError::AlreadyClosed) => return (got, End::Eof),
            Err(e) => return (got, End::Refused(e.to_string())),
        }
    }
}

/// Our close as tungstenite reports it: a code that may not be sent becomes 1002.
fn as_tungstenite_reports(m: &Msg) -> Msg {
    match m {
        Msg::Close(Some((code, _))) if !CloseCode::from(*code).is_allowed() => {
            Msg::Close(Some((1002, "Protocol violation".into())))
        }
        other => other.clone(),
    }
}

/// Zero bytes to append so `stream` ends at a frame boundary: the last frame's header
/// completed (zero length bytes), and its payload too unless the header announces more than
/// `max` (refused at the header by both).
fn completion(stream: &[u8], max: usize) -> usize {
    let mut at = 0usize;
    loop {
        let b = &stream[at..];
        if b.is_empty() {
            return 0;
        }
        if b.len() < 2 {
            return 2 - b.len();
        }
        let ext = match b[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let hl = 2 + ext + if b[1] & 0x80 != 0 { 4 } else { 0 };
        let mut head = [0u8; 14];
        let have = b.len().min(hl);
        head[..have].copy_from_slice(&b[..have]);
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            8 => u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
            _ => u64::from(b[1] & 0x7F),
        };
        let missing_head = hl - have;
        if len > max as u64 {
            return missing_head;
        }
        let total = hl + len as usize;
        if b.len() < total {
            return total - b.len();
        }
        at += total;
    }
}

fn is_control(m: &Msg) -> bool {
    matches!(m, Msg::Ping(_) | Msg::Pong)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&seed, stream)) = rest.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = LIMITS[usize::from((flags >> 1) & 3)];
    let (a, a_end) = ours(stream, seed, role, max);
    let (b, b_end) = theirs(stream, seed, role, max);
    let a_norm: Vec<Msg> = a.iter().map(as_tungstenite_reports).collect();

    match (&a_end, &b_end) {
        (End::Closed, End::Closed) | (End::Eof, End::Eof) => {
            assert_eq!(a_norm, b, "same stream, different messages")
        }
        (End::Refused(_), End::Refused(_)) => {
            // Both refuse: the same messages before, except control frames ours delivered
            // inside a fragmented message tungstenite refused earlier.
            assert!(a_norm.starts_with(&b), "ours {a_norm:?}\ntheirs {b:?}");
            assert!(
                a_norm[b.len()..].iter().all(is_control),
                "ours delivered data tungstenite refused: {a_norm:?} / {b:?}"
            );
        }
        (End::Closed, End::Refused(why)) | (End::Eof, End::Refused(why)) => {
            // Tungstenite checks UTF-8 earlier (a fragmented TEXT message per fragment) and
            // stricter (a close reason) than ours, which checks a TEXT message once it is
            // whole and reads a close reason lossily: before the stream ended or closed, ours
            // delivered at most the control frames tungstenite never reached.
            assert!(
                why.contains("UTF-8"),
                "tungstenite refused ({why}), ours did not"
            );
            assert!(a_norm.starts_with(&b), "ours {a_norm:?}\ntheirs {b:?}");
            assert!(
                a_norm[b.len()..]
                    .iter()
                    .all(|m| is_control(m) || matches!(m, Msg::Close(_))),
                "ours {a_norm:?}, tungstenite refused: {why}"
            );
        }
        (End::Refused(why), End::Eof) => {
            // Ours refused a frame at its header, tungstenite waited for its payload, which
            // never came: with the frame completed (zeros), tungstenite must refuse too.
            let mut padded = stream.to_vec();
            padded.resize(stream.len() + completion(stream, max), 0);
            let (c, c_end) = theirs(&padded, seed, role, max);
            assert!(
                matches!(c_end, End::Refused(_)),
                "ours refused ({why}), tungstenite accepts the completed stream: {c:?} {c_end:?}"
            );
            assert!(a_norm.starts_with(&c), "ours {a_norm:?}\ntheirs {c:?}");
            assert!(a_norm[c.len()..].iter().all(is_control));
        }
        _ => panic!("ours {a:?} {a_end:?}\ntheirs {b:?} {b_end:?}"),
    }
});
