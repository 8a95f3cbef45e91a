//! The status report: assembled from the snapshot the actor last published, the actor's
//! health, the shell's counters and the services' own state (tool policy and audit, handoffs).
//! Synchronous: it never waits on the runtime.

use std::sync::Arc;

use super::Node;
use crate::config::Config;
use crate::mesh::PeerState as MeshPeerState;
use crate::node::admission;
use crate::proto::AgentInfo;
use crate::rpc::MeshSnapshot;
use crate::status::{MeshCounters, ModelView, PeerState, PeerView, StatusReport};

impl Node {
    /// The peer rows of the status report, without building the rest of it.
    pub fn peers(&self) -> Vec<PeerView> {
        let guard = self.lock();
        guard.as_ref().map_or_else(Vec::new, |r| {
            let uptime_ms = r.started.elapsed().as_millis() as u64;
            r.mesh.with_snapshot(|s| peer_views(s, uptime_ms))
        })
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
        // Read the published snapshot in place: only the rows and counters are copied out.
        let viewed = guard.as_ref().map(|r| {
            r.mesh
                .with_snapshot(|s| (peer_views(s, uptime_ms), mesh_counters(s)))
        });
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
        let (peers, mut mesh) = viewed.unwrap_or_default();
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

/// The agents this node offers, as the mesh gossips them and status shows them.
pub(super) fn agent_records(c: &Config) -> Vec<AgentInfo> {
    c.agents
        .iter()
        .map(|a| AgentInfo {
            id: a.id.clone(),
            description: a.description.clone(),
            tags: a.tags.clone(),
        })
        .collect()
}
