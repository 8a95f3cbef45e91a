// npm run demo: the product's main job on this machine, from a fresh clone.
// Builds the addon and shim, provisions Node 24 + the pinned OpenClaw into the cache, starts a
// mock LLM upstream and three real OpenClaw gateways on loopback — cloud (listens), office and
// home (dial cloud only) — with clawmatrix loaded from the packed plugin, waits for the mesh, and
// prints what an operator sees on home: office reachable via cloud; home has no LLM of its own and
// answers with office's model through the mesh; a model call from home's local OpenAI-compatible
// proxy streams office's model through cloud; home's agent runs a command on office through cloud
// (cluster_exec) and hands a task to office's `coder`, printing its output as it streams in
// (cluster_handoff). Everything is stopped at the end unless --keep is given (then Ctrl-C stops it).
import { rmSync } from "node:fs";
import { dirname } from "node:path";
import { build } from "./lib.mjs";

const keep = process.argv.includes("--keep");
const t0 = Date.now();
const step = (m) => console.log(`[demo +${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);

await build();
const { provision, startMockLlm, startGateways, stopAll, cleanRunDir } = await import("../tests/harness/index.mjs");
const { stagePlugin } = await import("../tests/e2e/plugin-package.mjs");
const { freePort } = await import("../tests/js/free-port.mjs");

step("provisioning Node 24 + OpenClaw 2026.9.6 (cached after the first run)");
const provisioned = await provision({ log: (m) => step(m) });
const mock = await startMockLlm();
step(`mock LLM upstream on ${mock.url} (configured as provider "mock" on office only, with a key only office has)`);
const pkg = stagePlugin();
let exitCode = 0;
let runDir;
try {
  const secret = "demo-mesh-secret-change-me";
  const cloudPort = await freePort();
  const cloudUrl = `ws://127.0.0.1:${cloudPort}`;
  const nodes = [
    {
      name: "cloud",
      extraConfig: { models: { providers: { mock: null } } },
      pluginConfig: {
        nodeId: "cloud-01", secret, listen: true, listenHost: "127.0.0.1", listenPort: cloudPort, peers: [],
        agents: [{ id: "reviewer", description: "Reviews code", tags: ["review"] }], tags: ["cloud"],
        proxyPort: await freePort(),
      },
    },
    {
      name: "office",
      pluginConfig: {
        nodeId: "office-01", secret, peers: [{ nodeId: "cloud-01", url: cloudUrl }],
        agents: [{ id: "coder", description: "Has the code repos; can read, write and run commands", tags: ["coding"] }],
        models: [{ id: "mock-model", provider: "mock", description: "Demo model served by the mock upstream" }],
        tags: ["office", "gpu"], proxyPort: await freePort(),
        toolProxy: { enabled: true, allow: ["exec", "read", "write", "edit"], deny: [] },
      },
      // Office alone has the model's key; `coder` is the OpenClaw agent behind the offered one.
      extraConfig: { models: { providers: { mock: { apiKey: "sk-demo-office-only" } } }, agents: { entries: { main: {}, coder: {} } } },
    },
    {
      name: "home",
      pluginConfig: {
        nodeId: "home-01", secret, peers: [{ nodeId: "cloud-01", url: cloudUrl }],
        agents: [{ id: "assistant", description: "Personal assistant", tags: ["general"] }],
        proxyModels: [{ id: "mock-model", nodeId: "office-01" }], tags: ["home"], proxyPort: await freePort(),
      },
      // Home has no model provider: its default model is office's, through the mesh.
      extraConfig: { models: { providers: { mock: null } }, agents: { defaults: { model: { primary: "clawmatrix-office-01/mock-model" } } } },
    },
  ];
  step("starting cloud, office and home (real OpenClaw gateways, ~30-60 s on 2 cores)");
  const [cloud, office, home] = await startGateways(nodes, { provisioned, mockUrl: mock.url, pluginDir: pkg.dir });
  runDir = dirname(cloud.dir);
  for (const g of [cloud, office, home]) step(`${g.name} gateway ready on ${g.url} (state in ${g.dir})`);

  step("waiting for home to see office through cloud");
  const deadline = Date.now() + 120_000;
  let meshed = false;
  while (Date.now() < deadline && !meshed) {
    const s = await home.call("clawmatrix.status").catch(() => undefined);
    meshed = s?.peers?.some((p) => p.nodeId === "office-01" && p.state === "relayed") ?? false;
    if (!meshed) await new Promise((r) => setTimeout(r, 500));
  }
  if (!meshed) throw new Error("home did not see office through cloud within 120 s");
  for (const g of [home, cloud]) {
    const status = await g.cli(["clawmatrix", "status"]);
    if (status.code !== 0) throw new Error(`clawmatrix status on ${g.name} failed:\n${status.stderr}`);
    console.log(`\n$ openclaw clawmatrix status   # on ${g.name}\n${status.stdout}`);
  }
  step("home: clawmatrix writes models.providers.clawmatrix-office-01 (home's proxy, local token) from gossip");
  let provider;
  for (const until = Date.now() + 120_000; !provider && Date.now() < until; ) {
    provider = home.readConfig().models?.providers?.["clawmatrix-office-01"];
    if (!provider) await new Promise((r) => setTimeout(r, 500));
  }
  if (!provider) throw new Error("home did not get a provider for office-01 within 120 s");
  console.log(`\nmodels.providers.clawmatrix-office-01 on home: ${JSON.stringify({ ...provider, apiKey: provider.apiKey.slice(0, 8) + "…" })}\n`);
  step("a model call from home's proxy streams office's model through cloud (POST /v1/chat/completions, stream: true)");
  const res = await fetch(`${provider.baseUrl}/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${provider.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "mock-model", stream: true, messages: [{ role: "user", content: "stream 8 chunks every 150 ms" }] }),
    signal: AbortSignal.timeout(60_000),
  });
  if (res.status !== 200) throw new Error(`model call failed: ${res.status} ${await res.text()}`);
  process.stdout.write(`$ curl ${provider.baseUrl}/chat/completions   # on home, answered by ${res.headers.get("x-clawmatrix-node")}\n`);
  const decoder = new TextDecoder();
  let pending = "";
  for await (const part of res.body) {
    pending += decoder.decode(part, { stream: true });
    let i;
    while ((i = pending.indexOf("\n\n")) >= 0) {
      const event = pending.slice(0, i).replace(/^data: /, "");
      pending = pending.slice(i + 2);
      if (event === "[DONE]") continue;
      process.stdout.write(JSON.parse(event).choices?.[0]?.delta?.content ?? "");
    }
  }
  process.stdout.write("\n\n");
  step("home's agent answers with office's model (home has no LLM of its own)");
  const hello = await home.agentTurn("say hello");
  console.log(`$ openclaw agent --agent main --message 'say hello'   # on home\n${(hello?.result?.payloads ?? []).map((p) => p.text ?? "").join("\n")}\n`);
  step("home's agent runs a command on office through cloud (cluster_exec; the mock LLM plays the model)");
  const command = "echo \"hello from $(hostname) in $(pwd)\"; uname -sr";
  const turn = await home.agentTurn(`call tool cluster_exec with ${JSON.stringify({ node: "office-01", command })}`);
  const reply = (turn?.result?.payloads ?? []).map((p) => p.text ?? "").join("\n");
  if (!/TOOL_RESULT\[cluster_exec\]/.test(reply)) throw new Error(`cluster_exec did not run: ${JSON.stringify(turn).slice(0, 1000)}`);
  console.log(`\n$ openclaw agent --agent main --message 'call tool cluster_exec with {"node":"office-01",...}'   # on home\n${reply}\n`);

  step("home's agent hands a task to office's coder through cloud (cluster_handoff); output as it streams in:");
  const task = "stream 30 chunks every 500 ms";
  const handoff = home.agentTurn(`call tool cluster_handoff with ${JSON.stringify({ target: "coder", task })}`, { timeoutMs: 180_000 });
  let done = false;
  let shown = "";
  handoff.finally(() => { done = true; }).catch(() => {});
  while (!done) {
    const s = await home.call("clawmatrix.status").catch(() => undefined);
    const rec = [...(s?.handoffs?.recent ?? [])].reverse().find((r) => r.role === "caller");
    if (rec?.tail && rec.tail !== shown) {
      shown = rec.tail;
      console.log(`  [home +${((Date.now() - t0) / 1000).toFixed(1)}s] ${rec.chunks} chunk(s) from ${rec.agent} on ${rec.peer} so far: …${rec.tail.slice(-60)}`);
    }
    if (!done) await new Promise((r) => setTimeout(r, 250));
  }
  const hturn = await handoff;
  const hreply = (hturn?.result?.payloads ?? []).map((p) => p.text ?? "").join("\n");
  if (!/TOOL_RESULT\[cluster_handoff\]: \[handoff: coder on office-01 answered\]/.test(hreply)) {
    throw new Error(`cluster_handoff did not complete: ${JSON.stringify(hturn).slice(0, 1000)}`);
  }
  console.log(`\n$ openclaw agent --agent main --message 'call tool cluster_handoff with {"target":"coder","task":"${task}"}'   # on home\n${hreply}\n`);

  if (keep) {
    step("running; press Ctrl-C to stop");
    await new Promise((resolve) => process.once("SIGINT", resolve));
  }
} catch (e) {
  console.error(`demo failed: ${e.message}`);
  exitCode = 1;
} finally {
  await stopAll();
  await mock.close();
  // Keep the gateways' state and logs for inspection only when asked to (--keep).
  if (runDir && !keep) cleanRunDir(runDir);
  else if (runDir) step(`state and logs kept in ${runDir}`);
  rmSync(pkg.tmp, { recursive: true, force: true });
  step("stopped");
}
process.exit(exitCode);
