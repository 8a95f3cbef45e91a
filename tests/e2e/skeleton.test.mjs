// Issue 2 end to end on real OpenClaw gateways (pinned 2026.9.6): the plugin loads, registers
// its tools/methods/service/CLI, answers status, serves cluster_peers to a real agent turn,
// restarts cleanly on a config change, and bad config is refused naming the field. A second
// gateway proves the release path (npm pack -> `plugins install npm-pack:`).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { provision, startGateways, agentReplyText } from "../harness/index.mjs";
import { startSuite, endSuite } from "./plugin-package.mjs";
import { freePort, portIsFree } from "../js/free-port.mjs";

const SECRET = "e2e-secret-0123456789";
let mock;
let pkg;
let solo; // plugin installed in dev mode: `openclaw plugins install -l <extracted package>`
let packed; // installs the npm-pack tarball (release path) later
const ports = {};
const metrics = {};
/** The suite's runtime, mock LLM and staged plugin (see startSuite / endSuite). */
const fx = {};
const SOLO_CONFIG = () => ({
  nodeId: "solo-01",
  secret: SECRET,
  listen: true,
  listenHost: "127.0.0.1",
  listenPort: ports.listen,
  proxyPort: ports.proxy,
  agents: [{ id: "main", description: "the main agent", tags: ["general"] }],
  models: [{ id: "mock-model", provider: "mock", description: "the mock" }],
  tags: ["e2e", "solo"],
});

before(async () => {
  await startSuite(fx, { log: (m) => console.log(`[provision] ${m}`) });
  ({ mock, pkg } = fx);
  const { provisioned } = fx;
  ports.listen = await freePort();
  ports.proxy = await freePort();
  // Both start without clawmatrix: the baseline for the RSS comparison.
  [solo, packed] = await startGateways([{ name: "solo" }, { name: "packed" }], { provisioned, mockUrl: mock.url });
  metrics.readyMs = { solo: solo.timings.readyMs, packed: packed.timings.readyMs };
  await new Promise((r) => setTimeout(r, 10_000));
  metrics.idleRssBeforeKiB = { solo: solo.rss().mainKiB, packed: packed.rss().mainKiB };

  const install = await solo.cli(["plugins", "install", "-l", pkg.dir, "--force", "--accept-capabilities"], { timeoutMs: 180_000 });
  assert.equal(install.code, 0, `plugins install -l: ${install.stdout}\n${install.stderr}`);
  const cfg = solo.readConfig();
  cfg.plugins ??= {};
  cfg.plugins.entries ??= {};
  assert.ok(JSON.stringify(cfg.plugins.load?.paths ?? []).includes(pkg.dir), "install -l adds the folder to plugins.load.paths");
  cfg.plugins.entries.clawmatrix = { ...(cfg.plugins.entries.clawmatrix ?? {}), enabled: true, config: SOLO_CONFIG() };
  solo.writeConfig(cfg);
  await solo.waitForLog(/clawmatrix: node solo-01 started/, 120_000);
  // RSS with and without the plugin, measured at the same moment, both idle.
  await new Promise((r) => setTimeout(r, 10_000));
  metrics.idleRssKiB = { withPlugin: solo.rss().mainKiB, withoutPlugin: packed.rss().mainKiB };
}, { timeout: 15 * 60_000 });

after(() => endSuite(fx, metrics, solo));

