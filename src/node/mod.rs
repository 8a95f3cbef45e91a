//! The I/O shell: a running node owns a tokio runtime, the sockets it bound and the tasks that
//! serve them. [`Node`] is the lifecycle handle the binding wraps.
//!
//! Lifecycle: OpenClaw restarts a plugin's service in place when its config changes, and a reload
//! loads a second copy of this addon into the same process. So nothing here is global: each
//! [`Node`] owns its own runtime, and `stop()` releases every port and task before it returns,
//! so the next `start()` (in this copy or another) can bind the same ports again.
//!
//! # Layout
//! - [`events`]: the bounded log/event queue the shim drains into OpenClaw's logger.
//! - [`actor`]: the task that owns the sans-IO [`Mesh`] (links, routes, calls, snapshot).
//! - [`supervisor`]: the actor's failures (a panic) and its bounded restarts, for status.
//! - [`service`]: the serving side of calls ([`Service`], [`CallCtx`], [`ChunkSink`]).
//! - [`stream`]: the calling side of streams ([`CallStream`], credit).
//! - [`remote_tools`]: the `tool.call` service and the caller side of the remote tools.
//! - [`handoff`]: `agent.handoff` / `agent.send` (serving through the host bridge) and the caller
//!   side of `cluster_handoff` / `cluster_send` (timeouts, retries, cancel); [`fake_host`] is a
//!   scripted host for tests and benchmarks.
//! - [`link`]: one task per WebSocket: handshake, then the pump between socket and actor;
//!   [`queue`] is its writer queue (which also carries the actor's close request).
//! - [`listener`]: the mesh listener socket (optional TLS), spawning inbound link tasks;
//!   [`admission`] limits unauthenticated connections (globally, per source) and keeps the
//!   hostile-input counters.
//! - [`dialer`] + [`backoff`]: one task per configured peer, reconnecting with backoff.
//! - [`tls`]: rustls server/client configs from `tls.*`.
//! - [`wake`]: coalesced wakes where streams cross threads (host → node, node → tool caller).
//! - `crate::proxy`: the local model proxy server.
//!
//! Tasks: actor (1), listener (1, plus one per inbound connection), dialer (1 per peer; its
//! links run inside it), proxy (1 plus its connections), served calls (1 per call, at most
//! [`MAX_SERVED_CALLS`]), remote tool calls started here (1 per call). All stop on the shutdown signal; the
//! actor sends `leave` and closes every link with 1000 after a bounded flush.

pub mod actor;
pub mod admission;
pub mod backoff;
pub mod dialer;
pub mod events;
#[cfg(unix)]
pub mod fake_host;
#[cfg(unix)]
pub mod handoff;
pub mod host;
pub mod link;
pub mod listener;
pub(crate) mod queue;
#[cfg(unix)]
pub mod remote_tools;
pub mod service;
pub mod stream;
pub mod supervisor;
pub mod tls;
mod tool_result;
pub mod wake;
pub mod ws;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::mesh::{LocalInfo, Mesh, MeshConfig, MeshStats, PeerState as MeshPeerState};
use crate::proto::{AgentInfo, HandshakeConfig, ModelInfo, NonceCache};
use crate::status::{MeshCounters, ModelView, PeerState, PeerView, StatusReport};
use crate::tools::catalog;

pub use actor::{MeshSnapshot, Services};
pub use events::{EventQueue, NodeEvent};
pub use service::{
    BoxFuture, CallCtx, ChunkSink, Service, MAX_SERVED_CALLS, METHOD_ECHO, METHOD_STREAM,
};
pub use stream::{CallOptions, CallStream, StreamItem};

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
    actor: actor::ActorHandle,
    snapshot: watch::Receiver<MeshSnapshot>,
    /// The actor's failures and restarts, for status.
    health: Arc<supervisor::ActorHealth>,
    /// The serving side of remote tools (policy, audit), for status.
    #[cfg(unix)]
    tools: Arc<crate::tools::serve::ToolServer>,
    /// Handoffs and messages, both sides, for status.
    #[cfg(unix)]
    handoffs: Arc<handoff::HandoffLog>,
    /// Hostile-input counters of the listener and the links, for status.
    counters: Arc<admission::ShellCounters>,
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
    host: Arc<host::HostBridge>,
    /// How tool calls' steps wake their consumers (napi's runtime, the JS thread).
    step_wakes: Arc<wake::Wakes>,
}

