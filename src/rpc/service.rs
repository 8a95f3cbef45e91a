//! The serving side of calls: the [`Service`] trait, the per-call context ([`CallCtx`]) with its
//! flow-controlled [`ChunkSink`] and cancel signal, and the built-in test services.
//!
//! Flow of one served call:
//! ```text
//! actor: `call` for a registered method → served table entry (credit semaphore = window,
//!        cancel watch) → tokio::spawn(service.call(ctx, payload))
//! task:  ctx.sink.send(bytes) → waits for a credit permit → Command::ServedChunk → actor → `chunk`
//! actor: `credit` → semaphore.add_permits; `cancel` / caller unreachable → cancel watch = true
//! task:  returns Ok(bytes) / Err(e) → Command::ServedDone → actor → `end` (after chunks) or `reply`
//! ```
//! A slow consumer therefore parks only its own producer task (waiting for credit); the link and
//! the actor never wait for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};

use super::port::{self, Command, Port};
use crate::error::{Error, ErrorCode, Result};
use crate::proto::{CallId, NodeId, MAX_CHUNK_BYTES};

/// A boxed, sendable future (no extra crate).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Most served calls running at once per node; one more is answered with the error `busy`.
/// 256 keeps a flood of calls from spawning unbounded tasks while leaving room for many
/// concurrent streams.
pub const MAX_SERVED_CALLS: usize = 256;

/// The built-in echo method: answers with the request payload.
pub const METHOD_ECHO: &str = "mesh.echo";
/// The built-in streaming test method: payload `{"count": n, "bytes": b}` → `n` chunks of `b`
/// bytes (the first 8 bytes of each are its index, big-endian), then `end` with
/// `{"count": n}`. For tests and benchmarks.
pub const METHOD_STREAM: &str = "mesh.stream";
/// Most chunks `mesh.stream` produces per call (1 Mi), so a request cannot run forever.
pub const STREAM_TEST_MAX_COUNT: u64 = 1 << 20;

/// A method served by this node. Implementations must be cheap to call: the work happens in
/// the returned future, which runs as its own task on the node runtime.
pub trait Service: Send + Sync + 'static {
    /// Serve one call. `Ok(bytes)` ends the call successfully with `bytes` as the final
    /// payload; `Err(e)` ends it with `code = e.code.as_str()` and `e.message`.
    fn call(&self, ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>>;

    /// For trivial unary services: answer at once, inside the actor, without spawning a task
    /// (`None`, the default, means "use [`Service::call`]"). Must not block.
    fn answer_inline(&self, _payload: &[u8]) -> Option<Result<Vec<u8>>> {
        None
    }
}

/// Everything a service knows about one call.
pub struct CallCtx {
    /// The authenticated calling node.
    pub from: NodeId,
    /// The fingerprint of the calling node's key, once the mesh verified it (`None` until
    /// then); audited next to `from`.
    pub caller_key: Option<crate::identity::Fingerprint>,
    /// The method name.
    pub method: String,
    /// Where stream chunks go.
    pub sink: ChunkSink,
    /// Turns `true` when the caller cancelled (or dropped the stream) or became unreachable,
    /// or the node is stopping.
    pub cancel: watch::Receiver<bool>,
    /// The caller's inactivity deadline for this call, as its `call` frame carried it
    /// (`deadline_ms`): how long the caller waits for a chunk or the answer before it gives up.
    /// Work that sends nothing meanwhile (a host round trip) must answer within it. `None` when
    /// the caller sent none.
    pub deadline: Option<std::time::Duration>,
}

/// Sends stream chunks of one served call, waiting for the caller's credit.
pub struct ChunkSink {
    port: Arc<dyn Port>,
    from: NodeId,
    call_id: CallId,
    credit: Arc<Semaphore>,
    cancel: watch::Receiver<bool>,
}

impl ChunkSink {
    /// The sink of call `call_id` from `from`: chunks go to `port` once `credit` allows.
    pub fn new(
        port: Arc<dyn Port>,
        from: NodeId,
        call_id: CallId,
        credit: Arc<Semaphore>,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        ChunkSink {
            port,
            from,
            call_id,
            credit,
            cancel,
        }
    }

    /// Send `bytes` as one chunk (split into [`MAX_CHUNK_BYTES`] pieces if larger). Waits while
    /// the caller's window is exhausted; fails with `Cancelled` once the call is cancelled and
    /// `NotRunning` when the node stops.
    pub async fn send(&mut self, bytes: Vec<u8>) -> Result<()> {
        if bytes.len() <= MAX_CHUNK_BYTES {
            return self.send_one(bytes).await;
        }
        for piece in bytes.chunks(MAX_CHUNK_BYTES) {
            self.send_one(piece.to_vec()).await?;
        }
        Ok(())
    }

    async fn send_one(&mut self, bytes: Vec<u8>) -> Result<()> {
        let cancelled = || Error::new(ErrorCode::Cancelled, "the caller cancelled the call");
        if *self.cancel.borrow() {
            return Err(cancelled());
        }
        // Credit at hand is the common case: no waiter to register for it or for the cancel.
        match self.credit.try_acquire() {
            Ok(p) => p.forget(),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(cancelled()),
            Err(tokio::sync::TryAcquireError::NoPermits) => tokio::select! {
                biased;
                _ = self.cancel.wait_for(|c| *c) => return Err(cancelled()),
                permit = self.credit.acquire() => match permit {
                    Ok(p) => p.forget(),
                    Err(_) => return Err(cancelled()),
                },
            },
        }
        let cmd = Command::ServedChunk {
            from: self.from.clone(),
            call_id: self.call_id,
            bytes,
        };
        if port::send(&*self.port, cmd).await {
            Ok(())
        } else {
            Err(Error::new(ErrorCode::NotRunning, "the node is stopping"))
        }
    }

    /// Whether the call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
}

/// `mesh.echo`.
pub struct EchoService;

impl Service for EchoService {
    fn call(&self, _ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        Box::pin(async move { Ok(payload) })
    }

    fn answer_inline(&self, payload: &[u8]) -> Option<Result<Vec<u8>>> {
        Some(Ok(payload.to_vec()))
    }
}

/// `mesh.stream`.
pub struct StreamTestService;

impl Service for StreamTestService {
    fn call(&self, mut ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        Box::pin(async move {
            let req: serde_json::Value = serde_json::from_slice(&payload)
                .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("mesh.stream: {e}")))?;
            let count = req["count"].as_u64().unwrap_or(0);
            let size = req["bytes"].as_u64().unwrap_or(8).max(8);
            if count > STREAM_TEST_MAX_COUNT || size > MAX_CHUNK_BYTES as u64 {
                return Err(Error::new(
                    ErrorCode::TooLarge,
                    format!(
                        "mesh.stream: at most {STREAM_TEST_MAX_COUNT} chunks of \
                         {MAX_CHUNK_BYTES} bytes"
                    ),
                ));
            }
            for i in 0..count {
                let mut chunk = vec![(i % 251) as u8; size as usize];
                chunk[..8].copy_from_slice(&i.to_be_bytes());
                ctx.sink.send(chunk).await?;
            }
            Ok(serde_json::json!({ "count": count })
                .to_string()
                .into_bytes())
        })
    }
}
