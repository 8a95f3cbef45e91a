//! Which node serves a model request: the request's model id (and an optional node pin from the
//! URL or `proxyModels[].nodeId`) → an ordered candidate list over the mesh snapshot.
//!
//! Naming: a request names a model as the serving node knows it (`mock-model`), or qualified with
//! the node (`office-01/mock-model`, or OpenClaw's reference `clawmatrix-office-01/mock-model`)
//! — an exact model id wins over the qualified reading, since
//! model ids may contain `/` themselves (`meta/llama-3`). Order: direct links first, then lower
//! path latency, fewer hops, node id. Only reachable nodes are candidates.

use crate::config::Config;
use crate::mesh::{PeerState, PeerView};
use crate::proto::ModelInfo;

/// One node that can serve the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCandidate {
    pub node: String,
    /// The model id as that node serves it.
    pub model: String,
    pub direct: bool,
    pub latency_ms: u64,
    pub hops: u32,
}

/// Why nothing can serve the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No node in the mesh (reachable or not) announces the model.
    UnknownModel,
    /// The pinned node is not known at all.
    UnknownNode(String),
    /// Nodes announce it, but none is reachable now (their ids).
    Unreachable(Vec<String>),
}

/// What the caller asked for: the model named in the body, and a node pinned by the URL
/// (`/node/<id>/v1/...`), if any.
#[derive(Debug, Clone, Copy)]
pub struct ModelQuery<'a> {
    pub model: &'a str,
    pub pinned_node: Option<&'a str>,
}

fn serves<'a>(p: &'a PeerView, model: &str) -> Option<&'a ModelInfo> {
    p.models.iter().find(|m| m.id == model)
}

fn reachable(p: &PeerView) -> bool {
    !matches!(p.state, PeerState::Unreachable { .. })
}

/// Ordered candidates for `q` among `peers`, honouring `proxyModels[].nodeId` pins in `config`.
pub fn candidates(
    q: ModelQuery<'_>,
    config: &Config,
    peers: &[PeerView],
) -> Result<Vec<ModelCandidate>, NoRoute> {
    // An exact model id first; else `node/model`.
    let (mut pin, model) = match q.pinned_node {
        Some(n) => (Some(n), q.model),
        None => {
            let exact = peers.iter().any(|p| serves(p, q.model).is_some());
            // The node as named in the proxy's own list (`office-01/…`) or in OpenClaw's model
            // reference (`clawmatrix-office-01/…`, see `providers::provider_id`).
            let node_named = |name: &str| {
                peers
                    .iter()
                    .find(|p| p.node == name)
                    .or_else(|| {
                        peers
                            .iter()
                            .filter(|p| super::providers::provider_id(&p.node) == name)
                            .min_by(|a, b| a.node.cmp(&b.node))
                    })
                    .map(|p| p.node.as_str())
            };
            match q.model.split_once('/') {
                Some((name, rest)) if !exact => match node_named(name) {
                    Some(node) => (Some(node), rest),
                    None => (None, q.model),
                },
                _ => (None, q.model),
            }
        }
    };
    if pin.is_none() {
        pin = config
            .proxy_models
            .iter()
            .find(|m| m.id == model)
            .and_then(|m| m.node_id.as_deref());
    }
    if let Some(node) = pin {
        if !peers.iter().any(|p| p.node == node) {
            return Err(NoRoute::UnknownNode(node.to_string()));
        }
    }
    let announcing: Vec<&PeerView> = peers
        .iter()
        .filter(|p| pin.is_none_or(|n| p.node == n))
        .filter(|p| serves(p, model).is_some())
        .collect();
    if announcing.is_empty() {
        return Err(NoRoute::UnknownModel);
    }
    let mut out: Vec<ModelCandidate> = announcing
        .iter()
        .filter(|p| reachable(p))
        .map(|p| ModelCandidate {
            node: p.node.clone(),
            model: model.to_string(),
            direct: matches!(p.state, PeerState::Direct),
            latency_ms: p.latency_ms.unwrap_or(u64::MAX / 2),
            hops: p.hops.unwrap_or(u32::MAX),
        })
        .collect();
    if out.is_empty() {
        return Err(NoRoute::Unreachable(
            announcing.iter().map(|p| p.node.clone()).collect(),
        ));
    }
    out.sort_by(|a, b| {
        b.direct
            .cmp(&a.direct)
            .then(a.latency_ms.cmp(&b.latency_ms))
            .then(a.hops.cmp(&b.hops))
            .then(a.node.cmp(&b.node))
    });
    Ok(out)
}

