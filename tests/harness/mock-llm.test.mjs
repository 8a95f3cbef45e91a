// Unit tests of the mock LLM alone (no OpenClaw): `node --test tests/harness/mock-llm.test.mjs`.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cleanUserText, decide, parseToolCalls, startMockLlm } from './mock-llm.mjs';

const STAMP = '[Mon 2026-11-23 23:09 UTC] ';
const FOOTER = '\n\nRuntime: agent=main | session=agent:main:t1 | model=mock/mock-model | shell=bash';
const INTERNAL = '<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nsome context\n<<<END_OPENCLAW_INTERNAL_CONTEXT>>>';

/** How OpenClaw wraps a user turn. @param {string} text */
const wrapped = (text) => [
  { role: 'system', content: 'You are a test agent.' },
  { role: 'user', content: `${STAMP}${text}${FOOTER}` },
  { role: 'user', content: INTERNAL },
];

/** @type {Awaited<ReturnType<typeof startMockLlm>>} */
let mock;
before(async () => { mock = await startMockLlm({ maxRecorded: 5 }); });
after(async () => { await mock.close(); });

/** @param {any} body @param {Record<string,string>} [headers] */
function post(body, headers = {}) {
  return fetch(`${mock.url}/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer test-key', ...headers },
    body: JSON.stringify({ model: 'mock-model', ...body }), signal: AbortSignal.timeout(5_000),
  });
}

/** Parses an SSE body into the JSON chunks and whether `[DONE]` ended it. @param {Response} res */
async function sse(res) {
  const text = await res.text();
  const datas = text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice(6));
  assert.equal(datas.at(-1), '[DONE]', 'stream ends with [DONE]');
  return datas.slice(0, -1).map((d) => JSON.parse(d));
}

describe('decisions', () => {
  test('OpenClaw wrapping and internal-context messages are ignored', () => {
    assert.equal(cleanUserText(`${STAMP}hello there${FOOTER}`), 'hello there');
    assert.equal(cleanUserText(INTERNAL), '');
    const plan = decide(wrapped('hello there'), []);
    assert.deepEqual(plan, { kind: 'reply', text: 'hello there', content: 'MOCK_REPLY: hello there' });
  });

  test('content given as an array of parts is read', () => {
    const plan = decide([{ role: 'user', content: [{ type: 'text', text: `${STAMP}list tools` }] }, { role: 'user', content: [{ type: 'text', text: INTERNAL }] }], ['read', 'exec']);
    assert.deepEqual(plan, { kind: 'list_tools', text: 'list tools', content: 'read exec' });
  });

  test('tool results after the real user message give TOOL_RESULT lines, named from tool_calls ids', () => {
    const messages = [
      ...wrapped('call tools read with {"path":"a"} and exec with {"command":"ls"}'),
      { role: 'assistant', content: null, tool_calls: [
        { id: 'c0', type: 'function', function: { name: 'read', arguments: '{"path":"a"}' } },
        { id: 'c1', type: 'function', function: { name: 'exec', arguments: '{"command":"ls"}' } }] },
      { role: 'tool', tool_call_id: 'c0', content: 'file-a' },
      { role: 'tool', tool_call_id: 'c1', content: [{ type: 'text', text: 'x.txt' }] },
      { role: 'user', content: INTERNAL },
    ];
    const plan = decide(messages, []);
    assert.equal(plan.kind, 'tool_result');
    assert.equal(/** @type {any} */ (plan).content, 'TOOL_RESULT[read]: file-a\nTOOL_RESULT[exec]: x.txt');
  });

  test('tool results from an earlier turn do not count', () => {
    const messages = [
      ...wrapped('call tool read with {}'),
      { role: 'assistant', content: null, tool_calls: [{ id: 'c0', type: 'function', function: { name: 'read', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'c0', content: 'old' },
      { role: 'assistant', content: 'TOOL_RESULT[read]: old' },
      ...wrapped('hello again').slice(1),
    ];
    assert.equal(decide(messages, []).kind, 'reply');
  });

  test('tool-call arguments may contain braces inside strings', () => {
    assert.deepEqual(parseToolCalls('call tool write with {"path":"x","content":"a}{b"}'), [{ name: 'write', arguments: '{"path":"x","content":"a}{b"}' }]);
    assert.equal(parseToolCalls('call tool read with not-json'), null);
  });
});

describe('HTTP', () => {
  test('stream N chunks every M ms: ordered content chunks, stop, usage chunk, [DONE]', async () => {
    const res = await post({ stream: true, stream_options: { include_usage: true }, messages: wrapped('stream 4 chunks every 10 ms') });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const chunks = await sse(res);
    const content = chunks.flatMap((c) => c.choices.map((/** @type {any} */ ch) => ch.delta?.content ?? '')).filter(Boolean);
    assert.deepEqual(content, ['chunk-1 ', 'chunk-2 ', 'chunk-3 ', 'chunk-4 ']);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
    const finish = chunks.filter((c) => c.choices[0]?.finish_reason);
    assert.equal(finish.length, 1);
    assert.equal(finish[0].choices[0].finish_reason, 'stop');
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage.total_tokens > 0);
  });

  test('parallel tool calls stream as delta.tool_calls with index, id, name, split arguments', async () => {
    const res = await post({ stream: true, messages: wrapped('call tools read with {"path":"hello.txt"} and exec with {"command":"echo hi"}') });
    const chunks = await sse(res);
    /** @type {Map<number, {id:string, name:string, args:string[], pieces:number}>} */
    const calls = new Map();
    for (const c of chunks) {
      for (const tc of c.choices[0]?.delta?.tool_calls ?? []) {
        assert.equal(typeof tc.index, 'number');
        if (!calls.has(tc.index)) {
          assert.ok(tc.id, 'first chunk of a call carries the id');
          assert.equal(tc.type, 'function');
          calls.set(tc.index, { id: tc.id, name: tc.function.name, args: [], pieces: 0 });
        }
        const call = /** @type {any} */ (calls.get(tc.index));
        if (tc.function?.arguments) { call.args.push(tc.function.arguments); call.pieces++; }
      }
    }
    assert.deepEqual([...calls.keys()], [0, 1]);
    assert.equal(calls.get(0)?.name, 'read');
    assert.equal(calls.get(1)?.name, 'exec');
    assert.notEqual(calls.get(0)?.id, calls.get(1)?.id);
    for (const call of calls.values()) assert.ok(call.pieces >= 2, 'arguments split across >= 2 chunks');
    assert.deepEqual(JSON.parse(calls.get(0)?.args.join('') ?? ''), { path: 'hello.txt' });
    assert.deepEqual(JSON.parse(calls.get(1)?.args.join('') ?? ''), { command: 'echo hi' });
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'tool_calls');
  });

  test('non-stream tool call and reply shapes', async () => {
    const a = await (await post({ messages: wrapped('call tool read with {"path":"x"}') })).json();
    assert.equal(a.object, 'chat.completion');
    assert.equal(a.choices[0].finish_reason, 'tool_calls');
    assert.equal(a.choices[0].message.tool_calls[0].function.name, 'read');
    assert.equal(a.choices[0].message.tool_calls[0].function.arguments, '{"path":"x"}');
    const b = await (await post({ messages: wrapped('reason then answer') })).json();
    assert.equal(b.choices[0].finish_reason, 'stop');
    assert.equal(b.choices[0].message.content, 'ANSWER: reason then answer');
    assert.ok(b.choices[0].message.reasoning_content.length > 0);
  });

  test('reasoning streams before content', async () => {
    const chunks = await sse(await post({ stream: true, messages: wrapped('reason then answer') }));
    const kinds = chunks.map((c) => c.choices[0]?.delta).filter(Boolean)
      .map((d) => (d.reasoning_content ? 'r' : d.content ? 'c' : '')).filter(Boolean).join('');
    assert.match(kinds, /^r+c+$/);
  });

  test('fail with 429 answers an OpenAI error with Retry-After', async () => {
    const res = await post({ messages: wrapped('fail with 429') });
    assert.equal(res.status, 429);
    assert.equal(res.headers.get('retry-after'), '1');
    const body = await res.json();
    assert.equal(typeof body.error.message, 'string');
    assert.equal(typeof body.error.type, 'string');
    const r500 = await post({ stream: true, messages: wrapped('fail with 503') });
    assert.equal(r500.status, 503);
    await r500.arrayBuffer();
  });

  test('hang keeps the stream open until the client disconnects, which is recorded', async () => {
    mock.reset();
    const res = await post({ stream: true, messages: wrapped('hang') });
    const reader = /** @type {ReadableStream<Uint8Array>} */ (res.body).getReader();
    const first = await reader.read();
    assert.ok(first.value && first.value.length > 0, 'one chunk before hanging');
    const t = Date.now();
    await reader.cancel();
    const deadline = Date.now() + 3_000;
    while (mock.disconnects.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(mock.disconnects.length, 1);
    assert.equal(mock.disconnects[0].decision, 'hang');
    assert.ok(mock.disconnects[0].ts >= t - 5);
  });

  test('records auth, model and tools; /v1/models, /__mock/requests, reset and the cap work', async () => {
    mock.reset();
    await (await post({ messages: wrapped('hello'), tools: [{ type: 'function', function: { name: 'read', parameters: {} } }] })).json();
    const models = await (await fetch(`${mock.url}/models`)).json();
    assert.deepEqual(models.data.map((/** @type {any} */ m) => m.id), ['mock-model', 'mock-model-2']);
    const recorded = await (await fetch(`http://127.0.0.1:${mock.port}/__mock/requests`)).json();
    assert.equal(recorded.length, 2);
    assert.equal(recorded[0].auth, 'Bearer test-key');
    assert.equal(recorded[0].model, 'mock-model');
    assert.deepEqual(recorded[0].tools, ['read']);
    assert.equal(recorded[0].decision, 'reply');
    for (let i = 0; i < 6; i++) await (await post({ messages: wrapped(`n${i}`) })).json();
    assert.equal(mock.requests.length, 5, 'capped');
    assert.equal(mock.dropped(), 3);
    assert.equal(mock.requests.at(-1)?.text, 'n5');
    await fetch(`http://127.0.0.1:${mock.port}/__mock/reset`, { method: 'POST' });
    assert.equal(mock.requests.length, 0);
    assert.equal(mock.dropped(), 0);
  });
});
