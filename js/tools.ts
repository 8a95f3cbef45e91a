// Registers the seven cluster_* tools from the core's definitions and forwards each call:
// progress steps become onUpdate partials, the result is returned, a failed call's coded error
// (the rejection of next()) is thrown as is, and an aborted signal cancels the call in the core.
import type { PluginApi, ToolContext, ToolResult } from "./host.js";
import { native, codedError, type ClawMatrixNode } from "./native.js";

export function registerTools(api: PluginApi, current: () => ClawMatrixNode): void {
  for (const def of native.toolDefinitions()) {
    api.registerTool(
      (ctx: ToolContext) => ({
        name: def.name,
        label: def.label,
        description: def.description,
        parameters: def.parameters,
        async execute(_toolCallId, params, signal, onUpdate) {
          const call = current().invokeTool(def.name, params ?? {}, { agentId: ctx?.agentId, sessionKey: ctx?.sessionKey });
          const abort = () => call.cancel();
          if (signal?.aborted) abort();
          signal?.addEventListener("abort", abort, { once: true });
          try {
            let soFar = "";
            for (;;) {
              const step = await call.next();
              if (!step) throw codedError("CLAWMATRIX_INTERNAL", `${def.name}: ended without a result`);
              if (step.kind === "progress") {
                soFar += step.text;
                onUpdate?.({
                  content: [{ type: "text", text: soFar }],
                  details: step.details,
                  progress: { text: step.text, visibility: "channel", privacy: "public" },
                });
                continue;
              }
              const result: ToolResult = { content: [{ type: "text", text: step.text }], details: step.details };
              return result;
            }
          } finally {
            signal?.removeEventListener("abort", abort);
          }
        },
      }),
      { name: def.name },
    );
  }
}
