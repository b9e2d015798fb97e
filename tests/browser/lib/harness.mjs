// Helpers for the browser tests: a private ClickHouse, the real collector, small HTTP servers
// for test pages, and headless Chromium driven by playwright-core.
//
// Everything listens on 127.0.0.1 only, every wait has a deadline, and everything started here
// is stopped by cleanup() (the tests call it in `after`; scripts/test-browser.sh also stops
// ClickHouse and the collector by the pid files left in the run directory, in case node dies).
//
// Environment:
//   CT_COLLECTOR_BIN   collector binary (default: <repo>/target/debug/clicktrail)
//   CT_BROWSER_TMP   run directory (default: a fresh mkdtemp); logs of every server land here
//   CHROMIUM         browser executable (default: /usr/bin/chromium)

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, existsSync, readFileSync, openSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const SNIPPET_FILE = join(REPO, 'snippet', 'dist', 'clicktrail.min.js');
export const BIN = process.env.CT_COLLECTOR_BIN || join(REPO, 'target', 'debug', 'clicktrail');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const run = promisify(execFile);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const cleanups = [];
/** Stop everything started so far, newest first. Safe to call twice. */
export async function cleanup() {
  while (cleanups.length) {
    try { await cleanups.pop()(); } catch (e) { console.error('cleanup:', e.message); }
  }
}

/** The run directory, or its subdirectory `sub` (a test file's own servers, apart from another's). */
export function runDir(sub = '') {
  const dir = join(process.env.CT_BROWSER_TMP || mkdtempSync(join(tmpdir(), 'clicktrail-browser-')), sub);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createNetServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
  });
}

/** Poll fn() until it returns a truthy value or the deadline passes (then throw, with the last value). */
export async function waitFor(what, fn, { timeout = 15000, interval = 200 } = {}) {
  const end = Date.now() + timeout;
  let last, err;
  for (;;) {
    try { last = await fn(); err = undefined; if (last) return last; } catch (e) { err = e; }
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}` +
        (err ? `: ${err.message}` : `; last value: ${JSON.stringify(last)}`));
    }
    await sleep(interval);
  }
}

async function httpOk(url, timeoutMs = 2000) {
  const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return r.status === 200;
}

// ------------------------------------------------------------------ ClickHouse

/** Start a private ClickHouse (scripts/clickhouse.sh) in dir; returns {http, query, rows}. */
export async function startClickHouse(dir) {
  const [http, tcp] = [await freePort(), await freePort()];
  const chDir = join(dir, 'clickhouse');
  cleanups.push(() => run(join(REPO, 'scripts', 'clickhouse.sh'), ['stop', chDir], { timeout: 30000 }));
  await run(join(REPO, 'scripts', 'clickhouse.sh'), ['start', chDir, String(http), String(tcp)], { timeout: 90000 });
  const query = async (sql) => {
    const r = await fetch(`http://127.0.0.1:${http}/?query=${encodeURIComponent(sql)}`, {
      signal: AbortSignal.timeout(10000),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`ClickHouse ${r.status}: ${text.slice(0, 500)}`);
    return text;
  };
  const rows = async (sql) => (await query(`${sql} FORMAT JSONEachRow`))
    .split('\n').filter(Boolean).map((l) => JSON.parse(l));
  return { http, query, rows };
}

// ------------------------------------------------------------------ collector

/**
 * Run the real collector: write a config, `migrate`, `serve`, wait for /readyz.
 * sites: [{key, origins, read_tokens?}]; port: where it listens (default: a free one). Returns {origin, port, log}.
 */
