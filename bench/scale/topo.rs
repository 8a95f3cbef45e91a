//! The scale topology (issue #22): three hubs that listen and link to each other, and leaves
//! that only dial out, to one hub (odd leaves) or two (even leaves, for failover), spread
//! round-robin over the hubs.
//!
//! ```text
//! hub-0 ◀── hub-1          hub-2 dials hub-0 and hub-1: a full triangle
//!   ▲  ▲      ▲
//!   │   ╲     │            leaf-000 → hub-0, hub-1     leaf-001 → hub-1
//!  leaf-000  leaf-001 …    leaf-002 → hub-2, hub-0     leaf-003 → hub-0
//!                          leaf-004 → hub-1, hub-2     leaf-005 → hub-2 …
//! ```
//!
//! Node `i` of a mesh of `n` is `hub-i` for `i < 3`, else `leaf-(i-3)`.

use serde_json::json;

use clawmatrix::config::Config;

use super::BenchResult;

/// Hubs in every mesh.
pub const HUBS: usize = 3;
/// The mesh-wide secret of every scale-bench node (≥ 16 characters).
pub const SECRET: &str = "clawmatrix-scale-bench-secret-0123";

/// The node id of node `i`.
pub fn node_id(i: usize) -> String {
    if i < HUBS {
        format!("hub-{i}")
    } else {
        format!("leaf-{:03}", i - HUBS)
    }
}

/// The hubs node `i` dials: a hub dials the hubs before it; leaf `j` dials hub `j % 3`, and
/// also the next hub when `j` is even.
pub fn dials(i: usize) -> Vec<usize> {
    if i < HUBS {
        return (0..i).collect();
    }
    let j = i - HUBS;
    let first = j % HUBS;
    if j % 2 == 0 {
        vec![first, (first + 1) % HUBS]
    } else {
        vec![first]
    }
}

/// Links node `i` should have up once the mesh stands: its own dials plus the nodes dialing it.
pub fn expected_links(i: usize, n: usize) -> usize {
    let inbound = (0..n).filter(|&k| k != i && dials(k).contains(&i)).count();
    dials(i).len() + inbound
}

/// Node `i`'s config: default heartbeats and anti-entropy (what the bench measures), one agent,
/// one model and one tag so its gossip record has the size of a small real gateway's.
/// `listen_port` is `Some` for hubs; `hub_ports[h]` is hub `h`'s listen port.
pub fn config(
    i: usize,
    listen_port: Option<u16>,
    proxy_port: u16,
    hub_ports: &[u16],
) -> BenchResult<Config> {
    let id = node_id(i);
    let mut peers = Vec::new();
    for h in dials(i) {
        let port = hub_ports
            .get(h)
            .ok_or_else(|| format!("{id}: no port for hub-{h}"))?;
        peers.push(json!({"nodeId": node_id(h), "url": format!("ws://127.0.0.1:{port}")}));
    }
    let mut v = json!({
        "nodeId": id,
        "secret": SECRET,
        "listen": listen_port.is_some(),
        "listenHost": "127.0.0.1",
        "proxyPort": proxy_port,
        "peers": peers,
        "agents": [{"id": format!("{id}-agent"), "description": "scale bench agent", "tags": ["bench"]}],
        "models": [{"id": format!("{id}-model"), "provider": "ollama"}],
        "tags": [format!("{id}-tag")],
    });
    if let (Some(p), Some(o)) = (listen_port, v.as_object_mut()) {
        o.insert("listenPort".into(), p.into());
    }
    Config::from_json(&v)
        .map(|valid| valid.config)
        .map_err(|e| format!("scale config for {id} is invalid: {e}"))
}
