//! The status and peer reports shown by `clawmatrix.status`, `clawmatrix.peers`, the
//! `cluster_peers` tool and `openclaw clawmatrix status`.
//!
//! The shape keeps 0.1.8's fields (`nodeId`, `listen` = port or `false`, `proxyPort`, `agents`,
//! `models`, `tags`, `peers[]` with `nodeId, agents, models, tags, connected, reachableVia,
//! latencyMs`) and adds what an operator needs to debug a mesh (state, hops, last seen, counters).
//! One serde model is the single source for every surface; the readable CLI text is rendered from
//! it in Rust ([`render_text`]) so the shim only prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An agent offered by a node: the same record the mesh gossips (`id`, `description`, `tags`).
pub use crate::proto::AgentInfo as AgentView;

/// A model shared by a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// How this node reaches a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerState {
    /// An authenticated link to the peer is up.
    Direct,
    /// Reachable through another node.
    Relayed,
    /// Known from gossip but no path exists right now.
    Unreachable,
}

/// One known node as seen from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub node_id: String,
    pub state: PeerState,
    /// 0.1.8 field: true when a direct link is up.
    pub connected: bool,
    /// 0.1.8 field: the next hop when relayed, `null` otherwise.
    pub reachable_via: Option<String>,
    /// Links on the path (1 = direct); `null` when unreachable.
    pub hops: Option<u32>,
    /// Path round-trip latency in milliseconds: the measured smoothed RTT of the first link
    /// plus the advertised RTT buckets of the links beyond it; `null` when unknown.
    pub latency_ms: Option<f64>,
    /// Milliseconds since anything was last heard from or about this node.
    pub last_seen_ms_ago: Option<u64>,
    pub agents: Vec<AgentView>,
    pub models: Vec<ModelView>,
    pub tags: Vec<String>,
    /// Fingerprint of the node key its record carries (`ed25519:…`).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// How this node trusts that key: `pinned`, `first_seen`, or `changed` (another key was
    /// offered for the node id and refused); `null` when no key is bound yet.
    #[serde(default)]
    pub trust: Option<String>,
}

/// This node's identity and what it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityView {
    /// Fingerprint of this node's key (`ed25519:` + 32 hex), what other nodes pin.
    pub fingerprint: String,
    /// The public key, 64 hex.
    pub key: String,
    /// The key file; absent without a state dir (the key then lasts as long as the process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Every node id with a trusted key or a pin, in node-id order.
    pub trust: Vec<TrustView>,
}

/// One node id this node trusts a key for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustView {
    pub node_id: String,
    /// Fingerprint of the trusted key (the pin, for a pinned node).
    pub fingerprint: String,
    /// `pinned`, `first_seen`, or `changed` (another key was offered and refused).
    pub state: String,
    /// Fingerprint of the last refused key, when `changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered: Option<String>,
    /// How many times another key was refused for this node id.
    pub refusals: u64,
}

