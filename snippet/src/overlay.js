/*
 * clicktrail overlay: the heatmap painted on the live page, for analysts.
 *
 * Loaded by the snippet (never by itself) when the page URL's fragment carries
 *   #clicktrail=heatmap&token=READ_TOKEN[&kind=click|rage|dead|error][&from=YYYY-MM-DD&to=YYYY-MM-DD]
 *   [&device=mobile|tablet|desktop][&opacity=0..1][&scroll=1]
 * Served at {collector}/v1/overlay.js, outside the snippet's size budget. The snippet sends no
 * events in this mode, and neither does this script: it only reads the query API with the
 * token (Authorization: Bearer), and paints nothing without a token the API accepts.
 *
 * What it paints, on a canvas over the whole document (pointer-events: none):
 *   - element clicks placed on the elements as they are now: each element of the elements
 *     report is found by its selector, and its 4 x 4 grid of click positions (the report's
 *     `cells`) is laid over its current box, so a resized window or a moved button keeps its
 *     hotspots; rage / dead / error modes put the element's count at its hotspot;
 *   - page-coordinate cells of the heatmap report (100 columns of the document width, 20 px
 *     bands) as the fallback, scaled down by the share of clicks already placed on found
 *     elements (clicks on elements that no longer exist, or were never identified);
 *   - with scroll=1, the scroll map: a strip on the right edge, the share of page views that
 *     reached each depth (5 % steps), the average fold of the range's page views (their first
 *     screen, as a share of the document: the report's avg_fold_pct) and this viewport's fold.
 * A toolbar (top right) switches mode, device, dates, opacity and the scroll map.
 * window.clicktrailOverlay = {ready, repaint(), state} lets tests and tools drive it.
 */
