// The Node `ws` baseline for `npm run bench`: the same work as bench/mesh.rs, done the way the
// original (0.1.x, pure TypeScript) plugin did it: JSON text frames over `ws`, a relay that
// parses every envelope, routes it by `to`, decrements `ttl` and re-serialises it.
//
// Processes (each side where a real deployment has it; one process per gateway):
//   driver (this process, plays A) ─ measures and prints the results;
//   B  = echo responder, its own process (`--role echo`);
//   R / R1 / R2 = relays, each in its own process (`--role relay`).
// Topologies, mirroring bench/mesh.rs:
//   direct: A dials B (B listens)
//   relay1: A ─▶ R ◀─ B
//   relay2: A ─▶ R1 ◀─ R2 ◀─ B   (R2 dials R1; relays exchange `{type:"route",node}` so R1
//           learns B is behind R2 and R2 learns A is behind R1; static, no gossip)
// Wire: TEXT frames, JSON. Auth: the dialer sends `{type:"hello",from,nonce,mac}` with
// mac = HMAC-SHA256(secret, "clawmatrix-baseline|from|nonce") checked with timingSafeEqual; the
// listener answers `{type:"welcome"}`. Envelope: `{id,from,to,ttl,type:"echo",payload}` where
// `payload` is the request bytes in base64; B answers `{id,from,to,ttl,type:"echo_reply",re,payload}`.
// Idle-link memory: a relay alone in a child process (started with --expose-gc and asked to
// collect before each reading, so garbage is not billed as link memory), N authenticated idle
// links from this process, (VmRSS after − before) / N.
//
// Output: one JSON object per line on stdout, same keys as bench/mesh.rs with impl "node-ws";
// a readable summary on stderr. Every loop is bounded in count and time; exits non-zero on
// failure. Flags: --quick, --idle-links N, --only rtt,tput,idle.
import { spawn } from "node:child_process";
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import WebSocket, { WebSocketServer } from "ws";

const SELF = fileURLToPath(import.meta.url);
const SECRET = "clawmatrix-bench-secret-0123456789";
/** USER_HZ of /proc/<pid>/stat on Linux. */
const USER_HZ = 100;
/** A child exits by itself after this long even if the driver never closes its stdin (ms). */
const CHILD_MAX_LIFE_MS = 240_000;
/** Longest wait for a child to report ready / for a route to answer (ms). */
const READY_MS = 15_000;
/** Timeout of one request (ms); a request that needs it counts as an error. */
const REQUEST_TIMEOUT_MS = 5_000;
const WARM_LINKS = 4;
const SETTLE_MS = 1_500;

const argv = process.argv.slice(2);
const flag = (name) => argv.includes(name);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};

// ---------------------------------------------------------------- shared: auth and framing

function mac(from, nonce) {
  return createHmac("sha256", SECRET).update(`clawmatrix-baseline|${from}|${nonce}`).digest();
}

function helloFrame(from, relay = false) {
  const nonce = randomBytes(32).toString("hex");
  return JSON.stringify({ type: "hello", from, nonce, relay, mac: mac(from, nonce).toString("hex") });
}

function helloOk(msg) {
  if (msg?.type !== "hello" || typeof msg.from !== "string" || typeof msg.nonce !== "string") return false;
  const got = Buffer.from(String(msg.mac), "hex");
  const want = mac(msg.from, msg.nonce);
  return got.length === want.length && timingSafeEqual(got, want);
}

/**
 * Dial `url`, authenticate as `from`, resolve with the open socket after `welcome`. Frames after
 * `welcome` go to `onMessage` from the very first one (ws may emit several frames of one read
 * synchronously, before a promise continuation could attach a handler); it gets `(data, ws)`.
 */
