// The snippet when the collector is unwell, against a stub collector (no ClickHouse needed):
// it must never throw into the page or stop the page's own JS, must back off on 503/429
// (honouring Retry-After) and on refused connections, must resend the same events afterwards,
// must bound its queue, and must send nothing when told to respect Do-Not-Track / GPC.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  startServer, sendHtml, launchBrowser, watch, snippetLoaded, waitFor, sleep, cleanup, SNIPPET_FILE,
} from './lib/harness.mjs';
import { shopPage } from './lib/pages.mjs';

let browser, pages;
let stubOrigin; // the stub collector of the running test

before(async () => {
  pages = await startServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const attrs = url.searchParams.get('attrs') || '';
    if (url.pathname.startsWith('/app')) return sendHtml(res, shopPage({ snippetSrc: `${stubOrigin}/v1/snippet.js`, attrs }));
    res.writeHead(404).end();
  });
  browser = await launchBrowser();
}, { timeout: 60000 });

after(cleanup, { timeout: 60000 });

/**
 * A stub collector: serves the built snippet and answers POST /v1/events with the next answer
 * from `answers` (the last one repeats): {status, retryAfter}. CORS like the real collector,
 * exposing Retry-After so the snippet can read it.
 */
async function stubCollector(answers, port = 0) {
  const snippet = readFileSync(SNIPPET_FILE);
  let n = 0;
  const stub = await startServer((req, res, body) => {
    const cors = {
      'Access-Control-Allow-Origin': req.headers.origin || '*',
      'Access-Control-Expose-Headers': 'Retry-After',
    };
    if (req.method === 'GET' && req.url === '/v1/snippet.js') {
      res.writeHead(200, { 'Content-Type': 'application/javascript' }).end(snippet);
    } else if (req.method === 'POST' && req.url === '/v1/events') {
      const a = answers[Math.min(n++, answers.length - 1)];
      const headers = { ...cors, 'Content-Type': 'application/json' };
      if (a.retryAfter) headers['Retry-After'] = String(a.retryAfter);
      const accepted = a.status === 200 ? JSON.parse(body).events.length : 0;
      res.writeHead(a.status, headers).end(JSON.stringify({ accepted, rejected: [] }));
    } else {
      res.writeHead(404, cors).end();
    }
  }, port);
  stubOrigin = stub.origin;
  const posts = () => stub.requests.filter((r) => r.method === 'POST').map((r) => ({ ...r, json: JSON.parse(r.body) }));
  return { ...stub, posts };
}

// Console errors a browser logs by itself for failed requests; anything else is the snippet's.
const notNetwork = (msgs) => msgs.filter((m) => !/^Failed to load resource/.test(m.text));

async function pageHealthy(page, seen) {
  await page.click('#buy');
  const count = Number(await page.textContent('#count'));
  assert.ok(count >= 1, "the page's own click handler still runs");
  await page.click('#next'); // the page's own pushState, through the snippet's wrapper
  assert.equal(new URL(page.url()).pathname, '/app/step2');
  const state = await page.evaluate(() => ({ errors: window.__errors, rejections: window.__rejections }));
  assert.deepEqual(state, { errors: 0, rejections: 0 }, 'no error or unhandled rejection in the page');
  assert.deepEqual(seen.errors, [], 'no uncaught exception');
  assert.deepEqual(notNetwork(seen.console), [], 'no console output besides the browser\'s own network errors');
}

