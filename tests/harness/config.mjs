// openclaw.json generation for a test gateway (the facts behind it: tests/harness/README.md).

import fs from 'node:fs';
import path from 'node:path';

export const PLUGIN_ID = 'clawmatrix';
export const MOCK_PROVIDER = 'mock';
export const MOCK_MODEL_IDS = ['mock-model', 'mock-model-2'];

/**
 * @param {{port:number, token:string, dir:string, mockUrl:string, pluginDir?:string, pluginConfig?:object, extraConfig?:object}} a
 * @returns {any} the config object
 */
export function gatewayConfig(a) {
  /** @type {any} */
  const cfg = {
    gateway: {
      mode: 'local', port: a.port, bind: 'loopback',
      auth: { mode: 'token', token: a.token },
      http: { endpoints: { chatCompletions: { enabled: true } } },
    },
    update: { checkOnStart: false },
    logging: { file: path.join(a.dir, 'logs', 'openclaw.log') },
    models: {
      mode: 'merge',
      catalogRefresh: { enabled: false },
      providers: {
        [MOCK_PROVIDER]: {
          baseUrl: a.mockUrl, apiKey: 'mock-key', api: 'openai-completions',
          models: MOCK_MODEL_IDS.map((id) => ({
            id, name: id, reasoning: false, input: ['text'],
            cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0 },
            contextWindow: 128000, maxTokens: 4096,
          })),
        },
      },
    },
    agents: { defaults: { workspace: path.join(a.dir, 'workspace'), model: { primary: `${MOCK_PROVIDER}/${MOCK_MODEL_IDS[0]}` } } },
    tools: { toolSearch: false },
  };
  if (a.pluginConfig !== undefined) {
    if (!a.pluginDir) throw new Error('config: pluginConfig given but no pluginDir');
    cfg.plugins = { load: { paths: [a.pluginDir] }, entries: { [PLUGIN_ID]: { enabled: true, config: a.pluginConfig } } };
  }
  return a.extraConfig ? deepMerge(cfg, a.extraConfig) : cfg;
}

/**
 * Deep merge: plain objects merge key by key; arrays and scalars from `over` replace; `undefined`
 * in `over` is skipped, `null` deletes the key.
 * @param {any} base @param {any} over @returns {any}
 */
export function deepMerge(base, over) {
  if (!isPlain(base) || !isPlain(over)) return structuredClone(over);
  /** @type {Record<string, any>} */
  const out = structuredClone(base);
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    if (v === null) { delete out[k]; continue; }
    out[k] = isPlain(out[k]) && isPlain(v) ? deepMerge(out[k], v) : structuredClone(v);
  }
  return out;
}

/** @param {any} v @returns {boolean} */
function isPlain(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Writes JSON atomically (temp file in the same dir + rename). @param {string} file @param {any} obj */
export function writeJsonAtomic(file, obj) {
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(obj, null, 2) + '\n');
  fs.renameSync(tmp, file);
}
