// The snippet in headless Chromium against the real collector and a real ClickHouse:
// a visit with clicks, a rage click, scrolling, an SPA navigation and custom events, then the
// tab is closed; every event must be in clicktrail.events with the right fields.
//
// Needs target/debug/clicktrail (cargo build), clickhouse-server and chromium; run through
// scripts/test-browser.sh, or `node --test` here with those in place.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  REPO, runDir, startClickHouse, startCollector, startServer, sendHtml, launchBrowser, watch,
  sessionOf, snippetLoaded, waitFor, sleep, cleanup, freePort,
} from './lib/harness.mjs';
import { shopPage } from './lib/pages.mjs';

let ch, collector, pages, browser;
// Longer than the collector's limits (title 512 bytes, text 256 bytes) once in UTF-8.
const LONG_TITLE = '長'.repeat(300) + '😀'.repeat(100);
const LONG_TEXT = 'ü'.repeat(100) + '😀'.repeat(100);

before(async () => {
  const dir = runDir();
  // Ports go into the collector's config (allowed origins), so take them first. Site "demo" is
  // the demo page the collector serves itself at GET /.
  const [pagePort, collectorPort] = [await freePort(), await freePort()];
  ch = await startClickHouse(dir);
  collector = await startCollector(dir, {
    chHttp: ch.http,
    port: collectorPort,
    sites: [
      { key: 'test', origins: [`http://127.0.0.1:${pagePort}`] },
      { key: 'demo', origins: [`http://127.0.0.1:${collectorPort}`] },
    ],
  });
  const snippetSrc = `${collector.origin}/v1/snippet.js`;
  pages = await startServer((req, res) => {
    const path = req.url.split('?')[0];
    if (path === '/long') return sendHtml(res, shopPage({ snippetSrc, title: LONG_TITLE }).replace('Buy now', LONG_TEXT));
    if (path === '/cookieless') return sendHtml(res, shopPage({ snippetSrc, attrs: 'data-cookieless data-no-text' }));
    if (path.startsWith('/app')) return sendHtml(res, shopPage({ snippetSrc }));
    res.writeHead(404).end();
  }, pagePort);
  browser = await launchBrowser();
}, { timeout: 180000 });

after(cleanup, { timeout: 60000 });

// t: client time in epoch ms (the table keeps it as ts, a DateTime, plus ts_ms, its milliseconds).
const COLUMNS = `event_id, type, name, toUInt64(ts) * 1000 + ts_ms AS t, url, path, referrer, title, session_id, visitor_id,
  x, y, viewport_w, viewport_h, doc_w, doc_h, selector, text, rage, scroll_depth, duration_ms, props`;

// Rows of one filter, numbers as numbers (ClickHouse quotes 64-bit integers in JSON).
async function rowsWhere(where) {
  const rows = await ch.rows(`SELECT ${COLUMNS} FROM clicktrail.events WHERE ${where} ORDER BY t, event_id`);
  for (const r of rows) {
    for (const k of ['t', 'x', 'y', 'viewport_w', 'viewport_h', 'doc_w', 'doc_h', 'rage', 'scroll_depth', 'duration_ms']) {
      if (r[k] !== undefined && r[k] !== null) r[k] = Number(r[k]);
    }
  }
  return rows;
}

