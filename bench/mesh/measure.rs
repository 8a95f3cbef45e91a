//! Round-trip latency and pipelined throughput over `Node::request(B, "mesh.echo", payload)`.
//!
//! Both loops run as tasks on A's own runtime (via [`on_runtime`]), as a request from the
//! binding would: no extra runtime or thread hop between the caller and the node.
//!
//! - RTT: one request at a time. The sample is the time from calling `request` to its reply
//!   (payload out, same payload back), so it includes the caller's hop into the node actor, the
//!   header encode/decode at each node and every relay, and the reply's way back.
//! - Throughput: `inflight` tasks each loop `request` back to back for a fixed time. One
//!   completed request = one payload-sized frame A→B plus one B→A, so "frames/s" counts
//!   completed requests per second (= frames per second in ONE direction) and "MB/s" is
//!   completed requests × payload bytes / s / 10^6 (ONE direction; the link carries the same
//!   again the other way).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawmatrix::app::Node;
use serde_json::json;

use super::report::{count_window, cpu_time_us, emit, percentile, r1, r2};
use super::topology::Mesh;
use super::BenchResult;

/// Timeout of one request. Far above any sample; a request that needs it is counted as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Hard bound on one measurement, whatever the plan says (a stuck request must not hang us).
const HARD_LIMIT: Duration = Duration::from_secs(60);

/// A sequential round-trip run.
pub struct RttPlan {
    pub payload: usize,
    pub warmup: usize,
    /// Stop after this many samples ...
    pub max_samples: usize,
    /// ... or after this long, whichever comes first.
    pub max_time: Duration,
}

/// A pipelined throughput run.
pub struct TputPlan {
    pub payload: usize,
    pub inflight: usize,
    /// Run this long before counting.
    pub warmup: Duration,
    /// Count completions for this long.
    pub time: Duration,
}

