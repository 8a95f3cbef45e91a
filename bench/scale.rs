//! `cargo bench --bench scale`: a mesh of N real nodes at rest on loopback (issue #22, "quiet
//! at rest"), for N = 25, 50, 100.
//!
//! Topology (`scale/topo.rs`): three hubs that listen and link to each other; leaves that only
//! dial, even ones to two hubs, odd ones to one, spread over the hubs. Nodes run a few per OS
//! process (this binary re-run with `--scale-child`, 5 nodes each by default, the 3 hubs
//! together in one), each node with its own one-worker tokio runtime and the default
//! heartbeat and anti-entropy intervals.
//!
//! Per N: start every leaf at once, wait until every node sees all N − 1 others reachable
//! (convergence, capped), settle, then measure a rest window with no calls: bytes and frames
//! each node's core sent, the bytes each process's TCP sockets sent (`TCP_INFO`, a check that
//! the core's counter matches the wire), CPU time and RSS per process, and `status()` latency
//! (every node polled once a second during the window). What each figure means:
//! `bench/README.md`, section "Scale at rest".
//!
//! Output: one JSON object per line on stdout (`{"bench":"scale",...}` per N, then
//! `{"bench":"scale_table","markdown":...}`), the markdown table on stderr, and both written to
//! `bench/results/scale-<unix time>.{json,md}` and `scale-latest.{json,md}`.
//!
//! Arguments (after `cargo bench --bench scale --`): `--n 25,50,100`, `--quick` (20 s rest,
//! 2 s settle), `--rest S` (or `CLAWMATRIX_BENCH_REST_S`; default 60), `--settle S` (default
//! 5), `--converge-cap S` (default 120), `--per-proc K` (nodes per leaf process, default 5),
//! `--out DIR`; `--table-from FILE` prints the table of a saved `scale-*.json` again.

#[path = "scale/child.rs"]
mod child;
#[path = "scale/procs.rs"]
mod procs;
// The shared `/proc` readers and JSON-line output of the mesh bench.
#[allow(dead_code)]
#[path = "mesh/report.rs"]
mod report;
#[path = "scale/summary.rs"]
mod summary;
#[path = "scale/topo.rs"]
mod topo;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use procs::Proc;
use report::emit;

/// A bench step failed; the message says which and why.
type BenchResult<T> = Result<T, String>;

/// Status poll period while waiting for convergence.
const CONVERGE_POLL: Duration = Duration::from_millis(250);
/// Bound on any one command's reply (a sample of 5 nodes takes milliseconds).
const REPLY_BOUND: Duration = Duration::from_secs(30);
/// Bound on a child's startup (hubs start their nodes before answering).
const READY_BOUND: Duration = Duration::from_secs(60);
/// Bound on a child's stop and exit.
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// Run parameters.
pub struct Options {
    pub sizes: Vec<usize>,
    pub rest: Duration,
    pub settle: Duration,
    pub converge_cap: Duration,
    pub per_proc: usize,
    pub out_dir: std::path::PathBuf,
    pub quick: bool,
}

impl Options {
    fn parse(args: &[String]) -> BenchResult<Options> {
        let quick = args.iter().any(|a| a == "--quick");
        let env_rest = std::env::var("CLAWMATRIX_BENCH_REST_S")
            .ok()
            .map(|v| secs(&v, "CLAWMATRIX_BENCH_REST_S"))
            .transpose()?;
        let mut o = Options {
            sizes: vec![25, 50, 100],
            rest: env_rest.unwrap_or(Duration::from_secs(if quick { 20 } else { 60 })),
            settle: Duration::from_secs(if quick { 2 } else { 5 }),
            converge_cap: Duration::from_secs(120),
            per_proc: 5,
            out_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results"),
            quick,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().ok_or(format!("{a} needs a value"));
            match a.as_str() {
                "--n" => {
                    let v = val()?;
                    o.sizes = v
                        .split(',')
                        .map(|s| {
                            s.trim()
                                .parse::<usize>()
                                .ok()
                                .filter(|n| (4..=400).contains(n))
                        })
                        .collect::<Option<_>>()
                        .ok_or(format!("--n: {v:?} is not a list of sizes in 4..=400"))?;
                }
                "--rest" => o.rest = secs(val()?, "--rest")?,
                "--settle" => o.settle = secs(val()?, "--settle")?,
                "--converge-cap" => o.converge_cap = secs(val()?, "--converge-cap")?,
                "--per-proc" => {
                    let v = val()?;
                    o.per_proc = v
                        .parse()
                        .ok()
                        .filter(|k| (1..=50).contains(k))
                        .ok_or(format!("--per-proc: {v:?} is not in 1..=50"))?;
                }
                "--out" => o.out_dir = val()?.into(),
                // `cargo bench` passes `--bench`; other flags are not ours.
                _ => {}
            }
        }
        Ok(o)
    }
}

