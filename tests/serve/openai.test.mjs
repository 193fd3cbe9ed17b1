// The official `openai` npm client against `tern serve`: completions and chat, streaming and not,
// n = 2, stop, seed, logprobs, include_usage, token-id prompts, /tokenize and /detokenize. Every
// expected text comes from the real `tern run` (or `tern run --chat`, `tern tokenize`) on the
// same model, prompt, seed and sampling defaults.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import {
  STORIES, STORIES_ID, CHAT_ID, TERN, startServe, stopAll, ternRun, ternChat, chatModel, http, scratch, norm, openaiClient,
} from './lib.mjs';

const T = { timeout: 120000 };
let stories; let chat; let chatFile; let oc; let cc;
const PROMPT = 'Once upon a time';

before(async () => {
  chatFile = await chatModel();
  [stories, chat] = await Promise.all([
    startServe(STORIES, ['--parallel', '4']),
    startServe(chatFile, ['--parallel', '4', '--alias', CHAT_ID], { name: 'tern serve (chat)' }),
  ]);
  oc = openaiClient(stories);
  cc = openaiClient(chat);
});
after(() => stopAll());

// Collects a streamed completion: texts per choice index, finish reasons, the usage chunk.
async function collect(stream, kind = 'completion') {
  const text = []; const finish = []; let usage = null; let usageChunks = 0; let chunks = 0;
  for await (const c of stream) {
    chunks++;
    if (c.usage) { usage = c.usage; usageChunks++; assert.deepEqual(c.choices, [], 'the usage chunk has choices: []'); }
    for (const ch of c.choices) {
      const piece = kind === 'chat' ? (ch.delta?.content ?? '') : (ch.text ?? '');
      text[ch.index] = (text[ch.index] ?? '') + piece;
      if (ch.finish_reason) finish[ch.index] = ch.finish_reason;
    }
  }
  return { text, finish, usage, usageChunks, chunks };
}

test('GET /v1/models lists the model file name, or --alias', T, async () => {
  const ids = (await oc.models.list()).data.map((m) => m.id);
  assert.deepEqual(ids, [STORIES_ID]);
  const cids = (await cc.models.list()).data.map((m) => m.id);
  assert.deepEqual(cids, [CHAT_ID]);
});

test('completions: greedy, non-streaming and streaming, equal tern run', T, async () => {
  const want = await ternRun({ prompt: PROMPT, n: 40, temp: 0 });
  const r = await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: 40, temperature: 0, user: 'test' });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].text, want.text);
  assert.equal(r.choices[0].finish_reason, want.genTokens === 40 ? 'length' : 'stop');
  assert.equal(r.usage.prompt_tokens, want.promptTokens);
  assert.equal(r.usage.completion_tokens, want.genTokens);
  assert.equal(r.usage.total_tokens, want.promptTokens + want.genTokens);

  const s = await collect(await oc.completions.create({
    model: STORIES_ID, prompt: PROMPT, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true },
  }));
  assert.equal(s.text[0], want.text);
  assert.equal(s.finish[0], r.choices[0].finish_reason);
  assert.equal(s.usageChunks, 1, 'exactly one usage chunk');
  assert.deepEqual(s.usage, r.usage);
  assert.ok(s.chunks >= 3, `streamed in ${s.chunks} chunks`);

  // Without include_usage no usage chunk; max_completion_tokens is max_tokens' other name.
  const s2 = await collect(await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: 40, temperature: 0, stream: true }));
  assert.equal(s2.text[0], want.text);
  assert.equal(s2.usageChunks, 0);
});

test('completions: seeded sampling with the default top_k/top_p/min_p, and n = 2 uses seed + i', T, async () => {
  const [a, b] = await Promise.all([
    ternRun({ prompt: PROMPT, n: 32, temp: 0.8, seed: 42 }),
    ternRun({ prompt: PROMPT, n: 32, temp: 0.8, seed: 43 }),
  ]);
  const one = await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: 32, temperature: 0.8, seed: 42 });
  assert.equal(one.choices[0].text, a.text);
  // default temperature is tern run's 0.8
  const dflt = await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: 32, seed: 42 });
  assert.equal(dflt.choices[0].text, a.text);

  const two = await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: 32, temperature: 0.8, seed: 42, n: 2 });
  const byIndex = [...two.choices].sort((x, y) => x.index - y.index);
  assert.deepEqual(byIndex.map((c) => c.index), [0, 1]);
  assert.equal(byIndex[0].text, a.text);
  assert.equal(byIndex[1].text, b.text);
  assert.equal(two.usage.completion_tokens, a.genTokens + b.genTokens);

  const s = await collect(await oc.completions.create({
    model: STORIES_ID, prompt: PROMPT, max_tokens: 32, temperature: 0.8, seed: 42, n: 2, stream: true, stream_options: { include_usage: true },
  }));
  assert.deepEqual(s.text, [a.text, b.text]);
  assert.equal(s.usage.completion_tokens, a.genTokens + b.genTokens);
});

