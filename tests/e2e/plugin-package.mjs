// Stage the plugin as a packed npm package (what users install): `npm pack` of the repo, then
// extracted. Gateways load the extracted folder (dev path) or install the tarball (release path),
// never the repo itself, so build output like target/ is never copied by OpenClaw's plugin capture.
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

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
