// `openclaw clawmatrix status|peers|trust reset <nodeId>`: runs in the CLI process and asks the
// running gateway.
import type { PluginApi } from "./host.js";
import { native } from "./native.js";

const DESCRIPTION = "Inspect the ClawMatrix mesh (status, peers) and manage node trust";

type GatewayRuntime = {
  callGatewayFromCli(method: string, opts: Record<string, unknown>, params?: unknown): Promise<unknown>;
};

export function registerCli(api: PluginApi): void {
  api.registerCli(
    ({ program }) => {
      const root = program.command("clawmatrix").description(DESCRIPTION);
      root
        .command("status")
        .description("This node, its listener and proxy, and every known peer")
        .option("--json", "print the raw status report")
        .option("--timeout <ms>", "gateway call timeout in ms", "10000")
        .action((opts: { json?: boolean; timeout?: string }) =>
          run("clawmatrix.status", opts, (payload) =>
            opts.json ? JSON.stringify(payload, null, 2) : native.renderStatusText(payload),
          ),
        );
      root
        .command("peers")
        .description("Known peers as JSON")
        .option("--timeout <ms>", "gateway call timeout in ms", "10000")
        .action((opts: { timeout?: string }) => run("clawmatrix.peers", opts, (p) => JSON.stringify(p, null, 2)));
      root
        .command("trust")
        .description("Node keys this gateway trusts")
        .command("reset <nodeId>")
        .description("Forget the key trusted for a node (after it was reinstalled with a new key)")
        .option("--timeout <ms>", "gateway call timeout in ms", "10000")
        .action((nodeId: string, opts: { timeout?: string }) =>
          run("clawmatrix.trustReset", opts, (p) => String((p as { message?: unknown }).message), { nodeId }),
        );
    },
    { descriptors: [{ name: "clawmatrix", description: DESCRIPTION, hasSubcommands: true }] },
  );
}

async function run(
  method: string,
  opts: { timeout?: string },
  render: (payload: unknown) => string,
  params: Record<string, unknown> = {},
): Promise<void> {
  let sdk: GatewayRuntime;
  try {
    sdk = (await import("openclaw/plugin-sdk/gateway-runtime" as string)) as GatewayRuntime;
  } catch (e) {
    process.stderr.write(`clawmatrix: cannot load OpenClaw's gateway client (openclaw/plugin-sdk/gateway-runtime): ${oneLine(e)}\n`);
    process.exitCode = 1;
    return;
  }
  let payload: unknown;
  try {
    payload = await sdk.callGatewayFromCli(method, { json: true, timeout: opts.timeout ?? "10000" }, params);
  } catch (e) {
    process.stderr.write(`clawmatrix: cannot reach the gateway: ${oneLine(e)}\n`);
    process.exitCode = 1;
    return;
  }
  // process.stdout.write, not console.log: OpenClaw routes console.log to stderr for --json runs.
  process.stdout.write(`${render(payload)}\n`);
}

function oneLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.split("\n")[0] ?? msg;
}
