// The official npm `openai` SDK (v6) against a running polyplex backed by
// `polyplex mock`, as ../test_node_sdk.py starts them: the quick-start calls
// in JavaScript, and the error classes OpenAI itself would cause. Prints one
// line per check; exits 1 if any failed.
//
//   POLYPLEX_BASE=http://127.0.0.1:8484 POLYPLEX_KEY=... MOCK_BASE=http://127.0.0.1:9000 node sdk_check.mjs
import OpenAI from 'openai';
import { check, expect, finish } from './checks.mjs';

const base = process.env.POLYPLEX_BASE;
const key = process.env.POLYPLEX_KEY;
const mock = process.env.MOCK_BASE;
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
const MODEL = 'openai/gpt-4o-mini';
const user = (content) => [{ role: 'user', content }];

async function fault(spec) {
  const r = await fetch(`${mock}/__mock/faults`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(spec),
  });
  expect(r.ok, `arming ${JSON.stringify(spec)}: ${r.status}`);
}
async function rejects(cls, fn) {
  try {
    await fn();
  } catch (e) {
    expect(e instanceof cls, `expected ${cls.name}, got ${e && e.constructor && e.constructor.name}: ${e}`);
    return e;
  }
  throw new Error(`expected ${cls.name}, nothing was thrown`);
}

await check('chat completion, usage with cost, polyplex headers', async () => {
  const { data, response } = await client.chat.completions
    .create({ model: MODEL, messages: user('Hello from JavaScript') })
    .withResponse();
  expect(typeof data.choices[0].message.content === 'string' && data.choices[0].message.content.length > 0, 'content');
  expect(data.choices[0].finish_reason === 'stop', `finish_reason ${data.choices[0].finish_reason}`);
  expect(data.usage.total_tokens === data.usage.prompt_tokens + data.usage.completion_tokens, 'usage adds up');
  expect(typeof data.usage.cost === 'number' && data.usage.cost > 0, `usage.cost ${data.usage.cost}`);
  expect(response.headers.get('x-polyplex-provider') === 'openai', 'x-polyplex-provider');
  expect(response.headers.get('x-polyplex-model') === 'gpt-4o-mini', 'x-polyplex-model');
  expect(response.headers.get('x-request-id'), 'x-request-id');
});

for (const model of [MODEL, 'anthropic/claude-sonnet-4-5', 'google/gemini-2.5-flash']) {
  await check(`stream with include_usage (${model})`, async () => {
    const stream = await client.chat.completions.create({
      model, messages: user('Count: one two three four'), stream: true, stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    let finish = null;
    for await (const chunk of stream) {
      if (chunk.choices.length) {
        text += chunk.choices[0].delta.content || '';
        finish = chunk.choices[0].finish_reason || finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text.length > 0, 'streamed content');
    expect(finish === 'stop', `finish_reason ${finish}`);
    expect(usage && usage.completion_tokens > 0 && typeof usage.cost === 'number', `usage ${JSON.stringify(usage)}`);
  });
}

await check('tool call with tool_choice, then the round trip', async () => {
  const tools = [{
    type: 'function',
    function: {
      name: 'get_current_weather',
      parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
    },
  }];
  const messages = user("What's the weather like in Boston today?");
  const r = await client.chat.completions.create({
    model: MODEL, messages, tools, tool_choice: { type: 'function', function: { name: 'get_current_weather' } },
  });
  const call = r.choices[0].message.tool_calls[0];
  expect(r.choices[0].finish_reason === 'tool_calls', 'finish_reason tool_calls');
  expect(call.function.name === 'get_current_weather', 'tool name');
  expect(JSON.parse(call.function.arguments).location === 'Boston', `arguments ${call.function.arguments}`);
  messages.push(r.choices[0].message);
  messages.push({ role: 'tool', tool_call_id: call.id, content: JSON.stringify({ temperature: 22 }) });
  const r2 = await client.chat.completions.create({ model: MODEL, messages, tools });
  expect(r2.choices[0].message.content.includes('22'), `answer ${r2.choices[0].message.content}`);
});

await check('structured output (json_schema)', async () => {
  const r = await client.chat.completions.create({
    model: MODEL,
    messages: user('Give me a user'),
    response_format: {
      type: 'json_schema',
      json_schema: { name: 'user', schema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] } },
    },
  });
  expect(typeof JSON.parse(r.choices[0].message.content) === 'object', 'JSON content');
});

for (const model of [MODEL, 'anthropic/claude-sonnet-4-5']) {
  await check(`Responses API: create, output_text, a tool loop, a stream (${model})`, async () => {
    const r = await client.responses.create({ model, instructions: 'Be brief.', input: 'Hello from JavaScript' });
    expect(r.object === 'response' && r.status === 'completed', `status ${r.status}`);
    expect(r.output_text === 'Hello from JavaScript', `output_text ${r.output_text}`);
    expect(r.usage.total_tokens === r.usage.input_tokens + r.usage.output_tokens, 'usage adds up');
    const tools = [{ type: 'function', name: 'get_weather',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } }];
    const input = [{ role: 'user', content: 'Weather in Oslo?' }];
    const first = await client.responses.create({ model, input, tools });
    const call = first.output.find((o) => o.type === 'function_call');
    expect(call && JSON.parse(call.arguments).city === 'Oslo', `call ${JSON.stringify(first.output)}`);
    input.push(...first.output, { type: 'function_call_output', call_id: call.call_id, output: 'rain' });
    const second = await client.responses.create({ model, input, tools });
    expect(second.output_text === 'The tool returned: rain', `answer ${second.output_text}`);
    const stream = client.responses.stream({ model, input: 'one two three' });
    let text = '';
    stream.on('response.output_text.delta', (e) => { text += e.delta; });
    const final = await stream.finalResponse();
    expect(text === 'one two three' && final.output_text === text, `streamed ${text} / ${final.output_text}`);
  });
}

