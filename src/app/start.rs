//! Starting a node, in three steps that each do one thing:
//!
//! 1. [`bind`]: load the TLS material, build the runtime, bind the mesh listener and the proxy.
//!    Nothing is spawned yet, so a failure (a bad certificate, a port in use) leaves nothing
//!    behind and names the config field.
//! 2. [`build_services`]: the methods this node serves (echo and stream for tests, remote tools,
//!    the model upstream, handoff and send, then the embedder's), each written against
//!    [`crate::rpc`] only.
//! 3. [`spawn`]: the actor (which owns the mesh core), the listener, one dialer per peer, the
//!    provider sync, the wake pumps and the proxy, all stopped by one shutdown signal.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{until_shutdown, Running, StartInfo, StartOptions};
use crate::config::Config;
use crate::error::{Error, ErrorCode, Result};
use crate::events::EventQueue;
use crate::host::HostBridge;
use crate::identity::NodeKey;
use crate::mesh::{LocalInfo, Mesh, MeshConfig};
use crate::node::actor::TrustChange;
use crate::node::{actor, admission, dialer, link, listener, supervisor};
use crate::proto::{HandshakeConfig, ModelInfo, NonceCache};
use crate::rpc::{EchoService, Services, StreamTestService, METHOD_ECHO, METHOD_STREAM};
use crate::tls;
use crate::wake::Wakes;

/// Step 1's result: what is bound, and the runtime the rest runs on.
pub(super) struct Bound {
    runtime: tokio::runtime::Runtime,
    listener: Option<tokio::net::TcpListener>,
    proxy: tokio::net::TcpListener,
    tls_acceptor: Option<TlsAcceptor>,
    tls_connector: Option<TlsConnector>,
    started: Instant,
    mesh: Mesh,
    identity: super::identity::Identity,
    info: StartInfo,
}

impl Bound {
    /// The node's runtime (services are built inside it).
    pub(super) fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
}

/// Step 1: state dir, TLS material, the mesh core, the runtime and the sockets.
pub(super) fn bind(config: &Config, opts: &StartOptions) -> Result<Bound> {
    if let Some(dir) = &opts.state_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot create state dir {}: {e}", dir.display()),
            )
        })?;
    }
    // Load TLS material before binding anything: a bad file fails start() naming the field.
    let tls_acceptor = if config.listen {
        tls::server(&config.tls)?
    } else {
        None
    };
    let needs_client_tls =
        config.peers.iter().any(|p| p.parsed.tls) || config.tls.ca_file.is_some();
    let tls_connector = if needs_client_tls {
        Some(tls::client(&config.tls)?)
    } else {
        None
    };
    let started = Instant::now();
    let identity = super::identity::load(config, opts.state_dir.as_deref())?;
    let mesh = build_mesh(config, &identity.key, &identity.trust, 0)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .thread_name("clawmatrix")
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorCode::Internal, format!("tokio runtime: {e}")))?;
    // A socket the embedder bound (StartOptions::listener / proxy_listener) replaces the bind
    // of the configured port.
    let handed = |l: &Option<listener::PreBound>, port, field| match l {
        Some(l) => l.adopt(&runtime, port, field),
        None => Ok(None),
    };
    let listener = if config.listen {
        let port = config.listen_port;
        Some(match handed(&opts.listener, port, "listenPort")? {
            Some(l) => l,
            None => bind_with_backlog(
                &runtime,
                &format!("{}:{port}", config.listen_host),
                "listenPort",
                listener::LISTEN_BACKLOG,
            )?,
        })
    } else {
        None
    };
    let proxy = match handed(&opts.proxy_listener, config.proxy_port, "proxyPort")? {
        Some(l) => l,
        None => bind_proxy(
            &runtime,
            &format!("127.0.0.1:{}", config.proxy_port),
            "proxyPort",
        )?,
    };
    let info = StartInfo {
        listen_addr: listener.as_ref().and_then(|l| l.local_addr().ok()),
        proxy_addr: proxy
            .local_addr()
            .map_err(|e| Error::new(ErrorCode::Internal, format!("proxy addr: {e}")))?,
    };
    Ok(Bound {
        runtime,
        listener,
        proxy,
        tls_acceptor,
        tls_connector,
        started,
        mesh,
        identity,
        info,
    })
}

/// Step 2's result: the services, and the state of theirs that status reports.
pub(super) struct Built {
    services: Services,
    #[cfg(unix)]
    tools: Arc<crate::tools::serve::ToolServer>,
    #[cfg(unix)]
    handoffs: Arc<crate::handoff::HandoffLog>,
}

