// Bad requests get OpenAI-shaped errors with the right status, and the server serves on: after
// every case a normal request still gives tern run's greedy text. Plain fetch / node:http, so
// status, headers and body are seen as sent.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import {
  STORIES, STORIES_ID, CHAT_ID, startServe, stopAll, ternRun, chatModel, http, assertErrorShape, scratch, waitFor,
} from './lib.mjs';

const T = { timeout: 120000 };
const run = promisify(execFile);
const KEY = 'sekrit-test-key';
const MAX_BODY = 65536;
let srv; let want;

before(async () => {
  [srv, want] = await Promise.all([
    startServe(STORIES, ['-c', '64', '--api-key', KEY, '--max-body', String(MAX_BODY), '--parallel', '2']),
    ternRun({ prompt: 'Once upon a time', n: 8, temp: 0 }),
  ]);
});
after(() => stopAll());

const post = (p, body, opts = {}) => http('POST', `${srv.url}${p}`, { body, key: KEY, ...opts });
const ok = { model: STORIES_ID, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 };

async function stillServes() {
  const r = await post('/v1/completions', ok);
  assert.equal(r.status, 200, `a normal request after the bad one: ${r.status} ${r.text}`);
  assert.equal(r.json.choices[0].text, want.text);
}

// POST a body from a file with curl, which reads an early answer (413) while it still sends;
// node's http client reports EPIPE instead once the server stops reading.
async function curlPost(url, file, headers = []) {
  const args = ['-s', '-S', '-o', '-', '-w', '\\n%{http_code}', '-X', 'POST', '--data-binary', `@${file}`, '-H', 'content-type: application/json', '-H', `authorization: Bearer ${KEY}`];
  for (const h of headers) args.push('-H', h);
  const { stdout } = await run('curl', [...args, url], { timeout: 30000, maxBuffer: 1 << 20 });
  const i = stdout.lastIndexOf('\n');
  const text = stdout.slice(0, i);
  let json; try { json = JSON.parse(text); } catch { /* */ }
  return { status: Number(stdout.slice(i + 1)), text, json };
}

test('malformed JSON is 400', T, async () => {
  for (const body of ['{"model": ', 'not json at all', '[1, 2', '']) {
    assertErrorShape(assert, await post('/v1/completions', body), 400);
    assertErrorShape(assert, await post('/v1/chat/completions', body), 400);
  }
  await stillServes();
});

test('wrong types are 400 and name the field', T, async () => {
  const cases = [
    ['/v1/completions', { ...ok, max_tokens: 'ten' }, 'max_tokens'],
    ['/v1/completions', { ...ok, temperature: 'hot' }, 'temperature'],
    ['/v1/completions', { ...ok, prompt: { text: 'x' } }, 'prompt'],
    ['/v1/completions', { ...ok, stream: 'yes' }, 'stream'],
    ['/v1/completions', { ...ok, stop: 7 }, 'stop'],
    ['/v1/completions', { ...ok, seed: 'abc' }, 'seed'],
    ['/v1/chat/completions', { model: STORIES_ID, messages: 'hi' }, 'messages'],
    ['/v1/chat/completions', { model: STORIES_ID, messages: [{ role: 'user', content: 5 }] }, 'messages'],
    ['/tokenize', { content: 5 }, 'content'],
    ['/detokenize', { tokens: 'abc' }, 'tokens'],
  ];
  for (const [p, body, field] of cases) {
    const r = await post(p, body);
    const e = assertErrorShape(assert, r, 400);
    assert.ok((e.param ?? '').includes(field) || e.message.includes(field), `${p} ${JSON.stringify(body)}: the error names neither param nor message "${field}": ${r.text}`);
  }
  await stillServes();
});

test('out-of-range values are 400', T, async () => {
  const cases = [
    [{ temperature: -1 }, 'temperature'], [{ top_p: 1.5 }, 'top_p'], [{ n: 0 }, 'n'], [{ max_tokens: -1 }, 'max_tokens'],
    [{ presence_penalty: 5 }, 'presence_penalty'], [{ frequency_penalty: -3 }, 'frequency_penalty'], [{ min_p: 2 }, 'min_p'],
    [{ top_k: -2 }, 'top_k'], [{ prompt: [1, 2, 999999] }, 'prompt'],
  ];
  for (const [extra, field] of cases) {
    const r = await post('/v1/completions', { ...ok, ...extra });
    const e = assertErrorShape(assert, r, 400);
    assert.ok((e.param ?? '').includes(field) || e.message.includes(field), `${JSON.stringify(extra)}: the error names neither param nor message "${field}": ${r.text}`);
  }
  const r = await post('/v1/chat/completions', { model: STORIES_ID, messages: [{ role: 'user', content: 'hi' }], logprobs: true, top_logprobs: 1000 });
  assertErrorShape(assert, r, 400);
  await stillServes();
});

