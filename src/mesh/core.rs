//! [`Mesh`]: the sans-IO core. Owns the links, our record, the record store, the route table,
//! the dedup cache, in-flight calls, stats and the output queue.
//!
//! Flow of one input:
//! ```text
//! handle_link_up / handle_link_down / handle_data / handle_frame / send / start_call / update_local
//!     -> immediate outputs (pong, digest answer, relayed frame, delivery)
//!     -> marks deferred work (own record changed, records to flood, routes dirty)
//! poll_timeout() == the time of the last input while work is deferred, so the shell ticks at once
//! handle_tick(now)
//!     -> heartbeats (ping / dead link), anti-entropy digest, publish own record,
//!        flood accepted records and leaves (batched), recompute routes (events, failed calls),
//!        forget long-unreachable nodes, call deadlines
//! ```
//! Deferring to the tick coalesces everything that happened in the same instant into one record
//! version, one gossip batch per link and one route computation.

use super::calls::{CallState, Calls};
use super::dedup::DedupCache;
use super::link::{Direction, Link, LinkId};
use super::ping::{PingAction, PingTracker};
use super::records::{Merge, RecordStore};
use super::routes::{self, RouteTable};
use super::stats::MeshStats;
use super::target::{self, Candidate, Reach, Target};
use super::{
    CallFailure, DownReason, LocalInfo, MeshConfig, MeshEvent, Output, PeerState, PeerView,
    SendError, UpdateError, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR,
    MAX_RECORD_BYTES, MAX_RECORD_STAMP,
};
use crate::proto::codec::{self, CodecError, MAX_HEADER_BYTES};
use crate::proto::frame::valid_node_id;
use crate::proto::frame::ENVELOPE_VERSION;
use crate::proto::{
    Body, CallId, DigestSum, Frame, FrameId, Header, LinkInfo, NodeId, NodeRecord, RejectCode,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Encoded frames shared by every link they go to.
type SharedFrames = Vec<Arc<[u8]>>;

/// Gossip and digest frames are split so their header stays under this many bytes
/// (half of `MAX_HEADER_BYTES`, leaving room for the envelope and one more record).
const GOSSIP_BATCH_BYTES: usize = MAX_HEADER_BYTES / 2;

/// The mesh core. See the module docs for the flow.
#[derive(Debug)]
pub struct Mesh {
    cfg: MeshConfig,
    own: NodeRecord,
    own_dirty: bool,
    rtt_bump_pending: bool,
    last_rtt_bump: Option<u64>,
    links: BTreeMap<LinkId, Link>,
    by_peer: HashMap<NodeId, LinkId>,
    records: RecordStore,
    routes: RouteTable,
    routes_dirty: bool,
    /// Records accepted since the last tick, with the link they came from.
    flood: Vec<(NodeId, Option<LinkId>)>,
    /// Leaves accepted since the last tick.
    leaves: Vec<(NodeId, u64, Option<LinkId>)>,
    dedup: DedupCache,
    calls: Calls,
    stats: MeshStats,
    outputs: VecDeque<Output>,
    rng: u64,
    next_anti_entropy: u64,
    last_now: u64,
    work_pending: bool,
    shut_down: bool,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Upper estimate of a record's JSON size without serializing it (gossip batching).
fn approx_record_bytes(r: &NodeRecord) -> usize {
    super::records::estimate(r, &super::records::JSON_UPPER)
}

/// Why a received record is refused before anything else looks at it: every name in it
/// follows the node-id rule and its stamp is within [`MAX_RECORD_STAMP`].
fn check_record(r: &NodeRecord) -> Result<(), &'static str> {
    let names_ok = valid_node_id(&r.node)
        && r.links.iter().all(|l| valid_node_id(&l.peer))
        && r.agents.iter().all(|a| valid_node_id(&a.id));
    if !names_ok {
        return Err("bad_node_id");
    }
    check_stamp(r.incarnation.max(r.version))
}

/// A `leave` is held to the same rules as a record: its node id, its incarnation.
fn check_leave(node: &str, incarnation: u64) -> Result<(), &'static str> {
    if !valid_node_id(node) {
        return Err("bad_node_id");
    }
    check_stamp(incarnation)
}

fn check_stamp(highest: u64) -> Result<(), &'static str> {
    if highest > MAX_RECORD_STAMP {
        return Err("absurd_stamp");
    }
    Ok(())
}

