//! The actor's side of calls: requests and streams started here (pending table, stream
//! channels and their credit), calls served here (the served table, one task per call, credit
//! and cancel), and the application dispatch of frames addressed to this node.

use super::*;
use crate::rpc::port::OpenedStream;
use crate::rpc::Service;

/// A stream we opened.
pub(super) struct OpenStream {
    pub(super) dst: NodeId,
    pub(super) tx: mpsc::Sender<StreamMsg>,
    /// Chunks the server may still send (window plus grants minus chunks received).
    pub(super) allowed: u64,
    pub(super) deadline_ms: u64,
    /// Chunks the consumer took (written by the `CallStream`), and the value last seen here.
    pub(super) taken: Arc<AtomicU64>,
    pub(super) seen_taken: u64,
}

/// A call we serve.
pub(super) struct Served {
    pub(super) credit: Arc<Semaphore>,
    pub(super) cancel: watch::Sender<bool>,
    pub(super) chunks: u64,
    pub(super) cancelled: bool,
}

impl Drop for Served {
    /// A served call the actor forgets is over for the service too: when the actor is dropped
    /// (a panic and restart, or the node stopping) its services must stop their work (a remote
    /// exec's process tree, a handoff's agent run) instead of reading the dropped sender as
    /// "nobody can cancel any more". After a normal end the service has returned already.
    fn drop(&mut self) {
        let _ = self.cancel.send(true);
    }
}

pub(super) struct PendingRequest {
    pub(super) dst: NodeId,
    pub(super) timeout_ms: u64,
    pub(super) reply: oneshot::Sender<Result<Vec<u8>>>,
}

impl Actor {
    /// A command from a feature (through [`MeshClient`], a [`CallStream`] or a served call).
    ///
    /// [`CallStream`]: crate::rpc::CallStream
    pub(super) fn command(&mut self, now: u64, cmd: Command) {
        match cmd {
            Command::Request {
                dst,
                method,
                payload,
                timeout_ms,
                reply,
            } => match self
                .mesh
                .start_call(now, dst.clone(), method, payload, timeout_ms)
            {
                Ok(call_id) => {
                    let pending = PendingRequest {
                        dst,
                        timeout_ms,
                        reply,
                    };
                    self.pending.insert(call_id, pending);
                }
                Err(e) => {
                    let _ = reply.send(Err(send_error(&dst, &e)));
                }
            },
            Command::OpenStream {
                dst,
                method,
                payload,
                deadline_ms,
                reply,
            } => self.open_stream(now, dst, method, payload, deadline_ms, reply),
            Command::StreamCredit { call_id, chunks } => {
                if let Some(s) = self.streams.get_mut(&call_id) {
                    s.allowed = s.allowed.saturating_add(chunks);
                    self.mesh.send_credit(now, call_id, chunks);
                }
            }
            Command::StreamCancel { call_id } => {
                if self.streams.remove(&call_id).is_some() {
                    self.mesh
                        .cancel_call(now, call_id, "cancelled by the caller");
                }
            }
            Command::ServedChunk {
                from,
                call_id,
                bytes,
            } => self.served_chunk(now, from, call_id, bytes),
            Command::ServedDone {
                from,
                call_id,
                result,
            } => self.served_done(now, from, call_id, result),
            Command::Resolve {
                target,
                exclude,
                reply,
            } => {
                let _ = reply.send(self.mesh.resolve(&target, &exclude));
            }
        }
    }

