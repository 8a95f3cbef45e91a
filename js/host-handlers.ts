// The host-request handlers, one table per feature. Each feature file exports its handlers keyed
// by the request kind the core sends (see src/host.rs and the feature's Rust module).
import type { PluginApi } from "./host.js";
import type { HostHandlers } from "./host-bridge.js";
import { agentHandlers } from "./agents.js";
import { modelHandlers } from "./models.js";

export function hostHandlers(api: PluginApi): HostHandlers {
  return { ...modelHandlers(api), ...agentHandlers(api) };
}