impl Mesh {
    /// A core with no links. `now` starts the anti-entropy clock.
    pub fn new(cfg: MeshConfig, local: LocalInfo, now: u64) -> Self {
        let own = NodeRecord {
            node: cfg.node_id.clone(),
            incarnation: cfg.incarnation.min(MAX_RECORD_STAMP),
            version: 1,
            listen: local.listen,
            agents: local.agents,
            models: local.models,
            tags: local.tags,
            links: Vec::new(),
        };
        let rng = cfg.rng_seed ^ fnv(&cfg.node_id) ^ cfg.incarnation.rotate_left(17);
        Mesh {
            records: RecordStore::new(cfg.max_nodes, super::MAX_RECORDS_HELD_BYTES),
            dedup: DedupCache::new(cfg.dedup_capacity, splitmix(&mut rng.clone())),
            calls: Calls::new(cfg.max_inflight_calls),
            next_anti_entropy: now.saturating_add(cfg.anti_entropy_interval_ms),
            cfg,
            own,
            own_dirty: false,
            rtt_bump_pending: false,
            last_rtt_bump: None,
            links: BTreeMap::new(),
            by_peer: HashMap::new(),
            routes: RouteTable::default(),
            routes_dirty: false,
            flood: Vec::new(),
            leaves: Vec::new(),
            stats: MeshStats::default(),
            outputs: VecDeque::new(),
            rng,
            last_now: now,
            work_pending: false,
            shut_down: false,
        }
    }

    // ----- identity, queries -------------------------------------------------------------

    /// Our node id.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// Our current record.
    pub fn own_record(&self) -> &NodeRecord {
        &self.own
    }

    /// Counters.
    pub fn stats(&self) -> &MeshStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &MeshConfig {
        &self.cfg
    }

    /// Routes as of the last tick.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Number of live links.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The peer of a live link.
    pub fn link_peer(&self, link: LinkId) -> Option<&str> {
        self.links.get(&link).map(|l| l.peer.as_str())
    }

    /// Smoothed RTT of the live link to `peer`, ms.
    pub fn link_rtt(&self, peer: &str) -> Option<u64> {
        let id = self.by_peer.get(peer)?;
        self.links.get(id)?.ping.srtt_ms()
    }

    /// Ids in the dedup cache (≤ `dedup_capacity`).
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// In-flight calls we originated.
    pub fn inflight_calls(&self) -> usize {
        self.calls.len()
    }

    /// Every known node as seen from here (routes as of the last tick), in node-id order.
    pub fn peers(&self) -> Vec<PeerView> {
        self.records
            .iter()
            .map(|(node, e)| {
                let route = if e.left_at.is_some() {
                    None
                } else {
                    self.routes.get(node)
                };
                let direct = self.by_peer.get(node).and_then(|l| self.links.get(l));
                let state = match (direct, route) {
                    (Some(_), _) => PeerState::Direct,
                    (None, Some(r)) => PeerState::Via {
                        next_hop: r.next_hop.clone(),
                        hops: r.hops,
                    },
                    (None, None) => PeerState::Unreachable {
                        since: e.unreachable_since.or(e.left_at).unwrap_or(e.last_seen),
                    },
                };
                PeerView {
                    node: node.clone(),
                    state,
                    latency_ms: route.map(|r| self.path_latency(r)),
                    hops: route.map(|r| r.hops),
                    listen: e.record.listen,
                    agents: e.record.agents.clone(),
                    models: e.record.models.clone(),
                    tags: e.record.tags.clone(),
                    last_seen_ms: direct.map_or(e.last_seen, |l| l.last_seen.max(e.last_seen)),
                    incarnation: e.record.incarnation,
                    version: e.record.version,
                }
            })
            .collect()
    }

    /// What status shows as a route's latency: the measured smoothed RTT of the first link,
    /// plus the advertised RTT buckets of the links beyond it (records carry buckets, §6.3, so
    /// that part is an upper estimate). Routes themselves weigh every link by its buckets.
    fn path_latency(&self, r: &routes::Route) -> u64 {
        let measured = self
            .by_peer
            .get(&r.next_hop)
            .and_then(|l| self.links.get(l))
            .and_then(|l| l.ping.srtt_ms());
        let first_weight = self
            .routes
            .get(&r.next_hop)
            .filter(|f| f.hops == 1)
            .map(|f| f.latency_ms);
        match (measured, first_weight) {
            (Some(m), Some(w)) => r.latency_ms.saturating_sub(w).saturating_add(m),
            _ => r.latency_ms,
        }
    }

    /// Ordered candidates for `target` among reachable nodes within `default_ttl` hops, minus
    /// `exclude` (nodes that already failed this request). Our own node is never a candidate.
    pub fn resolve(&self, target: &Target, exclude: &[NodeId]) -> Vec<Candidate> {
        let ttl = u32::from(self.cfg.default_ttl);
        let reach = self.records.iter().filter_map(|(node, e)| {
            if e.left_at.is_some() {
                return None;
            }
            let r = self.routes.get(node)?;
            (r.hops <= ttl).then(|| Reach {
                record: &e.record,
                direct: self.by_peer.contains_key(node),
                latency_ms: r.latency_ms,
                hops: r.hops,
            })
        });
        target::resolve(target, reach, exclude)
    }

