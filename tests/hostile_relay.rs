//! A malicious relay: a peer that holds the mesh secret, links to two real nodes that reach each
//! other only through it, relays their traffic with the real mesh core, and tampers with it.
//! Each attack has its own test; each is detected, refused and counted at the node it targets,
//! and the legitimate traffic around it still works:
//! - a routed call with a forged `src` (unsealed, and sealed under the relay's own key);
//! - one flipped byte in a relayed payload;
//! - an injected, a dropped and a reordered stream chunk;
//! - a replayed old request;
//! - and plaintext of what it relays (a model prompt and its completion, commands and their
//!   output, file contents written and read, request payloads) never appears in the bytes the
//!   relay receives.
//!
//! Forged records and `leave`s of other nodes are in `hostile_gossip.rs`.

mod loopback_common;
mod proxy_support;
mod tools_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::error::ErrorCode;
use clawmatrix::identity::ExchangeKey;
use clawmatrix::mesh::{Direction, LinkId, LocalInfo, Mesh, MeshConfig, Output};
use clawmatrix::proto::frame::{Body, Header, ENVELOPE_VERSION};
use clawmatrix::proto::{codec, CallId, FrameId};
use clawmatrix::rpc::{CallOptions, StreamItem, METHOD_ECHO, METHOD_STREAM};
use clawmatrix::tools::remote::{ToolCaller, ToolEvent};
use futures_util::{SinkExt, StreamExt};
use loopback_common::*;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tools_support::TempDir;

const TEST_BOUND: Duration = Duration::from_secs(60);
const RELAY: &str = "mallory";

/// Which real node a frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Alpha,
    Omega,
}

/// What the relay does to the sealed frames it forwards to one side whose payload is at least
/// `min_payload` bytes (stream chunks, not credits), counting from the first such frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    Pass,
    /// Flip one bit of the payload of frame `n`.
    Flip(usize),
    /// Drop frame `n`.
    Drop(usize),
    /// Hold frame `n` back and send it after frame `n + 1`.
    Swap(usize),
    /// After frame `n`, send a made-up frame claiming the same source and call.
    Inject(usize),
}

struct Plan {
    side: Side,
    tamper: Tamper,
    min_payload: usize,
    seen: usize,
    held: Option<Vec<u8>>,
    /// Capture every sealed frame to `side` (for a replay).
    capture: bool,
    captured: Vec<Vec<u8>>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            side: Side::Alpha,
            tamper: Tamper::Pass,
            min_payload: 1500,
            seen: 0,
            held: None,
            capture: false,
            captured: Vec::new(),
        }
    }
}

/// The relay: its plan, everything it received, and a way to send raw frames.
struct Relay {
    plan: Arc<Mutex<Plan>>,
    received: Arc<Mutex<Vec<u8>>>,
    inject: mpsc::UnboundedSender<(Side, Vec<u8>)>,
    /// The relay's own core, to seal frames as itself.
    core: Arc<Mutex<Mesh>>,
}

impl Relay {
    fn set(&self, f: impl FnOnce(&mut Plan)) {
        let mut p = self.plan.lock().unwrap();
        *p = Plan::default();
        f(&mut p);
    }

