//! The fault lab's TCP proxy (tests/lab/faultproxy): each fault does what it says, measured
//! through the proxy against a loopback echo server, every test bounded in time.

#[path = "lab/faultproxy/mod.rs"]
#[allow(dead_code)]
mod faultproxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faultproxy::{loopback_target, start, Command, Dir, Options, Rng, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

const BOUND: Duration = Duration::from_secs(20);
const SEED: u64 = 0x1AB_5EED;

/// An echo server on 127.0.0.1; returns its address and its accept count.
async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepts = Arc::new(AtomicU64::new(0));
    let a = accepts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepts)
}

async fn proxy_to(target: SocketAddr) -> Running {
    println!("faultproxy seed {SEED:#x}");
    start(Options {
        listen_port: 0,
        control_port: 0,
        target,
        sockbuf: None,
        seed: SEED,
    })
    .await
    .expect("proxy starts")
}

fn cmd(v: serde_json::Value) -> Command {
    serde_json::from_value(v).expect("command parses")
}

/// Writes `data` and reads as many bytes back; returns them and the time it took.
async fn round_trip(s: &mut TcpStream, data: &[u8]) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    s.write_all(data).await.expect("write");
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).await.expect("read back");
    (got, t0.elapsed())
}

/// One HTTP request to the control port; returns (status, JSON body).
async fn control(p: &Running, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(p.control)
        .await
        .expect("control connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let code = out[9..12].parse().expect("status code");
    let json = out.split("\r\n\r\n").nth(1).unwrap_or("null");
    (code, serde_json::from_str(json).expect("json body"))
}

#[tokio::test]
async fn bytes_pass_unchanged_in_both_directions() {
    timeout(BOUND, async {
        let (target, _) = echo().await;
        let p = proxy_to(target).await;
        let mut s = TcpStream::connect(p.listen).await.expect("connect");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let (got, _) = round_trip(&mut s, &data).await;
        assert_eq!(got, data);
        let c = p.proxy.counters.json();
        assert_eq!(c["up"]["bytes"], 1_000_000);
        assert_eq!(c["down"]["bytes"], 1_000_000);
        assert_eq!(c["connections"], 1);
    })
    .await
    .expect("bounded");
}

#[test]
fn a_target_outside_loopback_is_refused() {
    assert!(loopback_target("8080").is_ok());
    assert!(loopback_target("127.0.0.2:9").is_ok());
    assert!(loopback_target("[::1]:9").is_ok());
    for bad in [
        "10.0.0.1:80",
        "192.168.1.1:22",
        "8.8.8.8:53",
        "[2001:db8::1]:80",
        "localhost:80",
        "127.0.0.1:0",
    ] {
        let e = loopback_target(bad).expect_err(bad);
        assert!(e.contains("target"), "{e}");
    }
    assert!(loopback_target("10.0.0.1:80")
        .unwrap_err()
        .contains("not a loopback address"));
}

#[tokio::test]
async fn every_delayed_chunk_waits_its_delay_in_each_direction() {
    timeout(BOUND, async {
        let (target, _) = echo().await;
        let p = proxy_to(target).await;
        let mut s = TcpStream::connect(p.listen).await.expect("connect");
        let (_, fast) = round_trip(&mut s, b"warm").await;
        p.proxy
            .apply(&cmd(serde_json::json!({"delay": {"p": 1.0, "ms": 200}})))
            .expect("apply");
        let (got, slow) = round_trip(&mut s, b"ping").await;
        assert_eq!(got, b"ping");
        // 200 ms up and 200 ms down.
        assert!(slow >= Duration::from_millis(395), "round trip {slow:?}");
        assert!(slow < Duration::from_millis(1500), "round trip {slow:?}");
        assert!(
            fast < Duration::from_millis(150),
            "undelayed round trip {fast:?}"
        );
        let c = p.proxy.counters.json();
        assert_eq!(c["up"]["chunksDelayed"], 1);
        assert_eq!(c["down"]["chunksDelayed"], 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_delayed_chunk_holds_back_the_chunks_behind_it_and_order_is_kept() {
    timeout(BOUND, async {
        let (target, _) = echo().await;
        let p = proxy_to(target).await;
        let mut s = TcpStream::connect(p.listen).await.expect("connect");
        round_trip(&mut s, b"warm").await;
        p.proxy
            .apply(&cmd(
                serde_json::json!({"dir": "up", "delay": {"p": 1.0, "ms": 400}}),
            ))
            .expect("apply");
        let t0 = Instant::now();
        s.write_all(b"first").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The next chunk is not delayed itself, but waits behind the first.
        p.proxy
            .apply(&cmd(
                serde_json::json!({"dir": "up", "delay": {"p": 0.0, "ms": 0}}),
            ))
            .expect("apply");
        s.write_all(b"second").await.expect("write");
        let mut got = vec![0u8; 11];
        s.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"firstsecond");
        assert!(
            t0.elapsed() >= Duration::from_millis(395),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(p.proxy.counters.json()["up"]["chunksDelayed"], 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_delay_probability_delays_about_that_share_of_chunks_with_jitter_bounds() {
    timeout(BOUND, async {
        let (target, _) = echo().await;
        let p = proxy_to(target).await;
        let mut s = TcpStream::connect(p.listen).await.expect("connect");
        p.proxy
            .apply(&cmd(
                serde_json::json!({"dir": "up", "delay": {"p": 0.25, "ms": 20, "jitterMs": 10}}),
            ))
            .expect("apply");
        let mut worst = Duration::ZERO;
        for i in 0..200u32 {
            let (_, t) = round_trip(&mut s, &i.to_le_bytes()).await;
            worst = worst.max(t);
        }
        let delayed = p.proxy.counters.json()["up"]["chunksDelayed"]
            .as_u64()
            .expect("n");
        assert!(
            (25..=80).contains(&delayed),
            "{delayed} of 200 chunks delayed at p = 0.25"
        );
        assert!(
            worst >= Duration::from_millis(10) && worst < Duration::from_millis(200),
            "{worst:?}"
        );
    })
    .await
    .expect("bounded");
}

#[test]
fn the_same_seed_draws_the_same_faults() {
    let draws = |seed| {
        let mut r = Rng::new(seed);
        (0..64).map(|_| r.unit()).collect::<Vec<_>>()
    };
    assert_eq!(draws(SEED), draws(SEED));
    assert_ne!(draws(SEED), draws(SEED + 1));
    assert!(draws(SEED).iter().all(|u| (0.0..1.0).contains(u)));
}

#[tokio::test]
async fn a_stall_holds_bytes_for_its_duration_and_keeps_the_connection() {
    timeout(BOUND, async {
        let (target, _) = echo().await;
        let p = proxy_to(target).await;
        let mut s = TcpStream::connect(p.listen).await.expect("connect");
        round_trip(&mut s, b"warm").await;
        p.proxy
            .apply(&cmd(serde_json::json!({"stall": {"ms": 600}})))
            .expect("apply");
        let (got, t) = round_trip(&mut s, b"held").await;
        assert_eq!(got, b"held");
        assert!(
            t >= Duration::from_millis(550) && t < Duration::from_millis(2000),
            "{t:?}"
        );
        let (_, after) = round_trip(&mut s, b"free").await;
        assert!(after < Duration::from_millis(150), "{after:?}");
        assert_eq!(p.proxy.counters.json()["connections"], 1);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_blackhole_forwards_nothing_holds_new_connections_and_the_heal_delivers_what_waited() {
    timeout(BOUND, async {
        let (target, accepts) = echo().await;
        let p = proxy_to(target).await;
        let mut old = TcpStream::connect(p.listen).await.expect("connect");
        round_trip(&mut old, b"warm").await;
        assert_eq!(accepts.load(Ordering::SeqCst), 1);
        let (code, _) = control(&p, "POST", "/faults", r#"{"blackhole":true}"#).await;
        assert_eq!(code, 200);
        old.write_all(b"lost?").await.expect("write");
        // A new connection is accepted by the proxy but never reaches the target.
        let mut new = TcpStream::connect(p.listen)
            .await
            .expect("the proxy accepts");
        new.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        assert!(
            timeout(Duration::from_millis(800), old.read_exact(&mut buf))
                .await
                .is_err(),
            "nothing comes back"
        );
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            1,
            "the target saw no new connection"
        );
        let (_, model) = control(&p, "GET", "/faults", "").await;
        assert_eq!(model["up"]["blackhole"], true);
        let t0 = Instant::now();
        p.proxy
            .apply(&cmd(serde_json::json!({"blackhole": false})))
            .expect("apply");
        old.read_exact(&mut buf).await.expect("read after heal");
        assert_eq!(&buf, b"lost?");
        new.read_exact(&mut buf).await.expect("read after heal");
        assert_eq!(&buf, b"hello");
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(accepts.load(Ordering::SeqCst), 2);
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_rate_cap_paces_a_transfer_to_the_set_bytes_per_second() {
    timeout(BOUND, async {
        let (target, _) = echo().await;
        let p = proxy_to(target).await;
        let mut s = TcpStream::connect(p.listen).await.expect("connect");
        round_trip(&mut s, b"warm").await;
        let (code, _) = control(
            &p,
            "POST",
            "/faults",
            r#"{"dir":"up","rate":{"bytesPerSec":100000,"queueBytes":16384}}"#,
        )
        .await;
        assert_eq!(code, 200);
        let data = vec![7u8; 150_000];
        let (got, t) = round_trip(&mut s, &data).await;
        assert_eq!(got.len(), data.len());
        // 150 kB at 100 kB/s: 1.5 s (the first packet goes at once).
        assert!(
            t >= Duration::from_millis(1400) && t < Duration::from_millis(4000),
            "{t:?}"
        );
        p.proxy
            .apply(&cmd(serde_json::json!({"dir": "up", "rate": null})))
            .expect("apply");
        let (_, fast) = round_trip(&mut s, &data).await;
        assert!(fast < Duration::from_millis(500), "uncapped {fast:?}");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn the_rate_queue_bounds_what_the_proxy_holds() {
    timeout(BOUND, async {
        // A target that never reads: what the proxy takes from the sender is its queue plus
        // the small socket buffers, not the megabytes Linux would autotune to.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = l.local_addr().expect("addr");
        let hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let p = start(Options {
            listen_port: 0,
            control_port: 0,
            target,
            sockbuf: Some(8192),
            seed: SEED,
        })
        .await
        .expect("proxy");
        p.proxy
            .apply(&cmd(
                serde_json::json!({"rate": {"bytesPerSec": 10_000_000, "queueBytes": 16384}}),
            ))
            .expect("apply");
        let mut s = TcpStream::connect(p.listen).await.expect("connect");
        let chunk = vec![1u8; 4096];
        let mut sent = 0usize;
        while timeout(Duration::from_millis(300), s.write_all(&chunk))
            .await
            .is_ok()
        {
            sent += chunk.len();
            assert!(sent < 8 * 1024 * 1024, "the sender was never blocked");
        }
        let c = p.proxy.counters.json();
        let held = c["up"]["bytesIn"].as_u64().expect("n") - c["up"]["bytes"].as_u64().expect("n");
        assert!(
            held <= 16384 + faultproxy::CHUNK as u64,
            "the proxy holds {held} bytes (sent {sent})"
        );
        assert!(sent > 0);
        hold.abort();
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn reset_closes_every_connection_with_rst_on_both_sides() {
    timeout(BOUND, async {
        let (target, _) = echo().await;
        let p = proxy_to(target).await;
        let mut a = TcpStream::connect(p.listen).await.expect("connect");
        let mut b = TcpStream::connect(p.listen).await.expect("connect");
        round_trip(&mut a, b"a").await;
        round_trip(&mut b, b"b").await;
        let (code, body) = control(&p, "POST", "/reset", "").await;
        assert_eq!((code, body["reset"].as_u64()), (200, Some(2)));
        for s in [&mut a, &mut b] {
            let mut buf = [0u8; 1];
            let e = s
                .read(&mut buf)
                .await
                .expect_err("a reset, not a clean close");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        }
        let t0 = Instant::now();
        while p.proxy.counters.json()["connectionsOpen"] != 0 {
            assert!(t0.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let c = p.proxy.counters.json();
        assert_eq!(c["connectionsReset"], 2);
        // The proxy still serves new connections.
        let mut n = TcpStream::connect(p.listen).await.expect("connect");
        assert_eq!(round_trip(&mut n, b"again").await.0, b"again");
    })
    .await
    .expect("bounded");
}

#[tokio::test]
async fn a_bad_control_command_gets_a_clear_error_naming_the_field() {
    timeout(BOUND, async {
        let (target, _) = echo().await;
        let p = proxy_to(target).await;
        let (code, body) = control(&p, "POST", "/faults", r#"{"delay":{"p":2,"ms":1}}"#).await;
        assert_eq!(code, 400);
        assert!(
            body["error"].as_str().expect("error").contains("delay.p"),
            "{body}"
        );
        let (code, body) = control(&p, "POST", "/faults", r#"{"dir":"sideways"}"#).await;
        assert_eq!(code, 400);
        assert!(
            body["error"].as_str().expect("error").contains("dir"),
            "{body}"
        );
        let (code, body) = control(&p, "POST", "/faults", r#"{"blackhol":true}"#).await;
        assert_eq!(code, 400);
        assert!(
            body["error"].as_str().expect("error").contains("blackhol"),
            "{body}"
        );
        let (code, _) = control(&p, "GET", "/nowhere", "").await;
        assert_eq!(code, 404);
        // Nothing was changed by the refused commands.
        assert_eq!(p.proxy.faults(Dir::Up), faultproxy::Faults::default());
        let (code, c) = control(&p, "GET", "/counters", "").await;
        assert_eq!(code, 200);
        assert_eq!(c["connections"], 0);
    })
    .await
    .expect("bounded");
}
