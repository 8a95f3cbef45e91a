// npm run bench:ab -- --base REV [--rounds N] [--only mesh,models,handoff,tool-read]
//
// Old build against new build, same machine, same window: builds REV (release) in a worktree
// under target/bench-ab/, then runs each selected benchmark of `npm run bench` on both builds,
// alternating and swapping the order every round (A B, B A, ...) so a drift in the machine's
// speed lands on both. Prints, per headline row, the median of each side, the change (+ = worse)
// and a two-sided Mann-Whitney p (permutation test), so "worse by 5 %" can be told from noise:
// absolute timings move a lot between these VMs and between runs, and even the floor rows
// (identical bench code in both binaries) move by up to ~10 % between two builds.
// Writes the table to bench/results/ab-<time>.md. The working tree is the new side: build it
// first with `npm run bench -- --only <part>` or let this script build it (it does).
//
// Exit status: 0 when every selected benchmark produced rows on both sides; 1 otherwise.
import { cpSync, existsSync, mkdirSync, readFileSync, utimesSync, writeFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { ROOT, run } from "./lib.mjs";

const argv = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const baseRev = arg("--base");
const rounds = Number(arg("--rounds", "5"));
const PARTS = ["mesh", "models", "handoff", "tool-read"];
const only = (arg("--only", PARTS.join(",")) ?? "").split(",").filter(Boolean);
if (!baseRev || !(rounds >= 1 && rounds <= 50) || !only.length || only.some((p) => !PARTS.includes(p))) {
  console.error(`usage: npm run bench:ab -- --base REV [--rounds 1..50] [--only ${PARTS.join(",")}]`);
  process.exit(2);
}

const git = async (args, cwd = ROOT) => (await run("git", args, { cwd, capture: true })).stdout.trim();
const sha = await git(["rev-parse", "--verify", `${baseRev}^{commit}`]);
const baseDir = join(ROOT, "target", "bench-ab", sha.slice(0, 12));
const rustParts = only.filter((p) => p !== "tool-read");

/** Build one side: the Rust benches (release) and, for tool-read, the release addon. */
async function buildSide(dir) {
  if (only.includes("tool-read")) {
    await run(process.execPath, [join(dir, "scripts", "build.mjs"), "--release"], { cwd: dir, timeoutMs: 30 * 60_000 });
  }
  if (rustParts.length) {
    await run("cargo", ["bench", ...rustParts.flatMap((b) => ["--bench", b]), "--no-run"], { cwd: dir, timeoutMs: 30 * 60_000 });
  }
}

if (!existsSync(join(baseDir, ".git"))) {
  mkdirSync(join(ROOT, "target", "bench-ab"), { recursive: true });
  await run("git", ["worktree", "add", "--detach", baseDir, sha]);
}
// The base needs the same npm tools; copy ours when the lock files agree (no registry access),
// and mark them current so the base's build does not reinstall.
const lockOf = (dir) => readFileSync(join(dir, "package-lock.json"), "utf8");
if (only.includes("tool-read") && !existsSync(join(baseDir, "node_modules")) && lockOf(baseDir) === lockOf(ROOT)) {
  cpSync(join(ROOT, "node_modules"), join(baseDir, "node_modules"), { recursive: true });
  const now = new Date();
  utimesSync(join(baseDir, "node_modules", ".package-lock.json"), now, now);
}
console.log(`[ab] building base ${sha.slice(0, 12)} in ${baseDir}`);
await buildSide(baseDir);
console.log("[ab] building the working tree (new)");
await buildSide(ROOT);

/** The newest bench executable `name` under `dir`'s release deps. */
function benchBin(dir, name) {
  const deps = join(dir, "target", "release", "deps");
  const found = readdirSync(deps)
    .filter((f) => f.startsWith(`${name}-`) && !f.includes("."))
    .map((f) => join(deps, f))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (!found.length) throw new Error(`no ${name} bench binary in ${deps}`);
  return found[0];
}

const sides = { base: baseDir, new: ROOT };
const results = { base: [], new: [] };
async function runPart(side, part) {
  const dir = sides[side];
  const [cmd, args] = part === "tool-read"
    ? [process.execPath, [join(dir, "bench", "tool-read.mjs")]]
    : [benchBin(dir, part), []];
  try {
    const r = await run(cmd, args, { cwd: dir, capture: true, timeoutMs: 6 * 60_000 });
    return r.stdout;
  } catch (e) {
    console.error(`[ab] ${side} ${part}: ${e.message}`);
    return e.stdout ?? "";
  }
}
for (let r = 1; r <= rounds; r++) {
  const order = r % 2 ? ["base", "new"] : ["new", "base"];
  for (const side of order) {
    console.log(`[ab] round ${r}/${rounds}: ${side}`);
    const rows = [];
    for (const part of only) {
      for (const line of (await runPart(side, part)).split("\n")) {
        if (!line.startsWith("{")) continue;
        try { rows.push(JSON.parse(line)); } catch { /* a partial line: skip */ }
      }
    }
    results[side].push(rows);
  }
}

/** Headline rows of the `npm run bench` tables: [label, bench, field, match, higherIsBetter]. */
const ROWS = [
  ["RTT direct p50 (µs)", "rtt", "p50_us", { topology: "direct" }],
  ["RTT direct p99 (µs)", "rtt", "p99_us", { topology: "direct" }],
  ["RTT 1 relay p50 (µs)", "rtt", "p50_us", { topology: "relay1" }],
  ["RTT 1 relay p99 (µs)", "rtt", "p99_us", { topology: "relay1" }],
  ["RTT 2 relays p50 (µs)", "rtt", "p50_us", { topology: "relay2" }],
  ["RTT 2 relays p99 (µs)", "rtt", "p99_us", { topology: "relay2" }],
  ["floor RTT p50 (µs, same code both sides)", "rtt", "p50_us", { topology: "floor" }],
  ["1 KiB frames/s", "throughput", "frames_per_s", { topology: "direct", payload_bytes: 1024 }, true],
  ["1 MiB MB/s", "throughput", "mb_per_s", { topology: "direct", payload_bytes: 1048576 }, true],
  ["idle link bytes", "idle_link_memory", "bytes_per_link", {}],
  ["1 MiB cluster_read p50 (ms)", "tool_read", "p50_ms", {}],
  ["1 MiB cluster_read p99 (ms)", "tool_read", "p99_ms", {}],
  ["control frame during reads p99 (ms)", "control_during_read", "p99_ms", {}],
  ["handoff 1000 streams p50 (ms)", "handoff_streams", "p50_ms", {}],
  ["handoff 1000 streams p99 (ms)", "handoff_streams", "p99_ms", {}],
  ["handoff 1000 streams CPU (cores)", "handoff_streams", "cpu_cores", {}],
  ["proxy added TTFB 1 hop p50 (µs)", "proxy_added", "ttfb_p50_us", { topology: "1 hop" }],
  ["proxy added TTFB 1 hop p99 (µs)", "proxy_added", "ttfb_p99_us", { topology: "1 hop" }],
  ["proxy added TTFB 2 hops p50 (µs)", "proxy_added", "ttfb_p50_us", { topology: "2 hops" }],
  ["proxy CPU per SSE chunk, 1 hop, whole process (µs)", "proxy_cpu", "cpu_us_per_chunk", { topology: "1 hop" }],
];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** Two-sided Mann-Whitney p by permutation (exact enough for a few dozen samples). */
function mannWhitneyP(x, y, permutations = 4000) {
  const u = (a, b) => a.reduce((acc, i) => acc + b.reduce((s, j) => s + (i > j ? 1 : i === j ? 0.5 : 0), 0), 0);
  const centre = (x.length * y.length) / 2;
  const observed = Math.abs(u(x, y) - centre);
  const pool = [...x, ...y];
  let seed = 0x2545f491;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  let hits = 0;
  for (let k = 0; k < permutations; k++) {
    for (let i = pool.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [pool[i], pool[j]] = [pool[j], pool[i]];
    }
    if (Math.abs(u(pool.slice(0, x.length), pool.slice(x.length)) - centre) >= observed) hits++;
  }
  return hits / permutations;
}
const values = (side, [, bench, field, match]) =>
  results[side]
    .map((rows) => rows.find((r) => r.bench === bench && Object.entries(match).every(([k, v]) => r[k] === v))?.[field])
    .filter((v) => typeof v === "number");

const head = await git(["rev-parse", "--short=12", "HEAD"]);
const dirty = (await git(["status", "--porcelain", "--untracked-files=no"])) ? " + uncommitted changes" : "";
const lines = [
  `A/B: base ${sha.slice(0, 12)} against the working tree (${head}${dirty}), ${rounds} alternating rounds.`,
  "",
  "| row | base median | new median | change (+ = worse) | runs | Mann-Whitney p |",
  "|---|---:|---:|---:|---:|---:|",
];
const PART_BENCHES = {
  mesh: ["rtt", "throughput", "idle_link_memory"],
  models: ["proxy_added", "proxy_cpu"],
  handoff: ["handoff_streams"],
  "tool-read": ["tool_read", "control_during_read"],
};
/** Selected parts that produced no row on one side (a failed build or run). */
const missing = only.filter((part) =>
  ["base", "new"].some((side) => !results[side].some((rows) => rows.some((r) => PART_BENCHES[part].includes(r.bench)))),
);
for (const row of ROWS) {
  const a = values("base", row);
  const b = values("new", row);
  if (!a.length || !b.length) continue;
  const ma = median(a);
  const mb = median(b);
  const worse = row[4] ? ma / mb - 1 : mb / ma - 1;
  const fmt = (v) => (Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en-US") : v.toFixed(2));
  lines.push(`| ${row[0]} | ${fmt(ma)} | ${fmt(mb)} | ${(worse * 100).toFixed(1)}% | ${a.length}/${b.length} | ${mannWhitneyP(a, b).toFixed(3)} |`);
}
if (missing.length) lines.push("", `No rows from: ${missing.join(", ")} (see the errors above).`);
const table = lines.join("\n");
console.log(`\n${table}`);
mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
const out = join(ROOT, "bench", "results", `ab-${Date.now()}.md`);
writeFileSync(out, `${table}\n`);
console.log(`\n[ab] table written to ${out}`);
process.exit(missing.length ? 1 : 0);
