//! OpenClaw providers for mesh models: one `models.providers.<nodeId>` entry per serving node,
//! pointing at this node's proxy (`http://127.0.0.1:<proxyPort>/node/<nodeId>/v1`) with the local
//! proxy token as its key, so users pick `/model <nodeId>/<modelId>` and configure nothing.
//!
//! Why config providers and not `api.registerProvider`: plugin providers are fixed at
//! `register()` time (before the mesh is known), and OpenClaw 2026.9.6 finds a plugin provider's
//! key only through env variables declared in the manifest for fixed provider ids; config
//! providers are hot-reloaded (`models.*` reloads without a restart), appear in
//! `openclaw models list`, and carry their own key. See README "Shared models".
//!
//! The entries this module owns are recognised by their base URL (a loopback proxy URL whose
//! `/node/<id>` matches the entry's id); entries the user wrote are never touched, and a user
//! entry with a node's id is reported as a conflict.
//!
//! Which models: every model the mesh announces, or, when `proxyModels` is not empty, only those
//! it lists (honouring its `nodeId` pins).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::mesh::PeerView;
use crate::proto::ModelInfo;

/// The base URL of the provider for `node` on a proxy at `port`.
pub fn base_url(port: u16, node: &str) -> String {
    format!("http://127.0.0.1:{port}/node/{node}/v1")
}

/// Whether `entry` (a `models.providers.<id>` value) was written by clawmatrix for node `id`.
pub fn is_ours(id: &str, entry: &Value) -> bool {
    let Some(url) = entry.get("baseUrl").and_then(Value::as_str) else {
        return false;
    };
    let Some(rest) = url.strip_prefix("http://127.0.0.1:") else {
        return false;
    };
    let Some((port, path)) = rest.split_once('/') else {
        return false;
    };
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && path == format!("node/{id}/v1")
}

fn wanted(config: &Config, node: &str, m: &ModelInfo) -> bool {
    config.proxy_models.is_empty()
        || config
            .proxy_models
            .iter()
            .any(|p| p.id == m.id && p.node_id.as_deref().is_none_or(|n| n == node))
}

fn model_entry(m: &ModelInfo) -> Value {
    let x = &m.extra;
    let name = m.description.clone().unwrap_or_else(|| m.id.clone());
    json!({
        "id": m.id,
        "name": name,
        "api": x.get("api").and_then(Value::as_str).unwrap_or("openai-completions"),
        "reasoning": x.get("reasoning").and_then(Value::as_bool).unwrap_or(false),
        "input": x.get("input").filter(|v| v.is_array()).cloned().unwrap_or_else(|| json!(["text"])),
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
        "contextWindow": x.get("contextWindow").and_then(Value::as_u64).unwrap_or(crate::config::DEFAULT_CONTEXT_WINDOW_TOKENS as u64),
        "maxTokens": x.get("maxTokens").and_then(Value::as_u64).unwrap_or(crate::config::DEFAULT_MAX_TOKENS as u64),
    })
}

/// The providers this node should have, keyed by node id.
pub fn desired(
    config: &Config,
    peers: &[PeerView],
    port: u16,
    token: &str,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for p in peers.iter().filter(|p| p.node != config.node_id) {
        let models: Vec<Value> = p
            .models
            .iter()
            .filter(|m| wanted(config, &p.node, m))
            .map(model_entry)
            .collect();
        if models.is_empty() {
            continue;
        }
        out.insert(
            p.node.clone(),
            json!({
                "baseUrl": base_url(port, &p.node),
                "api": "openai-completions",
                "apiKey": token,
                "models": models,
            }),
        );
    }
    out
}

/// The result of [`plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The new `models.providers` object.
    pub providers: Map<String, Value>,
    pub changed: bool,
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    /// Node ids whose provider id is taken by an entry the user wrote (left alone).
    pub conflicts: Vec<String>,
}

impl Plan {
    pub fn to_json(&self) -> Value {
        json!({
            "providers": self.providers,
            "changed": self.changed,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "conflicts": self.conflicts,
        })
    }
}

