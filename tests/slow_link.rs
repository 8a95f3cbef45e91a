//! A 1 Mbit/s link carrying 1 MiB reads (issue #18): control frames stay within 250 ms of the
//! link's idle RTT at the 99th percentile (main before the urgent lane and pieces: 6 s). The
//! issue's 50 ms is not met on these VMs (release: heartbeat p99 51-56 ms, cancel p99 up to
//! 144 ms; README "Slow links"), so that is a figure, not an assertion.
//!
//! Two nodes in this process; `home` dials `office` through a throttling TCP forwarder (below:
//! a 125 000 B/s pacer each way holding at most one 1500-byte segment, with 2 KiB socket
//! buffers (4 KiB once the kernel doubled them), i.e. a shallow bottleneck queue). `home` reads a 1000 KiB file from `office` over
//! and over (two reads in flight), so `office → home` is saturated. Measured under that load:
//!
//! - heartbeat RTTs (100 ms heartbeat) on both ends, from the links' RTT percentiles (late
//!   pongs included): `home`'s pongs and `office`'s pings both cross the loaded direction;
//! - cancel latency: `office` holds calls open on `home` (a test service that waits for its
//!   cancel signal) and drops them one by one; the `cancel` frame crosses the loaded direction,
//!   and the time is taken from the drop to the moment `home`'s call sees the cancel.
//!
//! Data throughput is asserted too (at least 80 % of the link), so the bound is not met by
//! starving the reads.

mod loopback_common;
mod tools_support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::error::{Error, ErrorCode, Result};
use clawmatrix::rpc::service::BoxFuture;
use clawmatrix::rpc::{CallCtx, CallOptions, Service, StreamItem};
use loopback_common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tools_support::TempDir;

/// The link's rate each way: 1 Mbit/s.
const RATE_BYTES_PER_S: f64 = 125_000.0;
/// What the forwarder holds in hand (one segment: 12 ms at the rate).
const SEGMENT: usize = 1500;
/// The forwarder's socket buffers (the kernel doubles it). It is part of the loaded RTT: with
/// 4096 the loaded heartbeat p50 was ~52 ms instead of ~24; 1024 stalled the link.
const SOCKET_BUFFER: u32 = 2048;
/// The regression guard's bound (see its test).
const GUARD_MS: u64 = 250;
const HEARTBEAT_MS: u64 = 100;
/// Cancel probes, dropped one every [`PROBE_EVERY`] once the link is loaded.
const PROBES: usize = 30;
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// The read's size: under the default 1 MiB `maxOutputBytes`.
const READ_BYTES: usize = 1000 * 1024;
const TEST_BOUND: Duration = Duration::from_secs(120);

/// Accept on `listener`, connect each connection to `upstream`, and pace both directions.
async fn throttle(listener: TcpListener, upstream: u16) {
    while let Ok((down, _)) = listener.accept().await {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(SOCKET_BUFFER).expect("rcvbuf");
        sock.set_send_buffer_size(SOCKET_BUFFER).expect("sndbuf");
        let Ok(up) = sock.connect(([127, 0, 0, 1], upstream).into()).await else {
            continue;
        };
        let _ = up.set_nodelay(true);
        let _ = down.set_nodelay(true);
        let (dr, dw) = down.into_split();
        let (ur, uw) = up.into_split();
        tokio::spawn(pace(dr, uw));
        tokio::spawn(pace(ur, dw));
    }
}

