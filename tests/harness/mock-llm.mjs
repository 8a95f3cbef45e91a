// A deterministic OpenAI-compatible upstream for end-to-end tests, bound to 127.0.0.1 only.
//
// Behaviour is decided by the LAST REAL user message (OpenClaw's wrapping removed: the
// `[Mon 2026-11-23 23:09 UTC] ` prefix, the `\n\nRuntime: agent=...` footer, and the extra user
// messages made only of `<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>...<<<END_OPENCLAW_INTERNAL_CONTEXT>>>`).
// Rules, first match wins:
//   1. a `tool` message after that user message   -> text `TOOL_RESULT[<name>]: <content>` (joined by "\n")
//   2. `call tool NAME with {json}`                 -> one tool call
//      `call tools A with {..} and B with {..}`     -> parallel tool calls (index 0, 1, ...)
//   3. `list tools`                                 -> offered tool names joined by spaces
//   4. `stream N chunks[ every M ms]`               -> content `chunk-1 ` ... `chunk-N `
//   5. `reason then answer`                         -> `reasoning_content` deltas, then `ANSWER: <text>`
//   6. text starting with `hang`                    -> headers + one chunk, then nothing until the client leaves
//   7. `fail with STATUS`                           -> that status, OpenAI-shaped error (429 adds Retry-After: 1)
//   8. anything else                                -> `MOCK_REPLY: <text>`
// Phrases of rules 2-5 and 7 may appear anywhere in the message; rule 6 must start it.
//
// Endpoints: POST /v1/chat/completions (SSE when `stream: true`), GET /v1/models,
// GET /__mock/requests (JSON array), GET /__mock/state ({dropped, disconnects, count}), POST /__mock/reset.
// CLI: `node mock-llm.mjs [--port P]` prints `{"port":P}` once listening; stops on SIGINT/SIGTERM.
// Node built-ins only; runs under Node 20 and 24.

import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Recorded requests kept in memory; older ones are dropped (and counted) beyond this. */
export const MAX_RECORDED_REQUESTS = 10_000;
/** Largest request body accepted (OpenClaw sends whole sessions + ~60 tool schemas). */
const MAX_BODY_BYTES = 32 * 1024 * 1024;
/** Bounds on `stream N chunks every M ms` so a typo cannot keep a response open for hours. */
const MAX_CHUNKS = 10_000;
const MAX_EVERY_MS = 60_000;

export const INTERNAL_BEGIN = '<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>';
export const INTERNAL_END = '<<<END_OPENCLAW_INTERNAL_CONTEXT>>>';
export const MOCK_MODELS = ['mock-model', 'mock-model-2'];

/**
 * @typedef {object} RecordedRequest
 * @property {number} id          sequence number (1-based, never reused)
 * @property {number} ts          Date.now() at arrival
 * @property {string} method
 * @property {string} path
 * @property {string|null} auth   the Authorization header
 * @property {string|null} model
 * @property {boolean} stream
 * @property {any[]} messages
 * @property {string[]} tools     names of the offered tools
 * @property {any} body           the parsed JSON body (null for GET)
 * @property {string|null} text   the cleaned last real user message
 * @property {string|null} decision  which rule answered
 */

/**
 * @typedef {object} Disconnect
 * @property {number} ts  Date.now() when the client went away
 * @property {number} requestId
 * @property {string|null} decision
 * @property {number} afterMs  time since the request arrived
 */

/**
 * @typedef {object} MockLlm
 * @property {number} port
 * @property {string} url           http://127.0.0.1:<port>/v1
 * @property {RecordedRequest[]} requests  live array (oldest dropped beyond MAX_RECORDED_REQUESTS)
 * @property {Disconnect[]} disconnects    responses the client abandoned before they finished
 * @property {() => number} dropped        how many recorded requests were dropped
 * @property {() => RecordedRequest[]} completions  recorded POST /v1/chat/completions only
 * @property {() => void} reset
 * @property {() => Promise<void>} close
 */

