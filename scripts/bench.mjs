// npm run bench [-- --quick] [-- --skip-build] [-- --idle-links N] [-- --only mesh,tool-read,models,handoff,scale]
//
// Builds the addon (release) and the Rust bench, runs `cargo bench --bench mesh` (clawmatrix
// nodes in-process on loopback), `bench/ws-baseline.mjs` (the original plugin's Node `ws`
// stack), `bench/tool-read.mjs` (1 MiB `cluster_read` through the release addon, and a
// control frame's wait meanwhile) and `cargo bench --bench handoff` (1000 concurrent handoff
// streams through one relay) in the same run, then prints one markdown table comparing
// them with the targets; then `cargo bench --bench scale` (N = 25, 50, 100 nodes at rest,
// issue #22) and its own table. `--only` runs a subset (`--only scale`: the scale bench alone).
// The table and the raw JSON lines go to bench/results/ (gitignored). What each number means:
// bench/README.md.
//
// Exit status: 0 when all three benchmarks ran (missed targets are reported, not fatal); 1 when a
// build or a benchmark failed or produced no result.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import { ROOT, run } from "./lib.mjs";

const argv = process.argv.slice(2);
const quick = argv.includes("--quick");
const skipBuild = argv.includes("--skip-build");
const idleIdx = argv.indexOf("--idle-links");
const idleLinks = idleIdx >= 0 ? Number(argv[idleIdx + 1]) : 200;
if (!(idleLinks >= 1 && idleLinks <= 2000)) {
  console.error("--idle-links must be in 1..2000");
  process.exit(2);
}
const passThrough = quick ? ["--quick"] : [];
const PARTS = ["mesh", "tool-read", "models", "handoff", "scale"];
const onlyIdx = argv.indexOf("--only");
const only = onlyIdx >= 0 ? (argv[onlyIdx + 1] ?? "").split(",").filter(Boolean) : PARTS;
if (!only.length || only.some((p) => !PARTS.includes(p))) {
  console.error(`--only takes a comma-separated list of ${PARTS.join(", ")}`);
  process.exit(2);
}
const wants = (part) => only.includes(part);
/** A part that was not selected: no rows, no error. */
const skipped = { rows: [], error: null, stdout: "" };

/** Targets from the issue (floors measured on this class of machine are in bench/README.md). */
const TARGET = {
  directP50: 45, // µs
  hopP50: 90, // µs added per relay
  hopP99: 250, // µs added per relay
  hopVsNode: 3, // × better than Node ws on added hop latency (p50)
  smallFramesPerS: 300_000,
  largeMBps: 600,
  idleBytes: 8 * 1024,
  toolReadP50: 8, // ms, 1 MiB cluster_read office → home's JS
  toolReadP99: 15, // ms
  controlDuringReadP99: 2, // ms, a control frame on the same link meanwhile
  proxyAddedP50: 250, // µs added to time-to-first-byte per request, one hop (bench/models.rs)
  proxyAddedP99: 1000, // µs
  proxyCpuPerChunk: 8, // µs CPU added per SSE chunk
  handoffP99: 10, // ms, chunk latency of 1000 concurrent handoff streams × 50 chunks/s via 1 relay
  handoffCores: 0.6, // CPU cores for that load
};

