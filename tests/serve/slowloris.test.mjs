// Slowloris: raw sockets that trickle a request one byte at a time (and one that sends nothing)
// neither delay other requests nor stay open: the server closes each after --read-timeout.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { STORIES, STORIES_ID, startServe, stopAll, ternRun, http, sleep } from './lib.mjs';

const READ_TIMEOUT = 2;  // seconds
const SOCKETS = 16;
after(() => stopAll());

// Opens a socket that writes `text` one byte every `everyMs` (at most `text.length` bytes) until
// the server closes it; resolves with {closedAfterMs, sent}.
function trickle(port, text, everyMs) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    let sent = 0; let timer;
    const s = net.connect(port, '127.0.0.1');
    const end = () => { clearInterval(timer); resolve({ closedAfterMs: Date.now() - t0, sent }); s.destroy(); };
    s.on('connect', () => {
      if (everyMs > 0) timer = setInterval(() => { if (sent < text.length) s.write(text[sent++]); }, everyMs);
    });
    s.on('data', () => { /* a 408 or similar before closing is fine */ });
    s.on('end', end);
    s.on('close', end);
    s.on('error', end);
    s.setTimeout(30000, () => { resolve({ closedAfterMs: Infinity, sent }); s.destroy(); });
  });
}

test(`trickling sockets do not delay requests and are closed after --read-timeout ${READ_TIMEOUT}`, { timeout: 120000 }, async () => {
  const srv = await startServe(STORIES, ['--read-timeout', String(READ_TIMEOUT)]);
  const port = Number(new URL(srv.url).port);
  const want = await ternRun({ prompt: 'Once upon a time', n: 16, temp: 0 });
  const body = { model: STORIES_ID, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 };
  const timed = async () => {
    const t = Date.now();
    const r = await http('POST', `${srv.base}/completions`, { body, timeoutMs: 20000 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.choices[0].text, want.text);
    return Date.now() - t;
  };
  const baseline = Math.max(...[await timed(), await timed(), await timed()]);

  const req = `POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${JSON.stringify(body).length}\r\n\r\n${JSON.stringify(body)}`;
  const slow = [
    ...Array.from({ length: SOCKETS }, () => trickle(port, req, 100)),  // 10 bytes/s: the headers alone take ~10 s
    trickle(port, req, 0),  // connects, sends nothing
  ];
  await sleep(300);
  const during = [];
  for (let i = 0; i < 5; i++) during.push(await timed());
  const limit = Math.max(2000, 5 * baseline);
  assert.ok(during.every((ms) => ms < limit), `requests beside ${SOCKETS} trickling sockets took ${during} ms (alone: ${baseline} ms; limit ${limit} ms)`);

  const closed = await Promise.all(slow);
  for (const c of closed) {
    assert.ok(c.closedAfterMs >= READ_TIMEOUT * 1000 - 500, `closed after ${c.closedAfterMs} ms, before the read timeout`);
    assert.ok(c.closedAfterMs <= READ_TIMEOUT * 1000 + 3000, `closed after ${c.closedAfterMs} ms (${c.sent} bytes sent): not within --read-timeout ${READ_TIMEOUT} s + 3 s`);
  }
  assert.ok(closed.some((c) => c.sent > 0 && c.sent < req.length), 'the trickled request was still incomplete when closed');
  await timed();
});