function dial(url, from, { relay = false, timeoutMs = READY_MS, onMessage = () => {} } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let authed = false;
    const timer = setTimeout(() => { ws.terminate(); reject(new Error(`${from}: handshake with ${url} timed out`)); }, timeoutMs);
    ws.once("open", () => ws.send(helloFrame(from, relay)));
    ws.on("message", (data) => {
      if (authed) return onMessage(data, ws);
      clearTimeout(timer);
      let msg;
      try { msg = JSON.parse(data.toString()); } catch { msg = null; }
      if (msg?.type === "welcome") { authed = true; resolve(ws); }
      else { ws.terminate(); reject(new Error(`${from}: ${url} refused: ${data}`)); }
    });
    ws.once("error", (e) => { clearTimeout(timer); reject(e); });
  });
}

/** Accept authenticated sockets on 127.0.0.1:port; `onAuthed(ws, hello)` gets each one. */
function listen(port, name, onAuthed) {
  return new Promise((resolve, reject) => {
    const wss = new WebSocketServer({ host: "127.0.0.1", port });
    wss.on("connection", (ws) => {
      ws.once("message", (data) => {
        let msg;
        try { msg = JSON.parse(data.toString()); } catch { msg = null; }
        if (!helloOk(msg)) { ws.close(4001, "bad hello"); return; }
        ws.send(JSON.stringify({ type: "welcome", from: name }));
        onAuthed(ws, msg);
      });
    });
    wss.once("listening", () => resolve(wss));
    wss.once("error", reject);
  });
}

// ---------------------------------------------------------------- child roles

/** Common child plumbing: exit when stdin closes or after CHILD_MAX_LIFE_MS; `gc` command. */
function childMain(start) {
  const life = setTimeout(() => process.exit(0), CHILD_MAX_LIFE_MS);
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    if (line === "gc") {
      globalThis.gc?.();
      globalThis.gc?.();
      process.stdout.write("gc-done\n");
    }
  });
  rl.on("close", () => { clearTimeout(life); process.exit(0); });
  start().then(
    () => process.stdout.write(`ready ${process.pid}\n`),
    (e) => { process.stderr.write(`child ${argv.join(" ")}: ${e.stack ?? e}\n`); process.exit(1); },
  );
}

/** The relay: route every envelope by `to` (direct clients first, then relay-learned routes). */
async function relayRole() {
  const name = opt("--name", "R");
  const port = Number(opt("--port"));
  const direct = new Map(); // node -> ws of a directly connected node
  const via = new Map(); // node -> ws of the relay link it is behind
  const relayLinks = new Set();
  const announce = (node) => {
    const frame = JSON.stringify({ type: "route", node });
    for (const link of relayLinks) link.send(frame);
  };
  const forward = (ws, data) => {
    const msg = JSON.parse(data.toString());
    if (msg.type === "route") { via.set(msg.node, ws); return; }
    const next = direct.get(msg.to) ?? via.get(msg.to);
    if (!next || !(msg.ttl > 1)) return; // no route or TTL spent: dropped, as 0.1.x did
    msg.ttl -= 1;
    next.send(JSON.stringify(msg));
  };
  const attach = (ws, peer, isRelay, { listenMessages = true } = {}) => {
    if (isRelay) {
      relayLinks.add(ws);
      for (const node of direct.keys()) ws.send(JSON.stringify({ type: "route", node }));
    } else {
      direct.set(peer, ws);
      announce(peer);
    }
    if (listenMessages) ws.on("message", (data) => forward(ws, data));
    ws.on("close", () => { relayLinks.delete(ws); if (direct.get(peer) === ws) direct.delete(peer); });
  };
  await listen(port, name, (ws, hello) => attach(ws, hello.from, hello.relay === true));
  const upstream = opt("--link-to");
  if (upstream) {
    const ws = await dial(upstream, name, { relay: true, onMessage: (d, link) => forward(link, d) });
    attach(ws, null, true, { listenMessages: false });
  }
}

/** B: answer every `echo` with an `echo_reply` carrying the same payload. */
async function echoRole() {
  const name = opt("--name", "B");
  const handle = (ws, data) => {
    const msg = JSON.parse(data.toString());
    if (msg.type !== "echo") return;
    ws.send(JSON.stringify({ id: randomUUID(), from: name, to: msg.from, ttl: 8, type: "echo_reply", re: msg.id, payload: msg.payload }));
  };
  const onSocket = (ws) => ws.on("message", (data) => handle(ws, data));
  const port = opt("--port");
  if (port) await listen(Number(port), name, (ws) => onSocket(ws));
  else await dial(opt("--connect"), name, { onMessage: (d, ws) => handle(ws, d) });
}

