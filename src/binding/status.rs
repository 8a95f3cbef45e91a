//! The status report as typed JS objects (`ClawMatrixNode.status()` / `peers()`).
//!
//! These mirror [`crate::status::StatusReport`] (converted field by field, [`StatusReport::from_core`])
//! and the JSON sections it carries (`tools`, `handoffs`, parsed from that JSON). Two things keep the JS objects identical to the JSON the methods returned before
//! they had types (the `openclaw clawmatrix status --json` output must not change):
//! - fields are declared in the order of their JS names (the order a `serde_json::Map` has, so
//!   the order the keys had), and napi sets object fields in declaration order;
//! - a `None` is `null` where serde wrote `null` (`use_nullable`) and absent where serde skipped
//!   it. The napi derive would set such optional fields after all the others, so the structs
//!   that have them convert to JS through [`ordered_to_js`] instead, in declaration order.
//!
//! The test `typed_status_serializes_exactly_as_the_report_json` proves both for a report with
//! every section filled.

use std::collections::BTreeMap;

use napi::bindgen_prelude::{Object, ToNapiValue};
use napi_derive::napi;
use serde::{Deserialize, Serialize};

/// `ToNapiValue` for an object with fields that are absent when `None`: every field set in
/// declaration order (`req` always, `opt` when `Some`), under its JS name. Destructures the
/// struct, so a field added to it and not here does not compile.
macro_rules! ordered_to_js {
    ($ty:ident { $($kind:ident $field:ident $key:literal),* $(,)? }) => {
        impl $ty {
            /// The JS names of the fields, in the order they are set.
            #[cfg(test)]
            const JS_KEYS: &'static [&'static str] = &[$($key),*];
        }

        impl ToNapiValue for $ty {
            unsafe fn to_napi_value(
                env: napi::sys::napi_env,
                val: Self,
            ) -> napi::Result<napi::sys::napi_value> {
                let $ty { $($field),* } = val;
                let mut obj = Object::new(&napi::Env::from(env))?;
                $( ordered_to_js!(@set obj $kind $field $key); )*
                // SAFETY: forwarded with the env we were given.
                unsafe { Object::to_napi_value(env, obj) }
            }
        }
    };
    (@set $obj:ident req $field:ident $key:literal) => {
        $obj.set($key, $field)?;
    };
    (@set $obj:ident opt $field:ident $key:literal) => {
        if let Some(v) = $field {
            $obj.set($key, v)?;
        }
    };
}

/// How this node reaches a peer.
#[napi(string_enum = "lowercase")]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerState {
    /// An authenticated link to the peer is up.
    Direct,
    /// Reachable through another node.
    Relayed,
    /// Known from gossip but no path exists right now.
    Unreachable,
}

/// An agent offered by a node.
#[napi(object)]
#[derive(Debug, Serialize, Deserialize)]
pub struct AgentView {
    pub description: String,
    pub id: String,
    pub tags: Vec<String>,
}

/// A model shared by a node.
#[napi(object, object_to_js = false)]
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

/// One known node as seen from here.
#[napi(object, use_nullable = true)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerView {
    pub agents: Vec<AgentView>,
    /// True when a direct link is up.
    pub connected: bool,
    /// Fingerprint of the node key its record carries (`ed25519:…`).
    pub fingerprint: Option<String>,
    /// Links on the path (1 = direct); `null` when unreachable.
    pub hops: Option<u32>,
    /// Milliseconds since anything was last heard from or about this node.
    pub last_seen_ms_ago: Option<i64>,
    /// Path round-trip latency in milliseconds; `null` when unknown.
    pub latency_ms: Option<f64>,
    pub models: Vec<ModelView>,
    pub node_id: String,
    /// The next hop when relayed, `null` otherwise.
    pub reachable_via: Option<String>,
    pub state: PeerState,
    pub tags: Vec<String>,
    /// `pinned`, `first_seen` or `changed`; `null` when no key is bound yet.
    pub trust: Option<String>,
}

/// This node's key and the keys it trusts.
#[napi(object, object_to_js = false)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityView {
    /// `ed25519:` + 32 hex: what other nodes pin.
    pub fingerprint: String,
    /// The public key, 64 hex.
    pub key: String,
    /// The key file (absent without a state dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    pub trust: Vec<TrustView>,
}

