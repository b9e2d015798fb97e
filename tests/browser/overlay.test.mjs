// The heatmap overlay on the real page: clicks made in Chromium on a test page with a known
// layout go through the real collector into ClickHouse; the same page opened with
// #clicktrail=heatmap&token=... loads /v1/overlay.js, which paints the heatmap on a canvas read
// back pixel by pixel: hot on the button that was clicked, cold elsewhere; after the button is
// moved by CSS the hotspot follows it (element clicks are placed on the element as it is now);
// without a token, or with a wrong one, nothing is painted; in heatmap mode the page sends no
// events. Writes docs/overlay.png when CT_DOCS_SCREENSHOTS=1.
//
// Needs the collector binary (CT_COLLECTOR_BIN), clickhouse-server and chromium; run through
// scripts/test-browser.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  REPO, runDir, startClickHouse, startCollector, startServer, sendHtml, launchBrowser, watch,
  snippetLoaded, waitFor, sleep, cleanup, freePort, capturePosts,
} from './lib/harness.mjs';

const TOKEN = 'overlay-read-token-0123456789';
let ch, collector, pages, browser;

// A page with a known layout: the button #buy at (200, 300), 160 x 60 px; a long body.
const page = (snippet) => `<!doctype html><html><head><meta charset=utf-8><title>Overlay test</title>
<style>
  html, body { margin: 0; }
  body { width: 100%; height: 2000px; position: relative; background: #fafafa; font: 16px sans-serif; }
  #buy { position: absolute; left: 200px; top: 300px; width: 160px; height: 60px; }
  #other { position: absolute; left: 800px; top: 900px; width: 120px; height: 40px; }
</style>
${snippet}</head><body>
<h1 style="margin:0;padding:16px">Product page</h1>
<button id="buy" onclick="this.dataset.n = (+this.dataset.n || 0) + 1">Buy now</button>
<button id="other">Other</button>
</body></html>`;

before(async () => {
  const dir = runDir('overlay');
  const pagePort = await freePort();
  ch = await startClickHouse(dir);
  collector = await startCollector(dir, {
    chHttp: ch.http,
    sites: [{ key: 'test', origins: [`http://127.0.0.1:${pagePort}`], read_tokens: [TOKEN] }],
  });
  const tag = `<script src="${collector.origin}/v1/snippet.js" data-site="test" defer></script>`;
  pages = await startServer((req, res) => sendHtml(res, page(tag)), pagePort);
  browser = await launchBrowser();
});

after(cleanup);

