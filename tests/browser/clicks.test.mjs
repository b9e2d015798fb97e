// What the snippet says about a click, read from the request bodies the browser posts: the
// position inside the clicked element (ex, ey), dead and error clicks, the page (url, pv) a click
// belongs to when an SPA navigation follows at once, a click still sent when the page unloads
// within the second it is held; engagement as the page view's engaged time so far across a hide
// and a show; and where it posts: data-api through a first-party proxy path, and the tag found
// without document.currentScript. Against the real collector and ClickHouse: the collector must
// accept every batch whole, and each posted event is then looked up by id in clicktrail.events
// (elem_x, elem_y, dead, error, pageview_id, device_class as posted). The rollups of
// migrations/0002_analytics.sql are read through the queries of docs/queries.md themselves
// (heatmap, elements, pages), before and after the same batch is posted a second time.
//
// Needs the collector binary (CT_COLLECTOR_BIN), clickhouse-server and chromium; run through
// scripts/test-browser.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  REPO, runDir, startClickHouse, startCollector, startServer, sendHtml, launchBrowser, watch,
  snippetLoaded, waitFor, sleep, cleanup, freePort, capturePosts, sessionOf,
} from './lib/harness.mjs';
import { clicksPage } from './lib/pages.mjs';

let ch, collector, pages, browser, snippetSrc;
const HELD = 1200; // a click is held 1 s before it is queued; wait a little longer between clicks

// The pages server forwards POST /ct/events to the collector's /v1/events as a first-party
// proxy would (same body, Content-Type and Origin), and records what it forwarded.
const proxied = [];
function forward(req, res, body) {
  proxied.push(JSON.parse(body));
  const u = new URL('/v1/events', collector.origin);
  const out = request(u, {
    method: 'POST',
    headers: { 'content-type': req.headers['content-type'], origin: req.headers.origin || '' },
  }, (answer) => {
    res.writeHead(answer.statusCode, { 'content-type': 'application/json' });
    answer.pipe(res);
  });
  out.on('error', (e) => { res.writeHead(502).end(String(e)); });
  out.end(body);
}

before(async () => {
  const dir = runDir('clicks'); // its own ClickHouse and collector, apart from collector.test.mjs
  const pagePort = await freePort();
  ch = await startClickHouse(dir);
  collector = await startCollector(dir, {
    chHttp: ch.http,
    sites: [
      { key: 'test', origins: [`http://127.0.0.1:${pagePort}`] },
      { key: 'decoy', origins: [`http://127.0.0.1:${pagePort}`] },
    ],
  });
  snippetSrc = `${collector.origin}/v1/snippet.js`;
  const tag = (attrs = '') => `<script src="${snippetSrc}" data-site="test" ${attrs} defer></script>`;
  pages = await startServer((req, res, body) => {
    const path = req.url.split('?')[0];
    if (req.method === 'POST' && path === '/ct/events') return forward(req, res, body);
    if (path === '/vendor/script.js') {
      return res.writeHead(200, { 'Content-Type': 'application/javascript' }).end('window.__vendor = 1;');
    }
    if (path === '/proxied' || path.startsWith('/p/')) return sendHtml(res, clicksPage({ tag: tag('data-api="/ct/events"') }));
    if (path === '/tm') return sendHtml(res, clicksPage({ tag: '', head: tagManager(snippetSrc) }));
    if (path === '/slow') return sleep(2500).then(() => sendHtml(res, '<!doctype html><title>slow</title><p>at last'));
    if (path === '/plain') return sendHtml(res, '<!doctype html><title>plain</title><p>no snippet here');
    if (path.startsWith('/c/')) return sendHtml(res, clicksPage({ tag: tag() }));
    res.writeHead(404).end();
  }, pagePort);
  browser = await launchBrowser();
}, { timeout: 180000 });

after(cleanup, { timeout: 60000 });

