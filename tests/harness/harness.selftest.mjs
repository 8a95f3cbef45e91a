// Self-check of the harness against a real gateway (not part of the normal suite):
//   node tests/harness/harness.selftest.mjs
// Provisions, starts the mock LLM and ONE gateway without the plugin, runs two agent turns
// (plain reply, built-in `read` tool round trip), checks the upstream auth, stops the gateway and
// checks that its process and port are gone. Exits non-zero on any failure; hard limit 4 min.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import { agentReplyText, cleanRunDir, isPortFree, provision, startGateways, startMockLlm, stopAll } from './index.mjs';
import { pidAlive, groupAlive } from './procs.mjs';

const HARD_LIMIT_MS = 4 * 60_000 - 10_000;
const t0 = Date.now();
const log = (/** @type {string} */ m) => process.stderr.write(`[selftest +${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}\n`);

const watchdog = setTimeout(() => {
  log(`FAIL: over the ${HARD_LIMIT_MS / 1000} s limit`);
  process.exit(2); // the 'exit' handler of procs.mjs SIGKILLs the gateway group
}, HARD_LIMIT_MS);
watchdog.unref();

/** @type {Record<string, number|string>} */
const timings = {};
let runDir = '';
let ok = false;
/** @type {Awaited<ReturnType<typeof startMockLlm>>|null} */
let mock = null;
try {
  let t = Date.now();
  const prov = await provision({ log });
  timings.provisionMs = Date.now() - t;
  log(`provisioned openclaw ${prov.openclawVersion} (node ${prov.nodeVersion}) in ${timings.provisionMs} ms`);

  mock = await startMockLlm();
  log(`mock LLM at ${mock.url}`);

  t = Date.now();
  const [gw] = await startGateways([{ name: 'solo' }], { mockUrl: mock.url, provisioned: prov });
  runDir = path.dirname(gw.dir);
  timings.startCallMs = Date.now() - t;
  timings.healthMs = gw.timings.healthMs;
  timings.readyMs = gw.timings.readyMs;
  log(`gateway ${gw.name} pid ${gw.pid} port ${gw.port}: /health ${gw.timings.healthMs} ms, /readyz ${gw.timings.readyMs} ms (dir ${gw.dir})`);

  const idle = gw.rss();
  timings.idleMainMiB = Math.round(idle.mainKiB / 1024);
  timings.idleTreeMiB = Math.round(idle.treeKiB / 1024);
  log(`idle RSS: main ${timings.idleMainMiB} MiB, tree ${timings.idleTreeMiB} MiB (${idle.procs.map((p) => `${p.comm}:${Math.round(p.rssKiB / 1024)}`).join(', ')})`);

  t = Date.now();
  const r1 = await gw.agentTurn('hello there', { timeoutMs: 90_000 });
  timings.firstTurnMs = Date.now() - t;
  log(`turn 1 (${timings.firstTurnMs} ms): status=${r1.status} text=${JSON.stringify(agentReplyText(r1))}`);
  assert.equal(r1.status, 'ok', `turn 1 status: ${JSON.stringify(r1).slice(0, 1000)}`);
  assert.match(agentReplyText(r1), /MOCK_REPLY: hello there/);

  fs.writeFileSync(path.join(gw.workspace, 'hello.txt'), 'secret-file-content-42\n');
  t = Date.now();
  const r2 = await gw.agentTurn('call tool read with {"path":"hello.txt"}', { timeoutMs: 90_000 });
  timings.toolTurnMs = Date.now() - t;
  log(`turn 2 (${timings.toolTurnMs} ms): status=${r2.status} text=${JSON.stringify(agentReplyText(r2))}`);
  assert.equal(r2.status, 'ok', `turn 2 status: ${JSON.stringify(r2).slice(0, 1000)}`);
  assert.match(agentReplyText(r2), /TOOL_RESULT\[read\]: secret-file-content-42/);

  const completions = mock.completions();
  assert.ok(completions.length >= 3, `expected >= 3 upstream requests, got ${completions.length}`);
  for (const r of completions) assert.match(r.auth ?? '', /^Bearer \S+/, `request ${r.id} auth ${r.auth}`);
  log(`mock saw ${completions.length} completions; auth ${completions[0].auth}; decisions ${completions.map((r) => r.decision).join(',')}`);

  const after = gw.rss();
  timings.afterTurnsMainMiB = Math.round(after.mainKiB / 1024);

  const pid = gw.pid;
  const st = await gw.stop();
  timings.stopMs = st.ms;
  log(`stopped in ${st.ms} ms (forced=${st.forced})`);
  assert.equal(pidAlive(pid), false, `pid ${pid} still alive`);
  assert.equal(groupAlive(pid), false, `process group ${pid} still alive`);
  assert.equal(await isPortFree(gw.port), true, `port ${gw.port} still bound`);
  assert.deepEqual(await gw.stop(), { ms: 0, forced: false }, 'stop() is idempotent');
  ok = true;
} catch (e) {
  log(`FAIL: ${/** @type {Error} */ (e).stack ?? e}`);
  if (runDir) log(`run dir kept for inspection: ${runDir}`);
} finally {
  await stopAll();
  await mock?.close();
  if (ok && runDir) cleanRunDir(runDir);
}
timings.totalMs = Date.now() - t0;
process.stdout.write(JSON.stringify({ ok, timings }, null, 2) + '\n');
clearTimeout(watchdog);
process.exitCode = ok ? 0 : 1;
