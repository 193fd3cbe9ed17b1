// Shared helpers of the `tern serve` tests: start and stop real processes (tern serve, tern
// worker, prometheus), run the real `tern run` for expected outputs, speak HTTP and SSE over
// loopback, read Prometheus text. Every wait is bounded; every process a test starts is tracked
// and killed by stopAll() (each test file calls it in after()) and, as a last resort, on exit.
import { spawn, execFile } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, readFileSync, mkdtempSync, statSync, rmSync } from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '..', '..');
export const TERN = process.env.TERN_EXE || path.join(ROOT, 'build', 'tools', 'tern', 'tern');
export const DATA = process.env.TERN_TEST_DATA || path.join(ROOT, 'tests', 'data');
export const TMP = process.env.TMPDIR || os.tmpdir();
export const STORIES = path.join(DATA, 'stories260K', 'stories260K.gguf');
export const STORIES_ID = 'stories260K';

mkdirSync(TMP, { recursive: true });
if (!existsSync(TERN)) throw new Error(`TERN_EXE ${TERN} does not exist (build it: ninja -C build tools/tern/tern)`);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A fresh scratch directory under TMPDIR, removed by stopAll().
const scratchDirs = [];
export function scratch(prefix) {
  const d = mkdtempSync(path.join(TMP, `tern-serve-${prefix}-`));
  scratchDirs.push(d);
  return d;
}

// ---- processes -------------------------------------------------------------------------------
const procs = new Set();
process.on('exit', () => {
  for (const p of procs) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

// Spawns a tracked process; its stdout+stderr are kept (last 256 KiB) for diagnostics and for
// waitFor(). Never inherits stdin.
export function startProcess(exe, args, { name = path.basename(exe), env } = {}) {
  const child = spawn(exe, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
  const p = {
    name, child, pid: child.pid, out: '', exited: false, code: null, signal: null, waiters: new Set(),
  };
  const onData = (d) => {
    p.out += d.toString();
    if (p.out.length > 262144) p.out = p.out.slice(-262144);
    for (const w of p.waiters) w();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  p.exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      p.exited = true; p.code = code; p.signal = signal;
      procs.delete(child);
      for (const w of p.waiters) w();
      resolve();
    });
  });
  child.on('error', (e) => { p.out += `\n[spawn error: ${e.message}]\n`; });
  procs.add(child);
  p.log = () => `--- ${name} (pid ${p.pid}${p.exited ? `, exited ${p.code ?? p.signal}` : ''}) output:\n${p.out}`;
  p.stop = (ms) => stopProcess(p, ms);
  return p;
}

// Resolves with the first match of `re` in the process's output; rejects when the process exits
// first or after `ms`.
export function waitFor(p, re, ms, what = String(re)) {
  return new Promise((resolve, reject) => {
    const check = () => {
      const m = p.out.match(re);
      if (m) { done(); resolve(m); return; }
      if (p.exited) { done(); reject(new Error(`${p.name} exited before "${what}"\n${p.log()}`)); }
    };
    const timer = setTimeout(() => { done(); reject(new Error(`no "${what}" from ${p.name} within ${ms} ms\n${p.log()}`)); }, ms);
    const done = () => { clearTimeout(timer); p.waiters.delete(check); };
    p.waiters.add(check);
    check();
  });
}

// SIGTERM, then SIGKILL after `ms`; resolves once the process is gone.
export async function stopProcess(p, ms = 5000) {
  if (p.exited) return;
  try { p.child.kill('SIGTERM'); } catch { /* gone */ }
  const t = setTimeout(() => { try { p.child.kill('SIGKILL'); } catch { /* gone */ } }, ms);
  await p.exitPromise;
  clearTimeout(t);
}

export async function stopAll(ms = 5000) {
  const all = [...procs];
  await Promise.all(all.map((child) => new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) { resolve(); return; }
    child.once('exit', resolve);
    try { child.kill('SIGTERM'); } catch { resolve(); }
    setTimeout(() => { try { child.kill('SIGKILL'); } catch { /* gone */ } }, ms).unref();
  })));
  for (const d of scratchDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

// Resident memory of a process in bytes (VmRSS of /proc/PID/status).
export function rssBytes(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)\s+kB/m);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

export function which(name) {
  for (const dir of (process.env.PATH || '/usr/bin:/bin').split(':')) {
    const f = path.join(dir, name);
    try { if (statSync(f).isFile()) return f; } catch { /* not here */ }
  }
  return null;
}

// A free loopback port (bind 0, read it, close). Only for programs that cannot take port 0.
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

