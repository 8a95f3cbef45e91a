//! The actor's side of links: the live link table (each link's writer queue and its
//! slow-peer accounting), carrying out the core's outputs, and the log line per mesh event.

use super::*;

pub(super) struct LinkEntry {
    pub(super) peer: NodeId,
    pub(super) direction: Direction,
    pub(super) addr: String,
    pub(super) queue: QueueSender,
    /// Frames dropped on this link because its queue was full.
    pub(super) dropped: u64,
    /// Frames dropped since the queue was last at most half full.
    pub(super) drops_while_full: u32,
    /// When the queue first refused a frame since it was last at most half full.
    pub(super) full_since: Option<Instant>,
}

impl Actor {
    /// Before a tick: a link the core suspects whose reader saw bytes of an unfinished message
    /// arrive is talking, however long that message takes (see `mesh::ping`).
    pub(super) fn note_rx_progress(&mut self, now: u64) {
        let suspects: Vec<LinkId> = self.mesh.suspected_links().collect();
        for link in suspects {
            let Some(age) = self
                .links
                .get(&link)
                .and_then(|e| e.queue.rx_progress_age())
            else {
                continue;
            };
            self.mesh
                .handle_link_activity(now.saturating_sub(age), link);
        }
    }

    /// Everything the core wants done: frames to links, closes, deliveries, events.
    pub(super) fn drain_outputs(&mut self) {
        while let Some(out) = self.mesh.poll_output() {
            self.dirty = true;
            match out {
                Output::Send {
                    link,
                    bytes,
                    urgent,
                } => self.send_to_link(link, LinkOut::Frame(bytes), urgent),
                Output::SendShared { link, bytes } => {
                    self.send_to_link(link, LinkOut::Shared(bytes), false)
                }
                Output::Close { link, code, reason } => {
                    self.close_link(link, code, &reason, true);
                }
                Output::Deliver {
                    from,
                    header,
                    payload,
                } => self.dispatch(from, header, payload),
                Output::Event(e) => self.on_event(e),
            }
        }
    }

    /// Queue one frame on a link without ever waiting (house rule: edges out use try_send).
    fn send_to_link(&mut self, link: LinkId, bytes: LinkOut, urgent: bool) {
        let Some(e) = self.links.get_mut(&link) else {
            // The link task already ended; its LinkDown is on the way.
            return;
        };
        // A shared frame counts in full on every link that queues it (a conservative bound).
        match e.queue.try_push(bytes, urgent) {
            // Small frames may still slip into a queue that is full for big ones: only a
            // queue that drained to half of both bounds counts as having caught up.
            Ok(drained) => {
                if drained {
                    e.drops_while_full = 0;
                    e.full_since = None;
                }
                return;
            }
            Err(PushError::Full) => {}
            Err(PushError::Closed) => return,
        }
        e.dropped += 1;
        e.drops_while_full += 1;
        self.slow_peer_drops += 1;
        let since = *e.full_since.get_or_insert_with(Instant::now);
        if e.drops_while_full >= SLOW_PEER_MAX_DROPS || since.elapsed() >= SLOW_PEER_TIMEOUT {
            self.events.warn(format!(
                "mesh: closing link to {} ({}): {SLOW_PEER_REASON}; {} frames dropped, \
                 queue full for {} ms",
                e.peer,
                e.addr,
                e.dropped,
                since.elapsed().as_millis()
            ));
            self.slow_peer_closes += 1;
            self.mesh
                .handle_link_down(now_ms(self.epoch), link, SLOW_PEER_REASON.to_string());
            self.close_link(link, CLOSE_SLOW_PEER, SLOW_PEER_REASON, false);
        }
    }

    /// Forget a link and ask its task to close the socket.
    pub(super) fn close_link(&mut self, link: LinkId, code: u16, reason: &str, flush: bool) {
        if let Some(e) = self.links.remove(&link) {
            e.queue.close(CloseCmd {
                code,
                reason: reason.to_string(),
                flush,
            });
        }
    }

    /// One log line per mesh event; calls and served calls hear of what concerns them.
    pub(super) fn on_event(&mut self, e: MeshEvent) {
        self.urgent = true;
        let msg = match e {
            MeshEvent::PeerUp { node, link } => {
                let (dir, addr) = self
                    .links
                    .get(&link)
                    .map(|l| {
                        let dir = match l.direction {
                            Direction::Inbound => "inbound from",
                            Direction::Outbound => "outbound to",
                        };
                        (dir, l.addr.as_str())
                    })
                    .unwrap_or(("", ""));
                format!("mesh: link up with {node} ({dir} {addr})")
            }
            MeshEvent::PeerDown { node, reason, .. } => {
                let why = match reason {
                    DownReason::Closed(r) => format!("closed: {r}"),
                    DownReason::HeartbeatTimeout => "heartbeat timeout".to_string(),
                    DownReason::ProtocolError(r) => format!("protocol error: {r}"),
                    DownReason::Duplicate => "duplicate link".to_string(),
                    DownReason::Shutdown => "shutting down".to_string(),
                };
                format!("mesh: link down with {node}: {why}")
            }
            MeshEvent::Reachable {
                node,
                next_hop,
                hops,
            } => format!("mesh: {node} reachable via {next_hop} ({hops} hops)"),
            MeshEvent::Unreachable { node } => {
                self.cancel_served_from(&node);
                format!("mesh: {node} unreachable")
            }
            MeshEvent::Left { node } => format!("mesh: {node} left the mesh"),
            MeshEvent::Forgotten { node } => format!("mesh: {node} forgotten"),
            MeshEvent::RecordChanged { node, version } => {
                self.events.push(
                    Level::Debug,
                    format!("mesh: record of {node} is now v{version}"),
                );
                return;
            }
            MeshEvent::CallFailed {
                call_id,
                dst,
                reason,
            } => {
                self.fail_call(call_id, &dst, reason);
                return;
            }
            MeshEvent::KeyLearned { node, key } => {
                (self.trust)(TrustChange::Learned {
                    node: node.clone(),
                    key,
                });
                format!(
                    "mesh: trusting {node} with node key {} (first seen)",
                    Fingerprint::of(&key)
                )
            }
            MeshEvent::KeyRefused {
                node,
                offered,
                reason,
                trusted,
                via,
            } => {
                (self.trust)(TrustChange::Refused {
                    node: node.clone(),
                    offered,
                });
                let trusted = trusted
                    .map(|t| format!(", trusted key {t}"))
                    .unwrap_or_default();
                self.events.push(
                    Level::Error,
                    format!(
                        "mesh: REFUSED node key {} for {node} ({reason}{trusted}, in a {via}); \
                         if {node} was reinstalled with a new key, check it with its operator, \
                         then reset its trust: openclaw clawmatrix trust reset {node}",
                        Fingerprint::of(&offered)
                    ),
                );
                return;
            }
            MeshEvent::IntegrityFailed {
                node,
                call_id,
                reason,
            } => {
                // Counted by the core; a call we serve with that id from that node is
                // cancelled, since its caller's frames can no longer be trusted.
                if let Some(call_id) = call_id {
                    if self.served.contains_key(&(node.clone(), call_id)) {
                        self.cancel_served(&node, call_id);
                        self.events.warn(format!(
                            "mesh: a frame of call {call_id} from {node} failed the \
                             end-to-end check ({reason}); the call was cancelled"
                        ));
                    }
                }
                return;
            }
        };
        self.events.info(msg);
    }
}