/**
 * Starts the mock on 127.0.0.1.
 * @param {{port?: number, maxRecorded?: number}} [opts]  maxRecorded defaults to MAX_RECORDED_REQUESTS
 * @returns {Promise<MockLlm>}
 */
export async function startMockLlm(opts = {}) {
  const maxRecorded = Math.min(opts.maxRecorded ?? MAX_RECORDED_REQUESTS, MAX_RECORDED_REQUESTS);
  /** @type {RecordedRequest[]} */
  const requests = [];
  /** @type {Disconnect[]} */
  const disconnects = [];
  let dropped = 0;
  let nextId = 1;
  /** @type {Set<http.ServerResponse>} */
  const open = new Set();

  const record = (/** @type {RecordedRequest} */ r) => {
    requests.push(r);
    while (requests.length > maxRecorded) { requests.shift(); dropped++; }
  };
  const reset = () => { requests.length = 0; disconnects.length = 0; dropped = 0; };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent) sendJson(res, 500, { error: { message: `mock error: ${e?.message ?? e}`, type: 'server_error' } });
      else res.destroy();
    });
  });

  /** @param {http.IncomingMessage} req @param {http.ServerResponse} res */
  async function handle(req, res) {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const p = url.pathname.replace(/\/+$/, '') || '/';
    if (p === '/__mock/requests' && req.method === 'GET') return sendJson(res, 200, requests);
    if (p === '/__mock/state' && req.method === 'GET') return sendJson(res, 200, { count: requests.length, dropped, disconnects });
    if (p === '/__mock/reset' && req.method === 'POST') { reset(); return sendJson(res, 200, { ok: true }); }

    const arrived = Date.now();
    const raw = req.method === 'POST' ? await readBody(req) : '';
    let body = null;
    if (raw) { try { body = JSON.parse(raw); } catch { body = null; } }
    /** @type {RecordedRequest} */
    const rec = {
      id: nextId++, ts: arrived, method: req.method ?? 'GET', path: p,
      auth: req.headers.authorization ?? null,
      model: body?.model ?? null, stream: body?.stream === true,
      messages: Array.isArray(body?.messages) ? body.messages : [],
      tools: toolNames(body?.tools), body, text: null, decision: null,
    };
    record(rec);

    if ((p === '/v1/models' || p === '/models') && req.method === 'GET') {
      return sendJson(res, 200, { object: 'list', data: MOCK_MODELS.map((id) => ({ id, object: 'model', created: 0, owned_by: 'mock' })) });
    }
    if (!((p === '/v1/chat/completions' || p === '/chat/completions') && req.method === 'POST')) {
      return sendJson(res, 404, { error: { message: `mock: no route ${req.method} ${p}`, type: 'invalid_request_error', code: 'not_found' } });
    }
    if (!body || typeof body !== 'object') {
      return sendJson(res, 400, { error: { message: 'mock: body is not JSON', type: 'invalid_request_error', code: null } });
    }

    const plan = decide(rec.messages, rec.tools);
    rec.text = plan.text;
    rec.decision = plan.kind;

    open.add(res);
    res.on('close', () => {
      open.delete(res);
      if (res.writableFinished) return;
      disconnects.push({ ts: Date.now(), requestId: rec.id, decision: rec.decision, afterMs: Date.now() - arrived });
      if (disconnects.length > maxRecorded) disconnects.shift();
    });
    await respond(res, body, rec, plan);
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => { server.off('error', reject); resolve(undefined); });
  });
  const port = /** @type {import('node:net').AddressInfo} */ (server.address()).port;

  return {
    port,
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    disconnects,
    dropped: () => dropped,
    completions: () => requests.filter((r) => r.path.endsWith('/chat/completions')),
    reset,
    close: () => new Promise((resolve) => {
      for (const r of open) r.destroy();
      server.close(() => resolve(undefined));
      server.closeAllConnections?.();
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// Deciding what to answer (pure functions, exported for unit tests)

/**
 * Text of a message `content` (string or array of parts).
 * @param {any} content @returns {string}
 */
export function contentText(content) {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content.map((p) => (typeof p === 'string' ? p : typeof p?.text === 'string' ? p.text : '')).filter(Boolean).join('\n');
  }
  return content == null ? '' : String(content);
}

/**
 * Removes OpenClaw's wrapping from user text: internal-context blocks, the leading timestamp and
 * the trailing `Runtime:` footer.
 * @param {string} text @returns {string}
 */
export function cleanUserText(text) {
  let t = text;
  for (let guard = 0; guard < 100; guard++) {
    const b = t.indexOf(INTERNAL_BEGIN);
    if (b < 0) break;
    const e = t.indexOf(INTERNAL_END, b);
    t = e < 0 ? t.slice(0, b) : t.slice(0, b) + t.slice(e + INTERNAL_END.length);
  }
  t = t.replace(/^\s*\[[A-Z][a-z]{2} \d{4}-\d{2}-\d{2} \d{1,2}:\d{2}(?::\d{2})?(?: [^\]\n]*)?\]\s*/, '');
  const footer = t.search(/\n\s*Runtime: agent=/);
  if (footer >= 0) t = t.slice(0, footer);
  return t.trim();
}

/**
 * Index of the last user message that has real text after cleaning, or -1.
 * @param {any[]} messages @returns {number}
 */
export function lastRealUserIndex(messages) {
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    if (m?.role === 'user' && cleanUserText(contentText(m.content)) !== '') return i;
  }
  return -1;
}

