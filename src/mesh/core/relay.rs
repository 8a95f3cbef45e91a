//! Routed frames: sending ours ([`Mesh::send`], to the next hop of the route, TTL-checked),
//! and for each routed frame that arrives: drop our own frames come back and duplicates
//! (dedup cache), deliver what is for us, forward the rest one hop with TTL − 1, and bounce
//! an undeliverable call frame back to its source as `unreachable`.

use super::Mesh;
use crate::mesh::link::LinkId;
use crate::mesh::{Output, SendError};
use crate::proto::codec;
use crate::proto::{Body, Frame, FrameId, Header, NodeId};

impl Mesh {
    /// Send a routed application frame to `dst`; the payload travels as raw bytes.
    pub fn send(
        &mut self,
        now: u64,
        dst: NodeId,
        body: Body,
        payload: Vec<u8>,
    ) -> Result<FrameId, SendError> {
        self.touch(now);
        if self.shut_down {
            return Err(SendError::ShutDown);
        }
        if body.is_link_local() {
            return Err(SendError::InvalidBody);
        }
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
        let bytes = codec::encode_owned(&header, payload)
            .map_err(|e| SendError::TooLarge(e.to_string()))?;
        // Not remembered in the dedup cache: should it loop back, `src` == us drops it.
        self.push(Output::Send { link, bytes });
        Ok(header.id)
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
            self.deliver(now, header, payload);
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
                self.push(Output::Send { link: next, bytes });
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
