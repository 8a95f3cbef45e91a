//! From the children's samples at the start and the end of the rest window to the figures of
//! one N, and from the figures of every N to the markdown table.

use serde_json::{json, Value};

use super::report::{percentile, r1, r2};
use super::{topo, BenchResult};

/// Target from the issue: bytes sent per node per minute at rest, N = 100.
pub const TARGET_NODE_BYTES_MIN: f64 = 64.0 * 1024.0;
/// Target from the issue: bytes sent by one hub per minute at rest, N = 100.
pub const TARGET_HUB_BYTES_MIN: f64 = 1024.0 * 1024.0;

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

fn stat(node: &Value, k: &str) -> f64 {
    node["stats"][k].as_f64().unwrap_or(0.0)
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(0.0, f64::max)
}

/// How many times each node's record got a new version during the rest, as the mesh saw it (the
/// newest version any node holds, at the end minus at the start): the source of gossip at rest.
fn record_bumps(before: &[Value], after: &[Value]) -> Value {
    let newest = |samples: &[Value]| {
        let mut m: std::collections::BTreeMap<String, u64> = Default::default();
        for s in samples {
            for (id, v) in s["versions"].as_object().into_iter().flatten() {
                let e = m.entry(id.clone()).or_insert(0);
                *e = (*e).max(v.as_u64().unwrap_or(0));
            }
        }
        m
    };
    let (a, b) = (newest(before), newest(after));
    let mut per_node: Vec<(String, u64)> = b
        .iter()
        .filter_map(|(id, v)| Some((id.clone(), v.saturating_sub(*a.get(id)?))))
        .filter(|(_, d)| *d > 0)
        .collect();
    per_node.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
    let total: u64 = per_node.iter().map(|(_, d)| d).sum();
    let hubs: u64 = per_node
        .iter()
        .filter(|(id, _)| id.starts_with("hub-"))
        .map(|(_, d)| d)
        .sum();
    json!({
        "total": total, "hubs": hubs, "nodes": per_node.len(),
        "top": per_node.iter().take(10).map(|(id, d)| json!([id, d])).collect::<Vec<_>>(),
    })
}

