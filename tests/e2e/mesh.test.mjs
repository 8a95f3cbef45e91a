// Issue 3 end to end: three real OpenClaw gateways configured from the spec templates — cloud
// listens, office and home only dial cloud — form one mesh. Home sees office through cloud;
// killing cloud's gateway process is detected by home; starting it again heals the mesh.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { startGateways, agentReplyText } from "../harness/index.mjs";
import { startSuite, endSuite, waitStatus } from "./plugin-package.mjs";
import { freePort } from "../js/free-port.mjs";

const SECRET = "mesh-e2e-secret-0123456789";
let mock;
let pkg;
let cloud;
let office;
let home;
const metrics = {};
/** The suite's runtime, mock LLM and staged plugin (see startSuite / endSuite). */
const fx = {};


const peer = (s, id) => s.peers.find((p) => p.nodeId === id);

before(async () => {
  await startSuite(fx);
  ({ mock, pkg } = fx);
  const { provisioned } = fx;
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
          // cluster_peers is allowed too: the "other tool through office's own gateway" case
          // (POST /tools/invoke runs office's own plugin tool).
          toolProxy: { enabled: true, allow: ["exec", "read", "write", "edit", "cluster_peers"], deny: ["browser"] },
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

after(() => endSuite(fx, metrics, cloud));

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

/** One agent turn on `gw`; returns the reply text (the mock echoes tool results). */
async function turn(gw, message) {
  const t0 = Date.now();
  const text = agentReplyText(await gw.agentTurn(message));
  return { text, ms: Date.now() - t0 };
}

const call = (tool, args) => `call tool ${tool} with ${JSON.stringify(args)}`;

test("home's agent writes, edits, reads and execs on office through cloud", { timeout: 300_000 }, async () => {
  await waitStatus(home, (s) => peer(s, "office-01")?.state === "relayed", 60_000, "office relayed");
  const w = await turn(home, call("cluster_write", { node: "office-01", path: "e2e/notes.txt", content: "hello from home\n" }));
  assert.match(w.text, /TOOL_RESULT\[cluster_write\]:[\s\S]*\[write ran on office-01\][\s\S]*created e2e\/notes\.txt/, w.text);
  assert.equal(readFileSync(join(office.dir, "workspace", "e2e", "notes.txt"), "utf8"), "hello from home\n");

  const e = await turn(home, call("cluster_tool", { node: "office-01", tool: "edit", args: { path: "e2e/notes.txt", oldText: "hello", newText: "bye" } }));
  assert.match(e.text, /TOOL_RESULT\[cluster_tool\]:[\s\S]*\[edit ran on office-01\][\s\S]*edited e2e\/notes\.txt: 1 replacement/, e.text);

  const r = await turn(home, `call tools cluster_read with ${JSON.stringify({ node: "office-01", path: "e2e/notes.txt" })} and cluster_exec with ${JSON.stringify({ node: "tags:gpu", command: "cat e2e/notes.txt; echo on-office", timeout: 30 })}`);
  assert.match(r.text, /TOOL_RESULT\[cluster_read\]:[\s\S]*\[read ran on office-01\]\s*bye from home/, r.text);
  assert.match(r.text, /TOOL_RESULT\[cluster_exec\]:[\s\S]*\[exec ran on office-01\][\s\S]*bye from home[\s\S]*on-office[\s\S]*\[exit code 0\]/, r.text);
  metrics.remoteToolTurnMs = [w.ms, e.ms, r.ms];
});

test("a denied tool and a disabled proxy give clear tool errors", { timeout: 300_000 }, async () => {
  const [denied, disabled] = await Promise.all([
    turn(home, call("cluster_tool", { node: "office-01", tool: "browser", args: {} })),
    turn(office, call("cluster_exec", { node: "home-01", command: "true" })),
  ]);
  assert.match(denied.text, /TOOL_RESULT\[cluster_tool\]:[\s\S]*browser[\s\S]*(denied|deny)[\s\S]*office-01/i, denied.text);
  assert.match(disabled.text, /TOOL_RESULT\[cluster_exec\]:[\s\S]*tool proxy is disabled on home-01/, disabled.text);
  const { status: h } = await waitStatus(home, (s) => s.tools, 10_000, "tools section");
  assert.equal(h.tools.enabled, false);
  assert.ok(h.tools.audit.denied >= 1, JSON.stringify(h.tools));
});

test("another tool goes through office's own gateway (POST /tools/invoke)", { timeout: 300_000 }, async () => {
  const t = await turn(home, call("cluster_tool", { node: "office-01", tool: "cluster_peers", args: {} }));
  assert.match(t.text, /TOOL_RESULT\[cluster_tool\]:[\s\S]*\[cluster_peers ran on office-01\][\s\S]*ClawMatrix node office-01/, t.text);
});

test("office audits every remote call in its audit file and status", { timeout: 120_000 }, async () => {
  const { status: o } = await waitStatus(office, (s) => (s.tools?.audit?.calls ?? 0) >= 6, 30_000, "six audited calls");
  const audit = o.tools.audit;
  assert.equal(o.tools.enabled, true);
  assert.deepEqual(o.tools.allow, ["cluster_peers", "edit", "exec", "read", "write"]);
  assert.ok(audit.denied >= 1, JSON.stringify(audit));
  assert.ok(audit.logPath && existsSync(audit.logPath), `audit file ${audit.logPath}`);
  const lines = readFileSync(audit.logPath, "utf8").trim().split("\n").map((l) => JSON.parse(l));
  const tools = lines.map((l) => l.tool);
  for (const t of ["write", "edit", "read", "exec", "browser", "cluster_peers"]) assert.ok(tools.includes(t), `${t} audited: ${tools}`);
  assert.ok(lines.every((l) => l.caller_node === "home-01"), JSON.stringify(lines));
  assert.equal(lines.find((l) => l.tool === "browser").outcome, "denied");
  const r = await office.cli(["clawmatrix", "status"]);
  assert.match(r.stdout, /Tools: proxy enabled .*served \d+ calls/);
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
