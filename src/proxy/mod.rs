//! Shared models: the local OpenAI-compatible proxy on `127.0.0.1:<proxyPort>` (hyper) and the
//! mesh tunnel behind it.
//!
//! # Layout
//! - `mod.rs`: the accept loop ([`serve`]) and the provider sync ([`sync_providers`]).
//! - [`http`]: the consumer side of one request: auth, limits, routing, fail-over between
//!   candidate nodes before the first byte.
//! - `body.rs`: the response streamed back byte for byte from the mesh stream, ended by the
//!   overall deadline or an error event; cancelled when the client goes away.
//! - [`route`]: model id (+ pin) → ordered candidate nodes.
//! - [`tunnel`]: the `model.http` mesh call's payloads.
//! - [`upstream`]: the serving side, the `model.http` service: upstream resolution through the
//!   host, the upstream request, bytes streamed back.
//! - [`client`]: the HTTP/1.1 client and connection pool the serving side calls upstreams with.
//! - [`providers`]: the OpenClaw providers (`models.providers.clawmatrix-<nodeId>`) kept in step
//!   with gossip.
//! - [`errors`]: OpenAI-shaped error responses; [`token`]: the local proxy token.

mod body;
pub mod client;
pub mod errors;
pub mod http;
pub mod providers;
pub mod route;
pub mod token;
pub mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::events::EventQueue;
use crate::host::{HostBridge, HostDeadline};
use crate::rpc::MeshClient;

/// What the proxy needs from the node.
pub struct ProxyCtx {
    pub config: Arc<Config>,
    /// The local proxy token (see [`token`]).
    pub token: String,
    /// The mesh: calls to the serving node and the snapshot routes are chosen from.
    pub mesh: MeshClient,
    pub events: Arc<EventQueue>,
}

/// Accept and serve until shutdown; each connection runs in its own task and is told to finish
/// gracefully when shutdown fires.
pub async fn serve(listener: TcpListener, ctx: Arc<ProxyCtx>, mut shutdown: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, _peer)) => {
                    let _ = sock.set_nodelay(true);
                    let ctx = ctx.clone();
                    let mut conn_shutdown = shutdown.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| http::handle(req, ctx.clone()));
                        let conn = http1::Builder::new().serve_connection(TokioIo::new(sock), svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            _ = conn.as_mut() => {}
                            _ = conn_shutdown.changed() => {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                            }
                        }
                    });
                }
                Err(e) => {
                    ctx.events.warn(format!("model proxy: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// How long the provider sync waits for gossip to settle before writing.
const SYNC_DEBOUNCE: Duration = Duration::from_millis(500);
/// Retry delay after a failed provider sync.
const SYNC_RETRY: Duration = Duration::from_secs(10);

/// Keep OpenClaw's `models.providers` in step with the models the mesh announces: whenever the
/// desired set changes, ask the host (`providers.sync`) to merge it into its config. No mesh
/// call waits for it: OpenClaw may take `hostTimeoutMs` to answer, then it is asked again.
pub async fn sync_providers(
    ctx: Arc<ProxyCtx>,
    port: u16,
    host: Arc<HostBridge>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut snapshot = ctx.mesh.watch();
    let mut synced: Option<std::collections::BTreeMap<String, serde_json::Value>> = None;
    let mut warned_detached = false;
    loop {
        let want = {
            let s = snapshot.borrow_and_update();
            providers::desired(&ctx.config, &s.peers, port, &ctx.token)
        };
        let mut wait = None;
        if synced.as_ref() != Some(&want) {
            let params = serde_json::json!({ "providers": want });
            match host.call(crate::host::HostKind::ProvidersSync, params) {
                Err(_) if !host.attached() => {
                    if !warned_detached {
                        ctx.events
                            .info("providers: waiting for the OpenClaw host to attach".into());
                        warned_detached = true;
                    }
                    wait = Some(Duration::from_millis(200));
                }
                Err(e) => {
                    ctx.events.warn(format!("providers: {}", e.message));
                    wait = Some(SYNC_RETRY);
                }
                Ok(call) => match call.result_by(&sync_deadline(&ctx.config)).await {
                    Ok(v) => {
                        log_plan(&ctx.events, &v);
                        synced = Some(want);
                    }
                    Err(e) if e.code == crate::error::ErrorCode::Timeout => {
                        ctx.events.warn(format!("providers: {}", e.message));
                        wait = Some(SYNC_RETRY);
                    }
                    Err(e) => {
                        ctx.events.warn(format!(
                            "providers: OpenClaw refused the update: {}",
                            e.message
                        ));
                        wait = Some(SYNC_RETRY);
                    }
                },
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = async { tokio::time::sleep(wait.unwrap_or(Duration::MAX)).await }, if wait.is_some() => {}
            changed = snapshot.changed(), if wait.is_none() => {
                if changed.is_err() { return; }
                tokio::time::sleep(SYNC_DEBOUNCE).await;
            }
        }
    }
}

/// How long OpenClaw may take to write the providers: `hostTimeoutMs` (no mesh call waits).
fn sync_deadline(config: &Config) -> HostDeadline {
    let ms = config.host_timeout_ms;
    HostDeadline::after(
        Duration::from_millis(ms),
        format!("hostTimeoutMs ({ms} ms)"),
    )
}

fn log_plan(events: &EventQueue, v: &serde_json::Value) {
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (added, updated, removed, conflicts) = (
        list("added"),
        list("updated"),
        list("removed"),
        list("conflicts"),
    );
    if !(added.is_empty() && updated.is_empty() && removed.is_empty()) {
        events.info(format!(
            "providers: models.providers updated (added [{}], updated [{}], removed [{}]); pick a mesh model with /model clawmatrix-<nodeId>/<modelId>",
            added.join(", "),
            updated.join(", "),
            removed.join(", ")
        ));
    }
    for c in conflicts {
        let node = c.strip_prefix(providers::PROVIDER_PREFIX).unwrap_or(&c);
        events.warn(format!(
            "providers: models.providers.{c} is your own entry, so node {node}'s models are not added as provider {c}; \
             rename yours (the models stay usable through the proxy as {node}/<modelId>)"
        ));
    }
}