((w, d) => {
  if (w.clicktrailOverlay) return;
  const me = d.currentScript;
  const api = new URL('/v1/', me ? me.src : location.href);
  const site = me && me.dataset.site;
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get('token');
  const o = w.clicktrailOverlay = { ready: false, painted: 0, error: '' };
  if (hash.get('clicktrail') != 'heatmap' || !token || !site) return;

  const day = (t) => new Date(t).toISOString().slice(0, 10);
  const deviceOf = (vw) => (vw < 768 ? 'mobile' : vw < 1024 ? 'tablet' : 'desktop');
  const state = o.state = {
    kind: hash.get('kind') || 'click',
    device: hash.get('device') || deviceOf(w.innerWidth),
    from: hash.get('from') || day(Date.now() - 29 * 864e5),
    to: hash.get('to') || day(Date.now()),
    opacity: +(hash.get('opacity') || 0.7),
    scroll: hash.get('scroll') == '1',
  };
  let data = null;

  const get = async (report, extra) => {
    const q = new URLSearchParams({ site, path: location.pathname, from: state.from, to: state.to, ...extra });
    if (state.device) q.set('device', state.device);
    const r = await fetch(new URL('query/' + report + '?' + q, api), { headers: { Authorization: 'Bearer ' + token } });
    if (!r.ok) throw new Error(report + ': ' + r.status);
    return r.json();
  };

  // ------------------------------------------------------------------ canvas and toolbar
  const canvas = d.createElement('canvas');
  canvas.id = 'clicktrail-overlay';
  canvas.style.cssText = 'position:absolute;left:0;top:0;pointer-events:none;z-index:2147483646';
  const bar = d.createElement('div');
  bar.id = 'clicktrail-overlay-bar';
  bar.style.cssText = 'position:fixed;top:8px;right:8px;z-index:2147483647;font:12px system-ui,sans-serif;' +
    'background:#111c;color:#fff;padding:6px 8px;border-radius:6px;display:flex;gap:6px;align-items:center';
  const control = (html, key, parse) => {
    const label = d.createElement('label');
    label.innerHTML = html;
    const input = label.lastElementChild;
    input.value = state[key];
    if (input.type == 'checkbox') input.checked = state[key];
    input.addEventListener('change', () => {
      state[key] = input.type == 'checkbox' ? input.checked : parse ? parse(input.value) : input.value;
      key == 'opacity' || key == 'scroll' ? paint() : load();
    });
    bar.append(label);
  };
  control('mode <select><option>click<option>rage<option>dead<option>error</select>', 'kind');
  control('device <select><option value="">all<option>mobile<option>tablet<option>desktop</select>', 'device');
  control('from <input type=date>', 'from');
  control('to <input type=date>', 'to');
  control('opacity <input type=range min=0.1 max=1 step=0.05>', 'opacity', Number);
  control('scroll <input type=checkbox>', 'scroll');
  const status = d.createElement('span');
  bar.append(status);

  // ------------------------------------------------------------------ painting
  // Heat is accumulated as alpha of soft black dots on a shadow canvas, then colored by a ramp
  // blue → cyan → green → yellow → red (the PNG endpoint's ramp).
  const RADIUS = 24;
  const ramp = (t) => {
    const stops = [[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]];
    const x = Math.min(3.999, t * 4), i = Math.floor(x), f = x - i;
    return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
  };

  const points = () => {
    const root = d.documentElement, dw = root.scrollWidth;
    const pts = [];
    let placed = 0;
    const count = (e) => (state.kind == 'click' ? e.clicks : e[state.kind + '_clicks']) || 0;
    for (const e of data.elements.elements) {
      const n = count(e);
      if (!n) continue;
      let el;
      try { el = d.querySelector(e.selector); } catch (err) { el = null; }
      if (!el) continue;
      const r = el.getBoundingClientRect();
      if (!r.width && !r.height) continue;
      const left = r.left + w.scrollX, top = r.top + w.scrollY;
      placed += n;
      const known = e.clicks - e.unknown_position;
      if (state.kind == 'click' && known > 0) {
        e.cells.forEach((c, i) => c && pts.push([left + ((i % 4) + 0.5) / 4 * r.width, top + (Math.floor(i / 4) + 0.5) / 4 * r.height, c]));
        if (e.unknown_position) pts.push([left + r.width / 2, top + r.height / 2, e.unknown_position]);
      } else {
        const h = e.hotspot || { x: 0.5, y: 0.5 };
        pts.push([left + h.x * r.width, top + h.y * r.height, n]);
      }
    }
    // Fallback: page cells for what could not be placed on an element.
    const hm = data.heatmap;
    const rest = hm.total ? Math.max(0, hm.total - placed) / hm.total : 0;
    if (rest > 0) {
      for (const c of hm.cells) pts.push([(c.x + 0.5) * dw / 100, c.y * 20 + 10, c.count * rest]);
    }
    return pts;
  };

  const paint = () => {
    if (!data) return;
    const root = d.documentElement;
    const W = root.scrollWidth, H = root.scrollHeight;
    canvas.width = W; canvas.height = H;
    canvas.style.width = W + 'px'; canvas.style.height = H + 'px';
    canvas.style.opacity = state.opacity;
    const g = canvas.getContext('2d', { willReadFrequently: true });
    g.clearRect(0, 0, W, H);
    const pts = points();
    const max = Math.max(0, ...pts.map((p) => p[2]));
    for (const [x, y, n] of pts) {
      const a = Math.log(1 + n) / Math.log(1 + max);
      const grad = g.createRadialGradient(x, y, 0, x, y, RADIUS);
      grad.addColorStop(0, 'rgba(0,0,0,' + a + ')');
      grad.addColorStop(1, 'rgba(0,0,0,0)');
      g.fillStyle = grad;
      g.fillRect(x - RADIUS, y - RADIUS, 2 * RADIUS, 2 * RADIUS);
    }
    if (pts.length) {
      const img = g.getImageData(0, 0, W, H), px = img.data;
      for (let i = 3; i < px.length; i += 4) {
        const a = px[i];
        if (!a) continue;
        const [r, gg, b] = ramp(a / 255);
        px[i - 3] = r; px[i - 2] = gg; px[i - 1] = b; px[i] = 80 + a * 175 / 255;
      }
      g.putImageData(img, 0, 0);
    }
    if (state.scroll) scrollMap(g, W, H);
    o.painted++;
    status.textContent = data.heatmap.total + ' ' + state.kind + ' · ' + data.scroll.pageviews + ' views';
  };

  // Share of page views reaching each depth as a strip on the right edge, the average fold of
  // the page views in the range (a share of the document, so it lands on the same content
  // whatever this window's size) and this viewport's fold.
  const scrollMap = (g, W, H) => {
    const depths = data.scroll.depths;
    const strip = 36;
    for (let i = 0; i < depths.length; i++) {
      const y0 = depths[i].depth / 100 * H, y1 = (depths[i + 1] ? depths[i + 1].depth : 100) / 100 * H;
      const [r, gg, b] = ramp(depths[i].share);
      g.fillStyle = 'rgba(' + r + ',' + gg + ',' + b + ',0.85)';
      g.fillRect(W - strip, y0, strip, Math.max(1, y1 - y0));
      if (depths[i].depth % 25 == 0) {
        g.fillStyle = '#000';
        g.font = '11px sans-serif';
        g.fillText(Math.round(depths[i].share * 100) + '%', W - strip + 2, y0 + 12);
      }
    }
    // Labels side by side: the two folds are often close, or the same line.
    const line = (y, colour, label, x) => {
      g.strokeStyle = g.fillStyle = colour;
      g.lineWidth = 2; // on an integer y: two whole pixel rows, not two half-covered ones
      g.setLineDash([6, 4]);
      g.beginPath(); g.moveTo(0, y); g.lineTo(W, y); g.stroke();
      g.setLineDash([]);
      g.font = '12px sans-serif';
      g.fillText(label, x, y - 4);
    };
    line(w.innerHeight, '#f0f', 'fold (this window)', 4);
    const avg = data.scroll.avg_fold_pct;
    if (avg != null) line(Math.round(avg / 100 * H), '#0aa', 'average fold ' + Math.round(avg) + '%', 140);
  };

  const load = async () => {
    try {
      const [heatmap, elements, scroll] = await Promise.all([
        get('heatmap', { kind: state.kind }), get('elements', {}), get('scroll', {}),
      ]);
      data = { heatmap, elements, scroll };
      o.error = '';
      if (!canvas.isConnected) d.body.append(canvas, bar);
      paint();
      o.ready = true;
    } catch (e) {
      // A bad token (401/403) paints nothing at all.
      o.error = String(e.message || e);
      data = null;
      canvas.remove();
      o.ready = true;
    }
  };

  // The layout moves (resize, restyling, content): repaint where the elements are now.
  let pending = 0;
  const later = () => { pending = pending || requestAnimationFrame(() => { pending = 0; paint(); }); };
  w.addEventListener('resize', later);
  new MutationObserver((list) => list.some((m) => !bar.contains(m.target) && m.target != canvas) && later())
    .observe(d.documentElement, { childList: true, attributes: true, subtree: true, characterData: true });
  o.repaint = paint;
  load();
})(window, document);