    /// Start a streamed call and hand its receiving end to the caller.
    fn open_stream(
        &mut self,
        now: u64,
        dst: NodeId,
        method: String,
        payload: Vec<u8>,
        deadline_ms: u64,
        reply: oneshot::Sender<Result<OpenedStream>>,
    ) {
        let call_id = match self
            .mesh
            .start_call(now, dst.clone(), method, payload, deadline_ms)
        {
            Ok(call_id) => call_id,
            Err(e) => {
                let _ = reply.send(Err(send_error(&dst, &e)));
                return;
            }
        };
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL);
        let taken = Arc::new(AtomicU64::new(0));
        self.streams.insert(
            call_id,
            OpenStream {
                dst,
                tx,
                allowed: STREAM_WINDOW_CHUNKS,
                deadline_ms,
                taken: Arc::clone(&taken),
                seen_taken: 0,
            },
        );
        if reply.send(Ok((call_id, rx, taken))).is_err() {
            self.streams.remove(&call_id);
            self.mesh.cancel_call(now, call_id, "caller gone");
        }
    }

    /// A served call's chunk (already within its credit) goes to the caller.
    fn served_chunk(&mut self, now: u64, from: NodeId, call_id: CallId, bytes: Vec<u8>) {
        let Some(s) = self.served.get_mut(&(from.clone(), call_id)) else {
            return;
        };
        if s.cancelled {
            return;
        }
        let seq = s.chunks;
        s.chunks += 1;
        let body = Body::Chunk { call_id, seq };
        if let Err(e) = self.mesh.send(now, from.clone(), body, bytes) {
            self.events.push(
                Level::Debug,
                format!("mesh: cannot stream to {from}: {e}; cancelling the call"),
            );
            self.cancel_served(&from, call_id);
        }
    }

    /// A served call finished: `end` after chunks, otherwise one `reply`.
    fn served_done(&mut self, now: u64, from: NodeId, call_id: CallId, result: Result<Vec<u8>>) {
        let Some(s) = self.served.remove(&(from.clone(), call_id)) else {
            return;
        };
        if s.cancelled {
            return;
        }
        let (ok, code, message, payload) = match result {
            Ok(p) => (true, None, None, p),
            Err(e) => (
                false,
                Some(e.code.as_str().to_string()),
                Some(e.message),
                Vec::new(),
            ),
        };
        let body = if s.chunks > 0 {
            Body::End {
                call_id,
                ok,
                code,
                message,
            }
        } else {
            Body::Reply {
                call_id,
                ok,
                code,
                message,
            }
        };
        if let Err(e) = self.mesh.send(now, from.clone(), body, payload) {
            self.events.push(
                Level::Debug,
                format!("mesh: cannot answer a call from {from}: {e}"),
            );
        }
    }

    /// Before call deadlines are checked: a stream whose consumer took chunks since the last
    /// check is making progress (it may be draining a full buffer while the server waits for
    /// credit), so its inactivity deadline restarts.
    pub(super) fn touch_streams(&mut self) {
        let now = now_ms(self.epoch);
        for (id, s) in &mut self.streams {
            let taken = s.taken.load(Ordering::Relaxed);
            if taken != s.seen_taken {
                s.seen_taken = taken;
                self.mesh.touch_call(now, *id);
            }
        }
    }

    /// Signal a served call's task to stop; its later chunks and result are dropped.
    pub(super) fn cancel_served(&mut self, from: &str, call_id: CallId) {
        if let Some(s) = self.served.get_mut(&(from.to_string(), call_id)) {
            s.cancelled = true;
            let _ = s.cancel.send(true);
            s.credit.close();
        }
    }

    /// Start serving a `call`: a trivial unary service answers inline; a registered service
    /// runs as its own task (bounded by [`MAX_SERVED_CALLS`]); anything else is refused.
    fn serve_call(
        &mut self,
        from: NodeId,
        call_id: CallId,
        method: String,
        payload: Vec<u8>,
        deadline_ms: Option<u64>,
    ) {
        let now = now_ms(self.epoch);
        let refuse = |code: &str, message: String| Body::Reply {
            call_id,
            ok: false,
            code: Some(code.to_string()),
            message: Some(message),
        };
        let key = (from.clone(), call_id);
        let answer = self
            .services
            .get(&method)
            .and_then(|s| s.answer_inline(&payload));
        let inline = answer.is_some();
        let (body, payload) = match (answer, self.services.get(&method)) {
            (Some(Ok(p)), _) => (
                Body::Reply {
                    call_id,
                    ok: true,
                    code: None,
                    message: None,
                },
                p,
            ),
            (Some(Err(e)), _) => (refuse(e.code.as_str(), e.message), Vec::new()),
            (None, None) => (
                refuse(
                    "unknown_method",
                    format!("unknown method {method:?} on {}", self.node_id),
                ),
                Vec::new(),
            ),
            (None, Some(_)) if self.served.contains_key(&key) => return,
            (None, Some(_)) if self.served.len() >= MAX_SERVED_CALLS => (
                refuse(
                    "busy",
                    format!(
                        "{} is serving {MAX_SERVED_CALLS} calls already; try again later",
                        self.node_id
                    ),
                ),
                Vec::new(),
            ),
            (None, Some(svc)) => {
                let svc = Arc::clone(svc);
                self.spawn_served(svc, from, call_id, method, payload, deadline_ms);
                return;
            }
        };
        if let Err(e) = self.mesh.send(now, from.clone(), body, payload) {
            let what = if inline { method.as_str() } else { "a call" };
            self.events.push(
                Level::Debug,
                format!("mesh: cannot answer {what} from {from}: {e}"),
            );
        }
    }

    /// Run one served call as its own task, with its credit and cancel signal in the served
    /// table; the task reports its chunks and result back as commands.
    fn spawn_served(
        &mut self,
        svc: Arc<dyn Service>,
        from: NodeId,
        call_id: CallId,
        method: String,
        payload: Vec<u8>,
        deadline_ms: Option<u64>,
    ) {
        let credit = Arc::new(Semaphore::new(STREAM_WINDOW_CHUNKS as usize));
        let (cancel, cancel_rx) = watch::channel(false);
        self.served.insert(
            (from.clone(), call_id),
            Served {
                credit: Arc::clone(&credit),
                cancel,
                chunks: 0,
                cancelled: false,
            },
        );
        let port = Arc::clone(&self.port);
        let task_from = from.clone();
        let ctx = CallCtx {
            from: from.clone(),
            // The key that sealed this call (its source's record key, checked by the core).
            caller_key: self.mesh.key_of(&from).map(|k| Fingerprint::of(&k)),
            method,
            sink: ChunkSink::new(Arc::clone(&port), from, call_id, credit, cancel_rx.clone()),
            cancel: cancel_rx,
            deadline: deadline_ms.map(std::time::Duration::from_millis),
        };
        tokio::spawn(async move {
            // A panic in the service is caught here so that it still frees the served slot and
            // answers the caller (one task per call, not a task per call plus one to watch it).
            let call = std::panic::AssertUnwindSafe(svc.call(ctx, payload));
            let result = match futures_util::FutureExt::catch_unwind(call).await {
                Ok(r) => r,
                Err(panic) => Err(Error::new(
                    ErrorCode::Internal,
                    format!(
                        "the service failed: task panicked: {}",
                        panic_message(&*panic)
                    ),
                )),
            };
            let done = Command::ServedDone {
                from: task_from,
                call_id,
                result,
            };
            crate::rpc::port::send(&*port, done).await;
        });
    }

    /// Application dispatch of a frame addressed to us.
    pub(super) fn dispatch(&mut self, from: NodeId, header: Header, payload: Vec<u8>) {
        match header.body {
            Body::Call {
                call_id,
                method,
                deadline_ms,
            } => self.serve_call(from, call_id, method, payload, deadline_ms),
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
                let remote = |dst: &str| {
                    Error::new(
                        ErrorCode::Remote,
                        format!(
                            "{dst}: {}: {}",
                            code.as_deref().unwrap_or("error"),
                            message.as_deref().unwrap_or("")
                        ),
                    )
                };
                if let Some(p) = self.pending.remove(&call_id) {
                    let result = if ok { Ok(payload) } else { Err(remote(&p.dst)) };
                    let _ = p.reply.send(result);
                } else if let Some(s) = self.streams.remove(&call_id) {
                    let item = if ok {
                        Ok(StreamItem::End(payload))
                    } else {
                        Err(remote(&s.dst))
                    };
                    // The channel always has room for the terminal item (see stream.rs).
                    let _ = s.tx.try_send(item);
                }
            }
            Body::Chunk { call_id, .. } => {
                let now = now_ms(self.epoch);
                let Some(s) = self.streams.get_mut(&call_id) else {
                    return;
                };
                if s.dst != from {
                    return;
                }
                let ok = s.allowed > 0 && s.tx.try_send(Ok(StreamItem::Chunk(payload))).is_ok();
                if ok {
                    s.allowed -= 1;
                    return;
                }
                // The server ignored its window: fail the stream rather than buffer without
                // bound (or silently drop a chunk).
                if let Some(s) = self.streams.remove(&call_id) {
                    let _ = s.tx.try_send(Err(Error::new(
                        ErrorCode::Remote,
                        format!(
                            "{}: protocol_error: stream exceeded its credit window",
                            s.dst
                        ),
                    )));
                }
                self.mesh.cancel_call(now, call_id, "window exceeded");
            }
            Body::Credit { call_id, chunks } => {
                if let Some(s) = self.served.get(&(from, call_id)) {
                    let room = MAX_BANKED_CREDIT.saturating_sub(s.credit.available_permits());
                    let add = usize::try_from(chunks).unwrap_or(usize::MAX).min(room);
                    s.credit.add_permits(add);
                }
            }
            Body::Cancel { call_id, .. } => self.cancel_served(&from, call_id),
            // A relay could not deliver a frame of a call we serve to its caller.
            Body::Unreachable { call_id, node } => self.cancel_served(&node, call_id),
            _ => {}
        }
    }

    /// The caller of every call served for `node` is gone: stop serving them.
    pub(super) fn cancel_served_from(&mut self, node: &str) {
        let gone: Vec<CallId> = self
            .served
            .keys()
            .filter(|(f, _)| *f == node)
            .map(|(_, c)| *c)
            .collect();
        for call_id in gone {
            self.cancel_served(node, call_id);
        }
    }

    /// A call we started failed in the mesh (deadline, route gone): its stream or request
    /// hears why.
    pub(super) fn fail_call(&mut self, call_id: CallId, dst: &str, reason: CallFailure) {
        if let Some(s) = self.streams.remove(&call_id) {
            let err = match reason {
                CallFailure::Deadline => Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "stream from {dst}: nothing for {} ms (inactivity deadline)",
                        s.deadline_ms
                    ),
                ),
                CallFailure::Unreachable => Error::new(
                    ErrorCode::Unreachable,
                    format!("stream from {dst}: the node became unreachable"),
                ),
                CallFailure::PathBroken => path_broken("stream from", dst),
                CallFailure::Integrity => integrity_error("stream from", dst),
            };
            let _ = s.tx.try_send(Err(err));
        }
        if let Some(p) = self.pending.remove(&call_id) {
            let err = match reason {
                CallFailure::Deadline => Error::new(
                    ErrorCode::Timeout,
                    format!("request to {dst}: no answer within {} ms", p.timeout_ms),
                ),
                CallFailure::Unreachable => Error::new(
                    ErrorCode::Unreachable,
                    format!("request to {dst}: the node became unreachable"),
                ),
                CallFailure::PathBroken => path_broken("request to", dst),
                CallFailure::Integrity => integrity_error("request to", dst),
            };
            let _ = p.reply.send(Err(err));
        }
    }
}

