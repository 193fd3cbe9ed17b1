// `tern serve --workers` over two `tern worker` processes gives the tokens of the embedded
// default (and of `tern run`): greedy and seeded, completions and streaming, several at once.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { STORIES, STORIES_ID, startServe, startWorker, stopAll, ternRun, openaiClient } from './lib.mjs';

after(() => stopAll());

const CASES = [
  { prompt: 'Once upon a time', n: 32, temp: 0 },
  { prompt: 'The little dog', n: 32, temp: 0 },
  { prompt: 'Lily wanted to', n: 32, temp: 0.8, seed: 11 },
];

async function outputs(client) {
  // All at once, so the pipeline has several sequences in flight; then one streamed.
  const texts = await Promise.all(CASES.map(async (c) => (await client.completions.create({
    model: STORIES_ID, prompt: c.prompt, max_tokens: c.n, temperature: c.temp, ...(c.seed !== undefined ? { seed: c.seed } : {}),
  })).choices[0].text));
  let streamed = '';
  for await (const ch of await client.completions.create({ model: STORIES_ID, prompt: CASES[0].prompt, max_tokens: CASES[0].n, temperature: 0, stream: true })) {
    for (const x of ch.choices) streamed += x.text ?? '';
  }
  return { texts, streamed };
}

test('two tern workers give the embedded default\'s tokens', { timeout: 240000 }, async () => {
  const [w1, w2] = await Promise.all([startWorker(['--no-calibrate'], { name: 'worker 1' }), startWorker(['--no-calibrate'], { name: 'worker 2' })]);
  const [embedded, cluster] = await Promise.all([
    startServe(STORIES, ['--parallel', '4'], { name: 'tern serve (embedded)' }),
    startServe(STORIES, ['--parallel', '4', '--workers', `${w1.address},${w2.address}`], { name: 'tern serve (workers)' }),
  ]);
  const want = [];
  for (const c of CASES) want.push((await ternRun(c)).text);
  const mk = (s) => openaiClient(s);
  const e = await outputs(mk(embedded));
  const w = await outputs(mk(cluster));
  assert.deepEqual(e.texts, want, 'embedded default = tern run');
  assert.deepEqual(w.texts, want, '--workers = tern run');
  assert.equal(e.streamed, want[0]);
  assert.equal(w.streamed, want[0]);
  // tern serve's /metrics carries the coordinator's series for the cluster too.
  const m = await fetch(`${cluster.url}/metrics`).then((r) => r.text());
  assert.match(m, /^tern_coordinator_tokens_generated_total\S* [1-9]/m);
});