/// Merge `desired` into the current `models.providers` object: add and update our entries,
/// remove ours that are no longer wanted, never touch the user's.
pub fn plan(current: &Map<String, Value>, desired: &Map<String, Value>) -> Plan {
    let mut providers = current.clone();
    let (mut added, mut updated, mut removed, mut conflicts) = (vec![], vec![], vec![], vec![]);
    for (id, entry) in current {
        if is_ours(id, entry) && !desired.contains_key(id) {
            providers.remove(id);
            removed.push(id.clone());
        }
    }
    for (id, entry) in desired {
        match current.get(id) {
            Some(existing) if !is_ours(id, existing) => conflicts.push(id.clone()),
            Some(existing) if existing == entry => {}
            Some(_) => {
                providers.insert(id.clone(), entry.clone());
                updated.push(id.clone());
            }
            None => {
                providers.insert(id.clone(), entry.clone());
                added.push(id.clone());
            }
        }
    }
    let changed = !(added.is_empty() && updated.is_empty() && removed.is_empty());
    Plan {
        providers,
        changed,
        added,
        updated,
        removed,
        conflicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::PeerState;

    fn peer(node: &str, models: &[&str]) -> PeerView {
        PeerView {
            node: node.into(),
            state: PeerState::Direct,
            latency_ms: Some(1),
            hops: Some(1),
            listen: false,
            agents: vec![],
            models: models
                .iter()
                .map(|m| ModelInfo {
                    id: m.to_string(),
                    description: None,
                    extra: Default::default(),
                })
                .collect(),
            tags: vec![],
            last_seen_ms: 0,
            incarnation: 1,
            version: 1,
        }
    }

    fn config(extra: Value) -> Config {
        let mut v = json!({"nodeId": "home", "secret": "0123456789abcdef", "peers": [{"nodeId": "cloud", "url": "ws://127.0.0.1:1"}]});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        Config::from_json(&v).unwrap().config
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn one_provider_per_serving_node_with_the_token() {
        let peers = vec![
            peer("office", &["m1", "m2"]),
            peer("cloud", &[]),
            peer("home", &["mine"]),
        ];
        let d = desired(&config(json!({})), &peers, 19001, "cmx-t");
        assert_eq!(d.keys().collect::<Vec<_>>(), ["office"]);
        let e = &d["office"];
        assert_eq!(e["baseUrl"], "http://127.0.0.1:19001/node/office/v1");
        assert_eq!(e["apiKey"], "cmx-t");
        assert_eq!(e["models"][1]["id"], "m2");
        assert_eq!(e["models"][0]["contextWindow"], 128000);
    }

    #[test]
    fn proxy_models_limit_what_is_offered() {
        let peers = vec![peer("office", &["m1", "m2"]), peer("gpu", &["m1"])];
        let c = config(json!({"proxyModels": [{"id": "m1", "nodeId": "gpu"}]}));
        let d = desired(&c, &peers, 1, "t");
        assert_eq!(d.keys().collect::<Vec<_>>(), ["gpu"]);
    }

    #[test]
    fn ownership_is_recognised_by_the_base_url() {
        assert!(is_ours(
            "office",
            &json!({"baseUrl": "http://127.0.0.1:19001/node/office/v1"})
        ));
        assert!(!is_ours(
            "office",
            &json!({"baseUrl": "http://127.0.0.1:19001/node/other/v1"})
        ));
        assert!(!is_ours(
            "office",
            &json!({"baseUrl": "https://api.openai.com/v1"})
        ));
        assert!(!is_ours(
            "office",
            &json!({"baseUrl": "http://127.0.0.1:x/node/office/v1"})
        ));
        assert!(!is_ours("office", &json!({})));
    }

    #[test]
    fn plan_adds_updates_removes_ours_and_never_touches_the_users() {
        let mine_old = json!({"baseUrl": "http://127.0.0.1:1/node/gone/v1", "models": []});
        let mine_office = json!({"baseUrl": "http://127.0.0.1:1/node/office/v1", "models": [1]});
        let user = json!({"baseUrl": "https://api.openai.com/v1", "models": []});
        let current = obj(
            json!({"gone": mine_old, "office": mine_office, "openai": user.clone(), "gpu": user.clone()}),
        );
        let new_office = json!({"baseUrl": "http://127.0.0.1:1/node/office/v1", "models": [2]});
        let new_gpu = json!({"baseUrl": "http://127.0.0.1:1/node/gpu/v1", "models": []});
        let new_x = json!({"baseUrl": "http://127.0.0.1:1/node/x/v1", "models": []});
        let desired =
            obj(json!({"office": new_office.clone(), "gpu": new_gpu, "x": new_x.clone()}));
        let p = plan(&current, &desired);
        assert!(p.changed);
        assert_eq!(p.removed, ["gone"]);
        assert_eq!(p.updated, ["office"]);
        assert_eq!(p.added, ["x"]);
        assert_eq!(p.conflicts, ["gpu"]);
        assert_eq!(p.providers["openai"], user);
        assert_eq!(p.providers["gpu"], user);
        assert_eq!(p.providers["office"], new_office);
        assert_eq!(p.providers["x"], new_x);
        let again = plan(&p.providers, &desired);
        assert!(!again.changed, "a second plan is a no-op");
    }
}