// A tag manager's way of adding the snippet: a loader inserts it later, here as a module script
// (document.currentScript is null while a module runs). Before it, another vendor's tag that
// also uses data-site. A spy on the currentScript getter records what the snippet was given.
function tagManager(src) {
  return `<script src="/vendor/script.js" data-site="decoy"></script>
<script>
  (function () {
    var real = Object.getOwnPropertyDescriptor(Document.prototype, 'currentScript');
    window.__currentScript = [];
    Object.defineProperty(Document.prototype, 'currentScript', {
      configurable: true,
      get: function () { var s = real.get.call(this); window.__currentScript.push(s && s.outerHTML); return s; },
    });
    setTimeout(function () {
      var s = document.createElement('script');
      s.type = 'module';
      s.src = ${JSON.stringify(src)};
      s.setAttribute('data-site', 'test');
      document.head.appendChild(s);
    }, 50);
  })();
</script>`;
}

// Without the Navigation API (Firefox, Safari): only the snippet's own history hooks see SPA navigations.
const noNavigationApi = () => Object.defineProperty(window, 'navigation', { value: undefined });

// 1280 px wide: device_class 'desktop' (>= 1024).
async function open(path, { viewport = { width: 1280, height: 800 }, init } = {}) {
  const context = await browser.newContext({ viewport });
  if (init) await context.addInitScript(init);
  const capture = capturePosts(context);
  const page = await context.newPage();
  const seen = watch(page);
  await page.goto(`${pages.origin}${path}`);
  await snippetLoaded(page);
  return { context, page, seen, capture };
}

const clicksOf = (capture) => capture.events().filter((e) => e.type === 'click');
const clickOn = (capture, selector) => clicksOf(capture).find((c) => c.selector === selector);
async function waitClicks(capture, n) {
  return waitFor(`${n} clicks posted`, () => clicksOf(capture).length >= n && clicksOf(capture), { timeout: 15000 });
}

// Every batch the collector answered was accepted whole: the new fields do not break it.
async function allAccepted(capture) {
  await waitFor('an answer to every batch posted', () => capture.answers.length >= capture.posts.length, { timeout: 10000 });
  for (const a of capture.answers) {
    assert.equal(a.status, 200, a.body);
    if (a.body) assert.deepEqual(JSON.parse(a.body).rejected, [], a.body);
  }
}

const near = (actual, expected, tol, what) =>
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} is not within ${tol} of ${expected}`);

// ------------------------------------------------------------------ ClickHouse

// A ClickHouse string literal.
const lit = (s) => `'${String(s).replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
const idList = (events) => [...new Set(events.map((e) => e.id))].map(lit).join(', ');
const STORED = `event_id, type, path, toUInt32(received_at) AS received, elem_x, elem_y, dead, error, pageview_id,
  device_class, viewport_w, scroll_depth, duration_ms, depth_from, duration_from_ms`;

// The stored rows of these events, by event id, once all of them are in (FINAL: one row per
// event, however often it was inserted).
async function storedRows(events) {
  const n = new Set(events.map((e) => e.id)).size;
  return waitFor(`${n} posted events in ClickHouse`, async () => {
    const r = await ch.rows(`SELECT ${STORED} FROM clicktrail.events FINAL WHERE event_id IN (${idList(events)})`);
    return r.length >= n && new Map(r.map((x) => [x.event_id, x]));
  }, { timeout: 20000 });
}

