//! The status report: assembled from the snapshot the actor last published, the actor's
//! health, the shell's counters and the services' own state (tool policy and audit, handoffs).
//! Synchronous: it never waits on the runtime.

use std::sync::Arc;

use super::Node;
use crate::config::Config;
use crate::identity::Fingerprint;
use crate::mesh::trust::{TrustRow, TrustSource};
use crate::mesh::PeerState as MeshPeerState;
use crate::node::admission;
use crate::proto::AgentInfo;
use crate::rpc::MeshSnapshot;
use crate::status::{
    IdentityView, MeshCounters, ModelView, PeerState, PeerView, StatusReport, TrustView,
};

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
            r.mesh.with_snapshot(|s| {
                let identity = identity_view(&r.identity, r.key_file.as_deref(), &s.trust);
                (peer_views(s, uptime_ms), mesh_counters(s), identity)
            })
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
        let (peers, mut mesh, identity) = match viewed {
            Some((p, m, i)) => (p, m, Some(i)),
            None => Default::default(),
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
            identity,
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

/// How a trust row reads in status: `pinned`, `first_seen`, or `changed` once another key
/// was refused for the node id.
fn trust_state(r: &TrustRow) -> &'static str {
    if r.conflict.is_some() {
        "changed"
    } else {
        r.source.as_str()
    }
}

/// The identity section: our key, and every trusted key or pin.
fn identity_view(
    key: &crate::identity::NodeKey,
    key_file: Option<&std::path::Path>,
    trust: &[TrustRow],
) -> IdentityView {
    IdentityView {
        fingerprint: key.fingerprint().to_string(),
        key: key.public().encode(),
        key_file: key_file.map(|p| p.display().to_string()),
        trust: trust
            .iter()
            .map(|r| TrustView {
                node_id: r.node.clone(),
                fingerprint: r.fingerprint.to_string(),
                state: trust_state(r).to_string(),
                offered: r.conflict.map(|c| Fingerprint::of(&c.offered).to_string()),
                refusals: r.conflict.map_or(0, |c| c.count),
            })
            .collect(),
    }
}

/// Status rows from a snapshot; `now_ms` is the mesh clock now (ms since start).
fn peer_views(s: &MeshSnapshot, now_ms: u64) -> Vec<PeerView> {
    s.peers
        .iter()
        .map(|p| {
            let row = s
                .trust
                .binary_search_by(|r| r.node.as_str().cmp(&p.node))
                .ok()
                .map(|i| &s.trust[i]);
            // A pin whose key the peer's record does not carry is not this key's trust.
            let trust = row
                .filter(|r| r.key == Some(p.key) || r.source == TrustSource::Pinned)
                .map(|r| trust_state(r).to_string());
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
                fingerprint: Some(Fingerprint::of(&p.key).to_string()),
                trust,
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
        liveness: [
            ("localHealth", st.local_health),
            ("localStalls", st.local_stalls),
            ("selfDoubts", st.self_doubts),
            ("probesSent", st.probes_sent),
            ("probeAcks", st.probe_acks),
            ("probesServed", st.probes_served),
            (
                "heartbeatTimeoutsPeerAlive",
                st.heartbeat_timeouts_peer_alive,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        slow_peer_closes: s.slow_peer_closes,
        calls_started: st.calls_started,
        calls_failed: st.calls_failed,
        records_refused: st.records_refused.clone(),
        records_held_bytes: st.records_held_bytes,
        own_record_echoes: st.own_record_echoes,
        own_record_superseded: st.own_record_superseded,
        key_refusals: st.key_refusals.clone(),
        e2e_refused: st.e2e_refused.clone(),
        e2e_sealed: st.e2e_sealed,
        e2e_opened: st.e2e_opened,
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