// ---------------------------------------------------------------- driver helpers

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => { const { port } = srv.address(); srv.close(() => resolve(port)); });
  });
}

const children = new Set();

/** Spawn this file in a child role; resolves once it prints `ready <pid>`. */
function startChild(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--expose-gc", SELF, ...args], { stdio: ["pipe", "pipe", "inherit"] });
    children.add(child);
    const lines = createInterface({ input: child.stdout });
    const waiters = [];
    lines.on("line", (line) => {
      if (line.startsWith("ready ")) { clearTimeout(timer); resolve(handle); }
      else waiters.shift()?.(line);
    });
    const timer = setTimeout(() => reject(new Error(`child ${args.join(" ")} not ready in ${READY_MS} ms`)), READY_MS);
    child.once("exit", (code) => { children.delete(child); clearTimeout(timer); reject(new Error(`child ${args.join(" ")} exited with ${code}`)); });
    const handle = {
      pid: child.pid,
      /** Ask the child to collect garbage; resolves when it did (bounded). */
      gc: () => new Promise((res, rej) => {
        const t = setTimeout(() => rej(new Error("gc timed out")), 5_000);
        waiters.push(() => { clearTimeout(t); res(); });
        child.stdin.write("gc\n");
      }),
      stop: () => new Promise((res) => {
        if (child.exitCode !== null || child.signalCode !== null) return res();
        const t = setTimeout(() => child.kill("SIGKILL"), 5_000);
        child.once("exit", () => { clearTimeout(t); res(); });
        child.stdin.end();
      }),
    };
  });
}

function cpuUs(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(f[11]) + Number(f[12])) / USER_HZ) * 1e6;
  } catch { return NaN; }
}

function rssKib(pid) {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

const r1 = (x) => Math.round(x * 10) / 10;
const percentile = (sorted, p) => sorted.length === 0 ? 0 : sorted[Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length))) - 1];
const emit = (o) => process.stdout.write(JSON.stringify({ ...o, impl: "node-ws" }) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A's side: one authenticated socket plus request/reply matching by id. */
class Client {
  static async connect(url) {
    const client = new Client();
    client.ws = await dial(url, "A", { onMessage: (data) => client.onMessage(data) });
    return client;
  }
  constructor() {
    this.ws = null;
    this.pending = new Map();
  }
  onMessage(data) {
    const msg = JSON.parse(data.toString());
    const p = msg.type === "echo_reply" && this.pending.get(msg.re);
    if (p) { this.pending.delete(msg.re); clearTimeout(p.timer); p.resolve(msg.payload); }
  }
  request(payload) {
    return new Promise((resolve, reject) => {
      const id = randomUUID();
      const timer = setTimeout(() => { this.pending.delete(id); reject(new Error("request timed out")); }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, timer });
      this.ws.send(JSON.stringify({ id, from: "A", to: "B", ttl: 8, type: "echo", payload }));
    });
  }
  close() { this.ws.terminate(); }
}