// Every posted event is stored as the snippet posted it: a click's ex/ey as elem_x/elem_y, its
// dead and error flags; pageview_id = the id of a page view posted with it (a page view's own
// id), equal to the event's pv; scroll depth and engaged time; device_class of the viewport.
async function storedAsPosted(events, device) {
  const views = new Set(events.filter((e) => e.type === 'pageview').map((v) => v.id));
  assert.ok(views.size > 0, 'the page view was posted with the events');
  const rows = await storedRows(events);
  for (const e of events) {
    const r = rows.get(e.id);
    const what = `${e.type} ${e.selector || ''} (${e.id})`;
    assert.equal(r.device_class, device, `${what}: device_class of a ${e.vw} px viewport`);
    assert.equal(r.viewport_w, e.vw, `${what}: viewport_w`);
    if (e.type === 'pageview') {
      assert.equal(r.pageview_id, e.id, `${what}: a page view's pageview_id is its own id`);
    } else {
      assert.ok(views.has(r.pageview_id), `${what}: pageview_id ${JSON.stringify(r.pageview_id)} is a page view's id`);
      assert.equal(r.pageview_id, e.pv, `${what}: pageview_id is the pv posted`);
    }
    if (e.type === 'click') {
      assert.ok(Number.isInteger(e.ex) && Number.isInteger(e.ey), `${what}: ex/ey posted`);
      assert.deepEqual([r.elem_x, r.elem_y], [e.ex, e.ey], `${what}: elem_x/elem_y are the posted ex/ey`);
      assert.equal(typeof e.dead, 'boolean', `${what}: dead posted`);
      assert.equal(typeof e.error, 'boolean', `${what}: error posted`);
      assert.deepEqual([r.dead, r.error], [+e.dead, +e.error], `${what}: dead/error as posted`);
    }
    if (e.type === 'scroll') {
      assert.equal(r.scroll_depth, e.depth, `${what}: scroll_depth`);
      assert.equal(r.depth_from, e.from, `${what}: depth_from is the posted from`);
    }
    if (e.type === 'engagement') {
      assert.equal(r.duration_ms, e.duration_ms, `${what}: duration_ms`);
      assert.equal(r.duration_from_ms, e.from, `${what}: duration_from_ms is the posted from`);
    }
  }
  return rows;
}

// The posted events of a capture, each once (a retried batch posts the same events again).
const postedOnce = (capture) => [...new Map(capture.events().map((e) => [e.id, e])).values()];

// A query of docs/queries.md (the block after <!-- query: NAME -->) with its parameters
// substituted as literals, as for ClickHouse 18.16: String quoted, Date as toDate('...'),
// UInt32 as a number.
const QUERIES = readFileSync(join(REPO, 'docs', 'queries.md'), 'utf8');
function analystQuery(name, params) {
  const m = QUERIES.match(new RegExp(`<!-- query: ${name} -->\\s*\`\`\`sql\\n([\\s\\S]*?)\`\`\``));
  assert.ok(m, `query ${name} in docs/queries.md`);
  return m[1].replace(/\{\{db\}\}/g, 'clicktrail').replace(/\{(\w+):(\w+)\}/g, (_, k, type) => {
    assert.ok(k in params, `parameter ${k} of query ${name}`);
    if (type === 'String') return lit(params[k]);
    if (type === 'Date') return `toDate(${lit(params[k])})`;
    if (type === 'UInt32') return String(Number(params[k]));
    throw new Error(`query ${name}: parameter type ${type}`);
  });
}
// UTC days around now (rollup days are toDate(ts), UTC).
const utcDay = (offset) => new Date(Date.now() + offset * 86400000).toISOString().slice(0, 10);
const DAYS = () => ({ from: utcDay(-1), to: utcDay(1) });

test('ex/ey: where inside the element the selector names the click fell, 0..65535', { timeout: 60000 }, async () => {
  const { context, page, seen, capture } = await open('/c/box');
  const box = await page.$eval('#box', (el) => el.getBoundingClientRect().toJSON());
  assert.deepEqual([box.width, box.height], [200, 100], 'the button is 200x100');
  // At (50, 25) inside the button, on the button itself; at (150, 75), on the <b> inside it.
  await page.mouse.click(box.left + 50, box.top + 25);
  await page.mouse.click(box.left + 150, box.top + 75);
  assert.equal(await page.evaluate(([x, y]) => document.elementFromPoint(x, y).localName, [box.left + 150, box.top + 75]), 'b',
    'the second click lands on the <b> inside the button');
  const [c1, c2] = await waitClicks(capture, 2);
  for (const c of [c1, c2]) {
    assert.equal(c.selector, '#box', 'the element the selector describes is the button');
    for (const k of ['ex', 'ey']) assert.ok(Number.isInteger(c[k]) && c[k] >= 0 && c[k] <= 65535, `${k} ${c[k]}`);
  }
  near(c1.ex, 16384, 2, 'ex of a click 50 px into 200 px');
  near(c1.ey, 16384, 2, 'ey of a click 25 px into 100 px');
  near(c2.ex, 49151, 2, 'ex: relative to the button, not to the <b> clicked');
  near(c2.ey, 49151, 2, 'ey: relative to the button, not to the <b> clicked');
  near(c1.x, box.left + 50, 1, 'page x beside it');
  // An overlay finds the element by the selector and puts the click back where it was.
  const back = await page.evaluate(({ sel, ex, ey }) => {
    const r = document.querySelector(sel).getBoundingClientRect();
    return [r.left + ex / 65535 * r.width, r.top + ey / 65535 * r.height];
  }, { sel: c1.selector, ex: c1.ex, ey: c1.ey });
  near(back[0], box.left + 50, 0.5, 'overlay x');
  near(back[1], box.top + 25, 0.5, 'overlay y');
  await allAccepted(capture);
  // Stored as posted: elem_x/elem_y, pageview_id, device_class of the 1280 px viewport.
  await storedAsPosted(postedOnce(capture), 'desktop');
  assert.deepEqual(seen.errors, []);
  await context.close();
});