/// Run `fut` as a task on `node`'s runtime and wait for it from this (non-runtime) thread.
pub fn on_runtime<T: Send + 'static>(
    node: &Node,
    fut: impl Future<Output = T> + Send + 'static,
) -> BenchResult<T> {
    let handle = node
        .runtime_handle()
        .ok_or("the node is not running (no runtime handle)")?;
    let task = handle.spawn(fut);
    handle
        .block_on(async {
            tokio::time::timeout(HARD_LIMIT, task)
                .await
                .map_err(|_| format!("measurement exceeded {} s", HARD_LIMIT.as_secs()))
        })?
        .map_err(|e| format!("measurement task failed: {e}"))
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Sequential `mesh.echo` round trips; emits `{"bench":"rtt",...}`.
pub fn rtt(mesh: &Mesh, plan: &RttPlan) -> BenchResult<()> {
    let node = mesh.client.clone();
    let dst = mesh.dst.clone();
    let body = payload(plan.payload);
    let (warmup, max_samples, max_time) = (plan.warmup, plan.max_samples, plan.max_time);
    let cpu_before = cpu_time_us("self");
    let (mut samples, errors, elapsed) = on_runtime(&mesh.client, async move {
        let mut errors = 0u64;
        for _ in 0..warmup {
            if node
                .request(&dst, "mesh.echo", body.clone(), REQUEST_TIMEOUT)
                .await
                .is_err()
            {
                errors += 1;
            }
        }
        let mut samples = Vec::with_capacity(max_samples);
        let start = Instant::now();
        while samples.len() < max_samples && start.elapsed() < max_time {
            // The clone is the caller's cost of handing the node an owned payload; it is
            // inside the sample because a real caller pays it too (~50 ns at 1 KiB).
            let t0 = Instant::now();
            let r = node
                .request(&dst, "mesh.echo", body.clone(), REQUEST_TIMEOUT)
                .await;
            let us = t0.elapsed().as_secs_f64() * 1e6;
            match r {
                Ok(reply) if reply.len() == body.len() => samples.push(us),
                _ => errors += 1,
            }
        }
        (samples, errors, start.elapsed())
    })?;
    let cpu = cpu_time_us("self").zip(cpu_before).map(|(a, b)| a - b);
    if samples.is_empty() {
        return Err(format!(
            "rtt {}: no successful request ({errors} errors)",
            mesh.topology.name()
        ));
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let mean = samples.iter().sum::<f64>() / n as f64;
    let (p50, p99) = (percentile(&samples, 50.0), percentile(&samples, 99.0));
    // CPU per request over warm-up and samples together (both did the same work).
    let cpu_per_req = cpu.map(|c| r1(c / (n + warmup) as f64));
    emit(json!({
        "bench": "rtt", "topology": mesh.topology.name(), "relays": mesh.topology.relays(),
        "payload_bytes": plan.payload, "n": n, "errors": errors,
        "p50_us": r1(p50), "p99_us": r1(p99), "mean_us": r1(mean),
        "min_us": r1(samples[0]), "max_us": r1(samples[n - 1]),
        "secs": r2(elapsed.as_secs_f64()),
        "cpu_us_per_req": cpu_per_req,
    }));
    eprintln!(
        "rtt {:7} {} B: p50 {:7.1} µs  p99 {:7.1} µs  mean {:7.1} µs  (n={n}, errors={errors}, cpu {:.1} µs/req)",
        mesh.topology.name(),
        plan.payload,
        p50,
        p99,
        mean,
        cpu_per_req.unwrap_or(f64::NAN)
    );
    Ok(())
}

/// `inflight` concurrent request loops for a fixed time; emits `{"bench":"throughput",...}`.
pub fn throughput(mesh: &Mesh, plan: &TputPlan) -> BenchResult<()> {
    let node = mesh.client.clone();
    let dst = mesh.dst.clone();
    let body = Arc::new(payload(plan.payload));
    let (inflight, warmup, time) = (plan.inflight, plan.warmup, plan.time);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let (counted, cpu, secs, errs) = on_runtime(&mesh.client, {
        let (done, errors) = (done.clone(), errors.clone());
        async move {
            let start = Instant::now();
            let stop_at = start + warmup + time;
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..inflight {
                let (node, dst, body) = (node.clone(), dst.clone(), body.clone());
                let (done, errors) = (done.clone(), errors.clone());
                workers.spawn(async move {
                    while Instant::now() < stop_at {
                        // The clone copies the payload once per request (the API takes an owned
                        // Vec); at 1 MiB that is a memcpy the caller pays in real use too.
                        match node
                            .request(&dst, "mesh.echo", body.as_ref().clone(), REQUEST_TIMEOUT)
                            .await
                        {
                            Ok(r) if r.len() == body.len() => done.fetch_add(1, Ordering::Relaxed),
                            _ => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
            let w = count_window(&done, warmup, time).await;
            // Let the workers finish their last request (bounded by REQUEST_TIMEOUT).
            while workers.join_next().await.is_some() {}
            (w.count, w.cpu_us, w.secs, errors.load(Ordering::Relaxed))
        }
    })?;
    if counted == 0 {
        return Err(format!(
            "throughput {} B: no request completed ({errs} errors)",
            plan.payload
        ));
    }
    let per_s = counted as f64 / secs;
    let mb_s = per_s * plan.payload as f64 / 1e6;
    let cpu_per_req = cpu.map(|c| r1(c / counted as f64));
    emit(json!({
        "bench": "throughput", "topology": mesh.topology.name(), "payload_bytes": plan.payload,
        "inflight": inflight, "secs": r2(secs), "requests": counted,
        "errors": errs, "frames_per_s": per_s.round(), "mb_per_s": r1(mb_s),
        "cpu_us_per_req": cpu_per_req,
    }));
    eprintln!(
        "throughput {} B x{inflight} in flight: {:.0} frames/s one way, {:.1} MB/s one way (errors={errs}, cpu {:.1} µs/req)",
        plan.payload,
        per_s,
        mb_s,
        cpu_per_req.unwrap_or(f64::NAN)
    );
    Ok(())
}
