//! The calling side of streams: [`CallStream`] pulls chunks from the actor through a bounded
//! per-stream channel and grants credit back as it consumes them.
//!
//! Flow control: the server may send [`STREAM_WINDOW_CHUNKS`] chunks beyond the credit granted.
//! The stream's channel holds exactly that many chunks plus one terminal item, so the actor
//! never blocks on a slow consumer (it uses `try_send`, and a server exceeding its window is a
//! protocol error that fails the stream). Every half window consumed, [`CallStream::next`]
//! grants that many chunks again (`credit`).

use std::time::Duration;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::port::{self, Command, Port};
use crate::error::{Error, ErrorCode, Result};
use crate::proto::{CallId, STREAM_WINDOW_CHUNKS};

/// Chunks consumed before credit is granted back: half the window, so the server rarely waits.
pub const CREDIT_BATCH_CHUNKS: u64 = STREAM_WINDOW_CHUNKS / 2;

/// Options for [`crate::app::Node::call_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOptions {
    /// Inactivity deadline: the call fails with `Timeout` when, for this long, no chunk arrived
    /// and the consumer took none (a consumer that keeps reading keeps the call alive; a
    /// long-running server must send chunks or finish within it).
    pub deadline: Duration,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            deadline: Duration::from_secs(60),
        }
    }
}

/// One item of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A chunk's payload.
    Chunk(Vec<u8>),
    /// The final payload (`end ok`, or a unary `reply`). The stream is over.
    End(Vec<u8>),
}

/// What the actor pushes into a stream's channel.
pub type StreamMsg = Result<StreamItem>;

/// Capacity of a stream's channel: the window plus one terminal item.
pub const STREAM_CHANNEL: usize = STREAM_WINDOW_CHUNKS as usize + 1;

/// An open call. Dropping it (or [`CallStream::cancel`]) before its end sends `cancel` to the
/// server.
pub struct CallStream {
    call_id: CallId,
    dst: String,
    rx: mpsc::Receiver<StreamMsg>,
    port: Arc<dyn Port>,
    consumed: u64,
    /// Chunks taken by the consumer, read by the actor before deadlines are checked (a
    /// consumer that is still draining its buffer keeps the call alive).
    taken: Arc<AtomicU64>,
    done: bool,
}

impl CallStream {
    pub(crate) fn new(
        call_id: CallId,
        dst: String,
        rx: mpsc::Receiver<StreamMsg>,
        port: Arc<dyn Port>,
        taken: Arc<AtomicU64>,
    ) -> Self {
        CallStream {
            call_id,
            dst,
            rx,
            port,
            consumed: 0,
            taken,
            done: false,
        }
    }

    /// The destination node.
    pub fn dst(&self) -> &str {
        &self.dst
    }

    /// The next item; `None` after the end or an error. Errors: `Unreachable` (the route
    /// disappeared), `Timeout` (the inactivity deadline), `Remote` (the server's code and
    /// message), `Cancelled` (the node stopped).
    pub async fn next(&mut self) -> Option<Result<StreamItem>> {
        if self.done {
            return None;
        }
        let item = match self.rx.recv().await {
            Some(item) => item,
            None => {
                self.done = true;
                return Some(Err(Error::new(
                    ErrorCode::Cancelled,
                    format!(
                        "stream from {}: closed without an end (node stopped or protocol error)",
                        self.dst
                    ),
                )));
            }
        };
        match &item {
            Ok(StreamItem::Chunk(_)) => {
                self.taken
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.consumed += 1;
                if self.consumed >= CREDIT_BATCH_CHUNKS {
                    let chunks = std::mem::take(&mut self.consumed);
                    let grant = Command::StreamCredit {
                        call_id: self.call_id,
                        chunks,
                    };
                    // Edges into the actor may wait; the actor never waits on us.
                    port::send(&*self.port, grant).await;
                }
            }
            Ok(StreamItem::End(_)) | Err(_) => self.done = true,
        }
        Some(item)
    }

    /// Give up: sends `cancel` to the server (once). Later `next()` returns `None`.
    pub fn cancel(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let msg = Command::StreamCancel {
            call_id: self.call_id,
        };
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.port.try_send(msg) {
            // The actor's queue is momentarily full: deliver the cancel from a task instead of
            // blocking a destructor.
            let port = Arc::clone(&self.port);
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    port.send_waiting(msg).await;
                });
            }
        }
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        self.cancel();
    }
}