/// One node id with a trusted key.
#[napi(object, object_to_js = false)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustView {
    pub fingerprint: String,
    pub node_id: String,
    /// Fingerprint of the last refused key, when `changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered: Option<String>,
    pub refusals: i64,
    /// `pinned`, `first_seen` or `changed`.
    pub state: String,
}

/// The result of a trust reset.
#[napi(object)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustReset {
    /// What happened, for the operator.
    pub message: String,
    pub node_id: String,
    /// Whether a key was trusted (and is now forgotten).
    pub reset: bool,
}

/// Mesh counters of this node since it started (see [`crate::status::MeshCounters`]).
#[napi(object)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshCounters {
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub calls_failed: i64,
    pub calls_started: i64,
    pub decode_errors: i64,
    pub decode_errors_by_code: BTreeMap<String, i64>,
    pub delivered: i64,
    /// Dropped frames by reason.
    pub dropped: BTreeMap<String, i64>,
    #[napi(js_name = "e2eOpened")]
    pub e2e_opened: i64,
    /// Routed frames refused by the end-to-end check, by reason.
    #[napi(js_name = "e2eRefused")]
    pub e2e_refused: BTreeMap<String, i64>,
    #[napi(js_name = "e2eSealed")]
    pub e2e_sealed: i64,
    pub frames_in: i64,
    pub frames_out: i64,
    /// Handshake rejections by code.
    pub handshake_rejects: BTreeMap<String, i64>,
    pub heartbeat_timeouts: i64,
    /// Keys refused for a node id, by reason.
    pub key_refusals: BTreeMap<String, i64>,
    pub links_up: i64,
    /// Failure detection: local health, stalls, self-doubts and indirect probes.
    pub liveness: BTreeMap<String, i64>,
    pub own_record_echoes: i64,
    pub own_record_superseded: i64,
    pub preauth_pending: i64,
    pub preauth_rejects: BTreeMap<String, i64>,
    pub protocol_error_closes: BTreeMap<String, i64>,
    pub records_held_bytes: i64,
    pub records_refused: BTreeMap<String, i64>,
    pub relayed: i64,
    pub slow_peer_closes: i64,
}

/// The most recent remote tool call served here.
#[napi(object, use_nullable = true)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastToolCall {
    pub caller_agent: Option<String>,
    pub caller_node: String,
    pub duration_ms: i64,
    /// `ok`, `denied` or `error:<code>`.
    pub outcome: String,
    pub tool: String,
    /// RFC 3339 UTC.
    pub ts: String,
}

/// Counters of remote tool calls served since the node started.
#[napi(object, use_nullable = true)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolAudit {
    pub by_tool: BTreeMap<String, i64>,
    pub calls: i64,
    pub denied: i64,
    pub errors: i64,
    pub last: Option<LastToolCall>,
    pub log_path: Option<String>,
    pub ok: i64,
    pub write_errors: i64,
}

/// Remote tool policy and audit.
#[napi(object, use_nullable = true)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolsStatus {
    pub allow: Vec<String>,
    pub audit: ToolAudit,
    pub deny: Vec<String>,
    pub enabled: bool,
    pub root: Option<String>,
}

/// One handoff (caller or server side).
#[napi(object, object_to_js = false)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_to_stop_ms: Option<i64>,
    pub agent: String,
    pub chars: i64,
    pub chunks: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_chunk_ms: Option<i64>,
    pub id: String,
    pub peer: String,
    /// `caller` or `server`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    pub started_ms_ago: i64,
    /// `running`, `ok`, `error`, `timeout`, `cancelled`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_matches_final: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<String>,
}

/// Handoffs and messages.
#[napi(object)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandoffsStatus {
    pub called: i64,
    pub messages_received: i64,
    pub messages_sent: i64,
    pub recent: Vec<HandoffView>,
    pub running: i64,
    pub served: i64,
}

/// A failure of the node's actor.
#[napi(object)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// When, RFC 3339 UTC.
    pub at: String,
    /// What failed (the panic message).
    pub reason: String,
    /// Whether a restart is scheduled.
    pub restarting: bool,
}

/// Restarts of the node's actor.
#[napi(object)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restarts {
    pub count: u32,
    pub last_failure: Failure,
}

