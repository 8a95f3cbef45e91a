// npm run soak -- --minutes N [--sample-seconds S] [--no-build] [--out FILE]
//
// Issue 18 item 4: three real OpenClaw gateways (home, relay, office) whose two mesh links go
// through the fault lab's proxy (tests/lab/) with mild faults (the lossy model: 2 % of chunks
// delayed 300 ± 100 ms, both directions), and continuous work from home for N minutes:
//   - model calls: home's local OpenAI-compatible proxy → office's model (the mock LLM);
//   - handoffs: home → office's agent `coder` (an OpenClaw agent turn on office);
//   - tool reads: home → `cluster_read` of files on office.
// Every call carries a nonce its reply must echo (lost / mismatched / duplicated are counted;
// a handoff's task must reach office's model exactly once). Each gateway's resident memory
// (VmRSS of the gateway process, /proc/<pid>/status) is sampled every ~30 s. At the end it
// prints the RSS drift after warm-up (the first 20 % of the run excluded) per node, the call
// counts, link deaths (heartbeat timeouts, links re-established) and panics (`panicked` in the
// gateways' logs), and exits 1 if a drift is over 10 % or anything failed, was lost,
// duplicated or panicked. The figures are also written as JSON (--out, default
// /tmp/clawmatrix-soak-<time>.json).
import { readFileSync, writeFileSync, mkdtempSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { build } from "./lib.mjs";

const { values: opt } = parseArgs({
  options: {
    minutes: { type: "string", default: "5" },
    "sample-seconds": { type: "string", default: "30" },
    "no-build": { type: "boolean", default: false },
    out: { type: "string" },
    seed: { type: "string" },
  },
});
const MINUTES = Number(opt.minutes);
const SAMPLE_MS = Number(opt["sample-seconds"]) * 1000;
if (!(MINUTES > 0) || !(SAMPLE_MS >= 1000)) {
  console.error("soak: --minutes must be > 0 and --sample-seconds ≥ 1");
  process.exit(2);
}
const OUT = opt.out ?? join(tmpdir(), `clawmatrix-soak-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
const MAX_DRIFT = 0.1;
const WARMUP_FRACTION = 0.2;
const LOSSY = { dir: "both", delay: { p: 0.02, ms: 300, jitterMs: 100 } };

if (!opt["no-build"]) await build();
// Imported after the build: the harness stages dist/ and native/.
const { startSuite, endSuite, waitStatus } = await import("../tests/e2e/plugin-package.mjs");
const { startLab, meshCounters, LAB_DEFAULTS } = await import("../tests/lab/lab.mjs");
const W = await import("../tests/lab/workload.mjs");

const log = (...a) => console.log(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...a);
const fx = {};
const figures = { minutes: MINUTES, heartbeat: LAB_DEFAULTS, faults: LOSSY };
let lab;
let exitCode = 1;

/** VmRSS of `pid`, KiB (0 when gone). */
function vmRssKiB(pid) {
  try {
    const m = readFileSync(`/proc/${pid}/status`, "utf8").match(/^VmRSS:\s+(\d+) kB/m);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : 0;
};

/**
 * Drift after warm-up: the median of the last three samples against the median of the first
 * three samples after the warm-up (the first 20 % of the run).
 */
function drift(samples, startedAt, endedAt) {
  const warmEnd = startedAt + WARMUP_FRACTION * (endedAt - startedAt);
  const after = samples.filter((s) => s.t >= warmEnd);
  if (after.length < 2) return { samples: after.length, drift: null };
  const k = Math.min(3, Math.floor(after.length / 2));
  const first = median(after.slice(0, k).map((s) => s.kib));
  const last = median(after.slice(-k).map((s) => s.kib));
  return { samples: after.length, firstMiB: Math.round(first / 1024), lastMiB: Math.round(last / 1024), maxMiB: Math.round(Math.max(...after.map((s) => s.kib)) / 1024), drift: (last - first) / first };
}

function panics(gw) {
  let n = 0;
  for (const p of [gw.logPath, gw.openclawLogPath]) {
    if (!existsSync(p)) continue;
    n += (readFileSync(p, "utf8").match(/panicked/g) ?? []).length;
  }
  return n;
}

try {
  await startSuite(fx);
  const root = mkdtempSync(join(tmpdir(), "clawmatrix-soak-files-"));
  const nonces = W.writeReadFiles(root);
  lab = await startLab(fx, {
    seed: opt.seed === undefined ? undefined : Number(opt.seed),
    nodes: [
      { name: "relay", nodeId: "relay-01", listen: true, extraConfig: { models: { providers: { mock: null } } } },
      {
        name: "office",
        nodeId: "office-01",
        dials: ["relay"],
        pluginConfig: {
          agents: [{ id: "coder", description: "Has the repos", tags: ["coding"] }],
          models: [{ id: "mock-model", provider: "mock" }],
          toolProxy: { enabled: true, allow: ["read"], root },
        },
        extraConfig: { agents: { entries: { main: {}, coder: {} } } },
      },
      {
        name: "home",
        nodeId: "home-01",
        dials: ["relay"],
        pluginConfig: { proxyModels: [{ id: "mock-model", nodeId: "office-01" }] },
      },
    ],
  });
  const { home, office, relay } = lab.gw;
  const peer = (s, id) => s.peers.find((p) => p.nodeId === id);
  await waitStatus(home, (s) => peer(s, "office-01")?.state === "relayed" && peer(s, "office-01")?.models?.length > 0, 120_000, "office relayed with its model");
  const t0w = Date.now();
  let entry;
  while (!(entry = home.readConfig().models?.providers?.["clawmatrix-office-01"]) && Date.now() - t0w < 60_000) await new Promise((r) => setTimeout(r, 500));
  if (!entry) throw new Error("home: models.providers.clawmatrix-office-01 not written within 60 s");
  const proxyPort = lab.config.home.proxyPort;
  await lab.setAll(LOSSY);
  const before = await meshCounters(lab);
  const nodes = { home, relay, office };
  const rss = Object.fromEntries(Object.keys(nodes).map((k) => [k, []]));
  const sample = () => {
    for (const [k, g] of Object.entries(nodes)) rss[k].push({ t: Date.now(), kib: vmRssKiB(g.pid) });
  };

  const tallies = { model: W.newTally(), handoff: W.newTally(), read: W.newTally() };
  const startedAt = Date.now();
  const endAt = startedAt + MINUTES * 60_000;
  const until = () => Date.now() >= endAt;
  log(`running ${MINUTES} min: model calls, handoffs and reads from home through the lossy links; RSS every ${SAMPLE_MS / 1000} s; figures → ${OUT}`);
  sample();
  const sampler = setInterval(() => {
    sample();
    const t = Object.fromEntries(Object.entries(tallies).map(([k, v]) => [k, `${v.done}/${v.failed}`]));
    log(`rss MiB ${Object.entries(rss).map(([k, v]) => `${k}=${Math.round(v.at(-1).kib / 1024)}`).join(" ")}; done/failed ${JSON.stringify(t)}`);
  }, SAMPLE_MS);
  let k = 0;
  const loops = [
    W.loop(() => W.modelOnce({ proxyPort, apiKey: entry.apiKey, model: "clawmatrix-office-01/mock-model", tally: tallies.model }), { everyMs: 250, until }),
    W.loop(() => W.handoffOnce(home, { mock: fx.mock, tally: tallies.handoff }), { everyMs: 3000, until }),
    W.loop(() => W.readOnce(home, { node: "office-01", nonces, k: k++ % nonces.length, tally: tallies.read }), { everyMs: 250, until }),
  ];
  await Promise.all(loops.map((l) => l.done));
  clearInterval(sampler);
  sample();
  const endedAt = Date.now();

  const after = await meshCounters(lab);
  const links = {};
  for (const name of Object.keys(nodes)) {
    links[name] = {
      heartbeatTimeouts: after[name].heartbeatTimeouts - before[name].heartbeatTimeouts,
      linksUpAgain: after[name].linksUp - before[name].linksUp,
    };
  }
  figures.calls = Object.fromEntries(Object.entries(tallies).map(([k2, t]) => [k2, W.summarize(t)]));
  figures.rss = Object.fromEntries(Object.entries(rss).map(([k2, s]) => [k2, drift(s, startedAt, endedAt)]));
  figures.rssSamples = Object.fromEntries(Object.entries(rss).map(([k2, s]) => [k2, s.map((x) => Math.round(x.kib / 1024))]));
  figures.linkDeaths = links;
  figures.proxies = await lab.counters();
  figures.panics = Object.fromEntries(Object.entries(nodes).map(([k2, g]) => [k2, panics(g)]));
  figures.durationMin = (endedAt - startedAt) / 60_000;

  const problems = [];
  for (const [k2, d] of Object.entries(figures.rss)) {
    if (d.drift === null) problems.push(`${k2}: too few RSS samples after warm-up (${d.samples})`);
    else if (d.drift > MAX_DRIFT) problems.push(`${k2}: RSS drift ${(d.drift * 100).toFixed(1)} % > ${MAX_DRIFT * 100} %`);
  }
  for (const [k2, t] of Object.entries(figures.calls)) {
    if (t.done === 0) problems.push(`${k2}: no call done`);
    if (t.failed || t.mismatched || t.duplicated) problems.push(`${k2}: ${t.failed} failed, ${t.mismatched} mismatched, ${t.duplicated} duplicated (${JSON.stringify(t.errors)})`);
  }
  for (const [k2, p] of Object.entries(figures.panics)) if (p) problems.push(`${k2}: ${p} panics in its logs`);
  for (const [k2, l] of Object.entries(links)) if (l.heartbeatTimeouts || l.linksUpAgain) problems.push(`${k2}: link deaths ${JSON.stringify(l)}`);
  figures.problems = problems;

  console.log("\n=== soak figures");
  for (const [k2, d] of Object.entries(figures.rss)) console.log(`rss ${k2}: ${d.firstMiB} → ${d.lastMiB} MiB after warm-up (max ${d.maxMiB}), drift ${d.drift === null ? "n/a" : `${(d.drift * 100).toFixed(1)} %`} over ${d.samples} samples`);
  for (const [k2, t] of Object.entries(figures.calls)) console.log(`${k2}: ${t.done} done, ${t.failed} failed, ${t.mismatched} mismatched, ${t.duplicated} duplicated; p50 ${t.p50Ms} ms p99 ${t.p99Ms} ms max ${t.maxMs} ms`);
  console.log(`link deaths: ${JSON.stringify(links)}; panics: ${JSON.stringify(figures.panics)}`);
  console.log(`delayed chunks: ${Object.entries(figures.proxies).map(([k2, c]) => `${k2} up ${c.up.chunksDelayed}/${c.up.chunks} down ${c.down.chunksDelayed}/${c.down.chunks}`).join("; ")}`);
  console.log(`[metrics] ${JSON.stringify({ soak: { minutes: figures.durationMin, rss: figures.rss, calls: figures.calls, linkDeaths: links, panics: figures.panics } })}`);
  writeFileSync(OUT, JSON.stringify(figures, null, 2));
  console.log(problems.length ? `\nsoak FAILED:\n- ${problems.join("\n- ")}` : "\nsoak passed");
  console.log(`figures written to ${OUT}`);
  exitCode = problems.length ? 1 : 0;
} catch (e) {
  console.error(`soak: ${e.stack ?? e}`);
  exitCode = 1;
} finally {
  lab?.stop();
  await endSuite(fx, {}, lab?.gw?.relay).catch(() => {});
}
process.exit(exitCode);
