// Shared helpers for the build/test/demo/bench scripts. Node built-ins only: these scripts run
// on a fresh clone before `npm ci`.
import { spawn } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Run a command inheriting stdio (or capturing with {capture:true}); reject on non-zero exit or timeout. */
export function run(cmd, args, { cwd = ROOT, env = process.env, timeoutMs = 30 * 60_000, capture = false, tee = false } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(cmd, args, { cwd, env, stdio: capture || tee ? ["ignore", "pipe", "pipe"] : "inherit" });
    let out = "";
    let err = "";
    if (capture || tee) {
      child.stdout.on("data", (d) => { out += d; if (tee) process.stdout.write(d); });
      child.stderr.on("data", (d) => { err += d; if (tee) process.stderr.write(d); });
    }
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${cmd} ${args.join(" ")}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("error", (e) => { clearTimeout(timer); reject(e); });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const result = { code, signal, stdout: out, stderr: err, ms: Date.now() - started };
      if (code === 0) resolve(result);
      else reject(Object.assign(new Error(`${cmd} ${args.join(" ")} exited with ${code ?? signal}`), result));
    });
  });
}

/** npm ci when node_modules is missing or older than package-lock.json. */
export async function ensureNodeModules() {
  const marker = join(ROOT, "node_modules", ".package-lock.json");
  const lock = join(ROOT, "package-lock.json");
  if (existsSync(marker) && statSync(marker).mtimeMs >= statSync(lock).mtimeMs) return;
  console.log("[setup] npm ci");
  await run("npm", ["ci", "--no-audit", "--no-fund"], { timeoutMs: 10 * 60_000 });
}

export function bin(name) {
  return join(ROOT, "node_modules", ".bin", name);
}

/** Build the addon (debug unless release) and the shim. */
export async function build({ release = false } = {}) {
  await ensureNodeModules();
  const args = ["build", "--platform", "--output-dir", "native", "--js", "index.cjs", "--dts", "index.d.ts", "--no-const-enum"];
  if (release) args.push("--release");
  console.log(`[build] napi ${args.join(" ")}`);
  await run(bin("napi"), args);
  console.log("[build] tsc");
  await run(bin("tsc"), ["-p", "tsconfig.json"]);
}