test('dead clicks: nothing happened within 1 s; a handler that changes the DOM, a form field: not dead', { timeout: 60000 }, async () => {
  const { context, page, seen, capture } = await open('/c/dead');
  // A burst of clicks on an element that does nothing (the later clicks do not make the earlier
  // ones alive); then, one at a time (anything that happens in the second after a click counts
  // for it), a button whose handler changes the DOM and a text field.
  const noop = await page.$eval('#noop', (el) => { const r = el.getBoundingClientRect(); return [r.left + 20, r.top + 20]; });
  for (let i = 0; i < 3; i++) { await page.mouse.click(...noop); await sleep(100); }
  await sleep(HELD);
  await page.click('#change');
  await sleep(HELD);
  await page.click('#field');
  await waitClicks(capture, 5);
  assert.equal(await page.textContent('#out'), '1', "the page's own handler ran");
  const burst = clicksOf(capture).filter((c) => c.selector === '#noop');
  assert.deepEqual(burst.map((c) => [c.dead, c.rage]), [[true, false], [true, false], [true, true]],
    'clicks on an element that does nothing are dead, a rage burst included');
  assert.equal(clickOn(capture, '#change').dead, false, 'a click whose handler changed the DOM is not dead');
  assert.equal(clickOn(capture, '#field').dead, false, 'a click into a text field is not dead');
  for (const c of clicksOf(capture)) assert.equal(c.error, false, `${c.selector}: no error`);
  await allAccepted(capture);
  const rows = await storedAsPosted(postedOnce(capture), 'desktop');
  assert.deepEqual(clicksOf(capture).map((c) => rows.get(c.id).dead), [1, 1, 1, 0, 0], 'stored dead flags');
  assert.deepEqual(seen.errors, []);
  await context.close();
});

test('error clicks: an uncaught error or an unhandled rejection within 1 s', { timeout: 60000 }, async () => {
  const { context, page, seen, capture } = await open('/c/error');
  await page.click('#change');
  await sleep(HELD);
  await page.click('#boom');
  await sleep(HELD);
  await page.click('#reject');
  await waitClicks(capture, 3);
  assert.equal(clickOn(capture, '#change').error, false, 'a handler that works: no error');
  assert.equal(clickOn(capture, '#boom').error, true, 'a handler that throws: error');
  assert.equal(clickOn(capture, '#reject').error, true, 'a handler that leaves a rejected promise: error');
  assert.equal(seen.errors.length, 2, 'the page saw its own error and rejection (the snippet hid nothing)');
  await allAccepted(capture);
  const rows = await storedAsPosted(postedOnce(capture), 'desktop');
  assert.deepEqual(['#change', '#boom', '#reject'].map((s) => rows.get(clickOn(capture, s).id).error), [0, 1, 1], 'stored error flags');
  await context.close();
});

