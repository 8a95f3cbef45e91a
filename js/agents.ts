// Host handlers for handoff and messages (src/node/handoff.rs decides; each handler translates one
// OpenClaw runtime operation):
//   agents.list → the agent ids OpenClaw knows (config agents.entries, or its default agent "main")
//   agent.run   → api.runtime.subagent.run + events.onAgentEvent (assistant deltas, tool activity)
//                 + subagent.waitForRun; events {type:"started"|"delta"|"tool"}, result {status,text,runId}
//   agent.abort → openclaw/plugin-sdk/agent-harness abortAndDrainAgentHarnessRun for the session's
//                 active run, then waitForRun until it ended; result {aborted, drained, status}
//   agent.send  → api.runtime.subagent.run in the agent's session, not awaited; result {runId}
import type { PluginApi } from "./host.js";
import type { HostHandlers } from "./host-bridge.js";
import { codedError } from "./native.js";

/** The slice of OpenClaw's `api.runtime` these handlers use (openclaw 2026.9.6, PluginRuntime). */
type AgentEvent = { runId?: string; stream?: string; data?: Record<string, unknown>; sessionKey?: string };
type AgentRuntime = {
  config?: { current?(): { agents?: { entries?: Record<string, unknown>; list?: { id?: unknown }[] } } };
  subagent: {
    run(p: {
      sessionKey: string;
      message: string;
      deliver?: boolean;
      extraSystemPrompt?: string;
      idempotencyKey?: string;
    }): Promise<{ runId: string; sessionKey?: string }>;
    waitForRun(p: { runId: string; timeoutMs?: number }): Promise<{
      status: string;
      error?: string;
      terminalReply?: { disposition: string; text?: string };
    }>;
  };
  events: { onAgentEvent(listener: (e: AgentEvent) => void): () => void };
};
/** The params the core sends with each request (src/handoff/serve.rs). */
type RunParams = {
  agentId: string;
  sessionKey: string;
  message: string;
  extraSystemPrompt: string;
  idempotencyKey: string;
  timeoutMs: number;
};
type AbortParams = { sessionKey: string; runId?: string | null; reason?: string };
type SendParams = { agentId: string; sessionKey: string; message: string };

type HarnessSdk = {
  resolveActiveEmbeddedRunSessionId(sessionKey: string): string | undefined;
  abortAndDrainAgentHarnessRun(p: {
    sessionId: string;
    sessionKey?: string;
    settleMs?: number;
    reason?: string;
  }): Promise<{ aborted: boolean; drained: boolean; forceCleared: boolean }>;
};

/** Events that arrive before `subagent.run` resolves (the run can start emitting first). */
const MAX_EARLY_EVENTS = 10_000;
/** How long an abort may take to settle on the host (ms). */
const ABORT_SETTLE_MS = 10_000;

function runtimeOf(api: PluginApi): AgentRuntime {
  const rt = (api as PluginApi & { runtime?: AgentRuntime }).runtime;
  if (!rt?.subagent || !rt.events) {
    throw codedError("CLAWMATRIX_NOT_IMPLEMENTED", "this OpenClaw host offers no api.runtime.subagent / api.runtime.events");
  }
  return rt;
}

const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);

export function agentHandlers(api: PluginApi): HostHandlers {
  return {
    "agents.list": async () => {
      // agents.entries (keyed by id; legacy agents.list rosters too); none = the default "main".
      const cfg = runtimeOf(api).config?.current?.() ?? {};
      const ids = new Set(Object.keys(cfg.agents?.entries ?? {}));
      for (const a of cfg.agents?.list ?? []) if (str(a?.id)) ids.add(str(a.id) as string);
      return { agents: ids.size > 0 ? [...ids] : ["main"] };
    },

    "agent.run": async (p: RunParams, emit, signal) => {
      const rt = runtimeOf(api);
      let runId: string | undefined;
      const early: AgentEvent[] = [];
      const forward = (e: AgentEvent) => {
        if (e.stream === "assistant") {
          const delta = str(e.data?.delta);
          if (delta) emit({ type: "delta", text: delta });
        } else if (e.stream === "tool") {
          emit({ type: "tool", name: str(e.data?.name) ?? str(e.data?.toolName) ?? "tool", phase: str(e.data?.phase) });
        }
      };
      const off = rt.events.onAgentEvent((e) => {
        if (runId === undefined) {
          if (early.length < MAX_EARLY_EVENTS) early.push(e);
        } else if (e.runId === runId) forward(e);
      });
      try {
        const started = await rt.subagent.run({
          sessionKey: p.sessionKey,
          message: p.message,
          deliver: false,
          extraSystemPrompt: p.extraSystemPrompt,
          idempotencyKey: p.idempotencyKey,
        });
        runId = started.runId;
        emit({ type: "started", runId });
        for (const e of early.splice(0)) if (e.runId === runId) forward(e);
        // The core aborts the run itself (agent.abort) before it cancels this call; the cancel
        // only stops waiting here.
        let onAbort = () => {};
        const aborted = new Promise<never>((_, reject) => {
          onAbort = () => reject(codedError("CLAWMATRIX_CANCELLED", "agent.run cancelled"));
          if (signal.aborted) onAbort();
          signal.addEventListener("abort", onAbort, { once: true });
        });
        aborted.catch(() => {});
        const w = await Promise.race([rt.subagent.waitForRun({ runId, timeoutMs: p.timeoutMs }), aborted]).finally(() =>
          signal.removeEventListener("abort", onAbort),
        );
        const text = w.terminalReply?.disposition === "visible" ? (w.terminalReply.text ?? "") : "";
        return { status: w.status, text, runId, error: w.error };
      } finally {
        off();
      }
    },

    "agent.abort": async (p: AbortParams) => {
      const sdk = (await import("openclaw/plugin-sdk/agent-harness" as string)) as HarnessSdk;
      const sessionId = sdk.resolveActiveEmbeddedRunSessionId(p.sessionKey);
      const r = sessionId
        ? await sdk.abortAndDrainAgentHarnessRun({ sessionId, sessionKey: p.sessionKey, settleMs: ABORT_SETTLE_MS, reason: "clawmatrix handoff cancelled" })
        : { aborted: false, drained: true, forceCleared: false };
      let status: string | undefined;
      if (typeof p.runId === "string") {
        status = (await runtimeOf(api).subagent.waitForRun({ runId: p.runId, timeoutMs: ABORT_SETTLE_MS })).status;
      }
      return { ...r, sessionId: sessionId ?? null, status };
    },

    "agent.send": async (p: SendParams) => {
      const started = await runtimeOf(api).subagent.run({ sessionKey: p.sessionKey, message: p.message, deliver: false });
      return { runId: started.runId };
    },
  };
}
