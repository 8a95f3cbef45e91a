// Issue 18 end to end: the serving gateway's event loop stalls for 15 s. Two real OpenClaw
// gateways: home dials office; office offers the agent `coder` and serves tools. Office's
// JavaScript is stalled from outside, with no product hook: SIGUSR1 opens Node's inspector (on a
// random loopback port, set by `--inspect-port=127.0.0.1:0` in office's NODE_OPTIONS, which by
// itself opens nothing), and a 15 s busy loop is evaluated through it. Meanwhile home issues a
// handoff to coder and a cluster_tool call that runs through office's gateway (both need
// office's JavaScript: they must succeed once the stall ends, within their own timeouts) and a
// cluster_read (served by office's Rust core: it must answer during the stall). The mesh link
// must stay up throughout (Rust answers the heartbeats).
//
// Home's tools are invoked through home's `POST /tools/invoke` (plugin tools are on that
// surface), not through an agent turn: a CLI turn takes 2-13 s to start, too uncertain to land
// inside a 15 s window.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { startGateways } from "../harness/index.mjs";
import { startSuite, endSuite, waitStatus } from "./plugin-package.mjs";
import { freePort } from "../js/free-port.mjs";

const SECRET = "stall-e2e-secret-0123456789";
/** How long office's event loop is blocked, ms (the scenario). */
const STALL_MS = 15_000;
/** The file cluster_read fetches from office's tool root (its workspace). */
const PROBE_FILE = "stall-probe.txt";
const PROBE_TEXT = "read while office's JavaScript was stalled";
let office;
let home;
const metrics = {};
/** The suite's runtime, mock LLM and staged plugin (see startSuite / endSuite). */
const fx = {};

const peer = (s, id) => s?.peers?.find((p) => p.nodeId === id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  await startSuite(fx);
  const { provisioned, mock, pkg } = fx;
  const officePort = await freePort();
  // Heartbeats every second, 3 missed = link down: a heartbeat that needed office's JavaScript
  // would fail the link several times over during the 15 s stall, whatever the defaults are.
  const base = { secret: SECRET, heartbeatIntervalMs: 1_000, heartbeatMisses: 3 };
  const opts = { provisioned, mockUrl: mock.url, pluginDir: pkg.dir, readyTimeoutMs: 240_000 };
  // Two calls (both gateways still start in parallel) so that only office gets the inspector
  // port option; one run dir for both.
  const runDir = mkdtempSync(join(tmpdir(), "clawmatrix-run-"));
  [[office], [home]] = await Promise.all([
    startGateways(
      [
        {
          name: "office",
          pluginConfig: {
            ...base,
            nodeId: "office-01",
            listen: true,
            listenHost: "127.0.0.1",
            listenPort: officePort,
            peers: [],
            proxyPort: await freePort(),
            agents: [{ id: "coder", description: "Has the repos", tags: ["coding"] }],
            // cluster_peers runs through office's own gateway (POST /tools/invoke): JavaScript.
            toolProxy: { enabled: true, allow: ["read", "cluster_peers"] },
          },
          extraConfig: { agents: { entries: { main: {}, coder: {} } } },
        },
      ],
      { ...opts, runDir, env: { NODE_OPTIONS: "--inspect-port=127.0.0.1:0" } },
    ),
    startGateways(
      [
        {
          name: "home",
          pluginConfig: {
            ...base,
            nodeId: "home-01",
            proxyPort: await freePort(),
            peers: [{ nodeId: "office-01", url: `ws://127.0.0.1:${officePort}` }],
          },
        },
      ],
      { ...opts, runDir },
    ),
  ]);
  metrics.readyMs = [office.timings.readyMs, home.timings.readyMs];
  writeFileSync(join(office.workspace, PROBE_FILE), PROBE_TEXT);
  const { ms } = await waitStatus(home, (s) => peer(s, "office-01")?.state === "direct" && peer(s, "office-01").agents.length > 0, 120_000, "office linked with its agent");
  metrics.meshFormedMs = ms;
}, { timeout: 10 * 60_000 });

after(() => endSuite(fx, metrics, office));

/**
 * Run one of home's tools through home's `POST /tools/invoke`; never throws (a transport failure
 * is reported as `error`). `at` is when the answer arrived (Date.now()).
 */