test('a click followed at once by pushState belongs to the page it happened on (url, pv)', { timeout: 60000 }, async () => {
  const { context, page, seen, capture } = await open('/c/spa', { init: noNavigationApi });
  assert.equal(await page.evaluate(() => window.navigation), undefined, 'no Navigation API');
  const url1 = page.url();
  await page.click('#go'); // its handler calls history.pushState to /other/page
  assert.equal(new URL(page.url()).pathname, '/other/page');
  await sleep(HELD);
  await page.evaluate(() => history.pushState({}, '', '/third')); // closes the second page view
  const events = await waitFor('the click and the scroll of the second page view', () => {
    const e = capture.events();
    return e.some((x) => x.type === 'click') && e.filter((x) => x.type === 'scroll').length >= 2 && e;
  }, { timeout: 15000 });
  const views = events.filter((e) => e.type === 'pageview');
  assert.deepEqual(views.map((v) => new URL(v.url).pathname), ['/c/spa', '/other/page', '/third']);
  const [pv1, pv2] = views;
  for (const v of views) assert.equal(v.pv, v.id, "a page view's pv is its own id");
  const click = events.find((e) => e.type === 'click');
  assert.equal(click.selector, '#go');
  assert.equal(click.url, url1, 'the url at the click, not at the send');
  assert.equal(click.pv, pv1.id, 'the page view the click happened in');
  assert.ok(click.ts <= pv2.ts, 'the time of the click');
  assert.equal(click.dead, false, 'a navigation answered it (seen by the history hook)');
  // Scroll and engagement carry the page view they close.
  const scrolls = events.filter((e) => e.type === 'scroll');
  assert.deepEqual(scrolls.map((s) => [s.url, s.pv]), [[url1, pv1.id], [pv2.url, pv2.id]]);
  for (const e of events.filter((x) => x.type === 'engagement')) {
    assert.ok([pv1.id, pv2.id].includes(e.pv), `engagement pv ${e.pv}`);
  }
  await allAccepted(capture);
  // In ClickHouse: the click and the first scroll under the first page view, the second scroll
  // under the second, though all three have been stored after the second page view began.
  const rows = await storedAsPosted(postedOnce(capture), 'desktop');
  assert.deepEqual([click, ...scrolls].map((e) => rows.get(e.id).pageview_id), [pv1.id, pv1.id, pv2.id]);
  assert.deepEqual(seen.errors, []);
  await context.close();
});

test('a click held when the page unloads is sent at once, as not dead', { timeout: 60000 }, async () => {
  // sendBeacon from a page being unloaded does not reach playwright's request events: read the
  // body at the server instead (this page posts through the proxy path, data-api).
  const { context, page } = await open('/p/unload');
  const session = await sessionOf(page);
  await page.click('#noop');
  await page.goto(`${pages.origin}/plain`); // well within the second the click is held
  const click = await waitFor('the click, sent as the page unloaded', () =>
    proxied.flatMap((b) => b.events).find((e) => e.type === 'click' && e.session === session), { timeout: 15000 });
  assert.equal(click.selector, '#noop');
  assert.equal(click.dead, false, 'followed by a navigation that unloaded the page: not dead');
  assert.equal(new URL(click.url).pathname, '/p/unload');
  await context.close();
});

test('a click on a link to a slow page is not dead, though the page unloads after more than 1 s', { timeout: 60000 }, async () => {
  const { context, page } = await open('/p/link');
  const session = await sessionOf(page);
  assert.ok(await page.evaluate(() => !!window.navigation), 'this browser has the Navigation API');
  const clicked = Date.now();
  await page.click('#slow', { noWaitAfter: true });
  await page.waitForURL(`${pages.origin}/slow`, { timeout: 15000 });
  assert.ok(Date.now() - clicked > 2000, 'the next page came after the click was released');
  const click = await waitFor('the click', () => proxied.flatMap((b) => b.events).find((e) => e.type === 'click' && e.session === session));
  assert.equal(click.selector, '#slow');
  assert.equal(click.dead, false, 'the navigation had started (Navigation API): not dead');
  await context.close();
});

test('data-api: events go to the first-party path given, and through it to the collector', { timeout: 60000 }, async () => {
  const context = await browser.newContext();
  const all = [];
  context.on('request', (r) => { if (r.method() === 'POST') all.push(r.url()); });
  const page = await context.newPage();
  const seen = watch(page);
  await page.goto(`${pages.origin}/proxied`);
  await snippetLoaded(page);
  const session = await sessionOf(page);
  await page.click('#change');
  await waitFor('a batch through the proxy', () => proxied.some((b) => b.events.some((e) => e.type === 'click' && e.session === session)), { timeout: 15000 });
  assert.ok(all.length > 0);
  for (const u of all) assert.equal(u, `${pages.origin}/ct/events`, 'posted to data-api, resolved against the page');
  const rows = await waitFor('the proxied visit in ClickHouse', async () => {
    const r = await ch.rows(`SELECT type FROM clicktrail.events WHERE session_id = '${session}' ORDER BY ts`);
    return r.some((x) => x.type === 'click') && r;
  }, { timeout: 20000 });
  assert.deepEqual(rows.map((r) => r.type).sort(), ['click', 'pageview']);
  assert.deepEqual(seen.errors, []);
  await context.close();
});