/**
 * @typedef {{name:string, arguments:string}} PlannedCall
 * @typedef {(
 *   {kind:'tool_result', text:string, content:string} |
 *   {kind:'tool_calls', text:string, calls:PlannedCall[]} |
 *   {kind:'list_tools'|'reply', text:string, content:string} |
 *   {kind:'stream_chunks', text:string, chunks:string[], everyMs:number} |
 *   {kind:'reason', text:string, reasoning:string[], content:string} |
 *   {kind:'hang', text:string} |
 *   {kind:'fail', text:string, status:number}
 * )} Plan
 */

/**
 * Decides the answer for a conversation.
 * @param {any[]} messages @param {string[]} offeredTools @returns {Plan}
 */
export function decide(messages, offeredTools) {
  const ui = lastRealUserIndex(messages);
  const text = ui >= 0 ? cleanUserText(contentText(messages[ui].content)) : '';

  const after = messages.slice(ui + 1);
  const results = after.filter((m) => m?.role === 'tool');
  if (results.length > 0) {
    /** @type {Map<string,string>} */
    const names = new Map();
    for (const m of after) {
      if (m?.role !== 'assistant' || !Array.isArray(m.tool_calls)) continue;
      for (const c of m.tool_calls) if (c?.id) names.set(c.id, c.function?.name ?? c.name ?? 'unknown');
    }
    const content = results
      .map((m) => `TOOL_RESULT[${names.get(m.tool_call_id) ?? m.name ?? 'unknown'}]: ${contentText(m.content)}`)
      .join('\n');
    return { kind: 'tool_result', text, content };
  }

  const calls = parseToolCalls(text);
  if (calls) return { kind: 'tool_calls', text, calls };
  if (/\blist tools\b/i.test(text)) return { kind: 'list_tools', text, content: offeredTools.join(' ') };
  const sm = /\bstream (\d+) chunks?(?: every (\d+) ?ms)?/i.exec(text);
  if (sm) {
    const n = Math.min(Number(sm[1]), MAX_CHUNKS);
    const chunks = Array.from({ length: n }, (_, i) => `chunk-${i + 1} `);
    return { kind: 'stream_chunks', text, chunks, everyMs: Math.min(Number(sm[2] ?? 0), MAX_EVERY_MS) };
  }
  if (/\breason then answer\b/i.test(text)) {
    return { kind: 'reason', text, reasoning: ['reasoning-1 ', 'reasoning-2 ', 'reasoning-3'], content: `ANSWER: ${text}` };
  }
  if (/^hang\b/i.test(text)) return { kind: 'hang', text };
  const fm = /\bfail with (\d{3})\b/i.exec(text);
  if (fm) return { kind: 'fail', text, status: Number(fm[1]) };
  return { kind: 'reply', text, content: `MOCK_REPLY: ${text}` };
}