    /// Whether `node` may open a link now (`Mesh::admit` in the handshake).
    pub fn admit(&self, node: &str) -> Result<(), RejectCode> {
        if node == self.cfg.node_id {
            return Err(RejectCode::SelfId);
        }
        if self.by_peer.contains_key(node) {
            return Err(RejectCode::DuplicateNode);
        }
        if self.links.len() >= self.cfg.max_links {
            return Err(RejectCode::Capacity);
        }
        Ok(())
    }

    /// Count a handshake rejection (the shell logs it once with its reason).
    pub fn note_handshake_reject(&mut self, code: RejectCode) {
        *self
            .stats
            .handshake_rejects
            .entry(code.as_str().to_string())
            .or_insert(0) += 1;
    }

    // ----- outputs and timers ------------------------------------------------------------

    /// Next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_tick` must next run (ms). Equal to the last input's `now` while deferred
    /// work is pending, i.e. "tick right away".
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.shut_down {
            return None;
        }
        if self.work_pending || self.own_dirty || self.routes_dirty {
            return Some(self.last_now);
        }
        let mut t: Option<u64> = None;
        let mut at = |x: u64| t = Some(t.map_or(x, |y| y.min(x)));
        for l in self.links.values() {
            at(l.ping.deadline());
        }
        if !self.links.is_empty() {
            at(self.next_anti_entropy);
        }
        if self.rtt_bump_pending {
            if let Some(b) = self.last_rtt_bump {
                at(b.saturating_add(self.cfg.heartbeat_interval_ms));
            }
        }
        if let Some(d) = self.calls.next_deadline() {
            at(d);
        }
        for (_, e) in self.records.iter() {
            if let Some(s) = e.unreachable_since.or(e.left_at) {
                at(s.saturating_add(self.cfg.forget_after_ms));
            }
        }
        if let Some(x) = self.records.next_tombstone_expiry() {
            at(x);
        }
        t
    }

    fn push(&mut self, out: Output) {
        let len = match &out {
            Output::Send { bytes, .. } => Some(bytes.len()),
            Output::SendShared { bytes, .. } => Some(bytes.len()),
            _ => None,
        };
        if let Some(len) = len {
            if self.outputs.len() >= self.cfg.max_pending_outputs {
                self.stats.dropped_backpressure += 1;
                return;
            }
            self.stats.frames_out += 1;
            self.stats.bytes_out += len as u64;
        }
        self.outputs.push_back(out);
    }

    fn event(&mut self, e: MeshEvent) {
        self.outputs.push_back(Output::Event(e));
    }

    fn touch(&mut self, now: u64) {
        self.last_now = self.last_now.max(now);
    }

    fn rand(&mut self) -> u64 {
        splitmix(&mut self.rng)
    }

    fn new_id(&mut self) -> [u8; 16] {
        let a = self.rand().to_be_bytes();
        let b = self.rand().to_be_bytes();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&a);
        id[8..].copy_from_slice(&b);
        id
    }

    fn header(&mut self, now: u64, dst: Option<NodeId>, body: Body) -> Header {
        Header {
            v: ENVELOPE_VERSION,
            id: FrameId(self.new_id()),
            src: self.cfg.node_id.clone(),
            dst,
            ttl: self.cfg.default_ttl,
            hops: 0,
            ts: now,
            body,
        }
    }

    fn send_local(&mut self, now: u64, link: LinkId, body: Body) {
        let h = self.header(now, None, body);
        match codec::encode(&h, &[]) {
            Ok(bytes) => self.push(Output::Send { link, bytes }),
            // Only reachable with absurd records; the batchers keep headers small.
            Err(_) => self.stats.dropped_backpressure += 1,
        }
    }

    // ----- link lifecycle ----------------------------------------------------------------

    /// An authenticated link came up (after the handshake's `Done`).
    pub fn handle_link_up(&mut self, now: u64, link: LinkId, peer: NodeId, direction: Direction) {
        self.touch(now);
        if self.shut_down || self.links.contains_key(&link) {
            return;
        }
        if peer == self.cfg.node_id {
            self.close(link, RejectCode::SelfId.close_code(), "self_id");
            return;
        }
        if let Some(&old) = self.by_peer.get(&peer) {
            // Both sides keep the link whose dialer has the smaller node id (§6.1).
            let new_dialer = match direction {
                Direction::Inbound => peer.as_str(),
                Direction::Outbound => self.cfg.node_id.as_str(),
            };
            let old_dialer = self
                .links
                .get(&old)
                .map(|l| l.dialer(&self.cfg.node_id).to_string())
                .unwrap_or_default();
            let code = RejectCode::DuplicateNode.close_code();
            if new_dialer < old_dialer.as_str() {
                self.drop_link(now, old, DownReason::Duplicate);
                self.close(old, code, "duplicate_node");
            } else {
                self.close(link, code, "duplicate_node");
                return;
            }
        }
        if self.links.len() >= self.cfg.max_links {
            self.close(link, RejectCode::Capacity.close_code(), "capacity");
            return;
        }
        let ping = PingTracker::new(
            now,
            self.cfg.heartbeat_interval_ms,
            self.cfg.heartbeat_misses,
        );
        self.links.insert(
            link,
            Link {
                peer: peer.clone(),
                direction,
                ping,
                up_since: now,
                last_seen: now,
                advertised_rtt: super::link::RTT_MIN_BUCKET_MS,
            },
        );
        self.by_peer.insert(peer.clone(), link);
        self.event(MeshEvent::PeerUp { node: peer, link });
        self.own_dirty = true;
        self.routes_dirty = true;
        self.work_pending = true;
        self.send_digest(now, link, false);
    }

    /// The shell saw a link close or fail. Unknown links are ignored.
    pub fn handle_link_down(&mut self, now: u64, link: LinkId, reason: String) {
        self.touch(now);
        self.drop_link(now, link, DownReason::Closed(reason));
    }

    fn close(&mut self, link: LinkId, code: u16, reason: &str) {
        self.outputs.push_back(Output::Close {
            link,
            code,
            reason: reason.to_string(),
        });
    }

    fn drop_link(&mut self, _now: u64, link: LinkId, reason: DownReason) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        if self.by_peer.get(&l.peer) == Some(&link) {
            self.by_peer.remove(&l.peer);
        }
        self.event(MeshEvent::PeerDown {
            node: l.peer,
            link,
            reason,
        });
        self.own_dirty = true;
        self.routes_dirty = true;
        self.work_pending = true;
    }

    /// Graceful shutdown: `leave` on every link, then close them all (1000). Later inputs are
    /// ignored and `send` fails with `shut_down`.
    pub fn shutdown(&mut self, now: u64) {
        self.touch(now);
        if self.shut_down {
            return;
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            let body = Body::Leave {
                node: self.cfg.node_id.clone(),
                incarnation: self.own.incarnation,
            };
            self.send_local(now, link, body);
            self.drop_link(now, link, DownReason::Shutdown);
            self.close(link, CLOSE_NORMAL, "leaving");
        }
        self.shut_down = true;
    }

    // ----- local record ------------------------------------------------------------------

    /// Replace what we offer; bumps our version and gossips it at the next tick.
    pub fn update_local(&mut self, now: u64, local: LocalInfo) -> Result<(), UpdateError> {
        self.touch(now);
        let mut candidate = self.own.clone();
        candidate.listen = local.listen;
        candidate.agents = local.agents;
        candidate.models = local.models;
        candidate.tags = local.tags;
        let size = serde_json::to_vec(&candidate)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_RECORD_BYTES {
            return Err(UpdateError::RecordTooLarge {
                size,
                limit: MAX_RECORD_BYTES,
            });
        }
        self.own = candidate;
        self.own_dirty = true;
        self.work_pending = true;
        Ok(())
    }

    fn publish_own(&mut self) {
        for l in self.links.values_mut() {
            if let Some(bucket) = l.readvertise() {
                l.advertised_rtt = bucket;
            }
        }
        self.own.links = self
            .links
            .values()
            .map(|l| LinkInfo {
                peer: l.peer.clone(),
                rtt_ms: l.advertised_rtt,
            })
            .collect();
        self.own.links.sort_by(|a, b| a.peer.cmp(&b.peer));
        // Stamps stay within MAX_RECORD_STAMP (records past it are refused everywhere): at the
        // last version the incarnation moves on; at the last of both (only a forged copy of
        // our record can get us there) we keep publishing at that stamp.
        if self.own.version < MAX_RECORD_STAMP {
            self.own.version += 1;
        } else if self.own.incarnation < MAX_RECORD_STAMP {
            self.own.incarnation += 1;
            self.own.version = 1;
        }
        self.own_dirty = false;
        self.rtt_bump_pending = false;
        self.routes_dirty = true;
        self.flood.push((self.cfg.node_id.clone(), None));
    }

    // ----- inbound data ------------------------------------------------------------------

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
        self.stats.decode_errors += 1;
        *self
            .stats
            .decode_errors_by_code
            .entry(e.code().to_string())
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
        l.ping.on_activity();
        let peer = l.peer.clone();
        if frame.header.dst.is_none() {
            if frame.header.src != peer {
                self.stats.dropped_spoofed += 1;
                return;
            }
            self.handle_link_local(now, link, frame.header.body);
        } else {
            self.handle_routed(now, link, frame);
        }
    }

    fn handle_link_local(&mut self, now: u64, link: LinkId, body: Body) {
        match body {
            Body::Ping { seq, t } => self.send_local(now, link, Body::Pong { seq, t }),
            Body::Pong { seq, t } => self.on_pong(now, link, seq, t),
            Body::Digest { entries, sum, ask } => match sum {
                Some(theirs) => self.on_digest_sum(now, link, theirs),
                None => self.on_digest(now, link, entries, ask),
            },
            Body::Gossip { records } => {
                for r in records {
                    self.on_record(now, Some(link), r);
                }
            }
            Body::Leave { node, incarnation } => {
                if let Err(why) = check_leave(&node, incarnation) {
                    self.refuse_record(why);
                } else if node != self.cfg.node_id && self.records.leave(&node, incarnation, now) {
                    self.event(MeshEvent::Left { node: node.clone() });
                    self.leaves.push((node, incarnation, Some(link)));
                    self.routes_dirty = true;
                    self.work_pending = true;
                }
            }
            // A leave for us or one that changes nothing; routed bodies never get here
            // (decode_header guarantees they carry a dst).
            _ => {}
        }
    }

    fn on_pong(&mut self, now: u64, link: LinkId, seq: u64, t: u64) {
        let interval = self.cfg.heartbeat_interval_ms;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.ping.on_pong(now, seq, t).is_none() {
            return;
        }
        // Only a change of the advertised bucket is worth a record version (see `link`).
        let significant = l.readvertise().is_some();
        if significant {
            self.routes_dirty = true;
            self.work_pending = true;
            match self.last_rtt_bump {
                Some(b) if now < b.saturating_add(interval) => self.rtt_bump_pending = true,
                _ => {
                    self.last_rtt_bump = Some(now);
                    self.own_dirty = true;
                }
            }
        }
    }

    fn on_record(&mut self, now: u64, from: Option<LinkId>, r: NodeRecord) {
        if let Err(why) = check_record(&r) {
            self.refuse_record(why);
            return;
        }
        if r.node == self.cfg.node_id {
            self.on_own_record_copy(r.stamp());
            return;
        }
        if !self.records.would_take(&r.node, r.stamp()) {
            self.stats.records_ignored += 1;
            return;
        }
        // Only a record we would store pays for the exact size (a serialization).
        let size = serde_json::to_vec(&r).map_or(usize::MAX, |v| v.len());
        if size > MAX_RECORD_BYTES {
            self.refuse_record("too_large");
            return;
        }
        let node = r.node.clone();
        let version = r.version;
        match self.records.merge(r, now) {
            Merge::Accepted => {
                self.stats.records_accepted += 1;
                self.event(MeshEvent::RecordChanged {
                    node: node.clone(),
                    version,
                });
                self.flood.push((node, from));
                self.routes_dirty = true;
                self.work_pending = true;
            }
            Merge::Ignored => self.stats.records_ignored += 1,
            Merge::Full => self.refuse_record("full"),
            Merge::OverBudget => self.refuse_record("budget"),
        }
        self.stats.records_held_bytes = self.records.held() as u64;
    }

    fn refuse_record(&mut self, why: &'static str) {
        self.stats.records_ignored += 1;
        *self
            .stats
            .records_refused
            .entry(why.to_string())
            .or_insert(0) += 1;
    }

    /// A copy of our own record came back. An echo of what we published (same or older
    /// stamp: it went around a loop) changes nothing: re-versioning on an echo is what made
    /// meshes with loops flood themselves at rest. A copy *newer* than ours (we restarted
    /// within the same incarnation, or someone forged one) never replaces what we own: we
    /// publish our own content again with a stamp just past it, so every node prefers ours.
    fn on_own_record_copy(&mut self, stamp: (u64, u64)) {
        if stamp <= self.own.stamp() {
            self.stats.own_record_echoes += 1;
            return;
        }
        self.stats.own_record_superseded += 1;
        let (incarnation, version) = stamp;
        // The version is bumped once more when we publish.
        self.own.incarnation = incarnation;
        self.own.version = version;
        self.own_dirty = true;
        self.work_pending = true;
    }

    fn on_digest(&mut self, now: u64, link: LinkId, entries: Vec<(NodeId, u64, u64)>, ask: bool) {
        let theirs: HashMap<NodeId, (u64, u64)> =
            entries.into_iter().map(|(n, i, v)| (n, (i, v))).collect();
        let newer = |r: &NodeRecord| theirs.get(&r.node).is_none_or(|s| *s < r.stamp());
        let mut out: Vec<NodeRecord> = self.records.live().filter(|r| newer(r)).cloned().collect();
        if newer(&self.own) {
            out.push(self.own.clone());
        }
        self.send_gossip(now, link, out);
        if ask {
            self.send_digest(now, link, false);
        }
    }

    /// Every `(node, incarnation, version)` we would put in a full digest, in node-id order.
    fn digest_entries(&self) -> Vec<(&str, u64, u64)> {
        let mut entries: Vec<(&str, u64, u64)> = self
            .records
            .live()
            .map(|r| (r.node.as_str(), r.incarnation, r.version))
            .collect();
        let own = (
            self.own.node.as_str(),
            self.own.incarnation,
            self.own.version,
        );
        let at = entries.partition_point(|e| e.0 < own.0);
        entries.insert(at, own);
        entries
    }

    /// A summary digest: if it matches our own set, both sides hold the same records and
    /// nothing is sent; otherwise we send our full digest and ask for theirs, which repairs
    /// both sides exactly as a full exchange at link up does.
    fn on_digest_sum(&mut self, now: u64, link: LinkId, theirs: DigestSum) {
        let ours = DigestSum::of(self.digest_entries().into_iter());
        if ours == theirs {
            self.stats.digest_sums_matched += 1;
        } else {
            self.stats.digest_sums_differed += 1;
            self.send_digest(now, link, true);
        }
    }

    /// Periodic anti-entropy on `link`: the summary form, one hash whatever the mesh size
    /// (every peer speaks wire version 2, which has it).
    fn send_anti_entropy(&mut self, now: u64, link: LinkId) {
        let sum = DigestSum::of(self.digest_entries().into_iter());
        self.stats.digests_out += 1;
        let body = Body::Digest {
            entries: Vec::new(),
            sum: Some(sum),
            ask: false,
        };
        self.send_local(now, link, body);
    }

    /// The full digest, split so every header stays under the batch budget. `ask` asks the
    /// peer to answer with its own full digest too.
    fn send_digest(&mut self, now: u64, link: LinkId, ask: bool) {
        let entries: Vec<(NodeId, u64, u64)> = self
            .digest_entries()
            .into_iter()
            .map(|(n, i, v)| (n.to_string(), i, v))
            .collect();
        let digest = |entries| Body::Digest {
            entries,
            sum: None,
            ask,
        };
        let mut batch = Vec::new();
        let mut size = 0;
        for e in entries {
            let est = e.0.len() + 48;
            if size + est > GOSSIP_BATCH_BYTES && !batch.is_empty() {
                self.stats.digests_out += 1;
                let entries = std::mem::take(&mut batch);
                self.send_local(now, link, digest(entries));
                size = 0;
            }
            size += est;
            batch.push(e);
        }
        if !batch.is_empty() {
            self.stats.digests_out += 1;
            self.send_local(now, link, digest(batch));
        }
    }

    /// Gossip frames for `records`, batched like [`Mesh::send_gossip`], encoded once.
    fn gossip_frames(&mut self, now: u64, records: Vec<NodeRecord>) -> Vec<Arc<[u8]>> {
        let mut frames = Vec::new();
        let mut batches: Vec<Vec<NodeRecord>> = Vec::new();
        let mut batch = Vec::new();
        let mut size = 0;
        for r in records {
            let est = approx_record_bytes(&r);
            if est > MAX_RECORD_BYTES {
                self.stats.records_ignored += 1;
                continue;
            }
            if size + est > GOSSIP_BATCH_BYTES && !batch.is_empty() {
                batches.push(std::mem::take(&mut batch));
                size = 0;
            }
            size += est;
            batch.push(r);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for records in batches {
            let h = self.header(now, None, Body::Gossip { records });
            match codec::encode(&h, &[]) {
                Ok(bytes) => frames.push(Arc::from(bytes)),
                // Only reachable with absurd records; the batcher keeps headers small.
                Err(_) => self.stats.dropped_backpressure += 1,
            }
        }
        frames
    }

    fn send_gossip(&mut self, now: u64, link: LinkId, records: Vec<NodeRecord>) {
        let mut batch = Vec::new();
        let mut size = 0;
        for r in records {
            let est = approx_record_bytes(&r);
            if est > MAX_RECORD_BYTES {
                self.stats.records_ignored += 1;
                continue;
            }
            if size + est > GOSSIP_BATCH_BYTES && !batch.is_empty() {
                self.stats.gossip_frames_out += 1;
                let records = std::mem::take(&mut batch);
                self.send_local(now, link, Body::Gossip { records });
                size = 0;
            }
            size += est;
            batch.push(r);
        }
        if !batch.is_empty() {
            self.stats.gossip_frames_out += 1;
            self.send_local(now, link, Body::Gossip { records: batch });
        }
    }

    fn handle_routed(&mut self, now: u64, link: LinkId, frame: Frame) {
        let Frame {
            mut header,
            payload,
        } = frame;
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
        let dst = header.dst.clone().unwrap_or_default();
        if header.ttl <= 1 {
            self.stats.dropped_ttl += 1;
            self.bounce(now, &header);
            return;
        }
        self.refresh_routes(now);
        let next = self
            .routes
            .get(&dst)
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

    fn deliver(&mut self, now: u64, header: Header, payload: Vec<u8>) {
        let src = header.src.clone();
        if let Some(e) = self.records.get_mut(&src) {
            e.last_seen = now;
        }
        let tracked = |c: &Option<&CallState>| c.is_some_and(|c| c.dst == src);
        match &header.body {
            Body::Reply { call_id, .. } | Body::End { call_id, .. }
                if tracked(&self.calls.get(call_id)) =>
            {
                self.calls.remove(call_id);
            }
            Body::Chunk { call_id, .. } if tracked(&self.calls.get(call_id)) => {
                self.calls.touch(call_id, now);
            }
            Body::Unreachable { call_id, .. } => {
                if let Some(c) = self.calls.remove(call_id) {
                    self.fail_call(*call_id, c.dst, CallFailure::Unreachable);
                    return;
                }
            }
            _ => {}
        }
        self.stats.delivered += 1;
        self.outputs.push_back(Output::Deliver {
            from: src,
            header,
            payload,
        });
    }

    fn fail_call(&mut self, call_id: CallId, dst: NodeId, reason: CallFailure) {
        self.stats.calls_failed += 1;
        self.event(MeshEvent::CallFailed {
            call_id,
            dst,
            reason,
        });
    }

    // ----- sending -----------------------------------------------------------------------

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

    /// Send `call` to `dst` and track it until `reply`/`end`, the inactivity deadline
    /// (`deadline_ms`, extended by every `chunk`), or `dst` becoming unreachable.
    pub fn start_call(
        &mut self,
        now: u64,
        dst: NodeId,
        method: String,
        payload: Vec<u8>,
        deadline_ms: u64,
    ) -> Result<CallId, SendError> {
        if !self.calls.has_room() {
            return Err(SendError::TooManyCalls(self.cfg.max_inflight_calls));
        }
        let call_id = CallId(self.new_id());
        let body = Body::Call {
            call_id,
            method: method.clone(),
            deadline_ms: Some(deadline_ms),
        };
        self.send(now, dst.clone(), body, payload)?;
        self.stats.calls_started += 1;
        self.calls.insert(
            call_id,
            CallState {
                dst,
                method,
                deadline_ms,
                deadline_at: now.saturating_add(deadline_ms),
            },
        );
        self.work_pending = true;
        Ok(call_id)
    }

    /// Give up on a call: send `cancel` (best effort) and forget it. `false` if unknown.
    pub fn cancel_call(&mut self, now: u64, call_id: CallId, reason: &str) -> bool {
        let Some(c) = self.calls.remove(&call_id) else {
            return false;
        };
        let body = Body::Cancel {
            call_id,
            reason: reason.to_string(),
        };
        let _ = self.send(now, c.dst, body, Vec::new());
        true
    }

    /// The consumer of call `call_id` made progress (took a buffered chunk): push its
    /// inactivity deadline to `now + deadline_ms`. `false` if the call is unknown.
    pub fn touch_call(&mut self, now: u64, call_id: CallId) -> bool {
        self.touch(now);
        if self.calls.get(&call_id).is_none() {
            return false;
        }
        self.calls.touch(&call_id, now);
        true
    }

    /// Grant the server of stream `call_id` `chunks` more chunks (flow control): sends `credit`
    /// and, because the consumer is making progress, pushes the inactivity deadline too.
    /// `false` if the call is unknown.
    pub fn send_credit(&mut self, now: u64, call_id: CallId, chunks: u64) -> bool {
        let Some(dst) = self.calls.get(&call_id).map(|c| c.dst.clone()) else {
            return false;
        };
        self.calls.touch(&call_id, now);
        let _ = self.send(now, dst, Body::Credit { call_id, chunks }, Vec::new());
        true
    }

    // ----- timers ------------------------------------------------------------------------

    /// Run everything due at `now` (see the module docs for the order).
    pub fn handle_tick(&mut self, now: u64) {
        self.touch(now);
        if self.shut_down {
            return;
        }
        self.work_pending = false;
        self.heartbeats(now);
        if now >= self.next_anti_entropy {
            self.next_anti_entropy = now.saturating_add(self.cfg.anti_entropy_interval_ms);
            if !self.links.is_empty() {
                let i = (self.rand() % self.links.len() as u64) as usize;
                if let Some(&link) = self.links.keys().nth(i) {
                    self.send_anti_entropy(now, link);
                }
            }
        }
        if self.rtt_bump_pending
            && self
                .last_rtt_bump
                .is_some_and(|b| now >= b.saturating_add(self.cfg.heartbeat_interval_ms))
        {
            self.last_rtt_bump = Some(now);
            self.own_dirty = true;
        }
        if self.own_dirty {
            self.publish_own();
        }
        self.flush_floods(now);
        self.refresh_routes(now);
        self.forget(now);
        for (call_id, c) in self.calls.take_expired(now) {
            let body = Body::Cancel {
                call_id,
                reason: "deadline".to_string(),
            };
            let _ = self.send(now, c.dst.clone(), body, Vec::new());
            self.fail_call(call_id, c.dst, CallFailure::Deadline);
        }
        // Sending above may have refreshed routes; nothing else is deferred now.
        self.work_pending = false;
    }

    fn heartbeats(&mut self, now: u64) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            let jitter = self.rand();
            let Some(l) = self.links.get_mut(&id) else {
                continue;
            };
            match l.ping.poll(now, jitter) {
                PingAction::Idle => {}
                PingAction::Send { seq } => {
                    self.stats.pings_out += 1;
                    self.send_local(now, id, Body::Ping { seq, t: now });
                }
                PingAction::Dead => {
                    self.stats.heartbeat_timeouts += 1;
                    self.drop_link(now, id, DownReason::HeartbeatTimeout);
                    self.close(id, CLOSE_HEARTBEAT_TIMEOUT, "heartbeat_timeout");
                }
            }
        }
    }

    fn flush_floods(&mut self, now: u64) {
        let flood = std::mem::take(&mut self.flood);
        let leaves = std::mem::take(&mut self.leaves);
        if flood.is_empty() && leaves.is_empty() {
            return;
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        // Links that get the same records get the same frames, encoded once (usually every
        // link gets the same set: our own record, or records minus the link they came from).
        let mut encoded: Vec<(Vec<NodeId>, SharedFrames)> = Vec::new();
        for link in links {
            let mut seen = std::collections::HashSet::new();
            let names: Vec<NodeId> = flood
                .iter()
                .filter(|(_, from)| *from != Some(link))
                .filter(|(n, _)| seen.insert(n.clone()))
                .map(|(n, _)| n.clone())
                .collect();
            let frames = match encoded.iter().find(|(k, _)| *k == names) {
                Some((_, frames)) => frames.clone(),
                None => {
                    let records: Vec<NodeRecord> = names
                        .iter()
                        .filter_map(|n| {
                            if *n == self.cfg.node_id {
                                Some(self.own.clone())
                            } else {
                                self.records
                                    .get(n)
                                    .filter(|e| e.left_at.is_none())
                                    .map(|e| e.record.clone())
                            }
                        })
                        .collect();
                    let frames = self.gossip_frames(now, records);
                    encoded.push((names, frames.clone()));
                    frames
                }
            };
            for bytes in frames {
                self.stats.gossip_frames_out += 1;
                self.push(Output::SendShared { link, bytes });
            }
            for (node, incarnation, from) in &leaves {
                if *from != Some(link) {
                    let body = Body::Leave {
                        node: node.clone(),
                        incarnation: *incarnation,
                    };
                    self.send_local(now, link, body);
                }
            }
        }
    }

    /// Recompute routes if anything changed; emit reachability events and fail calls whose
    /// destination has no route any more.
    fn refresh_routes(&mut self, now: u64) {
        if !self.routes_dirty {
            return;
        }
        self.routes_dirty = false;
        // Weigh our own links with the RTT we advertised, not the live one: every node must
        // compute routes over the same edge weights, or hop-by-hop forwarding can bounce a frame
        // back the way it came (dropped as a loop) while views disagree.
        let own_links: Vec<(NodeId, u32)> = self
            .links
            .values()
            .map(|l| (l.peer.clone(), l.advertised_rtt))
            .collect();
        let new = routes::compute(&self.cfg.node_id, &own_links, self.records.live());
        let old = std::mem::replace(&mut self.routes, new);
        let mut events = Vec::new();
        for (node, e) in self.records.iter_mut() {
            match (old.get(node), self.routes.get(node)) {
                (o, Some(n)) => {
                    e.unreachable_since = None;
                    if o.is_none_or(|o| o.next_hop != n.next_hop) {
                        events.push(MeshEvent::Reachable {
                            node: node.clone(),
                            next_hop: n.next_hop.clone(),
                            hops: n.hops,
                        });
                    }
                }
                (Some(_), None) => {
                    e.unreachable_since.get_or_insert(now);
                    events.push(MeshEvent::Unreachable { node: node.clone() });
                }
                (None, None) => {
                    e.unreachable_since.get_or_insert(now);
                }
            }
        }
        for ev in events {
            self.event(ev);
        }
        let routes = &self.routes;
        for (call_id, c) in self.calls.take_where(|c| routes.get(&c.dst).is_none()) {
            self.fail_call(call_id, c.dst, CallFailure::Unreachable);
        }
    }

    fn forget(&mut self, now: u64) {
        self.records.expire_tombstones(now);
        let after = self.cfg.forget_after_ms;
        let due: Vec<NodeId> = self
            .records
            .iter()
            .filter(|(_, e)| {
                e.unreachable_since
                    .or(e.left_at)
                    .is_some_and(|s| now >= s.saturating_add(after))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for node in due {
            if self.records.forget(&node, now.saturating_add(after)) {
                self.event(MeshEvent::Forgotten { node });
                self.routes_dirty = true;
            }
        }
        self.stats.records_held_bytes = self.records.held() as u64;
        self.refresh_routes(now);
    }
}