/// The error of a call whose path lost a link.
fn path_broken(what: &str, dst: &str) -> Error {
    Error::new(
        ErrorCode::Unreachable,
        format!(
            "{what} {dst}: a link on its path through the mesh went down (a relay died or was \
             cut off), so frames may have been lost; the call was abandoned"
        ),
    )
}

/// The error of a call whose frames failed the end-to-end check.
fn integrity_error(what: &str, dst: &str) -> Error {
    Error::new(
        ErrorCode::Integrity,
        format!(
            "{what} {dst}: a frame failed the end-to-end integrity check (altered, injected, \
             replayed, dropped or reordered on the way); the call was cancelled"
        ),
    )
}

/// Map a refused `start_call` to the crate error.
fn send_error(dst: &str, e: &SendError) -> Error {
    let code = match e {
        SendError::NoRoute(_) | SendError::TooFar { .. } => ErrorCode::Unreachable,
        SendError::ShutDown => ErrorCode::NotRunning,
        SendError::TooManyCalls(_) => ErrorCode::Cancelled,
        SendError::TooLarge(_) => ErrorCode::TooLarge,
        SendError::NoSession(..) => ErrorCode::Unreachable,
        SendError::ToSelf | SendError::InvalidBody => ErrorCode::InvalidArgument,
    };
    Error::new(code, format!("request to {dst}: {e}"))
}
