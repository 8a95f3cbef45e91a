// The network fault lab (issue 18): real OpenClaw gateways whose every mesh link goes through
// its own fault-injecting TCP proxy process (tests/lab/faultproxy, built as the cargo example
// `faultproxy`). A dialer's peer url points at its link's proxy, which forwards to the
// listener's real port; the JS API sets faults per link and reads the proxies' counters.
//
//   const lab = await startLab(fx, { nodes: [...] });     // fx from startSuite (plugin-package.mjs)
//   await lab.link("home", "relay-a").set({ dir: "both", blackhole: true });
//   await lab.link("home", "relay-a").counters();
//   await lab.call("home", "cluster_handoff", { target: "coder", task: "..." });   // POST /tools/invoke
//   await lab.stop();   // proxies only; gateways stop with endSuite / stopAll
//
// Node spec: { name, nodeId, listen?: true, dials?: [names], pluginConfig?, extraConfig? }.
// Every node runs the default failure detection (LAB_HEARTBEAT adds nothing; LAB_DEFAULTS says what it is).
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { startGateways } from "../harness/index.mjs";
import { trackGroup, untrackGroup } from "../harness/procs.mjs";
import { freePort } from "../js/free-port.mjs";
import { ROOT } from "../e2e/plugin-package.mjs";

/**
 * The lab runs the product's default failure detection: nothing is set per node, so every
 * gateway gets the config defaults (heartbeatIntervalMs 1250, heartbeatMisses 3: a silent peer
 * is dropped after 3.75 s; src/config/mod.rs). LAB_HEARTBEAT is what the lab adds to each
 * node's config (nothing) and LAB_DEFAULTS what that means, for the figures.
 */
export const LAB_HEARTBEAT = {};
export const LAB_DEFAULTS = { heartbeatIntervalMs: 1250, heartbeatMisses: 3, set: "defaults" };
/** Detection bound of a silent peer at the defaults: interval × misses. */
export const LAB_DETECT_MS = LAB_DEFAULTS.heartbeatIntervalMs * LAB_DEFAULTS.heartbeatMisses;

export const LAB_SECRET = "fault-lab-secret-0123456789abcdef";
const FAULTPROXY = join(ROOT, "target", "debug", "examples", "faultproxy");

/** `cargo build --example faultproxy` (debug); fast when nothing changed. */
export function buildFaultProxy() {
  execFileSync("cargo", ["build", "--example", "faultproxy"], { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"], timeout: 20 * 60_000 });
  return FAULTPROXY;
}

/**
 * One faultproxy process in front of `targetPort`. Resolves once it printed its ports.
 * @param {{targetPort: number, label: string, seed?: number|bigint, sockbuf?: number}} o
 */
export async function startFaultProxy({ targetPort, label, seed, sockbuf }) {
  const args = ["--target", String(targetPort), "--exit-on-stdin-close"];
  if (seed !== undefined) args.push("--seed", String(seed));
  if (sockbuf !== undefined) args.push("--sockbuf", String(sockbuf));
  const child = spawn(FAULTPROXY, args, { stdio: ["pipe", "pipe", "inherit"], detached: true });
  trackGroup(child.pid, `faultproxy ${label}`);
  const info = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`faultproxy ${label}: no ports within 10 s`)), 10_000);
    child.once("exit", (c) => { clearTimeout(timer); reject(new Error(`faultproxy ${label}: exited with ${c}`)); });
    createInterface({ input: child.stdout }).once("line", (l) => { clearTimeout(timer); resolve(JSON.parse(l)); });
  });
  const ctl = `http://127.0.0.1:${info.control}`;
  const req = async (method, path, body) => {
    const r = await fetch(`${ctl}${path}`, { method, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(5_000) });
    const j = await r.json();
    if (!r.ok) throw new Error(`faultproxy ${label}: ${method} ${path}: ${j.error ?? r.status}`);
    return j;
  };
  console.log(`[lab] faultproxy ${label}: 127.0.0.1:${info.listen} -> ${info.target}, seed ${info.seed}`);
  return {
    label,
    pid: child.pid,
    port: info.listen,
    seed: info.seed,
    /** Changes the fault model (see tests/lab/faultproxy/mod.rs for the command shape). */
    set: (cmd) => req("POST", "/faults", cmd),
    faults: () => req("GET", "/faults"),
    counters: () => req("GET", "/counters"),
    /** RSTs every current connection of the link. */
    reset: () => req("POST", "/reset"),
    stop() {
      untrackGroup(child.pid);
      try { process.kill(-child.pid, "SIGKILL"); } catch { /* gone */ }
    },
  };
}

/**
 * Starts the proxies and the gateways of a lab. `fx` is a startSuite fixture.
 * @param {any} fx
 * @param {{nodes: any[], seed?: number, sockbuf?: number, readyTimeoutMs?: number}} o
 */
