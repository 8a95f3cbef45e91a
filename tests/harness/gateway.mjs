// Real OpenClaw gateways for end-to-end tests: per-gateway dirs and config, parallel start with a
// /readyz probe, a handle to drive each one (CLI, RPC, agent turns, HTTP, config, logs, RSS), and
// teardown that never leaves a process behind.
//
// Layout of a run dir (default: a fresh mkdtemp under os.tmpdir()):
//   <runDir>/.clawmatrix-harness-run     marker that allows cleanRunDir() to delete the dir
//   <runDir>/<name>/openclaw.json        generated config (config.mjs)
//   <runDir>/<name>/{state,home,workspace,logs,tmp}/
//   <runDir>/<name>/logs/gw.log          gateway stdout+stderr (appended across restarts)
//   <runDir>/<name>/logs/openclaw.log    OpenClaw's logging.file

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { gatewayConfig, writeJsonAtomic } from './config.mjs';
import { allocateGatewayPorts, isPortFree, releaseGatewayPort } from './ports.mjs';
import { groupAlive, pidAlive, runCommand, signalAllGroups, trackGroup, treeRss, untrackGroup } from './procs.mjs';

const RUN_MARKER = '.clawmatrix-harness-run';
const POLL_MS = 250;
/** Extra time a CLI process gets beyond the operation's own timeout (CLI start-up is 2-13 s). */
const CLI_SLACK_MS = 45_000;

/**
 * @typedef {object} GatewaySpec
 * @property {string} name            short, [A-Za-z0-9_-]; also the dir name
 * @property {object} [pluginConfig]  plugins.entries.clawmatrix.config; omitted = plugin not loaded
 * @property {object} [extraConfig]   deep-merged into openclaw.json (null deletes a key)
 *
 * @typedef {object} StartOptions
 * @property {string} mockUrl          mock LLM base url (…/v1)
 * @property {import('./provision.mjs').Provisioned} provisioned result of provision()
 * @property {string} [pluginDir]      absolute path of the plugin package (plugins.load.paths)
 * @property {string} [runDir]         default: fresh mkdtemp under os.tmpdir()
 * @property {number} [readyTimeoutMs] default 300000 (a loaded 2-core machine starting three gateways at once has needed ~2 min)
 * @property {Record<string,string>} [env]  extra env for every gateway (and its CLI calls)
 *
 * @typedef {object} Timings
 * @property {number} healthMs  spawn -> first /health 200
 * @property {number} readyMs   spawn -> first /readyz 200
 * @property {number} starts    how many times this gateway was started
 *
 * @typedef {{code:number|null, signal:string|null, stdout:string, stderr:string, ms:number, timedOut:boolean}} CliResult
 */

/** @type {Set<Gateway>} every gateway started and not yet stopped */
const live = new Set();

/**
 * Starts one gateway per spec, in parallel, and waits until each answers /readyz 200.
 * On any failure the gateways of this call are stopped and the error lists every failure.
 * @param {GatewaySpec[]} specs @param {StartOptions} opts @returns {Promise<Gateway[]>}
 */
