// Issue 4 end to end: shared models on three real OpenClaw gateways. The mock upstream (the only
// LLM) is configured on office alone, with a key only office knows; home has no model provider of
// its own. clawmatrix writes home's `models.providers.clawmatrix-office-01` (pointing at home's proxy), home's
// agent answers through office's model, the `openai` npm client streams from home's proxy, and a
// client that leaves cancels office's upstream request across two hops.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import OpenAI from "openai";
import { startGateways, agentReplyText } from "../harness/index.mjs";
import { startSuite, endSuite } from "./plugin-package.mjs";
import { freePort } from "../js/free-port.mjs";

const SECRET = "models-e2e-secret-0123456789";
const OFFICE_KEY = `sk-office-only-${Math.random().toString(36).slice(2)}`;
// OpenClaw's reference (provider `clawmatrix-<nodeId>`); the proxy accepts it too, and lists the
// model as `<nodeId>/<modelId>`.
const MODEL = "clawmatrix-office-01/mock-model";
const PROXY_MODEL = "office-01/mock-model";
let mock;
let pkg;
let cloud;
let office;
let home;
let homeProxy;
const metrics = {};
/** The suite's runtime, mock LLM and staged plugin (see startSuite / endSuite). */
const fx = {};

before(async () => {
  await startSuite(fx);
  ({ mock, pkg } = fx);
  const { provisioned } = fx;
  const cloudPort = await freePort();
  const url = `ws://127.0.0.1:${cloudPort}`;
  const base = { secret: SECRET };
  const proxyPorts = [await freePort(), await freePort(), await freePort()];
  homeProxy = proxyPorts[2];
  [cloud, office, home] = await startGateways(
    [
      {
        name: "cloud",
        pluginConfig: { ...base, nodeId: "cloud-01", listen: true, listenHost: "127.0.0.1", listenPort: cloudPort, proxyPort: proxyPorts[0] },
        extraConfig: { models: { providers: { mock: null } } },
      },
      {
        name: "office",
        pluginConfig: {
          ...base,
          nodeId: "office-01",
          proxyPort: proxyPorts[1],
          peers: [{ nodeId: "cloud-01", url }],
          models: [{ id: "mock-model", provider: "mock" }],
        },
        extraConfig: { models: { providers: { mock: { apiKey: OFFICE_KEY } } } },
      },
      {
        name: "home",
        pluginConfig: { ...base, nodeId: "home-01", proxyPort: homeProxy, peers: [{ nodeId: "cloud-01", url }], agents: [{ id: "main", description: "assistant", tags: [] }] },
        // Home has no LLM of its own: its default model is office's, through the mesh.
        extraConfig: { models: { providers: { mock: null } }, agents: { defaults: { model: { primary: MODEL } } } },
      },
    ],
    { provisioned, mockUrl: mock.url, pluginDir: pkg.dir },
  );
  metrics.readyMs = [cloud, office, home].map((g) => g.timings.readyMs);
}, { timeout: 15 * 60_000 });

after(() => endSuite(fx, metrics, cloud));

/** Waits for home's config to hold clawmatrix's provider for office; returns the entry. */
async function officeProvider(timeoutMs = 120_000) {
  const t0 = Date.now();
  for (;;) {
    const entry = home.readConfig().models?.providers?.["clawmatrix-office-01"];
    if (entry) return { entry, ms: Date.now() - t0 };
    if (Date.now() - t0 > timeoutMs) throw new Error(`home: models.providers.clawmatrix-office-01 not written within ${timeoutMs} ms; log:\n${home.logTail(30)}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/** Every file under `dir` (bounded), for the "no upstream key on home" check. */
function filesUnder(dir, out = [], limit = 5000) {
  for (const name of readdirSync(dir)) {
    if (out.length >= limit) break;
    const p = join(dir, name);
    const st = vanishing(() => statSync(p));
    if (!st) continue;
    if (st.isDirectory()) filesUnder(p, out, limit);
    else if (st.size < 8 << 20) out.push(p);
  }
  return out;
}

/** `f()`, or undefined when the file vanished meanwhile (the gateway's SQLite journals come and go). */
function vanishing(f) {
  try {
    return f();
  } catch (e) {
    if (e.code === "ENOENT") return undefined;
    throw e;
  }
}

test("home gets a provider per serving node: clawmatrix-office-01 at home's proxy with the local token", { timeout: 300_000 }, async () => {
  const { entry, ms } = await officeProvider();
  metrics.providerWrittenMs = ms;
  assert.equal(entry.baseUrl, `http://127.0.0.1:${homeProxy}/node/office-01/v1`);
  assert.match(entry.apiKey, /^cmx-[0-9a-f]{64}$/);
  assert.deepEqual(entry.models.map((m) => m.id), ["mock-model"]);
  const r = await modelsList(home);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /clawmatrix-office-01\/mock-model/);
  assert.equal(home.readConfig().models?.providers?.["office-01"], undefined, "never the bare node id");
});

/**
 * `openclaw models list --all --json` on `gw`. Right after clawmatrix writes a provider the
 * gateway reloads its config and refreshes the model catalog; until that finishes the CLI fails
 * with "Model catalog is not ready. Retry after ...": retried (bounded), any other result returned.
 */