async function invoke(gw, tool, args, timeoutMs = 150_000) {
  const t0 = Date.now();
  try {
    const res = await gw.fetch("/tools/invoke", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ tool, args }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const body = await res.json().catch(() => null);
    const text = (body?.result?.content ?? []).map((c) => c?.text ?? "").join("\n");
    return { ok: res.ok && body?.ok === true, status: res.status, text, body, ms: Date.now() - t0, at: Date.now() };
  } catch (e) {
    return { ok: false, error: String(e), ms: Date.now() - t0, at: Date.now() };
  }
}

const show = (r) => JSON.stringify({ ...r, body: r.body?.ok === true ? "(ok)" : r.body });
const handoffArgs = (task) => ({ target: "coder", task });
const toolArgs = { node: "office-01", tool: "cluster_peers", args: {} };
const readArgs = { node: "office-01", path: PROBE_FILE };

/** The mesh counters that show a link going down (either side). */
function linkHealth(s) {
  const m = s.mesh ?? {};
  return { heartbeatTimeouts: m.heartbeatTimeouts ?? 0, slowPeerCloses: m.slowPeerCloses ?? 0, linksUp: m.linksUp ?? 0 };
}

/**
 * Open Node's inspector in `gw`'s gateway process (SIGUSR1; the port comes from the
 * "Debugger listening" line it prints) and connect to its debugger WebSocket.
 */
