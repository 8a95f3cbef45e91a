// npm run lab -- [--minutes N] [--all] [--no-build]
//
// The network fault lab's long lossy run (issue 18): the `lossy` scenario of
// tests/e2e/faults.test.mjs (2 % of chunks delayed 300 ± 100 ms on every link while home runs
// handoffs and tool reads through two relays) for N minutes (default 10), printing its figures
// (the `[lab]` and `[metrics]` lines). --all runs the suite's other scenarios after it.
import { parseArgs } from "node:util";
import { ROOT, run, build } from "./lib.mjs";

const { values: opt } = parseArgs({
  options: {
    minutes: { type: "string", default: "10" },
    all: { type: "boolean", default: false },
    "no-build": { type: "boolean", default: false },
  },
});
if (!(Number(opt.minutes) > 0)) {
  console.error("lab: --minutes must be a number > 0");
  process.exit(2);
}
if (!opt["no-build"]) await build();
const args = ["--test", "--test-reporter=spec"];
if (!opt.all) args.push("--test-name-pattern=^lossy links");
args.push("tests/e2e/faults.test.mjs");
try {
  await run(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, CLAWMATRIX_LAB_LOSSY_MINUTES: opt.minutes },
    timeoutMs: (Number(opt.minutes) + 30) * 60_000,
  });
} catch (e) {
  console.error(`lab: ${e.message}`);
  process.exit(1);
}