export async function startGateways(specs, opts) {
  if (!opts?.provisioned?.nodeBin) throw new Error('startGateways: opts.provisioned (result of provision()) is required');
  if (!opts.mockUrl) throw new Error('startGateways: opts.mockUrl is required');
  if (opts.pluginDir !== undefined && !path.isAbsolute(opts.pluginDir)) throw new Error(`startGateways: pluginDir must be absolute: ${opts.pluginDir}`);
  const names = new Set();
  for (const s of specs) {
    if (!/^[A-Za-z0-9_-]{1,32}$/.test(s.name ?? '')) throw new Error(`startGateways: bad gateway name ${JSON.stringify(s.name)}`);
    if (names.has(s.name)) throw new Error(`startGateways: duplicate gateway name ${s.name}`);
    names.add(s.name);
  }
  const runDir = opts.runDir ?? (await fsp.mkdtemp(path.join(os.tmpdir(), 'clawmatrix-run-')));
  await fsp.mkdir(runDir, { recursive: true });
  fs.writeFileSync(path.join(runDir, RUN_MARKER), `created by tests/harness pid ${process.pid}\n`);

  const ports = await allocateGatewayPorts(specs.length);
  const gateways = specs.map((spec, i) => new Gateway(spec, opts, runDir, ports[i]));
  const results = await Promise.allSettled(gateways.map((g) => g.start(opts.readyTimeoutMs ?? 300_000)));
  const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`[${gateways[i].name}] ${r.reason?.message ?? r.reason}`] : []));
  if (failed.length > 0) {
    await Promise.allSettled(gateways.map((g) => g.stop({ timeoutMs: 5_000 })));
    for (const g of gateways) g.release();
    throw new Error(`startGateways: ${failed.length} of ${gateways.length} gateway(s) failed to start\n${failed.join('\n')}`);
  }
  return gateways;
}

/** Stops every gateway started by this process (SIGTERM, SIGKILL after 15 s). */
export async function stopAll() {
  const all = [...live];
  await Promise.allSettled(all.map((g) => g.stop()));
  for (const g of all) g.release();
  signalAllGroups('SIGKILL'); // CLI runs still in flight
}

/**
 * Deletes a run dir created by startGateways (refuses dirs without the harness marker, and dirs
 * that still hold a running gateway).
 * @param {string} dir
 */
export function cleanRunDir(dir) {
  if (!dir || !fs.existsSync(dir)) return;
  const abs = path.resolve(dir);
  if (!fs.existsSync(path.join(abs, RUN_MARKER))) throw new Error(`cleanRunDir: ${abs} has no ${RUN_MARKER} marker; refusing to delete it`);
  for (const g of live) {
    if (g.dir.startsWith(abs + path.sep)) throw new Error(`cleanRunDir: gateway ${g.name} (pid ${g.pid}) still runs in ${abs}; stop it first`);
  }
  fs.rmSync(abs, { recursive: true, force: true });
}

/** Extracts the reply text of an `agentTurn` result (payload texts joined by "\n"). @param {any} result @returns {string} */
export function agentReplyText(result) {
  const payloads = result?.result?.payloads ?? result?.payloads ?? [];
  return payloads.map((/** @type {any} */ p) => p?.text ?? '').filter(Boolean).join('\n');
}