/// Step 2: every method this node serves; `extra` (the embedder's) replaces a built-in of the
/// same name. Runs inside the node's runtime (services may capture its handle).
pub(super) fn build_services(
    config: &Arc<Config>,
    opts: &StartOptions,
    host: &Arc<HostBridge>,
    extra: Services,
) -> Built {
    let mut services = Services::new();
    services.insert(METHOD_ECHO.to_string(), Arc::new(EchoService));
    services.insert(METHOD_STREAM.to_string(), Arc::new(StreamTestService));
    services.insert(
        crate::proxy::tunnel::METHOD_MODEL.to_string(),
        Arc::new(crate::proxy::upstream::ModelService::new(
            Arc::clone(config),
            Arc::clone(host),
        )),
    );
    #[cfg(unix)]
    let tools = Arc::new(crate::tools::serve::ToolServer::new(
        config,
        opts.workspace_dir.clone(),
        opts.state_dir.clone(),
    ));
    #[cfg(unix)]
    {
        use crate::tools::remote;
        services.insert(
            remote::METHOD_TOOL_CALL.to_string(),
            Arc::new(remote::ToolService {
                server: Arc::clone(&tools),
                gateway: remote::GatewayTarget {
                    port: opts.gateway_port,
                    token: opts.gateway_token.clone(),
                },
                node_id: config.node_id.clone(),
            }),
        );
    }
    #[cfg(unix)]
    let handoffs = Arc::new(crate::handoff::HandoffLog::default());
    #[cfg(unix)]
    {
        use crate::handoff;
        let agent_host = handoff::AgentHost {
            node_id: config.node_id.clone(),
            offered: config.agents.iter().map(|a| a.id.clone()).collect(),
            host: Arc::clone(host),
            max_ms: config.handoff_max_ms,
            log: Arc::clone(&handoffs),
            access: crate::access::Access::new(&config.access),
            host_timeout_ms: config.host_timeout_ms,
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
    services.extend(extra);
    Built {
        services,
        #[cfg(unix)]
        tools,
        #[cfg(unix)]
        handoffs,
    }
}

/// Step 3: spawn every task of the node on its runtime; the result is the running node.
pub(super) fn spawn(
    config: &Arc<Config>,
    opts: &StartOptions,
    events: &Arc<EventQueue>,
    host: &Arc<HostBridge>,
    step_wakes: &Arc<Wakes>,
    bound: Bound,
    built: Built,
) -> Result<Running> {
    let Bound {
        runtime,
        listener,
        proxy,
        tls_acceptor,
        tls_connector,
        started,
        mesh,
        identity,
        info,
    } = bound;
    let _enter = runtime.enter();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let health = Arc::new(supervisor::ActorHealth::default());
    let remake_config = Arc::clone(config);
    let remake_key = Arc::clone(&identity.key);
    let remake_trust = Arc::clone(&identity.trust);
    // Trust changes are written off the actor's thread, one at a time, in order.
    let (trust_tx, trust_rx) = tokio::sync::mpsc::unbounded_channel::<TrustChange>();
    tasks.spawn(persist_trust(
        trust_rx,
        Arc::clone(&identity.trust),
        Arc::clone(events),
    ));
    let (actor, snapshot, actor_task) = actor::spawn(
        mesh,
        Box::new(move || {
            build_mesh(
                &remake_config,
                &remake_key,
                &remake_trust,
                actor::now_ms(started),
            )
        }),
        started,
        Arc::clone(events),
        shutdown_rx.clone(),
        built.services,
        Arc::clone(&health),
        Arc::new(move |change| {
            let _ = trust_tx.send(change);
        }),
    );
    tasks.spawn(actor_task);
    let counters = Arc::new(admission::ShellCounters::default());
    let ctx = Arc::new(link::LinkCtx {
        actor: actor.clone(),
        events: Arc::clone(events),
        handshake: HandshakeConfig {
            previous: config
                .secret_previous
                .as_ref()
                .map(|s| s.as_bytes().to_vec()),
            ..HandshakeConfig::new(
                config.node_id.clone(),
                config.secret.as_bytes().to_vec(),
                Arc::clone(&identity.key),
            )
        },
        epoch: started,
        next_link: AtomicU64::new(1),
        shutdown: shutdown_rx.clone(),
        counters: Arc::clone(&counters),
    });
    spawn_mesh_io(
        &mut tasks,
        &ctx,
        config,
        opts,
        listener,
        tls_acceptor,
        tls_connector,
        &counters,
    );
    let mesh = actor.client(snapshot);
    let proxy_ctx = Arc::new(crate::proxy::ProxyCtx {
        config: Arc::clone(config),
        token: crate::proxy::token::derive(&config.secret, &config.node_id),
        mesh: mesh.clone(),
        events: Arc::clone(events),
    });
    tasks.spawn(crate::proxy::sync_providers(
        proxy_ctx.clone(),
        info.proxy_addr.port(),
        Arc::clone(host),
        shutdown_rx.clone(),
    ));
    for wakes in [host.wakes(), Arc::clone(step_wakes)] {
        tasks.spawn(until_shutdown(wakes.pump(), shutdown_rx.clone()));
    }
    tasks.spawn(crate::proxy::serve(proxy, proxy_ctx, shutdown_rx));
    drop(_enter);
    events.info(super::identity::started_line(&identity));
    log_started(events, config, &info);
    Ok(Running {
        runtime,
        shutdown,
        tasks,
        started,
        info,
        actor,
        mesh,
        health,
        #[cfg(unix)]
        tools: built.tools,
        #[cfg(unix)]
        handoffs: built.handoffs,
        counters,
        identity: identity.key,
        key_file: identity.key_file,
    })
}

/// Write trust changes to the trust store on the blocking pool, in order: every change that
/// is waiting goes in one batch and one save (a mesh coming up binds many keys at once, and
/// each save rewrites the whole file).
async fn persist_trust(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<TrustChange>,
    store: Arc<super::identity::TrustStore>,
    events: Arc<EventQueue>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let store = Arc::clone(&store);
        let events = Arc::clone(&events);
        let _ = tokio::task::spawn_blocking(move || store.apply(batch, &events)).await;
    }
}

/// The listener (when `listen`) and one dialer per configured peer.
#[allow(clippy::too_many_arguments)]
fn spawn_mesh_io(
    tasks: &mut JoinSet<()>,
    ctx: &Arc<link::LinkCtx>,
    config: &Config,
    opts: &StartOptions,
    listener: Option<tokio::net::TcpListener>,
    tls_acceptor: Option<TlsAcceptor>,
    tls_connector: Option<TlsConnector>,
    counters: &Arc<admission::ShellCounters>,
) {
    if let Some(l) = listener {
        let this = listener::Listener {
            ctx: Arc::clone(ctx),
            tls: tls_acceptor,
            nonces: Arc::new(Mutex::new(NonceCache::default())),
            admission: admission::Admission::new(
                admission::MAX_PENDING_HANDSHAKES,
                admission::MAX_PENDING_PER_SOURCE,
                Arc::clone(counters),
            ),
            handshake_timeout: opts
                .handshake_timeout
                .unwrap_or(Duration::from_millis(listener::HANDSHAKE_TIMEOUT_MS)),
        };
        tasks.spawn(listener::serve(l, this));
    }
    for peer in &config.peers {
        let target = dialer::DialTarget {
            peer: peer.clone(),
            tls: if peer.parsed.tls {
                tls_connector.clone()
            } else {
                None
            },
            heartbeat: Duration::from_millis(config.heartbeat_interval_ms),
            seed: os_u64(),
            previous_first: std::sync::atomic::AtomicBool::new(false),
        };
        tasks.spawn(dialer::run(Arc::clone(ctx), target));
    }
}

/// The one line that says what a started node bound.
fn log_started(events: &EventQueue, config: &Config, info: &StartInfo) {
    events.info(format!(
        "node {} started: mesh {}, model proxy on {}",
        config.node_id,
        info.listen_addr
            .map(|a| {
                let scheme = if config.tls.cert_file.is_some() {
                    "wss"
                } else {
                    "ws"
                };
                format!("listening on {a} ({scheme})")
            })
            .unwrap_or_else(|| "dial-out only".into()),
        info.proxy_addr
    ));
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
fn build_mesh(
    c: &Config,
    identity: &Arc<NodeKey>,
    trust: &super::identity::TrustStore,
    now: u64,
) -> Result<Mesh> {
    // Incarnation = wall-clock ms at start, so it grows across restarts (PROTOCOL.md §4.2).
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(1)
        .max(1);
    let exchange = super::identity::fresh_exchange_key()?;
    let mut cfg = MeshConfig::new(
        c.node_id.clone(),
        incarnation,
        os_u64(),
        Arc::clone(identity),
        exchange,
    );
    cfg.pins = c
        .identity
        .pins
        .iter()
        .map(|(n, f)| (n.clone(), *f))
        .collect();
    cfg.revoked = c.identity.revoked.iter().copied().collect();
    cfg.trusted = trust.remembered();
    cfg.heartbeat_interval_ms = c.heartbeat_interval_ms;
    cfg.heartbeat_misses = c.heartbeat_misses;
    cfg.forget_after_ms = c.forget_after_ms;
    let local = LocalInfo {
        listen: c.listen,
        agents: super::report::agent_records(c),
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

fn bind_proxy(
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