export async function startCollector(dir, { chHttp, sites, port }) {
  if (!existsSync(BIN)) {
    throw new Error(`collector binary ${BIN} not found: build it first (cargo build), or set CT_COLLECTOR_BIN`);
  }
  port = port || await freePort();
  const cdir = join(dir, 'collector');
  mkdirSync(join(cdir, 'data'), { recursive: true });
  const config = join(cdir, 'clicktrail.toml');
  writeFileSync(config, [
    `listen = "127.0.0.1:${port}"`,
    `data_dir = "${join(cdir, 'data')}"`,
    '[clickhouse]',
    `url = "http://127.0.0.1:${chHttp}"`,
    '[sink]',
    'batch_age = "200ms"',
    '[http]',
    `snippet_file = "${SNIPPET_FILE}"`,
    // Headless Chromium says HeadlessChrome: a bot, dropped by default. Stored, flagged.
    '[bots]',
    'action = "flag"',
    ...sites.flatMap((s) => ['[[sites]]', `key = "${s.key}"`, `origins = ${JSON.stringify(s.origins)}`,
      ...(s.read_tokens ? [`read_tokens = ${JSON.stringify(s.read_tokens)}`] : [])]),
    '',
  ].join('\n'));
  const log = join(cdir, 'collector.log');
  // The config file is the whole configuration: no CLICKTRAIL_* override from this shell.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CLICKTRAIL_')));
  env.RUST_LOG = process.env.RUST_LOG || 'info';

  try {
    // No collector runs yet: nothing can be stamped before 0006's cutover, so no insert wait.
    await run(BIN, ['migrate', '--config', config, '--no-insert-wait'], { timeout: 60000, env });
  } catch (e) {
    throw new Error(`clicktrail migrate failed: ${e.message}\n${e.stdout || ''}${e.stderr || ''}`);
  }

  const out = openSync(log, 'a');
  const child = spawn(BIN, ['serve', '--config', config], { stdio: ['ignore', out, out], env });
  writeFileSync(join(dir, 'collector.pid'), String(child.pid));
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });
  cleanups.push(async () => {
    if (exited) return;
    child.kill('SIGTERM');
    const deadline = Date.now() + 10000;
    while (!exited && Date.now() < deadline) await sleep(50);
    if (!exited) child.kill('SIGKILL');
  });

  const origin = `http://127.0.0.1:${port}`;
  await waitFor('collector /readyz', async () => {
    if (exited) {
      throw new Error(`collector exited (${JSON.stringify(exited)}); log ${log}:\n${tail(log)}`);
    }
    return httpOk(`${origin}/readyz`);
  }, { timeout: 30000 }).catch((e) => { throw new Error(`${e.message}\n--- ${log}:\n${tail(log)}`); });
  return { origin, port, log };
}

export function tail(file, lines = 30) {
  try { return readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n'); } catch { return ''; }
}

// ------------------------------------------------------------------ HTTP servers

/**
 * An HTTP server on 127.0.0.1. handler(req, res, body) gets the whole request body as a string.
 * Returns {origin, port, server, requests, close()}; requests lists {method, url, headers, body, at}.
 */
export async function startServer(handler, port = 0) {
  const requests = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { body += c; });
    req.on('end', async () => {
      requests.push({ method: req.method, url: req.url, headers: req.headers, body, at: Date.now() });
      try { await handler(req, res, body); } catch (e) { res.statusCode = 500; res.end(String(e)); }
    });
  });
  await new Promise((res, rej) => { server.on('error', rej); server.listen(port, '127.0.0.1', res); });
  const p = server.address().port;
  let closed = false;
  const close = () => new Promise((res) => {
    if (closed) return res();
    closed = true;
    server.close(() => res());
    server.closeAllConnections();
  });
  cleanups.push(close);
  return { origin: `http://127.0.0.1:${p}`, port: p, server, requests, close };
}

export function sendHtml(res, html) {
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(html);
}

// ------------------------------------------------------------------ browser

export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: apt-get install -y chromium`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 30000,
  });
  cleanups.push(() => browser.close());
  return browser;
}

/**
 * Record what a page reports: uncaught exceptions (pageerror), console messages, and the
 * page's own unhandled promise rejections (the test pages count them in window.__rejections).
 */
export function watch(page) {
  const seen = { errors: [], console: [] };
  page.on('pageerror', (e) => seen.errors.push(String(e && e.stack || e)));
  page.on('console', (m) => seen.console.push({ type: m.type(), text: m.text() }));
  page.setDefaultTimeout(10000);
  page.setDefaultNavigationTimeout(15000);
  return seen;
}

/** The snippet's session id for this tab (it keeps "id.lastUse" in sessionStorage). */
export async function sessionOf(page) {
  return page.evaluate(() => (sessionStorage.getItem('clicktrail') || '').split('.')[0]);
}

/** Wait until the snippet has started on the page. */
export async function snippetLoaded(page) {
  await page.waitForFunction(() => window.clicktrail && window.clicktrail.on === 1, null, { timeout: 10000 });
}

/**
 * Record every POST the pages of a browser context make to a URL ending in `path` (fetch and
 * sendBeacon alike), as the browser sent it: request interception reads the body, it does not
 * alter or hold the request. Returns {posts, events(), answers}: posts are {url, json}; events()
 * flattens their events; answers are the statuses and bodies of the responses read back.
 */
export function capturePosts(context, path = '/v1/events') {
  const posts = [], answers = [];
  context.on('request', (r) => {
    if (r.method() === 'POST' && new URL(r.url()).pathname.endsWith(path)) {
      posts.push({ url: r.url(), json: JSON.parse(r.postData()) });
    }
  });
  context.on('response', async (r) => {
    const req = r.request();
    if (req.method() === 'POST' && new URL(r.url()).pathname.endsWith(path)) {
      answers.push({ status: r.status(), body: await r.text().catch(() => '') });
    }
  });
  return { posts, answers, events: () => posts.flatMap((p) => p.json.events) };
}