/// Forward `from` to `to` at [`RATE_BYTES_PER_S`]: each segment read leaves when the previous
/// ones have been "serialized" at the rate (a token bucket one segment deep: a late timer is
/// caught up, idle time is not banked beyond one segment).
async fn pace(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let mut buf = vec![0u8; SEGMENT];
    let depth = Duration::from_secs_f64(SEGMENT as f64 / RATE_BYTES_PER_S);
    let mut next = tokio::time::Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        next = next.max(tokio::time::Instant::now() - depth)
            + Duration::from_secs_f64(n as f64 / RATE_BYTES_PER_S);
        tokio::time::sleep_until(next).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A listener whose accepted sockets get [`SOCKET_BUFFER`].
fn small_buffer_listener() -> TcpListener {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(SOCKET_BUFFER).expect("rcvbuf");
    sock.set_send_buffer_size(SOCKET_BUFFER).expect("sndbuf");
    sock.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    sock.listen(16).expect("listen")
}

/// `slow.hold`: tells the test it started (payload = the probe's index), sends one chunk (a
/// `cancel` goes urgent only for a call that was answered: then it cannot overtake the call
/// itself), then waits for its cancel signal and records when it came.
struct Hold {
    started: AtomicUsize,
    cancelled_at: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl Service for Hold {
    fn call(&self, mut ctx: CallCtx, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>>> {
        let at = Arc::clone(&self.cancelled_at);
        self.started.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let i: usize = std::str::from_utf8(&payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(usize::MAX);
            ctx.sink.send(b"held".to_vec()).await?;
            while !*ctx.cancel.borrow_and_update() {
                if ctx.cancel.changed().await.is_err() {
                    break;
                }
            }
            let now = Instant::now();
            if let Some(slot) = at.lock().unwrap().get_mut(i) {
                *slot = Some(now);
            }
            Err(Error::new(ErrorCode::Cancelled, "held until cancelled"))
        })
    }
}

fn link_rtt(n: &Node, peer: &str) -> Option<clawmatrix::mesh::link::RttPercentiles> {
    n.mesh_snapshot()?
        .peers
        .into_iter()
        .find(|p| p.node == peer)?
        .link_rtt
}

/// Nearest-rank percentile of `v` (sorted); `None` counts as infinitely late.
fn percentile(v: &[Option<u64>], p: usize) -> Option<u64> {
    let mut v = v.to_vec();
    v.sort_by_key(|x| x.unwrap_or(u64::MAX));
    v[(v.len() * p).div_ceil(100).max(1) - 1]
}

async fn read_forever(home: Arc<Node>, stop: Arc<AtomicBool>, bytes: Arc<AtomicU64>) {
    let req = json!({"tool": "read", "args": {"path": "big.txt"}, "rawResult": true});
    while !stop.load(Ordering::SeqCst) {
        let opts = CallOptions {
            deadline: Duration::from_secs(60),
        };
        let mut s = home
            .call_stream("office", "tool.call", req.to_string().into_bytes(), opts)
            .await
            .expect("read opens");
        while let Some(item) = s.next().await {
            match item.expect("the read streams") {
                StreamItem::Chunk(c) => bytes.fetch_add(c.len() as u64, Ordering::SeqCst),
                StreamItem::End(e) => bytes.fetch_add(e.len() as u64, Ordering::SeqCst),
            };
        }
    }
}

/// The regression guard, in any build on a busy machine: control frames within 250 ms of the
/// idle RTT (before the urgent lane, the unsent limit and pieces: heartbeat p99 6 s, cancel
/// p99 16.7 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_on_a_1_mbit_link_loaded_with_1_mib_reads_stay_within_250_ms_of_idle() {
    slow_link(GUARD_MS).await;
}

/// Load the link, measure, print the figures, and assert control frames within `bound_ms` of
/// the idle RTT at the 99th percentile (and the reads at 80 % of the link or more).
async fn slow_link(bound_ms: u64) {
    tokio::time::timeout(TEST_BOUND, async {
        let root = TempDir::new("slow-link");
        std::fs::write(
            root.join("big.txt"),
            "0123456789abcde\n".repeat(READ_BYTES / 16),
        )
        .unwrap();
        let fast = json!({"heartbeatIntervalMs": HEARTBEAT_MS, "heartbeatMisses": 100});
        let op = reserve_port();
        let mut extra = fast.clone();
        extra["toolProxy"] = json!({"enabled": true, "allow": ["read"],
                                    "root": root.path().to_string_lossy()});
        let office = Arc::new(start(config("office", Some(op), &[], extra)));
        let listener = small_buffer_listener();
        let tp = listener.local_addr().unwrap().port();
        let forwarder = tokio::spawn(throttle(listener, op));
        let cancelled_at = Arc::new(Mutex::new(vec![None; PROBES]));
        let hold = Arc::new(Hold {
            started: AtomicUsize::new(0),
            cancelled_at: Arc::clone(&cancelled_at),
        });
        let home = {
            let n = Node::new(config("home", None, &[("office", tp)], fast));
            n.register_service("slow.hold", hold.clone());
            n.start(&handover(n.config(), StartOptions::default()))
                .expect("start");
            Arc::new(n)
        };
        wait_for("the throttled link", Duration::from_secs(15), || {
            is_direct(&home, "office") && is_direct(&office, "home")
        })
        .await;

        // Idle RTT: a dozen heartbeats on the idle link.
        wait_for("idle RTT samples", Duration::from_secs(15), || {
            [link_rtt(&home, "office"), link_rtt(&office, "home")]
                .iter()
                .all(|r| r.is_some_and(|r| r.samples >= 12))
        })
        .await;
        let idle_home = link_rtt(&home, "office").unwrap();
        let idle_office = link_rtt(&office, "home").unwrap();

        // Cancel probes: held open before the load starts.
        let mut probes = Vec::new();
        for i in 0..PROBES {
            let mut s = office
                .call_stream(
                    "home",
                    "slow.hold",
                    i.to_string().into_bytes(),
                    CallOptions {
                        deadline: Duration::from_secs(300),
                    },
                )
                .await
                .expect("probe opens");
            match s.next().await {
                Some(Ok(StreamItem::Chunk(c))) => assert_eq!(c, b"held"),
                other => panic!("probe {i}: expected its chunk, got {other:?}"),
            }
            probes.push(s);
        }
        wait_for("every probe held", Duration::from_secs(10), || {
            hold.started.load(Ordering::SeqCst) == PROBES
        })
        .await;

        // The load: two 1000 KiB reads in flight, office → home.
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(read_forever(home.clone(), stop.clone(), bytes.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (t_load, b_load) = (Instant::now(), bytes.load(Ordering::SeqCst));

        // Cancels, one every PROBE_EVERY, each crossing the loaded direction.
        let mut dropped_at = Vec::new();
        for s in probes {
            dropped_at.push(Instant::now());
            drop(s);
            tokio::time::sleep(PROBE_EVERY).await;
        }
        // Heartbeats under load for longer than the RTT window (32 pings).
        let window = Duration::from_millis(HEARTBEAT_MS * 130);
        tokio::time::sleep(window.saturating_sub(t_load.elapsed())).await;
        let loaded_home = link_rtt(&home, "office").unwrap();
        let loaded_office = link_rtt(&office, "home").unwrap();
        let goodput =
            (bytes.load(Ordering::SeqCst) - b_load) as f64 / t_load.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);

        // Cancels still on their way get until 20 s after the last drop.
        let last = *dropped_at.last().unwrap();
        while cancelled_at.lock().unwrap().iter().any(|c| c.is_none())
            && last.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cancel_ms: Vec<Option<u64>> = cancelled_at
            .lock()
            .unwrap()
            .iter()
            .zip(&dropped_at)
            .map(|(c, d)| c.map(|c| c.saturating_duration_since(*d).as_millis() as u64))
            .collect();
        let (c50, c99) = (percentile(&cancel_ms, 50), percentile(&cancel_ms, 99));

        eprintln!(
            "slow link: goodput {:.0} KB/s of {:.0}; heartbeat RTT ms idle p50/p99 home {}/{} \
             office {}/{}; loaded p50/p99 home {}/{} office {}/{} ({} samples each); cancel ms \
             p50 {c50:?} p99 {c99:?} (lost {}) all {cancel_ms:?}",
            goodput / 1000.0,
            RATE_BYTES_PER_S / 1000.0,
            idle_home.p50,
            idle_home.p99,
            idle_office.p50,
            idle_office.p99,
            loaded_home.p50,
            loaded_home.p99,
            loaded_office.p50,
            loaded_office.p99,
            loaded_home.samples.min(loaded_office.samples),
            cancel_ms.iter().filter(|c| c.is_none()).count(),
        );
        for r in readers {
            r.abort();
        }
        forwarder.abort();

        assert!(
            goodput >= 0.8 * RATE_BYTES_PER_S,
            "reads used {goodput:.0} B/s of a {RATE_BYTES_PER_S} B/s link"
        );
        assert!(
            loaded_home.p99 <= idle_home.p50 + bound_ms,
            "home's heartbeat p99 {} ms > idle p50 {} + {bound_ms}",
            loaded_home.p99,
            idle_home.p50
        );
        assert!(
            loaded_office.p99 <= idle_office.p50 + bound_ms,
            "office's heartbeat p99 {} ms > idle p50 {} + {bound_ms}",
            loaded_office.p99,
            idle_office.p50
        );
        let idle = idle_home.p50.max(idle_office.p50);
        assert!(
            c99.is_some_and(|c| c <= idle + bound_ms),
            "cancel p99 {c99:?} ms > idle RTT {idle} + {bound_ms}"
        );
    })
    .await
    .expect("bounded");
}
