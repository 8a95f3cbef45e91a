//! The floor: the same round trips and pipelined throughput over a bare tokio-tungstenite
//! WebSocket (no mesh: no handshake, header, actor, routing), measured in the same run.
//!
//! Same shape as the clawmatrix `direct` topology: two tokio runtimes with one worker thread
//! each (the client A and the echo server B), one loopback connection, 1 KiB binary messages.
//! What remains is what every WebSocket stack on this machine pays: the kernel TCP path and the
//! thread wake-ups between A's and B's workers. `clawmatrix − floor` is what the mesh adds.
//!
//! The relay floor adds a third runtime R between them (like the `relay1` topology) that
//! forwards every message each way and does nothing else: `floor_relay1 − floor` is what one
//! hop costs any tokio WebSocket relay here (an extra thread wake, a read and a write per
//! message each way, one more loopback traversal), the bound for `relay1 − direct`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::measure::{RttPlan, TputPlan};
use super::report::{count_window, cpu_time_us, emit, percentile, r1, r2};
use super::BenchResult;

/// Bound on every step (connect, a measurement); far above any expected time.
const STEP_LIMIT: Duration = Duration::from_secs(60);

fn runtime(name: &str) -> BenchResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("floor: runtime: {e}"))
}

/// B: accept one connection and echo every binary message.
async fn serve(listener: tokio::net::TcpListener) {
    let Ok((sock, _)) = listener.accept().await else {
        return;
    };
    let _ = sock.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(sock).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    while let Some(Ok(m)) = rx.next().await {
        if m.is_binary() && tx.send(m).await.is_err() {
            return;
        }
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16) -> BenchResult<Client> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}"))
        .await
        .map_err(|e| format!("floor: connect: {e}"))?;
    if let tokio_tungstenite::MaybeTlsStream::Plain(s) = ws.get_ref() {
        let _ = s.set_nodelay(true);
    }
    Ok(ws)
}

/// R: accept one connection (from A), dial B, forward every message each way.
async fn relay(listener: tokio::net::TcpListener, b_port: u16) {
    let Ok((sock, _)) = listener.accept().await else {
        return;
    };
    let _ = sock.set_nodelay(true);
    let Ok(from_a) = tokio_tungstenite::accept_async(sock).await else {
        return;
    };
    let Ok(to_b) = connect(b_port).await else {
        return;
    };
    let (a_tx, a_rx) = from_a.split();
    let (b_tx, b_rx) = to_b.split();
    tokio::join!(forward(a_rx, b_tx), forward(b_rx, a_tx));
}

/// Send every binary message `rx` yields to `tx`, one at a time, until either side ends.
async fn forward<R, T>(mut rx: R, mut tx: T)
where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    T: futures_util::Sink<Message> + Unpin,
{
    while let Some(Ok(m)) = rx.next().await {
        if m.is_binary() && tx.send(m).await.is_err() {
            return;
        }
    }
}

/// One floor chain: A's runtime, a listening echo B, and optionally a relay R in between (each
/// its own one-worker runtime). `port` is what A dials. Dropping it stops them all.
struct Pair {
    a: tokio::runtime::Runtime,
    _others: Vec<tokio::runtime::Runtime>,
    port: u16,
}

async fn bind() -> BenchResult<(tokio::net::TcpListener, u16)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("floor: bind: {e}"))?;
    let port = l
        .local_addr()
        .map_err(|e| format!("floor: addr: {e}"))?
        .port();
    Ok((l, port))
}

fn pair() -> BenchResult<Pair> {
    chain(false)
}

fn chain(with_relay: bool) -> BenchResult<Pair> {
    let b = runtime("floor-b")?;
    let (listener, b_port) = b.block_on(bind())?;
    b.spawn(serve(listener));
    let mut others = vec![b];
    let mut port = b_port;
    if with_relay {
        let r = runtime("floor-r")?;
        let (listener, r_port) = r.block_on(bind())?;
        r.spawn(relay(listener, b_port));
        others.push(r);
        port = r_port;
    }
    Ok(Pair {
        a: runtime("floor-a")?,
        _others: others,
        port,
    })
}

fn on_a<T: Send + 'static>(
    p: &Pair,
    fut: impl std::future::Future<Output = BenchResult<T>> + Send + 'static,
) -> BenchResult<T> {
    let task = p.a.spawn(fut);
    p.a.block_on(async {
        tokio::time::timeout(STEP_LIMIT, task)
            .await
            .map_err(|_| "floor: measurement exceeded its limit".to_string())?
            .map_err(|e| format!("floor: task failed: {e}"))?
    })
}