/// The figures of one mesh at rest. `shape[p]` = (is the hub process, nodes in it);
/// `before[p]` / `after[p]` = that process's `rest-begin` / `rest-end` replies.
pub fn rest_figures(
    n: usize,
    shape: &[(bool, usize)],
    before: &[Value],
    after: &[Value],
) -> BenchResult<Value> {
    let mut node_bytes = Vec::new(); // per node, bytes/min
    let mut hub_bytes = Vec::new();
    let mut leaf_bytes = Vec::new();
    let mut node_frames = Vec::new();
    let (mut frames, mut bytes, mut wire) = (0.0, 0.0, 0.0);
    let mut counters = serde_json::Map::new(); // every numeric core counter, summed deltas
    let (mut leaf_cpu, mut leaf_n, mut hub_cpu) = (0.0, 0usize, 0.0);
    let (mut leaf_rss, mut hub_rss, mut base_rss) = (0.0, 0.0, Vec::new());
    let mut status_us: Vec<f64> = Vec::new();
    let (mut lost_reach, mut links_wrong) = (0usize, Vec::new());
    let mut rest_secs = Vec::new();
    let mut threads = 0.0;
    let mut sockets_changed = 0.0;
    // Connections refused since start (convergence included), summed over nodes by reason.
    let mut refusals = serde_json::Map::new();
    // Mesh-wide bytes sent per second of the rest (each child's series starts at its
    // rest-begin; the parent sends that to all children at once).
    let mut per_sec: Vec<f64> = Vec::new();
    for (p, ((hub, count), (a, b))) in shape.iter().zip(before.iter().zip(after)).enumerate() {
        let secs = num(b, "rest_secs");
        if secs <= 0.0 {
            return Err(format!("process {p}: no rest window"));
        }
        rest_secs.push(secs);
        let per_min = 60.0 / secs;
        let (an, bn) = (
            a["nodes"].as_array().cloned().unwrap_or_default(),
            b["nodes"].as_array().cloned().unwrap_or_default(),
        );
        if an.len() != *count || bn.len() != *count {
            return Err(format!(
                "process {p}: {} / {} nodes sampled, expected {count}",
                an.len(),
                bn.len()
            ));
        }
        for (x, y) in an.iter().zip(&bn) {
            let d = stat(y, "bytes_out") - stat(x, "bytes_out");
            let f = stat(y, "frames_out") - stat(x, "frames_out");
            bytes += d;
            frames += f;
            node_bytes.push(d * per_min);
            node_frames.push(f * per_min);
            if *hub {
                hub_bytes.push(d * per_min)
            } else {
                leaf_bytes.push(d * per_min)
            }
            if let Some(o) = y["stats"].as_object() {
                for (k, v) in o {
                    let dv = v.as_f64().unwrap_or(0.0) - stat(x, k);
                    let e = counters.entry(k.clone()).or_insert(json!(0.0));
                    *e = json!(e.as_f64().unwrap_or(0.0) + dv);
                }
            }
            if let Some(o) = y["refusals"].as_object() {
                for (k, v) in o {
                    let e = refusals.entry(k.clone()).or_insert(json!(0));
                    *e = json!(e.as_u64().unwrap_or(0) + v.as_u64().unwrap_or(0));
                }
            }
            let i = y["i"].as_u64().unwrap_or(0) as usize;
            let want = topo::expected_links(i, n) as u64;
            let got = y["links_up"].as_u64().unwrap_or(0);
            if got != want {
                links_wrong.push(format!(
                    "{}: {got} links up, expected {want}",
                    topo::node_id(i)
                ));
            }
        }
        wire += num(&b["tcp"], "sent");
        sockets_changed += num(&b["tcp"], "opened") + num(&b["tcp"], "closed");
        let cpu_pct = (num(b, "cpu_us") - num(a, "cpu_us")) / (secs * 1e6) * 100.0;
        let rss_mib = (num(b, "rss_kib") - num(b, "rss_before_kib")) / 1024.0;
        base_rss.push(num(b, "rss_before_kib") / 1024.0);
        threads += num(b, "threads");
        if *hub {
            hub_cpu = cpu_pct / *count as f64;
            hub_rss = rss_mib / *count as f64;
        } else {
            leaf_cpu += cpu_pct;
            leaf_rss += rss_mib;
            leaf_n += count;
        }
        let series: Vec<f64> = b["bytes_series"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_f64())
            .collect();
        for (t, w) in series.windows(2).enumerate() {
            if per_sec.len() <= t {
                per_sec.resize(t + 1, 0.0);
            }
            per_sec[t] += w[1] - w[0];
        }
        status_us.extend(
            b["status_us"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_f64()),
        );
        lost_reach += b["min_reach"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m.as_u64().is_some_and(|m| (m as usize) < n - 1))
            .count();
    }
    status_us.sort_by(f64::total_cmp);
    let bumps = record_bumps(before, after);
    // 5 s buckets: the bursts show as peaks; `burst_ratio` = busiest bucket ÷ mean bucket.
    let per_5s: Vec<f64> = per_sec.chunks(5).map(|c| c.iter().sum::<f64>()).collect();
    let full: Vec<f64> = per_sec
        .chunks_exact(5)
        .map(|c| c.iter().sum::<f64>())
        .collect();
    let burst_ratio = (mean(&full) > 0.0).then(|| r1(max(&full) / mean(&full)));
    let rest = mean(&rest_secs);
    let per_min_all = 60.0 / rest;
    for v in counters.values_mut() {
        *v = json!((v.as_f64().unwrap_or(0.0)).round());
    }
    let leaf_div = leaf_n.max(1) as f64;
    Ok(json!({
        "bench": "scale", "n": n, "hubs": topo::HUBS, "leaves": n - topo::HUBS,
        "rest_s": r1(rest),
        "bytes_per_node_min_mean": mean(&node_bytes).round(),
        "bytes_per_node_min_max": max(&node_bytes).round(),
        "bytes_per_leaf_min_mean": mean(&leaf_bytes).round(),
        "bytes_per_leaf_min_max": max(&leaf_bytes).round(),
        "hub_bytes_min_max": max(&hub_bytes).round(),
        "hub_bytes_min_mean": mean(&hub_bytes).round(),
        "frames_per_node_min_mean": r1(mean(&node_frames)),
        "frames_total_min": (frames * per_min_all).round(),
        "frames_total_rest": frames,
        "bytes_total_rest": bytes,
        "wire_bytes_total_rest": wire,
        "tcp_sockets_opened_or_closed_at_rest": sockets_changed,
        "mesh_bytes_per_5s": per_5s.iter().map(|b| b.round()).collect::<Vec<_>>(),
        "burst_ratio_5s": burst_ratio,
        "wire_over_core_bytes": if bytes > 0.0 { json!(r2(wire / bytes)) } else { Value::Null },
        "rss_mib_per_leaf": r1(leaf_rss / leaf_div),
        "rss_mib_per_hub": r1(hub_rss),
        "rss_mib_process_base": r1(mean(&base_rss)),
        "cpu_pct_per_leaf": r2(leaf_cpu / leaf_div),
        "cpu_pct_per_hub": r2(hub_cpu),
        "threads_total": threads,
        "status_samples": status_us.len(),
        "status_p50_ms": r2(percentile(&status_us, 50.0) / 1e3),
        "status_p99_ms": r2(percentile(&status_us, 99.0) / 1e3),
        "status_max_ms": r2(status_us.last().copied().unwrap_or(0.0) / 1e3),
        "nodes_lost_reach_at_rest": lost_reach,
        "links_wrong": links_wrong,
        "core_counters_rest": counters,
        "record_versions_rest": bumps,
        "refusals_since_start": refusals,
        "refused_connections": refusals.values().filter_map(|v| v.as_u64()).sum::<u64>(),
        "meets_node_target": mean(&node_bytes) <= TARGET_NODE_BYTES_MIN,
        "meets_hub_target": max(&hub_bytes) <= TARGET_HUB_BYTES_MIN,
    }))
}