const metric = async (name) => {
  const text = await (await fetch(`${collector.origin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.split(' ')[1]) : 0;
};

// Alpha of the overlay canvas at page point (x, y), the max over a 9 x 9 px square.
const heatAt = (p, x, y) => p.evaluate(([x, y]) => {
  const c = document.getElementById('clicktrail-overlay');
  if (!c) return -1;
  const px = c.getContext('2d').getImageData(x - 4, y - 4, 9, 9).data;
  let max = 0;
  for (let i = 3; i < px.length; i += 4) max = Math.max(max, px[i]);
  return max;
}, [x, y]);

test('the overlay paints the clicks on the element where it is now, and nothing without a token', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const posts = capturePosts(ctx);
  const p = await ctx.newPage();
  const seen = watch(p);
  await p.goto(`${pages.origin}/product`);
  await snippetLoaded(p);
  const CLICKS = 6;
  for (let i = 0; i < CLICKS; i++) {
    // Spread over the button (no rage burst: 30 px apart or more than 1 s).
    await p.mouse.click(220 + i * 24, 315 + (i % 2) * 30);
    await sleep(350);
  }
  await p.close(); // pagehide: everything queued leaves by sendBeacon
  await waitFor('the clicks in ClickHouse', async () =>
    (await ch.rows("SELECT count() AS n FROM clicktrail.events WHERE type = 'click'"))[0].n >= CLICKS);
  const rows = (await ch.rows("SELECT count() AS n FROM clicktrail.events"))[0].n;
  await waitFor('the sink to insert every row', async () => (await metric('clicktrail_sink_rows_inserted_total')) >= rows);
  assert.ok(posts.answers.every((a) => a.status === 200), JSON.stringify(posts.answers));

  // Heatmap mode with the token: hot on #buy, cold at #other and on empty page.
  const sentBefore = posts.posts.length;
  const v = await ctx.newPage();
  const vseen = watch(v);
  await v.goto(`${pages.origin}/product#clicktrail=heatmap&token=${TOKEN}`);
  await v.waitForFunction(() => window.clicktrailOverlay && window.clicktrailOverlay.ready && window.clicktrailOverlay.painted > 0);
  assert.equal(await v.evaluate(() => window.clicktrailOverlay.error), '');
  const hot = await heatAt(v, 280, 330);
  assert.ok(hot > 150, `hot on the button: alpha ${hot}`);
  for (const [x, y] of [[860, 920], [1000, 200], [100, 1500], [640, 700]]) {
    assert.equal(await heatAt(v, x, y), 0, `cold at (${x}, ${y})`);
  }
  if (process.env.CT_DOCS_SCREENSHOTS === '1') {
    await v.evaluate(() => { window.clicktrailOverlay.state.scroll = true; window.clicktrailOverlay.repaint(); });
    await v.screenshot({ path: join(REPO, 'docs', 'overlay.png') });
    await v.evaluate(() => { window.clicktrailOverlay.state.scroll = false; window.clicktrailOverlay.repaint(); });
  }

  // Move the button by CSS: the hotspot follows it, the old place goes cold.
  const before = await v.evaluate(() => window.clicktrailOverlay.painted);
  await v.addStyleTag({ content: '#buy { left: 700px !important; top: 500px !important; }' });
  await v.waitForFunction((n) => window.clicktrailOverlay.painted > n, before);
  const moved = await heatAt(v, 780, 530);
  assert.ok(moved > 150, `hot on the moved button: alpha ${moved}`);
  assert.equal(await heatAt(v, 280, 330), 0, 'cold where the button was');
  // A resized window keeps it too.
  await v.setViewportSize({ width: 1100, height: 700 });
  await sleep(300);
  assert.ok((await heatAt(v, 780, 530)) > 150, 'hot on the button after a resize');

  // The scroll map: the average fold of the recorded page view (800 px of a 2000 px document,
  // 40 %) at 40 % of the document whatever this window is, and this window's own fold (700 px).
  const scroll = await (await fetch(`${collector.origin}/v1/query/scroll?site=test&path=/product&from=${new Date(Date.now() - 864e5).toISOString().slice(0, 10)}&to=${new Date().toISOString().slice(0, 10)}`,
    { headers: { authorization: `Bearer ${TOKEN}` } })).json();
  assert.equal(scroll.fold_pageviews, 1, JSON.stringify(scroll));
  assert.equal(Math.round(scroll.avg_fold_pct), 40, JSON.stringify(scroll));
  await v.evaluate(() => { window.clicktrailOverlay.state.scroll = true; window.clicktrailOverlay.repaint(); });
  const lineAt = (y, rgb) => v.evaluate(([y, rgb]) => {
    const px = document.getElementById('clicktrail-overlay').getContext('2d').getImageData(0, y - 2, 6, 5).data;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] > 200 && rgb.every((c, j) => Math.abs(px[i + j] - c) < 40)) return true;
    }
    return false;
  }, [y, rgb]);
  const docH = await v.evaluate(() => document.getElementById('clicktrail-overlay').height);
  assert.ok(await lineAt(Math.round(docH * scroll.avg_fold_pct / 100), [0, 170, 170]), 'average fold line');
  assert.ok(await lineAt(700, [255, 0, 255]), "this window's fold line");
  assert.equal(await lineAt(300, [0, 170, 170]), false, 'no fold line elsewhere');
  await v.close();

  // Heatmap mode without a token, and with a wrong one: nothing painted.
  for (const hash of ['#clicktrail=heatmap', '#clicktrail=heatmap&token=wrong-token']) {
    const n = await ctx.newPage();
    await n.goto(`${pages.origin}/product${hash}`);
    await sleep(1500);
    assert.equal(await n.evaluate(() => !!document.getElementById('clicktrail-overlay')), false, hash);
    assert.equal(await n.evaluate(() => !!document.getElementById('clicktrail-overlay-bar')), false, hash);
    await n.close();
  }
  await sleep(500);
  // Heatmap mode sends no events (the snippet stays off, the overlay only reads).
  assert.equal(posts.posts.length, sentBefore, 'events sent in heatmap mode');
  assert.deepEqual(seen.errors, []);
  assert.deepEqual(vseen.errors, []);
  await ctx.close();
});