test('503 and 429 with Retry-After: the snippet waits as told, then resends the same batch', { timeout: 60000 }, async () => {
  const stub = await stubCollector([
    { status: 503, retryAfter: 3 },
    { status: 429, retryAfter: 1 },
    { status: 200 },
  ]);
  const page = await browser.newPage();
  const seen = watch(page);
  await page.goto(`${pages.origin}/app`);
  await snippetLoaded(page);
  await page.click('#buy');
  await page.click('#dead');

  const posts = await waitFor('three POSTs (503, 429, 200)', () => stub.posts().length >= 3 && stub.posts(), { timeout: 20000 });
  const [p1, p2, p3] = posts;
  assert.ok(p2.at - p1.at >= 2900 && p2.at - p1.at < 6000, `waited Retry-After: 3 s (${p2.at - p1.at} ms)`);
  assert.ok(p3.at - p2.at >= 900 && p3.at - p2.at < 4000, `waited Retry-After: 1 s (${p3.at - p2.at} ms)`);
  const ids = (p) => p.json.events.map((e) => e.id);
  assert.deepEqual(ids(p2), ids(p1), 'the retry resends the same events');
  assert.deepEqual(ids(p3), ids(p1));
  assert.deepEqual(p1.json.events.map((e) => e.type), ['pageview', 'custom', 'click', 'click']);
  assert.equal(p1.json.site, 'test');
  assert.match(p1.headers['content-type'], /^text\/plain/, 'text/plain: no CORS preflight');
  assert.ok(!stub.requests.some((r) => r.method === 'OPTIONS'), 'no preflight request');

  await pageHealthy(page, seen);
  await page.close();
  await stub.close();
});

test('collector down (connection refused): page unaffected, queue bounded, events delivered once it is back', { timeout: 90000 }, async () => {
  const first = await stubCollector([{ status: 200 }]);
  const port = first.port;
  const page = await browser.newPage();
  const seen = watch(page);
  await page.goto(`${pages.origin}/app`);
  await snippetLoaded(page);
  await first.close(); // from now on: connection refused

  // The page works while every send fails; 600 custom events overflow the 500-event queue.
  await pageHealthy(page, seen);
  await page.evaluate(() => { for (let i = 0; i < 600; i++) window.clicktrail('event', 'n', { i }); });
  await sleep(2500); // let at least one send fail
  await pageHealthy(page, seen);

  // The collector comes back on the same port: the backlog arrives, newest events kept.
  const back = await stubCollector([{ status: 200 }], port);
  const delivered = await waitFor('event n#599 after the collector came back', () => {
    const events = back.posts().flatMap((p) => p.json.events);
    return events.some((e) => e.name === 'n' && e.props.i === 599) && events;
  }, { timeout: 40000, interval: 250 });
  const ns = delivered.filter((e) => e.name === 'n').map((e) => e.props.i);
  assert.ok(ns.length <= 520, `queue bounded: ${ns.length} of 600 delivered`);
  assert.ok(Math.min(...ns) >= 80, `the oldest were dropped (first delivered: ${Math.min(...ns)})`);
  assert.equal(new Set(delivered.map((e) => e.id)).size, delivered.length, 'no duplicates');
  for (const p of back.posts()) assert.ok(p.json.events.length <= 20, 'batches of at most 20');
  await page.close();
});

// Global Privacy Control and Do-Not-Track are honoured by default; data-respect-dnt="false"
// opts a site out of that (the collector then still drops Sec-GPC / DNT requests unless
// privacy.honor_do_not_track = false).
for (const [what, init] of [
  ['Global Privacy Control', () => Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', { get: () => true })],
  ['Do-Not-Track', () => Object.defineProperty(Navigator.prototype, 'doNotTrack', { get: () => '1' })],
]) {
  test(`${what} on: nothing is sent by default, the API still works; data-respect-dnt="false" sends`, { timeout: 30000 }, async () => {
    const stub = await stubCollector([{ status: 200 }]);
    const context = await browser.newContext();
    await context.addInitScript(init);
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto(`${pages.origin}/app`);
    await snippetLoaded(page);
    await page.evaluate(() => window.clicktrail('event', 'ignored', { a: 1 }));
    await pageHealthy(page, seen);
    await page.close();
    await sleep(2500);
    assert.deepEqual(stub.posts(), [], 'no event sent');
    assert.deepEqual(seen.console, []);

    const optedOut = await context.newPage();
    await optedOut.goto(`${pages.origin}/app?attrs=${encodeURIComponent('data-respect-dnt="false"')}`);
    await snippetLoaded(optedOut);
    await optedOut.close();
    await waitFor('events of the page that opted out', () => stub.posts().length > 0, { timeout: 10000 });
    await context.close();
    await stub.close();
  });
}
