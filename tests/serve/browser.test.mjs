// The chat page (GET /) in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core): a wrong API key shows the server's error, an answer streams in (the text
// grows over time), Stop cancels it (the text stops growing, the server counts a cancelled
// request), and the next turn sends the whole conversation. Skipped where chromium is missing.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { CHAT_ID, chatModel, startServe, stopAll, parseMetrics, metricSum, poll, sleep } from './lib.mjs';

const CHROMIUM = process.env.CHROMIUM || ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((f) => existsSync(f));
const KEY = 'browser-test-key';
let browser;
after(async () => {
  if (browser) await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 10000).unref())]);  // bounded, and no timer left behind
  await stopAll();
});

test('the chat page streams, stops, and keeps the conversation', { timeout: 180000 }, async (t) => {
  if (!CHROMIUM) { t.skip('no chromium (apt-get install chromium)'); return; }
  const srv = await startServe(await chatModel(), ['--parallel', '2', '--alias', CHAT_ID, '--api-key', KEY]);
  browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true, timeout: 60000,
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],  // Chromium refuses root without it
  });
  const page = await browser.newPage();
  const requests = []; const chatBodies = [];
  page.on('request', (r) => {
    requests.push(r.url());
    if (r.url().endsWith('/v1/chat/completions')) chatBodies.push(JSON.parse(r.postData()));
  });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${srv.url}/`, { timeout: 30000 });
  for (const sel of ['#prompt', '#send', '#stop', '#system', '#temperature', '#max-tokens', '#api-key']) {
    assert.equal(await page.locator(sel).count(), 1, `the page has ${sel}`);
  }
  const lastAnswer = () => page.evaluate(() => { const a = document.querySelectorAll('.assistant'); return a.length ? a[a.length - 1].textContent : null; });

  // A wrong key: the server's 401 is shown.
  await page.fill('#api-key', 'wrong-key');
  await page.fill('#prompt', 'Hello');
  await page.click('#send');
  await page.locator('.error').first().waitFor({ timeout: 15000 });
  assert.match(await page.locator('.error').first().textContent(), /401/);

  // The right key; a long answer streams in.
  await page.fill('#api-key', KEY);
  await page.fill('#system', 'You are a helpful assistant.');
  await page.fill('#temperature', '0');
  await page.fill('#max-tokens', '400');
  await page.fill('#prompt', 'Tell me a long story.');
  await page.click('#send');
  const lengths = [];
  const grew = await poll(async () => {
    const s = await lastAnswer();
    const n = s === null ? 0 : s.length;
    if (n > 0 && n !== lengths[lengths.length - 1]) lengths.push(n);
    return lengths.length >= 4;
  }, 30000, 50);
  assert.ok(grew, `the answer grew over time: lengths seen ${lengths}`);
  assert.deepEqual(lengths, [...lengths].sort((a, b) => a - b), 'it only grows');
  assert.equal(await page.isDisabled('#stop'), false, 'Stop is enabled while streaming');

  // Stop: the text stops growing and the page is ready for the next turn.
  await page.click('#stop');
  await sleep(300);
  const stopped = (await lastAnswer()).length;
  await sleep(1500);
  assert.equal((await lastAnswer()).length, stopped, 'no text after Stop');
  assert.equal(await page.isDisabled('#send'), false);
  assert.equal(await page.isDisabled('#stop'), true);
  const cancelled = await poll(async () => {
    const v = metricSum(await scrapeWithKey(srv.url), 'tern_requests_finished_total', { reason: 'cancelled' }) ?? 0;
    return v >= 1 ? v : 0;
  }, 5000, 200);
  assert.ok(cancelled >= 1, 'tern_requests_finished_total{reason="cancelled"} >= 1 after Stop');
  assert.equal(metricSum(await scrapeWithKey(srv.url), 'tern_requests_running') ?? 0, 0);

  // The next turn carries the conversation: system, user, (stopped) assistant, user.
  await page.fill('#max-tokens', '8');
  await page.fill('#prompt', 'And then?');
  await page.click('#send');
  await poll(async () => (await page.locator('.stats').count()) >= 2, 30000, 100);
  const last = chatBodies[chatBodies.length - 1];
  assert.deepEqual(last.messages.map((m) => m.role), ['system', 'user', 'assistant', 'user']);
  assert.equal(last.messages[2].content.length, stopped, 'the stopped answer is part of the conversation');
  assert.equal(last.stream, true);
  assert.equal(last.temperature, 0);
  assert.equal(last.max_tokens, 8);
  assert.ok((await lastAnswer()).length > 0, 'the second answer arrived');

  assert.deepEqual(pageErrors, [], 'no script errors on the page');
  const foreign = requests.filter((u) => !u.startsWith(`${srv.url}/`) && !u.startsWith('data:'));
  assert.deepEqual(foreign, [], 'the page loads nothing from elsewhere');
});

async function scrapeWithKey(url) {
  const text = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${KEY}` } }).then((r) => r.text());
  return parseMetrics(text);
}