/// The `[Model: …]` description for the consumed model: `proxyModels[].description` first, else
/// the serving node's own `description`.
pub fn description(config: &Config, peers: &[PeerView], c: &ModelCandidate) -> Option<String> {
    config
        .proxy_models
        .iter()
        .find(|m| m.id == c.model && m.node_id.as_ref().is_none_or(|n| *n == c.node))
        .and_then(|m| m.description.clone())
        .or_else(|| {
            peers
                .iter()
                .find(|p| p.node == c.node)
                .and_then(|p| serves(p, &c.model))
                .and_then(|m| m.description.clone())
        })
        .filter(|d| !d.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model(id: &str) -> ModelInfo {
        ModelInfo {
            id: id.into(),
            description: None,
            extra: Default::default(),
        }
    }

    fn peer(node: &str, state: PeerState, latency: u64, models: &[&str]) -> PeerView {
        PeerView {
            node: node.into(),
            state,
            latency_ms: Some(latency),
            link_rtt: None,
            hops: Some(1),
            listen: false,
            agents: vec![],
            models: models.iter().map(|m| model(m)).collect(),
            tags: vec![],
            last_seen_ms: 0,
            incarnation: 1,
            version: 1,
            key: crate::proto::Bytes32([1; 32]),
        }
    }

    fn via(hop: &str) -> PeerState {
        PeerState::Via {
            next_hop: hop.into(),
            hops: 2,
        }
    }

    fn config(extra: serde_json::Value) -> Config {
        let mut v = json!({"nodeId": "home", "secret": "0123456789abcdef", "peers": [{"nodeId": "cloud", "url": "ws://127.0.0.1:1"}]});
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        Config::from_json(&v).unwrap().config
    }

    fn nodes(r: Result<Vec<ModelCandidate>, NoRoute>) -> Vec<String> {
        r.unwrap().into_iter().map(|c| c.node).collect()
    }

    #[test]
    fn direct_first_then_latency() {
        let peers = vec![
            peer("far", via("cloud"), 5, &["m"]),
            peer("near", via("cloud"), 2, &["m"]),
            peer("cloud", PeerState::Direct, 50, &["m"]),
        ];
        let q = ModelQuery {
            model: "m",
            pinned_node: None,
        };
        assert_eq!(
            nodes(candidates(q, &config(json!({})), &peers)),
            ["cloud", "near", "far"]
        );
    }

    #[test]
    fn pins_from_the_url_the_model_name_and_proxy_models() {
        let peers = vec![
            peer("a", PeerState::Direct, 1, &["m"]),
            peer("b", via("a"), 9, &["m"]),
        ];
        let c = config(json!({}));
        let q = ModelQuery {
            model: "m",
            pinned_node: Some("b"),
        };
        assert_eq!(nodes(candidates(q, &c, &peers)), ["b"]);
        let q = ModelQuery {
            model: "b/m",
            pinned_node: None,
        };
        assert_eq!(nodes(candidates(q, &c, &peers)), ["b"]);
        // OpenClaw's model reference for the same model names the same node.
        let peers_b = vec![
            peer("a", PeerState::Direct, 1, &["m"]),
            peer("Office-B", via("a"), 9, &["m"]),
        ];
        let q = ModelQuery {
            model: "clawmatrix-office-b/m",
            pinned_node: None,
        };
        let got = candidates(q, &c, &peers_b).unwrap();
        assert_eq!(
            (got[0].node.as_str(), got[0].model.as_str()),
            ("Office-B", "m")
        );
        assert_eq!(got.len(), 1);
        let pinned = config(json!({"proxyModels": [{"id": "m", "nodeId": "b"}]}));
        let q = ModelQuery {
            model: "m",
            pinned_node: None,
        };
        assert_eq!(nodes(candidates(q, &pinned, &peers)), ["b"]);
    }

    #[test]
    fn an_exact_model_id_with_a_slash_wins_over_node_qualification() {
        let peers = vec![
            peer("meta", PeerState::Direct, 1, &["x"]),
            peer("gpu", PeerState::Direct, 1, &["meta/x"]),
        ];
        let q = ModelQuery {
            model: "meta/x",
            pinned_node: None,
        };
        let got = candidates(q, &config(json!({})), &peers).unwrap();
        assert_eq!(
            (got[0].node.as_str(), got[0].model.as_str()),
            ("gpu", "meta/x")
        );
    }

    #[test]
    fn unknown_unreachable_and_unknown_node_are_told_apart() {
        let peers = vec![peer(
            "office",
            PeerState::Unreachable { since: 0 },
            1,
            &["m"],
        )];
        let c = config(json!({}));
        let q = |model| ModelQuery {
            model,
            pinned_node: None,
        };
        assert_eq!(
            candidates(q("nope"), &c, &peers),
            Err(NoRoute::UnknownModel)
        );
        assert_eq!(
            candidates(q("m"), &c, &peers),
            Err(NoRoute::Unreachable(vec!["office".into()]))
        );
        let pinned = ModelQuery {
            model: "m",
            pinned_node: Some("ghost"),
        };
        assert_eq!(
            candidates(pinned, &c, &peers),
            Err(NoRoute::UnknownNode("ghost".into()))
        );
    }

    #[test]
    fn description_prefers_proxy_models_then_the_serving_node() {
        let mut p = peer("office", PeerState::Direct, 1, &["m"]);
        p.models[0].description = Some("office's m".into());
        let cand = ModelCandidate {
            node: "office".into(),
            model: "m".into(),
            direct: true,
            latency_ms: 1,
            hops: 1,
        };
        let peers = vec![p];
        assert_eq!(
            description(&config(json!({})), &peers, &cand).as_deref(),
            Some("office's m")
        );
        let c = config(json!({"proxyModels": [{"id": "m", "description": "mine"}]}));
        assert_eq!(description(&c, &peers, &cand).as_deref(), Some("mine"));
    }
}
