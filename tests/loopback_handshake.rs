//! Handshake rejections over real sockets: each one is refused with its close code (observed by
//! a raw tokio-tungstenite client), counted in the status `mesh` counters, and logged exactly
//! once; a rejected duplicate leaves the live link up.

mod loopback_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmatrix::app::Node;
use clawmatrix::proto::{Bytes32, Dialer, HandshakeConfig, HandshakeFrame, Step};
use futures_util::SinkExt;
use loopback_common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const TEST_BOUND: Duration = Duration::from_secs(30);

fn hub(id: &str) -> (Node, u16) {
    let port = reserve_port();
    (start(config(id, Some(port), &[], json!({}))), port)
}

/// Exactly one "handshake rejected" line, naming `code`.
async fn one_reject_line(n: &Node, code: &str) {
    // The line is pushed before the close frame is sent, so it is there by now.
    let lines: Vec<String> = drain(n)
        .await
        .into_iter()
        .filter(|l| l.contains("handshake rejected"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(code), "{lines:#?}");
    assert!(lines[0].contains("127.0.0.1:"), "peer address: {lines:#?}");
}

async fn counted(n: &Node, code: &str, times: u64) {
    wait_for(&format!("{code} counted"), Duration::from_secs(2), || {
        reject_count(n, code) == times
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_in_both_directions() {
    tokio::time::timeout(TEST_BOUND, async {
        // Node dialer with the wrong secret: the dialer confirms the SPAKE2 key first, so the
        // listener detects the mismatch (bad_mac) and the dialer hears the listener's reject.
        let (h, port) = hub("hub-secret");
        let bad = start(config(
            "bad-dialer",
            None,
            &[("hub-secret", port)],
            json!({"secret": "a-completely-different-secret"}),
        ));
        wait_for("both sides counted bad_mac", Duration::from_secs(5), || {
            reject_count(&h, "bad_mac") >= 1 && reject_count(&bad, "bad_mac") >= 1
        })
        .await;
        assert_eq!(h.status().mesh.links_up, 0);
        assert_eq!(bad.status().mesh.links_up, 0);
        let logs = drain(&bad).await.join("\n");
        assert!(
            logs.contains("handshake rejected by peer (outbound to ws://127.0.0.1"),
            "{logs}"
        );
        bad.stop();
        let logs = drain(&h).await.join("\n");
        assert!(
            logs.contains("handshake rejected (inbound from 127.0.0.1:")
                && logs.contains("bad_mac"),
            "{logs}"
        );
        let before = reject_count(&h, "bad_mac");

        // A raw dialer that cannot prove the secret (forged auth): the listener detects it.
        let mut ws = raw_connect(port).await;
        ws.send(Message::text(hello_text("forger", 1)))
            .await
            .expect("hello");
        let challenge = next_text_or_close(&mut ws).await.expect("challenge");
        assert!(challenge.contains("\"challenge\""), "{challenge}");
        assert!(
            !challenge.contains("\"mac\""),
            "nothing to guess against: {challenge}"
        );
        let forged = HandshakeFrame::Auth {
            mac: Bytes32([0; 32]),
            sig: clawmatrix::proto::Sig64([0; 64]),
            mac2: None,
        }
        .encode();
        ws.send(Message::text(forged)).await.expect("auth");
        let reject = next_text_or_close(&mut ws).await.expect("reject frame");
        assert!(is_reject(&reject, "bad_mac"), "{reject}");
        assert_eq!(close_code(&mut ws).await, Some(4001));
        counted(&h, "bad_mac", before + 1).await;
        one_reject_line(&h, "bad_mac").await;

        // The listener with the wrong secret: an honest raw dialer cannot tell from the
        // challenge (a bare SPAKE2 share), confirms, and the listener refuses the confirmation.
        let (wrong, wport) = {
            let port = reserve_port();
            let c = config(
                "hub-wrong",
                Some(port),
                &[],
                json!({"secret": "the-listener-is-wrong-here"}),
            );
            (start(c), port)
        };
        let mut ws = raw_connect(wport).await;
        let cfg = HandshakeConfig::new("honest", SECRET.as_bytes().to_vec(), test_key("honest"));
        let (mut d, hello) = Dialer::new(cfg, None, nonce(9), 0);
        ws.send(Message::text(hello.encode())).await.expect("hello");
        let challenge = next_text_or_close(&mut ws).await.expect("challenge");
        match d.on_frame(&challenge, |_, _| Ok(())) {
            Step::Send(auth) => ws
                .send(Message::text(auth.encode()))
                .await
                .expect("send auth"),
            other => panic!("expected our confirmation, got {other:?}"),
        }
        let reject = next_text_or_close(&mut ws).await.expect("reject frame");
        assert!(is_reject(&reject, "bad_mac"), "{reject}");
        assert_eq!(close_code(&mut ws).await, Some(4001));
        counted(&wrong, "bad_mac", 1).await;
        one_reject_line(&wrong, "bad_mac").await;
        h.stop();
        wrong.stop();
    })
    .await
    .expect("test bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_hello_is_refused_as_replay() {
    tokio::time::timeout(TEST_BOUND, async {
        let (h, port) = hub("hub-replay");
        // Capture a hello from a raw client run...
        let hello = hello_text("replayer", 3);
        let mut first = raw_connect(port).await;
        first
            .send(Message::text(hello.clone()))
            .await
            .expect("hello");
        let challenge = next_text_or_close(&mut first).await.expect("challenge");
        assert!(challenge.contains("\"challenge\""), "{challenge}");
        drop(first);
        // ... and replay it on a new connection.
        let mut ws = raw_connect(port).await;
        ws.send(Message::text(hello)).await.expect("replayed hello");
        let reject = next_text_or_close(&mut ws).await.expect("reject frame");
        assert!(is_reject(&reject, "replay"), "{reject}");
        assert_eq!(close_code(&mut ws).await, Some(4002));
        counted(&h, "replay", 1).await;
        // The first connection died mid-handshake: that is logged at debug level, not as a
        // rejection.
        one_reject_line(&h, "replay").await;
        h.stop();
    })
    .await
    .expect("test bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_node_id_is_refused_and_the_live_link_stays_up() {
    tokio::time::timeout(TEST_BOUND, async {
        let (h, port) = hub("hub-dup");
        let live = raw_handshake(port, "twin", "hub-dup").await;
        // Keep the live link's heartbeat satisfied: any frame from the peer counts. `quiet`
        // stops the pings but keeps the socket open (the control at the end).
        let quiet = Arc::new(AtomicBool::new(false));
        let pinger = tokio::spawn({
            let quiet = Arc::clone(&quiet);
            async move {
                let mut live = live;
                for seq in 1u64.. {
                    if !quiet.load(Ordering::Relaxed)
                        && live
                            .send(Message::binary(ping_frame("twin", seq)))
                            .await
                            .is_err()
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        wait_for("first link up", Duration::from_secs(5), || {
            h.status().mesh.links_up == 1
        })
        .await;
        drain(&h).await;

        let mut ws = raw_connect(port).await;
        let cfg = HandshakeConfig::new("twin", SECRET.as_bytes().to_vec(), test_key("twin"));
        let (mut d, hello) = Dialer::new(cfg, None, nonce(11), 0);
        ws.send(Message::text(hello.encode())).await.expect("hello");
        let challenge = next_text_or_close(&mut ws).await.expect("challenge");
        let Step::Send(auth) = d.on_frame(&challenge, |_, _| Ok(())) else {
            panic!("expected auth");
        };
        ws.send(Message::text(auth.encode())).await.expect("auth");
        let reject = next_text_or_close(&mut ws).await.expect("reject frame");
        assert!(is_reject(&reject, "duplicate_node"), "{reject}");
        assert_eq!(close_code(&mut ws).await, Some(4003));
        counted(&h, "duplicate_node", 1).await;
        one_reject_line(&h, "duplicate_node").await;

        // The first link is still up a heartbeat timeout later (the duplicate's refusal did
        // not take it down, at once or by starving it)...
        tokio::time::sleep(HEARTBEAT_DEATH).await;
        assert_eq!(h.status().mesh.links_up, 1);
        assert!(!pinger.is_finished(), "the live link was closed");
        // ...and the window is long enough to see it go: silenced, it is dropped within it.
        quiet.store(true, Ordering::Relaxed);
        wait_for("the silenced link timed out", HEARTBEAT_DEATH, || {
            let m = h.status().mesh;
            m.links_up == 0 && m.heartbeat_timeouts == 1
        })
        .await;
        pinger.abort();
        h.stop();
    })
    .await
    .expect("test bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_our_own_id_is_refused_as_self_id() {
    tokio::time::timeout(TEST_BOUND, async {
        let (h, port) = hub("hub-self");
        let mut ws = raw_connect(port).await;
        ws.send(Message::text(hello_text("hub-self", 5)))
            .await
            .expect("hello");
        let reject = next_text_or_close(&mut ws).await.expect("reject frame");
        assert!(is_reject(&reject, "self_id"), "{reject}");
        assert_eq!(close_code(&mut ws).await, Some(4004));
        counted(&h, "self_id", 1).await;
        one_reject_line(&h, "self_id").await;
        h.stop();
    })
    .await
    .expect("test bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_or_binary_first_frames_are_malformed() {
    tokio::time::timeout(TEST_BOUND, async {
        let (h, port) = hub("hub-junk");
        let cases: Vec<(&str, Message)> = vec![
            ("garbage text", Message::text("this is not json")),
            ("oversized text", Message::text("x".repeat(5000))),
            ("far too large", Message::text("y".repeat(64 * 1024))),
            (
                "binary first",
                Message::binary(vec![0u8, 0, 0, 2, b'{', b'}']),
            ),
        ];
        for (i, (what, msg)) in cases.into_iter().enumerate() {
            let mut ws = raw_connect(port).await;
            ws.send(msg).await.expect("send");
            assert_eq!(close_code(&mut ws).await, Some(4000), "{what}");
            counted(&h, "malformed", i as u64 + 1).await;
            one_reject_line(&h, "malformed").await;
        }
        assert_eq!(h.status().mesh.links_up, 0);
        h.stop();
    })
    .await
    .expect("test bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_is_closed_at_the_handshake_deadline() {
    tokio::time::timeout(TEST_BOUND, async {
        let (h, port) = hub("hub-idle");
        let t0 = Instant::now();
        let mut ws = raw_connect(port).await;
        let reject = next_text_or_close(&mut ws).await.expect("reject frame");
        assert!(is_reject(&reject, "timeout"), "{reject}");
        assert_eq!(close_code(&mut ws).await, Some(4006));
        let took = t0.elapsed();
        // HANDSHAKE_TIMEOUT_MS = 10 s.
        assert!(
            took >= Duration::from_millis(9_900) && took < Duration::from_secs(12),
            "{took:?}"
        );
        counted(&h, "timeout", 1).await;
        one_reject_line(&h, "timeout").await;
        h.stop();
    })
    .await
    .expect("test bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_from_one_source_are_capped_and_extra_sockets_closed_at_accept() {
    // The global cap across sources: tests/hostile_admission.rs.
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(TEST_BOUND, async {
        let (h, port) = hub("hub-flood");
        let cap = clawmatrix::node::listener::MAX_PENDING_PER_SOURCE;
        let mut idle = Vec::new();
        for _ in 0..cap {
            idle.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("tcp"),
            );
        }
        // The listener took them all in (each holds a pending slot) before the extra one.
        wait_for("the idle sockets pending", Duration::from_secs(2), || {
            h.status().mesh.preauth_pending == cap as u64
        })
        .await;
        let mut extra = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("tcp");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        wait_for(
            "the refusal counted per source",
            Duration::from_secs(2),
            || h.status().mesh.preauth_rejects.get("perSource").copied() == Some(1),
        )
        .await;
        // Freeing the idle sockets makes room again: a real handshake succeeds.
        drop(idle);
        wait_for(
            "the idle sockets' slots freed",
            Duration::from_secs(2),
            || h.status().mesh.preauth_pending == 0,
        )
        .await;
        let _ws = raw_handshake(port, "late", "hub-flood").await;
        wait_for("late link up", Duration::from_secs(5), || {
            h.status().mesh.links_up == 1
        })
        .await;
        h.stop();
    })
    .await
    .expect("test bounded");
}