test('completions: stop (string and list) cuts before the first match, streaming too', T, async () => {
  const want = await ternRun({ prompt: PROMPT, n: 48, temp: 0 });
  const words = want.text.split(' ').filter((w) => /^[A-Za-z]{3,}$/.test(w));
  assert.ok(words.length >= 3, `too few words to pick a stop from: ${JSON.stringify(want.text)}`);
  const stop = ` ${words[Math.floor(words.length / 2)]}`;
  const cut = want.text.slice(0, want.text.indexOf(stop));
  const r = await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: 48, temperature: 0, stop });
  assert.equal(r.choices[0].text, cut);
  assert.equal(r.choices[0].finish_reason, 'stop');
  const l = await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: 48, temperature: 0, stop: ['#never#', stop] });
  assert.equal(l.choices[0].text, cut);
  const s = await collect(await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: 48, temperature: 0, stop, stream: true }));
  assert.equal(s.text[0], cut);
  assert.equal(s.finish[0], 'stop');
});

test('completions: logprobs equal the log-softmax of tern run --logits-out', T, async () => {
  const N = 12; const K = 3;
  const dir = scratch('logits');
  const file = path.join(dir, 'logits.f32');
  const want = await ternRun({ prompt: PROMPT, n: N, temp: 0, extra: ['--logits-out', file] });
  const buf = readFileSync(file);
  const logits = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  const V = want.nVocab;
  assert.ok(V > 0 && logits.length % V === 0);
  const r = await oc.completions.create({ model: STORIES_ID, prompt: PROMPT, max_tokens: N, temperature: 0, logprobs: K });
  const lp = r.choices[0].logprobs;
  assert.equal(r.choices[0].text, want.text);
  assert.equal(lp.tokens.length, want.genTokens);
  assert.equal(lp.tokens.join(''), want.text);
  for (let i = 0; i < want.genTokens; i++) {
    const row = logits.subarray((want.promptTokens - 1 + i) * V, (want.promptTokens + i) * V);
    let max = -Infinity; for (const x of row) max = Math.max(max, x);
    let sum = 0; for (const x of row) sum += Math.exp(x - max);
    const lse = max + Math.log(sum);
    const top = [...row].map((x) => x - lse).sort((x, y) => y - x).slice(0, K);
    assert.ok(Math.abs(lp.token_logprobs[i] - top[0]) < 2e-3, `token ${i}: logprob ${lp.token_logprobs[i]}, tern run ${top[0]}`);
    const got = Object.values(lp.top_logprobs[i]).sort((x, y) => y - x);
    assert.equal(got.length, K);
    for (let k = 0; k < K; k++) assert.ok(Math.abs(got[k] - top[k]) < 2e-3, `token ${i} top ${k}: ${got[k]} vs ${top[k]}`);
  }
});

test('/tokenize equals tern tokenize; token-id prompts give the string prompt\'s text; /detokenize inverts', T, async () => {
  const ids = JSON.parse(execFileSync(TERN, ['tokenize', '-m', STORIES, '-p', PROMPT, '--ids'], { encoding: 'utf8', timeout: 60000 }));
  const t = await http('POST', `${stories.url}/tokenize`, { body: { content: PROMPT, add_special: true } });
  assert.equal(t.status, 200, t.text);
  assert.deepEqual(t.json.tokens, ids);
  const wp = await http('POST', `${stories.url}/tokenize`, { body: { content: PROMPT, add_special: true, with_pieces: true } });
  assert.equal(wp.status, 200, wp.text);
  assert.deepEqual(wp.json.tokens.map((x) => x.id), ids);
  for (const x of wp.json.tokens) assert.equal(typeof x.piece, 'string');
  const nb = await http('POST', `${stories.url}/tokenize`, { body: { content: PROMPT, add_special: false } });
  assert.deepEqual(nb.json.tokens, ids.slice(ids.length - nb.json.tokens.length));
  assert.ok(nb.json.tokens.length < ids.length, 'add_special: false leaves out BOS');
  const d = await http('POST', `${stories.url}/detokenize`, { body: { tokens: nb.json.tokens } });
  assert.equal(d.status, 200, d.text);
  assert.equal(d.json.content.trim(), PROMPT);

  const want = await ternRun({ prompt: PROMPT, n: 24, temp: 0 });
  const r = await oc.completions.create({ model: STORIES_ID, prompt: ids, max_tokens: 24, temperature: 0 });
  assert.equal(r.choices[0].text, want.text);
  assert.equal(r.usage.prompt_tokens, ids.length);
});

