// Clients that go away: a stream aborted mid-way (AbortController) and one aborted during
// prefill (long prompt, abort at once). The server notices: tern_requests_running drops within a
// short time, tern_requests_finished_total{reason="cancelled"} counts each, and streams running
// beside them give exactly their solo `tern run` output. Uses the tiny chat model (random weights,
// 128k vocabulary: slow enough to be caught mid-stream).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { CHAT_ID, chatModel, startServe, stopAll, ternRun, norm, readSSE, scrape, metricSum, poll } from './lib.mjs';

const T = { timeout: 120000 };
let srv; let model;
before(async () => {
  model = await chatModel();
  srv = await startServe(model, ['--parallel', '4', '--alias', CHAT_ID]);
});
after(() => stopAll());

const LONG = 'The quick brown fox jumps over the lazy dog near the river bank. '.repeat(28);
const metrics = async () => {
  const m = await scrape(`${srv.url}/metrics`);
  return { running: metricSum(m, 'tern_requests_running') ?? 0, cancelled: metricSum(m, 'tern_requests_finished_total', { reason: 'cancelled' }) ?? 0 };
};

// Streams a greedy completion; abortAfter = number of text chunks after which to abort
// (0: abort as soon as the response starts or after `earlyMs`, whichever is first); abortWhen(n)
// = abort once it returns true.
async function streamCompletion(prompt, maxTokens, { abortAfter, abortWhen, earlyMs = 30 } = {}) {
  const ac = new AbortController();
  let text = ''; let chunks = 0; let aborted = false;
  const abort = () => { aborted = true; ac.abort(); };
  let early;
  if (abortAfter === 0) early = setTimeout(abort, earlyMs);
  try {
    const res = await fetch(`${srv.base}/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: ac.signal,
      body: JSON.stringify({ model: CHAT_ID, prompt, max_tokens: maxTokens, temperature: 0, stream: true }),
    });
    assert.equal(res.status, 200);
    if (abortAfter === 0) { abort(); return { text, chunks, aborted }; }
    await readSSE(res, (ev) => {
      if (ev.data === undefined || ev.data === '[DONE]') return;
      const j = JSON.parse(ev.data);
      assert.ok(!j.error, `error event: ${ev.data}`);
      for (const c of j.choices) text += c.text ?? '';
      chunks++;
      if (!aborted && ((abortAfter !== undefined && chunks === abortAfter) || (abortWhen && abortWhen(chunks)))) abort();
    }, { signal: ac.signal });
  } catch (e) {
    if (!aborted) throw e;
  } finally {
    clearTimeout(early);
  }
  return { text, chunks, aborted };
}

test('a client aborting mid-stream is cancelled: running drops, cancelled counts it', T, async () => {
  const before = await metrics();
  let during;  // a scrape taken while the stream runs; abort once it is in
  const r = await streamCompletion('Hello', 400, {
    abortWhen: (n) => {
      if (n === 2) metrics().then((x) => { during = x; });
      return n >= 8 && during !== undefined;
    },
  });
  assert.ok(r.aborted && r.chunks >= 8, `aborted after ${r.chunks} chunks`);
  assert.equal(during.running, 1, 'tern_requests_running counts the running stream');
  const t0 = Date.now();
  const m = await poll(async () => { const x = await metrics(); return x.running === 0 && x.cancelled >= before.cancelled + 1 ? x : null; }, 5000);
  assert.ok(m, `within 5 s: running 0 and cancelled ${before.cancelled} + 1 (now ${JSON.stringify(await metrics())})`);
  console.log(`# mid-stream abort noticed in ${Date.now() - t0} ms`);
  assert.equal(m.cancelled, before.cancelled + 1);
});

test('a client aborting during prefill (long prompt) is cancelled', T, async () => {
  const before = await metrics();
  const r = await streamCompletion(LONG, 64, { abortAfter: 0 });
  assert.ok(r.aborted);
  const m = await poll(async () => { const x = await metrics(); return x.running === 0 && x.cancelled >= before.cancelled + 1 ? x : null; }, 5000);
  assert.ok(m, `within 5 s: running 0 and cancelled ${before.cancelled} + 1 (now ${JSON.stringify(await metrics())})`);
  assert.equal(m.cancelled, before.cancelled + 1);
});

test('streams beside aborted ones give their solo outputs', T, async () => {
  const [a, b] = await Promise.all([
    ternRun({ model, prompt: 'Hello', n: 48, temp: 0 }),
    ternRun({ model, prompt: 'The sea', n: 48, temp: 0 }),
  ]);
  const before = await metrics();
  const [ra, rb, rc, rd] = await Promise.all([
    streamCompletion('Hello', 48),
    streamCompletion('The sea', 48),
    streamCompletion('Hello', 400, { abortAfter: 5 }),
    streamCompletion(LONG, 64, { abortAfter: 0, earlyMs: 50 }),
  ]);
  assert.ok(rc.aborted && rd.aborted);
  assert.equal(norm(ra.text), norm(a.text));
  assert.equal(norm(rb.text), norm(b.text));
  const m = await poll(async () => { const x = await metrics(); return x.running === 0 && x.cancelled >= before.cancelled + 2 ? x : null; }, 5000);
  assert.ok(m, `within 5 s: running 0 and cancelled ${before.cancelled} + 2 (now ${JSON.stringify(await metrics())})`);
  assert.equal(m.cancelled, before.cancelled + 2);
  // and the server still answers the same afterwards
  assert.equal(norm((await streamCompletion('Hello', 48)).text), norm(a.text));
});