export class Gateway {
  /** @param {GatewaySpec} spec @param {StartOptions} opts @param {string} runDir @param {number} port */
  constructor(spec, opts, runDir, port) {
    /** @readonly */ this.name = spec.name;
    /** Moves to a fresh range if the port turns out taken at start (see start). */
    this.port = port;
    /** @readonly */ this.token = `tok-${spec.name}-${crypto.randomBytes(12).toString('hex')}`;
    /** @readonly */ this.dir = path.join(runDir, spec.name);
    /** @readonly */ this.configPath = path.join(this.dir, 'openclaw.json');
    /** @readonly */ this.logPath = path.join(this.dir, 'logs', 'gw.log');
    /** @readonly */ this.openclawLogPath = path.join(this.dir, 'logs', 'openclaw.log');
    /** @readonly */ this.workspace = path.join(this.dir, 'workspace');
    /** @readonly */ this.stateDir = path.join(this.dir, 'state');
    this.url = `http://127.0.0.1:${port}`;
    /** @type {number} */ this.pid = 0;
    /** @type {Timings} */ this.timings = { healthMs: -1, readyMs: -1, starts: 0 };
    /** @private @type {import('./provision.mjs').Provisioned} */ this.provisioned = opts.provisioned;
    /** @private @type {import('node:child_process').ChildProcess|null} */ this.child = null;
    /** @private @type {Promise<void>|null} */ this.exited = null;
    /** @private @type {{gw:number, oc:number}} log offsets at the last start */ this.startMark = { gw: 0, oc: 0 };

    /** @type {Record<string,string>} */
    const env = {};
    for (const [k, v] of Object.entries(opts.provisioned.env)) {
      if (v === undefined || /^(OPENCLAW_|npm_)/i.test(k)) continue; // no leaks from the caller's setup
      env[k] = v;
    }
    Object.assign(env, {
      HOME: path.join(this.dir, 'home'),
      OPENCLAW_HOME: path.join(this.dir, 'home'),
      OPENCLAW_STATE_DIR: this.stateDir,
      OPENCLAW_CONFIG_PATH: this.configPath,
      OPENCLAW_NO_AUTO_UPDATE: '1',
      DO_NOT_TRACK: '1',
      OPENCLAW_DISABLE_BONJOUR: '1',
      OPENCLAW_OFFLINE: '1',
      OPENCLAW_SKIP_CHANNELS: '1',
      TMPDIR: path.join(this.dir, 'tmp'),
      ...(opts.env ?? {}),
    });
    /** @readonly */ this.env = env;

    for (const d of ['state', 'home', 'workspace', 'logs', 'tmp']) fs.mkdirSync(path.join(this.dir, d), { recursive: true });
    writeJsonAtomic(this.configPath, gatewayConfig({
      port, token: this.token, dir: this.dir, mockUrl: opts.mockUrl,
      pluginDir: opts.pluginDir, pluginConfig: spec.pluginConfig, extraConfig: spec.extraConfig,
    }));
  }

  /** Whether the gateway process is running. */
  get running() {
    return this.child !== null && this.pid > 0 && pidAlive(this.pid);
  }

  /**
   * Spawns `node24 openclaw.mjs gateway run` (own process group) and waits for /readyz 200.
   * The port was free when reserved, but the gateway binds it only after loading (seconds): if
   * something outside the harness took it meanwhile (taken at spawn, or EADDRINUSE in the start-up
   * log), the gateway moves to a fresh reserved range and starts again, at most
   * PORT_CONFLICT_RETRIES times; `port` and `url` then name the new one.
   * @param {number} [readyTimeoutMs] @returns {Promise<Timings>}
   */
  async start(readyTimeoutMs = 300_000) {
    for (let retry = 0; ; retry++) {
      try {
        return await this.startOnce(readyTimeoutMs);
      } catch (e) {
        if (!(/** @type {any} */ (e).portConflict) || retry >= PORT_CONFLICT_RETRIES) throw e;
        await this.movePort(/** @type {Error} */ (e).message.split('\n')[0]);
      }
    }
  }

  /** @private @param {string} why */
  async movePort(why) {
    const [base] = await allocateGatewayPorts(1);
    releaseGatewayPort(this.port);
    fs.appendFileSync(this.logPath, `\n=== harness: ${why}; moving to port ${base} ===\n`);
    this.port = base;
    this.url = `http://127.0.0.1:${base}`;
    const cfg = this.readConfig();
    cfg.gateway = { ...(cfg.gateway ?? {}), port: base };
    this.writeConfig(cfg);
  }