/**
 * Parses `call tool NAME with {json}` / `call tools A with {..} and B with {..}`; null if absent.
 * Arguments must be a JSON object; braces inside JSON strings are handled.
 * @param {string} text @returns {PlannedCall[]|null}
 */
export function parseToolCalls(text) {
  const m = /\bcall tools? /i.exec(text);
  if (!m) return null;
  let rest = text.slice(m.index + m[0].length);
  /** @type {PlannedCall[]} */
  const calls = [];
  for (let guard = 0; guard < 64; guard++) {
    const head = /^\s*([A-Za-z0-9_.:\-]+) with\s*/.exec(rest);
    if (!head) break;
    const json = takeJsonObject(rest.slice(head[0].length));
    if (!json) break;
    let args;
    try { args = JSON.parse(json.text); } catch { break; }
    calls.push({ name: head[1], arguments: JSON.stringify(args) });
    rest = rest.slice(head[0].length + json.end);
    const and = /^\s*(?:,\s*)?(?:and\s+)?/i.exec(rest);
    rest = rest.slice(and ? and[0].length : 0);
  }
  return calls.length > 0 ? calls : null;
}

/** @param {string} s @returns {{text:string, end:number}|null} the balanced `{...}` at the start of s */
function takeJsonObject(s) {
  if (s[0] !== '{') return null;
  let depth = 0, inStr = false, esc = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (inStr) {
      if (esc) esc = false;
      else if (c === '\\') esc = true;
      else if (c === '"') inStr = false;
    } else if (c === '"') inStr = true;
    else if (c === '{') depth++;
    else if (c === '}' && --depth === 0) return { text: s.slice(0, i + 1), end: i + 1 };
  }
  return null;
}

/** @param {any} tools @returns {string[]} */
function toolNames(tools) {
  if (!Array.isArray(tools)) return [];
  return tools.map((t) => t?.function?.name ?? t?.name).filter((n) => typeof n === 'string');
}

// ---------------------------------------------------------------------------------------------
// Writing the answer

/**
 * @param {http.ServerResponse} res @param {any} body @param {RecordedRequest} rec @param {Plan} plan
 */
