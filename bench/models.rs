//! `cargo bench --bench models`: what the model proxy adds to a request, against calling the
//! same upstream directly, in one run.
//!
//! Setup (all on 127.0.0.1, real [`Node`]s, each with its own tokio runtime as in a gateway): an
//! in-process OpenAI-compatible upstream (hyper) that answers `stream: true` requests with `n`
//! SSE chunks; a client (hyper, one keep-alive connection, one request at a time). Topologies:
//!
//! ```text
//! direct:  client ──▶ upstream
//! 1 hop:   client ──▶ home proxy ══▶ office ──▶ upstream          (home dials office)
//! 2 hops:  client ──▶ home proxy ══▶ cloud ══▶ office ──▶ upstream (both dial cloud)
//! ```
//!
//! Office's upstream is resolved once through a fake host (as the shim would answer) and cached;
//! the bench counts host calls during the measured runs: that is the JS work per chunk.
//!
//! Output: JSON lines on stdout (`{"bench":"proxy_latency"|"proxy_cpu"|"proxy_host_calls", ...}`)
//! and a readable summary on stderr. Arguments: `--quick`.

#[path = "mesh/report.rs"]
#[allow(dead_code)] // shared with the mesh bench, which uses all of it
mod report;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmatrix::app::{Node, StartOptions};
use clawmatrix::config::Config;
use clawmatrix::host::{HostKind, HostReply};
use clawmatrix::status::PeerState;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use report::{emit, percentile, r1, r2};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

type BenchResult<T> = Result<T, String>;

const SECRET: &str = "clawmatrix-bench-secret-0123456789";
/// Chunks per request in the latency runs (a short answer).
const LATENCY_CHUNKS: u64 = 4;
/// Chunks per request in the CPU runs (a long answer).
const CPU_CHUNKS: u64 = 2_000;

struct Plan {
    warmup: usize,
    samples: usize,
    max_time: Duration,
    cpu_requests: usize,
    paced_chunks: u64,
}

fn free_port() -> BenchResult<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut seen = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        if !seen.contains(&p) {
            seen.push(p);
            return Ok(p);
        }
    }
    Err("no fresh port".into())
}

/// One SSE chunk like a real completion delta (~150 bytes).
fn sse_chunk(i: u64) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench-model\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token-{i} \"}},\"finish_reason\":null}}]}}\n\n"
    ))
}

async fn upstream_handle(
    req: Request<Incoming>,
) -> Result<
    Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>,
    std::convert::Infallible,
> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = v["n"].as_u64().unwrap_or(LATENCY_CHUNKS).min(100_000);
    let gap = Duration::from_millis(v["gap_ms"].as_u64().unwrap_or(0).min(1_000));
    let frames = (0..n)
        .map(|i| Ok::<_, std::convert::Infallible>(Frame::data(sse_chunk(i))))
        .chain(std::iter::once(Ok(Frame::data(Bytes::from_static(
            b"data: [DONE]\n\n",
        )))));
    let stream = futures_util::stream::iter(frames);
    // Paced: one chunk per `gap` (a model emitting tokens one at a time), so every chunk
    // travels alone; otherwise everything at once (a fast upstream).
    let stream = futures_util::StreamExt::then(stream, move |f| async move {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        f
    });
    Ok(Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed())))
}