    fn received_contains(&self, needle: &[u8]) -> bool {
        self.received
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

fn sealed_payload_len(bytes: &[u8]) -> Option<usize> {
    let f = codec::decode(bytes).ok()?;
    matches!(f.header.body, Body::Sealed { .. }).then_some(f.payload.len())
}

/// Apply the plan to one frame going to `side`: the frames to send instead.
fn tamper(plan: &mut Plan, side: Side, bytes: Vec<u8>) -> Vec<Vec<u8>> {
    let Some(len) = sealed_payload_len(&bytes) else {
        return vec![bytes];
    };
    if plan.side != side {
        return vec![bytes];
    }
    if plan.capture {
        plan.captured.push(bytes.clone());
    }
    if len < plan.min_payload {
        return vec![bytes];
    }
    let n = plan.seen;
    plan.seen += 1;
    match plan.tamper {
        Tamper::Flip(k) if k == n => {
            let mut b = bytes;
            b[len / 2] ^= 0x01;
            vec![b]
        }
        Tamper::Drop(k) if k == n => vec![],
        Tamper::Swap(k) if k == n => {
            plan.held = Some(bytes);
            vec![]
        }
        Tamper::Swap(k) if k + 1 == n => {
            let mut out = vec![bytes];
            out.extend(plan.held.take());
            out
        }
        Tamper::Inject(k) if k == n => {
            let f = codec::decode(&bytes).expect("decodes");
            let Body::Sealed { call_id, ctr } = f.header.body else {
                unreachable!()
            };
            let mut forged = f.header.clone();
            forged.id = FrameId([0xEE; 16]);
            forged.body = Body::Sealed {
                call_id,
                ctr: ctr + 5,
            };
            let junk = vec![0x42; f.payload.len()];
            vec![bytes, codec::encode(&forged, &junk).expect("encodes")]
        }
        _ => vec![bytes],
    }
}

/// Link the relay to `alpha` and `omega` (both listening) and run it until the test ends.
async fn relay(alpha: u16, omega: u16) -> Relay {
    let key = test_key(RELAY);
    let mut a = raw_handshake_as(alpha, RELAY, "alpha", key.clone()).await;
    let mut o = raw_handshake_as(omega, RELAY, "omega", key.clone()).await;
    let cfg = MeshConfig::new(
        RELAY,
        1,
        7,
        key,
        Arc::new(ExchangeKey::from_secret(nonce(5))),
    );
    let core = Arc::new(Mutex::new(Mesh::new(cfg, LocalInfo::default(), 0)));
    let plan = Arc::new(Mutex::new(Plan::default()));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (inject, mut injected) = mpsc::unbounded_channel::<(Side, Vec<u8>)>();
    let epoch = Instant::now();
    let now = move || epoch.elapsed().as_millis() as u64;
    {
        let mut m = core.lock().unwrap();
        m.handle_link_up(0, LinkId(1), "alpha".into(), Direction::Outbound);
        m.handle_link_up(0, LinkId(2), "omega".into(), Direction::Outbound);
    }
    let (c, p, r) = (core.clone(), plan.clone(), received.clone());
    tokio::spawn(async move {
        loop {
            // Everything the core wants sent, through the plan.
            let outs: Vec<(Side, Vec<u8>)> = {
                let mut m = c.lock().unwrap();
                std::iter::from_fn(|| m.poll_output())
                    .filter_map(|o| {
                        let (link, bytes) = match o {
                            Output::Send { link, bytes, .. } => (link, bytes),
                            Output::SendShared { link, bytes } => (link, bytes.to_vec()),
                            _ => return None,
                        };
                        let side = if link == LinkId(1) {
                            Side::Alpha
                        } else {
                            Side::Omega
                        };
                        Some((side, bytes))
                    })
                    .collect()
            };
            for (side, bytes) in outs {
                let frames = tamper(&mut p.lock().unwrap(), side, bytes);
                for f in frames {
                    let ws = if side == Side::Alpha { &mut a } else { &mut o };
                    if ws.send(Message::binary(f)).await.is_err() {
                        return;
                    }
                }
            }
            let due = c.lock().unwrap().poll_timeout().unwrap_or(now() + 1000);
            let sleep = Duration::from_millis(due.saturating_sub(now()).min(1000));
            tokio::select! {
                m = a.next() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        r.lock().unwrap().extend_from_slice(&b);
                        c.lock().unwrap().handle_data_owned(now(), LinkId(1), b.to_vec());
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
                m = o.next() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        r.lock().unwrap().extend_from_slice(&b);
                        c.lock().unwrap().handle_data_owned(now(), LinkId(2), b.to_vec());
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                },
                Some((side, bytes)) = injected.recv() => {
                    let ws = if side == Side::Alpha { &mut a } else { &mut o };
                    if ws.send(Message::binary(bytes)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(sleep) => c.lock().unwrap().handle_tick(now()),
            }
        }
    });
    Relay {
        plan,
        received,
        inject,
        core,
    }
}

struct Lab {
    alpha: Node,
    omega: Node,
    relay: Relay,
    root: TempDir,
    _state: TempDir,
}

/// alpha and omega listen and dial nobody; the relay links to both, so every frame between
/// them crosses it. omega serves exec/read/write under `root`.
async fn lab() -> Lab {
    lab_with(json!({})).await
}

/// [`lab`] with more config for omega.
async fn lab_with(omega_extra: serde_json::Value) -> Lab {
    let root = TempDir::new("relay-root");
    let state = TempDir::new("relay-state");
    let (ap, op) = (reserve_port(), reserve_port());
    let alpha = start(config("alpha", Some(ap), &[], json!({})));
    let mut extra = json!({"toolProxy": {"enabled": true, "allow": ["exec", "read", "write"],
                                         "root": root.path().to_string_lossy()}});
    if let (Some(e), serde_json::Value::Object(more)) = (extra.as_object_mut(), omega_extra) {
        e.extend(more);
    }
    let omega = start_with(
        config("omega", Some(op), &[], extra),
        StartOptions {
            state_dir: Some(state.path().to_path_buf()),
            ..StartOptions::default()
        },
    );
    let relay = relay(ap, op).await;
    wait_for(
        "alpha and omega reach each other through the relay",
        Duration::from_secs(10),
        || is_relayed_via(&alpha, "omega", RELAY) && is_relayed_via(&omega, "alpha", RELAY),
    )
    .await;
    Lab {
        alpha,
        omega,
        relay,
        root,
        _state: state,
    }
}

fn refused(n: &Node, why: &str) -> u64 {
    n.status().mesh.e2e_refused.get(why).copied().unwrap_or(0)
}

async fn tool(node: &Node, name: &str, args: serde_json::Value) -> Result<String, ErrorCode> {
    let call = node.start_tool(
        name,
        &args,
        ToolCaller {
            agent_id: Some("assistant".into()),
            session_key: None,
        },
    );
    while let Some(step) = call.next().await {
        match step {
            Ok(ToolEvent::Progress { .. }) => {}
            Ok(ToolEvent::Result(out)) => return Ok(out.text),
            Err(e) => return Err(e.code),
        }
    }
    panic!("{name}: no result");
}

/// Stream `count` chunks of 2000 bytes from omega's `mesh.stream` to alpha: `Ok(chunks)` when it
/// ends normally, or the error it failed with.
async fn stream(alpha: &Node, count: u64) -> Result<u64, clawmatrix::error::Error> {
    let req = json!({"count": count, "bytes": 2000})
        .to_string()
        .into_bytes();
    let opts = CallOptions {
        deadline: Duration::from_secs(5),
    };
    let mut s = alpha.call_stream("omega", METHOD_STREAM, req, opts).await?;
    let mut n = 0;
    loop {
        match s.next().await.expect("an item or an error")? {
            StreamItem::Chunk(_) => n += 1,
            StreamItem::End(_) => return Ok(n),
        }
    }
}

/// A stream the relay tampers with fails with `CLAWMATRIX_INTEGRITY` at alpha, counted under
/// `reason`; the next stream, untouched, arrives whole.
async fn tampered_stream_fails(tamper: Tamper, reason: &str) {
    let lab = lab().await;
    assert_eq!(stream(&lab.alpha, 10).await.expect("a clean stream"), 10);
    lab.relay.set(|p| {
        p.side = Side::Alpha;
        p.tamper = tamper;
    });
    let err = stream(&lab.alpha, 10)
        .await
        .expect_err("the tampered stream fails");
    assert_eq!(err.code, ErrorCode::Integrity, "{err}");
    assert!(err.message.contains("integrity"), "{}", err.message);
    wait_for("the refusal counted", Duration::from_secs(2), || {
        refused(&lab.alpha, reason) >= 1
    })
    .await;
    lab.relay.set(|_| {});
    assert_eq!(
        stream(&lab.alpha, 10)
            .await
            .expect("the next stream is unaffected"),
        10
    );
    lab.alpha.stop();
    lab.omega.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_relayed_payload_fails_the_stream_and_is_counted() {
    tokio::time::timeout(
        TEST_BOUND,
        tampered_stream_fails(Tamper::Flip(3), "bad_tag"),
    )
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_chunk_fails_the_stream_and_is_counted() {
    tokio::time::timeout(
        TEST_BOUND,
        tampered_stream_fails(Tamper::Inject(3), "bad_tag"),
    )
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_chunk_fails_the_stream_and_is_counted() {
    tokio::time::timeout(TEST_BOUND, tampered_stream_fails(Tamper::Drop(3), "seq"))
        .await
        .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reordered_chunk_fails_the_stream_and_is_counted() {
    tokio::time::timeout(TEST_BOUND, tampered_stream_fails(Tamper::Swap(3), "seq"))
        .await
        .expect("bounded");
}

/// A `tool.call` of exec, as alpha's caller would build it, appending a line to `runs.txt`.
fn exec_request() -> Vec<u8> {
    json!({"tool": "exec", "args": {"command": "echo run >> runs.txt"}, "callerAgent": "assistant"})
        .to_string()
        .into_bytes()
}

fn runs(lab: &Lab) -> usize {
    std::fs::read_to_string(lab.root.join("runs.txt"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_call_with_a_forged_src_never_runs_and_is_counted() {
    tokio::time::timeout(TEST_BOUND, async {
        let lab = lab().await;
        // 1. Plain (unsealed), claiming to come from alpha: what a v2 relay could do.
        let plain = Header {
            v: ENVELOPE_VERSION,
            id: FrameId([0xA1; 16]),
            src: "alpha".into(),
            dst: Some("omega".into()),
            ttl: 8,
            hops: 1,
            ts: 0,
            body: Body::Call {
                call_id: CallId([0xA1; 16]),
                method: "tool.call".into(),
                deadline_ms: Some(5000),
            },
        };
        let bytes = codec::encode(&plain, &exec_request()).expect("encodes");
        lab.relay.inject.send((Side::Omega, bytes)).expect("inject");
        // 2. Sealed under the relay's own session with omega, the outer `src` rewritten to
        //    alpha: omega opens it with alpha's key and the tag fails.
        let mine = Header {
            src: RELAY.into(),
            id: FrameId([0xA2; 16]),
            body: Body::Call {
                call_id: CallId([0xA2; 16]),
                method: "tool.call".into(),
                deadline_ms: Some(5000),
            },
            ..plain.clone()
        };
        let sealed = lab
            .relay
            .core
            .lock()
            .unwrap()
            .seal_routed(mine, exec_request())
            .expect("the relay seals as itself");
        let mut f = codec::decode(&sealed).expect("decodes");
        f.header.src = "alpha".into();
        let forged = codec::encode(&f.header, &f.payload).expect("encodes");
        lab.relay
            .inject
            .send((Side::Omega, forged))
            .expect("inject");
        wait_for("both forgeries refused", Duration::from_secs(5), || {
            refused(&lab.omega, "unsealed") == 1 && refused(&lab.omega, "bad_tag") == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs(&lab), 0, "a forged call never ran");
        assert_eq!(
            lab.omega.status().tools.expect("tools")["audit"]["calls"],
            0,
            "nor was it audited as alpha's"
        );
        // The real alpha still runs it, once, audited as alpha.
        tool(
            &lab.alpha,
            "cluster_exec",
            json!({"node": "omega", "command": "echo run >> runs.txt"}),
        )
        .await
        .expect("alpha's own call");
        assert_eq!(runs(&lab), 1);
        let audit = lab.omega.status().tools.expect("tools")["audit"].clone();
        assert_eq!(audit["last"]["callerNode"], "alpha", "{audit}");
        // The audit line names the verified caller and the key its call was sealed with.
        let log = std::fs::read_to_string(lab._state.path().join("audit.log")).expect("audit log");
        let alpha_fp = lab.alpha.status().identity.expect("running").fingerprint;
        let line = log.lines().last().expect("a line");
        assert!(
            line.contains("\"caller_node\":\"alpha\"")
                && line.contains(&format!("\"caller_key\":\"{alpha_fp}\"")),
            "{line}"
        );
        lab.alpha.stop();
        lab.omega.stop();
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_request_is_refused_and_runs_once() {
    tokio::time::timeout(TEST_BOUND, async {
        let lab = lab().await;
        lab.relay.set(|p| {
            p.side = Side::Omega;
            p.capture = true;
            p.min_payload = usize::MAX;
        });
        tool(
            &lab.alpha,
            "cluster_exec",
            json!({"node": "omega", "command": "echo run >> runs.txt"}),
        )
        .await
        .expect("runs");
        assert_eq!(runs(&lab), 1);
        let captured = std::mem::take(&mut lab.relay.plan.lock().unwrap().captured);
        assert!(!captured.is_empty(), "the relay saw alpha's request");
        lab.relay.set(|_| {});
        // Later, the relay sends every sealed frame of that call to omega again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Refused either by the relay dedup cache (the frame id is remembered) or, once that
        // forgot it, by the end-to-end replay window (the id is authenticated, so a new id does
        // not help: see `a_routed_call_with_a_forged_src_never_runs_and_is_counted`).
        let refusals = |n: &Node| {
            let m = n.status().mesh;
            m.e2e_refused.get("replay").copied().unwrap_or(0)
                + m.dropped.get("dup").copied().unwrap_or(0)
        };
        let before = refusals(&lab.omega);
        for f in &captured {
            lab.relay
                .inject
                .send((Side::Omega, f.clone()))
                .expect("inject");
        }
        let n = captured.len() as u64;
        wait_for("the replays refused", Duration::from_secs(5), || {
            refusals(&lab.omega) == before + n
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs(&lab), 1, "the replayed request did not run again");
        // Legitimate traffic goes on.
        tool(
            &lab.alpha,
            "cluster_exec",
            json!({"node": "omega", "command": "echo run >> runs.txt"}),
        )
        .await
        .expect("runs");
        assert_eq!(runs(&lab), 2);
        lab.alpha.stop();
        lab.omega.stop();
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_never_sees_the_plaintext_it_relays() {
    tokio::time::timeout(TEST_BOUND, async {
        // omega serves model m1 from a scripted upstream; alpha asks for it through its proxy.
        let up = proxy_support::start_upstream().await;
        let completion = "PLAINTEXT-COMPLETION-77b4";
        let chunk = |c: &str| {
            json!({"id": "c1", "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {"content": c}}]})
        };
        up.script(
            "m1",
            proxy_support::sse_script(&[chunk(completion), chunk(" and more")], Duration::ZERO),
        );
        let lab = lab_with(json!({"models": [{"id": "m1", "provider": "mock"}]})).await;
        let providers = std::collections::HashMap::from([(
            "mock".to_string(),
            json!({"baseUrl": up.base_url(), "api": "openai-completions"}),
        )]);
        let _omega_host = proxy_support::fake_host(&lab.omega, providers, Some("sk-omega-key"));
        let _alpha_host = proxy_support::fake_host(&lab.alpha, Default::default(), None);
        let prompt = "PLAINTEXT-PROMPT-c0de";
        let body = json!({"model": "m1", "stream": true,
                          "messages": [{"role": "user", "content": prompt}]});
        let proxy = format!("127.0.0.1:{}", lab.alpha.config().proxy_port)
            .parse()
            .expect("addr");
        let got = proxy_support::fetch(
            proxy,
            "POST",
            "/v1/chat/completions",
            Some(&clawmatrix::proxy::token::derive(SECRET, "alpha")),
            body.to_string().into_bytes(),
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(got.status, 200);
        assert!(
            String::from_utf8_lossy(&got.body()).contains(completion),
            "alpha got the completion"
        );
        assert!(
            up.seen()
                .iter()
                .any(|s| String::from_utf8_lossy(&s.body).contains(prompt)),
            "the upstream got the prompt"
        );
        let file = "PLAINTEXT-FILE-5d1e ".repeat(20_000); // 400 KB: several chunks
        std::fs::write(lab.root.join("secret.txt"), &file).expect("write");
        let written = "PLAINTEXT-WRITE-91c2";
        let cmd_marker = "PLAINTEXT-CMD-7f3a";
        let out = tool(
            &lab.alpha,
            "cluster_read",
            json!({"node": "omega", "path": "secret.txt"}),
        )
        .await
        .expect("read");
        assert!(out.contains("PLAINTEXT-FILE-5d1e"), "alpha read the file");
        tool(
            &lab.alpha,
            "cluster_write",
            json!({"node": "omega", "path": "w.txt", "content": written}),
        )
        .await
        .expect("write");
        let out = tool(
            &lab.alpha,
            "cluster_exec",
            json!({"node": "omega", "command": format!("echo {cmd_marker}-$((6*7))")}),
        )
        .await
        .expect("exec");
        assert!(out.contains(&format!("{cmd_marker}-42")), "{out}");
        let echo = lab
            .alpha
            .request(
                "omega",
                METHOD_ECHO,
                b"PLAINTEXT-ECHO-aa01".to_vec(),
                Duration::from_secs(5),
            )
            .await
            .expect("echo");
        assert_eq!(echo, b"PLAINTEXT-ECHO-aa01");
        // Positive control: the relay did carry all of it (a byte count well past the file).
        let seen = lab.relay.received.lock().unwrap().len();
        assert!(seen > file.len(), "the relay received {seen} bytes");
        let output = format!("{cmd_marker}-42");
        for needle in [
            prompt,
            completion,
            "sk-omega-key",
            "PLAINTEXT-FILE-5d1e",
            written,
            cmd_marker,
            output.as_str(),
            "PLAINTEXT-ECHO-aa01",
            "secret.txt",
            "tool.call",
        ] {
            assert!(
                !lab.relay.received_contains(needle.as_bytes()),
                "the relay saw {needle:?} in clear"
            );
        }
        lab.alpha.stop();
        lab.omega.stop();
    })
    .await
    .expect("bounded");
}
