//! OpenClaw providers for mesh models: one `models.providers.clawmatrix-<nodeId>` entry per
//! serving node, pointing at this node's proxy (`http://127.0.0.1:<proxyPort>/node/<nodeId>/v1`)
//! with the local proxy token as its key, so users pick `/model clawmatrix-<nodeId>/<modelId>`
//! and configure nothing.
//!
//! Why config providers and not `api.registerProvider`: plugin providers are fixed at
//! `register()` time (before the mesh is known), and OpenClaw 2026.9.6 finds a plugin provider's
//! key only through env variables declared in the manifest for fixed provider ids; config
//! providers are hot-reloaded (`models.*` reloads without a restart), appear in
//! `openclaw models list`, and carry their own key. See README "Shared models".
//!
//! Why the `clawmatrix-` prefix: node ids come from the mesh, and a provider id is OpenClaw's
//! own namespace. A node named `anthropic` must not become `models.providers.anthropic`, which
//! would shadow OpenClaw's built-in provider (its key, its models) with a mesh node. No id
//! OpenClaw ships starts with `clawmatrix-`, and OpenClaw lowercases provider ids when it reads
//! a model reference, so the id is lowercased too ([`provider_id`]).
//!
//! The entries this module owns are recognised by their base URL (a loopback proxy URL whose
//! `/node/<id>` gives the entry's provider id); entries the user wrote are never touched, and a
//! user entry with a node's provider id is reported as a conflict. Entries of the unprefixed
//! form (`models.providers.<nodeId>`, written before the prefix) are ours too and are removed.
//!
//! Which models: every model the mesh announces, or, when `proxyModels` is not empty, only those
//! it lists (honouring its `nodeId` pins).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::mesh::PeerView;
use crate::proto::ModelInfo;

/// The prefix of every provider id this module writes.
pub const PROVIDER_PREFIX: &str = "clawmatrix-";

/// The OpenClaw provider id for the models of mesh node `node`: `clawmatrix-<nodeId>`,
/// lowercased (OpenClaw compares provider ids lowercased).
pub fn provider_id(node: &str) -> String {
    format!("{PROVIDER_PREFIX}{}", node.to_ascii_lowercase())
}

/// The base URL of the provider for `node` on a proxy at `port`.
pub fn base_url(port: u16, node: &str) -> String {
    format!("http://127.0.0.1:{port}/node/{node}/v1")
}

/// Whether `entry` (the value of `models.providers.<id>`) was written by clawmatrix: its base URL
/// is a loopback proxy URL for a node whose provider id is `id` (or, as written before the
/// prefix, whose node id is `id`).
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
    let Some(node) = path
        .strip_prefix("node/")
        .and_then(|p| p.strip_suffix("/v1"))
    else {
        return false;
    };
    !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && crate::config::is_valid_id(node)
        && (id == provider_id(node) || id == node)
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