/** The shared-models table (bench/models.rs): proxied vs the upstream called directly. */
function modelsTable(rows) {
  const lat = (t) => find(rows, "proxy_latency", (r) => r.topology === t);
  const added = (t) => find(rows, "proxy_added", (r) => r.topology === t);
  const cpu = (t) => find(rows, "proxy_cpu", (r) => r.topology === t);
  const calls = (t) => find(rows, "proxy_host_calls", (r) => r.topology === t);
  const yes = (ok) => (ok === undefined ? "n/a" : ok ? "yes" : "**no**");
  const out = [
    "| metric | direct to upstream | floor: 2 byte pipes, no mesh | home → office (1 hop) | home → cloud → office (2 hops) | target (1 hop) | met? |",
    "|---|---:|---:|---:|---:|---|---|",
  ];
  const row = (name, f, target = "—", check) => {
    const [d, fl, a, b] = ["direct", "floor", "1 hop", "2 hops"].map(f);
    out.push(`| ${name} | ${num(d)} | ${num(fl)} | ${num(a)} | ${num(b)} | ${target} | ${check ? yes(a === undefined ? undefined : check(a)) : "—"} |`);
  };
  row("time to first byte p50 (µs)", (t) => lat(t)?.ttfb_p50_us);
  row("time to first byte p99 (µs)", (t) => lat(t)?.ttfb_p99_us);
  row("total per request p50 (µs, 4 chunks)", (t) => lat(t)?.total_p50_us);
  row("total per request p99 (µs, 4 chunks)", (t) => lat(t)?.total_p99_us);
  row("added to first byte p50 (µs)", (t) => added(t)?.ttfb_p50_us, `≤ +${TARGET.proxyAddedP50}`, (a) => a <= TARGET.proxyAddedP50);
  row("added to first byte p99 (µs)", (t) => added(t)?.ttfb_p99_us, `≤ +${TARGET.proxyAddedP99}`, (a) => a <= TARGET.proxyAddedP99);
  row("added to total p50 (µs)", (t) => added(t)?.total_p50_us);
  row("CPU per SSE chunk, whole process (µs)", (t) => cpu(t)?.cpu_us_per_chunk);
  row("CPU added per SSE chunk (µs)", (t) => cpu(t)?.added_cpu_us_per_chunk, `≤ ${TARGET.proxyCpuPerChunk}`, (a) => a <= TARGET.proxyCpuPerChunk);
  row("mesh frames per SSE chunk (fast upstream: chunks gathered)", (t) => (t === "direct" ? undefined : cpu(t)?.mesh_frames_per_chunk));
  const paced = (t) => find(rows, "proxy_cpu_paced", (r) => r.topology === t);
  row("CPU per chunk, paced upstream: 1 ms apart, one frame each (µs)", (t) => paced(t)?.cpu_us_per_chunk);
  row("CPU added per chunk, paced upstream (µs)", (t) => paced(t)?.added_cpu_us_per_chunk);
  row("JS (host) calls per chunk", (t) => (t === "direct" ? undefined : calls(t)?.per_chunk), "0", (a) => a === 0);
  return out.join("\n");
}

function machine() {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model = /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown";
  const mem = /MemTotal:\s+(\d+)/.exec(readFileSync("/proc/meminfo", "utf8"))?.[1];
  return {
    nproc: availableParallelism(),
    cpu: model,
    memGiB: mem ? Math.round(Number(mem) / 1024 / 1024 * 10) / 10 : null,
    node: process.version,
    kernel: readFileSync("/proc/sys/kernel/osrelease", "utf8").trim(),
  };
}

function parseLines(stdout) {
  return stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => {
    try { return JSON.parse(l); } catch { return null; }
  }).filter(Boolean);
}

/** Run one benchmark; never throws: returns {rows, error}. */
async function runBench(label, cmd, args, timeoutMs) {
  console.log(`[bench] ${label}: ${cmd} ${args.join(" ")}`);
  try {
    // stderr streams to the terminal (the human summary); stdout is the JSON lines.
    const r = await run(cmd, args, { capture: true, tee: true, timeoutMs });
    const rows = parseLines(r.stdout);
    return { rows, error: rows.length ? null : `${label}: no result lines`, stdout: r.stdout };
  } catch (e) {
    const rows = parseLines(e.stdout ?? "");
    return { rows, error: `${label}: ${e.message}`, stdout: e.stdout ?? "" };
  }
}

const find = (rows, bench, pred = () => true) => rows.find((r) => r.bench === bench && pred(r));
const rttOf = (rows, topo) => find(rows, "rtt", (r) => r.topology === topo);
const tputOf = (rows, bytes, topo = "direct") =>
  find(rows, "throughput", (r) => r.payload_bytes === bytes && (r.topology ?? "direct") === topo);