/// Mesh counters of this node since it started (cumulative; all 0 when stopped).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshCounters {
    /// Authenticated links up now.
    pub links_up: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Routed frames delivered to this node.
    pub delivered: u64,
    /// Routed frames forwarded for others.
    pub relayed: u64,
    /// Dropped frames by reason (`ttl`, `dup`, `noRoute`, `loop`, `backpressure`, `spoofed`,
    /// `unknownLink`, `slowPeer`).
    pub dropped: BTreeMap<String, u64>,
    /// Handshake rejections by code (`bad_mac`, `replay`, ...).
    pub handshake_rejects: BTreeMap<String, u64>,
    /// Inbound connections waiting for their handshake now (pre-auth slots held).
    pub preauth_pending: u64,
    /// Inbound connections refused or cut before they authenticated, by reason: `globalFull`
    /// and `perSource` (closed at accept: every pre-auth slot, or the source's share, taken),
    /// `deadline` (cut at the hard pre-auth deadline).
    pub preauth_rejects: BTreeMap<String, u64>,
    /// Links closed with 4010 `protocol_error` by the framing after the handshake, by reason
    /// (`frameTooLarge`: a message over `MAX_FRAME_BYTES`; `badFraming`: a WebSocket violation).
    pub protocol_error_closes: BTreeMap<String, u64>,
    pub decode_errors: u64,
    pub decode_errors_by_code: BTreeMap<String, u64>,
    pub heartbeat_timeouts: u64,
    /// Failure detection (`mesh::core::liveness`): `localHealth` (gauge: 0 = healthy, up to 8;
    /// timeouts stretch `1 + localHealth` times), `localStalls` (ticks late by a stall of this
    /// process), `selfDoubts` (silences blamed on this node), `probesSent` / `probeAcks` /
    /// `probesServed` (indirect probes asked / answered / answered for others) and
    /// `heartbeatTimeoutsPeerAlive` (links that died while a neighbour still heard the peer).
    pub liveness: BTreeMap<String, u64>,
    /// Links closed because their send queue stayed full.
    pub slow_peer_closes: u64,
    pub calls_started: u64,
    pub calls_failed: u64,
    /// Gossiped records refused by reason (`bad_node_id`, `absurd_stamp`, `too_large`,
    /// `budget`, `full`).
    pub records_refused: BTreeMap<String, u64>,
    /// Estimated memory held now for other nodes' records, bytes (at most 16 MiB).
    pub records_held_bytes: u64,
    /// Copies of this node's own record that came back around a loop (ignored).
    pub own_record_echoes: u64,
    /// Copies of this node's own record newer than its own (re-published past them).
    pub own_record_superseded: u64,
    /// Keys refused for a node id, by reason (`key_changed`, `revoked`, `trust_full`).
    pub key_refusals: BTreeMap<String, u64>,
    /// Routed frames for this node refused by the end-to-end check, by reason (`bad_tag`,
    /// `replay`, `unsealed`, `no_key`, `mismatch`, `bad_inner`, `no_session`; `seq` for a
    /// stream chunk out of order).
    pub e2e_refused: BTreeMap<String, u64>,
    /// Routed frames sealed here / opened here.
    pub e2e_sealed: u64,
    pub e2e_opened: u64,
}

/// The whole status report of this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub node_id: String,
    /// Crate version of the running core.
    pub version: String,
    pub running: bool,
    /// 0.1.8 field: the bound mesh listener port, or `false` when not listening.
    pub listen: serde_json::Value,
    /// The bound listener address (`host:port`), when listening.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<String>,
    pub proxy_port: u16,
    pub uptime_ms: u64,
    pub agents: Vec<AgentView>,
    pub models: Vec<ModelView>,
    pub tags: Vec<String>,
    pub peers: Vec<PeerView>,
    /// Mesh counters; absent in reports from older versions.
    #[serde(default)]
    pub mesh: MeshCounters,
    /// This node's key and the keys it trusts; absent while stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityView>,
    /// Remote tool policy (`enabled`, `allow`, `deny`, `root`) and the audit summary
    /// (`audit`: calls, ok, denied, errors, byTool, last, ...); absent while stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<serde_json::Value>,
    /// Handoffs and messages (`served`, `called`, `running`, `messagesSent`,
    /// `messagesReceived`, `recent[]`); absent while stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoffs: Option<serde_json::Value>,
    /// Set while the node's actor is down after a failure (a panic); `running` is false
    /// meanwhile. Absent when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failure>,
    /// Restarts of the node's actor after failures since start, and the last failure; absent
    /// when it never failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<Restarts>,
}

/// A failure of the node's actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// What failed (the panic message).
    pub reason: String,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Whether a restart is scheduled; false once the restart budget is spent (restart the
    /// service then).
    pub restarting: bool,
}

/// Restarts of the node's actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restarts {
    pub count: u32,
    pub last_failure: Failure,
}

