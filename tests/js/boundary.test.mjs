// The JS boundary of the binding: what its methods return is typed data in the shapes of
// native/index.d.ts (the status keeps the JSON the CLI prints), every error it reports has one
// shape (an Error with a stable `code`), and a panic in the core is such an error instead of
// the end of the process.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";
import { freePort } from "./free-port.mjs";

const require = createRequire(import.meta.url);
const native = require("../../native/index.cjs");
const SECRET = "boundary-test-secret-0123";

/** Every object in `v` (arrays walked) has its keys in sorted order; returns the paths that do not. */
function unsorted(v, path = "$") {
  if (Array.isArray(v)) return v.flatMap((x, i) => unsorted(x, `${path}[${i}]`));
  if (v === null || typeof v !== "object") return [];
  const keys = Object.keys(v);
  const bad = keys.join() === [...keys].sort().join() ? [] : [`${path}: ${keys.join(",")}`];
  return bad.concat(keys.flatMap((k) => unsorted(v[k], `${path}.${k}`)));
}

/** Assert `e` is the binding's one error shape with code `code`. */
function coded(code, message) {
  return (e) => {
    assert.ok(e instanceof Error, `an Error, got ${e}`);
    assert.equal(e.code, code, e.message);
    assert.ok(!e.message.startsWith("CLAWMATRIX_"), `the message is the core's, without a code prefix: ${e.message}`);
    if (message) assert.match(e.message, message);
    return true;
  };
}

async function linkedPair(extraA = {}) {
  const listenPort = await freePort();
  const a = native.ClawMatrixNode.create({
    nodeId: "a", secret: SECRET, listen: true, listenHost: "127.0.0.1", listenPort, proxyPort: await freePort(),
    agents: [{ id: "coder", description: "repo access", tags: ["coding"] }],
    models: [{ id: "m1", provider: "mock" }],
    ...extraA,
  });
  const b = native.ClawMatrixNode.create({
    nodeId: "b", secret: SECRET, proxyPort: await freePort(), peers: [{ nodeId: "a", url: `ws://127.0.0.1:${listenPort}` }],
  });
  await a.start({});
  await b.start({});
  const deadline = Date.now() + 15_000;
  while (!b.peers().some((p) => p.nodeId === "a" && p.state === "direct")) {
    assert.ok(Date.now() < deadline, "b links to a within 15 s");
    await new Promise((r) => setTimeout(r, 50));
  }
  return { a, b, listenPort };
}

async function drain(call) {
  for (let i = 0; i < 1_000; i++) {
    const step = await call.next();
    assert.ok(step, "a result before the end");
    assert.ok(["progress", "result"].includes(step.kind), step.kind);
    if (step.kind === "result") return step;
  }
  throw new Error("no result");
}

test("status and peers are typed objects whose keys keep the order and nulls of the report JSON", { timeout: 30_000 }, async () => {
  const root = mkdtempSync(join(tmpdir(), "clawmatrix-boundary-"));
  writeFileSync(join(root, "f.txt"), "hello\n");
  const { a, b, listenPort } = await linkedPair({ toolProxy: { enabled: true, allow: ["read"], deny: [], root } });
  try {
    await drain(b.invokeTool("cluster_read", { node: "a", path: "f.txt" }));
    const s = a.status();
    assert.equal(s.nodeId, "a");
    assert.equal(s.running, true);
    assert.equal(s.listen, listenPort);
    assert.equal(s.listenAddr, `127.0.0.1:${listenPort}`);
    assert.deepEqual(s.agents, [{ description: "repo access", id: "coder", tags: ["coding"] }]);
    assert.deepEqual(s.models, [{ id: "m1", provider: "mock" }], "an absent description stays absent");
    assert.equal(typeof s.mesh.linksUp, "number");
    assert.equal(typeof s.mesh.dropped, "object");
    assert.equal(s.tools.enabled, true);
    assert.equal(s.tools.audit.calls, 1);
    assert.equal(s.tools.audit.last.tool, "read");
    assert.equal(s.tools.audit.last.callerAgent, null, "a None that JSON wrote as null is null");
    assert.equal(typeof s.handoffs.recent.length, "number");
    assert.equal("failed" in s, false, "a skipped field is absent");
    const [peer] = s.peers;
    assert.equal(peer.nodeId, "b");
    assert.equal(peer.state, "direct");
    assert.equal(peer.hops, 1);
    assert.ok("reachableVia" in peer && peer.reachableVia === null);
    assert.deepEqual(unsorted(s), [], "keys in the order the JSON report had (sorted)");
    assert.deepEqual(b.peers().map((p) => p.nodeId), ["a"]);
    assert.deepEqual(unsorted(b.peers()), []);
    // What the gateway method sends is JSON: the typed report survives it whole.
    assert.deepEqual(JSON.parse(JSON.stringify(s)), s);
    assert.match(native.renderStatusText(JSON.parse(JSON.stringify(s))), /ClawMatrix node a/);
  } finally {
    await b.stop();
    await a.stop();
    rmSync(root, { recursive: true, force: true });
  }
  const stopped = a.status();
  assert.equal(stopped.running, false);
  assert.equal("tools" in stopped, false);
  assert.deepEqual(stopped.peers, []);
});

