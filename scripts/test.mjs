// npm test: every check and test, on a fresh clone with nothing run before.
//  1. npm deps, addon (debug) and shim build
//  2. lint gates: cargo fmt --check, cargo clippy -D warnings, tsc --noEmit, binding typings drift
//  3. cargo test (unit, simulation, loopback)
//  3b. fuzz: each cargo-fuzz target in tests/fuzz for 15 s (scripts/fuzz.mjs; nightly)
//  4. JS tests (shim with a recording host, mock LLM)
//  5. real-gateway end-to-end tests (provisions Node 24 + the pinned OpenClaw into the cache)
// Prints one closing line "total: N passed, N failed". Exit code 1 if anything failed.
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT, run, build, bin } from "./lib.mjs";

const only = process.env.CLAWMATRIX_TEST_ONLY?.split(",").filter(Boolean); // e.g. "cargo,js"
const want = (step) => !only || only.includes(step);
const results = [];
let passed = 0;
let failed = 0;

async function step(name, fn) {
  const t0 = Date.now();
  console.log(`\n=== ${name}`);
  try {
    // A step either counts its tests ({passed, failed}) or is one check that passed.
    const result = await fn();
    const counts = Number.isInteger(result?.passed) && Number.isInteger(result?.failed) ? result : { passed: 1, failed: 0 };
    passed += counts.passed;
    failed += counts.failed;
    results.push({ name, ok: counts.failed === 0, ms: Date.now() - t0, ...counts });
  } catch (e) {
    const counts = Number.isInteger(e.counts?.passed) && Number.isInteger(e.counts?.failed) ? e.counts : { passed: 0, failed: 1 };
    passed += counts.passed;
    failed += Math.max(1, counts.failed);
    results.push({ name, ok: false, ms: Date.now() - t0, error: e.message, ...counts });
    console.error(`!!! ${name} failed: ${e.message}`);
  }
}

function cargoCounts(text) {
  let p = 0;
  let f = 0;
  for (const m of text.matchAll(/test result: \w+\. (\d+) passed; (\d+) failed/g)) {
    p += Number(m[1]);
    f += Number(m[2]);
  }
  return { passed: p, failed: f };
}

function nodeTestCounts(text) {
  const pass = [...text.matchAll(/^# pass (\d+)/gm)].reduce((a, m) => a + Number(m[1]), 0);
  const fail = [...text.matchAll(/^# fail (\d+)/gm)].reduce((a, m) => a + Number(m[1]), 0);
  return { passed: pass, failed: fail };
}

async function counted(parse, cmd, args, opts = {}) {
  try {
    const r = await run(cmd, args, { tee: true, ...opts });
    const c = parse(r.stdout + r.stderr);
    if (c.passed + c.failed === 0) throw new Error(`${cmd}: ran no test`);
    return c;
  } catch (e) {
    if (e.stdout !== undefined) e.counts = parse(e.stdout + e.stderr);
    throw e;
  }
}

const testFiles = (dir, suffix) =>
  existsSync(join(ROOT, dir))
    ? readdirSync(join(ROOT, dir)).filter((f) => f.endsWith(suffix)).sort().map((f) => join(dir, f))
    : [];

const started = Date.now();
try {
  await build();
} catch (e) {
  console.error(`build failed: ${e.message}`);
  console.log("\ntotal: 0 passed, 1 failed");
  process.exit(1);
}

if (want("lint")) {
  await step("cargo fmt --check", () => run("cargo", ["fmt", "--all", "--", "--check"]));
  await step("cargo clippy --all-targets -D warnings", () =>
    run("cargo", ["clippy", "--all-targets", "--", "-D", "warnings"]),
  );
  await step("tsc --noEmit", () => run(bin("tsc"), ["-p", "tsconfig.json", "--noEmit"]));
  if (existsSync(join(ROOT, ".git"))) {
    await step("generated binding typings are committed (native/index.d.ts)", () =>
      run("git", ["diff", "--exit-code", "--", "native/index.d.ts", "native/index.cjs"]),
    );
  }
}
if (want("cargo")) {
  // --lib --tests: every unit, simulation and loopback test; benches run only under `npm run bench`.
  await step("cargo test", () => counted(cargoCounts, "cargo", ["test", "--lib", "--tests"]));
}
if (want("fuzz")) {
  // Each target briefly from the committed seeds: one passed test per target that ran without
  // a crash. CLAWMATRIX_FUZZ_SECONDS changes the time per target.
  const seconds = Number(process.env.CLAWMATRIX_FUZZ_SECONDS ?? 15);
  await step(`fuzz (${seconds} s per target)`, async () => {
    const { fuzzAll, table } = await import("./fuzz.mjs");
    const { results } = await fuzzAll({ seconds });
    console.log(table(results));
    const bad = results.filter((r) => r.crashed);
    const counts = { passed: results.length - bad.length, failed: bad.length };
    if (bad.length) {
      const names = bad.map((r) => `${r.target} (${r.artifact ?? "see output"})`).join(", ");
      throw Object.assign(new Error(`fuzz target crashed: ${names}`), { counts });
    }
    return counts;
  });
}
if (want("js")) {
  const files = [...testFiles("tests/js", ".test.mjs"), ...testFiles("tests/harness", ".test.mjs")];
  await step("JS tests", () =>
    // The addon was just built in debug: tests that need its debug-only hooks must run, not skip.
    counted(nodeTestCounts, process.execPath, ["--test", "--test-reporter=tap", ...files], {
      timeoutMs: 5 * 60_000,
      env: { ...process.env, CLAWMATRIX_DEBUG_ADDON: "1" },
    }),
  );
}
if (want("e2e")) {
  const files = testFiles("tests/e2e", ".test.mjs");
  // One file at a time: each suite starts its own real gateways (~1 GiB, ~25 s each).
  await step("real-gateway e2e", () =>
    counted(nodeTestCounts, process.execPath, ["--test", "--test-concurrency=1", "--test-reporter=tap", ...files], {
      timeoutMs: 40 * 60_000,
    }),
  );
}

console.log("\n=== summary");
for (const r of results) {
  const counts = r.passed + r.failed > 1 ? ` (${r.passed} passed, ${r.failed} failed)` : "";
  console.log(`${r.ok ? "ok  " : "FAIL"} ${r.name}${counts} ${(r.ms / 1000).toFixed(1)} s${r.error ? ` - ${r.error}` : ""}`);
}
console.log(`wall time ${((Date.now() - started) / 1000).toFixed(0)} s`);
console.log(`\ntotal: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
