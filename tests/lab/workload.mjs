// Continuous calls for the fault lab and the soak: handoffs, tool reads and model calls, each
// carrying a nonce that the reply must echo back, so a lost, mismatched or duplicated reply is
// counted. Every loop stops at `until` (or `stop()`), and every call is bounded in time.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { invokeTool } from "./lab.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Writes `count` files `lab/n-<k>.txt` (content `nonce-<k>-<rand>`) under `root`; returns their nonces. */
export function writeReadFiles(root, count = 32) {
  mkdirSync(join(root, "lab"), { recursive: true });
  const nonces = [];
  for (let k = 0; k < count; k++) {
    const n = `nonce-${k}-${randomBytes(6).toString("hex")}`;
    writeFileSync(join(root, "lab", `n-${k}.txt`), `${n}\n`);
    nonces.push(n);
  }
  return nonces;
}

/** Per-kind tallies. */
export function newTally() {
  return { done: 0, failed: 0, mismatched: 0, duplicated: 0, errors: [], ms: [] };
}

function record(t, ok, ms, err) {
  if (ok) {
    t.done++;
    t.ms.push(ms);
    if (t.ms.length > 20_000) t.ms.splice(0, 10_000);
  } else {
    t.failed++;
    if (t.errors.length < 20) t.errors.push(err);
  }
}

/** p50 / p99 / max of a tally's latencies. */
export function summarize(t) {
  const s = [...t.ms].sort((a, b) => a - b);
  const q = (p) => (s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : null);
  return { done: t.done, failed: t.failed, mismatched: t.mismatched, duplicated: t.duplicated, p50Ms: q(0.5), p99Ms: q(0.99), maxMs: s.at(-1) ?? null, errors: t.errors.slice(0, 5) };
}

/**
 * One handoff from `gw` to `target` whose task carries a fresh nonce; checks the reply names
 * it and, when `mock` is given, that the upstream model saw the task exactly once (a duplicate
 * delivery runs the remote agent twice).
 */
export async function handoffOnce(gw, { target = "coder", mock, tally, timeoutMs = 60_000 } = {}) {
  const nonce = `h-${randomBytes(8).toString("hex")}`;
  const task = `echo ${nonce}`;
  const r = await invokeTool(gw, "cluster_handoff", { target, task }, { timeoutMs });
  let ok = r.ok && r.text.includes(`MOCK_REPLY: ${task}`);
  if (r.ok && !ok && tally) tally.mismatched++;
  if (ok && mock) {
    const seen = mock.completions().filter((q) => q.text === task).length;
    if (seen > 1 && tally) tally.duplicated++;
  }
  if (tally) record(tally, ok, r.ms, r.ok ? `mismatch: ${r.text.slice(0, 200)}` : r.error);
  return { ...r, ok, nonce };
}

/** One cluster_read of file k of `nonces` on `node`; the text must be that file's nonce. */
export async function readOnce(gw, { node, nonces, k, tally, timeoutMs = 30_000 }) {
  const r = await invokeTool(gw, "cluster_read", { node, path: `lab/n-${k}.txt` }, { timeoutMs });
  const ok = r.ok && r.text.includes(nonces[k]) && !nonces.some((n, i) => i !== k && r.text.includes(n));
  if (r.ok && !ok && tally) tally.mismatched++;
  if (tally) record(tally, ok, r.ms, r.ok ? `mismatch: ${r.text.slice(0, 200)}` : r.error);
  return { ...r, ok };
}

/**
 * One chat completion through `proxyPort` (home's local OpenAI-compatible proxy) whose prompt
 * is a nonce; the reply must be `MOCK_REPLY: <prompt>`.
 */
export async function modelOnce({ proxyPort, apiKey, model, tally, timeoutMs = 30_000 }) {
  const nonce = `m-${randomBytes(8).toString("hex")}`;
  const t0 = Date.now();
  let ok = false;
  let err;
  try {
    const r = await fetch(`http://127.0.0.1:${proxyPort}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model, messages: [{ role: "user", content: `say ${nonce}` }] }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const j = await r.json();
    const text = j.choices?.[0]?.message?.content ?? "";
    ok = r.ok && text === `MOCK_REPLY: say ${nonce}`;
    if (r.ok && !ok && tally) tally.mismatched++;
    if (!ok) err = `HTTP ${r.status}: ${JSON.stringify(j).slice(0, 300)}`;
  } catch (e) {
    err = `request: ${e.message}`;
  }
  if (tally) record(tally, ok, Date.now() - t0, err);
  return { ok, nonce, ms: Date.now() - t0, error: err };
}

/**
 * Runs `fn` back to back (at most one in flight, at least `everyMs` apart) until `until()` or
 * the returned stop() is called; resolves when the last call ended.
 */
export function loop(fn, { everyMs = 0, until = () => false } = {}) {
  let stopped = false;
  const done = (async () => {
    while (!stopped && !until()) {
      const t0 = Date.now();
      try { await fn(); } catch { /* each fn records its own failures */ }
      const rest = everyMs - (Date.now() - t0);
      if (rest > 0 && !stopped) await sleep(rest);
    }
  })();
  return { stop: () => { stopped = true; return done; }, done };
}