const byType = (rows, type) => rows.filter((r) => r.type === type);
const near = (actual, expected, tol, what) =>
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} is not within ${tol} of ${expected}`);

// Page coordinates of an element's centre, as the snippet should report a click there.
const centre = (page, sel) => page.$eval(sel, (el) => {
  const r = el.getBoundingClientRect();
  return { x: r.left + r.width / 2 + scrollX, y: r.top + r.height / 2 + scrollY, cx: r.left + r.width / 2, cy: r.top + r.height / 2 };
});

test('a visit is recorded end to end: page views, clicks, rage, scroll, SPA navigation, close', { timeout: 120000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  const seen = watch(page);
  const answers = []; // what the collector said to each fetch of a batch
  page.on('response', async (r) => {
    if (r.url().endsWith('/v1/events')) answers.push({ status: r.status(), body: await r.text().catch(() => '') });
  });

  // utm_* parameters are kept in stored URLs; any other query parameter would not be.
  const url1 = `${pages.origin}/app?utm_source=test`;
  await page.goto(url1);
  await snippetLoaded(page);
  const session = await sessionOf(page);
  assert.match(session, /^[\w-]{1,64}$/, 'session id kept in sessionStorage');

  // Clicks: one on a button with an id, one on markup inside an id-less button, two on form fields.
  const buy = await centre(page, '#buy');
  await page.click('#buy');
  await page.click('nav button.x b');
  await page.fill('#email', 'secret-value@example.com');
  await page.click('#email');
  await page.click('#notes');
  assert.equal(await page.textContent('#count'), '1', "the page's own click handler ran");

  // Rage: three clicks on one spot within a second.
  const dead = await centre(page, '#dead');
  for (let i = 0; i < 3; i++) { await page.mouse.click(dead.cx, dead.cy); await sleep(60); }

  // Scroll to 50 % of the document.
  const half = await page.evaluate(() => {
    const dh = document.documentElement.scrollHeight;
    scrollTo(0, dh / 2 - innerHeight);
    return { dh, y: scrollY };
  });
  await page.waitForFunction((y) => scrollY === y, half.y);
  await sleep(100); // let the scroll event fire

  // SPA navigation (the page's #next handler calls history.pushState).
  await page.evaluate(() => scrollTo(0, 0));
  await page.click('#next');
  await page.waitForURL('**/app/step2');
  const url2 = `${pages.origin}/app/step2`;

  // Page 2: a click far down the page (y must include the scroll offset), scroll to the bottom,
  // a custom event, then close the tab right away (these events must leave by sendBeacon).
  await page.click('#far');
  const far = await centre(page, '#far');
  assert.ok(far.y > 1500, `#far is far down the page (${far.y})`);
  await page.evaluate(() => scrollTo(0, document.documentElement.scrollHeight));
  await sleep(100);
  await page.evaluate(() => window.clicktrail('event', 'signup', { plan: 'pro', seats: 3, nested: { no: 1 } }));
  const globals = await page.evaluate(() => Object.keys(window).filter((k) => !window.__globals.includes(k) && !k.startsWith('__')));
  const storage = await page.evaluate(() => ({ local: localStorage.getItem('clicktrail'), keys: Object.keys(localStorage).concat(Object.keys(sessionStorage)) }));
  const pageState = await page.evaluate(() => ({ errors: window.__errors, rejections: window.__rejections }));
  await page.close();

  // All of it lands in ClickHouse, the last events through the beacon sent on close.
  const rows = await waitFor('the events of the closed page in ClickHouse', async () => {
    const r = await rowsWhere(`session_id = '${session}'`);
    return byType(r, 'engagement').length >= 2 && byType(r, 'scroll').length >= 2 &&
      byType(r, 'custom').length >= 2 && byType(r, 'click').length >= 9 ? r : null;
  }, { timeout: 20000 });
  await context.close();

  // The page saw nothing from the snippet: no exception, no console output, one new global.
  assert.deepEqual(seen.errors, [], 'no uncaught exceptions in the page');
  assert.deepEqual(seen.console, [], 'no console output at all');
  assert.deepEqual(pageState, { errors: 0, rejections: 0 });
  assert.deepEqual(globals, ['clicktrail'], 'one global');
  assert.match(storage.local, /^[\w-]{1,64}$/, 'visitor id in localStorage');
  assert.deepEqual(storage.keys.sort(), ['clicktrail', 'clicktrail'], 'one key in each storage, no cookies');
  assert.equal(await context.cookies().catch(() => []).then((c) => c.length), 0);
  // (When the visit is shorter than the 2 s batch window everything leaves by sendBeacon on
  // close and there is no answer to read; the exact row counts below then show nothing was lost.)
  for (const a of answers) {
    assert.equal(a.status, 200, `collector answer ${a.body}`);
    // (a body can be unreadable when it arrives as the page closes)
    if (a.body) assert.deepEqual(JSON.parse(a.body).rejected, [], `nothing rejected: ${a.body}`);
  }

  // Identity: one session and one visitor across every event; ids unique.
  assert.deepEqual([...new Set(rows.map((r) => r.session_id))], [session]);
  assert.deepEqual([...new Set(rows.map((r) => r.visitor_id))], [storage.local]);
  assert.equal(new Set(rows.map((r) => r.event_id)).size, rows.length, 'event ids are unique');

  const counts = Object.fromEntries(['pageview', 'click', 'scroll', 'engagement', 'custom'].map((t) => [t, byType(rows, t).length]));
  assert.deepEqual(counts, { pageview: 2, click: 9, scroll: 2, engagement: 2, custom: 2 }, 'event counts');
  for (const r of rows) {
    assert.equal(r.viewport_w, 1000, `${r.type} viewport_w`);
    assert.equal(r.viewport_h, 700, `${r.type} viewport_h`);
    assert.ok(r.doc_h >= half.dh, `${r.type} doc_h ${r.doc_h}`);
    assert.ok(r.doc_w >= 1000, `${r.type} doc_w ${r.doc_w}`);
    assert.ok(!JSON.stringify(r).includes('secret-value'), 'never the value of an input');
  }

  // Page views.
  const [pv1, pv2] = byType(rows, 'pageview');
  assert.equal(pv1.url, url1);
  assert.equal(pv1.path, '/app');
  assert.equal(pv1.title, 'Shop');
  assert.equal(pv2.url, url2);
  assert.equal(pv2.path, '/app/step2');
  assert.equal(pv2.referrer, url1, 'an SPA page view has the previous URL as referrer');
  assert.equal(pv2.title, 'Step 2');

  // Clicks, in order.
  const clicks = byType(rows, 'click');
  assert.deepEqual(clicks.map((c) => [c.selector, c.text, c.rage]), [
    ['#buy', 'Buy now', 0],
    ['main>nav>button:nth-of-type(2)', 'Two items', 0],
    ['#email', '', 0],
    ['#notes', '', 0],
    // A div is neither link nor button: its text is not sent (privacy.text_for_tags).
    ['#dead', '', 0],
    ['#dead', '', 0],
    ['#dead', '', 1], // the click that completes the burst
    ['#next', 'Next step', 0],
    ['#far', 'Far away', 0],
  ]);
  near(clicks[0].x, buy.x, 1, '#buy x');
  near(clicks[0].y, buy.y, 1, '#buy y');
  for (const c of clicks.slice(4, 7)) { near(c.x, dead.x, 1, 'rage x'); near(c.y, dead.y, 1, 'rage y'); }
  near(clicks[8].x, far.x, 1, '#far x');
  near(clicks[8].y, far.y, 1, '#far y (page coordinates include the scroll offset)');
  assert.deepEqual(clicks.map((c) => c.url), [...Array(8).fill(url1), url2], 'a click belongs to the page it happened on');

  // Scroll depth and engagement: one each per page view, sent when the page view ended.
  const [s1, s2] = byType(rows, 'scroll');
  assert.equal(s1.url, url1);
  near(s1.scroll_depth, 50, 1, 'page 1 was scrolled to half the document');
  assert.equal(s2.url, url2);
  assert.equal(s2.scroll_depth, 100, 'page 2 was scrolled to the bottom');
  const [e1, e2] = byType(rows, 'engagement');
  assert.equal(e1.url, url1);
  assert.equal(e2.url, url2);
  const spent = rows.at(-1).t - rows[0].t + 1000;
  for (const e of [e1, e2]) assert.ok(e.duration_ms > 0 && e.duration_ms <= spent, `engagement ${e.duration_ms} ms of ${spent}`);
  assert.ok(s1.t <= pv2.t && e1.t <= pv2.t, 'page 1 ends before page 2 starts');

  // Custom events: the one queued before the snippet loaded, and one after; nested props dropped.
  const [early, signup] = byType(rows, 'custom');
  assert.equal(early.name, 'early');
  assert.deepEqual(JSON.parse(early.props), { queued: true });
  assert.equal(early.url, url1);
  assert.equal(signup.name, 'signup');
  assert.deepEqual(JSON.parse(signup.props), { plan: 'pro', seats: 3 });
  assert.equal(signup.url, url2);
});