test('no document.currentScript (a tag manager inserts a module script): the tag is found by data-site and src', { timeout: 60000 }, async () => {
  const { context, page, seen, capture } = await open('/tm');
  assert.deepEqual(await page.evaluate(() => window.__currentScript), [null],
    'the snippet asked for document.currentScript once and got null');
  const session = await sessionOf(page);
  await page.click('#change');
  await waitClicks(capture, 1);
  assert.ok(capture.posts.every((p) => p.url === `${collector.origin}/v1/events`), 'posted to the collector of the tag\'s src');
  assert.deepEqual([...new Set(capture.posts.map((p) => p.json.site))], ['test'], 'the site of our tag, not of the other vendor\'s');
  await allAccepted(capture);
  const rows = await waitFor('the tag-manager visit in ClickHouse', async () => {
    const r = await ch.rows(`SELECT type, site FROM clicktrail.events WHERE session_id = '${session}'`);
    return r.some((x) => x.type === 'click') && r;
  }, { timeout: 20000 });
  assert.deepEqual(rows.map((r) => r.site), ['test', 'test']);
  assert.deepEqual(seen.errors, []);
  await context.close();
});

test('a 400 px wide viewport is stored as device_class mobile', { timeout: 60000 }, async () => {
  const { context, page, seen, capture } = await open('/c/mobile', { viewport: { width: 400, height: 700 } });
  const box = await page.$eval('#box', (el) => el.getBoundingClientRect().toJSON());
  await page.mouse.click(box.left + 50, box.top + 25);
  const [c] = await waitClicks(capture, 1);
  assert.equal(c.vw, 400);
  await allAccepted(capture);
  const rows = await storedAsPosted(postedOnce(capture), 'mobile');
  assert.deepEqual([...rows.values()].map((r) => r.device_class), ['mobile', 'mobile']);
  assert.deepEqual(seen.errors, []);
  await context.close();
});

// Headless Chromium keeps every tab visible: hide and show the page the way the snippet sees it,
// document.hidden and a visibilitychange event. Returns the page's clock at that moment.
const setHidden = (page, hidden) => page.evaluate((h) => {
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
  document.dispatchEvent(new Event('visibilitychange'));
  return Date.now();
}, hidden);