test("plugins inspect shows the seven tools, both methods and the service, without diagnostics", { timeout: 120_000 }, async () => {
  const r = await solo.cli(["plugins", "inspect", "clawmatrix", "--runtime", "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout.slice(r.stdout.indexOf("{")));
  const text = JSON.stringify(info);
  for (const t of ["cluster_peers", "cluster_handoff", "cluster_send", "cluster_exec", "cluster_read", "cluster_write", "cluster_tool"]) {
    assert.ok(text.includes(`"${t}"`), `inspect lists ${t}: ${text.slice(0, 2000)}`);
  }
  assert.ok(text.includes("clawmatrix.status") && text.includes("clawmatrix.peers"), "both methods");
  const diags = JSON.stringify(info.diagnostics ?? info.plugin?.diagnostics ?? []);
  assert.ok(!/error/i.test(diags), `no error diagnostics: ${diags}`);
  metrics.inspect = { services: info.services ?? info.plugin?.services };
});

test("the service is running: ports bound, load time logged", { timeout: 60_000 }, async () => {
  assert.equal(await portIsFree(ports.proxy), false, "proxy port bound");
  assert.equal(await portIsFree(ports.listen), false, "mesh port bound");
  await solo.waitForLog(/clawmatrix: node solo-01 started/, 30_000);
  const line = await solo.waitForLog(/clawmatrix: service started in [\d.]+ ms \(addon loaded in [\d.]+ ms\)/, 30_000);
  metrics.serviceStart = String(line).match(/service started in [\d.]+ ms \(addon loaded in [\d.]+ ms\)/)?.[0];
});

test("openclaw clawmatrix status prints id, listen port, proxy port, agents, models, tags", { timeout: 120_000 }, async () => {
  const r = await solo.cli(["clawmatrix", "status"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /ClawMatrix node solo-01/);
  assert.match(r.stdout, new RegExp(`listening on 127\\.0\\.0\\.1:${ports.listen}`));
  assert.match(r.stdout, new RegExp(`127\\.0\\.0\\.1:${ports.proxy}/v1`));
  assert.match(r.stdout, /Agents: main/);
  assert.match(r.stdout, /Models: mock-model/);
  assert.match(r.stdout, /Tags: e2e, solo/);
  assert.match(r.stdout, /Peers \(0\/0 connected\)/);

  const peers = await solo.cli(["clawmatrix", "peers"]);
  assert.equal(peers.code, 0, peers.stderr);
  assert.deepEqual(JSON.parse(peers.stdout), []);
});

test("gateway method clawmatrix.status returns the 0.1.8 shape", { timeout: 60_000 }, async () => {
  const s = await solo.call("clawmatrix.status");
  assert.equal(s.nodeId, "solo-01");
  assert.equal(s.listen, ports.listen);
  assert.equal(s.proxyPort, ports.proxy);
  assert.deepEqual(s.tags, ["e2e", "solo"]);
  assert.deepEqual(s.peers, []);
});

test("a real agent turn calls cluster_peers and gets this node's data", { timeout: 180_000 }, async () => {
  const res = await solo.agentTurn("call tool cluster_peers with {}");
  const text = agentReplyText(res);
  assert.match(text, /TOOL_RESULT\[cluster_peers\]: ClawMatrix node solo-01/, JSON.stringify(res).slice(0, 2000));
  const offered = mock.requests.some((r) => (r.tools ?? []).includes("cluster_peers"));
  assert.ok(offered, "the model was offered cluster_peers");
});

test("a handoff with no node to go to returns a clear tool error to the agent", { timeout: 180_000 }, async () => {
  const res = await solo.agentTurn('call tool cluster_handoff with {"target":"coder","task":"say hi"}');
  const text = agentReplyText(res);
  assert.match(text, /TOOL_RESULT\[cluster_handoff\]:.*no reachable node offers agent \\?"coder\\?"/s, text);
});

test("remote tools refuse this node itself as the target, naming the argument", { timeout: 180_000 }, async () => {
  const res = await solo.agentTurn('call tool cluster_exec with {"node":"solo-01","command":"true"}');
  const text = agentReplyText(res);
  assert.match(text, /TOOL_RESULT\[cluster_exec\]:.*solo-01.*this node/s, text);
});

test("an invalid config is refused naming the field, and the running service is kept", { timeout: 180_000 }, async () => {
  const r = await solo.cli(["config", "set", "plugins.entries.clawmatrix.config.listenPort", "99999"]);
  assert.notEqual(r.code, 0, "config set must fail");
  assert.match(r.stdout + r.stderr, /listenPort/);
  const r2 = await solo.cli(["config", "set", "plugins.entries.clawmatrix.config.secret", '"short"']);
  assert.notEqual(r2.code, 0, "a short secret must be refused");
  assert.match(r2.stdout + r2.stderr, /secret/);
  const s = await solo.call("clawmatrix.status");
  assert.equal(s.listen, ports.listen, "old config still serving");
});

test("changing the plugin config restarts the service: old ports released, new ones bound", { timeout: 180_000 }, async () => {
  const newListen = await freePort();
  const newProxy = await freePort();
  const cfg = solo.readConfig();
  Object.assign(cfg.plugins.entries.clawmatrix.config, { listenPort: newListen, proxyPort: newProxy, tags: ["e2e", "moved"] });
  const mark = solo.logMark();
  solo.writeConfig(cfg);
  await solo.waitForLog(/clawmatrix: node solo-01 stopped/, 90_000, { since: mark });
  await solo.waitForLog(/clawmatrix: node solo-01 started/, 90_000, { since: mark });
  const deadline = Date.now() + 30_000;
  let s;
  while (Date.now() < deadline) {
    s = await solo.call("clawmatrix.status").catch(() => undefined);
    if (s?.listen === newListen) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(s?.listen, newListen);
  assert.equal(s?.proxyPort, newProxy);
  assert.deepEqual(s?.tags, ["e2e", "moved"]);
  assert.equal(await portIsFree(ports.listen), true, "old mesh port released");
  assert.equal(await portIsFree(ports.proxy), true, "old proxy port released");
  assert.equal(await portIsFree(newListen), false, "new mesh port bound");
  assert.equal(await portIsFree(newProxy), false, "new proxy port bound");
  ports.listen = newListen;
  ports.proxy = newProxy;
});

test("release path: npm pack tarball installs with npm-pack: and runs", { timeout: 300_000 }, async () => {
  const install = await packed.cli(["plugins", "install", `npm-pack:${pkg.tgz}`, "--force", "--accept-capabilities"], { timeoutMs: 240_000 });
  assert.equal(install.code, 0, `${install.stdout}\n${install.stderr}`);
  const proxyPort = await freePort();
  const cfg = packed.readConfig();
  cfg.plugins ??= {};
  cfg.plugins.entries ??= {};
  cfg.plugins.entries.clawmatrix = { ...(cfg.plugins.entries.clawmatrix ?? {}), enabled: true, config: { nodeId: "packed-01", secret: SECRET, proxyPort, agents: [{ id: "main", description: "", tags: [] }] } };
  packed.writeConfig(cfg);
  await packed.waitForLog(/clawmatrix: node packed-01 started/, 120_000);
  const s = await packed.call("clawmatrix.status");
  assert.equal(s.nodeId, "packed-01");
  // The CLI of an npm-pack install reaches OpenClaw's gateway client too.
  const cli = await packed.cli(["clawmatrix", "status"]);
  assert.equal(cli.code, 0, `${cli.stdout}\n${cli.stderr}`);
  assert.match(cli.stdout, /ClawMatrix node packed-01/);
  assert.equal(s.listen, false);
  assert.equal(await portIsFree(proxyPort), false);
});

test("the CLI reports an unreachable gateway in one line with exit code 1", { timeout: 180_000 }, async () => {
  await packed.stop();
  const r = await packed.cli(["clawmatrix", "status"]);
  assert.equal(r.code, 1, `${r.stdout}\n${r.stderr}`);
  const line = r.stderr.split("\n").find((l) => l.startsWith("clawmatrix: cannot reach the gateway"));
  assert.ok(line, r.stderr);
});
