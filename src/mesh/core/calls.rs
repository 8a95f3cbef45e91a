//! Calls we originate: starting one (tracked in [`Calls`](crate::mesh::calls::Calls)),
//! cancelling, consumer progress and stream credit, failing calls at their inactivity deadline,
//! and delivering frames addressed to us (a `reply` or `end` closes its tracked call, a
//! `chunk` extends it, an `unreachable` fails it).

use super::Mesh;
use crate::mesh::calls::CallState;
use crate::mesh::{CallFailure, MeshEvent, Output, SendError};
use crate::proto::{Body, CallId, Header, NodeId};

impl Mesh {
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
                next_seq: 0,
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
        let urgent = c.answered();
        let _ = self.send_as(now, c.dst, body, Vec::new(), urgent);
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

    pub(super) fn deliver(&mut self, now: u64, header: Header, payload: Vec<u8>) {
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
            Body::Chunk { call_id, seq } if tracked(&self.calls.get(call_id)) => {
                let in_order = self.calls.get_mut(call_id).is_some_and(|c| {
                    let ok = c.next_seq == *seq;
                    c.next_seq = c.next_seq.saturating_add(1);
                    ok
                });
                if !in_order {
                    // A relay dropped, replayed or reordered a chunk: the stream is broken.
                    self.refuse_e2e(now, &src, Some(*call_id), "seq");
                    return;
                }
                self.calls.touch(call_id, now);
            }
            // Only about the call's own destination: any other node named is a lie. (A bounce
            // about a call we serve goes on to the shell.)
            Body::Unreachable { call_id, node }
                if self.calls.get(call_id).is_some_and(|c| c.dst == *node) =>
            {
                if let Some(c) = self.calls.remove(call_id) {
                    self.fail_call(*call_id, c.dst, CallFailure::Unreachable);
                }
                return;
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

    pub(super) fn fail_call(&mut self, call_id: CallId, dst: NodeId, reason: CallFailure) {
        self.stats.calls_failed += 1;
        self.event(MeshEvent::CallFailed {
            call_id,
            dst,
            reason,
        });
    }

    /// At the tick: every call past its inactivity deadline gets a best-effort `cancel` and
    /// fails with [`CallFailure::Deadline`].
    pub(super) fn expire_calls(&mut self, now: u64) {
        for (call_id, c) in self.calls.take_expired(now) {
            let body = Body::Cancel {
                call_id,
                reason: "deadline".to_string(),
            };
            let _ = self.send_as(now, c.dst.clone(), body, Vec::new(), c.answered());
            self.fail_call(call_id, c.dst, CallFailure::Deadline);
        }
    }
}

impl Mesh {
    /// A routed frame from `node` for us failed the end-to-end check (or a stream chunk came
    /// out of order): count it, tell the shell (which cancels a call it serves with that id),
    /// and fail our own call with that id to that node: its stream can no longer be trusted.
    pub(super) fn refuse_e2e(
        &mut self,
        now: u64,
        node: &str,
        call_id: Option<CallId>,
        reason: &'static str,
    ) {
        *self
            .stats
            .e2e_refused
            .entry(reason.to_string())
            .or_insert(0) += 1;
        self.event(MeshEvent::IntegrityFailed {
            node: node.to_string(),
            call_id,
            reason,
        });
        let Some(call_id) = call_id else {
            return;
        };
        if self.calls.get(&call_id).is_some_and(|c| c.dst == node) {
            if let Some(c) = self.calls.remove(&call_id) {
                let body = Body::Cancel {
                    call_id,
                    reason: "integrity".to_string(),
                };
                let _ = self.send_as(now, c.dst.clone(), body, Vec::new(), c.answered());
                self.fail_call(call_id, c.dst, CallFailure::Integrity);
            }
        }
    }
}