test("engagement: the page view's engaged time so far, sent when the tab is hidden and only if it grew", { timeout: 60000 }, async () => {
  const { context, page, seen, capture } = await open('/c/engaged');
  const session = await sessionOf(page);
  const stored = (n) => waitFor(`${n} engagement events in ClickHouse`, async () => {
    const r = await ch.rows(`SELECT event_id, type, pageview_id, duration_ms, toUInt64(ts) * 1000 + ts_ms AS t
      FROM clicktrail.events FINAL WHERE session_id = ${lit(session)} ORDER BY t, event_id`);
    return r.filter((x) => x.type === 'engagement').length >= n && r;
  }, { timeout: 20000 });
  await sleep(700);                            // visible: engaged since the snippet started
  const hidden1 = await setHidden(page, true); // sends the time so far
  const stint1 = (await stored(1)).find((r) => r.type === 'engagement').duration_ms;
  // The second stint makes the total cross the next engagement bound above the first
  // stint, while staying below that bound itself: only a sum of the stints reaches it (both
  // stints 300 ms or more from it, as the first is over 500 ms).
  const bound = [1, 2, 3, 5, 7, 10].find((b) => b * 1000 > stint1 + 300) * 1000;
  const stint2 = bound - stint1 + 300;
  assert.ok(stint2 < bound - 200, `second stint ${stint2} ms stays below ${bound} ms`);
  await sleep(300);                            // hidden: not engaged
  const shown = await setHidden(page, false);
  await sleep(stint2);                         // visible again
  const hidden2 = await setHidden(page, true); // sends the time so far: both visible stints
  await setHidden(page, true);                 // hidden again, nothing since: nothing to send
  const rows = await stored(2);
  await sleep(1000); // anything sent after the second hide would be in by now
  const all = await ch.rows(`SELECT type FROM clicktrail.events FINAL WHERE session_id = ${lit(session)} ORDER BY type`);
  assert.deepEqual(all.map((r) => r.type), ['engagement', 'engagement', 'pageview', 'scroll'],
    'one engagement per hide with new engaged time, one scroll (its depth did not grow)');

  const view = rows.find((r) => r.type === 'pageview');
  const [e1, e2] = rows.filter((r) => r.type === 'engagement');
  const start = Number(view.t); // the engagement clock starts with the page view
  for (const e of [e1, e2]) assert.equal(e.pageview_id, view.event_id, 'engagement carries its page view');
  near(e1.duration_ms, hidden1 - start, 50, 'first engagement: the first visible stint');
  near(e2.duration_ms - e1.duration_ms, hidden2 - shown, 50, 'second engagement adds the second stint: cumulative');
  // Posted as stored (read back from the request bodies, beacons of a live page included).
  await waitFor('both engagement events posted', () => capture.events().filter((e) => e.type === 'engagement').length >= 2);
  // Each says what it adds: from = the time the page view had sent before.
  const [p1, p2] = postedOnce(capture).filter((e) => e.type === 'engagement');
  assert.deepEqual([p1.from, p2.from], [0, p1.duration_ms], 'from: 0 on the first, then the time sent before');
  await storedAsPosted(postedOnce(capture), 'desktop');

  // The rollup sums what each event adds (from < bound <= duration_ms): the page view must be
  // counted once in every bound up to its total, including the one only the two stints
  // together reach (the page clock's total, not what the snippet said), and in none twice.
  const total = stint1 + (hidden2 - shown);
  const buckets = await ch.rows(`SELECT engaged_s, sum(pageviews) AS n FROM clicktrail.engagement_daily_sum
    WHERE site = 'test' AND path = '/c/engaged' GROUP BY engaged_s ORDER BY engaged_s`);
  const bounds = [1, 2, 3, 5, 7, 10, 15, 20, 30].filter((b) => b * 1000 <= total);
  assert.ok(bounds.includes(bound / 1000), `the total ${total} ms reached ${bound} ms`);
  assert.deepEqual(buckets.map((b) => [b.engaged_s, Number(b.n)]), bounds.map((b) => [b, 1]),
    `engagement_daily_sum: the page view reached the buckets of its total engaged time, ${total} ms`);
  assert.deepEqual(seen.errors, []);
  await context.close();
});

