// npm run fuzz -- --seconds N [--only t1,t2] [--runs N] [--write-seeds]
// Runs every cargo-fuzz target in tests/fuzz for N seconds each (nightly toolchain), starting
// from the committed seed corpus copied into a scratch corpus under tests/fuzz/target (the
// repo stays clean; what a run finds is kept there for the next run), and prints a table of
// executions and crashes. Exit 1 on any crash; the crash artifact's path is in the output.
// cargo-fuzz is installed by this script into ~/.cache/clawmatrix/cargo-fuzz-<version>/.
// --write-seeds regenerates tests/fuzz/corpus with tests/fuzz/src/bin/seeds.rs.
import { cpSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT, run } from "./lib.mjs";

export const CARGO_FUZZ_VERSION = "0.13.2";
export const FUZZ_DIR = join(ROOT, "tests", "fuzz");
export const TARGETS = [
  "ws_reader_diff",
  "frame_codec",
  "handshake_listener",
  "handshake_dialer",
  "config",
  "tool_result",
  "proxy_route",
];
// libFuzzer options per target beyond the defaults: the WebSocket reader reads messages of
// 16 KiB and more straight into their own buffer, which only longer inputs reach.
const EXTRA = { ws_reader_diff: ["-max_len=65536"] };

const cacheDir = () => join(process.env.CLAWMATRIX_CACHE ?? join(homedir(), ".cache", "clawmatrix"), `cargo-fuzz-${CARGO_FUZZ_VERSION}`);

/** cargo-fuzz from the cache, installed there on first use (pinned, --locked). */
export async function cargoFuzz(log = console.log) {
  const root = cacheDir();
  const exe = join(root, "bin", "cargo-fuzz");
  if (!existsSync(exe)) {
    log(`[fuzz] installing cargo-fuzz ${CARGO_FUZZ_VERSION} into ${root}`);
    await run("cargo", ["install", "--locked", "--root", root, `cargo-fuzz@${CARGO_FUZZ_VERSION}`], { timeoutMs: 20 * 60_000 });
  }
  return exe;
}

function env() {
  // `cargo +nightly fuzz` finds the cached cargo-fuzz on PATH.
  return { ...process.env, PATH: `${join(cacheDir(), "bin")}:${process.env.PATH}` };
}

/** Build every target (one cargo invocation: the crate is compiled once). */
export async function buildTargets(log = console.log) {
  await cargoFuzz(log);
  log("[fuzz] cargo +nightly fuzz build");
  const t0 = Date.now();
  await run("cargo", ["+nightly", "fuzz", "build", "--fuzz-dir", FUZZ_DIR], { env: env(), timeoutMs: 40 * 60_000 });
  return Date.now() - t0;
}

