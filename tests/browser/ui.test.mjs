// The reports page /ui/ in real Chromium against the real collector and ClickHouse: it refuses
// a wrong token and shows no data without one; signed in with the site's read token it shows
// the query API's own numbers (read here from /v1/query/pages), a page's elements, scroll map
// and heatmap PNG, and the live feed of /v1/live; it works at 1280 px and at phone width
// (no horizontal scrolling) and by keyboard alone. Writes docs/reports.png when
// CT_DOCS_SCREENSHOTS=1.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  REPO, runDir, startClickHouse, startCollector, launchBrowser, watch, waitFor, sleep, cleanup,
} from './lib/harness.mjs';

const TOKEN = 'ui-read-token-0123456789';
const ORIGIN = 'http://shop.test';
let ch, collector, browser;

const post = async (events) => {
  const r = await fetch(`${collector.origin}/v1/events`, {
    method: 'POST', headers: { 'content-type': 'text/plain', origin: ORIGIN },
    body: JSON.stringify({ site: 'shop', events }),
  });
  assert.equal(r.status, 200, await r.text());
};
const metric = async (name) => {
  const text = await (await fetch(`${collector.origin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : 0;
};

before(async () => {
  const dir = runDir('ui');
  ch = await startClickHouse(dir);
  collector = await startCollector(dir, { chHttp: ch.http, sites: [{ key: 'shop', origins: [ORIGIN], read_tokens: [TOKEN] }] });
  const ts = Date.now() - 5000;
  const base = { ts, session: 's', visitor: 'v', vw: 1280, vh: 800, dw: 1280, dh: 2000 };
  const events = [];
  for (let i = 0; i < 7; i++) events.push({ ...base, type: 'pageview', id: `pa${i}`, url: `${ORIGIN}/pricing`, session: `s${i}`, visitor: `v${i % 4}` });
  // The home page's visitors also visited /pricing: 4 visitors in all, 7 summed over pages.
  for (let i = 0; i < 3; i++) events.push({ ...base, type: 'pageview', id: `pb${i}`, url: `${ORIGIN}/`, session: `t${i}`, visitor: `v${i}` });
  for (let i = 0; i < 5; i++) {
    events.push({ ...base, type: 'click', id: `c${i}`, url: `${ORIGIN}/pricing`, pv: `pa${i}`, session: `s${i}`,
      x: 300 + i, y: 400, selector: '#buy', ex: 30000, ey: 30000, rage: i == 0, dead: i == 1 });
  }
  events.push({ ...base, type: 'scroll', id: 'sc1', url: `${ORIGIN}/pricing`, pv: 'pa0', session: 's0', depth: 60 });
  await post(events);
  await waitFor('the sink to insert every row', async () => (await metric('clicktrail_sink_rows_inserted_total')) >= events.length);
  browser = await launchBrowser();
});

after(cleanup);

const day = (t) => new Date(t).toISOString().slice(0, 10);

test('the reports page refuses a wrong token, then shows the API numbers and the live feed', async () => {
  const today = day(Date.now());
  const want = await (await fetch(`${collector.origin}/v1/query/pages?site=shop&from=${day(Date.now() - 29 * 864e5)}&to=${today}&limit=1000`,
    { headers: { authorization: `Bearer ${TOKEN}` } })).json();
  const views = want.pages.reduce((s, p) => s + p.views, 0);
  assert.equal(views, 10);

  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const p = await ctx.newPage();
  const seen = watch(p);
  await p.goto(`${collector.origin}/ui/`);
  assert.equal(await p.isVisible('#app'), false, 'no reports before signing in');

  // Wrong token: refused, nothing shown. By keyboard: the site field has focus.
  await p.keyboard.type('shop');
  await p.keyboard.press('Tab');
  await p.keyboard.type('wrong-token');
  await p.keyboard.press('Enter');
  await p.waitForFunction(() => document.getElementById('signin-error').textContent.includes('Refused'));
  assert.equal(await p.isVisible('#app'), false);
  assert.equal(await p.evaluate(() => sessionStorage.getItem('clicktrail-ui')), null);

  // The right token.
  await p.fill('#in-token', TOKEN);
  await p.press('#in-token', 'Enter');
  await p.waitForFunction(() => document.getElementById('status').textContent.startsWith('updated'));
  assert.equal(await p.textContent('#k-views'), String(views));
  assert.equal(want.totals.visitors, 4);
  assert.equal(want.pages.reduce((s, x) => s + x.visitors, 0), 7);
  assert.equal(await p.textContent('#k-visitors'), String(want.totals.visitors));
  const rows = await p.$$eval('#pages tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  assert.deepEqual(rows.map((r) => [r[0], r[1]]), want.pages.map((x) => [x.path, String(x.views)]));
  assert.ok(await p.evaluate(() => JSON.parse(sessionStorage.getItem('clicktrail-ui')).token.length > 0));
  assert.ok((await p.$$('#chart-views rect')).length >= 1, 'page views chart');

  // A page: elements table, scroll map, heatmap PNG, overlay link. Opened by keyboard.
  await p.focus('#pages tbody tr:first-child button');
  await p.keyboard.press('Enter');
  await p.waitForFunction(() => document.querySelector('#elements tbody tr') && document.getElementById('heat').naturalWidth > 0);
  const el = await p.$$eval('#elements tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  assert.deepEqual(el[0], ['#buy', '5', '1', '1', '0']);
  assert.equal(await p.getAttribute('#overlay-link', 'href'),
    `/pricing#clicktrail=heatmap&token=${TOKEN}&from=${day(Date.now() - 29 * 864e5)}&to=${today}`);
  assert.ok((await p.$$('#chart-scroll rect')).length === 21, 'scroll map: 21 depths');
  // Page views of 800 px windows on 2000 px documents: the average fold is at 40 %.
  assert.ok(await p.$('#avg-fold'), 'average fold line'); // a 0-px-high box: never "visible"
  assert.match(await p.textContent('#fold-note'), /Average fold: 40% of the page \(7 views measured\)/);

  // Live: an event posted now shows up in the feed.
  await p.waitForFunction(() => document.getElementById('live-status').textContent == 'connected');
  await post([{ type: 'click', id: 'live-ui-1', ts: Date.now(), url: `${ORIGIN}/pricing`, session: 'x', visitor: 'x', selector: '#buy', x: 1, y: 1 }]);
  await p.waitForSelector('#feed li[data-id="live-ui-1"]', { timeout: 5000 });
  if (process.env.CT_DOCS_SCREENSHOTS === '1') await p.screenshot({ path: join(REPO, 'docs', 'reports.png'), fullPage: true });

  // Phone width: no horizontal scrolling.
  await p.setViewportSize({ width: 390, height: 800 });
  await sleep(200);
  assert.ok(await p.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), 'fits a phone');

  // Sign out: back to the form, the token forgotten.
  await p.click('#signout');
  assert.equal(await p.isVisible('#app'), false);
  assert.equal(await p.evaluate(() => sessionStorage.getItem('clicktrail-ui')), null);
  assert.deepEqual(seen.errors, []);
  await ctx.close();
});
