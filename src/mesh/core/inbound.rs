//! One message from a link: decode it (counting errors; an oversized one is a protocol error
//! that drops the link), note the link's activity, and dispatch. Link-local bodies (ping,
//! pong, digest, gossip, leave) go to `links` and `gossip`; routed frames go to `relay`.

use super::Mesh;
use crate::mesh::link::LinkId;
use crate::mesh::{DownReason, CLOSE_PROTOCOL_ERROR};
use crate::proto::codec::{self, CodecError};
use crate::proto::{Body, Frame};

impl Mesh {
    /// One BINARY message from `link`: decode (counting errors) and handle it.
    pub fn handle_data(&mut self, now: u64, link: LinkId, bytes: &[u8]) {
        self.handle_data_owned(now, link, bytes.to_vec());
    }

    /// [`Mesh::handle_data`] on a message the caller owns: its buffer becomes the frame's
    /// payload, and a relayed frame leaves in the same buffer (the payload is never copied).
    pub fn handle_data_owned(&mut self, now: u64, link: LinkId, bytes: Vec<u8>) {
        self.touch(now);
        if !self.links.contains_key(&link) {
            self.stats.unknown_link += 1;
            return;
        }
        let len = bytes.len();
        match codec::decode_owned(bytes) {
            Ok(frame) => self.handle_frame(now, link, frame),
            Err(e) => {
                self.stats.frames_in += 1;
                self.stats.bytes_in += len as u64;
                self.count_decode_error(&e);
                if matches!(e, CodecError::TooLarge { .. }) {
                    self.drop_link(now, link, DownReason::ProtocolError(e.to_string()));
                    self.close(link, CLOSE_PROTOCOL_ERROR, "frame too large");
                }
            }
        }
    }

    /// Count a decode error the shell hit itself (e.g. a TEXT message after the handshake).
    pub fn count_decode_error(&mut self, e: &CodecError) {
        self.count_decode_code(e.code());
    }

    /// Count a frame refused as malformed, under `code`.
    pub(super) fn count_decode_code(&mut self, code: &str) {
        self.stats.decode_errors += 1;
        *self
            .stats
            .decode_errors_by_code
            .entry(code.to_string())
            .or_insert(0) += 1;
    }

    /// One decoded frame from `link`.
    pub fn handle_frame(&mut self, now: u64, link: LinkId, frame: Frame) {
        self.touch(now);
        if self.shut_down {
            return;
        }
        let Some(l) = self.links.get_mut(&link) else {
            self.stats.unknown_link += 1;
            return;
        };
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.payload.len() as u64;
        l.last_seen = now;
        l.ping.on_activity(now);
        if l.probe.is_some() {
            l.probe = None;
        }
        // A link-local frame speaks for the link's peer only (checked while the link is at hand,
        // so no copy of the peer id per frame).
        let local = frame.header.dst.is_none();
        let spoofed = local && frame.header.src != l.peer;
        if spoofed {
            self.stats.dropped_spoofed += 1;
            return;
        }
        if local {
            self.handle_link_local(now, link, frame.header.body, &frame.payload);
        } else {
            self.handle_routed(now, link, frame);
        }
    }

    fn handle_link_local(&mut self, now: u64, link: LinkId, body: Body, payload: &[u8]) {
        match body {
            Body::Ping { seq, t } => self.send_local(now, link, Body::Pong { seq, t }),
            Body::Pong { seq, t } => self.on_pong(now, link, seq, t),
            Body::Digest { entries, sum, ask } => match sum {
                Some(theirs) => self.on_digest_sum(now, link, theirs),
                None => self.on_digest(now, link, entries, ask),
            },
            Body::Gossip { records } => self.on_gossip(now, Some(link), records, payload),
            Body::Leave {
                node,
                incarnation,
                sig,
            } => self.on_leave(now, link, node, incarnation, sig),
            Body::Probe { node, seq } => self.on_probe(now, link, node, seq),
            Body::ProbeAck {
                node,
                seq,
                heard_ms,
            } => self.on_probe_ack(link, node, seq, heard_ms),
            // Routed bodies never get here (decode_header guarantees they carry a dst).
            _ => {}
        }
    }
}
