/*
 * clicktrail snippet: the browser side of clicktrail.
 *
 * Install (one tag, anywhere in the page):
 *   <script src="https://COLLECTOR/v1/snippet.js" data-site="KEY" defer></script>
 * Options, as attributes on that tag:
 *   data-site         site key configured in the collector (required)
 *   data-api          where to post events instead of {script origin}/v1/events: an absolute URL
 *                     or a path resolved against the page (a first-party proxy, e.g. /ct/events)
 *   data-no-text      never send the text of clicked elements
 *   data-cookieless   store nothing in the browser; send visitor "" (the collector derives one)
 *   data-respect-dnt="false"  send events even when Global Privacy Control or Do-Not-Track is
 *                     on (by default the snippet then sends nothing; the collector drops requests
 *                     with Sec-GPC: 1 or DNT: 1 too, unless privacy.honor_do_not_track = false)
 *   #clicktrail=heatmap&token=READ_TOKEN in the page URL: heatmap mode. The snippet sends nothing
 *                     and loads {script origin}/v1/overlay.js (src/overlay.js), which paints the
 *                     heatmap over the page
 * Custom events:
 *   clicktrail('event', 'signup', {plan: 'pro'})
 * Calls made before the snippet has loaded are kept by this stub and replayed:
 *   <script>window.clicktrail=window.clicktrail||function(){(clicktrail.q=clicktrail.q||[]).push(arguments)}</script>
 *
 * The tag is document.currentScript; where that is null or has no data-site (module scripts,
 * code run by a tag manager's loader), the first <script data-site> whose src contains
 * "clicktrail" or "snippet.js", else the first <script data-site> of the document.
 *
 * What it sends, as POST {collector}/v1/events (or data-api) with body {"site": KEY, "events": [...]}
 * (Content-Type text/plain, so browsers make no CORS preflight):
 *   pageview    initial load and each SPA navigation (pushState, replaceState, popstate,
 *               hashchange) that changes location.href; title, referrer (the previous URL on
 *               SPA navigation). The title is read at the navigation: an SPA should set
 *               document.title before calling pushState.
 *   click       page x/y, a short CSS selector and the trimmed text of the clicked link or
 *               button (other elements: no text; the collector keeps text_for_tags only);
 *               ex/ey: where in that element's box the click fell, 0..65535 from its left/top
 *               edge to its right/bottom edge; rage: true on the click that completes a burst
 *               (3 clicks within 1 s and 30 px); dead: true when nothing followed within 1 s (no
 *               DOM mutation, navigation, scroll or focus change; never on form fields); error:
 *               true when an uncaught error or unhandled rejection followed within 1 s. A click
 *               is held that second before it is queued (hidden or unloaded page: at once, not
 *               dead); its url, page view and time are those of the moment of the click.
 *   scroll      depth: the deepest percent of the document seen in this page view. Sent when
 *               the page view ends or the page is hidden, and only if it grew since the last
 *               one: take max(depth) per page view; from: the depth sent before (0 first),
 *               so depth - from is what the event adds
 *   engagement  duration_ms: the page view's engaged time so far, in ms (time between inputs
 *               while the page is visible, each gap counted up to 30 s). Sent at the same
 *               moments as scroll, and only if it grew since the last one: cumulative per page
 *               view, take max(duration_ms) per page view (like depth), never the sum; from:
 *               as for scroll, the time sent before
 *   custom      name and a flat props object (at most 2 KiB)
 * Every event carries id, ts, url, session, visitor, pv (the id of the page view it belongs to; a
 * page view's own id) and the viewport / document size.
 *
 * Rules this file keeps: no dependencies, no cookies, one global (window.clicktrail), no console
 * output, no exception ever reaches the page (every entry point goes through safe()), nothing
 * that blocks the main thread (network is async; unload uses sendBeacon).
 * The served file is dist/clicktrail.min.js, built by build.mjs (npm run build), and must stay
 * within 2560 bytes gzipped (check-size.sh).
 */
