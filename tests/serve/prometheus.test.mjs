// A real Prometheus server (Debian's `prometheus`, on loopback, generated config, temporary
// storage, 1 s scrapes) scrapes `tern serve` and a `tern worker`; its HTTP API returns tern
// series, and every PromQL expression of docs/grafana/tern.json evaluates there without error.
// Skipped where the prometheus binary is missing.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, readFileSync } from 'node:fs';
import path from 'node:path';
import {
  ROOT, STORIES, STORIES_ID, startServe, startWorker, startProcess, waitFor, stopAll, scratch, freePort, which, http, poll, dashboardExprs,
} from './lib.mjs';

const PROMETHEUS = process.env.PROMETHEUS || which('prometheus');
after(() => stopAll());

test('prometheus scrapes tern serve and a worker; the dashboard\'s queries evaluate', { timeout: 180000 }, async (t) => {
  if (!PROMETHEUS) { t.skip('no prometheus binary (apt-get install prometheus)'); return; }
  const dir = scratch('prom');
  const w = await startWorker(['--no-calibrate', '--metrics', '127.0.0.1:0']);
  const srv = await startServe(STORIES, ['--workers', w.address]);
  const serveTarget = new URL(srv.url).host;
  const workerTarget = new URL(w.metricsUrl).host;
  const promPort = await freePort();
  const cfg = path.join(dir, 'prometheus.yml');
  writeFileSync(cfg, [
    'global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}',
    'scrape_configs:',
    `  - job_name: tern-serve`,
    `    static_configs: [{targets: ['${serveTarget}']}]`,
    `  - job_name: tern-worker`,
    `    static_configs: [{targets: ['${workerTarget}']}]`,
    '',
  ].join('\n'));
  const prom = startProcess(PROMETHEUS, [
    `--config.file=${cfg}`, `--storage.tsdb.path=${path.join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${promPort}`, '--storage.tsdb.retention.time=1h',
  ], { name: 'prometheus' });
  await waitFor(prom, /Server is ready to receive web requests/, 60000, 'prometheus ready');
  const api = `http://127.0.0.1:${promPort}/api/v1`;
  const query = async (q) => {
    const r = await http('GET', `${api}/query?query=${encodeURIComponent(q)}`, { timeoutMs: 10000 });
    assert.equal(r.status, 200, `${q}: ${r.text}`);
    assert.equal(r.json.status, 'success', `${q}: ${r.text}`);
    return r.json.data.result;
  };

  // One request, so the token counters move.
  const r = await http('POST', `${srv.base}/completions`, { body: { model: STORIES_ID, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 } });
  assert.equal(r.status, 200, r.text);

  const up = await poll(async () => {
    const res = await query('up');
    return res.length === 2 && res.every((x) => x.value[1] === '1') ? res : null;
  }, 30000, 500);
  assert.ok(up, `both targets up within 30 s: ${JSON.stringify(await query('up'))}`);

  const build = await poll(async () => { const res = await query('tern_build_info'); return res.length >= 2 ? res : null; }, 20000, 500);
  assert.ok(build, 'tern_build_info from tern serve and the worker');
  assert.deepEqual(new Set(build.map((x) => x.metric.instance)), new Set([serveTarget, workerTarget]));

  const stage = await poll(async () => {
    const res = await query('sum(tern_stage_tokens_total)');
    return res.length === 1 && Number(res[0].value[1]) > 0 ? res : null;
  }, 20000, 500);
  assert.ok(stage, 'tern_stage_tokens_total > 0 after a request');
  const reqs = await poll(async () => {
    const res = await query('sum(tern_http_requests_total{endpoint=~".*completions.*"})');
    return res.length === 1 && Number(res[0].value[1]) >= 1 ? res : null;
  }, 20000, 500);
  assert.ok(reqs, 'tern_http_requests_total counts the completion');
  const gen = await query('sum(tern_request_generation_tokens_total)');
  assert.ok(gen.length === 1 && Number(gen[0].value[1]) >= 1, 'tern_request_generation_tokens_total');

  // Every dashboard expression parses and evaluates (Grafana's interval variables filled in).
  const dash = JSON.parse(readFileSync(path.join(ROOT, 'docs', 'grafana', 'tern.json'), 'utf8'));
  const exprs = dashboardExprs(dash);
  assert.ok(exprs.length >= 8, `${exprs.length} expressions in the dashboard`);
  for (const { panel, expr } of exprs) {
    const q = expr.replaceAll('$__rate_interval', '1m').replaceAll('$__interval', '15s').replaceAll('$__range', '5m')
      .replace(/\$\{?(instance|job|worker|endpoint)\}?/g, '.*');
    const res = await http('GET', `${api}/query?query=${encodeURIComponent(q)}`, { timeoutMs: 10000 });
    assert.equal(res.json?.status, 'success', `panel "${panel}": ${q}: ${res.text}`);
  }
  await prom.stop();
});
