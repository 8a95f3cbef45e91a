//! The composition root: a [`Node`] is the lifecycle handle the binding wraps. It holds the
//! validated config, starts a node (`start`: bind, build the services, spawn the runtime's
//! tasks), stops it, and assembles the status report (`report`) from what the runtime
//! publishes.
//!
//! Lifecycle: OpenClaw restarts a plugin's service in place when its config changes, and a reload
//! loads a second copy of this addon into the same process. So nothing here is global: each
//! [`Node`] owns its own runtime, and `stop()` releases every port and task before it returns,
//! so the next `start()` (in this copy or another) can bind the same ports again.
//!
//! # Layout
//! - this file: [`Node`], [`StartOptions`], [`StartInfo`], stop, and the entry points of the
//!   agent tools and the test/bench calls (all through the narrow [`crate::rpc`] API).
//! - `start`: bind (TLS material, runtime, sockets), build the services, spawn the tasks.
//! - `report`: the status report from the mesh snapshot and the services' own state.
//!
//! Tasks: actor (1), listener (1, plus one per inbound connection), dialer (1 per peer; its
//! links run inside it), proxy (1 plus its connections), served calls (1 per call, at most
//! [`crate::rpc::MAX_SERVED_CALLS`]), remote tool calls started here (1 per call). All stop on the shutdown
//! signal; the actor sends `leave` and closes every link with 1000 after a bounded flush.

mod identity;
mod report;
mod start;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::events::EventQueue;
use crate::host::HostBridge;
use crate::mesh::MeshStats;
use crate::node::{admission, supervisor, ActorHandle};
use crate::rpc::{CallOptions, CallStream, MeshClient, MeshSnapshot, Service, Services};
#[cfg(unix)]
use crate::tools::remote::{ToolCall, ToolCaller, ToolEvent};
use crate::tools::{catalog, ToolOutput};
use crate::wake::Wakes;

/// How long `stop()` waits for tasks to finish after the shutdown signal before aborting them.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Options for [`Node::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Plugin state directory (OpenClaw's service `stateDir`); created if missing. The tool
    /// audit log is `<stateDir>/audit.log`.
    pub state_dir: Option<std::path::PathBuf>,
    /// The agent workspace: the remote tools' filesystem root when `toolProxy.root` is unset.
    pub workspace_dir: Option<std::path::PathBuf>,
    /// This gateway's port, for tools run through its `POST /tools/invoke`.
    pub gateway_port: Option<u16>,
    /// This gateway's auth token for `POST /tools/invoke`.
    pub gateway_token: Option<String>,
    /// The listener's hard pre-auth deadline; `None` = `HANDSHAKE_TIMEOUT_MS` (10 s). Not
    /// exposed to JS: tests (and embedders) shorten it to see a deadline without waiting 10 s.
    pub handshake_timeout: Option<Duration>,
    /// A mesh listener bound by the embedder, used instead of binding `listenPort` (which it
    /// must be bound to); see [`crate::node::listener::PreBound`]. Not exposed to JS.
    pub listener: Option<crate::node::listener::PreBound>,
    /// The same for the model proxy and `proxyPort`.
    pub proxy_listener: Option<crate::node::listener::PreBound>,
}

/// What `start()` bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInfo {
    pub listen_addr: Option<SocketAddr>,
    pub proxy_addr: SocketAddr,
}

struct Running {
    runtime: tokio::runtime::Runtime,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Start time; also the epoch of the mesh clock (ms since start).
    started: Instant,
    info: StartInfo,
    actor: ActorHandle,
    /// The features' API on the actor (calls, routes, the snapshot).
    mesh: MeshClient,
    /// The actor's failures and restarts, for status.
    health: Arc<supervisor::ActorHealth>,
    /// The serving side of remote tools (policy, audit), for status.
    #[cfg(unix)]
    tools: Arc<crate::tools::serve::ToolServer>,
    /// Handoffs and messages, both sides, for status.
    #[cfg(unix)]
    handoffs: Arc<crate::handoff::HandoffLog>,
    /// Hostile-input counters of the listener and the links, for status.
    counters: Arc<admission::ShellCounters>,
    /// This node's key, and the file it was loaded from (none without a state dir).
    identity: Arc<crate::identity::NodeKey>,
    key_file: Option<std::path::PathBuf>,
}

/// A mesh node: configuration plus, while started, its runtime and sockets.
///
/// The std `Mutex` guards only quick state swaps and is never held across an `.await`.
pub struct Node {
    config: Arc<Config>,
    running: Mutex<Option<Running>>,
    events: Arc<EventQueue>,
    /// Services registered by the embedder, added at the next `start()`.
    extra_services: Mutex<Services>,
    /// Requests from the core to the OpenClaw host (pulled by the shim).
    host: Arc<HostBridge>,
    /// How tool calls' steps wake their consumers (napi's runtime, the JS thread).
    step_wakes: Arc<Wakes>,
}

