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
//!
//! # Layout
//! One struct, [`Mesh`], with its `impl` split by concern:
//! - this file — the struct, construction, accessors, the output queue, frame headers and ids,
//!   and the timers (`poll_timeout`, `handle_tick`, which calls into the files below in order).
//! - `links` — link lifecycle: admission, link up (duplicate tie-break) and down, shutdown,
//!   heartbeats and pongs.
//! - `inbound` — one message from a link: decode, count errors, dispatch link-local bodies;
//!   routed ones go to `relay`.
//! - `gossip` — other nodes' records: checks, merge, leaves, digests and anti-entropy, gossip
//!   batching and the per-tick flood.
//! - `own` — our own record: `update_local`, publishing a new version (RTT re-advertising
//!   included), copies of it coming back.
//! - `reach` — reachability: route recomputation and its events, forgetting unreachable
//!   nodes, the `peers` view and target resolution.
//! - `relay` — routed frames: sending ours, forwarding others' (TTL, dedup, loops), bouncing
//!   undeliverable calls.
//! - `calls` — calls we originate: start, cancel, credit, deadlines, and delivery of frames
//!   addressed to us (which ends or extends a tracked call).

mod calls;
mod gossip;
mod inbound;
mod links;
mod liveness;
mod own;
mod reach;
mod relay;