test("tool definitions, the provider plan and events are typed data", { timeout: 30_000 }, async () => {
  const defs = native.toolDefinitions();
  assert.equal(defs.length, 7);
  for (const d of defs) {
    assert.deepEqual(Object.keys(d), ["name", "label", "description", "parameters", "sideEffecting"]);
    assert.equal(d.parameters.type, "object");
    assert.equal(typeof d.sideEffecting, "boolean");
  }
  const plan = native.planProviders(null, { "clawmatrix-x": { baseUrl: "http://127.0.0.1:1/node/x/v1", models: [] } });
  assert.deepEqual(plan, {
    added: ["clawmatrix-x"], changed: true, conflicts: [],
    providers: { "clawmatrix-x": { baseUrl: "http://127.0.0.1:1/node/x/v1", models: [] } },
    removed: [], updated: [],
  });
  const node = native.ClawMatrixNode.create({ nodeId: "ev", secret: SECRET, proxyPort: await freePort() });
  await node.start({});
  await node.stop();
  node.closeEvents();
  const levels = new Set();
  for (let e = await node.nextEvent(); e; e = await node.nextEvent()) {
    assert.equal(typeof e.message, "string");
    levels.add(e.level);
  }
  assert.ok(levels.size > 0, "start and stop log something");
  for (const l of levels) assert.ok(["debug", "info", "warn", "error"].includes(l), l);
});

test("every error the binding reports is an Error with the core's code, sync or async", { timeout: 30_000 }, async () => {
  assert.throws(() => native.ClawMatrixNode.create({ nodeId: "n", secret: "short" }), coded("CLAWMATRIX_CONFIG_INVALID", /secret/));
  assert.throws(() => native.renderStatusText({ nodeId: 1 }), coded("CLAWMATRIX_INVALID_ARGUMENT", /status report/));
  assert.throws(() => native.planProviders([], {}), coded("CLAWMATRIX_INVALID_ARGUMENT", /current: expected an object, got array/));
  assert.throws(() => native.planProviders(null, 3), coded("CLAWMATRIX_INVALID_ARGUMENT", /desired: expected an object, got number/));

  const node = native.ClawMatrixNode.create({ nodeId: "solo", secret: SECRET, proxyPort: await freePort() });
  assert.throws(() => node.hostReply(1, "maybe", null), coded("CLAWMATRIX_INVALID_ARGUMENT", /kind: expected event, result or error/));
  await assert.rejects(node.meshPing("a", 1_000), coded("CLAWMATRIX_NOT_RUNNING"));
  await assert.rejects(node.invokeTool("cluster_exec", { node: "x" }).next(), coded("CLAWMATRIX_INVALID_ARGUMENT", /cluster_exec\.command: required/));
  await assert.rejects(node.invokeTool("no_such_tool", {}).next(), coded("CLAWMATRIX_INVALID_ARGUMENT", /unknown tool "no_such_tool"/));
  await node.start({});
  try {
    await assert.rejects(node.meshPing("nobody", 1_000), coded("CLAWMATRIX_UNREACHABLE"));
    await assert.rejects(node.invokeTool("cluster_exec", { node: "x", command: "ls" }).next(), coded("CLAWMATRIX_UNREACHABLE", /node x is not reachable/));
    // Taken port: start() rejects with the same shape.
    const again = native.ClawMatrixNode.create({ nodeId: "dup", secret: SECRET, proxyPort: node.status().proxyPort });
    await assert.rejects(again.start({}), coded("CLAWMATRIX_BIND_FAILED", /proxyPort: cannot bind/));
    again.closeEvents();
  } finally {
    await node.stop();
    node.closeEvents();
  }
});

test(
  "a panic in a binding method reaches JS as CLAWMATRIX_INTERNAL and the process carries on",
  {
    timeout: 30_000,
    // `npm test` builds the addon in debug and says so: there the hooks must exist. Run alone
    // against a release addon (no hooks), the test has nothing to call.
    skip:
      typeof native.__debugPanic !== "function" &&
      process.env.CLAWMATRIX_DEBUG_ADDON !== "1" &&
      "release build: the panicking entry points exist in debug builds only",
  },
  async () => {
    assert.equal(typeof native.__debugPanic, "function", "a debug addon exports the panic hooks");
    assert.throws(() => native.__debugPanic("boom sync"), coded("CLAWMATRIX_INTERNAL", /__debugPanic: panicked: boom sync/));
    await assert.rejects(native.__debugPanicAsync("boom async"), coded("CLAWMATRIX_INTERNAL", /__debugPanicAsync: panicked: boom async/));
    await assert.rejects(native.__debugPanicTask("boom task"), coded("CLAWMATRIX_INTERNAL", /__debugPanicTask: panicked: boom task/));
    // Still alive, and the addon still answers (the panics left nothing poisoned behind).
    assert.equal(typeof native.coreVersion(), "string");
    const node = native.ClawMatrixNode.create({ nodeId: "after", secret: SECRET, proxyPort: await freePort() });
    await node.start({});
    assert.equal(node.status().running, true);
    await node.stop();
    node.closeEvents();
  },
);