test('cookieless mode stores nothing, the collector derives the visitor; data-no-text sends no text', { timeout: 60000 }, async () => {
  const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
  const page = await context.newPage();
  const seen = watch(page);
  await page.goto(`${pages.origin}/cookieless`);
  await snippetLoaded(page);
  await page.click('#buy');
  await page.click('#dead');
  const storage = await page.evaluate(() => localStorage.length + sessionStorage.length);
  await page.close();

  const rows = await waitFor('the cookieless visit in ClickHouse', async () => {
    const r = await rowsWhere(`path = '/cookieless'`);
    return byType(r, 'engagement').length >= 1 ? r : null;
  }, { timeout: 20000 });
  await context.close();

  assert.equal(storage, 0, 'nothing in localStorage or sessionStorage');
  assert.deepEqual(seen.errors, []);
  assert.deepEqual(seen.console, []);
  assert.deepEqual(rows.map((r) => r.type).sort(), ['click', 'click', 'custom', 'engagement', 'pageview', 'scroll']);
  assert.equal(new Set(rows.map((r) => r.session_id)).size, 1, 'one session, kept in memory');
  assert.match(rows[0].session_id, /^[\w-]{1,64}$/);
  const visitors = new Set(rows.map((r) => r.visitor_id));
  assert.equal(visitors.size, 1, 'one derived visitor');
  assert.notEqual([...visitors][0], '', 'the collector derived a visitor id');
  assert.deepEqual(byType(rows, 'click').map((c) => [c.selector, c.text]), [['#buy', ''], ['#dead', '']]);
});

