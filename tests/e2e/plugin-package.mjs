// Stage the plugin as a packed npm package (what users install): `npm pack` of the repo, then
// extracted. Gateways load the extracted folder (dev path) or install the tarball (release path),
// never the repo itself, so build output like target/ is never copied by OpenClaw's plugin capture.
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { provision, startMockLlm, stopAll, cleanRunDir } from "../harness/index.mjs";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** @returns {{ tgz: string, dir: string, tmp: string }} */
export function stagePlugin() {
  for (const f of ["dist/index.js", "native/index.cjs"]) {
    if (!existsSync(join(ROOT, f))) throw new Error(`stagePlugin: ${f} is missing; run npm run build first`);
  }
  const tmp = mkdtempSync(join(tmpdir(), "clawmatrix-pkg-"));
  const out = execFileSync("npm", ["pack", "--json", "--pack-destination", tmp], {
    cwd: ROOT,
    encoding: "utf8",
    timeout: 120_000,
  });
  const [info] = JSON.parse(out);
  const tgz = join(tmp, info.filename);
  const extract = join(tmp, "extract");
  mkdirSync(extract);
  execFileSync("tar", ["xzf", tgz, "-C", extract], { timeout: 60_000 });
  return { tgz, dir: join(extract, "package"), tmp };
}

/**
 * The fixtures every real-gateway suite starts in its `before`: the provisioned runtime, the mock
 * LLM and the staged plugin. Filled into `fx` one by one, so `endSuite(fx, ...)` in `after` also
 * cleans up what a failed `before` had already started.
 * @param {{provisioned?: any, mock?: any, pkg?: {tgz: string, dir: string, tmp: string}}} fx
 * @param {object} [provisionOpts] passed to `provision()`
 */
export async function startSuite(fx, provisionOpts) {
  fx.provisioned = await provision(provisionOpts);
  fx.mock = await startMockLlm();
  fx.pkg = stagePlugin();
  return fx;
}

/**
 * The `after` of every real-gateway suite: print its metrics, stop every gateway (by PID), close
 * the mock, remove the run dir (kept with CLAWMATRIX_KEEP_RUN) and the staged package.
 * @param {{mock?: any, pkg?: {tmp: string}}} fx @param {object} metrics
 * @param {{dir: string} | undefined} gateway any gateway of the suite (its parent is the run dir)
 */
export async function endSuite(fx, metrics, gateway) {
  console.log(`[metrics] ${JSON.stringify(metrics)}`);
  await stopAll();
  await fx.mock?.close();
  if (gateway && !process.env.CLAWMATRIX_KEEP_RUN) cleanRunDir(dirname(gateway.dir));
  if (fx.pkg) rmSync(fx.pkg.tmp, { recursive: true, force: true });
}

/**
 * Poll `gw`'s clawmatrix.status until `pred(status)` holds; returns the status and the wait.
 * Every e2e suite waits this way; `show` picks what of the last status the timeout error prints.
 */
export async function waitStatus(gw, pred, timeoutMs, what, { pollMs = 500, show = (s) => s } = {}) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < timeoutMs) {
    last = await gw.call("clawmatrix.status", {}, { timeoutMs: 15_000 }).catch((e) => ({ error: e.message }));
    if (!last.error && pred(last)) return { status: last, ms: Date.now() - t0 };
    await new Promise((r) => setTimeout(r, pollMs));
  }
  throw new Error(`${gw.name}: ${what} not seen within ${timeoutMs} ms; last status: ${JSON.stringify(last?.error ? last : show(last))}`);
}