// ---- tern serve / tern worker ------------------------------------------------------------------
// Starts `tern serve -m MODEL --host 127.0.0.1 --port 0 ...args`, waits for the listening line and
// (unless ready: false) for the ready line. Returns the process with .url (http://HOST:PORT) and
// .base (url + '/v1').
export async function startServe(model, args = [], { ready = true, name = 'tern serve', timeoutMs = 120000 } = {}) {
  const p = startProcess(TERN, ['serve', '-m', model, '--host', '127.0.0.1', '--port', '0', ...args], { name });
  const m = await waitFor(p, /tern serve listening on (http:\/\/[^\s]+)/, timeoutMs, 'tern serve listening on');
  p.url = m[1].replace(/\/+$/, '');
  p.base = `${p.url}/v1`;
  if (ready) await waitFor(p, /tern serve ready/, timeoutMs, 'tern serve ready');
  return p;
}

// Starts `tern worker --listen 127.0.0.1:0 ...args`; returns it with .address (HOST:PORT) and,
// when --metrics was given, .metricsUrl.
export async function startWorker(args = [], { name = 'tern worker', timeoutMs = 120000 } = {}) {
  const p = startProcess(TERN, ['worker', '--listen', '127.0.0.1:0', ...args], { name });
  const m = await waitFor(p, /tern worker listening on (\S+)/, timeoutMs, 'tern worker listening on');
  p.address = m[1];
  if (args.includes('--metrics')) {
    const mm = await waitFor(p, /metrics at (http:\/\/\S+\/metrics)/, 5000, 'tern worker: metrics at');
    p.metricsUrl = mm[1];
  }
  return p;
}

function execTern(args, { timeoutMs = 180000, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(TERN, args, { timeout: timeoutMs, maxBuffer: 64 << 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        procs.delete(child);
        if (err) { err.message += `\ntern ${args.join(' ')}\n${stderr}`; reject(err); return; }
        resolve({ stdout, stderr });
      });
    procs.add(child);
    if (input !== undefined) child.stdin.end(input);
  });
}

// The real `tern run`: returns {stdout, stderr, text (the completion: what follows the prompt),
// promptTokens, genTokens, nVocab}. temp 0 is greedy; seed only matters when temp > 0.
export async function ternRun({ model = STORIES, prompt, n, temp = 0, seed, extra = [] }) {
  const args = ['run', '-m', model, '-p', prompt, '-n', String(n), '--temp', String(temp)];
  if (seed !== undefined) args.push('--seed', String(seed));
  args.push(...extra);
  const { stdout, stderr } = await execTern(args);
  if (!stdout.endsWith('\n')) throw new Error(`tern run output does not end with a newline: ${JSON.stringify(stdout)}`);
  const all = stdout.slice(0, -1);
  if (!all.startsWith(prompt)) throw new Error(`tern run output does not start with the prompt: ${JSON.stringify(all)}`);
  const st = stderr.match(/prompt: (\d+) tokens.*generation: (\d+) tokens/);
  const voc = stderr.match(/vocab (\d+)/);
  return {
    stdout, stderr, text: all.slice(prompt.length),
    promptTokens: st ? Number(st[1]) : undefined, genTokens: st ? Number(st[2]) : undefined,
    nVocab: voc ? Number(voc[1]) : undefined,
  };
}

// `tern run --chat`: one user turn after an optional system prompt; returns {text (the
// assistant's reply), promptTokens, genTokens}.
export async function ternChat({ model, system, user, n, temp = 0, seed }) {
  const args = ['run', '-m', model, '--chat', '-n', String(n), '--temp', String(temp)];
  if (system !== undefined) args.push('-p', system);
  if (seed !== undefined) args.push('--seed', String(seed));
  const { stdout, stderr } = await execTern(args, { input: `${user}\n` });
  if (!stdout.endsWith('\n')) throw new Error(`tern run --chat output does not end with a newline: ${JSON.stringify(stdout)}`);
  const st = stderr.match(/turn 1: prompt: (\d+) tokens.*generation: (\d+) tokens/);
  return { text: stdout.slice(0, -1), promptTokens: st ? Number(st[1]) : undefined, genTokens: st ? Number(st[2]) : undefined, stderr };
}

// Text for comparing outputs of the random-weight chat model: its byte-level tokens can form
// invalid UTF-8, which `tern run` writes raw (decoded here with U+FFFD replacements) and a JSON
// server must replace; how many U+FFFD one bad sequence becomes is not specified, so a run of
// them counts as one. Valid text is compared exactly.
export const norm = (s) => s.replace(/\uFFFD+/g, '\uFFFD');

// A tiny generated bitnet-b1.58 model with the Llama-3 tokenizer and the built-in 2B4T chat
// template (tern gen --layout 2B4T-tiny), made once per TMPDIR and shared by the test files.
export async function chatModel() {
  const file = path.join(TMP, 'tern-serve-2b4t-tiny.gguf');
  if (existsSync(file)) return file;
  const part = `${file}.${process.pid}.part`;
  await execTern(['gen', '--layout', '2B4T-tiny', '-o', part, '--seed', '1']);
  renameSync(part, file);  // atomic: two test files racing both write the same bytes
  return file;
}
export const CHAT_ID = 'tiny-chat';  // the --alias the tests give it

