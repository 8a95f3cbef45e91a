// The real-host e2e harness: provisioning (Node 24 + pinned openclaw), the mock LLM, gateways.
export * from './provision.mjs';
export * from './mock-llm.mjs';
export * from './gateway.mjs';
export * from './ports.mjs';
export { gatewayConfig, deepMerge, writeJsonAtomic, PLUGIN_ID, MOCK_PROVIDER, MOCK_MODEL_IDS } from './config.mjs';
export { treeRss, trackedGroups } from './procs.mjs';