function metrics(rows) {
  const d = rttOf(rows, "direct"), r1 = rttOf(rows, "relay1"), r2 = rttOf(rows, "relay2");
  const diff = (a, b, k, div = 1) => (a && b ? (a[k] - b[k]) / div : undefined);
  const small = tputOf(rows, 1024), large = tputOf(rows, 1024 * 1024);
  const idle = find(rows, "idle_link_memory");
  const floor = rttOf(rows, "floor"), floorSmall = tputOf(rows, 1024, "floor");
  const floorRelay = rttOf(rows, "floor_relay1");
  return {
    floorP50: floor?.p50_us, floorP99: floor?.p99_us, floorFps: floorSmall?.frames_per_s,
    overFloorP50: diff(d, floor, "p50_us"),
    floorHopP50: diff(floorRelay, floor, "p50_us"),
    directP50: d?.p50_us, directP99: d?.p99_us,
    relay1P50: r1?.p50_us, relay1P99: r1?.p99_us,
    relay2P50: r2?.p50_us, relay2P99: r2?.p99_us,
    hop1P50: diff(r1, d, "p50_us"), hop2P50: diff(r2, d, "p50_us", 2),
    hop1P99: diff(r1, d, "p99_us"), hop2P99: diff(r2, d, "p99_us", 2),
    smallFps: small?.frames_per_s, smallMBps: small?.mb_per_s,
    largeFps: large?.frames_per_s, largeMBps: large?.mb_per_s,
    idleBytes: idle?.bytes_per_link, idleLinks: idle?.links,
    cpuDirect: d?.cpu_us_per_req, cpuRelay1: r1?.cpu_us_per_req, cpuRelay2: r2?.cpu_us_per_req,
    cpuSmall: small?.cpu_us_per_req, cpuLarge: large?.cpu_us_per_req,
    toolReadP50: find(rows, "tool_read")?.p50_ms, toolReadP99: find(rows, "tool_read")?.p99_ms,
    controlDuringP50: find(rows, "control_during_read")?.p50_ms,
    controlDuringP99: find(rows, "control_during_read")?.p99_ms,
    controlIdleP50: find(rows, "control_idle")?.p50_ms, controlIdleP99: find(rows, "control_idle")?.p99_ms,
    handoffP50: find(rows, "handoff_streams")?.p50_ms, handoffP99: find(rows, "handoff_streams")?.p99_ms,
    handoffLost: find(rows, "handoff_streams")?.lost, handoffReordered: find(rows, "handoff_streams")?.reordered,
    handoffCores: find(rows, "handoff_streams")?.cpu_cores, handoffStreams: find(rows, "handoff_streams")?.streams,
  };
}

const num = (v, digits = 1) => v === undefined || v === null || Number.isNaN(v) ? "n/a"
  : Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en-US") : v.toFixed(digits);