use super::calls::Calls;
use super::dedup::DedupCache;
use super::e2e::E2e;
use super::health::LocalHealth;
use super::link::{Link, LinkId};
use super::records::RecordStore;
use super::routes::RouteTable;
use super::stats::MeshStats;
use super::trust::TrustBook;
use super::{LocalInfo, MeshConfig, MeshEvent, Output, MAX_RECORD_STAMP};
use crate::proto::codec;
use crate::proto::frame::ENVELOPE_VERSION;
use crate::proto::signed::SignedRecord;
use crate::proto::{Body, FrameId, Header, NodeId, NodeRecord};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// The mesh core. See the module docs for the flow.
#[derive(Debug)]
pub struct Mesh {
    cfg: MeshConfig,
    own: NodeRecord,
    /// `own` as signed and sent (length, JSON, signature); re-signed on every publish.
    own_wire: Arc<[u8]>,
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
    leaves: Vec<(NodeId, u64, crate::proto::Sig64, Option<LinkId>)>,
    dedup: DedupCache,
    trust: TrustBook,
    e2e: E2e,
    health: LocalHealth,
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

impl Mesh {
    /// A core with no links. `now` starts the anti-entropy clock.
    pub fn new(cfg: MeshConfig, local: LocalInfo, now: u64) -> Self {
        let own = NodeRecord {
            node: cfg.node_id.clone(),
            incarnation: cfg.incarnation.min(MAX_RECORD_STAMP),
            version: 1,
            key: cfg.identity.public(),
            xkey: cfg.exchange.public(),
            listen: local.listen,
            agents: local.agents,
            models: local.models,
            tags: local.tags,
            links: Vec::new(),
        };
        let rng = cfg.rng_seed ^ fnv(&cfg.node_id) ^ cfg.incarnation.rotate_left(17);
        let max_learned = cfg.max_nodes.saturating_mul(2);
        let trust = TrustBook::new(
            cfg.pins.clone(),
            cfg.revoked.clone(),
            cfg.trusted.iter().cloned(),
            max_learned,
        );
        let e2e = E2e::new(
            cfg.node_id.clone(),
            cfg.identity.public(),
            cfg.exchange.clone(),
        );
        let own_wire = sign(&own, &cfg);
        Mesh {
            trust,
            e2e,
            health: LocalHealth::new(now),
            own_wire,
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

    /// Our node id.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// Our current record.
    pub fn own_record(&self) -> &NodeRecord {
        &self.own
    }

    /// Local health score, 0 (healthy) to [`super::health::MAX_SCORE`].
    pub fn local_health(&self) -> u32 {
        self.health.score()
    }

    /// A link's silence timeout at full health: `heartbeat_interval_ms × heartbeat_misses`.
    fn base_timeout_ms(&self) -> u64 {
        self.cfg
            .heartbeat_interval_ms
            .saturating_mul(u64::from(self.cfg.heartbeat_misses.max(1)))
    }

    /// Least time between two record versions for RTT changes alone: the heartbeat interval,
    /// but never under one slot of the RTT window (a 1 s heartbeat must not flood 15 times
    /// more RTT updates than 0.1.8's 15 s one).
    fn rtt_bump_interval_ms(&self) -> u64 {
        self.cfg
            .heartbeat_interval_ms
            .max(crate::mesh::ping::MIN_RTT_SLOT_MS)
    }

    /// Counters.
    pub fn stats(&self) -> MeshStats {
        MeshStats {
            // Read from the store, not kept in step with it by hand.
            records_held_bytes: self.records.held() as u64,
            local_health: u64::from(self.health.score()),
            ..self.stats.clone()
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MeshConfig {
        &self.cfg
    }

    /// Routes as of the last tick.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Ids in the dedup cache (≤ `dedup_capacity`).
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }

    /// In-flight calls we originated.
    pub fn inflight_calls(&self) -> usize {
        self.calls.len()
    }

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
        let scale = self.health.scale();
        for l in self.links.values() {
            at(l.ping.deadline(scale));
        }
        if let Some(d) = self.health.next_decay(self.base_timeout_ms()) {
            at(d);
        }
        if !self.links.is_empty() {
            at(self.next_anti_entropy);
        }
        if self.rtt_bump_pending {
            if let Some(b) = self.last_rtt_bump {
                at(b.saturating_add(self.rtt_bump_interval_ms()));
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

    /// Run everything due at `now` (see the module docs for the order).
    pub fn handle_tick(&mut self, now: u64) {
        self.touch(now);
        if self.shut_down {
            return;
        }
        self.work_pending = false;
        self.heartbeats(now);
        self.anti_entropy(now);
        self.rtt_bump(now);
        if self.own_dirty {
            self.publish_own();
        }
        self.flush_floods(now);
        self.refresh_routes(now);
        self.forget(now);
        self.expire_calls(now);
        // Sending above may have refreshed routes; nothing else is deferred now.
        self.work_pending = false;
    }

    // `#[inline]` on the small helpers below: every file of the core calls them on per-frame
    // paths, and the hint keeps them inlinable across codegen units now that the impl spans
    // several files.
    #[inline]
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

    #[inline]
    fn event(&mut self, e: MeshEvent) {
        self.outputs.push_back(Output::Event(e));
    }

    #[inline]
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

    /// Sign our record as it is now (after every change to it).
    fn sign_own(&mut self) {
        self.own_wire = sign(&self.own, &self.cfg);
    }

    fn send_local(&mut self, now: u64, link: LinkId, body: Body) {
        // Liveness frames: a probe about a silent peer is as time-critical as a ping.
        let urgent = matches!(
            body,
            Body::Ping { .. } | Body::Pong { .. } | Body::Probe { .. } | Body::ProbeAck { .. }
        );
        let h = self.header(now, None, body);
        match codec::encode(&h, &[]) {
            Ok(bytes) => self.push(Output::Send {
                link,
                bytes,
                urgent,
            }),
            // Only reachable with absurd records; the batchers keep headers small.
            Err(_) => self.stats.dropped_backpressure += 1,
        }
    }
}

/// `own` signed with our node key, in its wire form. Serializing our own plain record cannot
/// fail; should it, an empty wire is sent, which every receiver refuses, rather than a panic.
fn sign(own: &NodeRecord, cfg: &MeshConfig) -> Arc<[u8]> {
    SignedRecord::sign(own.clone(), &cfg.identity)
        .map(|s| s.wire)
        .unwrap_or_else(|_| Arc::from(Vec::new()))
}
