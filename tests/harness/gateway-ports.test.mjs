// The harness's port handling without OpenClaw: a stand-in gateway (a few lines of Node that
// bind openclaw.json's gateway.port and answer /readyz, or die with EADDRINUSE as a real one
// does) shows that a gateway whose port was taken after it was reserved moves to a fresh range
// and starts, and that reservePort hands out ports outside the kernel's ephemeral range.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { Gateway } from "./gateway.mjs";
import { allocateGatewayPorts, isPortFree, reservePort, GATEWAY_BASE_MIN, GATEWAY_BASE_MAX } from "./ports.mjs";

// Binds only once <gateway dir>/go exists (after writing "waiting"), so a test can take the port
// between the harness's spawn-time check and the bind, without guessing at timing.
const FAKE_GATEWAY = `
import fs from "node:fs";
import http from "node:http";
const cfg = JSON.parse(fs.readFileSync(process.env.OPENCLAW_CONFIG_PATH, "utf8"));
fs.writeFileSync("waiting", String(process.pid));
while (!fs.existsSync("go")) await new Promise((r) => setTimeout(r, 20));
const srv = http.createServer((req, res) => res.writeHead(req.url === "/readyz" || req.url === "/health" ? 200 : 404).end());
srv.listen(cfg.gateway.port, "127.0.0.1");
process.on("SIGTERM", () => process.exit(0));
`;

/** Listen on 127.0.0.1:port (another process's socket, as far as the gateway can tell). */
function occupy(port) {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen({ port, host: "127.0.0.1", exclusive: true }, () => resolve(srv));
  });
}

/** Poll (bounded) until `f()` holds. */
async function until(what, f, ms = 10_000) {
  const t0 = Date.now();
  while (!f()) {
    assert.ok(Date.now() - t0 < ms, `${what} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("a gateway whose port is taken after reservation moves to a fresh range and starts", { timeout: 60_000 }, async () => {
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), "cm-gw-ports-"));
  const entry = path.join(runDir, "fake-openclaw.mjs");
  fs.writeFileSync(entry, FAKE_GATEWAY);
  const opts = { provisioned: { nodeBin: process.execPath, openclawEntry: entry, env: { PATH: process.env.PATH } }, mockUrl: "http://127.0.0.1:9/v1" };
  const [first] = await allocateGatewayPorts(1);
  const gw = new Gateway({ name: "moved" }, opts, runDir, first);
  const go = path.join(gw.dir, "go");
  const waiting = path.join(gw.dir, "waiting");
  const squatters = [];
  try {
    // Taken before the spawn: seen by the spawn-time check.
    squatters.push(await occupy(first));
    fs.writeFileSync(go, "");
    await gw.start(30_000);
    assert.notEqual(gw.port, first, "moved off the taken port");
    assert.equal(gw.url, `http://127.0.0.1:${gw.port}`);
    assert.equal(gw.readConfig().gateway.port, gw.port, "the config names the new port");
    assert.equal((await fetch(`${gw.url}/readyz`)).status, 200);
    assert.match(fs.readFileSync(gw.logPath, "utf8"), new RegExp(`port ${first} is in use; moving to port ${gw.port} `));
    await gw.stop();

    // Taken after the spawn-time check, before the gateway binds: it dies with EADDRINUSE.
    const second = gw.port;
    fs.rmSync(go);
    fs.rmSync(waiting);
    const starting = gw.start(30_000);
    await until("the gateway waiting to bind", () => fs.existsSync(waiting));
    squatters.push(await occupy(second));
    fs.writeFileSync(go, "");
    await starting;
    assert.notEqual(gw.port, second, "moved again");
    assert.equal((await fetch(`${gw.url}/readyz`)).status, 200);
    assert.match(fs.readFileSync(gw.logPath, "utf8"), new RegExp(`port ${second} taken \\(EADDRINUSE\\); moving to port ${gw.port} `));
  } finally {
    await gw.stop();
    gw.release();
    for (const s of squatters) s.close();
    fs.rmSync(runDir, { recursive: true, force: true });
  }
});

test("reservePort hands out distinct free ports below the ephemeral range", async () => {
  const ports = [];
  for (let i = 0; i < 130; i++) ports.push(await reservePort());
  assert.equal(new Set(ports).size, ports.length);
  for (const p of ports) assert.ok(p >= GATEWAY_BASE_MIN && p < GATEWAY_BASE_MAX + 120, `${p}`);
  assert.ok(await isPortFree(ports[0]));
});