test('long non-ASCII title and text are cut to the collector\'s byte limits, not rejected', { timeout: 60000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const seen = watch(page);
  const answers = [];
  page.on('response', async (r) => {
    if (r.url().endsWith('/v1/events')) answers.push(await r.text().catch(() => ''));
  });
  await page.goto(`${pages.origin}/long`);
  await snippetLoaded(page);
  await page.click('#buy');
  await page.waitForTimeout(2500); // one timed flush, so its answer can be read
  await page.close();
  assert.ok(answers.some(Boolean), 'saw an answer');
  for (const a of answers.filter(Boolean)) assert.deepEqual(JSON.parse(a).rejected, [], a);
  const rows = await waitFor('the /long visit in ClickHouse', async () => {
    const r = await rowsWhere(`path = '/long'`);
    return byType(r, 'pageview').length && byType(r, 'click').length ? r : null;
  }, { timeout: 20000 });
  await context.close();
  assert.deepEqual(seen.errors, []);
  const title = byType(rows, 'pageview')[0].title;
  const text = byType(rows, 'click')[0].text;
  const bytes = (s) => Buffer.byteLength(s);
  assert.ok(bytes(title) <= 512 && bytes(title) > 500, `title cut to ${bytes(title)} bytes`);
  assert.ok(LONG_TITLE.startsWith(title), 'title is a prefix of the real one (whole characters)');
  assert.ok(bytes(text) <= 256 && bytes(text) > 250, `text cut to ${bytes(text)} bytes`);
  assert.ok(LONG_TEXT.startsWith(text), 'text is a prefix of the real one (whole characters)');
});

test('the demo page at GET / tracks itself and lists the batches it sent', { timeout: 60000 }, async () => {
  const served = await (await fetch(`${collector.origin}/`)).text();
  assert.equal(served, readFileSync(join(REPO, 'snippet', 'demo.html'), 'utf8'),
    'GET / serves snippet/demo.html (a collector built before the last change to it? rebuild)');
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  const seen = watch(page);
  await page.goto(`${collector.origin}/`);
  await snippetLoaded(page);
  await page.click('#add-to-cart');
  await page.click('#signup');
  await page.click('#tabs a[data-view=pricing]');
  assert.equal(new URL(page.url()).search, '?view=pricing', "the demo's own pushState navigation");
  // The panel shows the first batch (sent after 2 s) with the collector's answer.
  await page.waitForFunction(() => /HTTP 200/.test(document.getElementById('log').textContent), null, { timeout: 10000 });
  const panel = await page.textContent('#log');
  for (const want of ['pageview', 'click', '#add-to-cart', 'demo_signup', 'scroll', 'engagement']) {
    assert.ok(panel.includes(want), `the panel lists ${want}: ${panel}`);
  }
  const session = await sessionOf(page);
  await page.close();
  const rows = await waitFor('the demo visit in ClickHouse', async () => {
    const r = await rowsWhere(`site = 'demo' AND session_id = '${session}'`);
    return byType(r, 'pageview').length >= 2 && byType(r, 'engagement').length >= 2 ? r : null;
  }, { timeout: 20000 });
  await context.close();
  assert.deepEqual(seen.errors, []);
  assert.deepEqual(seen.console, []);
  // The SPA's ?view=pricing is not stored: query strings are dropped by default (privacy.keep_query_params).
  assert.deepEqual(byType(rows, 'pageview').map((r) => r.url), [`${collector.origin}/`, `${collector.origin}/`]);
  assert.deepEqual(byType(rows, 'click').map((r) => r.selector), ['#add-to-cart', '#signup', '#tabs>a:nth-of-type(2)']);
  assert.deepEqual(byType(rows, 'custom').map((r) => [r.name, JSON.parse(r.props)]), [['demo_signup', { plan: 'pro', seats: 3 }]]);
});