async function respond(res, body, rec, plan) {
  const model = typeof body.model === 'string' ? body.model : 'mock-model';
  const id = `chatcmpl-mock-${rec.id}`;
  const created = Math.floor(rec.ts / 1000);
  const promptTokens = Math.ceil(JSON.stringify(rec.messages).length / 4);

  if (plan.kind === 'fail') {
    /** @type {Record<string,string>} */
    const headers = plan.status === 429 ? { 'retry-after': '1' } : {};
    const type = plan.status === 429 ? 'rate_limit_error' : plan.status >= 500 ? 'server_error' : plan.status === 401 ? 'authentication_error' : 'invalid_request_error';
    return sendJson(res, plan.status, { error: { message: `mock failure ${plan.status}`, type, param: null, code: plan.status === 429 ? 'rate_limit_exceeded' : `mock_${plan.status}` } }, headers);
  }

  const calls = plan.kind === 'tool_calls'
    ? plan.calls.map((c, i) => ({ id: `call_mock_${rec.id}_${i}`, type: 'function', function: { name: c.name, arguments: c.arguments } }))
    : [];
  const finish = calls.length > 0 ? 'tool_calls' : 'stop';
  const contentPieces = plan.kind === 'stream_chunks' ? plan.chunks
    : plan.kind === 'tool_calls' || plan.kind === 'hang' ? []
    : splitInPieces(plan.content, 3);
  const reasoning = plan.kind === 'reason' ? plan.reasoning : [];
  const completionTokens = Math.ceil((contentPieces.join('') + reasoning.join('') + JSON.stringify(calls)).length / 4) || 1;
  const usage = { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };

  if (!rec.stream) {
    if (plan.kind === 'hang') { res.writeHead(200, { 'content-type': 'application/json' }); res.flushHeaders(); return; }
    /** @type {any} */
    const message = { role: 'assistant', content: calls.length > 0 ? null : contentPieces.join('') };
    if (calls.length > 0) message.tool_calls = calls;
    if (reasoning.length > 0) message.reasoning_content = reasoning.join('');
    return sendJson(res, 200, { id, object: 'chat.completion', created, model, choices: [{ index: 0, message, logprobs: null, finish_reason: finish }], usage });
  }

  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
  const chunk = (/** @type {any} */ delta, /** @type {string|null} */ fr = null) =>
    ({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, logprobs: null, finish_reason: fr }] });
  const send = (/** @type {any} */ obj) => { if (!res.destroyed) res.write(`data: ${typeof obj === 'string' ? obj : JSON.stringify(obj)}\n\n`); };

  if (plan.kind === 'hang') {
    send(chunk({ role: 'assistant', content: 'hanging…' }));
    return; // left open; the 'close' listener records the disconnect, close() destroys it
  }
  send(chunk({ role: 'assistant', content: '' }));
  for (const r of reasoning) send(chunk({ reasoning_content: r }));
  const everyMs = plan.kind === 'stream_chunks' ? plan.everyMs : 0;
  for (let i = 0; i < contentPieces.length; i++) {
    if (res.destroyed) return;
    if (everyMs > 0 && i > 0) await sleep(everyMs);
    send(chunk({ content: contentPieces[i] }));
  }
  calls.forEach((c, index) => {
    send(chunk({ tool_calls: [{ index, id: c.id, type: 'function', function: { name: c.function.name, arguments: '' } }] }));
    for (const part of splitInPieces(c.function.arguments, 2, true)) {
      send(chunk({ tool_calls: [{ index, function: { arguments: part } }] }));
    }
  });
  if (res.destroyed) return;
  send(chunk({}, finish));
  if (body.stream_options?.include_usage) send({ id, object: 'chat.completion.chunk', created, model, choices: [], usage });
  send('[DONE]');
  res.end();
}

/**
 * Splits text into at most n non-empty pieces (exactly n when `exact` and long enough; an empty
 * string gives [''] when `exact`, else []).
 * @param {string} s @param {number} n @param {boolean} [exact] @returns {string[]}
 */
function splitInPieces(s, n, exact = false) {
  if (s.length === 0) return exact ? Array(n).fill('') : [];
  const size = Math.max(1, Math.ceil(s.length / n));
  const out = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  while (exact && out.length < n) out.push('');
  return out;
}

/** @param {http.IncomingMessage} req @returns {Promise<string>} */
function readBody(req) {
  return new Promise((resolve, reject) => {
    /** @type {Buffer[]} */
    const parts = [];
    let size = 0;
    req.on('data', (d) => {
      size += d.length;
      if (size > MAX_BODY_BYTES) { reject(new Error(`body over ${MAX_BODY_BYTES} bytes`)); req.destroy(); return; }
      parts.push(d);
    });
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

/** @param {http.ServerResponse} res @param {number} status @param {any} obj @param {Record<string,string>} [headers] */
function sendJson(res, status, obj, headers = {}) {
  const text = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));

// CLI
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--port');
  const port = i >= 0 ? Number(process.argv[i + 1]) : 0;
  startMockLlm({ port }).then((mock) => {
    process.stdout.write(JSON.stringify({ port: mock.port }) + '\n');
    const stop = () => { mock.close().then(() => process.exit(0)); setTimeout(() => process.exit(0), 2_000).unref(); };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  }, (e) => { process.stderr.write(`mock-llm: ${e.message}\n`); process.exit(1); });
}
