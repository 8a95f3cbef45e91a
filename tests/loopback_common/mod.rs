//! Helpers shared by the loopback tests: ports bound once and handed to the node, node configs
//! with fast heartbeats, polling with a deadline, event draining, and a raw WebSocket peer that
//! speaks the handshake by hand.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::config::Config;
use clawmatrix::proto::codec;
use clawmatrix::proto::frame::{Body, Header, ENVELOPE_VERSION};
use clawmatrix::proto::{Dialer, FrameId, HandshakeConfig, HandshakeFrame, Step};
use clawmatrix::status::{PeerState, PeerView};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const SECRET: &str = "loopback-secret-0123456789";
/// Fast heartbeats: 200 ms × 3 misses.
pub const HEARTBEAT_MS: u64 = 200;
pub const HEARTBEAT_MISSES: u64 = 3;
/// Within this a link that hears nothing is dropped (`heartbeat_timeout`): the node gives up
/// after `HEARTBEAT_MISSES` silent intervals, checked once per interval, plus an interval of
/// slack. The window of "the link stays up" assertions, each with a silenced link as control.
pub const HEARTBEAT_DEATH: Duration = Duration::from_millis((HEARTBEAT_MISSES + 3) * HEARTBEAT_MS);

pub type Ws = WebSocketStream<TcpStream>;

#[path = "../ports/mod.rs"]
mod ports;
#[allow(unused_imports)]
pub use ports::{handover, hold_port, reserve_port, PortHold};

/// A config: listening on `listen` (if any), dialing `peers` = [(nodeId, port)].
pub fn config(id: &str, listen: Option<u16>, peers: &[(&str, u16)], extra: Value) -> Config {
    let mut v = json!({
        "nodeId": id,
        "secret": SECRET,
        "listen": listen.is_some(),
        "listenHost": "127.0.0.1",
        "listenPort": listen.unwrap_or(19000),
        "proxyPort": reserve_port(),
        "heartbeatIntervalMs": HEARTBEAT_MS,
        "heartbeatMisses": HEARTBEAT_MISSES,
        "peers": peers.iter().map(|(n, p)| json!({"nodeId": n, "url": format!("ws://127.0.0.1:{p}")})).collect::<Vec<_>>(),
        "agents": [{"id": format!("{id}-agent"), "description": "test agent", "tags": ["t-agent"]}],
        "models": [{"id": format!("{id}-model"), "provider": "ollama"}],
        "tags": [format!("{id}-tag")],
    });
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), extra) {
        for (k, x) in extra {
            obj.insert(k, x);
        }
    }
    Config::from_json(&v)
        .unwrap_or_else(|e| panic!("config {id}: {e}"))
        .config
}

/// Start a node on the sockets reserved for its ports ([`reserve_port`]).
pub fn start(c: Config) -> Node {
    start_with(c, StartOptions::default())
}

pub fn start_with(c: Config, opts: StartOptions) -> Node {
    let n = Node::new(c);
    n.start(&handover(n.config(), opts)).expect("start");
    n
}

/// A fresh state directory for a node that must keep its key across a restart (removed when
/// dropped).
pub struct StateDir(pub std::path::PathBuf);

