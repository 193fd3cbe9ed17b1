// Every PromQL expression in docs/grafana/tern.json names only metrics that a live scrape of
// `tern serve` + a `tern worker` (after one request) exposes; _bucket/_sum/_count map to their
// histogram family. Also: the dashboard is importable (a ${DS_PROMETHEUS} input, every panel
// on it) and covers the panels the operator needs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT, STORIES, STORIES_ID, startServe, startWorker, stopAll, scrape, http, dashboardExprs } from './lib.mjs';

after(() => stopAll());
const dash = JSON.parse(readFileSync(path.join(ROOT, 'docs', 'grafana', 'tern.json'), 'utf8'));

const KEYWORDS = new Set([
  // aggregations and their modifiers
  'sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile',
  'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset',
  // functions
  'abs', 'absent', 'absent_over_time', 'ceil', 'changes', 'clamp', 'clamp_max', 'clamp_min', 'day_of_month', 'day_of_week',
  'days_in_month', 'delta', 'deriv', 'exp', 'floor', 'histogram_quantile', 'histogram_count', 'histogram_sum', 'holt_winters',
  'hour', 'idelta', 'increase', 'irate', 'label_join', 'label_replace', 'ln', 'log2', 'log10', 'minute', 'month',
  'predict_linear', 'rate', 'resets', 'round', 'scalar', 'sgn', 'sort', 'sort_desc', 'sqrt', 'time', 'timestamp', 'vector',
  'year', 'avg_over_time', 'min_over_time', 'max_over_time', 'sum_over_time', 'count_over_time', 'quantile_over_time',
  'stddev_over_time', 'stdvar_over_time', 'last_over_time', 'present_over_time', 'inf', 'nan',
]);

// Metric names in a PromQL expression: drop strings, label matchers, ranges, grouping clauses and
// Grafana variables; what is left that is an identifier and no keyword or function is a metric.
function metricNames(expr) {
  let e = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\$\{[^}]*\}|\$[A-Za-z_]\w*/g, '1m')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '');
  e = e.replace(/\b\d+(\.\d+)?(e[+-]?\d+)?[smhdwy]*\b/gi, ' ');
  const names = new Set();
  for (const m of e.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const id = m[0];
    const after = e.slice(m.index + id.length).trimStart();
    if (KEYWORDS.has(id.toLowerCase())) continue;
    if (after.startsWith('(')) throw new Error(`unknown function ${id} in ${expr}`);
    names.add(id);
  }
  return [...names];
}

test('metric names are parsed out of PromQL', () => {
  assert.deepEqual(metricNames('histogram_quantile(0.99, sum by (le) (rate(tern_x_seconds_bucket{endpoint=~"/v1.*"}[$__rate_interval])))'), ['tern_x_seconds_bucket']);
  assert.deepEqual(metricNames('sum(rate(a_total[5m])) / ignoring(code) sum(b_total) > 0.5'), ['a_total', 'b_total']);
  assert.deepEqual(metricNames('tern_kv_cache_usage_ratio'), ['tern_kv_cache_usage_ratio']);
});

test('the dashboard is importable: a ${DS_PROMETHEUS} input used by every panel and target', () => {
  assert.ok((dash.__inputs ?? []).some((i) => i.name === 'DS_PROMETHEUS' && i.type === 'datasource' && i.pluginId === 'prometheus'));
  assert.equal(typeof dash.title, 'string');
  assert.ok(Number.isInteger(dash.schemaVersion));
  const panels = [];
  const walk = (ps) => { for (const p of ps ?? []) { panels.push(p); walk(p.panels); } };
  walk(dash.panels);
  const ids = panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  for (const p of panels.filter((x) => x.type !== 'row')) {
    assert.equal(p.datasource?.uid, '${DS_PROMETHEUS}', `panel "${p.title}" uses the input datasource`);
    assert.ok(p.targets?.length, `panel "${p.title}" has queries`);
    for (const t of p.targets) assert.ok(typeof t.expr === 'string' && t.expr.length > 0);
  }
});

test('every dashboard metric is in a live scrape of tern serve + a worker', { timeout: 120000 }, async () => {
  const w = await startWorker(['--no-calibrate', '--metrics', '127.0.0.1:0']);
  const srv = await startServe(STORIES, ['--workers', w.address]);
  const r = await http('POST', `${srv.base}/completions`, { body: { model: STORIES_ID, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 } });
  assert.equal(r.status, 200, r.text);
  const [a, b] = await Promise.all([scrape(`${srv.url}/metrics`), scrape(w.metricsUrl)]);
  const present = new Set([...a.samples, ...b.samples].map((s) => s.name));
  const types = new Map([...a.types, ...b.types]);
  const used = new Set();
  for (const { panel, expr } of dashboardExprs(dash)) {
    for (const name of metricNames(expr)) {
      used.add(name);
      const family = name.replace(/_(bucket|sum|count)$/, '');
      assert.ok(present.has(name), `panel "${panel}": ${name} is in no scrape (${expr})`);
      if (family !== name && types.has(family)) assert.equal(types.get(family), 'histogram', `${name}: ${family} is a histogram`);
    }
  }
  // The panels the brief asks for, by the series they need.
  for (const need of [
    'tern_http_requests_total', 'tern_request_time_to_first_token_seconds_bucket', 'tern_request_time_per_output_token_seconds_bucket',
    'tern_request_generation_tokens_total', 'tern_requests_running', 'tern_requests_waiting', 'tern_kv_cache_usage_ratio',
    'tern_stage_tokens_total', 'tern_stage_forward_seconds_bucket', 'tern_worker_binding_ok', 'tern_worker_bandwidth_bytes_per_second',
  ]) assert.ok(used.has(need), `the dashboard uses ${need}`);
});
