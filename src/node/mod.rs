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
//! - [`listener`]: the mesh listener socket.
//! - `crate::proxy`: the local model proxy server.

pub mod events;
pub mod listener;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::status::{AgentView, ModelView, StatusReport};
use crate::tools::catalog;

pub use events::{EventQueue, NodeEvent};

/// How long `stop()` waits for tasks to finish after the shutdown signal before aborting them.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Options for [`Node::start`].
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Plugin state directory (OpenClaw's service `stateDir`); created if missing.
    pub state_dir: Option<std::path::PathBuf>,
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
    started: Instant,
    info: StartInfo,
}

/// A mesh node: configuration plus, while started, its runtime and sockets.
///
/// The std `Mutex` guards only quick state swaps and is never held across an `.await`.
pub struct Node {
    config: Arc<Config>,
    running: Mutex<Option<Running>>,
    events: Arc<EventQueue>,
}

impl Node {
    /// A stopped node for a validated config.
    pub fn new(config: Config) -> Self {
        Node {
            config: Arc::new(config),
            running: Mutex::new(None),
            events: Arc::new(EventQueue::new()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The queue the shim drains for logs and events.
    pub fn events(&self) -> Arc<EventQueue> {
        self.events.clone()
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clawmatrix")
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorCode::Internal, format!("tokio runtime: {e}")))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        // Bind everything before spawning anything, so a bind failure leaves nothing behind.
        let listener = if self.config.listen {
            let addr = format!("{}:{}", self.config.listen_host, self.config.listen_port);
            Some(bind(&runtime, &addr, "listenPort")?)
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
        if let Some(l) = listener {
            tasks.spawn(listener::serve(l, shutdown_rx.clone(), self.events.clone()));
        }
        tasks.spawn(crate::proxy::serve(
            proxy,
            self.config.clone(),
            shutdown_rx,
            self.events.clone(),
        ));
        drop(_enter);
        self.events.info(format!(
            "node {} started: mesh {}, model proxy on {}",
            self.config.node_id,
            info.listen_addr
                .map(|a| format!("listening on {a}"))
                .unwrap_or_else(|| "dial-out only".into()),
            info.proxy_addr
        ));
        *guard = Some(Running {
            runtime,
            shutdown,
            tasks,
            started: Instant::now(),
            info: info.clone(),
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

    /// The status report (spec §4 shape plus diagnostics).
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
        let listen = match (c.listen, listen_addr) {
            (true, Some(a)) => serde_json::Value::from(a.port()),
            (true, None) => serde_json::Value::from(c.listen_port),
            (false, _) => serde_json::Value::Bool(false),
        };
        StatusReport {
            node_id: c.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            running,
            listen,
            listen_addr: listen_addr.map(|a| a.to_string()),
            proxy_port: c.proxy_port,
            uptime_ms,
            agents: c
                .agents
                .iter()
                .map(|a| AgentView {
                    id: a.id.clone(),
                    description: a.description.clone(),
                    tags: a.tags.clone(),
                })
                .collect(),
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
            peers: Vec::new(),
        }
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
        match name {
            "cluster_peers" => {
                let status = self.status();
                let text = crate::status::render_text(&status);
                let details = serde_json::to_value(&status)
                    .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
                Ok(ToolOutput { text, details })
            }
            other => Err(not_built(other)),
        }
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

/// The final output of a tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub text: String,
    pub details: serde_json::Value,
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

fn not_built(tool: &str) -> Error {
    let capability = match tool {
        "cluster_handoff" => "handoff (remote agent runs)",
        "cluster_send" => "messages (remote agent sessions)",
        _ => "remote tools (exec/read/write/tool proxy)",
    };
    Error::new(
        ErrorCode::NotImplemented,
        format!(
            "{tool}: the {capability} capability is not built in this version of clawmatrix yet"
        ),
    )
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
