// Host handlers for shared models (see src/proxy/upstream.rs and src/proxy/providers.rs):
// - model.upstream: hand the core what OpenClaw knows about a provider (its config entry and the
//   key its auth store resolves); the core decides what to use.
// - providers.sync: merge the core's provider entries into models.providers (the merge is
//   planned in Rust; this only reads and writes the config).
import type { PluginApi } from "./host.js";
import type { HostHandlers } from "./host-bridge.js";
import { native, type ProviderPlan } from "./native.js";

export function modelHandlers(api: PluginApi): HostHandlers {
  const runtime = () => {
    const r = api.runtime;
    if (!r) throw Object.assign(new Error("OpenClaw runtime API is not available to this plugin instance"), { code: "CLAWMATRIX_NOT_RUNNING" });
    return r;
  };
  return {
    async "model.upstream"(params: { provider: string }) {
      const rt = runtime();
      const cfg = rt.config.current();
      const providerConfig = cfg?.models?.providers?.[params.provider] ?? null;
      let auth: { apiKey?: string; source?: string; mode?: string } | null = null;
      let authError: string | null = null;
      try {
        auth = await rt.modelAuth.resolveApiKeyForProvider({ provider: params.provider, cfg });
      } catch (e) {
        authError = String((e as Error)?.message ?? e);
      }
      return {
        providerConfig: providerConfig ? JSON.parse(JSON.stringify(providerConfig)) : null,
        apiKey: typeof auth?.apiKey === "string" ? auth.apiKey : null,
        authSource: auth?.source ?? null,
        authError,
      };
    },
    async "providers.sync"(params: { providers: Record<string, unknown> }) {
      const rt = runtime();
      const before = native.planProviders(rt.config.current()?.models?.providers ?? null, params.providers);
      if (!before.changed) return before;
      let applied: ProviderPlan = before;
      await rt.config.mutateConfigFile({
        afterWrite: { mode: "auto" },
        mutate(draft) {
          applied = native.planProviders(draft.models?.providers ?? null, params.providers);
          if (!applied.changed) return;
          draft.models ??= {};
          draft.models.providers = applied.providers;
        },
      });
      return { ...applied, providers: undefined };
    },
  };
}