((w, d) => {
  const BATCH_SIZE = 20;           // flush when this many events are queued...
  const BATCH_MS = 2000;           // ...or this long after an event was queued
  const MAX_QUEUE = 500;           // past this the oldest events are dropped
  const MAX_TRIES = 8;             // attempts per batch (network error, 429, 5xx) before dropping it;
                                   // the backoff doubles from 1-2 s up to 64-128 s
  const SESSION_IDLE = 30 * 60000; // a session ends after 30 minutes without events or input
  const ACTIVE_IDLE = 30000;       // engagement: the user counts as active for 30 s after an input
  const RAGE_CLICKS = 3, RAGE_MS = 1000, RAGE_PX = 30;
  const HOLD_MS = 1000;            // a click waits this long for what it caused (dead, error)
  const nav = navigator, loc = location, now = Date.now, root = d.documentElement;

  // Wrap a function so that nothing it throws reaches the page.
  const safe = (fn) => (...args) => {
    try { return fn(...args); } catch (e) { /* never break the host page */ }
  };

  const stub = w.clicktrail;
  if (stub && stub.on) return; // the snippet is on the page twice: the first one wins

  let enabled, site, endpoint, noText, cookieless, visitor;

  // Public API. It exists even when tracking is off, so page code calling it never fails.
  const api = w.clicktrail = safe((cmd, name, props) => enabled && cmd == 'event' && custom(name, props));
  api.on = 1;

  // ---------------------------------------------------------------- helpers

  // 128 random bits as four decimal numbers joined by '-' (event, session and visitor ids).
  const rid = () => crypto.getRandomValues(new Uint32Array(4)).join('-');

  // A string cut to at most n bytes of UTF-8 (the collector's limits count bytes, and it
  // refuses an event with a field over its limit). encodeInto stops before the first code
  // point that does not fit, so a cut never splits a surrogate pair (a lone surrogate is not
  // valid JSON text for the collector).
  const utf8 = new TextEncoder();
  const cut = (s, n) => (s = String(s || ''), s.slice(0, utf8.encodeInto(s, new Uint8Array(n)).read));

  // Read (val undefined) or write our one key, "clicktrail", in localStorage or sessionStorage.
  // Storage can be missing or throw (privacy modes, sandboxed frames); in cookieless mode it is
  // never touched.
  const store = (kind, val) => {
    try {
      if (!cookieless) return val ? w[kind].setItem('clicktrail', val) : w[kind].getItem('clicktrail') || '';
    } catch (e) { /* no storage: no value */ }
    return '';
  };

  // Capture phase: the page stopping propagation cannot hide events from us. (None of the
  // events listened to can block scrolling, so "passive" would change nothing.)
  const on = (target, type, fn) => target.addEventListener(type, safe(fn), true);


  // ---------------------------------------------------------------- identity

  // Session: a random id and the time it was last used, in this tab's sessionStorage (only in
  // memory when storage is off or in cookieless mode), renewed after SESSION_IDLE unused.
  let sessionId, sessionUsed = 0;
  const session = (t) => {
    const saved = store('sessionStorage').split('.');
    if (saved[1]) [sessionId, sessionUsed] = saved;
    if (!sessionId || t - sessionUsed > SESSION_IDLE) sessionId = rid();
    sessionUsed = t;
    store('sessionStorage', sessionId + '.' + t);
    return sessionId;
  };

  // Visitor: a random id in localStorage. If it cannot be stored (or in cookieless mode) send ""
  // and let the collector derive one, rather than a new id on every page.
  const visitorId = () => store('localStorage') || (store('localStorage', rid()), store('localStorage'));

  // ---------------------------------------------------------------- events

  // An event as of now: the common fields plus `fields`. url defaults to the current location;
  // events that close a page view pass that page view's url (after pushState the location
  // already shows the next one). pv is the current page view's id.
  const event = (type, fields, url) => {
    const t = now();
    return {
      type, id: rid(), ts: t, url: cut(url || loc.href, 2048), session: session(t), visitor, pv,
      vw: w.innerWidth, vh: w.innerHeight, dw: root.scrollWidth, dh: root.scrollHeight, ...fields
    };
  };
  const send = (type, fields, url) => push(event(type, fields, url));

  // --- page views, scroll depth and engagement

  // The current page view: its url, its id, its scroll depth and engaged time (ms) so far, and
  // the depth and time last sent (each is sent again only when it grew).
  let pageUrl, pv, depth, depthSent, activeMs, activeSent;
  let lastInput = 0; // engagement: time of the last input (0: hidden)

  const startPage = (referrer) => {
    pageUrl = loc.href;
    depth = depthSent = activeMs = activeSent = 0;
    send('pageview', { id: pv = rid(), title: cut(d.title, 512), referrer: cut(referrer, 2048) });
    measure();
  };

  // Close the current page view (navigation), or report it so far (page hidden).
  const endPage = () => {
    measure();
    if (depth > depthSent) send('scroll', { from: depthSent, depth: depthSent = depth }, pageUrl);
    input(); // count the active time up to now (whole ms: differences of Date.now())
    if (activeMs > activeSent) send('engagement', { from: activeSent, duration_ms: activeSent = activeMs }, pageUrl);
  };

  // Called after anything that may change the URL; a new URL is a new page view (and the clicks
  // held are not dead).
  const navigated = () => {
    const from = pageUrl;
    if (loc.href != from) {
      alive();
      endPage();
      startPage(from);
    }
  };

  // Deepest percent of the document seen so far in this page view.
  const measure = () => {
    depth = Math.max(depth, Math.round(Math.min(1, (w.scrollY + w.innerHeight) / root.scrollHeight) * 100) || 0);
  };

  // The user did something, or the page was shown or hidden. Active time is the time between
  // inputs while the page is visible, each gap counted up to ACTIVE_IDLE (a user who does
  // nothing for longer is away from that moment on).
  const input = () => {
    const t = now();
    if (lastInput) activeMs += Math.min(t - lastInput, ACTIVE_IDLE);
    lastInput = d.hidden ? 0 : t;
  };

  // --- clicks

  let recent = []; // [time, x, y] of recent clicks, for rage detection
  let held = [];   // click events waiting HOLD_MS for what they cause

  // Something happened (DOM mutation, navigation, scroll, focus): the clicks held are not dead.
  const alive = () => held.map((c) => c.dead = false);

  // Mutations are watched only while clicks are held (a busy page pays nothing otherwise).
  const observer = new MutationObserver(alive);

  // Queue a held click (once: the timer, or the page leaving first).
  const release = (c) => {
    if (held.includes(c)) {
      held = held.filter((h) => h != c);
      held[0] || observer.disconnect();
      push(c);
    }
  };

  // 0..65535 from an element's start to its end (a box of size 0 gives 0 or 65535).
  const rel = (v, start, size) => Math.max(0, Math.min(65535, Math.round((v - start) / size * 65535))) || 0;

  const onClick = (e) => {
    navigated(); // a URL change no hook saw (history methods saved before we wrapped them)
    // an icon inside a button or link counts as the button or link; a click below <body> is on it
    const b = e.target.closest('a,button,[role=button]');
    let el = b || e.target;
    if (el == root) el = d.body;
    const x = Math.round(e.pageX), y = Math.round(e.pageY); // clientX/Y + scroll
    const box = el.getBoundingClientRect();

    // Rage click: this click and RAGE_CLICKS-1 others within RAGE_MS and RAGE_PX of it. Only the
    // click completing the burst is marked; the next burst starts from scratch.
    const t = now();
    recent = recent.filter((c) => t - c[0] < RAGE_MS && Math.hypot(c[1] - x, c[2] - y) <= RAGE_PX);
    const rage = recent.length + 1 >= RAGE_CLICKS;
    recent = rage ? [] : recent.concat([[t, x, y]]);

    // The event is made now (url, page view, time of the click) and queued HOLD_MS later, dead
    // unless something happened meanwhile (another click is not something). Form fields and
    // media answer by themselves (caret, toggle, list, controls), with no mutation: never dead.
    const c = event('click', {
      x, y, ex: rel(e.clientX, box.left, box.width), ey: rel(e.clientY, box.top, box.height),
      selector: cut(selector(el), 512), text: b ? text(el) : '', rage,
      dead: !/^(INPUT|SELECT|TEXTAREA|LABEL|OPTION|VIDEO|AUDIO)$/.test(el.tagName) && !el.isContentEditable, error: false
    });
    held.push(c);
    observer.observe(root, { childList: true, attributes: true, characterData: true, subtree: true });
    setTimeout(safe(() => release(c)), HOLD_MS);
  };

  // A short CSS selector that survives restyling: up to 5 levels of tag names, with
  // :nth-of-type when siblings share the tag, stopping at an element with an id, or <body>.
  const selector = (el) => {
    let sel = '';
    for (let level = 5; level-- && el != d.body && el.parentElement; el = el.parentElement) {
      if (/^[a-z][\w-]*$/i.test(el.id)) return '#' + el.id + sel;
      const same = [...el.parentElement.children].filter((c) => c.localName == el.localName);
      sel = '>' + el.localName + (same[1] ? ':nth-of-type(' + (same.indexOf(el) + 1) + ')' : '') + sel;
    }
    return sel.slice(1) || 'body';
  };

  // Visible text of the clicked element, whitespace collapsed. Never the value of a form field
  // (inputs, textareas, selects, editable areas), nothing for the whole page, nothing at all
  // with data-no-text.
  const text = (el) =>
    noText || /^(TEXTAREA|SELECT|BODY|HTML)$/.test(el.tagName) || el.isContentEditable ? ''
      : cut(el.textContent.replace(/\s+/g, ' ').trim() || el.getAttribute('aria-label'), 256);

  // --- custom events

  // Props keep flat values only (string, number, boolean, null); props over 2 KiB of UTF-8
  // JSON are dropped whole.
  const custom = (name, props) => {
    const o = {};
    for (const k in props) {
      const v = props[k];
      if (Object(v) !== v) o[k] = v; // undefined and symbols are then left out by JSON
    }
    if (name) send('custom', { name: cut(name, 128), props: utf8.encode(JSON.stringify(o)).length > 2048 ? {} : o });
  };

  // ---------------------------------------------------------------- transport
  //
  // Events wait in `queue`; `sending` is the batch whose fetch is in flight. A batch that fails
  // goes back to the front of the queue and is resent first, same events, same ids. One fetch
  // at a time keeps batches in order and one backoff for all.

  let queue = [], sending, tries = 0, timer, retryAt = 0;

  const push = (e) => {
    queue.push(e);
    queue.splice(0, queue.length - MAX_QUEUE); // drop the oldest past MAX_QUEUE
    queue.length < BATCH_SIZE ? later(BATCH_MS) : flush();
  };

  const later = (ms) => timer = timer || setTimeout(safe(() => { timer = 0; flush(); }), ms);

  const body = (events) => JSON.stringify({ site, events });

  const flush = () => {
    const wait = retryAt - now();
    if (sending || !queue[0]) return;
    if (wait > 0) return later(wait);
    const json = body(sending = queue.splice(0, BATCH_SIZE));
    // A string body goes out as text/plain;charset=UTF-8: a CORS "simple" request, no preflight.
    fetch(endpoint, {
      method: 'POST', body: json,
      keepalive: json.length < 6e4 // browsers cap keepalive bodies at 64 KiB in flight
    }).then((r) => sent(r.status, r.headers.get('Retry-After')), () => sent(0)); // sent() never throws
  };

  // Outcome of a fetch (status 0: network error, refused connection, or a response without
  // CORS headers). 2xx and 4xx but 429 settle the batch: a 200 may still list rejected events,
  // nothing a browser can fix. Network errors, 429 and 5xx are retried after Retry-After (in
  // seconds) when the collector sent one, else with exponential backoff and jitter.
  const sent = safe((status, retryAfter) => {
    retryAt = 0;
    if (status && status != 429 && status < 500) tries = 0;
    else {
      if (++tries < MAX_TRIES) queue = sending.concat(queue);
      else tries = 0; // give this batch up
      retryAt = now() + (retryAfter > 0 ? retryAfter * 1000 : (1 + Math.random()) * (500 << tries)); // 1-2 s, 2-4 s, ...
    }
    sending = 0;
    if (queue[0]) later(retryAt - now());
  });

  // The page is being hidden or unloaded: hand everything queued to sendBeacon, which the
  // browser delivers even after the page is gone (a batch in flight is left to its keepalive
  // fetch). What the browser refuses to take stays queued.
  const beacon = () => {
    while (queue[0] && nav.sendBeacon(endpoint, body(queue.slice(0, BATCH_SIZE)))) queue.splice(0, BATCH_SIZE);
  };

  // Hidden (tab or app switch, close) and pagehide (navigation away, close): report the page
  // view so far and send everything now; the browser may never run this page again.
  const leave = () => {
    alive();           // clicks held leave now, with what is known: not dead
    held.map(release);
    endPage();
    lastInput = 0; // the engagement clock stops until the page is shown or used again
    beacon();
  };

  // ---------------------------------------------------------------- start

  safe(() => {
    // Our tag. No currentScript: a module script, or code a tag manager's loader runs.
    let script = d.currentScript;
    if (!script || !script.dataset.site) {
      script = d.querySelector('script[data-site][src*=clicktrail],script[data-site][src*="snippet.js"]') ||
        d.querySelector('script[data-site]');
    }
    const data = script.dataset;
    const dnt = nav.doNotTrack == 1 || nav.globalPrivacyControl;
    site = data.site;
    // Heatmap mode (#clicktrail=heatmap&token=...): an analyst is looking; load the overlay
    // from the collector (it checks the token) and send nothing.
    if (/clicktrail=heatmap/.test(loc.hash)) {
      const s = d.createElement('script');
      s.src = new URL('/v1/overlay.js', script.src);
      s.dataset.site = site;
      return d.head.append(s);
    }
    if (!site || (dnt && data.respectDnt != 'false')) return;
    // data-api: a URL or a path, resolved against the page by fetch / sendBeacon
    endpoint = data.api || new URL('/v1/events', script.src);
    noText = 'noText' in data;
    cookieless = 'cookieless' in data;
    visitor = visitorId();
    enabled = 1;

    input();
    startPage(d.referrer);

    // SPA navigation: wrap the history methods (both return nothing; the page's own call, and
    // anything it throws, go through untouched) and listen for back/forward and hash changes.
    ['pushState', 'replaceState'].map((m) => {
      const orig = history[m];
      history[m] = (...args) => {
        orig.apply(history, args);
        safe(navigated)();
      };
    });
    on(w, 'popstate', navigated);
    on(w, 'hashchange', navigated);

    on(d, 'click', onClick);
    on(w, 'scroll', () => { measure(); input(); alive(); });
    on(d, 'focusin', alive);
    // Uncaught errors (not a resource's load error, which targets its element) and rejections.
    ['error', 'unhandledrejection'].map((t) => on(w, t, (e) => e.target == w && held.map((c) => c.error = true)));
    // Navigation API (where there is one): a link's navigation has started, however slow the next page.
    w.navigation && on(w.navigation, 'navigate', alive);
    ['pointerdown', 'pointermove', 'keydown'].map((t) => on(d, t, input));
    on(d, 'visibilitychange', () => d.hidden ? leave() : input());
    on(w, 'pagehide', leave);
    on(w, 'pageshow', (e) => { // restored from the back/forward cache: a new page view
      if (e.persisted) { input(); startPage(d.referrer); }
    });

    // Replay the calls queued by the stub before the snippet loaded.
    ((stub && stub.q) || []).forEach((args) => api(...args));
  })();
})(window, document);