/// Render the readable summary printed by `openclaw clawmatrix status`.
pub fn render_text(s: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let listen = match &s.listen_addr {
        Some(addr) => format!("listening on {addr}"),
        None => "not listening (dial-out only)".to_string(),
    };
    let _ = writeln!(
        out,
        "ClawMatrix node {} (v{}) - {}",
        s.node_id,
        s.version,
        match (&s.failed, s.running) {
            (Some(_), _) => "FAILED",
            (None, true) => "running",
            (None, false) => "stopped",
        }
    );
    render_health(&mut out, s);
    if let Some(id) = &s.identity {
        let _ = writeln!(out, "  Node key: {}", id.fingerprint);
        render_trust(&mut out, &id.trust);
    }
    let _ = writeln!(out, "  Mesh: {listen}");
    let _ = writeln!(out, "  Traffic: {}", render_counters(&s.mesh));
    let _ = writeln!(out, "  Model proxy: http://127.0.0.1:{}/v1", s.proxy_port);
    if let Some(t) = &s.tools {
        let _ = writeln!(out, "  Tools: {}", render_tools(t));
    }
    if let Some(h) = &s.handoffs {
        let n = |k: &str| h.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let _ = writeln!(
            out,
            "  Handoffs: {} served, {} called, {} running; messages {} sent, {} received",
            n("served"),
            n("called"),
            n("running"),
            n("messagesSent"),
            n("messagesReceived")
        );
    }
    let _ = writeln!(out, "  Agents: {}", join_agents(&s.agents));
    let _ = writeln!(out, "  Models: {}", join_models(&s.models));
    let _ = writeln!(out, "  Tags: {}", join_or_none(&s.tags));
    render_peers(&mut out, &s.peers);
    out
}

/// The failure and restart lines, when there are any.
fn render_health(out: &mut String, s: &StatusReport) {
    use std::fmt::Write;
    if let Some(f) = &s.failed {
        let next = if f.restarting {
            "restarting"
        } else {
            "not restarted again: restart the service"
        };
        let _ = writeln!(out, "  Failed at {}: {} ({next})", f.at, f.reason);
    }
    if let Some(r) = &s.restarts {
        let _ = writeln!(
            out,
            "  Restarts: {} (last failure at {}: {})",
            r.count, r.last_failure.at, r.last_failure.reason
        );
    }
}

/// The peers header and one block per peer.
/// One line per trusted node id; a refused key is called out.
fn render_trust(out: &mut String, trust: &[TrustView]) {
    use std::fmt::Write;
    if trust.is_empty() {
        return;
    }
    let _ = writeln!(out, "  Trusted keys ({}):", trust.len());
    for t in trust {
        let _ = write!(out, "    {}: {} ({})", t.node_id, t.fingerprint, t.state);
        if let Some(o) = &t.offered {
            let _ = write!(
                out,
                " - REFUSED {o} {} time(s); if {} was reinstalled, check it and run \
                 `openclaw clawmatrix trust reset {}`",
                t.refusals, t.node_id, t.node_id
            );
        }
        let _ = writeln!(out);
    }
}

