// The shim against a recording host: what it registers, and that calls reach the Rust core and
// come back with the core's error codes. No OpenClaw here; the e2e suite covers the real host.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import entry from "../../dist/index.js";
import { freePort, portIsFree } from "./free-port.mjs";

const manifest = JSON.parse(readFileSync(new URL("../../openclaw.plugin.json", import.meta.url), "utf8"));

function recordingHost(pluginConfig) {
  const rec = { services: [], tools: [], methods: [], cli: [], logs: [] };
  const logger = {
    info: (m) => rec.logs.push(["info", m]),
    warn: (m) => rec.logs.push(["warn", m]),
    error: (m) => rec.logs.push(["error", m]),
    debug: (m) => rec.logs.push(["debug", m]),
  };
  const api = {
    id: "clawmatrix",
    registrationMode: "full",
    pluginConfig,
    logger,
    registerService: (s) => rec.services.push(s),
    // Tools are registered in the factory form (to learn the calling agent); resolve them with a
    // tool context the way OpenClaw does per run.
    registerTool: (t, opts) =>
      rec.tools.push({ tool: typeof t === "function" ? t({ agentId: "main", sessionKey: "agent:main:main" }) : t, opts, factory: typeof t === "function" }),
    registerGatewayMethod: (name, handler, opts) => rec.methods.push({ name, handler, opts }),
    registerCli: (registrar, opts) => rec.cli.push({ registrar, opts }),
  };
  return { api, rec, logger };
}

async function callMethod(rec, name, params = {}) {
  const m = rec.methods.find((x) => x.name === name);
  return await new Promise((resolve) => m.handler({ params, respond: (ok, payload, error) => resolve({ ok, payload, error }) }));
}

test("register() registers the service, seven tools, two read-scoped methods, the admin trust reset and the CLI, and starts nothing", async () => {
  const { api, rec } = recordingHost({ nodeId: "n1", secret: "0123456789abcdef", proxyPort: await freePort() });
  entry.register(api);
  assert.equal(entry.id, manifest.id);
  assert.equal(rec.services.length, 1);
  assert.deepEqual(rec.tools.map((t) => t.tool.name), manifest.contracts.tools);
  for (const { tool, opts } of rec.tools) {
    assert.equal(opts.name, tool.name);
    assert.ok(tool.label.length > 0, `${tool.name} has a label`);
    assert.equal(tool.parameters.type, "object");
    assert.equal(typeof tool.execute, "function");
  }
  assert.deepEqual(rec.methods.map((m) => [m.name, m.opts.scope]), [
    ["clawmatrix.status", "operator.read"],
    ["clawmatrix.peers", "operator.read"],
    ["clawmatrix.trustReset", "operator.admin"],
  ]);
  assert.deepEqual(rec.cli[0].opts.descriptors.map((d) => d.name), manifest.cliCommands.map((c) => c.name));
  // Nothing started: the methods answer "not running".
  const r = await callMethod(rec, "clawmatrix.status");
  assert.equal(r.ok, false);
  assert.equal(r.error.code, "CLAWMATRIX_NOT_RUNNING");
});

