// Issue 18, the network fault lab: four real OpenClaw gateways whose every mesh link goes
// through its own fault proxy (tests/lab/). `home` and `office` both dial two relays, `relay-a`
// and `relay-b` (listeners); office offers the agent `coder` and serves tool reads; home calls
// (handoffs and cluster_read through POST /tools/invoke, the fast path without a model turn).
//   - lossy: 2 % of chunks delayed 300 ± 100 ms on every link, both directions, while home runs
//     handoffs and reads back to back: no link dies, no call fails. CLAWMATRIX_LAB_LOSSY_MINUTES
//     sets the duration (default 1 min; `npm run lab -- --minutes 10` runs the long one).
//   - partition: the relay carrying home → office is blackholed for 30 s (both its links) while
//     handoffs run through it: they fail with CLAWMATRIX_UNREACHABLE within the detection
//     bound, new calls go through the other relay, and after the heal the relay's routes are back
//     within one reconnect backoff step.
//   - kill -9 of the relay carrying a handoff in the middle of it: the caller gets a clear
//     error at once, and the next handoff goes through the other relay.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startSuite, endSuite, waitStatus } from "./plugin-package.mjs";
import { startLab, meshCounters, waitFast, fastStatus, LAB_DETECT_MS, LAB_DEFAULTS } from "../lab/lab.mjs";
import * as W from "../lab/workload.mjs";

const LOSSY_MINUTES = Number(process.env.CLAWMATRIX_LAB_LOSSY_MINUTES || 1);
const LOSSY = { dir: "both", delay: { p: 0.02, ms: 300, jitterMs: 100 } };
const PARTITION_MS = 30_000;
/** The in-flight failure may take the detection bound plus this (a status poll, the HTTP reply). */
const DETECT_SLACK_MS = 1_500;
/** Reconnect backoff (src/node/backoff.rs): 1 s doubling to 60 s, ± 20 % jitter. */
const BACKOFF = { minMs: 1_000, maxMs: 60_000, jitter: 0.2 };

const fx = {};
const metrics = { heartbeat: LAB_DEFAULTS };
/** @type {any} */
let lab;
let nonces;
const suiteStart = Date.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const peer = (s, id) => s.peers.find((p) => p.nodeId === id);
const RELAYS = { "relay-a-01": "relay-a", "relay-b-01": "relay-b" };

before(async () => {
  await startSuite(fx);
  const root = mkdtempSync(join(tmpdir(), "clawmatrix-lab-files-"));
  nonces = W.writeReadFiles(root);
  const relay = (name) => ({ name, nodeId: `${name}-01`, listen: true });
  lab = await startLab(fx, {
    nodes: [
      relay("relay-a"),
      relay("relay-b"),
      {
        name: "office",
        nodeId: "office-01",
        dials: ["relay-a", "relay-b"],
        pluginConfig: {
          agents: [{ id: "coder", description: "Has the repos", tags: ["coding"] }],
          toolProxy: { enabled: true, allow: ["read"], root },
        },
        extraConfig: { agents: { entries: { main: {}, coder: {} } } },
      },
      { name: "home", nodeId: "home-01", dials: ["relay-a", "relay-b"] },
    ],
  });
  metrics.readyMs = Object.fromEntries(Object.entries(lab.gw).map(([k, g]) => [k, g.timings.readyMs]));
  const { ms } = await waitStatus(
    lab.gw.home,
    (s) => peer(s, "office-01")?.state === "relayed" && peer(s, "relay-a-01")?.state === "direct" && peer(s, "relay-b-01")?.state === "direct",
    120_000,
    "office relayed, both relays direct",
  );
  metrics.meshFormedMs = ms;
  // The first handoff starts office's agent runtime (tens of seconds on a loaded box); keep it
  // out of the scenarios' figures.
  const warm = await W.handoffOnce(lab.gw.home, { timeoutMs: 120_000 });
  metrics.warmHandoffMs = warm.ms;
  assert.ok(warm.ok, `warm-up handoff: ${warm.error}`);
}, { timeout: 12 * 60_000 });