test('a body over --max-body is 413 (Content-Length and chunked)', T, async () => {
  const file = path.join(scratch('body'), 'big.json');
  writeFileSync(file, JSON.stringify({ ...ok, prompt: 'x'.repeat(4 * MAX_BODY) }));
  assertErrorShape(assert, await curlPost(`${srv.url}/v1/completions`, file), 413);
  assertErrorShape(assert, await curlPost(`${srv.url}/v1/completions`, file, ['Transfer-Encoding: chunked']), 413);
  await stillServes();
});

test('a prompt longer than -c is 400, completions and chat', T, async () => {
  const long = 'Once upon a time there was a little girl. '.repeat(20);
  const t = await post('/tokenize', { content: long, add_special: true });
  assert.ok(t.json.tokens.length > 64, `the long prompt is ${t.json.tokens.length} tokens`);
  assertErrorShape(assert, await post('/v1/completions', { ...ok, prompt: long }), 400);
  assertErrorShape(assert, await post('/v1/completions', { ...ok, prompt: t.json.tokens }), 400);
  assertErrorShape(assert, await post('/v1/chat/completions', { model: STORIES_ID, messages: [{ role: 'user', content: long }], max_tokens: 4 }), 400);
  assertErrorShape(assert, await post('/v1/completions', { ...ok, prompt: long, stream: true }), 400);
  await stillServes();
});

test('--api-key: missing or wrong key is 401', T, async () => {
  assertErrorShape(assert, await http('POST', `${srv.url}/v1/completions`, { body: ok }), 401);
  assertErrorShape(assert, await http('POST', `${srv.url}/v1/completions`, { body: ok, key: 'wrong' }), 401);
  assertErrorShape(assert, await http('POST', `${srv.url}/v1/chat/completions`, { body: { model: STORIES_ID, messages: [{ role: 'user', content: 'hi' }] }, key: 'wrong' }), 401);
  assertErrorShape(assert, await http('GET', `${srv.url}/v1/models`, { headers: { authorization: `Basic ${Buffer.from(`x:${KEY}`).toString('base64')}` } }), 401);
  await stillServes();
});

test('unknown model and unknown path are 404', T, async () => {
  assertErrorShape(assert, await post('/v1/completions', { ...ok, model: 'no-such-model' }), 404);
  assertErrorShape(assert, await post('/v1/chat/completions', { model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }), 404);
  assertErrorShape(assert, await http('GET', `${srv.url}/v1/no-such-path`, { key: KEY }), 404);
  assertErrorShape(assert, await http('POST', `${srv.url}/v2/completions`, { body: ok, key: KEY }), 404);
  await stillServes();
});

test('a full queue (--parallel 1 --queue 1) answers 503 with Retry-After, then serves on', { timeout: 180000 }, async () => {
  // The chat model (random weights, 128k vocabulary) is slow enough that one long request holds
  // the only slot while the flood arrives.
  const busy = await startServe(await chatModel(), ['--parallel', '1', '--queue', '1', '--alias', CHAT_ID], { name: 'tern serve (queue)' });
  const body = { model: CHAT_ID, prompt: 'Hello', max_tokens: 200, temperature: 0 };
  const rs = await Promise.all(Array.from({ length: 12 }, () => http('POST', `${busy.url}/v1/completions`, { body, timeoutMs: 120000 })));
  const codes = rs.map((r) => r.status);
  const full = rs.filter((r) => r.status === 503);
  assert.ok(full.length >= 1, `no 503 among ${codes}`);
  assert.ok(rs.filter((r) => r.status === 200).length >= 2, `the running and the queued request succeed: ${codes}`);
  assert.ok(codes.every((c) => c === 200 || c === 503), `only 200 or 503: ${codes}`);
  for (const r of full) {
    assertErrorShape(assert, r, 503);
    const ra = r.headers.get('retry-after');
    assert.match(ra ?? '', /^\d+$/, `Retry-After is a number of seconds: ${ra}`);
  }
  const after503 = await http('POST', `${busy.url}/v1/completions`, { body: { ...body, max_tokens: 4 } });
  assert.equal(after503.status, 200, after503.text);
  await busy.stop();
});

test('/health: 503 (OpenAI-shaped, Retry-After) while loading, then 200 {"status":"ok"}', { timeout: 120000 }, async () => {
  const loading = await startServe(await chatModel(), ['--alias', CHAT_ID], { ready: false, name: 'tern serve (loading)' });
  const early = await http('GET', `${loading.url}/health`);
  if (early.status === 503) {
    assertErrorShape(assert, early, 503);
    assert.match(early.headers.get('retry-after') ?? '', /^\d+$/);
  } else {
    assert.equal(early.status, 200, `while loading: ${early.status} ${early.text}`);  // it loaded that fast
  }
  console.log(`# /health right after listening: ${early.status}`);
  await waitFor(loading, /tern serve ready/, 120000, 'tern serve ready');
  const r = await http('GET', `${loading.url}/health`);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json, { status: 'ok' });
  await loading.stop();
});