/** libFuzzer's closing output → executions, crash and its artifact. */
export function parseRun(text) {
  const num = (re) => {
    const m = text.match(re);
    return m ? Number(m[1]) : null;
  };
  const artifact = [...text.matchAll(/Test unit written to (\S+)/g)].map((m) => m[1]).pop() ?? null;
  const crashed = artifact !== null || /==\d+== ?ERROR: libFuzzer|panicked at|SUMMARY: libFuzzer/.test(text);
  return {
    execs: num(/stat::number_of_executed_units:\s*(\d+)/),
    peakRssMb: num(/stat::peak_rss_mb:\s*(\d+)/),
    corpus: num(/#\d+\s+DONE\s+cov: \d+ ft: \d+ corp: (\d+)/),
    crashed,
    artifact,
  };
}

/** Run one target for `seconds` (or `runs` executions). Never throws for a crash: reports it. */
export async function fuzzTarget(target, { seconds, runs, log = console.log } = {}) {
  const scratch = join(FUZZ_DIR, "target", "corpus", target);
  mkdirSync(scratch, { recursive: true });
  const seeds = join(FUZZ_DIR, "corpus", target);
  if (existsSync(seeds)) cpSync(seeds, scratch, { recursive: true });
  const dict = join(FUZZ_DIR, "dict", `${target}.dict`);
  const args = ["+nightly", "fuzz", "run", target, "--fuzz-dir", FUZZ_DIR, scratch, "--"];
  if (seconds) args.push(`-max_total_time=${seconds}`);
  if (runs) args.push(`-runs=${runs}`);
  args.push("-print_final_stats=1", "-timeout=30", "-rss_limit_mb=2048", ...(EXTRA[target] ?? []));
  if (existsSync(dict)) args.push(`-dict=${dict}`);
  log(`[fuzz] ${target}: ${seconds ? `${seconds} s` : `${runs} runs`}`);
  const t0 = Date.now();
  let text;
  let exit = 0;
  try {
    const r = await run("cargo", args, { env: env(), capture: true, timeoutMs: ((seconds ?? 0) + 600) * 1000 + (runs ? 24 * 3600_000 : 0) });
    text = r.stdout + r.stderr;
  } catch (e) {
    if (e.stdout === undefined) throw e;
    text = e.stdout + e.stderr;
    exit = e.code ?? 1;
  }
  const ms = Date.now() - t0;
  const res = { target, ms, exit, ...parseRun(text) };
  if (exit !== 0) res.crashed = true;
  log(`[fuzz] ${target}: ${res.execs ?? "?"} executions in ${(ms / 1000).toFixed(0)} s, ${res.crashed ? "CRASHED" : "no crash"}`);
  if (res.crashed) {
    // The end of libFuzzer's output: the panic message, the stack, the artifact.
    log(text.split("\n").slice(-60).join("\n"));
  }
  return res;
}

export function table(results) {
  const rows = [["target", "time s", "executions", "exec/s", "crashes", "artifact"]];
  for (const r of results) {
    const s = r.ms / 1000;
    rows.push([r.target, s.toFixed(0), String(r.execs ?? "?"), r.execs ? String(Math.round(r.execs / s)) : "?", r.crashed ? "1" : "0", r.artifact ?? (r.crashed ? "(see output)" : "")]);
  }
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(w[i])).join("  ").trimEnd()).join("\n");
}

/** Build, then run each target in turn; returns the results. */
export async function fuzzAll({ seconds, runs, only, log = console.log } = {}) {
  const targets = only?.length ? TARGETS.filter((t) => only.includes(t)) : TARGETS;
  const unknown = (only ?? []).filter((t) => !TARGETS.includes(t));
  if (unknown.length) throw new Error(`unknown fuzz target(s): ${unknown.join(", ")} (known: ${TARGETS.join(", ")})`);
  const buildMs = await buildTargets(log);
  log(`[fuzz] built in ${(buildMs / 1000).toFixed(0)} s`);
  const results = [];
  for (const t of targets) results.push(await fuzzTarget(t, { seconds, runs, log }));
  return { results, buildMs };
}

async function main() {
  const argv = process.argv.slice(2);
  const opt = (name) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  if (argv.includes("--help")) {
    console.log("npm run fuzz -- --seconds N [--only t1,t2] [--runs N] [--write-seeds]\ntargets: " + TARGETS.join(", "));
    return 0;
  }
  if (argv.includes("--write-seeds")) {
    await buildTargets();
    await run(join(FUZZ_DIR, "target", "x86_64-unknown-linux-gnu", "release", "seeds"), [join(FUZZ_DIR, "corpus")]);
    for (const t of TARGETS) console.log(`${t}: ${readdirSync(join(FUZZ_DIR, "corpus", t)).length} seeds`);
    return 0;
  }
  const seconds = opt("--seconds") ? Number(opt("--seconds")) : undefined;
  const runs = opt("--runs") ? Number(opt("--runs")) : undefined;
  if (!seconds && !runs) {
    console.error("say how long: --seconds N (per target) or --runs N");
    return 2;
  }
  const only = opt("--only")?.split(",").filter(Boolean);
  const { results } = await fuzzAll({ seconds, runs, only });
  console.log("\n" + table(results));
  const crashed = results.filter((r) => r.crashed);
  console.log(`\nfuzz: ${results.length - crashed.length} passed, ${crashed.length} failed`);
  return crashed.length ? 1 : 0;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    (code) => process.exit(code),
    (e) => {
      console.error(e.message);
      process.exit(1);
    },
  );
}