/// The status report of this node (0.1.8 fields plus diagnostics).
#[napi(object, object_to_js = false)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub agents: Vec<AgentView>,
    /// Set while the node's actor is down after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoffs: Option<HandoffsStatus>,
    /// This node's key and the keys it trusts (absent while stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityView>,
    /// The bound mesh listener port, or `false` when not listening.
    #[napi(ts_type = "number | false")]
    pub listen: serde_json::Value,
    /// The bound listener address (`host:port`), when listening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<String>,
    pub mesh: MeshCounters,
    pub models: Vec<ModelView>,
    pub node_id: String,
    pub peers: Vec<PeerView>,
    pub proxy_port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<Restarts>,
    pub running: bool,
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolsStatus>,
    pub uptime_ms: i64,
    pub version: String,
}

ordered_to_js!(ModelView {
    opt description "description",
    req id "id",
    opt provider "provider",
});

ordered_to_js!(HandoffView {
    opt abort_to_stop_ms "abortToStopMs",
    req agent "agent",
    req chars "chars",
    req chunks "chunks",
    opt duration_ms "durationMs",
    opt error "error",
    opt first_chunk_ms "firstChunkMs",
    req id "id",
    req peer "peer",
    req role "role",
    opt run_id "runId",
    opt session_key "sessionKey",
    req started_ms_ago "startedMsAgo",
    req state "state",
    opt stream_matches_final "streamMatchesFinal",
    opt tail "tail",
});

ordered_to_js!(IdentityView {
    req fingerprint "fingerprint",
    req key "key",
    opt key_file "keyFile",
    req trust "trust",
});

ordered_to_js!(TrustView {
    req fingerprint "fingerprint",
    req node_id "nodeId",
    opt offered "offered",
    req refusals "refusals",
    req state "state",
});

ordered_to_js!(StatusReport {
    req agents "agents",
    opt failed "failed",
    opt handoffs "handoffs",
    opt identity "identity",
    req listen "listen",
    opt listen_addr "listenAddr",
    req mesh "mesh",
    req models "models",
    req node_id "nodeId",
    req peers "peers",
    req proxy_port "proxyPort",
    opt restarts "restarts",
    req running "running",
    req tags "tags",
    opt tools "tools",
    req uptime_ms "uptimeMs",
    req version "version",
});

/// A counter as a JS number (exact up to 2^53; a u64 past i64::MAX never occurs).
fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn counts(m: BTreeMap<String, u64>) -> BTreeMap<String, i64> {
    m.into_iter().map(|(k, v)| (k, n(v))).collect()
}

/// The typed form of a JSON section the core built.
fn section<T: serde::de::DeserializeOwned>(
    what: &str,
    v: serde_json::Value,
) -> crate::error::Result<T> {
    serde_json::from_value(v).map_err(|e| {
        crate::error::Error::new(
            crate::error::ErrorCode::Internal,
            format!("status report: {what}: does not fit its JS type: {e}"),
        )
    })
}

impl From<crate::status::AgentView> for AgentView {
    fn from(a: crate::status::AgentView) -> Self {
        AgentView {
            description: a.description,
            id: a.id,
            tags: a.tags,
        }
    }
}

impl From<crate::status::ModelView> for ModelView {
    fn from(m: crate::status::ModelView) -> Self {
        ModelView {
            description: m.description,
            id: m.id,
            provider: m.provider,
        }
    }
}

impl From<crate::status::PeerView> for PeerView {
    fn from(p: crate::status::PeerView) -> Self {
        use crate::status::PeerState as S;
        PeerView {
            agents: p.agents.into_iter().map(Into::into).collect(),
            connected: p.connected,
            fingerprint: p.fingerprint,
            hops: p.hops,
            last_seen_ms_ago: p.last_seen_ms_ago.map(n),
            latency_ms: p.latency_ms,
            models: p.models.into_iter().map(Into::into).collect(),
            node_id: p.node_id,
            reachable_via: p.reachable_via,
            state: match p.state {
                S::Direct => PeerState::Direct,
                S::Relayed => PeerState::Relayed,
                S::Unreachable => PeerState::Unreachable,
            },
            tags: p.tags,
            trust: p.trust,
        }
    }
}

impl From<crate::status::IdentityView> for IdentityView {
    fn from(i: crate::status::IdentityView) -> Self {
        IdentityView {
            fingerprint: i.fingerprint,
            key: i.key,
            key_file: i.key_file,
            trust: i
                .trust
                .into_iter()
                .map(|t| TrustView {
                    fingerprint: t.fingerprint,
                    node_id: t.node_id,
                    offered: t.offered,
                    refusals: n(t.refusals),
                    state: t.state,
                })
                .collect(),
        }
    }
}