// The official openai client for a server, with no retries (every error must show), as it
// comes: its default fetch (node-fetch) on Node 20 and later. On Node 18 it is given Node's own
// fetch: openai@4's node-fetch shim fails chunked SSE responses on Debian 12's Node 18.20
// ("Premature close", from any server, node:http included), Node's fetch does not.
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
export function openaiClient(server, opts = {}) {
  const fetchOpt = NODE_MAJOR < 20 ? { fetch: globalThis.fetch } : {};
  return new OpenAI({ baseURL: server.base, apiKey: 'unused', maxRetries: 0, timeout: 60000, ...fetchOpt, ...opts });
}

// ---- HTTP ------------------------------------------------------------------------------------
// fetch with a bounded time; returns {status, headers, text, json (or undefined)}.
export async function http(method, url, { body, headers = {}, key, timeoutMs = 60000 } = {}) {
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  let payload = body;
  if (body !== undefined && typeof body !== 'string' && !(body instanceof Uint8Array)) {
    payload = JSON.stringify(body);
    h['content-type'] ??= 'application/json';
  } else if (typeof body === 'string') {
    h['content-type'] ??= 'application/json';
  }
  const res = await fetch(url, { method, headers: h, body: payload, signal: AbortSignal.timeout(timeoutMs) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

// Reads an SSE response body: calls onEvent({data}) for each `data:` event and
// onEvent({comment}) for each `:` comment line; resolves when the stream ends. When `signal`
// aborts, the body is cancelled too: Node 18's fetch (undici 5) ignores an abort while a reader
// holds the body and keeps delivering the whole stream.
export async function readSSE(res, onEvent, { signal } = {}) {
  const reader = res.body.getReader();
  if (signal) {
    const cancel = () => { reader.cancel().catch(() => {}); };
    if (signal.aborted) cancel(); else signal.addEventListener('abort', cancel, { once: true });
  }
  const dec = new TextDecoder();
  let buf = '';
  let data = [];
  const line = (l) => {
    if (l.endsWith('\r')) l = l.slice(0, -1);
    if (l === '') {
      if (data.length) onEvent({ data: data.join('\n') });
      data = [];
    } else if (l.startsWith(':')) {
      onEvent({ comment: l.slice(1).trim() });
    } else if (l.startsWith('data:')) {
      data.push(l.slice(5).replace(/^ /, ''));
    }
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) { line(buf.slice(0, i)); buf = buf.slice(i + 1); }
  }
  if (buf) line(buf);
  line('');
}

// The OpenAI error shape: {"error": {"message", "type", "param", "code"}}.
export function assertErrorShape(assert, r, status) {
  assert.equal(r.status, status, `status ${r.status} (want ${status}): ${r.text}`);
  assert.ok(r.json && typeof r.json.error === 'object' && r.json.error !== null, `not an OpenAI error body: ${r.text}`);
  const e = r.json.error;
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in e, `error has no "${k}": ${r.text}`);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0, 'empty error message');
  assert.equal(typeof e.type, 'string');
  return e;
}

// ---- Prometheus text format --------------------------------------------------------------------
// Returns {samples: [{name, labels, value}], types: Map(family -> type)}.
export function parseMetrics(text) {
  const samples = [];
  const types = new Map();
  for (const raw of text.split('\n')) {
    const l = raw.trim();
    if (!l) continue;
    if (l.startsWith('#')) {
      const m = l.match(/^# TYPE (\S+) (\S+)/);
      if (m) types.set(m[1], m[2]);
      continue;
    }
    const m = l.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const lm of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2];
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return { samples, types };
}

// Sum of the samples of `name` whose labels include `match`.
export function metricSum(parsed, name, match = {}) {
  let sum = 0;
  let found = false;
  for (const s of parsed.samples) {
    if (s.name !== name) continue;
    if (Object.entries(match).every(([k, v]) => s.labels[k] === v)) { sum += s.value; found = true; }
  }
  return found ? sum : undefined;
}

export async function scrape(url) {
  const r = await http('GET', url, { timeoutMs: 10000 });
  if (r.status !== 200) throw new Error(`GET ${url}: ${r.status} ${r.text}`);
  return parseMetrics(r.text);
}

// Polls `fn` (async, returns truthy when satisfied) every `everyMs` until `ms`; returns the last
// value (falsy on timeout).
export async function poll(fn, ms, everyMs = 100) {
  const end = Date.now() + ms;
  let v;
  do {
    v = await fn();
    if (v) return v;
    await sleep(everyMs);
  } while (Date.now() < end);
  return v;
}

// ---- Grafana -------------------------------------------------------------------------------
// The expressions of a Grafana dashboard (panels, nested rows, templating queries aside).
export function dashboardExprs(dash) {
  const out = [];
  const walk = (panels) => {
    for (const p of panels ?? []) {
      for (const t of p.targets ?? []) if (t.expr) out.push({ panel: p.title, expr: t.expr });
      walk(p.panels);
    }
  };
  walk(dash.panels);
  return out;
}

