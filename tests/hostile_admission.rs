//! Hostile input against a listening node, before and right after the handshake: raw sockets
//! (from another loopback address, 127.0.0.2, so the per-source limit tells them apart from the
//! legitimate peer on 127.0.0.1) that idle, churn, ping without reading, or announce frames over
//! the limit. Each test drives the public surfaces only: a real listener, real sockets, and the
//! `status()` counters.

mod loopback_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::proto::MAX_FRAME_BYTES;
use loopback_common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TEST_BOUND: Duration = Duration::from_secs(30);
/// The hostile sockets' source address (loopback; the legitimate peer dials from 127.0.0.1).
const HOSTILE_FROM: [u8; 4] = [127, 0, 0, 2];

fn hub(id: &str, handshake_timeout: Option<Duration>) -> (Node, u16) {
    hub_with(id, handshake_timeout, json!({}))
}

fn hub_with(id: &str, handshake_timeout: Option<Duration>, extra: Value) -> (Node, u16) {
    let port = reserve_port();
    let n = start_with(
        config(id, Some(port), &[], extra),
        StartOptions {
            handshake_timeout,
            ..StartOptions::default()
        },
    );
    (n, port)
}

fn preauth_rejects(n: &Node, why: &str) -> u64 {
    n.status()
        .mesh
        .preauth_rejects
        .get(why)
        .copied()
        .unwrap_or(0)
}

/// A socket from `HOSTILE_FROM` to the listener; closing it resets (no TIME_WAIT left on our
/// side, so churning thousands of them does not run out of ports).
async fn hostile_socket(port: u16, recv_buffer: Option<u32>) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    if let Some(b) = recv_buffer {
        s.set_recv_buffer_size(b)?;
    }
    s.bind((HOSTILE_FROM, 0).into())?;
    let tcp = s.connect(([127, 0, 0, 1], port).into()).await?;
    tcp.set_zero_linger()?;
    Ok(tcp)
}

/// Read until the server closes the socket (or `within` passes).
async fn until_closed(tcp: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(within, async {
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Hold `tcp` until the server closes it, or the test ends.
async fn hold_until_closed(tcp: &mut TcpStream, stop: &AtomicBool) {
    let mut b = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut b)).await {
            Err(_) | Ok(Ok(1..)) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
        }
    }
}

/// The HTTP upgrade by hand; returns once the 101 response has been read.
async fn upgrade(tcp: &mut TcpStream, port: u16) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b))
            .await
            .expect("101 within 5 s")
            .expect("read 101");
        assert_eq!(n, 1, "closed during the upgrade");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
}

/// A masked client PING with a 125-byte payload.
fn ping_frame() -> Vec<u8> {
    let mut f = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    f.extend_from_slice(&[0x55; 125]);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_and_never_reads_is_closed_within_the_handshake_deadline() {
    tokio::time::timeout(TEST_BOUND, async {
        let deadline = Duration::from_millis(1_000);
        let (cloud, port) = hub("cloud-ping", Some(deadline));
        let t0 = Instant::now();
        // A small receive buffer that is never read: the server's pongs fill it, then its send
        // buffer, and its pong write can no longer complete.
        let mut tcp = hostile_socket(port, Some(4096)).await.expect("connect");
        upgrade(&mut tcp, port).await;
        let ping = ping_frame();
        // Ping until the server is gone (our write fails: it reset the connection), or until
        // well past its deadline (it kept the socket: the test fails below).
        let gone = loop {
            if t0.elapsed() > deadline * 3 {
                break None;
            }
            match tokio::time::timeout(Duration::from_millis(100), tcp.write_all(&ping)).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => break Some(t0.elapsed()),
                // The server stopped reading (stuck writing a pong, or gone): try again.
                Err(_) => continue,
            }
        };
        let gone = gone.expect("the server still holds the socket 3 s after a 1 s deadline");
        eprintln!("never-reading client closed after {gone:?} (deadline {deadline:?})");
        assert!(
            gone < deadline + Duration::from_millis(400),
            "closed after {gone:?}, deadline {deadline:?}"
        );
        // The peer's part of the budget ran out: a `timeout` rejection; the slot is free again.
        wait_for("timeout counted", Duration::from_secs(2), || {
            reject_count(&cloud, "timeout") == 1 && cloud.status().mesh.preauth_pending == 0
        })
        .await;
        cloud.stop();
    })
    .await
    .expect("test bound");
}