fn render_peers(out: &mut String, peers: &[PeerView]) {
    use std::fmt::Write;
    let connected = peers.iter().filter(|p| p.connected).count();
    let _ = writeln!(out, "Peers ({}/{} connected)", connected, peers.len());
    for p in peers {
        let how = match p.state {
            PeerState::Direct => "connected directly".to_string(),
            PeerState::Relayed => format!(
                "reachable via {} ({} hops)",
                p.reachable_via.as_deref().unwrap_or("?"),
                p.hops.unwrap_or(0)
            ),
            PeerState::Unreachable => "unreachable".to_string(),
        };
        let latency = p
            .latency_ms
            .map(|l| format!("{l:.1} ms"))
            .unwrap_or_else(|| "-".to_string());
        let seen = p
            .last_seen_ms_ago
            .map(|ms| format!("{:.1} s ago", ms as f64 / 1000.0))
            .unwrap_or_else(|| "never".to_string());
        let key = match (&p.fingerprint, &p.trust) {
            (Some(f), Some(t)) => format!(", key {f} ({t})"),
            (Some(f), None) => format!(", key {f}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  - {}: {how}, latency {latency}, last seen {seen}{key}",
            p.node_id
        );
        let _ = writeln!(out, "      agents: {}", join_agents(&p.agents));
        let _ = writeln!(out, "      models: {}", join_models(&p.models));
        let _ = writeln!(out, "      tags: {}", join_or_none(&p.tags));
    }
}

/// One line of remote-tool policy and audit counters.
fn render_tools(t: &serde_json::Value) -> String {
    let list = |v: &serde_json::Value| {
        let items: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    let a = &t["audit"];
    let n = |k: &str| a[k].as_u64().unwrap_or(0);
    let policy = if t["enabled"].as_bool() == Some(true) {
        format!(
            "proxy enabled (allow {}, deny {}, root {})",
            list(&t["allow"]),
            list(&t["deny"]),
            t["root"].as_str().unwrap_or("(none)")
        )
    } else {
        "proxy disabled".to_string()
    };
    format!(
        "{policy}; served {} calls ({} ok, {} denied, {} errors)",
        n("calls"),
        n("ok"),
        n("denied"),
        n("errors")
    )
}

/// One line of mesh counters.
fn render_counters(m: &MeshCounters) -> String {
    let map = |m: &BTreeMap<String, u64>| {
        let parts: Vec<String> = m
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    };
    let sum = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
    format!(
        "{} links up, frames {} in / {} out, relayed {}, dropped {}{}, handshake rejects {}{}, \
         pre-auth {} pending / {} refused{}, decode errors {}, protocol-error closes {}{}, \
         slow-peer closes {}, records refused {}{} (holding {} KiB)",
        m.links_up,
        m.frames_in,
        m.frames_out,
        m.relayed,
        sum(&m.dropped),
        map(&m.dropped),
        sum(&m.handshake_rejects),
        map(&m.handshake_rejects),
        m.preauth_pending,
        sum(&m.preauth_rejects),
        map(&m.preauth_rejects),
        m.decode_errors,
        sum(&m.protocol_error_closes),
        map(&m.protocol_error_closes),
        m.slow_peer_closes,
        sum(&m.records_refused),
        map(&m.records_refused),
        m.records_held_bytes / 1024
    )
}

fn join_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

fn join_agents(agents: &[AgentView]) -> String {
    join_or_none(&agents.iter().map(|a| a.id.clone()).collect::<Vec<_>>())
}

fn join_models(models: &[ModelView]) -> String {
    join_or_none(&models.iter().map(|m| m.id.clone()).collect::<Vec<_>>())
}

/// Render a status report received as JSON (the CLI gets it from the gateway method).
pub fn render_value(v: &serde_json::Value) -> crate::error::Result<String> {
    let report: StatusReport = serde_json::from_value(v.clone()).map_err(|e| {
        crate::error::Error::new(
            crate::error::ErrorCode::InvalidArgument,
            format!("status report: {e}"),
        )
    })?;
    Ok(render_text(&report))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, milliseconds). Times before 1970 print as the
/// epoch.
pub fn rfc3339_utc(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = if m <= 2 { y + 1 } else { y };
    // Both fit: d in 1..=31, m in 1..=12.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            node_id: "home-01".into(),
            version: "0.2.0".into(),
            running: true,
            listen: serde_json::Value::Bool(false),
            listen_addr: None,
            proxy_port: 19001,
            uptime_ms: 5,
            agents: vec![AgentView {
                id: "assistant".into(),
                description: "personal".into(),
                tags: vec!["general".into()],
            }],
            models: vec![],
            tags: vec!["home".into()],
            peers: vec![
                PeerView {
                    node_id: "cloud-01".into(),
                    state: PeerState::Direct,
                    connected: true,
                    reachable_via: None,
                    hops: Some(1),
                    latency_ms: Some(1.25),
                    last_seen_ms_ago: Some(300),
                    agents: vec![],
                    models: vec![],
                    tags: vec!["cloud".into()],
                    fingerprint: Some("ed25519:00112233445566778899aabbccddeeff".into()),
                    trust: Some("pinned".into()),
                },
                PeerView {
                    node_id: "office-01".into(),
                    state: PeerState::Relayed,
                    connected: false,
                    reachable_via: Some("cloud-01".into()),
                    hops: Some(2),
                    latency_ms: Some(2.5),
                    last_seen_ms_ago: Some(1200),
                    agents: vec![],
                    models: vec![ModelView {
                        id: "claude-sonnet".into(),
                        provider: None,
                        description: None,
                    }],
                    tags: vec!["gpu".into()],
                    fingerprint: None,
                    trust: None,
                },
            ],
            identity: None,
            tools: None,
            handoffs: None,
            failed: None,
            restarts: None,
            mesh: MeshCounters {
                links_up: 1,
                handshake_rejects: [("bad_mac".to_string(), 2)].into_iter().collect(),
                preauth_pending: 3,
                preauth_rejects: [("perSource".to_string(), 40)].into_iter().collect(),
                protocol_error_closes: [("frameTooLarge".to_string(), 1)].into_iter().collect(),
                ..MeshCounters::default()
            },
        }
    }

    #[test]
    fn status_json_keeps_the_0_1_8_field_names() {
        let v = serde_json::to_value(report()).unwrap_or_default();
        for key in [
            "nodeId",
            "listen",
            "proxyPort",
            "agents",
            "models",
            "tags",
            "peers",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let peer = &v["peers"][1];
        for key in [
            "nodeId",
            "agents",
            "models",
            "tags",
            "connected",
            "reachableVia",
            "latencyMs",
        ] {
            assert!(peer.get(key).is_some(), "peer missing {key}");
        }
        assert_eq!(v["listen"], serde_json::Value::Bool(false));
        assert_eq!(peer["reachableVia"], "cloud-01");
        assert_eq!(peer["state"], "relayed");
    }

    #[test]
    fn text_summary_counts_connected_peers_and_shows_the_path() {
        let text = render_text(&report());
        assert!(text.contains("ClawMatrix node home-01"), "{text}");
        assert!(text.contains("Peers (1/2 connected)"), "{text}");
        assert!(
            text.contains("office-01: reachable via cloud-01 (2 hops)"),
            "{text}"
        );
        assert!(
            text.contains("cloud-01: connected directly, latency 1.2 ms"),
            "{text}"
        );
        assert!(text.contains("not listening (dial-out only)"), "{text}");
        assert!(text.contains("models: claude-sonnet"), "{text}");
        assert!(
            text.contains("Traffic: 1 links up")
                && text.contains("handshake rejects 2 (bad_mac 2)")
                && text.contains("pre-auth 3 pending / 40 refused (perSource 40)")
                && text.contains("protocol-error closes 1 (frameTooLarge 1)"),
            "{text}"
        );
        let v = serde_json::to_value(report()).unwrap_or_default();
        assert_eq!(v["mesh"]["preauthPending"], 3);
        assert_eq!(v["mesh"]["preauthRejects"]["perSource"], 40);
        assert_eq!(v["mesh"]["protocolErrorCloses"]["frameTooLarge"], 1);
    }

    #[test]
    fn a_report_without_mesh_counters_still_parses() {
        let mut v = serde_json::to_value(report()).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.remove("mesh");
        }
        let back: StatusReport = serde_json::from_value(v).expect("parses");
        assert_eq!(back.mesh, MeshCounters::default());
    }
}
