// npm run demo: the product's main job on this machine, from a fresh clone.
// Builds the addon and shim, provisions Node 24 + the pinned OpenClaw into the cache, starts a
// mock LLM upstream and real OpenClaw gateways on loopback with clawmatrix loaded, and prints
// what an operator sees (`openclaw clawmatrix status`). Everything is stopped at the end unless
// --keep is given (then Ctrl-C stops it).
//
// Today: one gateway with the "office" template. The mesh issues grow this into cloud + office +
// home meshed on loopback.
import { rmSync } from "node:fs";
import { build } from "./lib.mjs";

const keep = process.argv.includes("--keep");
const t0 = Date.now();
const step = (m) => console.log(`[demo +${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);

await build();
const { provision, startMockLlm, startGateways, stopAll } = await import("../tests/harness/index.mjs");
const { stagePlugin } = await import("../tests/e2e/plugin-package.mjs");
const { freePort } = await import("../tests/js/free-port.mjs");

step("provisioning Node 24 + OpenClaw (cached after the first run)");
const provisioned = await provision({ log: (m) => step(m) });
const mock = await startMockLlm();
step(`mock LLM upstream on ${mock.url}`);
const pkg = stagePlugin();
let exitCode = 0;
try {
  const office = {
    nodeId: "office-01",
    secret: "demo-mesh-secret-change-me",
    listen: false,
    peers: [],
    agents: [{ id: "coder", description: "Has the code repos; can read, write and run commands", tags: ["coding"] }],
    models: [{ id: "mock-model", provider: "mock", description: "Demo model served by the mock upstream" }],
    tags: ["office", "gpu"],
    proxyPort: await freePort(),
    toolProxy: { enabled: true, allow: ["exec", "read", "write", "edit"], deny: [] },
  };
  step("starting the office gateway (a real OpenClaw gateway takes ~25 s)");
  const [gw] = await startGateways([{ name: "office", pluginConfig: office }], { provisioned, mockUrl: mock.url, pluginDir: pkg.dir });
  step(`office gateway ready on ${gw.url} (state in ${gw.dir})`);
  const status = await gw.cli(["clawmatrix", "status"]);
  if (status.code !== 0) throw new Error(`clawmatrix status failed:\n${status.stderr}`);
  console.log(`\n$ openclaw clawmatrix status   # on office\n${status.stdout}`);
  if (keep) {
    step("running; press Ctrl-C to stop");
    await new Promise((resolve) => process.once("SIGINT", resolve));
  }
} catch (e) {
  console.error(`demo failed: ${e.message}`);
  exitCode = 1;
} finally {
  await stopAll();
  await mock.close();
  rmSync(pkg.tmp, { recursive: true, force: true });
  step("stopped");
}
process.exit(exitCode);