test('rollups: heatmap, elements and pages of docs/queries.md count the clicks once, also when a batch is posted twice', { timeout: 90000 }, async () => {
  const path = '/c/grid';
  const { context, page, seen, capture } = await open(path);
  // Four clicks, each left its second to be judged: at (fx, fy) of the element's box, so in
  // 4 x 4 cell row * 4 + column of the element. #field is a form field (never dead), #change
  // changes the DOM (not dead), #noop does nothing (dead), #boom throws (error; dead or not is
  // the browser's business: whether a click on a button moves the focus).
  const plan = [
    { sel: '#field', fx: 0.7, fy: 0.3, ecell: 6, dead: false, error: false },
    { sel: '#change', fx: 0.7, fy: 0.7, ecell: 10, dead: false, error: false },
    { sel: '#noop', fx: 0.3, fy: 0.3, ecell: 5, dead: true, error: false },
    { sel: '#boom', fx: 0.3, fy: 0.7, ecell: 9, dead: null, error: true },
  ];
  for (const p of plan) {
    const r = await page.$eval(p.sel, (el) => el.getBoundingClientRect().toJSON());
    p.x = r.left + r.width * p.fx; // no scroll: client = page coordinates
    p.y = r.top + r.height * p.fy;
    await page.mouse.click(p.x, p.y);
    await sleep(HELD);
  }
  const clicks = await waitClicks(capture, plan.length);
  assert.equal(seen.errors.length, 1, "#boom's own error");
  await allAccepted(capture);
  const dw = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.equal(dw, 1280);
  plan.forEach((p, i) => {
    const c = clicks[i];
    assert.equal(c.selector, p.sel);
    near(c.x, p.x, 1, `${p.sel} x`);
    near(c.y, p.y, 1, `${p.sel} y`);
    assert.equal(c.dw, dw, `${p.sel} dw`);
    if (p.dead === null) p.dead = c.dead;
    assert.deepEqual([c.dead, c.error], [p.dead, p.error], `${p.sel} dead, error`);
    assert.equal(Math.floor(c.ey / 16384) * 4 + Math.floor(c.ex / 16384), p.ecell, `${p.sel} ex/ey in cell ${p.ecell}`);
  });
  const posted = postedOnce(capture);
  await storedAsPosted(posted, 'desktop');

  // What the rollups must say, from the clicks the test made (docs/queries.md: cx, cy, ecell).
  const cell = (p) => `${Math.min(99, Math.floor(Math.round(p.x) * 100 / dw))},${Math.floor(Math.round(p.y) / 20)}`;
  const grid = (ps) => {
    const m = {};
    for (const p of ps) m[cell(p)] = (m[cell(p)] || 0) + 1;
    return m;
  };
  const params = { site: 'test', path, device: '', limit: 50, ...DAYS() };
  const heatmap = async (kind) => Object.fromEntries((await ch.rows(analystQuery('heatmap', { ...params, kind })))
    .map((r) => [`${r.cx},${r.cy}`, Number(r.n)]));
  const elements = async () => Object.fromEntries((await ch.rows(analystQuery('elements', params)))
    .map((r) => [r.selector, { clicks: +r.clicks, dead: +r.dead_clicks, error: +r.error_clicks, rage: +r.rage_clicks, cells: r.cells.map(Number), unknown: +r.unknown_position }]));
  const pageStats = async () => (await ch.rows(analystQuery('pages', params))).filter((r) => r.path === path).map((r) => ({
    path: r.path, views: +r.views, bounces: +r.bounces, clicks: +r.clicks, rage: +r.rage_clicks, dead: +r.dead_clicks, error: +r.error_clicks,
  }));
  const report = async () => ({
    click: await heatmap('click'), dead: await heatmap('dead'), error: await heatmap('error'), rage: await heatmap('rage'),
    elements: await elements(), pages: await pageStats(),
  });
  const want = {
    click: grid(plan), dead: grid(plan.filter((p) => p.dead)), error: grid(plan.filter((p) => p.error)), rage: {},
    elements: Object.fromEntries(plan.map((p) => [p.sel, {
      clicks: 1, dead: +p.dead, error: +p.error, rage: 0, cells: Array.from({ length: 16 }, (_, i) => +(i === p.ecell)), unknown: 0,
    }])),
    pages: [{ path, views: 1, bounces: 0, clicks: 4, rage: 0, dead: plan.filter((p) => p.dead).length, error: 1 }],
  };
  const first = await report();
  assert.deepEqual(first, want, 'the rollups hold the clicks made');

  // The same events posted again (a client retry; same ids): answered as accepted, and kept out
  // of ClickHouse by the collector's intake filter (docs/delivery.md): one raw row per event.
  const answer = await fetch(`${collector.origin}/v1/events`, {
    method: 'POST',
    headers: { 'content-type': 'text/plain;charset=UTF-8', origin: pages.origin },
    body: JSON.stringify({ site: 'test', events: posted }),
  });
  const body = await answer.json();
  assert.equal(answer.status, 200, JSON.stringify(body));
  assert.deepEqual([body.accepted, body.rejected], [posted.length, []]);
  await sleep(2000); // ten times the sink's batch_age: a copy would have landed by now
  const raw = await ch.rows(`SELECT count() AS n, uniqExact(event_id) AS u FROM clicktrail.events
    WHERE event_id IN (${idList(posted)})`);
  assert.deepEqual([Number(raw[0].n), Number(raw[0].u)], [posted.length, posted.length], 'no second copy in ClickHouse');
  assert.deepEqual(await report(), want, 'the rollups count each click once after the batch was posted twice');
  await context.close();
});
