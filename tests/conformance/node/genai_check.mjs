// Google's npm `@google/genai` SDK (what the Gemini CLI is built on) against a
// running polyplex, as ../test_node_sdk.py starts it: Gemini's API served by
// other providers' models. Prints one line per check; exits 1 if any failed.
import { GoogleGenAI } from '@google/genai';
import { check, expect, finish } from './checks.mjs';

const ai = new GoogleGenAI({ apiKey: process.env.POLYPLEX_KEY, httpOptions: { baseUrl: process.env.POLYPLEX_BASE } });
const readFile = {
  functionDeclarations: [{
    name: 'read_file', description: 'Reads a file.',
    parametersJsonSchema: { type: 'object', properties: { path: { type: 'string' } }, required: ['path'] },
  }],
};

for (const model of ['openai/gpt-4o-mini', 'anthropic/claude-sonnet-4-5', 'gemini-2.5-flash']) {
  await check(`generateContent ${model}`, async () => {
    const r = await ai.models.generateContent({ model, contents: 'hello from js',
      config: { systemInstruction: 'Be brief.', thinkingConfig: { includeThoughts: true, thinkingBudget: -1 } } });
    expect(r.text === 'hello from js', `text: ${r.text}`);
    expect(r.usageMetadata.totalTokenCount > 0, 'usage');
  });
  await check(`generateContentStream with a tool, ${model}`, async () => {
    const s = await ai.models.generateContentStream({ model, contents: 'src/main.rs', config: { tools: [readFile] } });
    const calls = [];
    let last;
    for await (const ch of s) {
      if (ch.functionCalls) calls.push(...ch.functionCalls);
      last = ch;
    }
    // (Gemini's own API names no call ids: its calls are answered by name.)
    const ids = model.startsWith('gemini') || Boolean(calls[0].id);
    expect(calls.length === 1 && calls[0].name === 'read_file' && ids, JSON.stringify(calls));
    expect(last.usageMetadata.totalTokenCount > 0, 'usage on the last chunk');
    // The turn back, with the call's response by id.
    const r = await ai.models.generateContent({ model, config: { tools: [readFile] }, contents: [
      { role: 'user', parts: [{ text: 'src/main.rs' }] },
      { role: 'model', parts: [{ functionCall: calls[0] }] },
      { role: 'user', parts: [{ functionResponse: { id: calls[0].id, name: 'read_file', response: { output: 'fn main() {}' } } }] },
    ] });
    expect(r.text.includes('fn main() {}'), `text: ${r.text}`);
  });
}
await check('countTokens', async () => {
  const c = await ai.models.countTokens({ model: 'openai/gpt-4o-mini', contents: 'count me' });
  expect(c.totalTokens > 0, JSON.stringify(c));
});
await check('an unknown model is NOT_FOUND', async () => {
  try {
    await ai.models.generateContent({ model: 'nope/nothing', contents: 'x' });
    throw new Error('no error');
  } catch (e) {
    expect(e.status === 404, `status ${e.status}: ${e.message}`);
  }
});
finish();
