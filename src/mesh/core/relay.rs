//! Routed frames: sending ours ([`Mesh::send`], to the next hop of the route, TTL-checked),
//! and for each routed frame that arrives: drop our own frames come back and duplicates
//! (dedup cache), deliver what is for us, forward the rest one hop with TTL − 1, and bounce
//! an undeliverable call frame back to its source as `unreachable`.

use super::Mesh;
use crate::mesh::e2e::E2eError;
use crate::mesh::link::LinkId;
use crate::mesh::{Output, SendError};
use crate::proto::codec;
use crate::proto::{Body, Frame, FrameId, Header, NodeId};

/// The call a body we send to a node belongs to: every routed body names one (the relays'
/// `unreachable` bounce needs it); link-local bodies and `sealed` (only ever the outer form)
/// are refused.
fn routed_call_id(body: &Body) -> Result<crate::proto::CallId, SendError> {
    if body.is_link_local() || matches!(body, Body::Sealed { .. }) {
        return Err(SendError::InvalidBody);
    }
    body.call_id().ok_or(SendError::InvalidBody)
}

impl Mesh {
    /// Send a routed application frame to `dst`, sealed end to end (`mesh::e2e`): the frame
    /// (header and payload) is encrypted for `dst` and travels inside a `sealed` frame whose
    /// header is all relays see.
    pub fn send(
        &mut self,
        now: u64,
        dst: NodeId,
        body: Body,
        payload: Vec<u8>,
    ) -> Result<FrameId, SendError> {
        // Credit only follows chunks, so it can never overtake its call.
        let urgent = matches!(body, Body::Credit { .. });
        self.send_as(now, dst, body, payload, urgent)
    }

    /// [`Mesh::send`], `urgent` saying whether the frame may overtake bulk queued on the link
    /// ([`Output::Send`]).
    pub(super) fn send_as(
        &mut self,
        now: u64,
        dst: NodeId,
        body: Body,
        payload: Vec<u8>,
        urgent: bool,
    ) -> Result<FrameId, SendError> {
        self.touch(now);
        if self.shut_down {
            return Err(SendError::ShutDown);
        }
        routed_call_id(&body)?;
        if dst == self.cfg.node_id {
            return Err(SendError::ToSelf);
        }
        self.refresh_routes(now);
        let route = self
            .routes
            .get(&dst)
            .ok_or_else(|| SendError::NoRoute(dst.clone()))?;
        if route.hops > u32::from(self.cfg.default_ttl) {
            return Err(SendError::TooFar {
                node: dst,
                hops: route.hops,
                ttl: self.cfg.default_ttl,
            });
        }
        let link = *self
            .by_peer
            .get(&route.next_hop)
            .ok_or_else(|| SendError::NoRoute(dst.clone()))?;
        let header = self.header(now, Some(dst), body);
        let id = header.id;
        let bytes = self.seal_routed(header, payload)?;
        // Not remembered in the dedup cache: should it loop back, `src` == us drops it.
        self.push(Output::Send {
            link,
            bytes,
            urgent,
        });
        Ok(id)
    }

    /// Seal a routed frame of ours (`src` = this node, `dst` set, a routed body) for its
    /// destination, keeping the header's id, TTL and hops: the encoded `sealed` frame, ready for
    /// a link. [`Mesh::send`] sends through it; tests that craft frames use it to produce
    /// exactly what this node would send.
    pub fn seal_routed(&mut self, header: Header, payload: Vec<u8>) -> Result<Vec<u8>, SendError> {
        let Some(dst) = header.dst.clone() else {
            return Err(SendError::InvalidBody);
        };
        if header.src != self.cfg.node_id {
            return Err(SendError::InvalidBody);
        }
        let call_id = routed_call_id(&header.body)?;
        let Header {
            v,
            id,
            src,
            ttl,
            hops,
            ts,
            body,
            ..
        } = header;
        // Inside: the body and the payload; the outer header carries the rest.
        let mut inner = codec::encode_body_owned(&body, payload)
            .map_err(|e| SendError::TooLarge(e.to_string()))?;
        let records = &self.records;
        let keys = || records.get(&dst).map(|e| e.keys());
        let ctr = self
            .e2e
            .seal(&dst, keys, &id, &call_id, &mut inner)
            .map_err(|e| match e {
                E2eError::NoKey => SendError::NoRoute(dst.clone()),
                e => SendError::NoSession(dst.clone(), e.code()),
            })?;
        let outer = Header {
            v,
            id,
            src,
            dst: Some(dst),
            ttl,
            hops,
            ts,
            body: Body::Sealed { call_id, ctr },
        };
        let bytes =
            codec::encode_owned(&outer, inner).map_err(|e| SendError::TooLarge(e.to_string()))?;
        self.stats.e2e_sealed += 1;
        Ok(bytes)
    }

