//! The proxy target's fixed world: a config, a token, a mesh snapshot of four nodes, and a
//! mesh port that records every model call the proxy opens and answers it `unreachable` (so
//! the proxy tries its next candidate, and every candidate is seen).

use std::sync::{Arc, Mutex};

use clawmatrix::config::Config;
use clawmatrix::error::{Error, ErrorCode};
use clawmatrix::events::EventQueue;
use clawmatrix::mesh::{PeerState, PeerView};
use clawmatrix::proto::{Bytes32, ModelInfo};
use clawmatrix::proxy::ProxyCtx;
use clawmatrix::rpc::port::WaitingSend;
use clawmatrix::rpc::{Command, MeshClient, MeshSnapshot, Port};
use tokio::sync::{mpsc, watch};

/// The proxy's token (clients send `Authorization: Bearer tok-fuzz`).
pub const TOKEN: &str = "tok-fuzz";

fn model(id: &str) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        description: Some(format!("{id} described")),
        extra: Default::default(),
    }
}

fn peer(node: &str, state: PeerState, latency: u64, models: &[&str]) -> PeerView {
    PeerView {
        node: node.into(),
        state,
        latency_ms: Some(latency),
        hops: Some(1),
        listen: false,
        agents: vec![],
        models: models.iter().map(|m| model(m)).collect(),
        tags: vec![],
        last_seen_ms: 0,
        incarnation: 1,
        version: 1,
        key: Bytes32([7; 32]),
        link_rtt: None,
    }
}

/// The mesh as the proxy sees it: a direct node, one through it, an unreachable one, and one
/// whose name is also the first part of a model id with a slash.
pub fn peers() -> Vec<PeerView> {
    vec![
        peer(
            "office-01",
            PeerState::Direct,
            5,
            &["m", "meta/llama-3", "shared", "pinned"],
        ),
        peer(
            "Office-B",
            PeerState::Via {
                next_hop: "office-01".into(),
                hops: 2,
            },
            9,
            &["m", "shared", "pinned"],
        ),
        peer(
            "gpu",
            PeerState::Unreachable { since: 0 },
            1,
            &["big", "shared"],
        ),
        peer("meta", PeerState::Direct, 2, &["llama-3", "x"]),
    ]
}

pub fn config() -> Config {
    let v = serde_json::json!({
        "nodeId": "home",
        "secret": "fuzz proxy secret 0123456789",
        "peers": [{"nodeId": "office-01", "url": "ws://127.0.0.1:1"}],
        "proxyModels": [
            {"id": "pinned", "nodeId": "Office-B", "description": "pinned to B"},
            {"id": "ghost-pin", "nodeId": "ghost"},
        ],
    });
    Config::from_json(&v)
        .expect("the fuzz config is valid")
        .config
}

/// One model call the proxy opened: the node and the payload.
pub type Opened = (String, Vec<u8>);

/// Records `OpenStream` commands and answers them `unreachable`; anything else is dropped (its
/// reply sender with it, which the caller sees as the node not running).
pub struct RecordingPort {
    pub opened: Mutex<Vec<Opened>>,
}

impl Port for RecordingPort {
    fn try_send(&self, cmd: Command) -> Result<(), mpsc::error::TrySendError<Command>> {
        if let Command::OpenStream {
            dst,
            payload,
            reply,
            ..
        } = cmd
        {
            self.opened
                .lock()
                .expect("opened lock")
                .push((dst.clone(), payload));
            let _ = reply.send(Err(Error::new(ErrorCode::Unreachable, "fuzz: no route")));
        }
        Ok(())
    }

    fn send_waiting(&self, cmd: Command) -> WaitingSend<'_> {
        let r = self.try_send(cmd).is_ok();
        Box::pin(async move { r })
    }
}

/// The proxy's context over the fixed world, and the port that records its calls.
pub fn ctx() -> (Arc<ProxyCtx>, Arc<RecordingPort>) {
    let port = Arc::new(RecordingPort {
        opened: Mutex::new(Vec::new()),
    });
    let snapshot = MeshSnapshot {
        peers: peers(),
        ..Default::default()
    };
    // The sender is dropped: the snapshot stays as it is.
    let (_tx, rx) = watch::channel(snapshot);
    let ctx = Arc::new(ProxyCtx {
        config: Arc::new(config()),
        token: TOKEN.into(),
        mesh: MeshClient::new(port.clone(), rx),
        events: Arc::new(EventQueue::new()),
    });
    (ctx, port)
}