/// Sequential round trips; emits `{"bench":"rtt","topology":"floor",...}`, or
/// `"floor_relay1"` through a forwarding relay.
pub fn rtt(plan: &RttPlan, with_relay: bool) -> BenchResult<()> {
    let p = chain(with_relay)?;
    let (topology, relays) = if with_relay {
        ("floor_relay1", 1)
    } else {
        ("floor", 0)
    };
    let (port, len) = (p.port, plan.payload);
    let (warmup, max_samples, max_time) = (plan.warmup, plan.max_samples, plan.max_time);
    let cpu0 = cpu_time_us("self");
    let (mut samples, elapsed) = on_a(&p, async move {
        let mut ws = connect(port).await?;
        let body = vec![7u8; len];
        let one = async |ws: &mut Client| -> BenchResult<()> {
            ws.send(Message::binary(body.clone()))
                .await
                .map_err(|e| format!("floor: send: {e}"))?;
            match ws.next().await {
                Some(Ok(m)) if m.len() == len => Ok(()),
                other => Err(format!("floor: bad echo: {other:?}")),
            }
        };
        for _ in 0..warmup {
            one(&mut ws).await?;
        }
        let mut samples = Vec::with_capacity(max_samples);
        let start = Instant::now();
        while samples.len() < max_samples && start.elapsed() < max_time {
            let t0 = Instant::now();
            one(&mut ws).await?;
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok((samples, start.elapsed()))
    })?;
    let cpu = cpu_time_us("self").zip(cpu0).map(|(a, b)| a - b);
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let (p50, p99) = (percentile(&samples, 50.0), percentile(&samples, 99.0));
    let cpu_per_req = cpu.map(|c| r1(c / (n + warmup) as f64));
    emit(json!({
        "bench": "rtt", "topology": topology, "relays": relays, "payload_bytes": len, "n": n,
        "errors": 0, "p50_us": r1(p50), "p99_us": r1(p99), "secs": r2(elapsed.as_secs_f64()),
        "cpu_us_per_req": cpu_per_req,
    }));
    eprintln!(
        "rtt {topology:12} {len} B: p50 {p50:7.1} µs  p99 {p99:7.1} µs  (bare tokio-tungstenite, n={n}, cpu {:.1} µs/req)",
        cpu_per_req.unwrap_or(f64::NAN)
    );
    Ok(())
}

/// `inflight` messages kept in flight on the one connection for a fixed time; emits
/// `{"bench":"throughput","topology":"floor",...}` (completed echoes/s = frames/s one way).
pub fn throughput(plan: &TputPlan) -> BenchResult<()> {
    let p = pair()?;
    let (port, len, inflight) = (p.port, plan.payload, plan.inflight);
    let (warmup, time) = (plan.warmup, plan.time);
    let done = Arc::new(AtomicU64::new(0));
    let (counted, cpu, secs) = on_a(&p, {
        let done = done.clone();
        async move {
            let ws = connect(port).await?;
            let (mut tx, mut rx) = ws.split();
            // Credits: the reader returns one per echo, the writer spends one per message.
            let (credit_tx, mut credit_rx) = tokio::sync::mpsc::channel::<()>(inflight);
            let stop_at = Instant::now() + warmup + time + Duration::from_millis(50);
            let writer = tokio::spawn(async move {
                let body = vec![7u8; len];
                for _ in 0..inflight {
                    if tx.feed(Message::binary(body.clone())).await.is_err() {
                        return;
                    }
                }
                let _ = tx.flush().await;
                while Instant::now() < stop_at {
                    let Some(()) = credit_rx.recv().await else {
                        return;
                    };
                    if tx.feed(Message::binary(body.clone())).await.is_err() {
                        return;
                    }
                    // Coalesce what the reader has already credited, like a link's burst.
                    while let Ok(()) = credit_rx.try_recv() {
                        if tx.feed(Message::binary(body.clone())).await.is_err() {
                            return;
                        }
                    }
                    if tx.flush().await.is_err() {
                        return;
                    }
                }
            });
            let seen = done.clone();
            let reader = tokio::spawn(async move {
                let done = seen;
                while let Some(Ok(m)) = rx.next().await {
                    if m.len() == len {
                        done.fetch_add(1, Ordering::Relaxed);
                        let _ = credit_tx.try_send(());
                    }
                }
            });
            let w = count_window(&done, warmup, time).await;
            writer.abort();
            reader.abort();
            Ok((w.count, w.cpu_us, w.secs))
        }
    })?;
    if counted == 0 {
        return Err(format!("floor throughput {len} B: no echo completed"));
    }
    let per_s = counted as f64 / secs;
    let cpu_per_req = cpu.map(|c| r1(c / counted as f64));
    emit(json!({
        "bench": "throughput", "topology": "floor", "payload_bytes": len, "inflight": inflight,
        "secs": r2(secs), "requests": counted, "errors": 0, "frames_per_s": per_s.round(),
        "mb_per_s": r1(per_s * len as f64 / 1e6), "cpu_us_per_req": cpu_per_req,
    }));
    eprintln!(
        "throughput floor {len} B x{inflight} in flight: {per_s:.0} frames/s one way (bare tokio-tungstenite, cpu {:.1} µs/req)",
        cpu_per_req.unwrap_or(f64::NAN)
    );
    Ok(())
}
