// Drives the official OpenAI Node SDK through the proxy (tests/e2e_sdk.rs).
//
// usage: node sdk_client.cjs BASE_URL MODEL   (NODE_PATH points at the node_modules with openai)
//
// Prints one JSON object per line and step, like sdk_client.py: {"step","id","text"} or
// {"step","error","status","message"}. Steps: streaming create, non-streaming create, and a
// follow-up anchored on the non-streaming answer with previous_response_id.
'use strict';
const OpenAI = require('openai');

const [baseURL, model] = process.argv.slice(2);
// The key is the client's; the proxy replaces it with one of its own credentials.
const client = new OpenAI({ baseURL, apiKey: 'sk-client-node', maxRetries: 0, timeout: 60_000 });

const emit = (step, fields) => console.log(JSON.stringify({ step, ...fields }));

async function attempt(step, fn) {
  try {
    const [id, text] = await fn();
    emit(step, { id, text });
    return id;
  } catch (e) {
    if (!(e instanceof OpenAI.APIError)) throw e;
    emit(step, { error: e.constructor.name, status: e.status ?? null, message: String(e.message) });
    return null;
  }
}

async function main() {
  await attempt('stream', async () => {
    const events = await client.responses.create({ model, input: 'e2e stream node', stream: true });
    let text = '';
    let id = null;
    for await (const ev of events) {
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      else if (ev.type === 'response.completed') id = ev.response.id;
    }
    return [id, text];
  });
  const first = await attempt('nonstream', async () => {
    const r = await client.responses.create({ model, input: 'e2e nonstream node', store: true });
    return [r.id, r.output_text];
  });
  if (first !== null) {
    await attempt('followup', async () => {
      const r = await client.responses.create({
        model,
        input: 'e2e follow-up node',
        previous_response_id: first,
        store: true,
      });
      return [r.id, r.output_text];
    });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