async fn start_upstream() -> BenchResult<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(upstream_handle))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A byte pipe on a runtime of its own (one worker, like a node): every connection accepted on
/// the returned address is forwarded to `target` as it is. Two chained pipes are the floor of
/// the mesh path: the same thread hops (home's and office's workers) with no mesh work at all.
fn start_pipe(
    name: &str,
    target: SocketAddr,
) -> BenchResult<(tokio::runtime::Runtime, SocketAddr)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("{name}: runtime: {e}"))?;
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("{name}: bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    rt.spawn(async move {
        let Ok(l) = TcpListener::from_std(l) else {
            return;
        };
        while let Ok((mut a, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = (a.set_nodelay(true), b.set_nodelay(true));
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    Ok((rt, addr))
}

fn config(
    id: &str,
    listen: Option<u16>,
    peers: &[(&str, u16)],
    models: Value,
) -> BenchResult<Config> {
    let listen_port = match listen {
        Some(p) => p,
        None => free_port()?,
    };
    let v = json!({
        "nodeId": id, "secret": SECRET, "listen": listen.is_some(), "listenHost": "127.0.0.1",
        "listenPort": listen_port, "proxyPort": free_port()?,
        "peers": peers.iter().map(|(n, p)| json!({"nodeId": n, "url": format!("ws://127.0.0.1:{p}")})).collect::<Vec<_>>(),
        "models": models,
    });
    Config::from_json(&v)
        .map(|c| c.config)
        .map_err(|e| format!("config {id}: {e}"))
}

fn start(c: Config) -> BenchResult<Arc<Node>> {
    let n = Arc::new(Node::new(c));
    n.start(&StartOptions::default())
        .map_err(|e| format!("start: {}", e.message))?;
    Ok(n)
}

/// Answer office's host requests like the shim: the upstream's base URL, no key.
fn fake_host(node: &Node, upstream: SocketAddr, calls: Arc<AtomicU64>) -> BenchResult<()> {
    let bridge = node.host();
    let rt = node.runtime_handle().ok_or("office not running")?;
    rt.spawn(async move {
        while let Some(req) = bridge.next_request().await {
            if req.kind == HostKind::Cancel {
                continue;
            }
            calls.fetch_add(1, Ordering::Relaxed);
            let reply = match req.kind {
                HostKind::ModelUpstream => json!({"providerConfig": {"baseUrl": format!("http://{upstream}/v1"), "api": "openai-completions"}, "apiKey": null}),
                _ => json!({"changed": false}),
            };
            bridge.reply(req.id, Ok(HostReply::Result(reply)));
        }
    });
    Ok(())
}

struct Topo {
    name: &'static str,
    target: SocketAddr,
    path: &'static str,
    nodes: Vec<Arc<Node>>,
    host_calls: Arc<AtomicU64>,
}

async fn build(name: &'static str, upstream: SocketAddr) -> BenchResult<Topo> {
    let models = json!([{"id": "bench-model", "provider": "bench"}]);
    let calls = Arc::new(AtomicU64::new(0));
    let (nodes, home) = match name {
        "1 hop" => {
            let op = free_port()?;
            let office = start(config("office", Some(op), &[], models)?)?;
            let home = start(config("home", None, &[("office", op)], json!([]))?)?;
            (vec![office, home.clone()], home)
        }
        "2 hops" => {
            let cp = free_port()?;
            let cloud = start(config("cloud", Some(cp), &[], json!([]))?)?;
            let office = start(config("office", None, &[("cloud", cp)], models)?)?;
            let home = start(config("home", None, &[("cloud", cp)], json!([]))?)?;
            (vec![cloud, office, home.clone()], home)
        }
        other => return Err(format!("unknown topology {other}")),
    };
    let office = nodes
        .iter()
        .find(|n| n.config().node_id == "office")
        .ok_or("no office")?;
    fake_host(office, upstream, calls.clone())?;
    // Home's host only receives providers.sync; answer it too so nothing waits.
    fake_host(&home, upstream, Arc::new(AtomicU64::new(0)))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = home.status().peers.iter().any(|p| {
            p.node_id == "office" && p.state != PeerState::Unreachable && !p.models.is_empty()
        });
        if up {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{name}: home never saw office's model"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let target: SocketAddr = format!("127.0.0.1:{}", home.config().proxy_port)
        .parse()
        .map_err(|e| format!("{e}"))?;
    Ok(Topo {
        name,
        target,
        path: "/v1/chat/completions",
        nodes,
        host_calls: calls,
    })
}

struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    token: String,
}

async fn client(addr: SocketAddr, token: String) -> BenchResult<Client> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Client { sender, token })
}

