// Build dist/clicktrail.min.js from src/clicktrail.js with the pinned esbuild (package.json).
//   node build.mjs          write dist/clicktrail.min.js
//   node build.mjs --check  fail if the committed dist file differs from a fresh build
// The collector embeds dist/clicktrail.min.js at compile time, so the Rust build needs no Node:
// rebuild and commit dist/ whenever src/ changes (the browser tests run --check).
import { transform } from 'esbuild';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// The overlay (src/overlay.js → dist/overlay.min.js) is loaded by the snippet only in heatmap
// mode and is outside the snippet's size budget.
let stale = false;
for (const name of ['clicktrail', 'overlay']) {
const src = join(here, 'src', name + '.js');
const out = join(here, 'dist', name + '.min.js');

const { code } = await transform(readFileSync(src, 'utf8'), {
  loader: 'js',
  minify: true,
  // Syntax up to ES2018 stays as written. APIs used need Chrome 74+, Firefox 66+, Safari 14.1+
  // (TextEncoder.encodeInto); on older browsers the snippet does nothing, and breaks nothing.
  target: 'es2018',
  legalComments: 'none',
  charset: 'utf8',
});

if (process.argv.includes('--check')) {
  let committed = '';
  try { committed = readFileSync(out, 'utf8'); } catch { /* missing counts as stale */ }
  if (committed !== code) {
    console.error(`${out} is stale: run "node build.mjs" in snippet/ and commit the result`);
    stale = true;
    continue;
  }
  console.log(`${out} is up to date (${code.length} bytes)`);
} else {
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, code);
  console.log(`wrote ${out} (${code.length} bytes)`);
}
}
if (stale) process.exit(1);