    /// A routed frame for us: open it (refusing anything not sealed by its `src` for us, a
    /// replay, or an inner frame that disagrees with the outer header), then deliver the
    /// inner frame.
    fn open_and_deliver(&mut self, now: u64, header: Header, payload: Vec<u8>) {
        let Body::Sealed { call_id, ctr } = header.body else {
            let call_id = header.body.call_id();
            self.refuse_e2e(now, &header.src, call_id, "unsealed");
            return;
        };
        let src = header.src;
        let mut buf = payload;
        let records = &self.records;
        let keys = || records.get(&src).map(|e| e.keys());
        if let Err(e) = self
            .e2e
            .open(&src, keys, (&header.id, &call_id, ctr), &mut buf)
        {
            self.refuse_e2e(now, &src, Some(call_id), e.code());
            return;
        }
        let Ok((body, payload)) = codec::decode_body_owned(buf) else {
            self.refuse_e2e(now, &src, Some(call_id), "bad_inner");
            return;
        };
        let consistent = body.call_id() == Some(call_id)
            && !body.is_link_local()
            && !matches!(body, Body::Sealed { .. });
        if !consistent {
            self.refuse_e2e(now, &src, Some(call_id), "mismatch");
            return;
        }
        self.stats.e2e_opened += 1;
        // The frame as its source sent it: the authenticated body inside, the outer header's
        // id (authenticated), source and destination (bound by the session key) and route.
        let header = Header {
            src,
            body,
            ..header
        };
        self.deliver(now, header, payload);
    }

    pub(super) fn handle_routed(&mut self, now: u64, link: LinkId, frame: Frame) {
        let Frame { header, payload } = frame;
        if header.src == self.cfg.node_id {
            // Our own frame came back: only a routing loop does that (we never relay our own
            // frames), so it needs no cache entry to be recognised.
            self.stats.dropped_loop += 1;
            return;
        }
        let for_us = header.dst.as_deref() == Some(self.cfg.node_id.as_str());
        // A frame for us straight from its source (no hop yet, on the link to that source)
        // cannot be a copy: copies come from loops between relays, and a relay that forwards
        // it has the id in its own cache. Only the other frames pay for the cache lookup
        // (two cache misses into a 2 MiB table, the hottest user-space cost of direct traffic).
        let from_source =
            header.hops == 0 && self.links.get(&link).is_some_and(|l| l.peer == header.src);
        let fresh = (for_us && from_source) || self.dedup.insert(header.id);
        if !fresh {
            self.stats.dropped_dup += 1;
            return;
        }
        if for_us {
            self.open_and_deliver(now, header, payload);
            return;
        }
        self.forward(now, link, header, payload);
    }

    /// Hand a routed frame that is not for us (and not a duplicate) to the next hop toward its
    /// destination, with one hop more and TTL one less; bounce it if it can go no further.
    fn forward(&mut self, now: u64, link: LinkId, mut header: Header, payload: Vec<u8>) {
        if header.ttl <= 1 {
            self.stats.dropped_ttl += 1;
            self.bounce(now, &header);
            return;
        }
        self.refresh_routes(now);
        let next = header
            .dst
            .as_deref()
            .and_then(|dst| self.routes.get(dst))
            .and_then(|r| self.by_peer.get(&r.next_hop))
            .copied();
        let Some(next) = next else {
            self.stats.dropped_no_route += 1;
            self.bounce(now, &header);
            return;
        };
        if next == link {
            // Our next hop sent it to us: views disagree for a moment. The previous hop has
            // the id in its dedup cache, so handing it back would only be dropped there.
            self.stats.dropped_loop += 1;
            return;
        }
        header.ttl -= 1;
        header.hops = header.hops.saturating_add(1);
        match codec::encode_owned(&header, payload) {
            Ok(bytes) => {
                self.stats.relayed += 1;
                // Sealed: its kind is not ours to see, so it keeps its place behind bulk.
                self.push(Output::Send {
                    link: next,
                    bytes,
                    urgent: false,
                });
            }
            Err(e) => self.count_decode_error(&e),
        }
    }

    /// Tell the source of an undeliverable call frame that its destination is unreachable.
    fn bounce(&mut self, now: u64, h: &Header) {
        if matches!(h.body, Body::Unreachable { .. }) || h.src == self.cfg.node_id {
            return;
        }
        let Some(call_id) = h.body.call_id() else {
            return;
        };
        let body = Body::Unreachable {
            call_id,
            node: h.dst.clone().unwrap_or_default(),
        };
        // Best effort: if the source is unreachable too there is nobody to tell.
        let _ = self.send(now, h.src.clone(), body, Vec::new());
    }
}
