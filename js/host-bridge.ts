// Answers the core's host requests (see src/host.rs): the core asks, the shim pulls with
// nextHostRequest(), runs the matching handler against OpenClaw's runtime and replies. Handlers
// only translate between the core's request and one host API call; decisions stay in Rust.
import type { ClawMatrixNode, HostRequestKind } from "./native.js";
import type { Logger } from "./host.js";

/**
 * What a handler gets: the request params, a way to stream events, and the cancel signal. Each
 * handler declares the params the core sends with its kind (`params: never` here admits every such
 * declaration; the bridge hands over `req.params` as the handler declared them).
 */
export type HostHandler = (params: never, emit: (event: unknown) => void, signal: AbortSignal) => Promise<unknown>;

/** Pull and answer host requests until the node's bridge closes (node stopped). */
/** The handlers by request kind (`cancel` is the bridge's own). */
export type HostHandlers = Partial<Record<Exclude<HostRequestKind, "cancel">, HostHandler>>;

export async function pumpHostRequests(node: ClawMatrixNode, handlers: HostHandlers, logger: Logger): Promise<void> {
  const running = new Map<number, AbortController>();
  for (;;) {
    const req = await node.nextHostRequest();
    if (!req) break;
    if (req.kind === "cancel") {
      running.get(Number((req.params as { id?: unknown })?.id))?.abort();
      continue;
    }
    const handler = handlers[req.kind];
    if (!handler) {
      node.hostReply(req.id, "error", `no host handler for ${req.kind}`, "CLAWMATRIX_NOT_IMPLEMENTED");
      continue;
    }
    const ctl = new AbortController();
    running.set(req.id, ctl);
    const emit = (event: unknown) => void node.hostReply(req.id, "event", event ?? null);
    handler(req.params as never, emit, ctl.signal)
      .then((result) => node.hostReply(req.id, "result", result ?? null))
      .catch((e: unknown) => {
        const err = e as { code?: unknown; message?: unknown };
        const code = typeof err?.code === "string" ? err.code : undefined;
        try {
          node.hostReply(req.id, "error", String(err?.message ?? e), code);
        } catch (replyErr) {
          logger.warn(`clawmatrix: host reply for ${req.kind} failed: ${String(replyErr)}`);
        }
      })
      .finally(() => running.delete(req.id));
  }
  for (const ctl of running.values()) ctl.abort();
}