impl From<crate::status::MeshCounters> for MeshCounters {
    fn from(m: crate::status::MeshCounters) -> Self {
        MeshCounters {
            bytes_in: n(m.bytes_in),
            bytes_out: n(m.bytes_out),
            calls_failed: n(m.calls_failed),
            calls_started: n(m.calls_started),
            decode_errors: n(m.decode_errors),
            decode_errors_by_code: counts(m.decode_errors_by_code),
            delivered: n(m.delivered),
            dropped: counts(m.dropped),
            e2e_opened: n(m.e2e_opened),
            e2e_refused: counts(m.e2e_refused),
            e2e_sealed: n(m.e2e_sealed),
            frames_in: n(m.frames_in),
            frames_out: n(m.frames_out),
            handshake_rejects: counts(m.handshake_rejects),
            heartbeat_timeouts: n(m.heartbeat_timeouts),
            key_refusals: counts(m.key_refusals),
            links_up: n(m.links_up),
            liveness: counts(m.liveness),
            own_record_echoes: n(m.own_record_echoes),
            own_record_superseded: n(m.own_record_superseded),
            preauth_pending: n(m.preauth_pending),
            preauth_rejects: counts(m.preauth_rejects),
            protocol_error_closes: counts(m.protocol_error_closes),
            records_held_bytes: n(m.records_held_bytes),
            records_refused: counts(m.records_refused),
            relayed: n(m.relayed),
            slow_peer_closes: n(m.slow_peer_closes),
        }
    }
}

impl From<crate::status::Failure> for Failure {
    fn from(f: crate::status::Failure) -> Self {
        Failure {
            at: f.at,
            reason: f.reason,
            restarting: f.restarting,
        }
    }
}