function table(cm, nw) {
  const rows = [];
  // lower: true when smaller is better. check(cmValue, nwValue) -> true/false/undefined.
  const add = (metric, key, { lower = true, target = "—", check, digits = 1 } = {}) => {
    const a = cm[key], b = nw[key];
    let ratio = "n/a";
    if (a !== undefined && b !== undefined && a > 0 && b > 0) {
      const x = lower ? b / a : a / b;
      ratio = x >= 1 ? `${x.toFixed(1)}× better` : `${(1 / x).toFixed(1)}× worse`;
    }
    let met = "—";
    if (check) {
      const ok = a === undefined ? undefined : check(a, b);
      met = ok === undefined ? "n/a" : ok ? "yes" : "**no**";
    }
    rows.push(`| ${metric} | ${num(a, digits)} | ${num(b, digits)} | ${ratio} | ${target} | ${met} |`);
  };
  // Two clawmatrix-only figures in one cell ("p50 / p99"); no Node ws counterpart.
  const addPair = (metric, k1, k2, { target = "—", check } = {}) => {
    const a = cm[k1], b = cm[k2];
    const met = !check ? "—" : a === undefined || b === undefined ? "n/a" : check(a, b) ? "yes" : "**no**";
    rows.push(`| ${metric} | ${num(a)} / ${num(b)} | n/a | n/a | ${target} | ${met} |`);
  };
  const hopCheck = (limit) => (a, b) => a <= limit && (b === undefined ? undefined : b / a >= TARGET.hopVsNode);
  add("RTT direct p50 (µs)", "directP50", { target: `≤ ${TARGET.directP50}`, check: (a) => a <= TARGET.directP50 });
  add("RTT direct p99 (µs)", "directP99");
  addPair("floor: bare tokio-tungstenite RTT p50/p99, same run (µs)", "floorP50", "floorP99");
  add("RTT direct p50 added over the floor (µs)", "overFloorP50");
  add("RTT 1 relay p50 (µs)", "relay1P50");
  add("RTT 1 relay p99 (µs)", "relay1P99");
  add("RTT 2 relays p50 (µs)", "relay2P50");
  add("RTT 2 relays p99 (µs)", "relay2P99");
  add("added per hop p50, 1 relay: relay1 − direct (µs)", "hop1P50", { target: `≤ +${TARGET.hopP50}, ≥ ${TARGET.hopVsNode}× Node ws`, check: hopCheck(TARGET.hopP50) });
  add("added per hop p50, 2 relays: (relay2 − direct)/2 (µs)", "hop2P50", { target: `≤ +${TARGET.hopP50}, ≥ ${TARGET.hopVsNode}× Node ws`, check: hopCheck(TARGET.hopP50) });
  add("floor: bare tokio-tungstenite relay, added per hop p50: floor_relay1 − floor (µs)", "floorHopP50");
  add("added per hop p99, 1 relay: relay1 − direct (µs)", "hop1P99", { target: `≤ +${TARGET.hopP99}`, check: (a) => a <= TARGET.hopP99 });
  add("added per hop p99, 2 relays: (relay2 − direct)/2 (µs)", "hop2P99", { target: `≤ +${TARGET.hopP99}`, check: (a) => a <= TARGET.hopP99 });
  add("throughput 1 KiB, frames/s one way", "smallFps", { lower: false, target: `≥ ${TARGET.smallFramesPerS.toLocaleString("en-US")}`, check: (a) => a >= TARGET.smallFramesPerS, digits: 0 });
  add("throughput 1 KiB, MB/s one way", "smallMBps", { lower: false });
  add("floor: bare tokio-tungstenite 1 KiB, 64 in flight (frames/s one way)", "floorFps", { lower: false, digits: 0 });
  add("throughput 1 MiB, frames/s one way", "largeFps", { lower: false });
  add("throughput 1 MiB, MB/s one way", "largeMBps", { lower: false, target: `≥ ${TARGET.largeMBps}`, check: (a) => a >= TARGET.largeMBps });
  add("memory per idle authenticated link (bytes)", "idleBytes", { target: `≤ ${TARGET.idleBytes}`, check: (a) => a <= TARGET.idleBytes, digits: 0 });
  add("CPU per request, direct RTT (µs, all processes)", "cpuDirect");
  add("CPU per request, 1 relay RTT (µs, all processes)", "cpuRelay1");
  add("CPU per request, 2 relays RTT (µs, all processes)", "cpuRelay2");
  add("CPU per request, 1 KiB throughput (µs)", "cpuSmall");
  add("CPU per request, 1 MiB throughput (µs)", "cpuLarge");
  addPair("1 MiB cluster_read to home's JS p50/p99 (ms)", "toolReadP50", "toolReadP99",
    { target: `≤ ${TARGET.toolReadP50} / ≤ ${TARGET.toolReadP99}`, check: (p50, p99) => p50 <= TARGET.toolReadP50 && p99 <= TARGET.toolReadP99 });
  add("control frame wait during 1 MiB reads p99 (ms)", "controlDuringP99",
    { target: `≤ ${TARGET.controlDuringReadP99}`, check: (a) => a <= TARGET.controlDuringReadP99, digits: 2 });
  addPair("control frame RTT, idle link p50/p99 (ms)", "controlIdleP50", "controlIdleP99");
  addPair(`handoff chunk latency p50/p99, ${cm.handoffStreams ?? "n/a"} streams × 50/s via 1 relay (ms)`, "handoffP50", "handoffP99",
    { target: `p99 ≤ ${TARGET.handoffP99}`, check: (_p50, p99) => p99 <= TARGET.handoffP99 });
  addPair("handoff chunks lost / reordered", "handoffLost", "handoffReordered", { target: "0 / 0", check: (l, r) => l === 0 && r === 0 });
  add("handoff streams CPU (cores, whole process)", "handoffCores", { target: `≤ ${TARGET.handoffCores}`, check: (a) => a <= TARGET.handoffCores, digits: 2 });
  return [
    "| metric | clawmatrix | Node ws | ratio | target | met? |",
    "|---|---:|---:|---:|---|---|",
    ...rows,
  ].join("\n");
}

