// Loopback port allocation for gateways (which own a whole range: base..base+110, because the
// browser control port is base+2 and CDP ports are base+11..base+110) and for single listeners.

import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** Ports a gateway may use above its base port (OpenClaw: base..base+110). */
export const GATEWAY_PORT_SPAN = 111;
/** Distance kept between two gateway bases (OpenClaw's docs ask for >= 120). */
export const GATEWAY_PORT_STRIDE = 120;
/**
 * Gateway bases are drawn from [20000, 32000): below Linux's default ephemeral range
 * (32768-60999), so outgoing connections and port-0 listeners never land inside a gateway range.
 */
export const GATEWAY_BASE_MIN = 20_000;
export const GATEWAY_BASE_MAX = 32_000;

/** Bases handed out by this process and not yet released (avoids handing one range out twice). */
const reserved = new Set();

/**
 * Cross-process reservations: `<tmpdir>/clawmatrix-ports-<uid>/<base>/` holding the owner pid, so
 * test files run in parallel by `node --test` do not pick the same range in the ~30 s between
 * the free-port check and the gateway binding it. Reservations of dead processes are reclaimed.
 */
const RESERVATION_DIR = path.join(os.tmpdir(), `clawmatrix-ports-${process.getuid?.() ?? 'u'}`);
let exitHookInstalled = false;

/** @param {number} base @returns {boolean} whether this process now holds the reservation */
function reserveAcrossProcesses(base) {
  fs.mkdirSync(RESERVATION_DIR, { recursive: true });
  const dir = path.join(RESERVATION_DIR, String(base));
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'pid'), String(process.pid));
      if (!exitHookInstalled) {
        exitHookInstalled = true;
        process.on('exit', () => { for (const b of reserved) unreserveAcrossProcesses(b); });
      }
      return true;
    } catch (e) {
      if (/** @type {NodeJS.ErrnoException} */ (e).code !== 'EEXIST') throw e;
      let pid = 0;
      try { pid = Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8')); } catch { return false; } // being created
      if (pid === process.pid || !pid) return false;
      try { process.kill(pid, 0); return false; } catch (err) {
        if (/** @type {NodeJS.ErrnoException} */ (err).code !== 'ESRCH') return false;
      }
      fs.rmSync(dir, { recursive: true, force: true }); // owner is gone: reclaim, then retry once
    }
  }
  return false;
}

/** @param {number} base */
function unreserveAcrossProcesses(base) {
  const dir = path.join(RESERVATION_DIR, String(base));
  try {
    if (Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8')) === process.pid) fs.rmSync(dir, { recursive: true, force: true });
  } catch { /* not ours or gone */ }
}

/**
 * Whether `port` can be bound on 127.0.0.1 right now.
 * @param {number} port @returns {Promise<boolean>}
 */
export function isPortFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host: '127.0.0.1', exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * Picks `count` gateway base ports whose whole ranges are free, at least GATEWAY_PORT_STRIDE apart
 * from each other and from bases this process already holds. Random slots, bounded attempts.
 * @param {number} count @returns {Promise<number[]>}
 */
export async function allocateGatewayPorts(count) {
  const slots = Math.floor((GATEWAY_BASE_MAX - GATEWAY_BASE_MIN) / GATEWAY_PORT_STRIDE);
  /** @type {number[]} */
  const picked = [];
  for (let attempt = 0; attempt < 200 && picked.length < count; attempt++) {
    const base = GATEWAY_BASE_MIN + Math.floor(Math.random() * slots) * GATEWAY_PORT_STRIDE;
    if (reserved.has(base) || picked.includes(base)) continue;
    if (!reserveAcrossProcesses(base)) continue;
    const checks = await Promise.all(Array.from({ length: GATEWAY_PORT_SPAN }, (_, i) => isPortFree(base + i)));
    if (checks.every(Boolean)) { picked.push(base); reserved.add(base); } else unreserveAcrossProcesses(base);
  }
  if (picked.length < count) {
    for (const b of picked) releaseGatewayPort(b);
    throw new Error(`ports: found only ${picked.length} of ${count} free gateway port ranges in ${GATEWAY_BASE_MIN}-${GATEWAY_BASE_MAX}`);
  }
  return picked;
}

/** Gives a gateway base back to the pool (after its gateway stopped for good). @param {number} base */
export function releaseGatewayPort(base) {
  reserved.delete(base);
  unreserveAcrossProcesses(base);
}

/** The block single ports are handed out from: a gateway slot this process reserved. */
let block = /** @type {{base:number, next:number}|null} */ (null);

/**
 * A loopback port for one listener that a child process or the addon binds later (the plugin's
 * listenPort / proxyPort): taken from a slot of the gateway range this process reserved like a
 * gateway's (so other harness processes stay out of it) and checked free now. The range lies
 * below the kernel's ephemeral range, so no port-0 listener and no outgoing connection on the
 * machine lands on it while it waits to be bound, which a released port-0 port does not
 * guarantee (the old bind-release-rebind race). What remains: a process outside the harness that
 * binds an explicit port in 20000-32000. Reserved until this process exits.
 * @returns {Promise<number>}
 */
export async function reservePort() {
  for (let attempt = 0; attempt < 1000; attempt++) {
    if (!block || block.next >= GATEWAY_PORT_STRIDE) {
      const [base] = await allocateGatewayPorts(1);
      block = { base, next: 0 };
    }
    const port = block.base + block.next++;
    if (await isPortFree(port)) return port;
  }
  throw new Error('ports: no free port in 1000 tries');
}

/**
 * A free loopback port chosen by the kernel (ephemeral range, so never inside a gateway range),
 * for a listener bound at once in this process. It is free now, not reserved: for a port
 * something binds later, use reservePort.
 * @returns {Promise<number>}
 */
export function findFreePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen({ port: 0, host: '127.0.0.1' }, () => {
      const { port } = /** @type {net.AddressInfo} */ (srv.address());
      srv.close(() => resolve(port));
    });
  });
}