after(async () => {
  metrics.suiteMs = Date.now() - suiteStart;
  lab?.stop();
  await endSuite(fx, metrics, lab?.gw?.home);
});

/** The relay home currently reaches office through (its lab name). */
async function carryingRelay() {
  const { status } = await waitFast(lab.gw.home, (s) => RELAYS[peer(s, "office-01")?.reachableVia], 30_000, "office reachable via a relay");
  return RELAYS[peer(status, "office-01").reachableVia];
}

/**
 * The caller-side records of home's running handoffs (clawmatrix.status → handoffs.recent). A
 * failed call's code does not survive OpenClaw's POST /tools/invoke ("tool execution failed"),
 * but the record's state is derived from it (src/handoff/attempt.rs: CLAWMATRIX_UNREACHABLE →
 * `unreachable`, CLAWMATRIX_TIMEOUT → `timeout`) and it keeps the message.
 */
async function runningCallerIds() {
  const s = await fastStatus(lab.gw.home);
  return s.handoffs.recent.filter((r) => r.role === "caller" && r.state === "running").map((r) => r.id);
}
async function callerRecords(ids) {
  const s = await fastStatus(lab.gw.home);
  return ids.map((id) => s.handoffs.recent.find((r) => r.role === "caller" && r.id === id));
}

/** Waits until office's newest served handoff is streaming (the call is in flight on the mesh). */
async function officeStreaming(task) {
  const t0 = Date.now();
  while (Date.now() - t0 < 60_000) {
    if (fx.mock.completions().some((q) => q.text === task)) return;
    await sleep(100);
  }
  throw new Error(`office's agent did not start ${JSON.stringify(task)} within 60 s`);
}

test("lossy links: 2 % of chunks delayed 300 ms on every link kill no link and fail no call", { timeout: (LOSSY_MINUTES + 6) * 60_000 }, async () => {
  const { home } = lab.gw;
  await lab.setAll({ clear: true, ...LOSSY });
  const before = await meshCounters(lab);
  const proxiesBefore = await lab.counters();
  const tallies = { handoff: W.newTally(), read: W.newTally() };
  const endAt = Date.now() + LOSSY_MINUTES * 60_000;
  const until = () => Date.now() >= endAt;
  let k = 0;
  const loops = [
    W.loop(() => W.handoffOnce(home, { mock: fx.mock, tally: tallies.handoff }), { everyMs: 500, until }),
    W.loop(() => W.readOnce(home, { node: "office-01", nonces, k: k++ % nonces.length, tally: tallies.read }), { everyMs: 100, until }),
  ];
  await Promise.all(loops.map((l) => l.done));
  await lab.setAll({ clear: true });
  const after = await meshCounters(lab);
  const proxiesAfter = await lab.counters();
  const deaths = Object.fromEntries(Object.keys(after).map((n) => [n, {
    heartbeatTimeouts: after[n].heartbeatTimeouts - before[n].heartbeatTimeouts,
    linksUpAgain: after[n].linksUp - before[n].linksUp,
  }]));
  const delayed = Object.fromEntries(Object.keys(proxiesAfter).map((l) => {
    const d = (dir, f) => proxiesAfter[l][dir][f] - proxiesBefore[l][dir][f];
    return [l, { chunks: d("up", "chunks") + d("down", "chunks"), delayed: d("up", "chunksDelayed") + d("down", "chunksDelayed") }];
  }));
  metrics.lossy = { minutes: LOSSY_MINUTES, calls: { handoff: W.summarize(tallies.handoff), read: W.summarize(tallies.read) }, linkDeaths: deaths, delayed };
  console.log(`[lab] lossy ${LOSSY_MINUTES} min: ${JSON.stringify(metrics.lossy)}`);
  for (const [n, d] of Object.entries(deaths)) assert.deepEqual(d, { heartbeatTimeouts: 0, linksUpAgain: 0 }, `${n}: a link died under the lossy model`);
  for (const [kind, t] of Object.entries(tallies)) {
    assert.ok(t.done > 0, `${kind}: no call done`);
    assert.equal(t.failed, 0, `${kind}: ${t.failed} calls failed: ${JSON.stringify(t.errors)}`);
    assert.equal(t.duplicated, 0, `${kind}: duplicated`);
  }
  const totalDelayed = Object.values(delayed).reduce((a, d) => a + d.delayed, 0);
  assert.ok(totalDelayed > 0, "the proxies delayed chunks");
});

