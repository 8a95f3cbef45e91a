// Issue 3 end to end: three real OpenClaw gateways configured from the spec templates — cloud
// listens, office and home only dial cloud — form one mesh. Home sees office through cloud;
// killing cloud's gateway process is detected by home; starting it again heals the mesh.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { dirname } from "node:path";
import { provision, startMockLlm, startGateways, stopAll, cleanRunDir, agentReplyText } from "../harness/index.mjs";
import { stagePlugin } from "./plugin-package.mjs";
import { freePort } from "../js/free-port.mjs";

const SECRET = "mesh-e2e-secret-0123456789";
let mock;
let pkg;
let cloud;
let office;
let home;
const metrics = {};

/** Poll `gw`'s clawmatrix.status until `pred(status)` holds; returns the status and the wait. */
async function waitStatus(gw, pred, timeoutMs, what) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < timeoutMs) {
    last = await gw.call("clawmatrix.status", {}, { timeoutMs: 15_000 }).catch((e) => ({ error: e.message }));
    if (!last.error && pred(last)) return { status: last, ms: Date.now() - t0 };
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`${gw.name}: ${what} not seen within ${timeoutMs} ms; last status: ${JSON.stringify(last)}`);
}

const peer = (s, id) => s.peers.find((p) => p.nodeId === id);

before(async () => {
  const provisioned = await provision();
  mock = await startMockLlm();
  pkg = stagePlugin();
  const cloudPort = await freePort();
  const url = `ws://127.0.0.1:${cloudPort}`;
  const base = { secret: SECRET };
  const proxyPorts = [await freePort(), await freePort(), await freePort()];
  [cloud, office, home] = await startGateways(
    [
      {
        name: "cloud",
        pluginConfig: { ...base, nodeId: "cloud-01", listen: true, listenHost: "127.0.0.1", listenPort: cloudPort, peers: [], proxyPort: proxyPorts[0], agents: [{ id: "reviewer", description: "Reviews code", tags: ["review"] }], tags: ["cloud"] },
      },
      {
        name: "office",
        pluginConfig: {
          ...base,
          nodeId: "office-01",
          proxyPort: proxyPorts[1],
          peers: [{ nodeId: "cloud-01", url }],
          agents: [{ id: "coder", description: "Has the repos", tags: ["coding"] }],
          models: [{ id: "mock-model", provider: "mock" }],
          tags: ["office", "gpu"],
          toolProxy: { enabled: true, allow: ["exec", "read", "write", "edit"], deny: ["browser"] },
        },
      },
      {
        name: "home",
        pluginConfig: {
          ...base,
          nodeId: "home-01",
          proxyPort: proxyPorts[2],
          peers: [{ nodeId: "cloud-01", url }],
          agents: [{ id: "assistant", description: "Personal assistant", tags: ["general"] }],
          proxyModels: [{ id: "mock-model", nodeId: "office-01" }],
          tags: ["home"],
        },
      },
    ],
    { provisioned, mockUrl: mock.url, pluginDir: pkg.dir },
  );
  metrics.readyMs = [cloud, office, home].map((g) => g.timings.readyMs);
}, { timeout: 15 * 60_000 });

after(async () => {
  console.log(`[metrics] ${JSON.stringify(metrics)}`);
  await stopAll();
  await mock?.close();
  if (cloud && !process.env.CLAWMATRIX_KEEP_RUN) cleanRunDir(dirname(cloud.dir));
  if (pkg) rmSync(pkg.tmp, { recursive: true, force: true });
});

test("the three gateways form one mesh: home reaches office via cloud", { timeout: 180_000 }, async () => {
  const { status: h, ms } = await waitStatus(
    home,
    (s) => peer(s, "office-01")?.state === "relayed" && peer(s, "cloud-01")?.state === "direct",
    120_000,
    "office relayed via cloud",
  );
  metrics.meshFormedMs = ms;
  const o = peer(h, "office-01");
  assert.equal(o.reachableVia, "cloud-01");
  assert.equal(o.hops, 2);
  assert.equal(o.connected, false);
  assert.deepEqual(o.agents.map((a) => a.id), ["coder"]);
  assert.deepEqual(o.models.map((m) => m.id), ["mock-model"]);
  assert.deepEqual(o.tags, ["office", "gpu"]);
  assert.equal(peer(h, "cloud-01").connected, true);

  const { status: c } = await waitStatus(cloud, (s) => s.peers.filter((p) => p.state === "direct").length === 2, 60_000, "two direct links");
  assert.deepEqual(c.peers.map((p) => p.nodeId).sort(), ["home-01", "office-01"]);
  const { status: of } = await waitStatus(office, (s) => peer(s, "home-01")?.state === "relayed", 60_000, "home relayed");
  assert.equal(peer(of, "home-01").reachableVia, "cloud-01");
});

test("openclaw clawmatrix status on home shows office reachable via cloud", { timeout: 120_000 }, async () => {
  const r = await home.cli(["clawmatrix", "status"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /ClawMatrix node home-01/);
  assert.match(r.stdout, /Peers \(1\/2 connected\)/);
  assert.match(r.stdout, /cloud-01: connected directly/);
  assert.match(r.stdout, /office-01: reachable via cloud-01 \(2 hops\)/);
  assert.match(r.stdout, /agents: coder/);
});

test("home's agent sees the mesh through cluster_peers", { timeout: 180_000 }, async () => {
  const res = await home.agentTurn("call tool cluster_peers with {}");
  const text = agentReplyText(res);
  assert.match(text, /TOOL_RESULT\[cluster_peers\]:[\s\S]*office-01: reachable via cloud-01 \(2 hops\)/, text);
});

test("killing cloud's gateway is detected by home; restarting it heals the mesh", { timeout: 400_000 }, async () => {
  await cloud.stop({ signal: "SIGKILL" });
  const down = await waitStatus(
    home,
    (s) => peer(s, "cloud-01")?.state === "unreachable" && peer(s, "office-01")?.state === "unreachable",
    60_000,
    "cloud and office unreachable",
  );
  metrics.crashDetectedMs = down.ms;
  assert.ok(down.ms < 20_000, `a crashed relay is seen from the closed socket, not the heartbeat bound (${down.ms} ms)`);

  await cloud.restart();
  const healed = await waitStatus(
    home,
    (s) => peer(s, "office-01")?.state === "relayed" && peer(s, "cloud-01")?.state === "direct",
    150_000,
    "mesh healed",
  );
  metrics.healedAfterReadyMs = healed.ms;
});