async function main() {
  const m = machine();
  const started = Date.now();
  console.log(`[bench] machine: ${m.nproc} CPUs (${m.cpu}), ${m.memGiB} GiB, Linux ${m.kernel}, node ${m.node}`);
  if (!skipBuild) {
    // The release addon is what tool-read drives; the other parts are Rust benches or plain Node.
    if (wants("tool-read")) {
      await run(process.execPath, [join(ROOT, "scripts", "build.mjs"), "--release"], { timeoutMs: 30 * 60_000 });
    }
    const benches = ["mesh", "handoff", "models", "scale"].filter(wants).flatMap((b) => ["--bench", b]);
    if (benches.length) {
      console.log(`[bench] cargo bench ${benches.join(" ")} --no-run`);
      await run("cargo", ["bench", ...benches, "--no-run"], { timeoutMs: 30 * 60_000 });
    }
  }
  const loadStart = loadavg()[0];
  const rust = wants("mesh") ? await runBench("clawmatrix", "cargo",
    ["bench", "--bench", "mesh", "--", ...passThrough, "--idle-links", String(idleLinks)], 5 * 60_000) : skipped;
  const base = wants("mesh") ? await runBench("node-ws", process.execPath,
    [join(ROOT, "bench", "ws-baseline.mjs"), ...passThrough, "--idle-links", String(idleLinks)], 7 * 60_000) : skipped;
  const toolRead = wants("tool-read") ? await runBench("tool-read", process.execPath,
    [join(ROOT, "bench", "tool-read.mjs"), ...passThrough], 3 * 60_000) : skipped;
  const models = wants("models") ? await runBench("models", "cargo", ["bench", "--bench", "models", "--", ...passThrough], 5 * 60_000) : skipped;
  const handoff = wants("handoff") ? await runBench("handoff", "cargo", ["bench", "--bench", "handoff", "--", ...passThrough], 4 * 60_000) : skipped;
  // N = 25, 50, 100 nodes at rest (≈ 3.5 min, bounded by its convergence caps; --quick ≈ 1.5 min).
  // Its table comes ready-made.
  const scale = wants("scale") ? await runBench("scale", "cargo", ["bench", "--bench", "scale", "--", ...passThrough], 15 * 60_000) : skipped;
  const scaleMd = find(scale.rows, "scale_table")?.markdown;

  const cm = metrics([...rust.rows, ...toolRead.rows, ...handoff.rows]), nw = metrics(base.rows);
  // The relay floor's row compares with Node ws's own hop: its ratio is the best any tokio
  // WebSocket relay reaches against Node ws on this machine in this run.
  nw.floorHopP50 = nw.hop1P50;
  const when = new Date().toISOString();
  const loadEnd = loadavg()[0];
  const header = [
    `## clawmatrix mesh benchmark (${when})`,
    "",
    `Machine: ${m.nproc} CPUs, ${m.cpu}, ${m.memGiB} GiB RAM, Linux ${m.kernel}, Node ${m.node}.` +
      ` Load average (1 min) when measuring started / ended: ${loadStart.toFixed(2)} / ${loadEnd.toFixed(2)}` +
      " (latencies on this VM depend on it: an idle vCPU halts, and waking it costs tens of µs)." +
      (quick ? " **--quick run (short samples; not for the record).**" : ""),
    (wants("mesh")
      ? `Payload 1 KiB for RTT; idle links: ${cm.idleLinks ?? "n/a"} (clawmatrix) / ${nw.idleLinks ?? "n/a"} (Node ws).` +
        " Ratio = how many times better clawmatrix is. Definitions: bench/README.md."
      : `Parts run: ${only.join(", ")}. Definitions: bench/README.md.`),
    "",
    "",
  ].join("\n");
  const sections = [];
  if (wants("mesh") || wants("tool-read") || wants("handoff")) sections.push(`${table(cm, nw)}\n`);
  if (wants("models")) {
    sections.push("### Shared models: the proxy against calling the upstream directly\n\n" +
      "Same upstream (in-process, SSE), one keep-alive client, one request at a time; added = proxied − direct. Definitions: bench/README.md.\n\n" +
      `${modelsTable(models.rows)}\n`);
  }
  if (wants("scale")) sections.push(`${scaleMd ?? "### Scale at rest\n\nn/a (the scale bench failed; see above)"}\n`);
  const md = `${header}${sections.join("\n")}`;
  console.log(`\n${md}`);

  const dir = join(ROOT, "bench", "results");
  mkdirSync(dir, { recursive: true });
  const stamp = when.replace(/[:.]/g, "-");
  const raw = {
    when, machine: m, quick, only, clawmatrix: rust.rows, nodeWs: base.rows, toolRead: toolRead.rows, handoff: handoff.rows, models: models.rows,
    scale: scale.rows,
    errors: [rust.error, base.error, toolRead.error, handoff.error, models.error, scale.error].filter(Boolean),
  };
  // latest.* is the last full run; a run of some parts (--only) keeps only its stamped files.
  const full = PARTS.every(wants);
  for (const name of full ? [`bench-${stamp}`, "latest"] : [`bench-${stamp}`]) {
    writeFileSync(join(dir, `${name}.md`), md);
    writeFileSync(join(dir, `${name}.json`), `${JSON.stringify(raw, null, 2)}\n`);
  }
  console.log(`[bench] wrote bench/results/bench-${stamp}.{md,json}${full ? " (and latest.*)" : ""} in ${Math.round((Date.now() - started) / 1000)} s`);
  const errors = raw.errors;
  if (errors.length) {
    for (const e of errors) console.error(`[bench] FAILED: ${e}`);
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(`[bench] FAILED: ${e.stack ?? e}`);
  process.exit(1);
});
