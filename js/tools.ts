// Registers the seven cluster_* tools from the core's definitions and forwards each call.
import type { PluginApi, ToolResult } from "./host.js";
import { native, codedError, type ClawMatrixNode } from "./native.js";

type ToolDef = { name: string; label: string; description: string; parameters: Record<string, unknown> };

export function registerTools(api: PluginApi, current: () => ClawMatrixNode): void {
  for (const def of native.toolDefinitions() as ToolDef[]) {
    api.registerTool(
      {
        name: def.name,
        label: def.label,
        description: def.description,
        parameters: def.parameters,
        async execute(_toolCallId, params) {
          const step = await current().invokeTool(def.name, params ?? {});
          if (step.kind === "error") throw codedError(step.code ?? "CLAWMATRIX_INTERNAL", step.text);
          const result: ToolResult = { content: [{ type: "text", text: step.text }], details: step.details };
          return result;
        },
      },
      { name: def.name },
    );
  }
}
