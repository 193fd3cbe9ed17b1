// 32 concurrent streaming clients (the openai client) for SERVE_LOAD_SECONDS (60) seconds: no
// errors, every greedy output equal to its solo `tern run`, and the server's resident memory flat
// after warm-up. Bound asserted: the median VmRSS of the last third of the samples is at most
// 1.10 x the median of the first third + 16 MiB (samples once a second after a 5 s warm-up).
// Meanwhile /health is polled every 200 ms: it must answer 200 each time within 1 s (busy streams
// never starve it).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { STORIES, STORIES_ID, startServe, stopAll, ternRun, rssBytes, sleep, scrape, metricSum, openaiClient } from './lib.mjs';

const SECONDS = Number(process.env.SERVE_LOAD_SECONDS || 60);
const CLIENTS = 32;
const MAX_REQUESTS_PER_CLIENT = 2000;  // bound on the loop besides the deadline
const PROMPTS = [
  'Once upon a time', 'The little dog', 'Lily wanted to', 'One day, a boy named Tom',
  'The sun was', 'There was a big tree', 'Mom said', 'The cat and the bird',
];
const MiB = 1 << 20;
after(() => stopAll());

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

test(`${CLIENTS} streaming clients for ${SECONDS} s: no errors, solo outputs, flat memory`, { timeout: (SECONDS + 180) * 1000 }, async () => {
  const srv = await startServe(STORIES, ['--parallel', '8', '--queue', String(CLIENTS * 2)]);
  const lengths = [16, 24, 32];
  const solo = new Map();
  const jobs = PROMPTS.flatMap((p) => lengths.map((n) => [p, n]));
  for (let j = 0; j < jobs.length; j += 2) {  // two tern runs at a time (2-core machines)
    await Promise.all(jobs.slice(j, j + 2).map(async ([p, n]) => solo.set(`${p}|${n}`, (await ternRun({ prompt: p, n, temp: 0 })).text)));
  }
  const client = openaiClient(srv);

  const rss = [];
  const t0 = Date.now();
  const deadline = t0 + SECONDS * 1000;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      if (Date.now() - t0 >= 5000) rss.push(rssBytes(srv.pid));
      await sleep(1000);
    }
  })();

  const health = [];  // [status, ms] per poll
  const healthPoller = (async () => {
    while (sampling) {
      const h0 = Date.now();
      let status = 0;
      try {
        status = (await fetch(`${srv.url}/health`, { signal: AbortSignal.timeout(5000) })).status;
      } catch { status = -1; }
      health.push([status, Date.now() - h0]);
      await sleep(200);
    }
  })();

  const errors = []; const mismatches = []; let done = 0; let tokens = 0;
  const clients = Array.from({ length: CLIENTS }, async (_, c) => {
    for (let i = 0; i < MAX_REQUESTS_PER_CLIENT && Date.now() < deadline; i++) {
      const prompt = PROMPTS[(c + i) % PROMPTS.length];
      const n = lengths[(c * 7 + i) % lengths.length];
      try {
        const stream = await client.completions.create({
          model: STORIES_ID, prompt, max_tokens: n, temperature: 0, stream: true, stream_options: { include_usage: true },
        });
        let text = '';
        for await (const ch of stream) {
          for (const x of ch.choices) text += x.text ?? '';
          if (ch.usage) tokens += ch.usage.completion_tokens;
        }
        if (text !== solo.get(`${prompt}|${n}`)) mismatches.push({ prompt, n, got: text, want: solo.get(`${prompt}|${n}`) });
        done++;
      } catch (e) {
        errors.push(`${e.status ?? ''} ${e.message}`);
        if (errors.length > 20) return;
      }
    }
  });
  await Promise.all(clients);
  sampling = false;
  await sampler;
  await healthPoller;
  const secs = (Date.now() - t0) / 1000;
  console.log(`# ${done} requests, ${tokens} tokens in ${secs.toFixed(1)} s; RSS MiB: ${rss.map((x) => (x / MiB).toFixed(1)).join(' ')}`);

  assert.deepEqual(errors, [], `${errors.length} errors`);
  assert.deepEqual(mismatches.slice(0, 3), [], `${mismatches.length} of ${done} outputs differ from their solo run`);
  assert.ok(done >= CLIENTS, `only ${done} requests finished`);

  assert.ok(health.length >= SECONDS, `only ${health.length} /health polls`);
  const badHealth = health.filter(([st]) => st !== 200);
  assert.deepEqual(badHealth.slice(0, 3), [], `${badHealth.length} of ${health.length} /health polls did not answer 200`);
  const slowest = Math.max(...health.map(([, ms]) => ms));
  console.log(`# /health: ${health.length} polls under load, slowest ${slowest} ms`);
  assert.ok(slowest < 1000, `/health took ${slowest} ms under load (bound 1000 ms)`);

  assert.ok(rss.length >= 6, `only ${rss.length} memory samples`);
  const third = Math.floor(rss.length / 3);
  const first = median(rss.slice(0, third)); const last = median(rss.slice(-third));
  assert.ok(last <= first * 1.10 + 16 * MiB,
    `resident memory grew from ${(first / MiB).toFixed(1)} MiB to ${(last / MiB).toFixed(1)} MiB (bound: x1.10 + 16 MiB)`);

  const m = await scrape(`${srv.url}/metrics`);
  assert.equal(metricSum(m, 'tern_requests_running'), 0, 'nothing running once every client is done');
  assert.equal(metricSum(m, 'tern_requests_waiting'), 0, 'nothing waiting once every client is done');
  assert.equal(metricSum(m, 'tern_requests_finished_total', { reason: 'error' }) ?? 0, 0, 'no request finished in error');
  assert.ok((metricSum(m, 'tern_request_generation_tokens_total') ?? 0) >= tokens, 'generation tokens counted');
});