  /** @private @param {number} readyTimeoutMs @returns {Promise<Timings>} */
  async startOnce(readyTimeoutMs) {
    if (this.child) throw new Error(`gateway ${this.name}: already started (pid ${this.pid})`);
    if (!(await isPortFree(this.port))) throw portConflict(`gateway ${this.name}: port ${this.port} is in use`);
    this.startMark = { gw: fileSize(this.logPath), oc: fileSize(this.openclawLogPath) };
    fs.appendFileSync(this.logPath, `\n=== harness: start #${this.timings.starts + 1} at ${new Date().toISOString()} port ${this.port} ===\n`);
    const fd = fs.openSync(this.logPath, 'a');
    const t0 = Date.now();
    const child = spawn(this.provisioned.nodeBin, [this.provisioned.openclawEntry, 'gateway', 'run'], {
      cwd: this.dir, env: this.env, stdio: ['ignore', fd, fd], detached: true,
    });
    fs.closeSync(fd);
    this.child = child;
    this.pid = child.pid ?? 0;
    if (!this.pid) { this.child = null; throw new Error(`gateway ${this.name}: spawn failed`); }
    trackGroup(this.pid, `gateway ${this.name}`);
    live.add(this);
    this.timings = { healthMs: -1, readyMs: -1, starts: this.timings.starts + 1 };
    /** @type {{code:number|null, signal:string|null}|null} */
    let exitInfo = null;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => { exitInfo = { code, signal }; resolve(); }));

    const deadline = t0 + readyTimeoutMs;
    const mark = this.startMark;
    const taken = new RegExp(`EADDRINUSE[^\\n]*:${this.port}\\b`);
    const portTaken = () => taken.test(readFrom(this.logPath, mark.gw) + readFrom(this.openclawLogPath, mark.oc));
    while (Date.now() < deadline) {
      if (exitInfo || portTaken()) {
        const why = exitInfo ? `process exited during start-up (${JSON.stringify(exitInfo)})` : 'its port is taken';
        const conflict = portTaken();
        if (conflict) await this.stop({ timeoutMs: 5_000 });
        const msg = `gateway ${this.name}: ${why}; log ${this.logPath}:\n${this.logTail(40)}`;
        throw conflict ? portConflict(`gateway ${this.name}: port ${this.port} taken (EADDRINUSE)\n${msg}`) : new Error(msg);
      }
      if (this.timings.healthMs < 0 && (await probe(`${this.url}/health`))) this.timings.healthMs = Date.now() - t0;
      if (await probe(`${this.url}/readyz`)) {
        this.timings.readyMs = Date.now() - t0;
        if (this.timings.healthMs < 0) this.timings.healthMs = this.timings.readyMs;
        return this.timings;
      }
      await sleep(POLL_MS);
    }
    throw new Error(`gateway ${this.name}: /readyz not 200 within ${readyTimeoutMs} ms (health ${this.timings.healthMs} ms); log ${this.logPath}:\n${this.logTail(40)}`);
  }

  /**
   * Stops the gateway: signal to its process group, SIGKILL after timeoutMs, waits until the group
   * is gone. Idempotent.
   * @param {{signal?: NodeJS.Signals, timeoutMs?: number}} [o]
   * @returns {Promise<{ms:number, forced:boolean}>}
   */
  async stop({ signal = 'SIGTERM', timeoutMs = 15_000 } = {}) {
    if (!this.child) return { ms: 0, forced: false };
    const pgid = this.pid;
    const t0 = Date.now();
    let forced = false;
    try { process.kill(-pgid, signal); } catch { /* already gone */ }
    const done = () => !pidAlive(pgid) && !groupAlive(pgid);
    while (!done() && Date.now() - t0 < timeoutMs) await sleep(100);
    if (!done()) {
      forced = true;
      try { process.kill(-pgid, 'SIGKILL'); } catch { /* gone */ }
      const killDeadline = Date.now() + 5_000;
      while (!done() && Date.now() < killDeadline) await sleep(50);
    }
    // Reap our direct child (bounded: it is dead or SIGKILLed by now).
    await Promise.race([this.exited, sleep(2_000)]);
    untrackGroup(pgid);
    live.delete(this);
    this.child = null;
    if (!done()) throw new Error(`gateway ${this.name}: process group ${pgid} still alive after SIGKILL`);
    return { ms: Date.now() - t0, forced };
  }

  /** Stops and starts again with the same dir, config and port. @param {{readyTimeoutMs?: number}} [o] */
  async restart({ readyTimeoutMs = 300_000 } = {}) {
    await this.stop();
    const deadline = Date.now() + 10_000;
    while (!(await isPortFree(this.port)) && Date.now() < deadline) await sleep(100);
    return this.start(readyTimeoutMs);
  }

  /** Gives the port range back (call when the gateway will not be restarted). */
  release() {
    releaseGatewayPort(this.port);
  }

  /**
   * Runs `node24 openclaw.mjs ...args` with this gateway's env (cwd = gateway dir).
   * @param {string[]} args @param {{timeoutMs?: number, input?: string}} [o] @returns {Promise<CliResult>}
   */
  cli(args, { timeoutMs = 90_000, input } = {}) {
    return runCommand(this.provisioned.nodeBin, [this.provisioned.openclawEntry, ...args], {
      cwd: this.dir, env: this.env, timeoutMs, input, label: `openclaw ${args.slice(0, 2).join(' ')} (${this.name})`,
    });
  }

  /**
   * `openclaw gateway call <method> --json --params <json> --timeout <ms>`; returns the payload.
   * @param {string} method @param {any} [params] @param {{timeoutMs?: number}} [o] @returns {Promise<any>}
   */
  async call(method, params = {}, { timeoutMs = 30_000 } = {}) {
    const r = await this.cli(['gateway', 'call', method, '--json', '--params', JSON.stringify(params), '--timeout', String(timeoutMs)], { timeoutMs: timeoutMs + CLI_SLACK_MS });
    const parsed = parseJsonOutput(r.stdout);
    if (r.code !== 0 || parsed === undefined) {
      throw new Error(`gateway ${this.name}: call ${method} failed (code ${r.code}${r.timedOut ? ', timed out' : ''}, ${r.ms} ms)\nstdout: ${r.stdout.slice(-2000)}\nstderr: ${r.stderr.slice(-2000)}`);
    }
    return parsed;
  }

  /**
   * One agent turn through the gateway: `openclaw agent --agent A --session-key K --message M
   * --json --timeout S`. Returns the parsed JSON (also for failed turns, whose `status` is not
   * "ok"); throws if the CLI printed no JSON. `agentReplyText()` extracts the text.
   * @param {string} message
   * @param {{agent?: string, sessionKey?: string, timeoutMs?: number, extraArgs?: string[]}} [o]
   * @returns {Promise<any>}
   */
  async agentTurn(message, { agent = 'main', sessionKey, timeoutMs = 120_000, extraArgs = [] } = {}) {
    const key = sessionKey ?? `t-${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;
    const args = ['agent', '--agent', agent, '--session-key', key, '--message', message, '--json', '--timeout', String(Math.ceil(timeoutMs / 1000)), ...extraArgs];
    const r = await this.cli(args, { timeoutMs: timeoutMs + CLI_SLACK_MS });
    const parsed = parseJsonOutput(r.stdout);
    if (parsed === undefined || parsed === null || typeof parsed !== 'object') {
      throw new Error(`gateway ${this.name}: agent turn printed no JSON (code ${r.code}${r.timedOut ? ', timed out' : ''}, ${r.ms} ms)\nstdout: ${r.stdout.slice(-2000)}\nstderr: ${r.stderr.slice(-2000)}`);
    }
    Object.defineProperty(parsed, 'cli', { value: { code: r.code, ms: r.ms, sessionKey: key, stderr: r.stderr }, enumerable: false });
    return parsed;
  }

  /**
   * fetch() against this gateway with `Authorization: Bearer <token>` (unless set by the caller).
   * @param {string} p path, e.g. `/tools/invoke` @param {RequestInit} [init] @returns {Promise<Response>}
   */
  fetch(p, init = {}) {
    const headers = new Headers(init.headers);
    if (!headers.has('authorization')) headers.set('authorization', `Bearer ${this.token}`);
    return fetch(`${this.url}${p.startsWith('/') ? p : `/${p}`}`, { ...init, headers });
  }

  /** @returns {any} the current openclaw.json (OpenClaw may have rewritten it) */
  readConfig() {
    return JSON.parse(fs.readFileSync(this.configPath, 'utf8'));
  }

  /** Replaces openclaw.json atomically (a running gateway hot-reloads it). @param {any} obj */
  writeConfig(obj) {
    writeJsonAtomic(this.configPath, obj);
  }

  /** @returns {{gw:number, oc:number}} current log sizes, to pass as `since` to waitForLog */
  logMark() {
    return { gw: fileSize(this.logPath), oc: fileSize(this.openclawLogPath) };
  }

  /**
   * Waits until `re` matches a line of logs/gw.log or the logging.file written since `since`
   * (default: since this gateway's last start). Returns the matching line.
   * @param {RegExp} re @param {number} [timeoutMs] @param {{since?: {gw:number, oc:number}}} [o]
   * @returns {Promise<string>}
   */
  async waitForLog(re, timeoutMs = 30_000, { since } = {}) {
    const from = since ?? this.startMark;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const [file, off] of /** @type {[string, number][]} */ ([[this.logPath, from.gw], [this.openclawLogPath, from.oc]])) {
        const text = readFrom(file, off);
        for (const line of text.split('\n')) {
          const clean = stripAnsi(line);
          if (re.test(clean)) { re.lastIndex = 0; return clean; }
        }
      }
      if (Date.now() >= deadline) throw new Error(`gateway ${this.name}: no log line matching ${re} within ${timeoutMs} ms; tail of ${this.logPath}:\n${this.logTail(20)}`);
      await sleep(200);
    }
  }

  /** @param {number} [n] @returns {string} the last n lines of logs/gw.log, ANSI stripped */
  logTail(n = 40) {
    let text = '';
    try { text = fs.readFileSync(this.logPath, 'utf8'); } catch { return '(no log)'; }
    return stripAnsi(text).trimEnd().split('\n').slice(-n).join('\n');
  }

  /** @returns {{mainKiB:number, treeKiB:number, procs:{pid:number, comm:string, rssKiB:number}[]}} */
  rss() {
    return treeRss(this.pid);
  }
}

// ---------------------------------------------------------------------------------------------

/** @param {string} url @returns {Promise<boolean>} */
async function probe(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    await res.arrayBuffer().catch(() => {});
    return res.status === 200;
  } catch {
    return false;
  }
}

/**
 * Parses CLI JSON output: the whole stdout, else the text from the first line starting with
 * `{` or `[`. @param {string} s @returns {any} undefined when nothing parses
 */
export function parseJsonOutput(s) {
  const t = s.trim();
  if (!t) return undefined;
  try { return JSON.parse(t); } catch { /* fall through */ }
  const lines = t.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (!/^\s*[[{]/.test(lines[i])) continue;
    try { return JSON.parse(lines.slice(i).join('\n')); } catch { /* next */ }
  }
  return undefined;
}

/** @param {string} file @returns {number} */
function fileSize(file) {
  try { return fs.statSync(file).size; } catch { return 0; }
}

/** @param {string} file @param {number} offset @returns {string} */
function readFrom(file, offset) {
  let fd;
  try { fd = fs.openSync(file, 'r'); } catch { return ''; }
  try {
    const size = fs.fstatSync(fd).size;
    if (size <= offset) return '';
    const buf = Buffer.alloc(size - offset);
    fs.readSync(fd, buf, 0, buf.length, offset);
    return buf.toString('utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/** @param {string} s @returns {string} */
function stripAnsi(s) {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\x1b\[[0-9;?]*[ -/]*[@-~]/g, '');
}

const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

/** Start attempts after the first when the gateway's port turns out taken. */
const PORT_CONFLICT_RETRIES = 2;

/** An error that Gateway.start answers by moving to another port. @param {string} msg */
function portConflict(msg) {
  return Object.assign(new Error(msg), { portConflict: true });
}