test("service start binds the proxy, tools and methods reach the core, stop releases the port, restart works", async () => {
  const proxyPort = await freePort();
  const listenPort = await freePort();
  const { api, rec, logger } = recordingHost({
    nodeId: "office-01",
    secret: "0123456789abcdef",
    listen: true,
    listenHost: "127.0.0.1",
    listenPort,
    proxyPort,
    agents: [{ id: "coder", description: "repo access", tags: ["coding"] }],
    models: [{ id: "m1", provider: "mock" }],
    tags: ["office", "gpu"],
  });
  entry.register(api);
  const svc = rec.services[0];
  const stateDir = mkdtempSync(join(tmpdir(), "cm-shim-"));
  try {
    await svc.start({ stateDir, logger });
    assert.equal(await portIsFree(proxyPort), false, "proxy port bound");
    assert.equal(await portIsFree(listenPort), false, "listen port bound");

    const status = (await callMethod(rec, "clawmatrix.status")).payload;
    assert.equal(status.nodeId, "office-01");
    assert.equal(status.listen, listenPort);
    assert.equal(status.proxyPort, proxyPort);
    assert.deepEqual(status.agents.map((a) => a.id), ["coder"]);
    assert.deepEqual(status.models.map((m) => m.id), ["m1"]);
    assert.deepEqual(status.tags, ["office", "gpu"]);
    assert.deepEqual((await callMethod(rec, "clawmatrix.peers")).payload, []);
    // The node key was created in the state dir and is in status; trust reset answers.
    assert.match(status.identity.fingerprint, /^ed25519:[0-9a-f]{32}$/);
    assert.equal(status.identity.keyFile, join(stateDir, "node.key"));
    assert.deepEqual(status.identity.trust, []);
    const reset = await callMethod(rec, "clawmatrix.trustReset", { nodeId: "ghost" });
    assert.equal(reset.ok, true);
    assert.deepEqual(reset.payload, { message: "no key was trusted for ghost; nothing to reset", nodeId: "ghost", reset: false });
    const bad = await callMethod(rec, "clawmatrix.trustReset", { nodeId: "not an id" });
    assert.equal(bad.ok, false);
    assert.equal(bad.error.code, "CLAWMATRIX_INVALID_ARGUMENT");

    const tool = (name) => rec.tools.find((t) => t.tool.name === name).tool;
    const peers = await tool("cluster_peers").execute("c1", {});
    assert.match(peers.content[0].text, /ClawMatrix node office-01/);
    assert.equal(peers.details.nodeId, "office-01");

    await assert.rejects(tool("cluster_exec").execute("c2", { node: "x", command: "ls" }), (e) => {
      assert.equal(e.code, "CLAWMATRIX_UNREACHABLE");
      assert.match(e.message, /cluster_exec: node x is not reachable from office-01/);
      return true;
    });
    await assert.rejects(tool("cluster_handoff").execute("c4", { target: "coder", task: "t" }), (e) => {
      assert.equal(e.code, "CLAWMATRIX_UNREACHABLE");
      assert.match(e.message, /no reachable node offers agent "coder"/);
      return true;
    });
    // An already-aborted signal cancels the call before it runs: CANCELLED, although the
    // route lookup for "x" would fail on its own (the core lets the cancel win that race).
    const aborted = AbortSignal.abort();
    await assert.rejects(tool("cluster_exec").execute("c5", { node: "x", command: "ls" }, aborted), (e) => {
      assert.equal(e.code, "CLAWMATRIX_CANCELLED");
      return true;
    });
    await assert.rejects(tool("cluster_exec").execute("c3", { node: "x" }), (e) => {
      assert.equal(e.code, "CLAWMATRIX_INVALID_ARGUMENT");
      assert.match(e.message, /cluster_exec\.command: required/);
      return true;
    });

    await svc.stop({ stateDir, logger });
    assert.equal(await portIsFree(proxyPort), true, "proxy port released");
    assert.equal(await portIsFree(listenPort), true, "listen port released");
    await svc.stop({ stateDir, logger }); // idempotent

    await svc.start({ stateDir, logger });
    assert.equal(await portIsFree(proxyPort), false, "proxy port bound again");
    await svc.stop({ stateDir, logger });
  } finally {
    // A failed assertion must not leave the node running (its pending pulls would keep this
    // test process alive).
    await svc.stop({ stateDir, logger });
    rmSync(stateDir, { recursive: true, force: true });
  }
});

test("an invalid config fails start with CLAWMATRIX_CONFIG_INVALID naming the field", async () => {
  const { api, rec, logger } = recordingHost({ nodeId: "n1", secret: "short" });
  entry.register(api);
  await assert.rejects(rec.services[0].start({ stateDir: tmpdir(), logger }), (e) => {
    assert.equal(e.code, "CLAWMATRIX_CONFIG_INVALID");
    assert.match(e.message, /secret/);
    return true;
  });
});

test("a port already in use fails start with CLAWMATRIX_BIND_FAILED naming the field", async () => {
  const { createServer } = await import("node:net");
  const blocker = createServer();
  await new Promise((r) => blocker.listen(0, "127.0.0.1", r));
  const port = blocker.address().port;
  const { api, rec, logger } = recordingHost({ nodeId: "n1", secret: "0123456789abcdef", proxyPort: port });
  entry.register(api);
  try {
    await assert.rejects(rec.services[0].start({ stateDir: tmpdir(), logger }), (e) => {
      assert.equal(e.code, "CLAWMATRIX_BIND_FAILED");
      assert.match(e.message, new RegExp(`proxyPort: cannot bind 127.0.0.1:${port}`));
      return true;
    });
  } finally {
    blocker.close();
  }
});

test("a SecretRef-style gateway token in the host config does not break the service start", async () => {
  const { api, rec, logger } = recordingHost({ nodeId: "n1", secret: "0123456789abcdef", proxyPort: await freePort() });
  api.config = { gateway: { port: 18789, auth: { token: { source: "env", provider: "default", id: "GW_TOKEN" } } } };
  entry.register(api);
  const stateDir = mkdtempSync(join(tmpdir(), "cm-shim-"));
  try {
    await rec.services[0].start({ stateDir, logger });
    const status = (await callMethod(rec, "clawmatrix.status")).payload;
    assert.equal(status.nodeId, "n1");
    assert.equal(status.running, true);
    await rec.services[0].stop({ stateDir, logger });
  } finally {
    rmSync(stateDir, { recursive: true, force: true });
  }
});