test("a 30 s partition of the relay in use fails calls in flight fast with CLAWMATRIX_UNREACHABLE; new calls go through the other relay; the routes come back within one backoff step after the heal", { timeout: 6 * 60_000 }, async () => {
  const { home, office } = lab.gw;
  await lab.setAll({ clear: true });
  const cut = await carryingRelay();
  const other = cut === "relay-a" ? "relay-b" : "relay-a";
  const cutId = lab.nodeId(cut);
  metrics.partition = { relay: cut };
  // Two handoffs in flight through `cut`, each streaming for ~20 s.
  const tasks = [0, 1].map((i) => `stream 80 chunks every 250 ms #${i}-${Date.now().toString(36)}`);
  const inflight = tasks.map((task) => lab.call("home", "cluster_handoff", { target: "coder", task }, { timeoutMs: 90_000 }).then((r) => ({ ...r, at: Date.now() })));
  await Promise.all(tasks.map(officeStreaming));
  await sleep(500);
  const ids = await runningCallerIds();
  assert.equal(ids.length, 2, `two handoffs running on home: ${ids}`);
  const cutLinks = lab.linksOf(cut);
  const t0 = Date.now();
  await Promise.all(cutLinks.map((l) => l.set({ dir: "both", blackhole: true })));
  const results = await Promise.all(inflight);
  const failMs = results.map((r) => r.at - t0);
  metrics.partition.inflightFailMs = failMs;
  const recs = await callerRecords(ids);
  metrics.partition.inflightErrors = recs.map((r, i) => (results[i].ok ? "ok" : `${r?.state}: ${r?.error?.slice(0, 300)}`));
  console.log(`[lab] partition of ${cut}: in-flight handoffs ended after ${failMs.join(", ")} ms: ${JSON.stringify(metrics.partition.inflightErrors)}`);

  // New calls during the partition go through the other relay.
  await waitFast(home, (s) => peer(s, "office-01")?.reachableVia === lab.nodeId(other), 20_000, `office via ${other}`);
  metrics.partition.reroutedAfterMs = Date.now() - t0;
  const h = await W.handoffOnce(home, { mock: fx.mock });
  const r = await W.readOnce(home, { node: "office-01", nonces, k: 0 });
  metrics.partition.duringPartition = { handoff: h.ok ? `ok ${h.ms} ms` : h.error, read: r.ok ? `ok ${r.ms} ms` : r.error };

  await waitFast(home, (s) => peer(s, cutId)?.state !== "direct", 30_000, `${cut} down on home`);
  const healAt = t0 + PARTITION_MS;
  if (Date.now() < healAt) await sleep(healAt - Date.now());
  const t1 = Date.now();
  await Promise.all(cutLinks.map((l) => l.set({ dir: "both", blackhole: false })));
  const back = (s) => peer(s, cutId)?.state === "direct";
  await waitFast(home, back, 120_000, `${cut} back on home`);
  metrics.partition.homeBackMs = Date.now() - t1;
  await waitFast(office, back, 120_000, `${cut} back on office`);
  metrics.partition.officeBackMs = Date.now() - t1;
  const bound = backoffStepBound(PARTITION_MS);
  metrics.partition.backoffStepBoundMs = bound;
  console.log(`[lab] partition: ${JSON.stringify(metrics.partition)}`);

  for (const [i, res] of results.entries()) {
    assert.equal(res.ok, false, `handoff ${i} in flight through the partitioned relay did not fail: ${res.text?.slice(0, 200)}`);
    assert.ok(failMs[i] <= LAB_DETECT_MS + DETECT_SLACK_MS, `handoff ${i} failed ${failMs[i]} ms after the partition (bound ${LAB_DETECT_MS} + ${DETECT_SLACK_MS} ms)`);
  }
  assert.ok(h.ok, `a handoff during the partition goes through ${other}: ${h.error ?? h.text}`);
  assert.ok(r.ok, `a read during the partition goes through ${other}: ${r.error ?? r.text}`);
  assert.ok(metrics.partition.homeBackMs <= bound && metrics.partition.officeBackMs <= bound, `routes back after ${metrics.partition.homeBackMs} / ${metrics.partition.officeBackMs} ms; one backoff step is at most ${bound} ms`);
  // Last, so the bounds above are checked whatever the code: the in-flight calls end as
  // CLAWMATRIX_UNREACHABLE (the relay's route went), not as another error.
  for (const [i, rec] of recs.entries()) {
    assert.equal(rec?.state, "unreachable", `handoff ${i} ended as CLAWMATRIX_UNREACHABLE: ${JSON.stringify(rec)}`);
    assert.match(rec.error, /became unreachable/, rec.error);
  }
});

