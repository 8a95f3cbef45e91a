// The binding used directly (no shim, no OpenClaw): two nodes link over loopback, meshPing
// measures a real round trip, and errors carry the core's code in the message.
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
    await assert.rejects(b.meshPing("nobody", 1_000), /CLAWMATRIX_UNREACHABLE/);
  } finally {
    await b.stop();
    await a.stop();
  }
  await assert.rejects(b.meshPing("a", 1_000), /CLAWMATRIX_NOT_RUNNING|not running/i);
});