impl StatusReport {
    /// The report for JS. Fails (`CLAWMATRIX_INTERNAL`) only if a JSON section no longer fits
    /// its type, which the tests below catch.
    pub fn from_core(r: crate::status::StatusReport) -> crate::error::Result<Self> {
        Ok(StatusReport {
            agents: r.agents.into_iter().map(Into::into).collect(),
            failed: r.failed.map(Into::into),
            handoffs: r.handoffs.map(|v| section("handoffs", v)).transpose()?,
            identity: r.identity.map(Into::into),
            listen: r.listen,
            listen_addr: r.listen_addr,
            mesh: r.mesh.into(),
            models: r.models.into_iter().map(Into::into).collect(),
            node_id: r.node_id,
            peers: r.peers.into_iter().map(Into::into).collect(),
            proxy_port: u32::from(r.proxy_port),
            restarts: r.restarts.map(|x| Restarts {
                count: x.count,
                last_failure: x.last_failure.into(),
            }),
            running: r.running,
            tags: r.tags,
            tools: r.tools.map(|v| section("tools", v)).transpose()?,
            uptime_ms: n(r.uptime_ms),
            version: r.version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A report with every optional part present, its sections built by the code that builds
    /// them for the real report.
    fn full_report() -> Value {
        let audit = crate::tools::audit::AuditSummary {
            calls: 3,
            ok: 1,
            denied: 1,
            errors: 1,
            by_tool: [("exec".to_string(), 3)].into_iter().collect(),
            last: Some(crate::tools::audit::LastCall {
                ts: "2026-01-01T00:00:00Z".into(),
                caller_node: "b".into(),
                caller_agent: None,
                tool: "exec".into(),
                outcome: "ok".into(),
                duration_ms: 4,
            }),
            write_errors: 0,
            log_path: None,
        };
        let mut record = crate::handoff::HandoffRecord::default();
        record.role = "caller";
        record.id = "h1".into();
        record.state = "ok".into();
        record.duration_ms = Some(5);
        record.tail = Some("…".into());
        let mut bare = crate::handoff::HandoffRecord::default();
        bare.role = "server";
        let failure = json!({ "reason": "boom", "at": "2026-01-01T00:00:00Z", "restarting": true });
        json!({
            "nodeId": "a", "version": "0.2.0", "running": true, "listen": 19000,
            "listenAddr": "127.0.0.1:19000", "proxyPort": 19001, "uptimeMs": 7,
            "agents": [{ "id": "coder", "description": "", "tags": ["x"] }],
            "models": [{ "id": "m1", "provider": "p" }, { "id": "m2", "description": "d" }],
            "tags": [],
            "peers": [
                { "nodeId": "b", "state": "direct", "connected": true, "reachableVia": null,
                  "hops": 1, "latencyMs": 1.5, "lastSeenMsAgo": 3, "agents": [], "models": [], "tags": [],
                  "fingerprint": "ed25519:00112233445566778899aabbccddeeff", "trust": "first_seen" },
                { "nodeId": "c", "state": "unreachable", "connected": false, "reachableVia": null,
                  "hops": null, "latencyMs": null, "lastSeenMsAgo": null, "agents": [], "models": [], "tags": [],
                  "fingerprint": null, "trust": null },
            ],
            "identity": {
                "fingerprint": "ed25519:00112233445566778899aabbccddeeff", "key": "ab".repeat(32),
                "keyFile": "/state/node.key",
                "trust": [
                    { "nodeId": "b", "fingerprint": "ed25519:00112233445566778899aabbccddeeff",
                      "state": "changed", "offered": "ed25519:ffeeddccbbaa99887766554433221100", "refusals": 2 },
                    { "nodeId": "p", "fingerprint": "ed25519:00112233445566778899aabbccddeeff",
                      "state": "pinned", "refusals": 0 },
                ],
            },
            "mesh": crate::status::MeshCounters {
                dropped: [("ttl".to_string(), 2)].into_iter().collect(),
                ..Default::default()
            },
            "tools": { "enabled": true, "allow": ["read"], "deny": [], "root": null, "audit": audit.to_json() },
            "handoffs": { "served": 1, "called": 1, "running": 0, "messagesSent": 0, "messagesReceived": 2,
                          "recent": [record, bare] },
            "failed": failure,
            "restarts": { "count": 1, "lastFailure": failure },
        })
    }

    #[test]
    fn typed_status_serializes_exactly_as_the_report_json() {
        let v = full_report();
        let core: crate::status::StatusReport = serde_json::from_value(v.clone()).expect("parses");
        let t = StatusReport::from_core(core).expect("fits");
        // Same text: same values, same nulls and absences, and the fields in the order of the
        // JSON map (which the declaration order must follow, as napi sets them in that order).
        assert_eq!(
            serde_json::to_string(&t).expect("serializes"),
            serde_json::to_string(&v).expect("serializes")
        );
    }

    /// The keys of `v`'s JSON object, in order.
    fn keys(v: impl Serialize) -> Vec<String> {
        match serde_json::to_value(v).expect("serializes") {
            Value::Object(m) => m.keys().cloned().collect(),
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn objects_converted_by_hand_use_serde_s_names_in_serde_s_order() {
        let full_handoff = HandoffView {
            abort_to_stop_ms: Some(1),
            agent: String::new(),
            chars: 0,
            chunks: 0,
            duration_ms: Some(1),
            error: Some(String::new()),
            first_chunk_ms: Some(1),
            id: String::new(),
            peer: String::new(),
            role: String::new(),
            run_id: Some(String::new()),
            session_key: Some(String::new()),
            started_ms_ago: 0,
            state: String::new(),
            stream_matches_final: Some(true),
            tail: Some(String::new()),
        };
        assert_eq!(keys(&full_handoff), HandoffView::JS_KEYS);
        let full_model = ModelView {
            description: Some(String::new()),
            id: String::new(),
            provider: Some(String::new()),
        };
        assert_eq!(keys(&full_model), ModelView::JS_KEYS);
        let full_identity = IdentityView {
            fingerprint: String::new(),
            key: String::new(),
            key_file: Some(String::new()),
            trust: Vec::new(),
        };
        assert_eq!(keys(&full_identity), IdentityView::JS_KEYS);
        let full_trust = TrustView {
            fingerprint: String::new(),
            node_id: String::new(),
            offered: Some(String::new()),
            refusals: 0,
            state: String::new(),
        };
        assert_eq!(keys(&full_trust), TrustView::JS_KEYS);
        let core: crate::status::StatusReport =
            serde_json::from_value(full_report()).expect("parses");
        let report = StatusReport::from_core(core).expect("fits");
        assert_eq!(keys(&report), StatusReport::JS_KEYS);
    }

    #[test]
    fn a_stopped_node_s_report_fits_its_type_too() {
        let report = crate::app::Node::new(
            crate::config::Config::from_json(
                &json!({ "nodeId": "n", "secret": "0123456789abcdef" }),
            )
            .expect("valid")
            .config,
        )
        .status();
        let v = serde_json::to_value(&report).expect("serializes");
        let t = StatusReport::from_core(report).expect("fits");
        assert_eq!(
            serde_json::to_string(&t).expect("serializes"),
            serde_json::to_string(&v).expect("serializes")
        );
    }
}
