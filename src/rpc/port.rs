//! The one edge from the features into the runtime: the [`Command`]s a [`MeshClient`], a
//! [`CallStream`] and a [`ChunkSink`] send, and the [`Port`] the node's actor receives them on.
//!
//! The port is a trait so that this module depends on nothing in `crate::node`: the actor
//! implements it for its input channel (one bounded queue shared with the links, so the order
//! of a call's commands is the order they were sent in).
//!
//! [`MeshClient`]: super::MeshClient
//! [`CallStream`]: super::CallStream
//! [`ChunkSink`]: super::ChunkSink

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::stream::StreamMsg;
use crate::error::Result;
use crate::mesh::{Candidate, Target};
use crate::proto::{CallId, NodeId};
use std::future::Future;
use std::pin::Pin;

/// What `OpenStream` answers: the call id, the stream's receiving end and its consumption
/// counter.
pub type OpenedStream = (CallId, mpsc::Receiver<StreamMsg>, Arc<AtomicU64>);

/// A request from a feature (caller or server side of a call) to the runtime.
pub enum Command {
    /// Start a call and answer when it completes.
    Request {
        dst: NodeId,
        method: String,
        payload: Vec<u8>,
        timeout_ms: u64,
        reply: oneshot::Sender<Result<Vec<u8>>>,
    },
    /// Open a stream; answers with the call id and the stream's receiving end.
    OpenStream {
        dst: NodeId,
        method: String,
        payload: Vec<u8>,
        deadline_ms: u64,
        reply: oneshot::Sender<Result<OpenedStream>>,
    },
    /// The consumer of stream `call_id` took `chunks` more chunks: grant them.
    StreamCredit { call_id: CallId, chunks: u64 },
    /// The consumer dropped or cancelled stream `call_id`.
    StreamCancel { call_id: CallId },
    /// A served call produced a chunk (already within its credit).
    ServedChunk {
        from: NodeId,
        call_id: CallId,
        bytes: Vec<u8>,
    },
    /// A served call finished.
    ServedDone {
        from: NodeId,
        call_id: CallId,
        result: Result<Vec<u8>>,
    },
    /// Ordered candidates for a target (`Mesh::resolve`).
    Resolve {
        target: Target,
        exclude: Vec<NodeId>,
        reply: oneshot::Sender<Vec<Candidate>>,
    },
}

/// What [`Port::send_waiting`] returns: `Sync` too, so a stream that waits inside
/// [`CallStream::next`](super::CallStream::next) can be polled from a `Sync` body (hyper's).
pub type WaitingSend<'a> = Pin<Box<dyn Future<Output = bool> + Send + Sync + 'a>>;

/// Where [`Command`]s go: the node's actor.
pub trait Port: Send + Sync + 'static {
    /// Queue `cmd` without waiting.
    fn try_send(&self, cmd: Command)
        -> std::result::Result<(), mpsc::error::TrySendError<Command>>;

    /// Queue `cmd`, waiting while the queue is full; `false` when the runtime is gone.
    fn send_waiting(&self, cmd: Command) -> WaitingSend<'_>;
}

/// Queue `cmd`, waiting only when the queue is full (the common case allocates nothing);
/// `false` when the runtime is gone. Edges into the actor may wait; the actor never waits on
/// them.
pub(crate) async fn send(port: &dyn Port, cmd: Command) -> bool {
    match port.try_send(cmd) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(cmd)) => port.send_waiting(cmd).await,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