/// Body bytes of a complete `n`-chunk answer (every run checks it: a short body would look
/// cheap and fast).
fn expected_bytes(n: u64) -> u64 {
    (0..n).map(|i| sse_chunk(i).len() as u64).sum::<u64>() + b"data: [DONE]\n\n".len() as u64
}

/// One streaming request of `n` chunks whose body must be `want` bytes long; returns (time to
/// first body byte, total time, body bytes).
async fn one(
    c: &mut Client,
    path: &str,
    n: u64,
    gap_ms: u64,
    want: u64,
) -> BenchResult<(Duration, Duration, u64)> {
    let body = json!({"model": "bench-model", "stream": true, "n": n, "gap_ms": gap_ms, "messages": [{"role": "user", "content": "bench"}]}).to_string();
    let req = Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", c.token))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    c.sender.ready().await.map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let resp = c
        .sender
        .send_request(req)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        let b = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(format!("status != 200: {}", String::from_utf8_lossy(&b)));
    }
    let mut body = resp.into_body();
    let mut first = None;
    let mut bytes = 0u64;
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| e.to_string())?;
        if let Ok(d) = f.into_data() {
            first.get_or_insert_with(|| t0.elapsed());
            bytes += d.len() as u64;
        }
    }
    let total = t0.elapsed();
    if bytes != want {
        return Err(format!("{path}: body of {bytes} bytes, expected {want}"));
    }
    Ok((first.unwrap_or_default(), total, bytes))
}

struct Lat {
    ttfb: Vec<f64>,
    total: Vec<f64>,
}

async fn latency(c: &mut Client, path: &str, plan: &Plan) -> BenchResult<Lat> {
    let want = expected_bytes(LATENCY_CHUNKS);
    for _ in 0..plan.warmup {
        one(c, path, LATENCY_CHUNKS, 0, want).await?;
    }
    let mut l = Lat {
        ttfb: Vec::new(),
        total: Vec::new(),
    };
    let t0 = Instant::now();
    while l.ttfb.len() < plan.samples && t0.elapsed() < plan.max_time {
        let (a, b, _) = one(c, path, LATENCY_CHUNKS, 0, want).await?;
        l.ttfb.push(a.as_secs_f64() * 1e6);
        l.total.push(b.as_secs_f64() * 1e6);
    }
    l.ttfb.sort_by(f64::total_cmp);
    l.total.sort_by(f64::total_cmp);
    Ok(l)
}

/// Chunks of the paced CPU run and the upstream's gap between them (tokio's timer resolution).
const PACED_CHUNKS: u64 = 1_000;
const PACED_GAP_MS: u64 = 1;

/// This process's CPU time in µs from `CLOCK_PROCESS_CPUTIME_ID`, for both CPU runs (ns
/// resolution: the paced run is ~1 s of mostly idle time, below what 10 ms `/proc` ticks
/// resolve).
fn process_cpu_us() -> BenchResult<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Err("clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed".into());
    }
    Ok(ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3)
}

/// CPU time of this whole process per chunk over one paced stream: every chunk arrives alone,
/// so each one is a mesh frame per hop and a wake-up of every node on the way.
async fn cpu_paced(c: &mut Client, path: &str, chunks: u64) -> BenchResult<f64> {
    let want = expected_bytes(chunks);
    let cpu0 = process_cpu_us()?;
    one(c, path, chunks, PACED_GAP_MS, want).await?;
    Ok((process_cpu_us()? - cpu0) / (chunks + 1) as f64)
}

