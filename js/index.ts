// The OpenClaw plugin entry. It only marshals: every decision (config validation, tool argument
// checks, routing, status rendering) is made by the Rust core in ../native.
import type { PluginApi, PluginEntry, ServiceContext } from "./host.js";
import { native, addonLoadMs, codedError, type ClawMatrixNode } from "./native.js";
import { registerTools } from "./tools.js";
import { registerMethods } from "./methods.js";
import { registerCli } from "./cli.js";
import { pumpHostRequests } from "./host-bridge.js";
import { hostHandlers } from "./host-handlers.js";

const entry: PluginEntry = {
  id: "clawmatrix",
  name: "ClawMatrix",
  description: "Link several OpenClaw gateways into one mesh: shared models, handoff, remote tools.",
  register(api: PluginApi) {
    // register() runs several times per process (full, discovery, cli-metadata, and agent runs
    // resolve tools from their own registration) and must start nothing: the native node is
    // created and started only by the service, and published in a process-wide slot so that the
    // tools and methods of every registration reach the one running node.
    const current = (): ClawMatrixNode => {
      const node = slot.node;
      if (!node) throw codedError("CLAWMATRIX_NOT_RUNNING", "the clawmatrix service is not running on this gateway");
      return node;
    };

    let owned: ClawMatrixNode | undefined; // the node this registration's service started
    api.registerService({
      id: "clawmatrix",
      async start(ctx: ServiceContext) {
        const t0 = performance.now();
        const created = native.ClawMatrixNode.create(api.pluginConfig ?? {});
        for (const w of created.warnings()) ctx.logger.warn(`clawmatrix: config ${w.path}: ${w.reason}`);
        void pumpEvents(created, ctx);
        // Pull the core's host requests from before start(), so nothing started by start()
        // finds the host detached.
        void pumpHostRequests(created, hostHandlers(api), ctx.logger);
        try {
          await created.start({
            stateDir: ctx.stateDir,
            workspaceDir: ctx.workspaceDir ?? api.config?.agents?.defaults?.workspace,
            // Only plain values cross: a SecretRef-style token object is not marshalled (the
            // env variable is the fallback), so an unusual config never fails the start.
            gatewayPort: numberOrUndefined(api.config?.gateway?.port),
            gatewayToken: stringOrUndefined(api.config?.gateway?.auth?.token) ?? process.env.OPENCLAW_GATEWAY_TOKEN,
          });
        } catch (e) {
          created.closeEvents();
          throw e;
        }
        owned = created;
        slot.node = created;
        ctx.logger.info(
          `clawmatrix: service started in ${(performance.now() - t0).toFixed(1)} ms (addon loaded in ${addonLoadMs.toFixed(1)} ms)`,
        );
      },
      async stop() {
        const stopping = owned;
        owned = undefined;
        if (slot.node === stopping) slot.node = undefined;
        if (stopping) {
          await stopping.stop();
          stopping.closeEvents();
        }
      },
    });
    registerTools(api, current);
    registerMethods(api, current);
    registerCli(api);
  },
};

/**
 * The running node, shared by every registration in this process. A symbol on globalThis rather
 * than a module variable: OpenClaw may evaluate this module more than once (reload generations).
 */
const slot: { node?: ClawMatrixNode } = ((globalThis as Record<symbol, unknown>)[Symbol.for("clawmatrix.node")] ??= {}) as {
  node?: ClawMatrixNode;
};

const stringOrUndefined = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
const numberOrUndefined = (v: unknown): number | undefined => (typeof v === "number" ? v : undefined);

/** Forward the core's log lines to OpenClaw's logger until the node's event stream ends. */
async function pumpEvents(node: ClawMatrixNode, ctx: ServiceContext): Promise<void> {
  for (;;) {
    const e = await node.nextEvent();
    if (!e) return;
    const line = `clawmatrix: ${e.message}`;
    if (e.level === "error") ctx.logger.error(line);
    else if (e.level === "warn") ctx.logger.warn(line);
    else if (e.level === "debug") ctx.logger.debug?.(line);
    else ctx.logger.info(line);
  }
}

export default entry;