/// The providers this node should have, keyed by provider id ([`provider_id`]). Only nodes
/// whose id follows the config rules get one (the id is part of a URL path and a config key);
/// of node ids that differ only in case, the first in sort order gets the provider.
pub fn desired(
    config: &Config,
    peers: &[PeerView],
    port: u16,
    token: &str,
) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut nodes: Vec<&PeerView> = peers
        .iter()
        .filter(|p| p.node != config.node_id && crate::config::is_valid_id(&p.node))
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    for p in nodes {
        let id = provider_id(&p.node);
        if out.contains_key(&id) {
            continue;
        }
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
            id,
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

/// The result of [`plan`] (handed to JS as the binding's `ProviderPlan`).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The new `models.providers` object.
    pub providers: Map<String, Value>,
    pub changed: bool,
    pub added: Vec<String>,
    pub updated: Vec<String>,
    pub removed: Vec<String>,
    /// Provider ids of mesh nodes taken by an entry the user wrote (left alone).
    pub conflicts: Vec<String>,
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
        // OpenClaw reads provider ids lowercased: a user entry differing only in case is the
        // same provider to it.
        let users = current
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case(id) && !is_ours(k, v));
        if users {
            conflicts.push(id.clone());
            // An entry of ours already under this id would be a second spelling of the
            // user's provider to OpenClaw: the user's wins, ours goes.
            if current.get(id).is_some_and(|e| is_ours(id, e)) {
                providers.remove(id);
                removed.push(id.clone());
            }
            continue;
        }
        match current.get(id) {
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
            link_rtt: None,
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
            key: crate::proto::Bytes32([1; 32]),
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
        assert_eq!(d.keys().collect::<Vec<_>>(), ["clawmatrix-office"]);
        let e = &d["clawmatrix-office"];
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
        assert_eq!(d.keys().collect::<Vec<_>>(), ["clawmatrix-gpu"]);
    }

    /// Provider ids OpenClaw ships (built-in catalog and bundled provider plugins, from its
    /// provider docs as of 2026.9), and the aliases it normalizes to them.
    const OPENCLAW_PROVIDERS: &[&str] = &[
        "openai",
        "openai-codex",
        "anthropic",
        "anthropic-vertex",
        "google",
        "google-vertex",
        "google-gemini-cli",
        "google-antigravity",
        "amazon-bedrock",
        "bedrock",
        "azure",
        "openrouter",
        "vercel-ai-gateway",
        "cloudflare-ai-gateway",
        "opencode",
        "opencode-go",
        "opencode-zen",
        "zai",
        "z-ai",
        "z.ai",
        "xai",
        "groq",
        "cerebras",
        "mistral",
        "deepseek",
        "github-copilot",
        "copilot-proxy",
        "huggingface",
        "kilocode",
        "litellm",
        "minimax",
        "minimax-portal",
        "moonshot",
        "kimi-coding",
        "kimi-code",
        "nvidia",
        "ollama",
        "qianfan",
        "qwen",
        "qwen-portal",
        "modelstudio",
        "sglang",
        "synthetic",
        "together",
        "venice",
        "vllm",
        "volcengine",
        "byteplus",
        "xiaomi",
        "chutes",
        "fireworks",
        "stepfun",
        "perplexity",
        "deepinfra",
        "cohere",
    ];

    #[test]
    fn a_node_named_like_a_built_in_or_user_provider_never_takes_its_id() {
        let mut names: Vec<String> = OPENCLAW_PROVIDERS.iter().map(|s| s.to_string()).collect();
        names.extend(["Anthropic", "OPENAI", "mine"].map(String::from));
        let peers: Vec<PeerView> = names.iter().map(|n| peer(n, &["m"])).collect();
        let d = desired(&config(json!({})), &peers, 19001, "t");
        assert!(!d.is_empty());
        for id in d.keys() {
            assert!(id.starts_with(PROVIDER_PREFIX), "{id}");
            assert!(
                !OPENCLAW_PROVIDERS
                    .iter()
                    .any(|b| b.eq_ignore_ascii_case(id)),
                "{id} is OpenClaw's"
            );
        }
        assert_eq!(
            d["clawmatrix-anthropic"]["baseUrl"],
            "http://127.0.0.1:19001/node/Anthropic/v1"
        );
        // The user's own providers (a built-in with a key, a custom one) stay as they are, and
        // a user entry that spells a mesh provider id in another case is a conflict.
        let user = json!({"apiKey": "sk-user"});
        let custom = json!({"baseUrl": "https://llm.example/v1", "models": []});
        let current = obj(json!({"anthropic": user, "mine": custom, "Clawmatrix-Mine": custom}));
        let p = plan(&current, &obj(serde_json::to_value(&d).unwrap()));
        assert_eq!(p.providers["anthropic"], user);
        assert_eq!(p.providers["mine"], custom);
        assert_eq!(p.conflicts, ["clawmatrix-mine"]);
        assert!(p.removed.is_empty());
        assert!(!p.providers.contains_key("clawmatrix-mine"));
        assert_eq!(p.added.len(), d.len() - 1);
        // If ours was there before the user added the other spelling, it goes.
        let ours = d["clawmatrix-mine"].clone();
        let current = obj(json!({"Clawmatrix-Mine": custom, "clawmatrix-mine": ours}));
        let p = plan(&current, &obj(serde_json::to_value(&d).unwrap()));
        assert_eq!(p.conflicts, ["clawmatrix-mine"]);
        assert_eq!(p.removed, ["clawmatrix-mine"]);
        assert!(!p.providers.contains_key("clawmatrix-mine"));
        assert_eq!(p.providers["Clawmatrix-Mine"], custom);
    }

    #[test]
    fn an_unprefixed_entry_written_before_the_prefix_is_replaced() {
        let old = json!({"baseUrl": "http://127.0.0.1:19001/node/anthropic/v1", "models": []});
        let current = obj(json!({"anthropic": old}));
        let d = desired(&config(json!({})), &[peer("anthropic", &["m"])], 19001, "t");
        let p = plan(&current, &obj(serde_json::to_value(&d).unwrap()));
        assert_eq!(p.removed, ["anthropic"]);
        assert_eq!(p.added, ["clawmatrix-anthropic"]);
        assert!(!p.providers.contains_key("anthropic"));
    }

    #[test]
    fn nodes_whose_ids_differ_only_in_case_share_one_provider_and_bad_ids_get_none() {
        let peers = vec![
            peer("gpu", &["m"]),
            peer("GPU", &["m"]),
            peer("a/../b", &["m"]),
            peer("x y", &["m"]),
        ];
        let d = desired(&config(json!({})), &peers, 1, "t");
        assert_eq!(d.keys().collect::<Vec<_>>(), ["clawmatrix-gpu"]);
        assert_eq!(
            d["clawmatrix-gpu"]["baseUrl"],
            "http://127.0.0.1:1/node/GPU/v1"
        );
    }

    #[test]
    fn ownership_is_recognised_by_the_base_url() {
        assert!(is_ours(
            "clawmatrix-office",
            &json!({"baseUrl": "http://127.0.0.1:19001/node/office/v1"})
        ));
        assert!(is_ours(
            "clawmatrix-office",
            &json!({"baseUrl": "http://127.0.0.1:19001/node/Office/v1"})
        ));
        assert!(is_ours(
            "office",
            &json!({"baseUrl": "http://127.0.0.1:19001/node/office/v1"})
        ));
        assert!(!is_ours(
            "anthropic",
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
            json!({"clawmatrix-gone": mine_old, "clawmatrix-office": mine_office, "openai": user.clone(), "clawmatrix-gpu": user.clone()}),
        );
        let new_office = json!({"baseUrl": "http://127.0.0.1:1/node/office/v1", "models": [2]});
        let new_gpu = json!({"baseUrl": "http://127.0.0.1:1/node/gpu/v1", "models": []});
        let new_x = json!({"baseUrl": "http://127.0.0.1:1/node/x/v1", "models": []});
        let desired = obj(
            json!({"clawmatrix-office": new_office.clone(), "clawmatrix-gpu": new_gpu, "clawmatrix-x": new_x.clone()}),
        );
        let p = plan(&current, &desired);
        assert!(p.changed);
        assert_eq!(p.removed, ["clawmatrix-gone"]);
        assert_eq!(p.updated, ["clawmatrix-office"]);
        assert_eq!(p.added, ["clawmatrix-x"]);
        assert_eq!(p.conflicts, ["clawmatrix-gpu"]);
        assert_eq!(p.providers["openai"], user);
        assert_eq!(p.providers["clawmatrix-gpu"], user);
        assert_eq!(p.providers["clawmatrix-office"], new_office);
        assert_eq!(p.providers["clawmatrix-x"], new_x);
        let again = plan(&p.providers, &desired);
        assert!(!again.changed, "a second plan is a no-op");
    }
}