/**
 * The longest wait a dialer can be in when a partition of `ms` heals: its backoff doubles from
 * 1 s on every failed attempt, and an attempt into a blackhole fails after at least the
 * detection of the old link (LAB_DETECT_MS) and then each time at least the shortest jittered
 * delay, so after `ms` the current step is at most the first base whose shortest cumulative
 * schedule exceeds `ms`. One step = that base + 20 % jitter, plus a handshake (1 s slack).
 */
function backoffStepBound(ms) {
  let t = LAB_DETECT_MS;
  let base = BACKOFF.minMs;
  while (t + base * (1 - BACKOFF.jitter) < ms && base < BACKOFF.maxMs) {
    t += base * (1 - BACKOFF.jitter);
    base = Math.min(base * 2, BACKOFF.maxMs);
  }
  return Math.round(base * (1 + BACKOFF.jitter)) + 1_000;
}

test("kill -9 of the relay carrying a handoff gives the caller a clear error at once; the next handoff goes through the other relay", { timeout: 4 * 60_000 }, async () => {
  const { home } = lab.gw;
  await lab.setAll({ clear: true });
  // Both relays direct again (the partition test may have just healed).
  await waitFast(home, (s) => peer(s, "relay-a-01")?.state === "direct" && peer(s, "relay-b-01")?.state === "direct", 120_000, "both relays direct");
  const victim = await carryingRelay();
  const other = victim === "relay-a" ? "relay-b" : "relay-a";
  const task = `stream 80 chunks every 250 ms kill-${Date.now().toString(36)}`;
  const call = lab.call("home", "cluster_handoff", { target: "coder", task }, { timeoutMs: 60_000 }).then((r) => ({ ...r, at: Date.now() }));
  await officeStreaming(task);
  await sleep(500);
  const ids = await runningCallerIds();
  assert.equal(ids.length, 1, `one handoff running on home: ${ids}`);
  const t0 = Date.now();
  process.kill(-lab.gw[victim].pid, "SIGKILL");
  const res = await call;
  const errMs = res.at - t0;
  await lab.gw[victim].stop({ timeoutMs: 5_000 });
  const [rec] = await callerRecords(ids);
  metrics.kill = { relay: victim, errorAfterMs: errMs, error: res.ok ? "ok" : `${rec?.state}: ${rec?.error?.slice(0, 300)}` };
  const next = await W.handoffOnce(home, { mock: fx.mock });
  metrics.kill.next = next.ok ? `ok ${next.ms} ms` : next.error;
  console.log(`[lab] kill -9 ${victim}: ${JSON.stringify(metrics.kill)}`);
  assert.equal(res.ok, false, `the handoff through the killed relay did not fail: ${res.text?.slice(0, 200)}`);
  assert.ok(errMs < 1_000, `the caller's error came ${errMs} ms after the kill`);
  assert.ok(next.ok, `the next handoff goes through ${other}: ${next.error ?? next.text}`);
  // A clear error (checked last, so the bounds above are checked whatever the code): the route
  // went with the relay, so the call ends as CLAWMATRIX_UNREACHABLE, not as another error.
  assert.equal(rec?.state, "unreachable", JSON.stringify(rec));
  assert.match(rec.error, /became unreachable/, rec.error);
});
