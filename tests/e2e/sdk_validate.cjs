// Reads what the proxy writes itself through the Node SDK's own stream helpers
// (tests/e2e_sdk.rs), like sdk_validate.py: the SDK's ResponseStream must accumulate every
// event and `finalResponse()` must give a Response with every field its type declares.
//
// usage: node sdk_validate.cjs BASE_URL MODEL   (NODE_PATH points at the node_modules with openai)
//
// Prints one JSON object per line and step: {"step","id","text"} or {"step","error","message"}.
// Steps: capped (a stream cut at max_output_tokens), compact_v2 (a local v2 compaction
// stream), compact_v1 (a local v1 compaction answer from responses.compact).
'use strict';
const assert = require('node:assert/strict');
const OpenAI = require('openai');

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: 'sk-client-node', maxRetries: 0, timeout: 60_000 });

const emit = (step, fields) => console.log(JSON.stringify({ step, ...fields }));

async function attempt(step, fn) {
  try {
    const [id, text] = await fn();
    emit(step, { id, text });
  } catch (e) {
    if (!(e instanceof OpenAI.APIError || e instanceof OpenAI.OpenAIError || e instanceof assert.AssertionError)) throw e;
    emit(step, { error: e.constructor.name, message: String(e.message) });
  }
}

// The SDK's `ResponseUsage`: every count a number.
function checkUsage(u, where) {
  assert.ok(u && typeof u === 'object', `${where}: no usage`);
  for (const k of ['input_tokens', 'output_tokens', 'total_tokens']) {
    assert.equal(typeof u[k], 'number', `${where}: usage.${k}`);
  }
  assert.equal(typeof u.input_tokens_details?.cached_tokens, 'number', `${where}: cached_tokens`);
  assert.equal(typeof u.output_tokens_details?.reasoning_tokens, 'number', `${where}: reasoning_tokens`);
  assert.equal(u.total_tokens, u.input_tokens + u.output_tokens, `${where}: total_tokens`);
}

// The SDK's `Response`: its required fields with their types, its nullable ones present.
function checkResponse(r, where) {
  assert.equal(typeof r.id, 'string', `${where}: id`);
  assert.equal(r.object, 'response', `${where}: object`);
  assert.equal(typeof r.created_at, 'number', `${where}: created_at`);
  assert.equal(typeof r.model, 'string', `${where}: model`);
  assert.ok(Array.isArray(r.output), `${where}: output`);
  assert.ok(Array.isArray(r.tools), `${where}: tools`);
  assert.ok(r.tool_choice !== undefined && r.tool_choice !== null, `${where}: tool_choice`);
  assert.equal(typeof r.parallel_tool_calls, 'boolean', `${where}: parallel_tool_calls`);
  for (const k of ['error', 'incomplete_details', 'instructions', 'metadata', 'temperature', 'top_p', 'status', 'usage']) {
    assert.ok(k in r, `${where}: ${k} missing`);
  }
}

const HISTORY = [
  { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'fix the tokenizer' }] },
  { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'Two tests fail.' }] },
];

async function main() {
  await attempt('capped', async () => {
    const stream = client.responses.stream({ model, input: 'e2e capped node', max_output_tokens: 3 });
    const seen = [];
    stream.on('event', (ev) => seen.push(ev.type));
    const r = await stream.finalResponse();
    assert.equal(seen[seen.length - 1], 'response.incomplete', `last event ${seen[seen.length - 1]}`);
    checkResponse(r, 'capped');
    assert.equal(r.status, 'incomplete');
    assert.equal(r.incomplete_details?.reason, 'max_output_tokens');
    checkUsage(r.usage, 'capped');
    assert.ok(r.usage.output_tokens > 0, 'output_tokens');
    return [r.id, `incomplete max_output_tokens output_tokens=${r.usage.output_tokens}`];
  });
  await attempt('compact_v2', async () => {
    const stream = client.responses.stream({
      model,
      input: [...HISTORY, { type: 'compaction_trigger' }],
      store: false,
    });
    const done = [];
    stream.on('event', (ev) => {
      if (ev.response) checkResponse(ev.response, ev.type);
      if (ev.type === 'response.output_item.done') done.push(ev.item);
    });
    const r = await stream.finalResponse();
    checkResponse(r, 'compact_v2');
    checkUsage(r.usage, 'compact_v2');
    assert.equal(done.length, 1, 'exactly one compaction item');
    assert.equal(r.output.length, 1);
    const item = r.output[0];
    assert.equal(item.type, 'compaction');
    assert.equal(typeof item.id, 'string', 'compaction item id');
    assert.equal(typeof item.encrypted_content, 'string');
    return [r.id, `completed compaction id=${item.id.length > 0}`];
  });
  await attempt('compact_v1', async () => {
    const c = await client.responses.compact({ model, input: HISTORY });
    assert.equal(typeof c.id, 'string', 'id');
    assert.equal(c.object, 'response.compaction');
    assert.equal(typeof c.created_at, 'number', 'created_at');
    checkUsage(c.usage, 'compact_v1');
    const own = c.output.filter((i) => i.type !== 'message');
    assert.equal(own.length, 1);
    assert.equal(own[0].type, 'compaction');
    assert.equal(typeof own[0].id, 'string', 'compaction item id');
    return [c.id, `compaction id=${own[0].id.length > 0}`];
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