test('chat: greedy reply equals tern run --chat; streaming equals non-streaming; usage', T, async () => {
  const system = 'You are a helpful assistant.';
  const user = 'Tell me about the sea.';
  const want = await ternChat({ model: chatFile, system, user, n: 24, temp: 0 });
  const messages = [{ role: 'system', content: system }, { role: 'user', content: user }];
  const r = await cc.chat.completions.create({ model: CHAT_ID, messages, max_tokens: 24, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(norm(r.choices[0].message.content), norm(want.text));
  assert.equal(r.usage.prompt_tokens, want.promptTokens);
  assert.equal(r.usage.completion_tokens, want.genTokens);
  assert.equal(r.choices[0].finish_reason, want.genTokens === 24 ? 'length' : 'stop');

  const s = await collect(await cc.chat.completions.create({
    model: CHAT_ID, messages, max_completion_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  }), 'chat');
  assert.equal(s.text[0], r.choices[0].message.content, 'streamed = not streamed');
  assert.equal(s.finish[0], r.choices[0].finish_reason);
  assert.deepEqual(s.usage, r.usage);
});

test('chat: n = 2 with a seed: choice i equals tern run --chat --seed seed+i, streaming or not', T, async () => {
  const user = 'Write a poem.';
  const [a, b] = await Promise.all([
    ternChat({ model: chatFile, user, n: 16, temp: 0.8, seed: 5 }),
    ternChat({ model: chatFile, user, n: 16, temp: 0.8, seed: 6 }),
  ]);
  const messages = [{ role: 'user', content: user }];
  const r = await cc.chat.completions.create({ model: CHAT_ID, messages, max_tokens: 16, temperature: 0.8, seed: 5, n: 2 });
  const byIndex = [...r.choices].sort((x, y) => x.index - y.index);
  assert.deepEqual(byIndex.map((c) => norm(c.message.content)), [norm(a.text), norm(b.text)]);
  const s = await collect(await cc.chat.completions.create({ model: CHAT_ID, messages, max_tokens: 16, temperature: 0.8, seed: 5, n: 2, stream: true }), 'chat');
  assert.deepEqual(s.text, byIndex.map((c) => c.message.content), 'streamed = not streamed');
});

test('chat: logprobs / top_logprobs are consistent with the greedy reply', T, async () => {
  const messages = [{ role: 'user', content: 'Hello!' }];
  const r = await cc.chat.completions.create({ model: CHAT_ID, messages, max_tokens: 10, temperature: 0, logprobs: true, top_logprobs: 3 });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  const bytes = Buffer.from(content.flatMap((c) => c.bytes ?? [...Buffer.from(c.token)]));
  assert.equal(norm(bytes.toString('utf8')), norm(r.choices[0].message.content), 'the tokens\' bytes make the content');
  for (const c of content) {
    assert.ok(c.logprob <= 0);
    assert.equal(c.top_logprobs.length, 3);
    const vals = c.top_logprobs.map((x) => x.logprob);
    assert.deepEqual(vals, [...vals].sort((x, y) => y - x), 'top_logprobs are sorted');
    assert.ok(Math.abs(vals[0] - c.logprob) < 1e-6, 'greedy picks the most likely token');
    assert.equal(c.top_logprobs[0].token, c.token);
  }
  const plain = await cc.chat.completions.create({ model: CHAT_ID, messages, max_tokens: 10, temperature: 0 });
  assert.equal(plain.choices[0].message.content, r.choices[0].message.content);
  assert.ok(!plain.choices[0].logprobs, 'no logprobs unless asked');
});
