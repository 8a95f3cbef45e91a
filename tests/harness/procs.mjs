// Child-process plumbing shared by the harness: a registry of the process groups it started and
// the teardown that kills them when this process ends, bounded command runs, and /proc readers.
// Linux only (reads /proc).

import { spawn } from 'node:child_process';
import fs from 'node:fs';

/** Process groups started by the harness and still alive: pgid -> label. */
const groups = new Map();
let handlersInstalled = false;

/**
 * Registers a process group so it is killed when this process exits, is interrupted or crashes.
 * @param {number} pgid @param {string} label
 */
export function trackGroup(pgid, label) {
  groups.set(pgid, label);
  installHandlers();
}

/** @param {number} pgid */
export function untrackGroup(pgid) {
  groups.delete(pgid);
}

/** @returns {Map<number,string>} a copy of the live registry */
export function trackedGroups() {
  return new Map(groups);
}

/** Sends `signal` to every registered group (ignores groups that are gone). @param {NodeJS.Signals} signal */
export function signalAllGroups(signal) {
  for (const pgid of groups.keys()) {
    try { process.kill(-pgid, signal); } catch { groups.delete(pgid); }
  }
}

function installHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  // 'exit' handlers must be synchronous: SIGKILL is the only thing guaranteed to finish.
  process.on('exit', () => signalAllGroups('SIGKILL'));
  // Observe crashes without changing how they are reported (the 'exit' handler then runs).
  process.on('uncaughtExceptionMonitor', () => signalAllGroups('SIGKILL'));
  for (const sig of /** @type {NodeJS.Signals[]} */ (['SIGINT', 'SIGTERM', 'SIGHUP'])) {
    const onSignal = () => {
      signalAllGroups('SIGTERM');
      // Give gateways a moment to shut down cleanly, then make sure, then die of the same signal.
      const deadline = Date.now() + 3_000;
      const tick = () => {
        const alive = [...groups.keys()].filter((g) => groupAlive(g));
        if (alive.length > 0 && Date.now() < deadline) { setTimeout(tick, 100); return; }
        signalAllGroups('SIGKILL');
        process.off(sig, onSignal);
        if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
      };
      tick();
    };
    process.on(sig, onSignal);
  }
}

/**
 * Whether any non-zombie process is left in process group `pgid` (zombies are ignored because a
 * container's PID 1 may never reap re-parented children).
 * @param {number} pgid @returns {boolean}
 */
export function groupAlive(pgid) {
  for (const p of listProcs()) if (p.pgrp === pgid && p.state !== 'Z') return true;
  return false;
}

/** Whether process `pid` exists and is not a zombie. @param {number} pid @returns {boolean} */
export function pidAlive(pid) {
  const s = readStat(pid);
  return s !== null && s.state !== 'Z';
}

/**
 * @typedef {{pid:number, comm:string, state:string, ppid:number, pgrp:number, rssKiB:number}} ProcInfo
 */

/** @param {number} pid @returns {ProcInfo|null} */
export function readStat(pid) {
  let text;
  try { text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { return null; }
  // comm is in parentheses and may contain spaces/parentheses: split at the LAST ')'.
  const close = text.lastIndexOf(')');
  const comm = text.slice(text.indexOf('(') + 1, close);
  const f = text.slice(close + 2).split(' ');
  // f[0]=state f[1]=ppid f[2]=pgrp ... f[21]=rss (pages)
  const pageKiB = 4;
  return { pid, comm, state: f[0], ppid: Number(f[1]), pgrp: Number(f[2]), rssKiB: Number(f[21]) * pageKiB };
}

/** @returns {ProcInfo[]} all processes visible in /proc */
export function listProcs() {
  /** @type {ProcInfo[]} */
  const out = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const s = readStat(Number(name));
    if (s) out.push(s);
  }
  return out;
}

/**
 * RSS of `pid`'s process tree: the main gateway process (largest RSS in the tree, which is the
 * `openclaw-gateway` process even when `pid` is a launcher) and the whole tree.
 * @param {number} pid @returns {{mainKiB:number, treeKiB:number, procs:{pid:number, comm:string, rssKiB:number}[]}}
 */
export function treeRss(pid) {
  const all = listProcs().filter((p) => p.state !== 'Z');
  /** @type {Map<number, ProcInfo[]>} */
  const kids = new Map();
  for (const p of all) { const k = kids.get(p.ppid) ?? []; k.push(p); kids.set(p.ppid, k); }
  const root = all.find((p) => p.pid === pid);
  if (!root) return { mainKiB: 0, treeKiB: 0, procs: [] };
  /** @type {ProcInfo[]} */
  const tree = [];
  const stack = [root];
  while (stack.length > 0 && tree.length < 10_000) {
    const p = /** @type {ProcInfo} */ (stack.pop());
    tree.push(p);
    stack.push(...(kids.get(p.pid) ?? []));
  }
  return {
    mainKiB: Math.max(...tree.map((p) => p.rssKiB)),
    treeKiB: tree.reduce((s, p) => s + p.rssKiB, 0),
    procs: tree.map(({ pid: q, comm, rssKiB }) => ({ pid: q, comm, rssKiB })),
  };
}

/**
 * Runs a command in its own process group, captures output, kills the group on timeout.
 * @param {string} cmd @param {string[]} args
 * @param {{cwd?:string, env?:Record<string,string>, timeoutMs:number, input?:string, label?:string}} o
 * @returns {Promise<{code:number|null, signal:string|null, stdout:string, stderr:string, ms:number, timedOut:boolean}>}
 */
export function runCommand(cmd, args, o) {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: o.cwd, env: o.env, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const pid = child.pid;
    if (pid !== undefined) trackGroup(pid, o.label ?? cmd);
    let stdout = '', stderr = '', timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d) => { stderr += d; });
    child.stdin.on('error', () => {});
    child.stdin.end(o.input ?? '');
    const kill = (/** @type {NodeJS.Signals} */ s) => { if (pid !== undefined) { try { process.kill(-pid, s); } catch { /* gone */ } } };
    const timer = setTimeout(() => { timedOut = true; kill('SIGTERM'); setTimeout(() => kill('SIGKILL'), 3_000).unref(); }, o.timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); if (pid !== undefined) untrackGroup(pid); reject(e); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      // Helpers a CLI left behind in its group must not outlive it.
      kill('SIGKILL');
      if (pid !== undefined) untrackGroup(pid);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0, timedOut });
    });
  });
}