/// Open `n` sockets from `HOSTILE_FROM` and keep them open (idle, never sending a byte); each
/// one the server closes is reopened at once. Runs until `stop`, counting its connects.
fn idle_flood(
    port: u16,
    n: usize,
    stop: Arc<AtomicBool>,
    connects: Arc<AtomicU64>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (stop, connects) = (Arc::clone(&stop), Arc::clone(&connects));
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut tcp) = hostile_socket(port, None).await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                connects.fetch_add(1, Ordering::Relaxed);
                hold_until_closed(&mut tcp, &stop).await;
            }
        });
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_reopened_as_closed_do_not_keep_a_peer_out() {
    tokio::time::timeout(TEST_BOUND, async {
        let (cloud, port) = hub("cloud-idle", None);
        let stop = Arc::new(AtomicBool::new(false));
        // 80 > the 64 pre-auth slots: before per-source limits these held every one of them.
        let connects = Arc::new(AtomicU64::new(0));
        let flood = idle_flood(port, 80, Arc::clone(&stop), Arc::clone(&connects));
        // The flood is reopening what the server closes.
        wait_for(
            "the flood reopening sockets",
            Duration::from_secs(5),
            || connects.load(Ordering::Relaxed) > 200,
        )
        .await;
        let home = start(config(
            "home-idle",
            None,
            &[("cloud-idle", port)],
            json!({}),
        ));
        let took = wait_for("home linked to cloud", Duration::from_secs(5), || {
            is_direct(&cloud, "home-idle") && is_direct(&home, "cloud-idle")
        })
        .await;
        eprintln!("linked after {took:?} under an idle flood");
        assert!(took < Duration::from_secs(2), "linked after {took:?}");
        // The address holds its own share of the slots, no more; its refusals are counted.
        let m = cloud.status().mesh;
        assert!(m.preauth_pending <= 8, "{m:?}");
        assert!(preauth_rejects(&cloud, "perSource") > 0, "{m:?}");
        stop.store(true, Ordering::Relaxed);
        flood.join_all().await;
        home.stop();
        cloud.stop();
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_links_within_a_second_while_a_thousand_hostile_sockets_churn() {
    tokio::time::timeout(TEST_BOUND, async {
        let (cloud, port) = hub("cloud-churn", None);
        let stop = Arc::new(AtomicBool::new(false));
        let connects = Arc::new(AtomicU64::new(0));
        let mut churn = tokio::task::JoinSet::new();
        for i in 0..1_000usize {
            let (stop, connects) = (Arc::clone(&stop), Arc::clone(&connects));
            churn.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = hostile_socket(port, None).await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    connects.fetch_add(1, Ordering::Relaxed);
                    // A third idle, a third an upgrade that never goes on (both held until the
                    // server closes them), a third junk (reset after 50 ms); then start over.
                    let (junk, hold): (&[u8], bool) = match i % 3 {
                        0 => (b"", true),
                        1 => (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n", true),
                        _ => (b"\x16\x03\x01 not http at all\r\n\r\n", false),
                    };
                    let _ = tcp.write_all(junk).await;
                    if hold {
                        hold_until_closed(&mut tcp, &stop).await;
                    } else {
                        until_closed(&mut tcp, Duration::from_millis(50)).await;
                    }
                }
            });
        }
        wait_for("the churn under way", Duration::from_secs(10), || {
            connects.load(Ordering::Relaxed) > 2_000
        })
        .await;
        let before = connects.load(Ordering::Relaxed);
        let home = start(config(
            "home-churn",
            None,
            &[("cloud-churn", port)],
            json!({}),
        ));
        let took = wait_for("home linked to cloud", Duration::from_secs(5), || {
            is_direct(&cloud, "home-churn") && is_direct(&home, "cloud-churn")
        })
        .await;
        let during = connects.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        churn.join_all().await;
        eprintln!(
            "linked after {took:?}; {during} hostile connects meanwhile, {} in all",
            connects.load(Ordering::Relaxed)
        );
        assert!(during > 0, "the churn went on while home linked");
        assert!(took < Duration::from_secs(1), "linked after {took:?}");
        // The refusals are visible in status, JSON and text.
        let status = cloud.status();
        assert!(
            status.mesh.preauth_rejects["perSource"] > 1_000,
            "{status:?}"
        );
        let text = clawmatrix::status::render_text(&status);
        assert!(text.contains("perSource"), "{text}");
        home.stop();
        cloud.stop();
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_after_the_handshake_closes_the_link_with_4010_and_is_counted() {
    tokio::time::timeout(TEST_BOUND, async {
        let (cloud, port) = hub("cloud-big", None);
        let mut ws = raw_handshake(port, "hostile-big", "cloud-big").await;
        wait_for("the hostile peer is linked", Duration::from_secs(5), || {
            cloud.status().mesh.links_up == 1
        })
        .await;
        // A masked BINARY header announcing one byte over MAX_FRAME_BYTES, straight onto the
        // socket (the client's own writer has nothing half-sent).
        let mut head = vec![0x82u8, 0x80 | 127];
        head.extend_from_slice(&(MAX_FRAME_BYTES as u64 + 1).to_be_bytes());
        head.extend_from_slice(&[9, 9, 9, 9]);
        ws.get_mut().write_all(&head).await.expect("header");
        assert_eq!(close_code(&mut ws).await, Some(4010));
        wait_for("the 4010 close counted", Duration::from_secs(2), || {
            let m = cloud.status().mesh;
            m.protocol_error_closes.get("frameTooLarge") == Some(&1) && m.links_up == 0
        })
        .await;
        cloud.stop();
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_cap_takes_eight_sources_to_fill_and_refusals_name_their_reason() {
    tokio::time::timeout(TEST_BOUND, async {
        let (cloud, port) = hub("cloud-cap", None);
        let from = |last: u8| async move {
            let s = TcpSocket::new_v4().expect("socket");
            s.bind(([127, 0, 0, last], 0).into()).expect("bind");
            s.connect(([127, 0, 0, 1], port).into()).await.expect("tcp")
        };
        // Eight sources, each with its full share: every slot taken.
        let mut idle = Vec::new();
        for last in 2..10u8 {
            for _ in 0..8 {
                idle.push(from(last).await);
            }
        }
        wait_for("64 pending", Duration::from_secs(5), || {
            cloud.status().mesh.preauth_pending == 64
        })
        .await;
        // A ninth source finds the listener full; one of the eight finds its share taken.
        for (last, why) in [(10u8, "globalFull"), (2, "perSource")] {
            let mut extra = from(last).await;
            until_closed(&mut extra, Duration::from_secs(2)).await;
            wait_for(why, Duration::from_secs(2), || {
                preauth_rejects(&cloud, why) == 1
            })
            .await;
        }
        assert_eq!(cloud.status().mesh.preauth_pending, 64);
        drop(idle);
        wait_for("slots released", Duration::from_secs(5), || {
            cloud.status().mesh.preauth_pending == 0
        })
        .await;
        cloud.stop();
    })
    .await
    .expect("test bound");
}

/// Memory mimalloc (the global allocator) holds read/write now, in bytes.
fn committed() -> usize {
    let mut commit = 0usize;
    // SAFETY: every out-parameter may be null; `commit` is a valid usize to write.
    unsafe {
        libmimalloc_sys::mi_process_info(
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut commit,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
    commit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_frame_lengths_cost_nothing_until_their_bytes_arrive() {
    const PEERS: usize = 12;
    tokio::time::timeout(TEST_BOUND, async {
        // Slow heartbeats: the raw peers do not answer pings, and must stay linked meanwhile.
        let (cloud, port) = hub_with("cloud-mem", None, json!({"heartbeatIntervalMs": 10_000}));
        let mut peers = Vec::new();
        for i in 0..PEERS {
            peers.push(raw_handshake(port, &format!("hostile-mem-{i}"), "cloud-mem").await);
        }
        wait_for("the hostile peers linked", Duration::from_secs(5), || {
            cloud.status().mesh.links_up == PEERS as u64
        })
        .await;
        let before = committed();
        // Each announces a message of exactly MAX_FRAME_BYTES (16 MiB) and sends 100 bytes.
        for ws in &mut peers {
            let mut head = vec![0x82u8, 0x80 | 127];
            head.extend_from_slice(&(MAX_FRAME_BYTES as u64).to_be_bytes());
            head.extend_from_slice(&[0, 0, 0, 0]);
            head.extend_from_slice(&[0u8; 100]);
            ws.get_mut().write_all(&head).await.expect("partial frame");
        }
        // Reserving the announced lengths would commit 12 × 16 MiB = 192 MiB; watch for half a
        // second whether the node's memory grows by a third of that.
        let bound = PEERS * MAX_FRAME_BYTES / 3;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(500) {
            let grown = committed().saturating_sub(before);
            assert!(
                grown < bound,
                "{grown} bytes committed for {PEERS} announced 16 MiB frames of 100 bytes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The links are still up: announcing is allowed, only not paid for in advance.
        assert_eq!(cloud.status().mesh.links_up, PEERS as u64);
        eprintln!(
            "committed {} KiB more for {PEERS} partial 16 MiB frames",
            committed().saturating_sub(before) / 1024
        );
        cloud.stop();
    })
    .await
    .expect("test bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_violation_after_the_handshake_closes_the_link_with_4010_and_is_counted() {
    tokio::time::timeout(TEST_BOUND, async {
        let (cloud, port) = hub("cloud-unmasked", None);
        let mut ws = raw_handshake(port, "hostile-unmasked", "cloud-unmasked").await;
        wait_for("the hostile peer is linked", Duration::from_secs(5), || {
            cloud.status().mesh.links_up == 1
        })
        .await;
        // An unmasked BINARY frame from a client (RFC 6455 §5.1: the server must fail it).
        ws.get_mut()
            .write_all(&[0x82, 3, 1, 2, 3])
            .await
            .expect("frame");
        assert_eq!(close_code(&mut ws).await, Some(4010));
        wait_for("the 4010 close counted", Duration::from_secs(2), || {
            let m = cloud.status().mesh;
            m.protocol_error_closes.get("badFraming") == Some(&1) && m.links_up == 0
        })
        .await;
        cloud.stop();
    })
    .await
    .expect("test bound");
}