impl Node {
    /// A stopped node for a validated config.
    pub fn new(config: Config) -> Self {
        Node {
            config: Arc::new(config),
            running: Mutex::new(None),
            events: Arc::new(EventQueue::new()),
            extra_services: Mutex::new(Services::new()),
            host: host::HostBridge::new(),
            step_wakes: wake::Wakes::new(),
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
    pub fn host(&self) -> Arc<host::HostBridge> {
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
        if let Some(dir) = &opts.state_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("cannot create state dir {}: {e}", dir.display()),
                )
            })?;
        }
        // Load TLS material before binding anything: a bad file fails start() naming the field.
        let tls_acceptor = if self.config.listen {
            tls::server(&self.config.tls)?
        } else {
            None
        };
        let needs_client_tls =
            self.config.peers.iter().any(|p| p.parsed.tls) || self.config.tls.ca_file.is_some();
        let tls_connector = if needs_client_tls {
            Some(tls::client(&self.config.tls)?)
        } else {
            None
        };
        let started = Instant::now();
        self.host.reopen();
        let mesh = build_mesh(&self.config, 0)?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads())
            .thread_name("clawmatrix")
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorCode::Internal, format!("tokio runtime: {e}")))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        // Bind everything before spawning anything, so a bind failure leaves nothing behind.
        let listener = if self.config.listen {
            let addr = format!("{}:{}", self.config.listen_host, self.config.listen_port);
            Some(bind_with_backlog(
                &runtime,
                &addr,
                "listenPort",
                listener::LISTEN_BACKLOG,
            )?)
        } else {
            None
        };
        let proxy = bind(
            &runtime,
            &format!("127.0.0.1:{}", self.config.proxy_port),
            "proxyPort",
        )?;
        let info = StartInfo {
            listen_addr: listener.as_ref().and_then(|l| l.local_addr().ok()),
            proxy_addr: proxy
                .local_addr()
                .map_err(|e| Error::new(ErrorCode::Internal, format!("proxy addr: {e}")))?,
        };
        let _enter = runtime.enter();
        #[cfg(unix)]
        let tools = Arc::new(crate::tools::serve::ToolServer::new(
            &self.config,
            opts.workspace_dir.clone(),
            opts.state_dir.clone(),
        ));
        let mut services = Services::new();
        services.insert(METHOD_ECHO.to_string(), Arc::new(service::EchoService));
        services.insert(
            METHOD_STREAM.to_string(),
            Arc::new(service::StreamTestService),
        );
        #[cfg(unix)]
        services.insert(
            remote_tools::METHOD_TOOL_CALL.to_string(),
            Arc::new(remote_tools::ToolService {
                server: Arc::clone(&tools),
                gateway: remote_tools::GatewayTarget {
                    port: opts.gateway_port,
                    token: opts.gateway_token.clone(),
                },
                node_id: self.config.node_id.clone(),
            }),
        );
        services.insert(
            crate::proxy::tunnel::METHOD_MODEL.to_string(),
            Arc::new(crate::proxy::upstream::ModelService::new(
                self.config.clone(),
                self.host.clone(),
            )),
        );
        #[cfg(unix)]
        let handoffs = Arc::new(handoff::HandoffLog::default());
        #[cfg(unix)]
        {
            let agent_host = handoff::AgentHost {
                node_id: self.config.node_id.clone(),
                offered: self.config.agents.iter().map(|a| a.id.clone()).collect(),
                host: Arc::clone(&self.host),
                max_ms: self.config.handoff_max_ms,
                log: Arc::clone(&handoffs),
            };
            services.insert(
                handoff::METHOD_HANDOFF.to_string(),
                Arc::new(handoff::HandoffService(agent_host.clone())),
            );
            services.insert(
                handoff::METHOD_SEND.to_string(),
                Arc::new(handoff::SendService(agent_host)),
            );
        }
        for (k, v) in self
            .extra_services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            services.insert(k.clone(), Arc::clone(v));
        }
        let health = Arc::new(supervisor::ActorHealth::default());
        let remake_config = Arc::clone(&self.config);
        let (actor, snapshot, actor_task) = actor::spawn(
            mesh,
            Box::new(move || build_mesh(&remake_config, actor::now_ms(started))),
            started,
            self.events.clone(),
            shutdown_rx.clone(),
            services,
            Arc::clone(&health),
        );
        tasks.spawn(actor_task);
        let counters = Arc::new(admission::ShellCounters::default());
        let ctx = Arc::new(link::LinkCtx {
            actor: actor.clone(),
            events: self.events.clone(),
            handshake: HandshakeConfig::new(
                self.config.node_id.clone(),
                self.config.secret.as_bytes().to_vec(),
            ),
            epoch: started,
            next_link: AtomicU64::new(1),
            shutdown: shutdown_rx.clone(),
            counters: Arc::clone(&counters),
        });
        if let Some(l) = listener {
            let this = listener::Listener {
                ctx: ctx.clone(),
                tls: tls_acceptor,
                nonces: Arc::new(Mutex::new(NonceCache::default())),
                admission: admission::Admission::new(
                    admission::MAX_PENDING_HANDSHAKES,
                    admission::MAX_PENDING_PER_SOURCE,
                    Arc::clone(&counters),
                ),
                handshake_timeout: opts
                    .handshake_timeout
                    .unwrap_or(Duration::from_millis(listener::HANDSHAKE_TIMEOUT_MS)),
            };
            tasks.spawn(listener::serve(l, this));
        }
        for peer in &self.config.peers {
            let target = dialer::DialTarget {
                peer: peer.clone(),
                tls: if peer.parsed.tls {
                    tls_connector.clone()
                } else {
                    None
                },
                heartbeat: Duration::from_millis(self.config.heartbeat_interval_ms),
                seed: os_u64(),
            };
            tasks.spawn(dialer::run(ctx.clone(), target));
        }
        let proxy_ctx = Arc::new(crate::proxy::ProxyCtx {
            config: self.config.clone(),
            token: crate::proxy::token::derive(&self.config.secret, &self.config.node_id),
            snapshot: snapshot.clone(),
            actor: actor.clone(),
            events: self.events.clone(),
        });
        tasks.spawn(crate::proxy::sync_providers(
            proxy_ctx.clone(),
            info.proxy_addr.port(),
            self.host.clone(),
            shutdown_rx.clone(),
        ));
        for wakes in [self.host.wakes(), Arc::clone(&self.step_wakes)] {
            tasks.spawn(until_shutdown(wakes.pump(), shutdown_rx.clone()));
        }
        tasks.spawn(crate::proxy::serve(proxy, proxy_ctx, shutdown_rx));
        drop(_enter);
        self.events.info(format!(
            "node {} started: mesh {}, model proxy on {}",
            self.config.node_id,
            info.listen_addr
                .map(|a| {
                    let scheme = if self.config.tls.cert_file.is_some() {
                        "wss"
                    } else {
                        "ws"
                    };
                    format!("listening on {a} ({scheme})")
                })
                .unwrap_or_else(|| "dial-out only".into()),
            info.proxy_addr
        ));
        *guard = Some(Running {
            runtime,
            shutdown,
            tasks,
            started,
            info: info.clone(),
            actor,
            snapshot,
            health,
            #[cfg(unix)]
            tools,
            #[cfg(unix)]
            handoffs,
            counters,
        });
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

    /// The status report (spec §4 shape plus diagnostics). Synchronous: it reads the snapshot
    /// the actor last published.
    pub fn status(&self) -> StatusReport {
        let guard = self.lock();
        let c = &self.config;
        let (running, uptime_ms, listen_addr) = match guard.as_ref() {
            Some(r) => (
                true,
                r.started.elapsed().as_millis() as u64,
                r.info.listen_addr,
            ),
            None => (false, 0, None),
        };
        let snapshot = guard.as_ref().map(|r| r.snapshot.borrow().clone());
        let (failed, restarts) = guard
            .as_ref()
            .map(|r| r.health.view())
            .unwrap_or((None, None));
        // Started, but the actor is down after a failure: nothing moves, so not running.
        let running = running && failed.is_none();
        let counters = guard.as_ref().map(|r| Arc::clone(&r.counters));
        #[cfg(unix)]
        let tools = guard.as_ref().map(|r| tools_view(&r.tools));
        #[cfg(not(unix))]
        let tools: Option<serde_json::Value> = None;
        #[cfg(unix)]
        let handoffs = guard.as_ref().map(|r| r.handoffs.to_json());
        #[cfg(not(unix))]
        let handoffs: Option<serde_json::Value> = None;
        drop(guard);
        let listen = match (c.listen, listen_addr) {
            (true, Some(a)) => serde_json::Value::from(a.port()),
            (true, None) => serde_json::Value::from(c.listen_port),
            (false, _) => serde_json::Value::Bool(false),
        };
        let (peers, mut mesh) = match &snapshot {
            Some(s) => (peer_views(s, uptime_ms), mesh_counters(s)),
            None => (Vec::new(), MeshCounters::default()),
        };
        if let Some(c) = counters {
            shell_counters(&mut mesh, &c);
        }
        StatusReport {
            node_id: c.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            running,
            listen,
            listen_addr: listen_addr.map(|a| a.to_string()),
            proxy_port: c.proxy_port,
            uptime_ms,
            agents: agent_records(c),
            models: c
                .models
                .iter()
                .map(|m| ModelView {
                    id: m.id.clone(),
                    provider: Some(m.provider.clone()),
                    description: m.description.clone(),
                })
                .collect(),
            tags: c.tags.clone(),
            peers,
            mesh,
            tools,
            handoffs,
            failed,
            restarts,
        }
    }

    /// Make the node's actor panic with `reason`, as a bug in it would (tests of the
    /// supervision: status then reports the failure and the actor is restarted). Not exposed to
    /// JS. `false` when the node is not running.
    #[doc(hidden)]
    pub fn debug_panic_actor(&self, reason: &str) -> bool {
        let actor = self.lock().as_ref().map(|r| r.actor.clone());
        actor.is_some_and(|a| {
            a.tx.try_send(actor::Input::Panic {
                reason: reason.to_string(),
            })
            .is_ok()
        })
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
        let actor = self.lock().as_ref().map(|r| r.actor.clone());
        let Some(actor) = actor else {
            return Err(Error::new(
                ErrorCode::NotRunning,
                format!("request to {dst}: the node is not running"),
            ));
        };
        actor.request(dst, method, payload, timeout).await
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
        let actor = self.lock().as_ref().map(|r| r.actor.clone());
        let Some(actor) = actor else {
            return Err(Error::new(
                ErrorCode::NotRunning,
                format!("call to {dst}: the node is not running"),
            ));
        };
        actor.open_stream(dst, method, payload, opts.deadline).await
    }

    /// The mesh core's counters as last published, while running.
    pub fn mesh_stats(&self) -> Option<MeshStats> {
        self.lock()
            .as_ref()
            .map(|r| r.snapshot.borrow().stats.clone())
    }

    /// The whole mesh snapshot (peers, counters) as last published, while running.
    pub fn mesh_snapshot(&self) -> Option<MeshSnapshot> {
        self.lock().as_ref().map(|r| r.snapshot.borrow().clone())
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
            "cluster_handoff" | "cluster_send" => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{name} streams its result: use Node::start_tool"),
            )),
            other => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{other} streams its result: use Node::start_tool"),
            )),
        }
    }

    /// Run a tool call, streaming: validate the arguments, then `cluster_peers` answers at
    /// once, `cluster_exec` / `cluster_read` / `cluster_write` / `cluster_tool` run on the
    /// target node (see [`remote_tools`]), `cluster_handoff` / `cluster_send` go to a remote
    /// agent (see [`handoff`]). Pull the steps
    /// with [`remote_tools::ToolCall::next`].
    #[cfg(unix)]
    pub fn start_tool(
        &self,
        name: &str,
        args: &serde_json::Value,
        caller: remote_tools::ToolCaller,
    ) -> remote_tools::ToolCall {
        use remote_tools::{ToolCall, ToolEvent};
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
                r.actor.clone(),
                Arc::clone(&r.handoffs),
            )
        });
        let Some((runtime, actor, handoffs)) = running else {
            return ToolCall::ready(Err(Error::new(
                ErrorCode::NotRunning,
                format!("{name}: the clawmatrix service is not running on this gateway"),
            )));
        };
        let call = match name {
            "cluster_exec" | "cluster_read" | "cluster_write" | "cluster_tool" => {
                remote_tools::start_remote(
                    &runtime,
                    actor,
                    self.config.node_id.clone(),
                    name,
                    &args,
                    caller,
                )
            }
            "cluster_handoff" | "cluster_send" => {
                let ctx = handoff::CallerCtx {
                    actor,
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

/// The `tools` section of the status report: policy and audit summary.
#[cfg(unix)]
fn tools_view(t: &crate::tools::serve::ToolServer) -> serde_json::Value {
    let p = t.policy();
    serde_json::json!({
        "enabled": p.enabled(),
        "allow": p.allow_list(),
        "deny": p.deny_list(),
        "root": t.root_path().map(|r| r.display().to_string()),
        "audit": t.audit_summary().to_json(),
    })
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

/// The final output of a tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub text: String,
    pub details: serde_json::Value,
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

/// A u64 from the OS RNG (mesh seed, jitter seeds). If the OS cannot provide one, fall back to
/// the clock: these seeds only spread timers and ids, they protect no secret (nonces do not
/// use this path; see `link::os_nonce`).
fn os_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
    })
}

/// The mesh core for this config: identity, timers, and our own record (agents, models, tags);
/// `now` is the mesh clock (ms since start) it begins at.
fn build_mesh(c: &Config, now: u64) -> Result<Mesh> {
    // Incarnation = wall-clock ms at start, so it grows across restarts (PROTOCOL.md §4.2).
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
        .max(1);
    let mut cfg = MeshConfig::new(c.node_id.clone(), incarnation, os_u64());
    cfg.heartbeat_interval_ms = c.heartbeat_interval_ms;
    cfg.heartbeat_misses = c.heartbeat_misses;
    cfg.forget_after_ms = c.forget_after_ms;
    let local = LocalInfo {
        listen: c.listen,
        agents: agent_records(c),
        models: c
            .models
            .iter()
            .map(|m| {
                let mut extra = serde_json::Map::new();
                extra.insert("provider".into(), m.provider.clone().into());
                extra.insert("api".into(), m.api.as_str().into());
                extra.insert("reasoning".into(), m.reasoning.into());
                let input: Vec<&str> = m.input.iter().map(|i| i.as_str()).collect();
                extra.insert("input".into(), input.into());
                extra.insert("contextWindow".into(), m.context_window.into());
                extra.insert("maxTokens".into(), m.max_tokens.into());
                ModelInfo {
                    id: m.id.clone(),
                    description: m.description.clone(),
                    extra,
                }
            })
            .collect(),
        tags: c.tags.clone(),
    };
    let mut mesh = Mesh::new(cfg, LocalInfo::default(), now);
    mesh.update_local(now, local).map_err(|e| {
        Error::new(
            ErrorCode::ConfigInvalid,
            format!("agents/models/tags: too much to announce: {e}"),
        )
    })?;
    Ok(mesh)
}

/// Status rows from a snapshot; `now_ms` is the mesh clock now (ms since start).
fn peer_views(s: &MeshSnapshot, now_ms: u64) -> Vec<PeerView> {
    s.peers
        .iter()
        .map(|p| {
            let (state, connected, via) = match &p.state {
                MeshPeerState::Direct => (PeerState::Direct, true, None),
                MeshPeerState::Via { next_hop, .. } => {
                    (PeerState::Relayed, false, Some(next_hop.clone()))
                }
                MeshPeerState::Unreachable { .. } => (PeerState::Unreachable, false, None),
            };
            PeerView {
                node_id: p.node.clone(),
                state,
                connected,
                reachable_via: via,
                hops: p.hops,
                latency_ms: p.latency_ms.map(|l| l as f64),
                last_seen_ms_ago: Some(now_ms.saturating_sub(p.last_seen_ms)),
                agents: p.agents.clone(),
                models: p
                    .models
                    .iter()
                    .map(|m| ModelView {
                        id: m.id.clone(),
                        provider: m
                            .extra
                            .get("provider")
                            .and_then(|v| v.as_str())
                            .map(String::from),
                        description: m.description.clone(),
                    })
                    .collect(),
                tags: p.tags.clone(),
            }
        })
        .collect()
}

fn mesh_counters(s: &MeshSnapshot) -> MeshCounters {
    let st = &s.stats;
    let dropped = [
        ("ttl", st.dropped_ttl),
        ("dup", st.dropped_dup),
        ("noRoute", st.dropped_no_route),
        ("loop", st.dropped_loop),
        ("backpressure", st.dropped_backpressure),
        ("spoofed", st.dropped_spoofed),
        ("unknownLink", st.unknown_link),
        ("slowPeer", s.slow_peer_drops),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    MeshCounters {
        links_up: s.links_up as u64,
        frames_in: st.frames_in,
        frames_out: st.frames_out,
        bytes_in: st.bytes_in,
        bytes_out: st.bytes_out,
        delivered: st.delivered,
        relayed: st.relayed,
        dropped,
        handshake_rejects: st.handshake_rejects.clone(),
        decode_errors: st.decode_errors,
        decode_errors_by_code: st.decode_errors_by_code.clone(),
        heartbeat_timeouts: st.heartbeat_timeouts,
        slow_peer_closes: s.slow_peer_closes,
        calls_started: st.calls_started,
        calls_failed: st.calls_failed,
        records_refused: st.records_refused.clone(),
        records_held_bytes: st.records_held_bytes,
        own_record_echoes: st.own_record_echoes,
        own_record_superseded: st.own_record_superseded,
        // The shell's own counters: `shell_counters`.
        ..MeshCounters::default()
    }
}

/// The counters the shell keeps outside the core (pre-auth admission, 4010 closes).
fn shell_counters(m: &mut MeshCounters, c: &admission::ShellCounters) {
    m.preauth_pending = c.pending();
    m.preauth_rejects = c
        .preauth_rejects()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    m.protocol_error_closes = c
        .protocol_closes()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
}

/// Bind `addr` (every address it resolves to, in order, until one binds) with SO_REUSEADDR and
/// a listen queue of `backlog` connections (the kernel caps it at `net.core.somaxconn`).
fn bind_with_backlog(
    runtime: &tokio::runtime::Runtime,
    addr: &str,
    field: &str,
    backlog: u32,
) -> Result<tokio::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let failed = |e: std::io::Error| {
        Error::new(
            ErrorCode::BindFailed,
            format!("{field}: cannot bind {addr}: {e}"),
        )
    };
    let _enter = runtime.enter();
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address");
    for a in addr.to_socket_addrs().map_err(failed)? {
        let socket = match a {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        };
        let bound = socket.and_then(|s| {
            #[cfg(unix)]
            s.set_reuseaddr(true)?;
            s.bind(a)?;
            s.listen(backlog)
        });
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

fn bind(
    runtime: &tokio::runtime::Runtime,
    addr: &str,
    field: &str,
) -> Result<tokio::net::TcpListener> {
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| {
        Error::new(
            ErrorCode::BindFailed,
            format!("{field}: cannot bind {addr}: {e}"),
        )
    })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| Error::new(ErrorCode::BindFailed, format!("{field}: {addr}: {e}")))?;
    let _enter = runtime.enter();
    tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| Error::new(ErrorCode::BindFailed, format!("{field}: {addr}: {e}")))
}

/// Worker threads of a node's runtime (`CLAWMATRIX_WORKER_THREADS`, default 1). The mesh is one
/// actor and each link one task: with a single worker every hop between them is a same-thread
/// wake instead of a cross-thread one, which the benchmarks show is what dominates latency.
/// Blocking work (file tools) goes to tokio's blocking pool, not to the worker.
fn worker_threads() -> usize {
    std::env::var("CLAWMATRIX_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| (1..=64).contains(n))
        .unwrap_or(1)
}

/// The agents this node offers, as the mesh gossips them and status shows them.
fn agent_records(c: &Config) -> Vec<AgentInfo> {
    c.agents
        .iter()
        .map(|a| AgentInfo {
            id: a.id.clone(),
            description: a.description.clone(),
            tags: a.tags.clone(),
        })
        .collect()
}