/** Start the processes of one topology and return {client, pids, stop}. */
async function buildTopology(name) {
  const procs = [];
  let url;
  if (name === "direct") {
    const pb = await freePort();
    procs.push(await startChild(["--role", "echo", "--name", "B", "--port", String(pb)]));
    url = `ws://127.0.0.1:${pb}`;
  } else if (name === "relay1") {
    const pr = await freePort();
    procs.push(await startChild(["--role", "relay", "--name", "R", "--port", String(pr)]));
    url = `ws://127.0.0.1:${pr}`;
    procs.push(await startChild(["--role", "echo", "--name", "B", "--connect", url]));
  } else {
    const [p1, p2] = [await freePort(), await freePort()];
    procs.push(await startChild(["--role", "relay", "--name", "R1", "--port", String(p1)]));
    url = `ws://127.0.0.1:${p1}`;
    procs.push(await startChild(["--role", "relay", "--name", "R2", "--port", String(p2), "--link-to", url]));
    procs.push(await startChild(["--role", "echo", "--name", "B", "--connect", `ws://127.0.0.1:${p2}`]));
  }
  const client = await Client.connect(url);
  // Wait (bounded) until the route answers: route announcements travel asynchronously.
  const deadline = Date.now() + READY_MS;
  for (;;) {
    try {
      await Promise.race([client.request("cHJvYmU="), sleep(200).then(() => { throw new Error("probe slow"); })]);
      break;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${name}: no route A→B: ${e.message}`);
    }
  }
  const pids = [process.pid, ...procs.map((p) => p.pid)];
  return { client, pids, stop: async () => { client.close(); for (const p of procs.reverse()) await p.stop(); } };
}

const cpuAll = (pids) => pids.reduce((s, pid) => s + cpuUs(pid), 0);

async function rtt(name, topo, plan) {
  const payload = Buffer.alloc(plan.payload, 7).toString("base64");
  const cpu0 = cpuAll(topo.pids);
  let errors = 0;
  for (let i = 0; i < plan.warmup; i++) await topo.client.request(payload).catch(() => errors++);
  const samples = [];
  const start = performance.now();
  while (samples.length < plan.maxSamples && performance.now() - start < plan.maxMs) {
    const t0 = process.hrtime.bigint();
    try {
      const reply = await topo.client.request(payload);
      const us = Number(process.hrtime.bigint() - t0) / 1e3;
      if (reply.length === payload.length) samples.push(us); else errors++;
    } catch { errors++; }
  }
  const secs = (performance.now() - start) / 1e3;
  const cpu = cpuAll(topo.pids) - cpu0;
  if (samples.length === 0) throw new Error(`rtt ${name}: no successful request`);
  samples.sort((a, b) => a - b);
  const n = samples.length;
  const mean = samples.reduce((a, b) => a + b, 0) / n;
  const p50 = percentile(samples, 50), p99 = percentile(samples, 99);
  const cpuPerReq = r1(cpu / (n + plan.warmup));
  emit({ bench: "rtt", topology: name, relays: { direct: 0, relay1: 1, relay2: 2 }[name], payload_bytes: plan.payload, n, errors,
    p50_us: r1(p50), p99_us: r1(p99), mean_us: r1(mean), min_us: r1(samples[0]), max_us: r1(samples[n - 1]),
    secs: Math.round(secs * 100) / 100, cpu_us_per_req: cpuPerReq });
  console.error(`rtt ${name.padEnd(7)} ${plan.payload} B: p50 ${p50.toFixed(1).padStart(7)} µs  p99 ${p99.toFixed(1).padStart(7)} µs  mean ${mean.toFixed(1).padStart(7)} µs  (n=${n}, errors=${errors}, cpu ${cpuPerReq} µs/req)`);
}

async function throughput(name, topo, plan) {
  const payload = Buffer.alloc(plan.payload, 7).toString("base64");
  let done = 0, errors = 0;
  const stopAt = performance.now() + plan.warmupMs + plan.ms;
  const worker = async () => {
    while (performance.now() < stopAt) {
      try { const r = await topo.client.request(payload); if (r.length === payload.length) done++; else errors++; }
      catch { errors++; }
    }
  };
  const workers = Array.from({ length: plan.inflight }, worker);
  await sleep(plan.warmupMs);
  const [d0, c0, t0] = [done, cpuAll(topo.pids), performance.now()];
  await sleep(plan.ms);
  const [d1, c1, t1] = [done, cpuAll(topo.pids), performance.now()];
  await Promise.all(workers);
  const counted = d1 - d0, secs = (t1 - t0) / 1e3;
  if (counted === 0) throw new Error(`throughput ${plan.payload} B: no request completed`);
  const perS = counted / secs, mbS = (perS * plan.payload) / 1e6;
  const cpuPerReq = r1((c1 - c0) / counted);
  emit({ bench: "throughput", topology: name, payload_bytes: plan.payload, inflight: plan.inflight, secs: Math.round(secs * 100) / 100,
    requests: counted, errors, frames_per_s: Math.round(perS), mb_per_s: r1(mbS), cpu_us_per_req: cpuPerReq });
  console.error(`throughput ${plan.payload} B x${plan.inflight} in flight: ${perS.toFixed(0)} frames/s one way, ${mbS.toFixed(1)} MB/s one way (errors=${errors}, cpu ${cpuPerReq} µs/req)`);
}

async function idleLinks(n) {
  const port = await freePort();
  const relay = await startChild(["--role", "relay", "--name", "idle-server", "--port", String(port)]);
  const url = `ws://127.0.0.1:${port}`;
  const sockets = [];
  try {
    for (let i = 0; i < WARM_LINKS; i++) sockets.push(await dial(url, `warm-${i}`));
    await sleep(SETTLE_MS);
    await relay.gc();
    const before = rssKib(relay.pid);
    const deadline = Date.now() + 60_000;
    let refused = 0;
    for (let i = 0; i < n && Date.now() < deadline; i++) {
      try { sockets.push(await dial(url, `idle-${String(i).padStart(4, "0")}`, { timeoutMs: 5_000 })); } catch { refused++; }
    }
    await sleep(SETTLE_MS);
    await relay.gc();
    const after = rssKib(relay.pid);
    const up = sockets.filter((s) => s.readyState === WebSocket.OPEN).length - WARM_LINKS;
    if (up <= 0) throw new Error("idle: no link stayed up");
    const perLink = ((after - before) * 1024) / up;
    emit({ bench: "idle_link_memory", requested: n, links: up, refused, warm_links: WARM_LINKS, rss_before_kib: before, rss_after_kib: after, bytes_per_link: Math.round(perLink) });
    console.error(`idle links: ${up} of ${n} up, relay RSS ${before} → ${after} KiB: ${perLink.toFixed(0)} B per link (after gc)`);
  } finally {
    for (const s of sockets) s.terminate();
    await relay.stop();
  }
}

async function driver() {
  const quick = flag("--quick");
  const only = opt("--only", "rtt,tput,idle").split(",");
  const idleN = Number(opt("--idle-links", "200"));
  if (!(idleN >= 1 && idleN <= 2000)) throw new Error("--idle-links must be in 1..2000");
  const rttPlan = { payload: 1024, warmup: quick ? 50 : 500, maxSamples: quick ? 300 : 5000, maxMs: quick ? 500 : 4000 };
  const tput = (payload, inflight) => ({ payload, inflight, warmupMs: quick ? 100 : 500, ms: quick ? 500 : 3000 });
  const cpus = readFileSync("/proc/cpuinfo", "utf8").split("\n").filter((l) => l.startsWith("processor")).length;
  const model = /model name\s*:\s*(.*)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? "unknown";
  emit({ bench: "machine", cpu_model: model, cpus, node: process.version });
  console.error(`machine: ${cpus} CPUs, ${model}, node ${process.version}`);
  for (const name of ["direct", "relay1", "relay2"]) {
    const wantsTput = only.includes("tput") && name === "direct";
    if (!only.includes("rtt") && !wantsTput) continue;
    const topo = await buildTopology(name);
    try {
      if (only.includes("rtt")) await rtt(name, topo, rttPlan);
      if (wantsTput) {
        await throughput(name, topo, tput(1024, 64));
        await throughput(name, topo, tput(1024 * 1024, 8));
      }
    } finally {
      await topo.stop();
    }
  }
  if (only.includes("idle")) await idleLinks(idleN);
}

// ---------------------------------------------------------------- entry

const role = opt("--role", "driver");
if (role === "relay") childMain(relayRole);
else if (role === "echo") childMain(echoRole);
else {
  const hard = setTimeout(() => { console.error("ws-baseline: hard time limit reached"); for (const c of children) c.kill("SIGKILL"); process.exit(1); }, 6 * 60_000);
  driver().then(
    () => { clearTimeout(hard); },
    (e) => { console.error(`ws-baseline: FAILED: ${e.stack ?? e}`); for (const c of children) c.kill("SIGKILL"); process.exit(1); },
  );
}