async function modelsList(gw, timeoutMs = 150_000) {
  const t0 = Date.now();
  for (let attempt = 1; ; attempt++) {
    const r = await gw.cli(["models", "list", "--all", "--json"], { timeoutMs: Math.max(10_000, timeoutMs - (Date.now() - t0)) });
    const refreshing = r.code !== 0 && /Model catalog is not ready/.test(r.stderr + r.stdout);
    if (!refreshing || Date.now() - t0 > timeoutMs) {
      metrics.modelsListAttempts = attempt;
      return r;
    }
    await new Promise((res) => setTimeout(res, 2_000));
  }
}

test("an agent turn on home answers with office's model through cloud", { timeout: 240_000 }, async () => {
  await officeProvider();
  const before = mock.completions().length;
  const res = await home.agentTurn("hello from home");
  const text = agentReplyText(res);
  assert.match(text, /MOCK_REPLY: hello from home/, JSON.stringify(res).slice(0, 2000));
  const reqs = mock.completions().slice(before);
  assert.ok(reqs.length >= 1, "the upstream was called");
  assert.ok(reqs.every((q) => q.auth === `Bearer ${OFFICE_KEY}`), `office's key reached the upstream: ${reqs.map((q) => q.auth)}`);
  assert.ok(reqs.every((q) => q.model === "mock-model"), "the upstream got its own model id");
});

test("a scripted tool call round trip through the proxy keeps tool_calls intact", { timeout: 240_000 }, async () => {
  await officeProvider();
  const res = await home.agentTurn('call tools cluster_peers with {} and cluster_peers with {"x": 1}');
  const text = agentReplyText(res);
  // Two parallel calls (index 0 and 1) came back as two tool results.
  const results = text.match(/TOOL_RESULT\[cluster_peers\]/g) ?? [];
  assert.equal(results.length, 2, text);
  assert.match(text, /office-01/, text);
});

test("the openai npm client streams from home's proxy (and gets OpenAI errors)", { timeout: 120_000 }, async () => {
  const { entry } = await officeProvider();
  const client = new OpenAI({ baseURL: `http://127.0.0.1:${homeProxy}/v1`, apiKey: entry.apiKey, maxRetries: 0, timeout: 60_000 });
  const t0 = performance.now();
  const stream = await client.chat.completions.create({
    model: MODEL,
    stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: "user", content: "stream 5 chunks every 50 ms" }],
  });
  let text = "";
  let usage;
  let firstMs;
  for await (const chunk of stream) {
    firstMs ??= performance.now() - t0;
    text += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  metrics.openaiFirstChunkMs = Math.round(firstMs);
  assert.equal(text, "chunk-1 chunk-2 chunk-3 chunk-4 chunk-5 ");
  assert.ok(usage?.total_tokens > 0, "usage passed through");
  const full = await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "reason then answer" }] });
  assert.equal(full.choices[0].message.content, "ANSWER: reason then answer");
  assert.equal(full.choices[0].message.reasoning_content, "reasoning-1 reasoning-2 reasoning-3");
  const models = await client.models.list();
  assert.ok(models.data.some((m) => m.id === PROXY_MODEL && m.owned_by === "office-01"), JSON.stringify(models.data));
  const viaProxyName = await client.chat.completions.create({ model: PROXY_MODEL, messages: [{ role: "user", content: "reason then answer" }] });
  assert.equal(viaProxyName.choices[0].message.content, "ANSWER: reason then answer");
  await assert.rejects(client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] }), (e) => e.status === 404 && /no node in the mesh serves it/.test(e.message));
  const bad = new OpenAI({ baseURL: `http://127.0.0.1:${homeProxy}/v1`, apiKey: "wrong", maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "x" }] }), (e) => e.status === 401);
});

test("429 from office's upstream reaches home's client with Retry-After and the node", { timeout: 60_000 }, async () => {
  const { entry } = await officeProvider();
  const r = await fetch(`http://127.0.0.1:${homeProxy}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${entry.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "fail with 429" }] }),
    signal: AbortSignal.timeout(30_000),
  });
  assert.equal(r.status, 429);
  assert.equal(r.headers.get("retry-after"), "1");
  assert.equal(r.headers.get("x-clawmatrix-node"), "office-01");
  assert.equal((await r.json()).error.code, "rate_limit_exceeded");
});

test("a client that leaves mid-stream cancels office's upstream request within 500 ms (two hops)", { timeout: 60_000 }, async () => {
  const { entry } = await officeProvider();
  const ctl = new AbortController();
  const r = await fetch(`http://127.0.0.1:${homeProxy}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${entry.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, stream: true, messages: [{ role: "user", content: "hang until the client leaves" }] }),
    signal: ctl.signal,
  });
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  const first = await reader.read();
  assert.match(new TextDecoder().decode(first.value), /hanging/);
  const hung = mock.completions().at(-1);
  const abortedAt = Date.now();
  ctl.abort();
  const deadline = Date.now() + 5000;
  let d;
  while (!(d = mock.disconnects.find((x) => x.requestId === hung.id)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.ok(d, "the upstream saw its client go away");
  metrics.cancelMs = d.ts - abortedAt;
  assert.ok(d.ts - abortedAt <= 500, `upstream cancelled ${d.ts - abortedAt} ms after the client left`);
});

test("home holds no upstream key anywhere (config, state, logs)", { timeout: 60_000 }, async () => {
  await officeProvider();
  const files = filesUnder(home.dir);
  assert.ok(files.length > 0);
  for (const f of files) assert.ok(!(vanishing(() => readFileSync(f))?.includes(OFFICE_KEY) ?? false), `${f} contains office's key`);
  assert.ok(JSON.stringify(office.readConfig()).includes(OFFICE_KEY), "sanity: office's config has it");
});