for (const model of [MODEL, 'anthropic/claude-sonnet-4-5']) {
  await check(`legacy completions, unary and streamed (${model})`, async () => {
    const r = await client.completions.create({ model, prompt: 'Say this is a test', max_tokens: 20 });
    expect(r.object === 'text_completion' && r.choices[0].text === 'Say this is a test', `text ${r.choices[0].text}`);
    expect(r.usage.cost > 0, `usage.cost ${r.usage.cost}`);
    let text = '';
    const stream = await client.completions.create({ model, prompt: 'one two three', max_tokens: 20, stream: true });
    for await (const c of stream) text += c.choices.length ? c.choices[0].text : '';
    expect(text === 'one two three', `streamed ${text}`);
  });
}

await check('embeddings (the SDK asks for base64 and decodes it)', async () => {
  const r = await client.embeddings.create({ model: 'openai/text-embedding-3-small', input: ['a', 'b'] });
  expect(r.data.length === 2 && r.data[1].index === 1, 'two vectors in order');
  expect(Array.isArray(r.data[0].embedding) && r.data[0].embedding.length === 16, 'decoded floats');
  expect(r.data[0].embedding.every((x) => typeof x === 'number'), 'numbers');
});

await check('models list and retrieve', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  expect(ids.includes('openai/gpt-4o-mini'), `ids ${ids.slice(0, 5)}`);
  const m = await client.models.retrieve('openai/gpt-4o-mini');
  expect(m.id === 'openai/gpt-4o-mini' && m.object === 'model', JSON.stringify(m));
});

await check('401: AuthenticationError', async () => {
  const bad = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'plx-wrong', maxRetries: 0 });
  const e = await rejects(OpenAI.AuthenticationError, () => bad.chat.completions.create({ model: MODEL, messages: user('hi') }));
  expect(e.status === 401, `status ${e.status}`);
});

await check('404: NotFoundError for an unknown model', async () => {
  const e = await rejects(OpenAI.NotFoundError, () => client.chat.completions.create({ model: 'no-such-model', messages: user('hi') }));
  expect(e.code === 'model_not_found', `code ${e.code}`);
});

await check('400: BadRequestError naming the field', async () => {
  const e = await rejects(OpenAI.BadRequestError, () => client.chat.completions.create({ model: MODEL, messages: user('hi'), temperature: 5 }));
  expect(e.param === 'temperature', `param ${e.param}`);
});

await check('429 from upstream beyond retries: RateLimitError with retry-after', async () => {
  await fault({ fault: '429', count: 10, retry_after: 0 });
  try {
    const e = await rejects(OpenAI.RateLimitError, () => client.chat.completions.create({ model: MODEL, messages: user('hi') }));
    expect(e.headers.get('retry-after') !== null, 'retry-after');
  } finally {
    await fetch(`${mock}/__mock/faults`, { method: 'DELETE' });
  }
});

await check('a stream cut off upstream raises in the loop, after the first chunks', async () => {
  await fault({ fault: 'disconnect', after_chunks: 2, count: 1 });
  const stream = await client.chat.completions.create({ model: MODEL, messages: user('a b c d e f g h i j k l'), stream: true });
  const got = [];
  await rejects(OpenAI.APIError, async () => {
    for await (const chunk of stream) got.push(chunk);
  });
  expect(got.length > 0, 'chunks before the failure');
});

await check("Anthropic's prompt too long: BadRequestError with OpenAI's context_length_exceeded", async () => {
  await fault({ fault: 'context', count: 1, model: 'claude-haiku-4-5' });
  const e = await rejects(OpenAI.BadRequestError, () => client.chat.completions.create({ model: 'anthropic/claude-haiku-4-5', messages: user('hi') }));
  expect(e.code === 'context_length_exceeded', `code ${e.code}`);
  expect(e.message.includes('prompt is too long'), e.message);
});

finish();
