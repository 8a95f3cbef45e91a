//! The narrow mesh API the features (handoff, remote tools, the model proxy) are written
//! against. It is the whole surface they see of the runtime:
//!
//! - **call**: [`MeshClient::request`] (one reply) and [`MeshClient::open_stream`] (chunks with
//!   credit-based flow control, then an end; see [`CallStream`]) to a node id;
//! - **route**: [`MeshClient::resolve`] turns a [`Target`] (agent id, node id, `tags:` query)
//!   into ordered candidate nodes;
//! - **serve**: implement [`Service`] for a method name; each call gets a [`CallCtx`] with the
//!   verified calling node, a flow-controlled [`ChunkSink`] and a cancel signal;
//! - **observe**: [`MeshClient::snapshot`] / [`MeshClient::watch`] read the [`MeshSnapshot`]
//!   the actor last published, without a round trip.
//!
//! Nothing here depends on `crate::node`: the runtime implements [`Port`] and hands the
//! features a [`MeshClient`] built on it. All methods talk over channels only, so they may be
//! awaited from any tokio runtime.
//!
//! # Layout
//! - [`port`]: the [`Command`]s features send and the [`Port`] trait the actor implements.
//! - [`service`]: the serving side ([`Service`], [`CallCtx`], [`ChunkSink`], the built-in test
//!   services).
//! - [`stream`]: the calling side of streams ([`CallStream`], credit).
//! - [`snapshot`] holds [`MeshSnapshot`], the published view of the mesh.

pub mod port;
pub mod service;
pub mod snapshot;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::error::{Error, ErrorCode, Result};
use crate::mesh::{Candidate, Target};
use crate::proto::NodeId;

pub use port::{Command, Port};
pub use service::{
    BoxFuture, CallCtx, ChunkSink, EchoService, Service, StreamTestService, MAX_SERVED_CALLS,
    METHOD_ECHO, METHOD_STREAM,
};
pub use snapshot::MeshSnapshot;
pub use stream::{CallOptions, CallStream, StreamItem};

/// The registered services, by method name.
pub type Services = HashMap<String, Arc<dyn Service>>;

/// A feature's handle on the mesh: calls, streams, routes and the snapshot. Cheap to clone.
#[derive(Clone)]
pub struct MeshClient {
    port: Arc<dyn Port>,
    snapshot: watch::Receiver<MeshSnapshot>,
}

fn stopped() -> Error {
    Error::new(ErrorCode::NotRunning, "the node is not running")
}

/// A duration as whole milliseconds, at least 1 (a zero deadline would expire at once).
fn millis_at_least_one(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl MeshClient {
    /// A client sending to `port` and reading `snapshot`.
    pub fn new(port: Arc<dyn Port>, snapshot: watch::Receiver<MeshSnapshot>) -> Self {
        MeshClient { port, snapshot }
    }

    /// Send `method` with `payload` to node `dst` and wait for its reply payload, at most
    /// `timeout` (the call's inactivity deadline in the mesh). Errors: `NotRunning`,
    /// `Unreachable` (no route), `Timeout`, `Remote` (the reply's code and message),
    /// `Cancelled` (the node stopped first, or too many requests in flight).
    pub async fn request(
        &self,
        dst: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Request {
            dst: dst.to_string(),
            method: method.to_string(),
            payload,
            timeout_ms: millis_at_least_one(timeout),
            reply,
        };
        if !port::send(&*self.port, cmd).await {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorCode::Cancelled,
                format!("request to {dst}: the node stopped before an answer"),
            ))
        })
    }

    /// Open a call to `dst` whose answer may be streamed: the server answers with chunks and
    /// an end, or one reply (seen as [`StreamItem::End`]). `deadline` is the inactivity
    /// deadline. See [`CallStream`] for flow control and errors; dropping the stream cancels
    /// the call on the server.
    pub async fn open_stream(
        &self,
        dst: &str,
        method: &str,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<CallStream> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::OpenStream {
            dst: dst.to_string(),
            method: method.to_string(),
            payload,
            deadline_ms: millis_at_least_one(deadline),
            reply,
        };
        if !port::send(&*self.port, cmd).await {
            return Err(stopped());
        }
        let (call_id, rx, taken) = rx.await.map_err(|_| stopped())??;
        Ok(CallStream::new(
            call_id,
            dst.to_string(),
            rx,
            Arc::clone(&self.port),
            taken,
        ))
    }

    /// Ordered candidates for `target`, skipping `exclude` (routes as of the last tick); empty
    /// when the node is stopping.
    pub async fn resolve(&self, target: Target, exclude: Vec<NodeId>) -> Vec<Candidate> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Resolve {
            target,
            exclude,
            reply,
        };
        if !port::send(&*self.port, cmd).await {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The mesh as last published.
    pub fn snapshot(&self) -> MeshSnapshot {
        self.snapshot.borrow().clone()
    }

    /// Read the last published snapshot in place (no clone of the whole snapshot).
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&MeshSnapshot) -> R) -> R {
        f(&self.snapshot.borrow())
    }

    /// A receiver that sees every published snapshot.
    pub fn watch(&self) -> watch::Receiver<MeshSnapshot> {
        self.snapshot.clone()
    }
}
