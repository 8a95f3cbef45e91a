// The subset of OpenClaw's plugin API (openclaw 2026.9.6, `OpenClawPluginApi`) that the shim uses,
// declared structurally so the shim type-checks without installing the 650 MB host package.
// The real-gateway tests are what prove these shapes against the pinned host.

export type Logger = {
  debug?(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
};

export type TextContent = { type: "text"; text: string };

export type ToolResult = {
  content: TextContent[];
  details: unknown;
  progress?: { text: string; visibility: "channel"; privacy: "public" };
};

export type AgentTool = {
  name: string;
  label: string;
  description: string;
  parameters: Record<string, unknown>;
  execute(
    toolCallId: string,
    params: unknown,
    signal?: AbortSignal,
    onUpdate?: (partial: ToolResult) => void,
  ): Promise<ToolResult>;
};

export type ToolContext = { agentId?: string; sessionKey?: string };

export type ServiceContext = {
  stateDir: string;
  workspaceDir?: string;
  logger: Logger;
  serviceHealth?: { reportFailure(e: unknown): void; clearFailure(): void };
};

export type ErrorShape = { code: string; message: string; details?: unknown; retryable?: boolean };

export type GatewayMethodHandler = (o: {
  params: Record<string, unknown>;
  respond: (ok: boolean, payload?: unknown, error?: ErrorShape) => void;
}) => void | Promise<void>;

export type CliCommand = {
  command(name: string): CliCommand;
  description(text: string): CliCommand;
  option(flags: string, description?: string, defaultValue?: string): CliCommand;
  action(fn: (...args: never[]) => unknown): CliCommand;
};

export type HostConfig = {
  gateway?: { port?: unknown; auth?: { token?: unknown } };
  agents?: { defaults?: { workspace?: string } };
  models?: { providers?: Record<string, unknown> };
};

/** The parts of `api.runtime` (PluginRuntime) the shim calls. */
export type PluginRuntime = {
  config: {
    current(): HostConfig;
    mutateConfigFile(params: {
      afterWrite: { mode: "auto" } | { mode: "restart"; reason: string } | { mode: "none"; reason: string };
      mutate: (draft: HostConfig) => void | Promise<void>;
    }): Promise<unknown>;
  };
  modelAuth: {
    resolveApiKeyForProvider(params: { provider: string; cfg?: unknown }): Promise<{ apiKey?: string; source?: string; mode?: string }>;
  };
};

export type PluginApi = {
  id: string;
  registrationMode?: string;
  pluginConfig?: Record<string, unknown>;
  /** Read-only snapshot of openclaw.json (only the fields the shim reads are declared). */
  config?: HostConfig;
  runtime?: PluginRuntime;
  logger: Logger;
  registerService(service: {
    id: string;
    start(ctx: ServiceContext): void | Promise<void>;
    stop?(ctx: ServiceContext): void | Promise<void>;
  }): void;
  registerTool(
    tool: AgentTool | ((ctx: ToolContext) => AgentTool | null | undefined),
    opts?: { name?: string; names?: string[]; optional?: boolean },
  ): void;
  registerGatewayMethod(
    method: string,
    handler: GatewayMethodHandler,
    opts?: { scope?: string },
  ): void;
  registerCli(
    registrar: (ctx: { program: CliCommand }) => void | Promise<void>,
    opts?: { descriptors?: { name: string; description: string; hasSubcommands: boolean }[] },
  ): void;
};

export type PluginEntry = {
  id: string;
  name: string;
  description: string;
  register(api: PluginApi): void;
};