fn kib(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// One human line per N on stderr.
pub fn print_one(r: &Value) {
    eprintln!(
        "scale N={}: at rest per node {} /min (max {}), busiest hub {} /min, {:.0} frames/min in all, wire/core {}, \
         CPU leaf {:.2}% hub {:.2}%, RSS leaf {:.1} MiB hub {:.1} MiB, status p50 {:.2} ms p99 {:.2} ms, \
         {} nodes lost a peer at rest, {} links wrong, refused connections since start {}; \
         new record versions at rest {}; mesh bytes per 5 s: {}",
        r["n"],
        kib(num(r, "bytes_per_node_min_mean")),
        kib(num(r, "bytes_per_node_min_max")),
        kib(num(r, "hub_bytes_min_max")),
        num(r, "frames_total_min"),
        r["wire_over_core_bytes"],
        num(r, "cpu_pct_per_leaf"),
        num(r, "cpu_pct_per_hub"),
        num(r, "rss_mib_per_leaf"),
        num(r, "rss_mib_per_hub"),
        num(r, "status_p50_ms"),
        num(r, "status_p99_ms"),
        r["nodes_lost_reach_at_rest"],
        r["links_wrong"].as_array().map_or(0, |a| a.len()),
        r["refusals_since_start"],
        r["record_versions_rest"],
        r["mesh_bytes_per_5s"]
            .as_array()
            .map(|a| a
                .iter()
                .map(|b| kib(b.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default(),
    );
}

/// Growth with N between the smallest and the largest N: the log-log slope k of value ∝ N^k.
fn growth(rs: &[Value], f: &dyn Fn(&Value) -> Option<f64>) -> String {
    let (Some(a), Some(b)) = (rs.first(), rs.last()) else {
        return "—".into();
    };
    let (na, nb) = (num(a, "n"), num(b, "n"));
    match (f(a), f(b)) {
        (Some(x), Some(y)) if x > 0.0 && y > 0.0 && nb > na => {
            format!("∝ N^{:.1}", (y / x).ln() / (nb / na).ln())
        }
        _ => "—".into(),
    }
}

/// The markdown table: one column per N, a target column, and the growth with N.
pub fn markdown(rs: &[Value]) -> String {
    let load = |k: &str| {
        rs.iter()
            .filter_map(|r| r[k].as_f64())
            .map(|l| format!("{l:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let first = rs.first().cloned().unwrap_or(Value::Null);
    let mut out = vec![
        format!(
            "### Scale at rest (issue #22): 3 hubs + leaves, default heartbeat/anti-entropy, {:.0} s rest{}",
            num(&first, "rest_s"),
            if first["quick"] == json!(true) {
                " (--quick: not for the record)"
            } else {
                ""
            }
        ),
        String::new(),
        format!(
            "Load average (1 min) at the start of each N: {}; at the end: {}. {} nodes per leaf process, the 3 hubs in one. Definitions: bench/README.md.",
            load("load_start"),
            load("load_end"),
            first["nodes_per_leaf_process"]
        ),
        String::new(),
    ];
    let mut head = "| metric |".to_string();
    let mut rule = "|---|".to_string();
    for r in rs {
        head += &format!(" N = {} |", r["n"]);
        rule += "---:|";
    }
    out.push(head + " target (N = 100) | met? | growth with N |");
    out.push(rule + "---|---|---|");
    type Cell = Box<dyn Fn(&Value) -> Option<f64>>;
    let field = |k: &'static str| -> Cell { Box::new(move |r: &Value| r[k].as_f64()) };
    let at100 = rs.iter().find(|r| r["n"].as_u64() == Some(100));
    // `target`: (text, limit at N = 100); `grows`: whether the growth column means anything.
    let mut row = |name: &str,
                   f: Cell,
                   fmt: &dyn Fn(f64) -> String,
                   target: Option<(&str, f64)>,
                   grows: bool| {
        let mut line = format!("| {name} |");
        for r in rs {
            line += &format!(" {} |", f(r).map(fmt).unwrap_or_else(|| "n/a".into()));
        }
        let (t, met) = match target {
            Some((t, limit)) => {
                let met = match at100.and_then(&f) {
                    Some(v) if v <= limit => "yes",
                    Some(_) => "**no**",
                    None => "n/a",
                };
                (t.to_string(), met)
            }
            None => ("—".into(), "—"),
        };
        let g = if grows { growth(rs, &*f) } else { "—".into() };
        line += &format!(" {t} | {met} | {g} |");
        out.push(line);
    };
    let s1 = |v: f64| format!("{v:.1}");
    let s0 = |v: f64| format!("{v:.0}");
    let s2 = |v: f64| format!("{v:.2}");
    let k = |v: f64| kib(v);
    let per_node_min = |k: &'static str| -> Cell {
        Box::new(move |r: &Value| {
            let c = r["core_counters_rest"][k].as_f64()?;
            Some(c / num(r, "n") / (num(r, "rest_s") / 60.0))
        })
    };
    row(
        "convergence: every node sees all N − 1 others (s)",
        field("convergence_s"),
        &s1,
        None,
        true,
    );
    row(
        "connections refused by the hubs since start (handshake or pre-auth)",
        field("refused_connections"),
        &s0,
        None,
        false,
    );
    let node_target = Some(("≤ 64 KiB", TARGET_NODE_BYTES_MIN));
    let hub_target = Some(("≤ 1 MiB", TARGET_HUB_BYTES_MIN));
    row(
        "bytes sent per node per minute at rest, mean",
        field("bytes_per_node_min_mean"),
        &k,
        node_target,
        true,
    );
    row(
        "bytes sent per leaf per minute at rest, max",
        field("bytes_per_leaf_min_max"),
        &k,
        None,
        true,
    );
    row(
        "bytes sent by one hub per minute at rest (busiest hub)",
        field("hub_bytes_min_max"),
        &k,
        hub_target,
        true,
    );
    row(
        "frames sent per node per minute at rest, mean",
        field("frames_per_node_min_mean"),
        &s0,
        None,
        true,
    );
    row(
        "… of which gossip frames",
        per_node_min("gossip_frames_out"),
        &s0,
        None,
        true,
    );
    row(
        "gossip records accepted per node per minute at rest",
        per_node_min("records_accepted"),
        &s0,
        None,
        true,
    );
    row(
        "busiest 5 s of the mesh ÷ mean 5 s (burstiness)",
        field("burst_ratio_5s"),
        &s1,
        None,
        false,
    );
    row(
        "new record versions at rest, all nodes (JSON: per node)",
        Box::new(|r: &Value| r["record_versions_rest"]["total"].as_f64()),
        &s0,
        None,
        false,
    );
    row(
        "nodes that re-published their record at rest",
        Box::new(|r: &Value| r["record_versions_rest"]["nodes"].as_f64()),
        &s0,
        None,
        false,
    );
    row(
        "frames sent by all nodes per minute at rest",
        field("frames_total_min"),
        &s0,
        None,
        true,
    );
    row(
        "TCP bytes sent ÷ core bytes_out (wire check)",
        field("wire_over_core_bytes"),
        &s2,
        None,
        false,
    );
    row(
        "RSS per leaf node (MiB, process growth ÷ nodes)",
        field("rss_mib_per_leaf"),
        &s1,
        None,
        true,
    );
    row(
        "RSS per hub node (MiB, process growth ÷ 3)",
        field("rss_mib_per_hub"),
        &s1,
        None,
        true,
    );
    row(
        "CPU per leaf node at rest (% of a core)",
        field("cpu_pct_per_leaf"),
        &s2,
        None,
        true,
    );
    row(
        "CPU per hub node at rest (% of a core)",
        field("cpu_pct_per_hub"),
        &s2,
        None,
        true,
    );
    row("status() p50 (ms)", field("status_p50_ms"), &s2, None, true);
    row("status() p99 (ms)", field("status_p99_ms"), &s2, None, true);
    row(
        "nodes that lost sight of a peer during the rest",
        field("nodes_lost_reach_at_rest"),
        &s0,
        None,
        false,
    );
    let notes: Vec<String> = rs
        .iter()
        .filter(|r| r["converged"] == json!(false))
        .map(|r| {
            format!(
                "N = {}: **not converged** within {} s ({} of {} nodes saw all others); rest figures measured anyway.",
                r["n"], r["converge_cap_s"], r["converged_nodes"], r["n"]
            )
        })
        .collect();
    if !notes.is_empty() {
        out.push(String::new());
        out.extend(notes);
    }
    out.join("\n")
}

/// `bench/results/scale-<unix time>.{json,md}` and `scale-latest.{json,md}`.
pub fn write_files(dir: &std::path::Path, rs: &[Value], md: &str) -> BenchResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let raw = json!({"when_unix": when, "results": rs, "markdown": md});
    let text = serde_json::to_string_pretty(&raw).map_err(|e| e.to_string())?;
    for name in [format!("scale-{when}"), "scale-latest".to_string()] {
        std::fs::write(dir.join(format!("{name}.json")), format!("{text}\n"))
            .and_then(|_| std::fs::write(dir.join(format!("{name}.md")), format!("{md}\n")))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}