impl Node {
    /// A stopped node for a validated config.
    pub fn new(config: Config) -> Self {
        Node {
            config: Arc::new(config),
            running: Mutex::new(None),
            events: Arc::new(EventQueue::new()),
            extra_services: Mutex::new(Services::new()),
            host: HostBridge::new(),
            step_wakes: Wakes::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The queue the shim drains for logs and events.
    pub fn events(&self) -> Arc<EventQueue> {
        self.events.clone()
    }

    /// The bridge to the OpenClaw host: the shim pulls its requests.
    pub fn host(&self) -> Arc<HostBridge> {
        self.host.clone()
    }

    /// Serve `method` with `service` from the next `start()` on (a running node is not
    /// changed). Replaces a built-in service of the same name.
    pub fn register_service(&self, method: &str, service: Arc<dyn Service>) {
        self.extra_services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(method.to_string(), service);
    }

    /// Bind the sockets and start serving. Idempotent: a running node returns what it bound.
    pub fn start(&self, opts: &StartOptions) -> Result<StartInfo> {
        let mut guard = self.lock();
        if let Some(r) = guard.as_ref() {
            return Ok(r.info.clone());
        }
        let bound = start::bind(&self.config, opts)?;
        self.host.reopen();
        let extra = self
            .extra_services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _enter = bound.runtime().enter();
        let built = start::build_services(&self.config, opts, &self.host, extra);
        drop(_enter);
        let running = start::spawn(
            &self.config,
            opts,
            &self.events,
            &self.host,
            &self.step_wakes,
            bound,
            built,
        )?;
        let info = running.info.clone();
        *guard = Some(running);
        Ok(info)
    }

    /// Stop serving and release every socket. Idempotent. Blocks up to [`STOP_GRACE`]; the
    /// binding calls it off the JS thread.
    pub fn stop(&self) {
        let Some(running) = self.lock().take() else {
            return;
        };
        let _ = running.shutdown.send(true);
        self.host.close();
        // Drain on a fresh thread: `block_on` must not run inside another runtime, and stop() may
        // be reached from one (a napi async method, a Drop inside a task).
        let joined = std::thread::Builder::new()
            .name("clawmatrix-stop".into())
            .spawn(move || drain(running))
            .map(|h| h.join().is_ok());
        if !matches!(joined, Ok(true)) {
            self.events
                .warn("stop: the shutdown thread failed; tasks were abandoned".into());
        }
        self.events
            .info(format!("node {} stopped", self.config.node_id));
    }

    pub fn is_running(&self) -> bool {
        self.lock().is_some()
    }

    /// Make the node's actor panic with `reason`, as a bug in it would (tests of the
    /// supervision: status then reports the failure and the actor is restarted). Not exposed to
    /// JS. `false` when the node is not running.
    #[doc(hidden)]
    pub fn debug_panic_actor(&self, reason: &str) -> bool {
        let actor = self.lock().as_ref().map(|r| r.actor.clone());
        actor.is_some_and(|a| a.panic(reason))
    }

    /// Send `method` with `payload` to node `dst` and wait for its reply payload, at most
    /// `timeout` (the call's inactivity deadline in the mesh). Errors: `NotRunning`,
    /// `Unreachable` (no route), `Timeout`, `Remote` (the reply's code and message),
    /// `Cancelled` (the node stopped first, or too many requests in flight).
    ///
    /// Talks to the node's actor over channels only, so it may be awaited from any runtime.
    pub async fn request(
        &self,
        dst: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let Some(mesh) = self.mesh() else {
            return Err(Error::new(
                ErrorCode::NotRunning,
                format!("request to {dst}: the node is not running"),
            ));
        };
        mesh.request(dst, method, payload, timeout).await
    }

    /// Open a call to `dst` whose answer may be streamed: the server answers with chunks and
    /// an end, or one reply (seen as [`StreamItem::End`]). See [`CallStream`] for flow control
    /// and errors; dropping the stream cancels the call on the server.
    pub async fn call_stream(
        &self,
        dst: &str,
        method: &str,
        payload: Vec<u8>,
        opts: CallOptions,
    ) -> Result<CallStream> {
        let Some(mesh) = self.mesh() else {
            return Err(Error::new(
                ErrorCode::NotRunning,
                format!("call to {dst}: the node is not running"),
            ));
        };
        mesh.open_stream(dst, method, payload, opts.deadline).await
    }

    /// Forget the key this node trusts for `node` (an operator's trust reset, after checking
    /// that `node` was reinstalled with a new key): its next key is trusted on first use, in
    /// memory and in the trust store. `Ok(true)` if a key was trusted. A pin in the config
    /// stays (edit `identity.pins` to change it).
    pub async fn reset_trust(&self, node: &str) -> Result<bool> {
        if !crate::proto::frame::valid_node_id(node) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "trust reset: nodeId: not a node id (1-64 of A-Z a-z 0-9 . _ -)",
            ));
        }
        let actor = self.lock().as_ref().map(|r| r.actor.clone());
        match actor {
            Some(a) => Ok(a.reset_trust(node).await),
            None => Err(Error::new(
                ErrorCode::NotRunning,
                "trust reset: the node is not running",
            )),
        }
    }

    /// The features' API on the running node: calls, streams, routes, the snapshot.
    pub fn mesh(&self) -> Option<MeshClient> {
        self.lock().as_ref().map(|r| r.mesh.clone())
    }

    /// The mesh core's counters as last published, while running.
    pub fn mesh_stats(&self) -> Option<MeshStats> {
        self.lock()
            .as_ref()
            .map(|r| r.mesh.with_snapshot(|s| s.stats.clone()))
    }

    /// The whole mesh snapshot (peers, counters) as last published, while running.
    pub fn mesh_snapshot(&self) -> Option<MeshSnapshot> {
        self.lock().as_ref().map(|r| r.mesh.snapshot())
    }

    /// The node's runtime, while running, so tests and benchmarks can run futures on it.
    pub fn runtime_handle(&self) -> Option<tokio::runtime::Handle> {
        self.lock().as_ref().map(|r| r.runtime.handle().clone())
    }

    /// Run a tool call: validate the arguments, then dispatch. The result is the text the model
    /// sees plus structured details.
    pub fn invoke_tool(&self, name: &str, args: &serde_json::Value) -> Result<ToolOutput> {
        let spec = catalog::find(name).ok_or_else(|| {
            Error::new(ErrorCode::InvalidArgument, format!("unknown tool {name:?}"))
        })?;
        catalog::validate_args(spec, args)?;
        if !self.is_running() {
            return Err(Error::new(
                ErrorCode::NotRunning,
                format!("{name}: the clawmatrix service is not running on this gateway"),
            ));
        }
        self.answer_local(name)
    }

    /// The tools answered here without the mesh (arguments already validated): `cluster_peers`,
    /// and the capabilities not built yet. Remote tools stream: see [`Node::start_tool`].
    fn answer_local(&self, name: &str) -> Result<ToolOutput> {
        match name {
            "cluster_peers" => {
                let status = self.status();
                let text = crate::status::render_text(&status);
                let details = serde_json::to_value(&status)
                    .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
                Ok(ToolOutput { text, details })
            }
            other => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{other} streams its result: use Node::start_tool"),
            )),
        }
    }

    /// Run a tool call, streaming: validate the arguments, then `cluster_peers` answers at
    /// once, `cluster_exec` / `cluster_read` / `cluster_write` / `cluster_tool` run on the
    /// target node (see [`crate::tools::remote`]), `cluster_handoff` / `cluster_send` go to a remote
    /// agent (see [`crate::handoff`]). Pull the steps
    /// with [`ToolCall::next`].
    #[cfg(unix)]
    pub fn start_tool(&self, name: &str, args: &serde_json::Value, caller: ToolCaller) -> ToolCall {
        use crate::handoff;
        use crate::tools::remote;
        let Some(spec) = catalog::find(name) else {
            return ToolCall::ready(Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("unknown tool {name:?}"),
            )));
        };
        let args = match catalog::validate_args(spec, args) {
            Ok(a) => a,
            Err(e) => return ToolCall::ready(Err(e)),
        };
        let running = self.lock().as_ref().map(|r| {
            (
                r.runtime.handle().clone(),
                r.mesh.clone(),
                Arc::clone(&r.handoffs),
            )
        });
        let Some((runtime, mesh, handoffs)) = running else {
            return ToolCall::ready(Err(Error::new(
                ErrorCode::NotRunning,
                format!("{name}: the clawmatrix service is not running on this gateway"),
            )));
        };
        let call = match name {
            "cluster_exec" | "cluster_read" | "cluster_write" | "cluster_tool" => {
                remote::start_remote(
                    &runtime,
                    mesh,
                    self.config.node_id.clone(),
                    name,
                    &args,
                    caller,
                )
            }
            "cluster_handoff" | "cluster_send" => {
                let ctx = handoff::CallerCtx {
                    mesh,
                    self_id: self.config.node_id.clone(),
                    limits: handoff::HandoffLimits {
                        idle: Duration::from_millis(self.config.handoff_timeout_ms),
                        max: Duration::from_millis(self.config.handoff_max_ms),
                    },
                    log: handoffs,
                };
                if name == "cluster_handoff" {
                    handoff::start_handoff(&runtime, ctx, &args, caller)
                } else {
                    handoff::start_send(&runtime, ctx, &args, caller)
                }
            }
            _ => ToolCall::ready(self.answer_local(name).map(ToolEvent::Result)),
        };
        call.with_wakes(Arc::clone(&self.step_wakes))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Node {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is a plain
        // Option swap, still consistent, so keep going.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Run `task` until the node's shutdown signal.
async fn until_shutdown(
    task: impl std::future::Future<Output = ()>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = task => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

fn drain(mut running: Running) {
    let tasks = &mut running.tasks;
    running.runtime.block_on(async {
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    });
    running.runtime.shutdown_timeout(STOP_GRACE);
}