fn secs(v: &str, what: &str) -> BenchResult<Duration> {
    v.parse::<u64>()
        .ok()
        .filter(|s| (1..=3_600).contains(s))
        .map(Duration::from_secs)
        .ok_or(format!(
            "{what}: {v:?} is not a number of seconds in 1..=3600"
        ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = if args.iter().any(|a| a == "--scale-child") {
        child_args(&args).and_then(child::run)
    } else if let Some(i) = args.iter().position(|a| a == "--table-from") {
        table_from(args.get(i + 1).map(String::as_str))
    } else {
        Options::parse(&args).and_then(|o| run(&o))
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench scale: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--table-from FILE`: print the markdown table of a saved `scale-*.json` again.
fn table_from(path: Option<&str>) -> BenchResult<()> {
    let path = path.ok_or("--table-from needs a scale-*.json file")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    let rs = v["results"]
        .as_array()
        .ok_or(format!("{path}: no results"))?;
    println!("{}", summary::markdown(rs));
    Ok(())
}

fn child_args(args: &[String]) -> BenchResult<child::ChildArgs> {
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .ok_or(format!("scale child: {flag} missing"))
    };
    let num = |flag: &str| -> BenchResult<usize> {
        after(flag)?
            .parse()
            .map_err(|e| format!("scale child: {flag}: {e}"))
    };
    let hub_ports = match after("--hub-ports") {
        Ok(v) => v
            .split(',')
            .map(|p| p.parse::<u16>().map_err(|e| format!("--hub-ports: {e}")))
            .collect::<BenchResult<_>>()?,
        Err(_) => Vec::new(),
    };
    Ok(child::ChildArgs {
        hub: after("--scale-child")? == "hub",
        n: num("--n")?,
        first: num("--first")?,
        count: num("--count")?,
        hub_ports,
    })
}

fn run(o: &Options) -> BenchResult<()> {
    report::machine();
    let started = Instant::now();
    eprintln!(
        "scale: N = {:?}, rest {} s, settle {} s, convergence cap {} s, {} nodes per leaf process",
        o.sizes,
        o.rest.as_secs(),
        o.settle.as_secs(),
        o.converge_cap.as_secs(),
        o.per_proc
    );
    let mut results = Vec::new();
    for &n in &o.sizes {
        let r = measure(n, o)?;
        emit(r.clone());
        results.push(r);
    }
    let md = summary::markdown(&results);
    eprintln!("\n{md}");
    emit(json!({"bench": "scale_table", "markdown": md}));
    summary::write_files(&o.out_dir, &results, &md)?;
    eprintln!(
        "scale: done in {} s; wrote {}",
        started.elapsed().as_secs(),
        o.out_dir.join("scale-latest.{json,md}").display()
    );
    Ok(())
}

/// One mesh of `n` nodes: build, converge, rest, measure, stop. Returns the result object.
fn measure(n: usize, o: &Options) -> BenchResult<Value> {
    let load_start = loadavg();
    let t_build = Instant::now();
    let hub = Proc::spawn(true, n, 0, topo::HUBS, &[])?;
    let ready = hub.recv(READY_BOUND)?;
    let hub_ports: Vec<u16> = ready["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_u64())
                .map(|p| p as u16)
                .collect()
        })
        .unwrap_or_default();
    if hub_ports.len() != topo::HUBS {
        return Err(format!("hub child reported ports {}", ready["ports"]));
    }
    let mut leaves = Vec::new();
    let mut first = topo::HUBS;
    while first < n {
        let count = o.per_proc.min(n - first);
        leaves.push(Proc::spawn(false, n, first, count, &hub_ports)?);
        first += count;
    }
    for p in &leaves {
        p.recv(READY_BOUND)?;
    }
    // Convergence is timed from here: every leaf process is up, its nodes not yet started.
    let t0 = Instant::now();
    procs::all(&mut leaves, "start", READY_BOUND)?;
    let start_s = t0.elapsed().as_secs_f64();
    let mut all_procs: Vec<Proc> = std::iter::once(hub).chain(leaves).collect();
    let (converged, convergence_s, converged_nodes) = converge(&mut all_procs, n, o, t0)?;
    eprintln!(
        "scale N={n}: {} processes, nodes started in {start_s:.1} s, {} ({converged_nodes}/{n} nodes see all others)",
        all_procs.len(),
        if converged {
            format!("converged in {convergence_s:.1} s")
        } else {
            format!("NOT converged within {} s", o.converge_cap.as_secs())
        }
    );
    std::thread::sleep(o.settle);
    let before = procs::all(&mut all_procs, "rest-begin", REPLY_BOUND)?;
    std::thread::sleep(o.rest);
    let after = procs::all(&mut all_procs, "rest-end", REPLY_BOUND)?;
    let load_end = loadavg();
    // Leaves first, so hubs see clean closes; then the hubs.
    let _ = procs::all(&mut all_procs[1..], "stop", EXIT_BOUND);
    let _ = procs::all(&mut all_procs[..1], "stop", EXIT_BOUND);
    for p in &mut all_procs {
        p.finish(EXIT_BOUND);
    }
    let shape: Vec<(bool, usize)> = all_procs.iter().map(|p| (p.hub, p.count)).collect();
    let mut r = summary::rest_figures(n, &shape, &before, &after)?;
    if let Some(obj) = r.as_object_mut() {
        obj.insert("converged".into(), json!(converged));
        obj.insert(
            "convergence_s".into(),
            if converged {
                json!(report::r2(convergence_s))
            } else {
                Value::Null
            },
        );
        obj.insert("converged_nodes".into(), json!(converged_nodes));
        obj.insert("converge_cap_s".into(), json!(o.converge_cap.as_secs()));
        obj.insert("start_s".into(), json!(report::r2(start_s)));
        obj.insert("processes".into(), json!(all_procs.len()));
        obj.insert("nodes_per_leaf_process".into(), json!(o.per_proc));
        obj.insert("quick".into(), json!(o.quick));
        obj.insert("load_start".into(), json!(load_start));
        obj.insert("load_end".into(), json!(load_end));
        obj.insert(
            "wall_s".into(),
            json!(report::r2(t_build.elapsed().as_secs_f64())),
        );
    }
    summary::print_one(&r);
    Ok(r)
}

/// Poll every child until all `n` nodes see `n − 1` others, or the cap.
/// Returns (converged, seconds since `t0` (the leaves were told to start), nodes converged).
fn converge(
    procs: &mut [Proc],
    n: usize,
    o: &Options,
    t0: Instant,
) -> BenchResult<(bool, f64, usize)> {
    let mut done = 0;
    while t0.elapsed() < o.converge_cap {
        let replies = procs::all(procs, "reach", REPLY_BOUND)?;
        done = replies
            .iter()
            .filter_map(|r| r["converged"].as_u64())
            .sum::<u64>() as usize;
        if done == n {
            return Ok((true, t0.elapsed().as_secs_f64(), done));
        }
        std::thread::sleep(CONVERGE_POLL);
    }
    Ok((false, t0.elapsed().as_secs_f64(), done))
}

/// The 1-minute load average (`/proc/loadavg`).
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
