// Loads the napi-rs addon. The generated loader (native/index.cjs) picks the platform binary;
// it is `require`d at module load so OpenClaw's plugin capture copies the .node with the package.
import { createRequire } from "node:module";
import type * as Native from "../native/index.js";

const require = createRequire(import.meta.url);

const loadStarted = performance.now();
export const native: typeof Native = require("../native/index.cjs");
/** Milliseconds this module spent loading the addon (reported once the service starts). */
export const addonLoadMs = performance.now() - loadStarted;
export type {
  ClawMatrixNode,
  HostRequest,
  HostRequestKind,
  NodeEvent,
  PeerView,
  ProviderPlan,
  StatusReport,
  ToolDefinition,
  ToolStep,
} from "../native/index.js";

/** A JS Error carrying the core's stable `code`. */
export function codedError(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(message), { code });
}