/// CPU time of this whole process per chunk over `requests` long streams.
async fn cpu(c: &mut Client, path: &str, requests: usize) -> BenchResult<(f64, u64, f64)> {
    let want = expected_bytes(CPU_CHUNKS);
    one(c, path, CPU_CHUNKS, 0, want).await?;
    let cpu0 = process_cpu_us()?;
    let t0 = Instant::now();
    for _ in 0..requests {
        one(c, path, CPU_CHUNKS, 0, want).await?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = process_cpu_us()?;
    let chunks = CPU_CHUNKS * requests as u64;
    Ok(((cpu1 - cpu0) / chunks as f64, chunks, wall))
}

async fn run(quick: bool) -> BenchResult<()> {
    let plan = Plan {
        warmup: if quick { 20 } else { 200 },
        samples: if quick { 200 } else { 3_000 },
        max_time: Duration::from_millis(if quick { 500 } else { 4_000 }),
        cpu_requests: if quick { 3 } else { 30 },
        paced_chunks: if quick { 200 } else { PACED_CHUNKS },
    };
    report::machine();
    let upstream = start_upstream().await?;
    let token = clawmatrix::proxy::token::derive(SECRET, "home");

    let mut c = client(upstream, String::new()).await?;
    let direct = latency(&mut c, "/v1/chat/completions", &plan).await?;
    let (direct_cpu, chunks, _) = cpu(&mut c, "/v1/chat/completions", plan.cpu_requests).await?;
    let direct_paced = cpu_paced(&mut c, "/v1/chat/completions", plan.paced_chunks).await?;
    emit_latency("direct", &direct);
    emit_paced("direct", direct_paced, None, plan.paced_chunks);
    emit(
        json!({"bench": "proxy_cpu", "topology": "direct", "cpu_us_per_chunk": r2(direct_cpu), "chunks": chunks}),
    );
    eprintln!(
        "direct: ttfb p50 {:.0} µs, total p50 {:.0} µs, CPU {:.2} µs/chunk",
        percentile(&direct.ttfb, 50.0),
        percentile(&direct.total, 50.0),
        direct_cpu
    );

    // The floor: the same requests through two chained byte pipes (home's and office's thread
    // hops without the mesh). Their runtimes are shut down in the background: dropping a
    // runtime inside this async run would block it.
    {
        let (office_rt, office) = start_pipe("floor-office", upstream)?;
        let (home_rt, home) = start_pipe("floor-home", office)?;
        let mut c = client(home, String::new()).await?;
        let lat = latency(&mut c, "/v1/chat/completions", &plan).await?;
        let paced = cpu_paced(&mut c, "/v1/chat/completions", plan.paced_chunks).await?;
        drop(c);
        office_rt.shutdown_background();
        home_rt.shutdown_background();
        emit_added("floor", &lat, &direct);
        emit_paced("floor", paced, Some(direct_paced), plan.paced_chunks);
        eprintln!(
            "floor (two byte pipes, no mesh): ttfb p50 +{:.0} µs, p99 +{:.0} µs; paced CPU {paced:.2} µs/chunk (+{:.2})",
            added(&lat.ttfb, &direct.ttfb, 50.0),
            added(&lat.ttfb, &direct.ttfb, 99.0),
            paced - direct_paced
        );
    }

    for name in ["1 hop", "2 hops"] {
        let topo = build(name, upstream).await?;
        let mut c = client(topo.target, token.clone()).await?;
        let lat = latency(&mut c, topo.path, &plan).await?;
        let calls_before = topo.host_calls.load(Ordering::Relaxed);
        let frames_before = frames_out(&topo.nodes).await;
        let (cpu_per_chunk, chunks, wall) = cpu(&mut c, topo.path, plan.cpu_requests).await?;
        let host_calls = topo.host_calls.load(Ordering::Relaxed) - calls_before;
        let frames = frames_out(&topo.nodes).await - frames_before;
        let paced = cpu_paced(&mut c, topo.path, plan.paced_chunks).await?;
        emit_paced(topo.name, paced, Some(direct_paced), plan.paced_chunks);
        eprintln!(
            "{name}: paced ({PACED_GAP_MS} ms between chunks, one mesh frame each): CPU {paced:.2} µs/chunk (+{:.2} over direct)",
            paced - direct_paced
        );
        emit_added(topo.name, &lat, &direct);
        emit(json!({
            "bench": "proxy_cpu", "topology": topo.name, "cpu_us_per_chunk": r2(cpu_per_chunk),
            "added_cpu_us_per_chunk": r2(cpu_per_chunk - direct_cpu), "chunks": chunks, "chunks_per_s": r1(chunks as f64 / wall),
            "mesh_frames_per_chunk": r2(frames as f64 / chunks as f64),
        }));
        emit(
            json!({"bench": "proxy_host_calls", "topology": topo.name, "host_calls": host_calls, "chunks": chunks, "per_chunk": host_calls as f64 / chunks as f64}),
        );
        eprintln!(
            "{name}: ttfb p50 {:.0} µs (+{:.0}), p99 {:.0} µs (+{:.0}); total p50 +{:.0} µs; CPU {:.2} µs/chunk (+{:.2}); host calls {host_calls} for {chunks} chunks; {:.3} mesh frames/chunk",
            percentile(&lat.ttfb, 50.0), added(&lat.ttfb, &direct.ttfb, 50.0),
            percentile(&lat.ttfb, 99.0), added(&lat.ttfb, &direct.ttfb, 99.0),
            added(&lat.total, &direct.total, 50.0), cpu_per_chunk, cpu_per_chunk - direct_cpu,
            frames as f64 / chunks as f64
        );
        for n in topo.nodes {
            n.stop();
        }
    }
    Ok(())
}

/// `a`'s percentile `p` minus `b`'s (a difference of percentiles).
fn added(a: &[f64], b: &[f64], p: f64) -> f64 {
    percentile(a, p) - percentile(b, p)
}

/// The latency line of `topology` and what it adds over `direct`.
fn emit_added(topology: &str, l: &Lat, direct: &Lat) {
    emit_latency(topology, l);
    emit(json!({
        "bench": "proxy_added", "topology": topology,
        "ttfb_p50_us": r1(added(&l.ttfb, &direct.ttfb, 50.0)), "ttfb_p99_us": r1(added(&l.ttfb, &direct.ttfb, 99.0)),
        "total_p50_us": r1(added(&l.total, &direct.total, 50.0)), "total_p99_us": r1(added(&l.total, &direct.total, 99.0)),
    }));
}

/// The paced CPU line of `topology`; "added" over `direct_paced`, when given.
fn emit_paced(topology: &str, paced: f64, direct_paced: Option<f64>, chunks: u64) {
    emit(json!({
        "bench": "proxy_cpu_paced", "topology": topology, "cpu_us_per_chunk": r2(paced),
        "added_cpu_us_per_chunk": direct_paced.map(|d| r2(paced - d)), "chunks": chunks, "gap_ms": PACED_GAP_MS,
    }));
}

/// Mesh frames sent by all `nodes` (every link crossing counts once; the CPU runs' own frames
/// dominate: heartbeats and gossip are a few per second). Waits out the snapshot throttle.
async fn frames_out(nodes: &[Arc<Node>]) -> u64 {
    tokio::time::sleep(Duration::from_millis(150)).await;
    nodes.iter().map(|n| n.status().mesh.frames_out).sum()
}

fn emit_latency(topology: &str, l: &Lat) {
    emit(json!({
        "bench": "proxy_latency", "topology": topology, "samples": l.ttfb.len(),
        "ttfb_p50_us": r1(percentile(&l.ttfb, 50.0)), "ttfb_p99_us": r1(percentile(&l.ttfb, 99.0)),
        "total_p50_us": r1(percentile(&l.total, 50.0)), "total_p99_us": r1(percentile(&l.total, 99.0)),
    }));
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The whole run is a task on the bench runtime's worker, next to the client's connection
    // task and the upstream: run from `block_on` (the main thread), every request and every
    // body frame crossed between the main thread and the worker, which inflated the direct
    // baseline (a futex wake per SSE chunk) and so hid part of what the proxy adds.
    let task =
        rt.spawn(async move { tokio::time::timeout(Duration::from_secs(240), run(quick)).await });
    match rt.block_on(task) {
        Ok(Ok(Ok(()))) => ExitCode::SUCCESS,
        Ok(Ok(Err(e))) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
        Ok(Err(_)) => {
            eprintln!("bench failed: over 240 s");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
