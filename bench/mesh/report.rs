//! Output and `/proc` readers: one JSON object per line on stdout (what `scripts/bench.mjs`
//! parses), human lines on stderr, percentiles, process CPU time, RSS and thread counts.

use serde_json::Value;

/// The implementation name every result line carries (the baseline writes `"node-ws"`).
pub const IMPL: &str = "clawmatrix";

/// Linux reports `/proc/<pid>/stat` times in USER_HZ ticks, which is 100 on every Linux ABI
/// (it is fixed for user space, independent of the kernel's CONFIG_HZ).
const USER_HZ: f64 = 100.0;

/// Print one result line on stdout, tagged with [`IMPL`].
pub fn emit(mut v: Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert("impl".into(), IMPL.into());
    }
    println!("{v}");
}

/// Nearest-rank percentile of an ascending slice (`p` in 0..=100); 0 for an empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// User + system CPU time of a process in microseconds (`None` if `/proc` is unreadable).
pub fn cpu_time_us(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name (which may contain spaces): state is the
    // 3rd field overall, utime the 14th and stime the 15th.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ * 1e6)
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS` in KiB, `Threads`, ...).
pub fn status_field(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Print the machine line: CPU model and count, as `/proc/cpuinfo` and std see them.
pub fn machine() {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    emit(serde_json::json!({"bench": "machine", "cpu_model": model, "cpus": cpus}));
    eprintln!("machine: {cpus} CPUs, {model}");
}

/// Round to 0.1 for readable JSON.
pub fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Round to 0.01 (durations in seconds).
pub fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// What a counting window saw: completions, CPU time of this process (µs), wall seconds.
pub struct Window {
    pub count: u64,
    pub cpu_us: Option<f64>,
    pub secs: f64,
}

/// Sleep through `warmup`, then count what `done` gains during `time`, with this process's CPU.
pub async fn count_window(
    done: &std::sync::atomic::AtomicU64,
    warmup: std::time::Duration,
    time: std::time::Duration,
) -> Window {
    use std::sync::atomic::Ordering;
    tokio::time::sleep(warmup).await;
    let (d0, c0, t0) = (
        done.load(Ordering::Relaxed),
        cpu_time_us("self"),
        std::time::Instant::now(),
    );
    tokio::time::sleep(time).await;
    Window {
        count: done.load(Ordering::Relaxed) - d0,
        cpu_us: cpu_time_us("self").zip(c0).map(|(a, b)| a - b),
        secs: t0.elapsed().as_secs_f64(),
    }
}