impl StateDir {
    pub fn new(tag: &str) -> StateDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("clawmatrix-state-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state dir");
        StateDir(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Start a node whose key lives in `state` (so a restart keeps it).
pub fn start_in(c: Config, state: &StateDir) -> Node {
    start_with(
        c,
        StartOptions {
            state_dir: Some(state.0.clone()),
            ..StartOptions::default()
        },
    )
}

/// A link-local `gossip` frame carrying `id`'s own record, signed with [`test_key`]`(id)`, so a
/// raw peer is a node others can seal calls to.
pub fn own_record_frame(id: &str, seq: u64) -> Vec<u8> {
    use clawmatrix::proto::signed::SignedRecord;
    let key = test_key(id);
    let record = clawmatrix::proto::NodeRecord {
        node: id.to_string(),
        incarnation: 1,
        version: 1,
        key: key.public(),
        xkey: clawmatrix::identity::ExchangeKey::from_secret(nonce(seq as u8)).public(),
        listen: false,
        agents: Vec::new(),
        models: Vec::new(),
        tags: Vec::new(),
        links: Vec::new(),
    };
    let wire = SignedRecord::sign(record, &key).expect("signs").wire;
    let header = Header {
        v: ENVELOPE_VERSION,
        id: FrameId(nonce(seq as u8)[..16].try_into().expect("16 bytes")),
        src: id.to_string(),
        dst: None,
        ttl: 1,
        hops: 0,
        ts: seq,
        body: Body::Gossip { records: 1 },
    };
    codec::encode(&header, &wire).expect("encode")
}

/// Poll `f` every 20 ms until it is true or `within` passed; returns the elapsed time.
pub async fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if f() {
            return t0.elapsed();
        }
        if t0.elapsed() > within {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn peer(n: &Node, id: &str) -> Option<PeerView> {
    n.status().peers.into_iter().find(|p| p.node_id == id)
}

pub fn is_direct(n: &Node, id: &str) -> bool {
    peer(n, id).is_some_and(|p| p.state == PeerState::Direct)
}

pub fn is_relayed_via(n: &Node, id: &str, via: &str) -> bool {
    peer(n, id).is_some_and(|p| {
        p.state == PeerState::Relayed
            && p.reachable_via.as_deref() == Some(via)
            && p.hops == Some(2)
    })
}

/// Every log line queued so far.
pub async fn drain(n: &Node) -> Vec<String> {
    let q = n.events();
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(5), q.next()).await {
        out.push(e.message);
    }
    out
}

pub fn reject_count(n: &Node, code: &str) -> u64 {
    n.status()
        .mesh
        .handshake_rejects
        .get(code)
        .copied()
        .unwrap_or(0)
}

// ----- raw peers -----------------------------------------------------------------------------

pub async fn raw_connect(port: u16) -> Ws {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/"), tcp)
        .await
        .expect("ws upgrade");
    ws
}

/// Next TEXT message, or the close code if the server closed instead.
pub async fn next_text_or_close(ws: &mut Ws) -> Result<String, Option<u16>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Err(_) => panic!("no message within 15 s"),
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_string()),
            Ok(Some(Ok(Message::Close(f)))) => return Err(f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Err(None),
        }
    }
}

/// Read until the server's close frame; returns its code.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match next_text_or_close(ws).await {
            Ok(_) => continue,
            Err(code) => return code,
        }
    }
}

/// A node key for a raw test peer, derived from its id (the same id gets the same key).
pub fn test_key(id: &str) -> std::sync::Arc<clawmatrix::identity::NodeKey> {
    use sha2::{Digest, Sha256};
    let seed: [u8; 32] = Sha256::digest(format!("test key {id}").as_bytes()).into();
    std::sync::Arc::new(clawmatrix::identity::NodeKey::from_seed(&seed))
}

pub fn nonce(seed: u8) -> [u8; 32] {
    let mut n = [seed; 32];
    let t = Instant::now().elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    n[..8].copy_from_slice(&t.to_be_bytes());
    n
}

/// A full handshake as `id` against the node on `port` (expecting node `expect`).
pub async fn raw_handshake(port: u16, id: &str, expect: &str) -> Ws {
    raw_handshake_as(port, id, expect, test_key(id)).await
}

/// [`raw_handshake`] proving `key` as `id`'s node key.
pub async fn raw_handshake_as(
    port: u16,
    id: &str,
    expect: &str,
    key: std::sync::Arc<clawmatrix::identity::NodeKey>,
) -> Ws {
    let mut ws = raw_connect(port).await;
    let cfg = HandshakeConfig::new(id, SECRET.as_bytes().to_vec(), key);
    let (mut d, hello) = Dialer::new(cfg, Some(expect.to_string()), nonce(7), 0);
    ws.send(Message::text(hello.encode())).await.expect("hello");
    loop {
        let text = next_text_or_close(&mut ws)
            .await
            .unwrap_or_else(|c| panic!("closed during handshake: {c:?}"));
        match d.on_frame(&text, |_, _| Ok(())) {
            Step::Send(f) => ws.send(Message::text(f.encode())).await.expect("send"),
            Step::Done { .. } => return ws,
            Step::Rejected { code, reason, .. } => {
                panic!("raw handshake rejected: {code}: {reason}")
            }
        }
    }
}

/// A link-local ping frame from `src` (keeps the node's heartbeat for this link satisfied).
pub fn ping_frame(src: &str, seq: u64) -> Vec<u8> {
    let header = Header {
        v: ENVELOPE_VERSION,
        id: FrameId(nonce(seq as u8)[..16].try_into().expect("16 bytes")),
        src: src.to_string(),
        dst: None,
        ttl: 1,
        hops: 0,
        ts: seq,
        body: Body::Ping { seq, t: seq },
    };
    codec::encode(&header, &[]).expect("encode")
}

pub fn hello_text(id: &str, seed: u8) -> String {
    let cfg = HandshakeConfig::new(id, SECRET.as_bytes().to_vec(), test_key(id));
    let (_, hello) = Dialer::new(cfg, None, nonce(seed), 0);
    hello.encode()
}

pub fn is_reject(text: &str, code: &str) -> bool {
    matches!(HandshakeFrame::decode(text), Ok(HandshakeFrame::Reject { code: c, .. }) if c.as_str() == code)
}
