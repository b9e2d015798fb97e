// The test page: a small "shop" that embeds the snippet like a customer would, from another
// origin than the collector. It records, before the snippet loads, the window's own property
// names (to check the snippet adds one global) and counts its own errors and unhandled
// rejections; its own JS (the #buy counter, the #next SPA navigation) must keep working.

export function shopPage({ snippetSrc, site = 'test', attrs = '', title = 'Shop' }) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${title}</title>
<link rel="icon" href="data:,">
<style>
  body { margin: 0; font: 16px/1.4 sans-serif; }
  header { height: 120px; }
  button { margin: 8px; padding: 10px 20px; }
  #dead { width: 200px; height: 100px; background: #ddd; }
  #tall { height: 3000px; position: relative; background: linear-gradient(#eef, #fee); }
  #far { position: absolute; top: 2000px; left: 300px; }
</style>
<script>
  window.__globals = Object.keys(window);
  window.__errors = 0;
  window.__rejections = 0;
  addEventListener('error', function () { window.__errors++; });
  addEventListener('unhandledrejection', function () { window.__rejections++; });
  // The queue stub from the snippet's docs: calls before the snippet loads are replayed.
  window.clicktrail = window.clicktrail || function () { (clicktrail.q = clicktrail.q || []).push(arguments); };
  clicktrail('event', 'early', { queued: true });
</script>
<script src="${snippetSrc}" data-site="${site}" ${attrs} defer></script>
</head>
<body>
<header>
  <h1>Shop</h1>
  <button id="buy">Buy now</button> <span id="count">0</span>
  <button id="next">Next step</button>
</header>
<main>
  <nav><button>One</button><button class="x"> Two <b>items</b> </button></nav>
  <form onsubmit="return false"><input id="email" type="text"> <textarea id="notes">draft</textarea></form>
  <div id="dead">nothing here</div>
  <div id="tall"><button id="far">Far away</button></div>
</main>
<script>
  var __count = 0;
  document.getElementById('buy').addEventListener('click', function () {
    document.getElementById('count').textContent = String(++__count);
  });
  document.getElementById('next').addEventListener('click', function () {
    document.title = 'Step 2';
    history.pushState({ step: 2 }, '', '/app/step2');
  });
</script>
</body>
</html>
`;
}

// A page for the click tests: elements at known places, each with a known effect (or none).
// `tag` is the snippet's <script> tag, or whatever loads it; `head` goes before it.
export function clicksPage({ tag, head = '', title = 'Clicks' }) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${title}</title>
<link rel="icon" href="data:,">
<style>
  body { margin: 0; font: 16px/1.4 sans-serif; }
  #box { position: absolute; left: 100px; top: 150px; width: 200px; height: 100px;
         margin: 0; padding: 0; border: 0; box-sizing: border-box; background: #cde; }
  #box b { position: absolute; left: 140px; top: 60px; width: 40px; height: 30px; background: #89a; }
  #row { position: absolute; left: 400px; top: 150px; }
  #row > * { display: block; width: 160px; height: 40px; margin: 0 0 10px; }
  #noop { background: #eee; }
</style>
${head}
${tag}
</head>
<body>
<button id="box"><b>icon</b></button>
<div id="row">
  <div id="noop">does nothing</div>
  <button id="change">change</button> <span id="out">0</span>
  <button id="boom">throws</button>
  <button id="reject">rejects</button>
  <button id="go">go on</button>
  <input id="field" type="text">
  <a id="slow" href="/slow">a slow next page</a>
</div>
<script>
  var n = 0;
  function on(id, fn) { document.getElementById(id).addEventListener('click', fn); }
  on('change', function () { document.getElementById('out').textContent = String(++n); });
  on('boom', function () { throw new Error('boom'); });
  on('reject', function () { Promise.reject(new Error('rejected')); });
  on('go', function () { history.pushState({}, '', '/other/page'); });
</script>
</body>
</html>
`;
}
