//! Target resolution: turn `"coder"`, `"tags:gpu,coding"` or `"office-01"` into an ordered
//! candidate list over reachable nodes (`docs/PROTOCOL.md` §9).
//!
//! - a name matches agents with that id; if none matches, it is taken as a node id;
//! - `tags:a,b` matches each agent whose tags ∪ its node's tags contain all of a, b, and each
//!   node without such an agent whose own tags contain all of them;
//! - order: direct links first, then lower latency, fewer hops, node id, agent id.

use crate::proto::{NodeId, NodeRecord};

/// What a caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An agent id, or failing that a node id.
    Name(String),
    /// All of these tags must match.
    Tags(Vec<String>),
}

/// Why a target string is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty target")]
    Empty,
    #[error("tag query without tags")]
    NoTags,
}

impl TargetError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            TargetError::Empty => "empty_target",
            TargetError::NoTags => "no_tags",
        }
    }
}

impl Target {
    /// Parse a user/agent supplied target. Whitespace around names and tags is ignored.
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if let Some(rest) = s.strip_prefix("tags:") {
            let tags: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            if tags.is_empty() {
                return Err(TargetError::NoTags);
            }
            return Ok(Target::Tags(tags));
        }
        Ok(Target::Name(s.to_string()))
    }
}

/// One place a request can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    /// The matching agent, when the match was on an agent.
    pub agent: Option<String>,
    /// We hold a live link to `node`.
    pub direct: bool,
    pub latency_ms: u64,
    pub hops: u32,
}

/// A reachable node as the resolver sees it.
#[derive(Debug, Clone, Copy)]
pub struct Reach<'a> {
    pub record: &'a NodeRecord,
    pub direct: bool,
    pub latency_ms: u64,
    pub hops: u32,
}

fn has_all(query: &[String], a: &[String], b: &[String]) -> bool {
    query.iter().all(|q| a.contains(q) || b.contains(q))
}

/// Ordered candidates for `target` among `nodes`, minus `exclude`.
pub fn resolve<'a>(
    target: &Target,
    nodes: impl Iterator<Item = Reach<'a>>,
    exclude: &[NodeId],
) -> Vec<Candidate> {
    let nodes: Vec<Reach<'a>> = nodes
        .filter(|n| !exclude.contains(&n.record.node))
        .collect();
    let cand = |n: &Reach<'_>, agent: Option<&str>| Candidate {
        node: n.record.node.clone(),
        agent: agent.map(String::from),
        direct: n.direct,
        latency_ms: n.latency_ms,
        hops: n.hops,
    };
    let mut out = Vec::new();
    match target {
        Target::Name(name) => {
            for n in &nodes {
                for a in n.record.agents.iter().filter(|a| a.id == *name) {
                    out.push(cand(n, Some(&a.id)));
                }
            }
            if out.is_empty() {
                out.extend(
                    nodes
                        .iter()
                        .filter(|n| n.record.node == *name)
                        .map(|n| cand(n, None)),
                );
            }
        }
        Target::Tags(q) => {
            for n in &nodes {
                let before = out.len();
                for a in &n.record.agents {
                    if has_all(q, &a.tags, &n.record.tags) {
                        out.push(cand(n, Some(&a.id)));
                    }
                }
                if out.len() == before && has_all(q, &n.record.tags, &[]) {
                    out.push(cand(n, None));
                }
            }
        }
    }
    out.sort_by(|a, b| {
        b.direct
            .cmp(&a.direct)
            .then(a.latency_ms.cmp(&b.latency_ms))
            .then(a.hops.cmp(&b.hops))
            .then(a.node.cmp(&b.node))
            .then(a.agent.cmp(&b.agent))
    });
    out
}
