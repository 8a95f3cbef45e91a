//! `cargo bench --bench mesh`: latency, throughput and idle-link memory of real clawmatrix nodes
//! on loopback, driven through the public Rust API (`clawmatrix::app::Node`).
//!
//! What is measured and how is written down in `bench/README.md`; `scripts/bench.mjs` runs this
//! binary next to the Node `ws` baseline (`bench/ws-baseline.mjs`) and prints the comparison.
//!
//! Output: one JSON object per line on stdout (the machine-readable results), a readable
//! summary on stderr. Every loop is bounded in count and in time; a failure to build a topology
//! or to run a measurement exits non-zero.
//!
//! # Layout
//! - `topology`: building in-process nodes (direct, 1 relay, 2 relays) and waiting for routes.
//! - `measure`: sequential round trips and pipelined throughput over `Node::request`.
//! - `floor`: the same RTT and 1 KiB throughput over a bare tokio-tungstenite pair (the floor),
//!   and the RTT through a bare forwarding relay (`floor_relay1`, the floor of one hop).
//! - `idle`: memory per idle authenticated link, against a listening node in a child process
//!   (`--serve-node PORT` re-runs this binary as that child) and a raw handshake dialer.
//! - `report`: JSON lines, percentiles, `/proc` readers (CPU time, RSS, threads).
//!
//! Arguments (after `cargo bench --bench mesh --`): `--quick` (short runs, for smoke tests),
//! `--idle-links N` (default 200), `--only rtt,tput,idle` (`tput-small`: only the 1 KiB throughput run). Cargo's own `--bench` is ignored.

// A crate root looks for modules next to itself; the bench's modules live in bench/mesh/.
#[path = "mesh/floor.rs"]
mod floor;
#[path = "mesh/idle.rs"]
mod idle;
#[path = "mesh/measure.rs"]
mod measure;
#[path = "mesh/report.rs"]
mod report;
#[path = "mesh/topology.rs"]
mod topology;

use std::process::ExitCode;
use std::time::Duration;

use measure::{RttPlan, TputPlan};
use topology::Topology;

/// A bench step failed; the message says which and why.
type BenchResult<T> = Result<T, String>;

/// Payload of the latency benchmark and of the small-frame throughput run: 1 KiB.
const SMALL: usize = 1024;
/// Payload of the large-frame throughput run: 1 MiB.
const LARGE: usize = 1024 * 1024;

/// Run parameters. Defaults keep the whole binary under ~45 s on 2 cores.
struct Options {
    rtt: RttPlan,
    tput_small: TputPlan,
    tput_large: TputPlan,
    idle_links: usize,
    run_rtt: bool,
    run_tput: bool,
    /// `--only tput-small`: the 1 KiB throughput run alone (for profiling).
    small_only: bool,
    run_idle: bool,
}

impl Options {
    fn parse(args: &[String]) -> BenchResult<Options> {
        let quick = args.iter().any(|a| a == "--quick");
        let scale = |full: u64, short: u64| if quick { short } else { full };
        let mut o = Options {
            rtt: RttPlan {
                payload: SMALL,
                warmup: scale(500, 50) as usize,
                max_samples: scale(5_000, 300) as usize,
                max_time: Duration::from_millis(scale(4_000, 500)),
            },
            // 64 in flight keeps the link busy without hitting any in-flight cap (1024).
            tput_small: TputPlan {
                payload: SMALL,
                inflight: 64,
                warmup: Duration::from_millis(scale(500, 100)),
                time: Duration::from_millis(scale(3_000, 500)),
            },
            // 8 x 1 MiB in flight each way is 16 MiB buffered at most: enough to keep the
            // pipe full, small enough not to measure the allocator.
            tput_large: TputPlan {
                payload: LARGE,
                inflight: 8,
                warmup: Duration::from_millis(scale(500, 100)),
                time: Duration::from_millis(scale(3_000, 500)),
            },
            idle_links: 200,
            run_rtt: true,
            run_tput: true,
            small_only: false,
            run_idle: true,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--idle-links" => {
                    let v = it.next().ok_or("--idle-links needs a number")?;
                    o.idle_links = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=2_000).contains(n))
                        .ok_or(format!("--idle-links: {v:?} is not in 1..=2000"))?;
                }
                "--only" => {
                    let v = it.next().ok_or("--only needs rtt,tput,idle")?;
                    o.run_rtt = v.split(',').any(|s| s == "rtt");
                    o.small_only = v.split(',').any(|s| s == "tput-small");
                    o.run_tput = o.small_only || v.split(',').any(|s| s == "tput");
                    o.run_idle = v.split(',').any(|s| s == "idle");
                }
                // `cargo bench` passes `--bench`; filters and other flags are not ours.
                _ => {}
            }
        }
        Ok(o)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-node") {
        // Child mode for the idle-link memory benchmark.
        let port = args.get(i + 1).and_then(|p| p.parse::<u16>().ok());
        return match port.ok_or_else(|| "--serve-node needs a port".to_string()) {
            Ok(p) => exit(idle::serve_node(p)),
            Err(e) => exit(Err(e)),
        };
    }
    exit(Options::parse(&args).and_then(|o| run(&o)))
}

fn exit(r: BenchResult<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench mesh: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Options) -> BenchResult<()> {
    report::machine();
    // The floor first, on an idle process: a bare tokio-tungstenite pair, same shapes.
    if o.run_rtt {
        floor::rtt(&o.rtt, false)?;
        floor::rtt(&o.rtt, true)?;
    }
    if o.run_tput {
        floor::throughput(&o.tput_small)?;
    }
    if o.run_rtt || o.run_tput {
        for topo in [Topology::Direct, Topology::Relay1, Topology::Relay2] {
            let wants_tput = o.run_tput && topo == Topology::Direct;
            if !o.run_rtt && !wants_tput {
                continue;
            }
            let mesh = topology::build(topo)?;
            if o.run_rtt {
                measure::rtt(&mesh, &o.rtt)?;
            }
            if wants_tput {
                measure::throughput(&mesh, &o.tput_small)?;
                if !o.small_only {
                    measure::throughput(&mesh, &o.tput_large)?;
                }
            }
            mesh.report_counters();
            mesh.stop();
        }
    }
    if o.run_idle {
        idle::measure(o.idle_links)?;
    }
    Ok(())
}