async function openInspector(gw) {
  const mark = gw.logMark();
  process.kill(gw.pid, "SIGUSR1");
  const line = await gw.waitForLog(/Debugger listening on ws:\/\/127\.0\.0\.1:\d+\//, 20_000, { since: mark });
  const port = Number(/127\.0\.0\.1:(\d+)\//.exec(line)[1]);
  const list = await (await fetch(`http://127.0.0.1:${port}/json/list`, { signal: AbortSignal.timeout(5_000) })).json();
  const url = list.find((t) => t.type === "node")?.webSocketDebuggerUrl;
  assert.match(url ?? "", /^ws:\/\/127\.0\.0\.1:\d+\//, `a loopback debugger URL: ${JSON.stringify(list)}`);
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  return ws;
}

/**
 * Block the inspected process's event loop for `ms` (a busy loop evaluated on its main thread).
 * Returns at once; `done` resolves with the loop's own measure of how long it ran, when the
 * process answers again.
 */
function stall(ws, ms) {
  const id = 1;
  const done = new Promise((resolve, reject) => {
    const onMessage = (data) => {
      const m = JSON.parse(String(data));
      if (m.id !== id) return;
      ws.off("message", onMessage);
      if (m.error || m.result?.exceptionDetails) reject(new Error(`Runtime.evaluate failed: ${JSON.stringify(m)}`));
      else resolve({ ranMs: m.result?.result?.value, at: Date.now() });
    };
    ws.on("message", onMessage);
  });
  const expression = `(() => { const t = Date.now(); while (Date.now() - t < ${ms}) {} return Date.now() - t; })()`;
  ws.send(JSON.stringify({ id, method: "Runtime.evaluate", params: { expression, returnByValue: true } }));
  return { sentAt: Date.now(), done };
}

/** Whether `gw`'s HTTP server answers /health within `ms`. */
async function answers(gw, ms) {
  try {
    const r = await fetch(`${gw.url}/health`, { signal: AbortSignal.timeout(ms) });
    await r.arrayBuffer();
    return r.ok;
  } catch {
    return false;
  }
}

test("before the stall, the handoff, the gateway tool and the read all answer", { timeout: 240_000 }, async () => {
  const [h, t, r] = await Promise.all([
    invoke(home, "cluster_handoff", handoffArgs("say hello before the stall")),
    invoke(home, "cluster_tool", toolArgs),
    invoke(home, "cluster_read", readArgs),
  ]);
  assert.ok(h.ok, show(h));
  assert.match(h.text, /\[handoff: coder on office-01 answered\][\s\S]*MOCK_REPLY: say hello before the stall/, h.text);
  assert.ok(t.ok, show(t));
  assert.match(t.text, /\[cluster_peers ran on office-01\]/, t.text);
  assert.ok(r.ok, show(r));
  assert.match(r.text, new RegExp(PROBE_TEXT), r.text);
  metrics.baseline = { handoffMs: h.ms, toolMs: t.ms, readMs: r.ms };
});

test("office's event loop stalls for 15 s: the read answers during it, the handoff and the gateway tool after it, and the link stays up", { timeout: 300_000 }, async () => {
  const [{ status: h0 }, { status: o0 }] = await Promise.all([
    waitStatus(home, (s) => peer(s, "office-01")?.state === "direct", 30_000, "office direct"),
    waitStatus(office, (s) => peer(s, "home-01")?.state === "direct", 30_000, "home direct"),
  ]);
  const ws = await openInspector(office);
  try {
    const s = stall(ws, STALL_MS);
    // Let the busy loop begin (the inspector runs it on office's main thread at once).
    await sleep(300);
    const task = "say hello after the stall";
    const [blocked, read, handoff, tool, during] = await Promise.all([
      // The stall is real: office's own HTTP server (JavaScript) does not answer.
      answers(office, 2_000).then((ok) => !ok),
      invoke(home, "cluster_read", readArgs),
      invoke(home, "cluster_handoff", handoffArgs(task)),
      invoke(home, "cluster_tool", toolArgs),
      // Home's view of office while office is stalled (home's own JavaScript runs normally).
      home.call("clawmatrix.status", {}, { timeoutMs: 10_000 }).then((st) => ({ st, at: Date.now() })).catch((e) => ({ error: e.message, at: Date.now() })),
    ]);
    const end = await s.done;
    const stallEnd = end.at;
    metrics.stall = { ranMs: end.ranMs, observedMs: stallEnd - s.sentAt, healthBlocked: blocked };
    metrics.read = { ms: read.ms, beforeStallEndMs: stallEnd - read.at };
    metrics.handoff = { ms: handoff.ms, afterStallEndMs: handoff.at - stallEnd };
    metrics.tool = { ms: tool.ms, afterStallEndMs: tool.at - stallEnd };

    assert.ok(end.ranMs >= STALL_MS, `the loop ran ${end.ranMs} ms`);
    assert.ok(blocked, "office's HTTP server answered during the stall: the stall did not hit the gateway's event loop");

    // Rust serves the read while office's JavaScript is blocked.
    assert.ok(read.ok, show(read));
    assert.match(read.text, new RegExp(PROBE_TEXT), read.text);
    assert.ok(read.at < stallEnd, `the read answered during the stall (${read.ms} ms, ${stallEnd - read.at} ms before its end)`);

    // Both need office's JavaScript: they wait for it and succeed, within their own timeouts.
    // (OpenClaw's HTTP answer hides a tool's error; home's handoff record has it.)
    if (!handoff.ok) {
      const st = await home.call("clawmatrix.status", {}).catch((e) => ({ error: e.message }));
      const rec = [...(st.handoffs?.recent ?? [])].reverse().find((r) => r.role === "caller");
      metrics.handoffError = rec?.error ?? st.error;
      assert.fail(`the handoff failed after ${handoff.ms} ms: ${metrics.handoffError}; ${show(handoff)}`);
    }
    assert.match(handoff.text, new RegExp(`\\[handoff: coder on office-01 answered\\][\\s\\S]*MOCK_REPLY: ${task}`), handoff.text);
    assert.ok(handoff.at >= stallEnd, `the handoff was held by the stall (${handoff.ms} ms)`);
    assert.ok(tool.ok, show(tool));
    assert.match(tool.text, /\[cluster_peers ran on office-01\]/, tool.text);
    assert.ok(tool.at >= stallEnd, `the gateway tool was held by the stall (${tool.ms} ms)`);

    // The link stayed up: during the stall home still saw office directly, and neither side
    // counted a heartbeat timeout or lost a link.
    if (during.st && during.at < stallEnd) {
      const o = peer(during.st, "office-01");
      metrics.duringStall = { state: o?.state, lastSeenMsAgo: o?.lastSeenMsAgo };
      assert.equal(o?.state, "direct", JSON.stringify(o));
    } else {
      metrics.duringStall = { unavailable: during.error ?? "answered after the stall" };
    }
    const [h1, o1] = await Promise.all([home.call("clawmatrix.status", {}), office.call("clawmatrix.status", {})]);
    metrics.linkHealth = { home: [linkHealth(h0), linkHealth(h1)], office: [linkHealth(o0), linkHealth(o1)] };
    assert.equal(peer(h1, "office-01")?.state, "direct");
    assert.deepEqual(linkHealth(h1), linkHealth(h0), "home: no heartbeat timeout, no link lost");
    assert.deepEqual(linkHealth(o1), linkHealth(o0), "office: no heartbeat timeout, no link lost");
  } finally {
    ws.terminate();
  }
});
