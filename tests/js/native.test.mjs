// The binding used directly (no shim, no OpenClaw): two nodes link over loopback, meshPing
// measures a real round trip, and errors carry the core's code as err.code.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { freePort } from "./free-port.mjs";

const require = createRequire(import.meta.url);
const native = require("../../native/index.cjs");
const SECRET = "native-test-secret-0123";

test("meshPing returns the round trip to a linked node and rejects for an unknown one", { timeout: 30_000 }, async () => {
  const listenPort = await freePort();
  const a = native.ClawMatrixNode.create({
    nodeId: "a", secret: SECRET, listen: true, listenHost: "127.0.0.1", listenPort, proxyPort: await freePort(),
  });
  const b = native.ClawMatrixNode.create({
    nodeId: "b", secret: SECRET, proxyPort: await freePort(), peers: [{ nodeId: "a", url: `ws://127.0.0.1:${listenPort}` }],
  });
  await a.start({});
  await b.start({});
  try {
    const deadline = Date.now() + 15_000;
    while (!b.status().peers.some((p) => p.nodeId === "a" && p.state === "direct")) {
      assert.ok(Date.now() < deadline, "b links to a within 15 s");
      await new Promise((r) => setTimeout(r, 50));
    }
    const ms = await b.meshPing("a", 5_000);
    assert.equal(typeof ms, "number");
    assert.ok(ms > 0 && ms < 5_000, `round trip ${ms} ms`);
    await assert.rejects(b.meshPing("nobody", 1_000), (e) => {
      assert.equal(e.code, "CLAWMATRIX_UNREACHABLE");
      return true;
    });
  } finally {
    await b.stop();
    await a.stop();
  }
  await assert.rejects(b.meshPing("a", 1_000), (e) => {
    assert.equal(e.code, "CLAWMATRIX_NOT_RUNNING");
    return true;
  });
});

test("the host bridge: a started node asks its host for providers, replies are validated", { timeout: 30_000 }, async () => {
  const node = native.ClawMatrixNode.create({ nodeId: "solo", secret: SECRET, proxyPort: await freePort(), listen: true, listenHost: "127.0.0.1", listenPort: await freePort() });
  const first = node.nextHostRequest(); // attach before start, as the shim does
  await node.start({});
  try {
    const req = await first;
    assert.equal(req.kind, "providers.sync");
    assert.deepEqual(req.params, { providers: {} });
    assert.throws(() => node.hostReply(req.id, "maybe", null), /kind: expected event, result or error/);
    assert.equal(node.hostReply(req.id, "result", { changed: false, added: [], updated: [], removed: [], conflicts: [] }), true);
    assert.equal(node.hostReply(req.id, "result", {}), false, "a second answer is discarded");
  } finally {
    await node.stop();
    node.closeEvents();
  }
  assert.equal(await node.nextHostRequest(), null, "the pull ends once the node stopped");
});

test("planProviders merges the mesh's providers without touching the user's", () => {
  const ours = (node) => ({ baseUrl: `http://127.0.0.1:19001/node/${node}/v1`, models: [] });
  const plan = native.planProviders({ openai: { baseUrl: "https://api.openai.com/v1", models: [] }, "clawmatrix-gone": ours("gone") }, { "clawmatrix-office": ours("office") });
  assert.equal(plan.changed, true);
  assert.deepEqual(plan.added, ["clawmatrix-office"]);
  assert.deepEqual(plan.removed, ["clawmatrix-gone"]);
  assert.deepEqual(Object.keys(plan.providers).sort(), ["clawmatrix-office", "openai"]);
  assert.throws(() => native.planProviders([], {}), /current: expected an object, got array/);
});

test("large tool results reach JS whole: ASCII (handed over as an external string), non-ASCII and small ones, and survive GC", { timeout: 60_000 }, async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const v8 = await import("node:v8");
  const vm = await import("node:vm");
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc");
  const root = mkdtempSync(join(tmpdir(), "clawmatrix-jstext-"));
  const files = {
    "ascii.txt": "0123456789 abcdefghijklmnopqrstuvwxyz\n".repeat(8_000), // ~300 KiB, ASCII
    "utf8.txt": "é🦀 not latin-1\n".repeat(20_000), // ~360 KiB, multi-byte
    "small.txt": "tiny\n",
  };
  for (const [name, text] of Object.entries(files)) writeFileSync(join(root, name), text);
  const listenPort = await freePort();
  const a = native.ClawMatrixNode.create({
    nodeId: "a", secret: SECRET, listen: true, listenHost: "127.0.0.1", listenPort, proxyPort: await freePort(),
    toolProxy: { enabled: true, allow: ["read"], deny: [], root },
  });
  const b = native.ClawMatrixNode.create({
    nodeId: "b", secret: SECRET, proxyPort: await freePort(), peers: [{ nodeId: "a", url: `ws://127.0.0.1:${listenPort}` }],
  });
  await a.start({});
  await b.start({});
  const read = async (path) => {
    const call = b.invokeTool("cluster_read", { node: "a", path });
    for (let i = 0; i < 1_000; i++) {
      const step = await call.next();
      assert.ok(step, `${path}: a result before the end`);
      if (step.kind === "result") return step.text;
      assert.notEqual(step.kind, "error", `${path}: ${step.code} ${step.text}`);
    }
    throw new Error(`${path}: no result`);
  };
  try {
    const deadline = Date.now() + 15_000;
    while (!b.status().peers.some((p) => p.nodeId === "a" && p.state === "direct")) {
      assert.ok(Date.now() < deadline, "b links to a within 15 s");
      await new Promise((r) => setTimeout(r, 50));
    }
    for (let round = 0; round < 20; round++) {
      for (const [name, text] of Object.entries(files)) {
        const got = await read(name);
        assert.equal(typeof got, "string");
        assert.equal(got.length, "[read ran on a]\n".length + text.length, name);
        assert.ok(got === `[read ran on a]\n${text}`, `${name}: the text arrived changed`);
        // Strings built from it behave like any other (V8 flattens or copies as it needs).
        assert.equal(got.slice(-text.length, -text.length + 4), text.slice(0, 4));
      }
      gc(); // collected strings free their buffers through the finalizer
    }
  } finally {
    await b.stop();
    await a.stop();
    rmSync(root, { recursive: true, force: true });
  }
});