export async function startLab(fx, { nodes, seed, sockbuf, readyTimeoutMs = 240_000 }) {
  buildFaultProxy();
  const ports = {};
  for (const n of nodes) if (n.listen) ports[n.name] = await freePort();
  /** @type {Record<string, Awaited<ReturnType<typeof startFaultProxy>>>} */
  const links = {};
  let i = 0;
  for (const n of nodes) {
    for (const to of n.dials ?? []) {
      if (!ports[to]) throw new Error(`lab: ${n.name} dials ${to}, which does not listen`);
      const s = seed === undefined ? undefined : BigInt(seed) + BigInt(i++);
      links[`${n.name}>${to}`] = await startFaultProxy({ targetPort: ports[to], label: `${n.name}>${to}`, seed: s, sockbuf });
    }
  }
  const byName = Object.fromEntries(nodes.map((n) => [n.name, n]));
  const specs = [];
  for (const n of nodes) {
    const pluginConfig = {
      secret: LAB_SECRET,
      nodeId: n.nodeId,
      proxyPort: await freePort(),
      ...LAB_HEARTBEAT,
      ...(n.listen ? { listen: true, listenHost: "127.0.0.1", listenPort: ports[n.name] } : {}),
      peers: (n.dials ?? []).map((to) => ({ nodeId: byName[to].nodeId, url: `ws://127.0.0.1:${links[`${n.name}>${to}`].port}` })),
      ...(n.pluginConfig ?? {}),
    };
    specs.push({ name: n.name, pluginConfig, extraConfig: n.extraConfig });
  }
  const gws = await startGateways(specs, { provisioned: fx.provisioned, mockUrl: fx.mock.url, pluginDir: fx.pkg.dir, readyTimeoutMs });
  const gw = Object.fromEntries(gws.map((g) => [g.name, g]));
  return {
    gw,
    links,
    /** The clawmatrix config each gateway started with (e.g. `config.home.proxyPort`). */
    config: Object.fromEntries(specs.map((s) => [s.name, s.pluginConfig])),
    nodeId: (name) => byName[name].nodeId,
    /** The proxy of the link `from` dials to `to`. */
    link(from, to) {
      const l = links[`${from}>${to}`];
      if (!l) throw new Error(`lab: no link ${from}>${to}`);
      return l;
    },
    /** Every link touching `name` (both ends). */
    linksOf(name) {
      return Object.entries(links).filter(([k]) => k.split(">").includes(name)).map(([, l]) => l);
    },
    /** Sets `cmd` on every link (or on `only`). */
    async setAll(cmd, only = Object.values(links)) {
      await Promise.all(only.map((l) => l.set(cmd)));
    },
    async counters() {
      return Object.fromEntries(await Promise.all(Object.entries(links).map(async ([k, l]) => [k, await l.counters()])));
    },
    /** POST /tools/invoke on gateway `name`; see invokeTool. */
    call: (name, tool, args, opts) => invokeTool(gw[name], tool, args, opts),
    stop() {
      for (const l of Object.values(links)) l.stop();
    },
  };
}

/**
 * Runs a plugin tool through a gateway's HTTP tool surface (POST /tools/invoke), the fast path
 * that skips a model turn. Returns {ok, text, error, ms}: `text` the tool's text, `error` the
 * failure message (a tool error keeps its CLAWMATRIX_* code in the message when OpenClaw passes
 * it on).
 */
export async function invokeTool(gw, tool, args, { timeoutMs = 60_000 } = {}) {
  const t0 = Date.now();
  try {
    const r = await gw.fetch("/tools/invoke", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ tool, args }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const raw = await r.text();
    let j;
    try { j = JSON.parse(raw); } catch { j = { ok: false, error: { message: raw.slice(0, 500) } }; }
    const text = (j.result?.content ?? []).map((c) => c.text ?? "").join("");
    if (r.ok && j.ok !== false) return { ok: true, text, ms: Date.now() - t0, raw: j };
    const error = typeof j.error === "string" ? j.error : JSON.stringify(j.error ?? j);
    return { ok: false, text, error: `HTTP ${r.status}: ${error}`, ms: Date.now() - t0, raw: j };
  } catch (e) {
    return { ok: false, text: "", error: `request: ${e.message}`, ms: Date.now() - t0 };
  }
}

/** Mesh counters (clawmatrix.status `mesh`) of every gateway, plus peer states. */
export async function meshCounters(lab) {
  const out = {};
  for (const [name, g] of Object.entries(lab.gw)) {
    if (!g.running) continue;
    // A loaded 2-core box has taken over 10 s to answer one status call: allow 30 s, 3 tries.
    let s;
    for (let attempt = 1; !s; attempt++) {
      try {
        s = await fastStatus(g, { timeoutMs: 30_000 });
      } catch (e) {
        if (attempt >= 3) throw e;
      }
    }
    out[name] = { ...s.mesh, peers: Object.fromEntries(s.peers.map((p) => [p.nodeId, p.state])) };
  }
  return out;
}

/**
 * A gateway's clawmatrix status in ~tens of ms: the `cluster_peers` tool through POST
 * /tools/invoke returns the status report as its details (`openclaw gateway call` takes seconds).
 */
export async function fastStatus(gw, { timeoutMs = 10_000 } = {}) {
  const r = await invokeTool(gw, "cluster_peers", {}, { timeoutMs });
  const details = r.raw?.result?.details;
  if (!r.ok || !details?.peers) throw new Error(`${gw.name}: cluster_peers: ${r.error ?? "no status in its details"}`);
  return details;
}

/** Polls fastStatus every `pollMs` until `pred(status)`; returns {status, ms}. */
export async function waitFast(gw, pred, timeoutMs, what, { pollMs = 100 } = {}) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < timeoutMs) {
    last = await fastStatus(gw).catch((e) => ({ error: e.message }));
    if (!last.error && pred(last)) return { status: last, ms: Date.now() - t0 };
    await new Promise((r) => setTimeout(r, pollMs));
  }
  throw new Error(`${gw.name}: ${what} not seen within ${timeoutMs} ms; last: ${JSON.stringify(last?.error ? last : last?.peers)}`);
}
