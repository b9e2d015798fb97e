#!/usr/bin/env bash
# Browser tests of the JS snippet (snippet/), against the real collector and a real ClickHouse.
#   scripts/test-browser.sh
# Expects target/debug/clicktrail to exist (run `cargo build` first; this script never builds
# Rust). Installs what is missing: Debian's chromium (apt), the pinned npm
# packages of snippet/ and tests/browser/ (npm ci). Then:
#   1. snippet/dist/clicktrail.min.js must match a fresh build of snippet/src (node build.mjs --check)
#   2. it must be at most 2560 bytes gzipped (snippet/check-size.sh)
#   3. node --test tests/browser/*.test.mjs (headless Chromium; servers on 127.0.0.1 only)
# Everything started here is stopped on exit, and the whole run is bounded in time.
# Env: CT_COLLECTOR_BIN (collector binary), CT_BROWSER_TIMEOUT (seconds, default 900),
#      CT_KEEP_TMP=1 keeps the run directory (logs of ClickHouse and the collector).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
export CT_COLLECTOR_BIN="${CT_COLLECTOR_BIN:-$here/target/debug/clicktrail}"
limit="${CT_BROWSER_TIMEOUT:-900}"

say() { echo "test-browser: $*"; }

if [ ! -x "$CT_COLLECTOR_BIN" ]; then
  say "collector binary $CT_COLLECTOR_BIN not found: run 'cargo build' first" >&2
  exit 1
fi
command -v node >/dev/null && command -v npm >/dev/null || { say "node and npm are required" >&2; exit 1; }

# --- system packages (ClickHouse: whatever scripts/deps.sh found or installed)
"$here/scripts/clickhouse.sh" locate >/dev/null || exit 1
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- npm packages, exactly as locked; skipped when node_modules already matches the lock
npm_ci() {
  local dir="$1"
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.ct-lock"; then
    say "npm ci in ${dir#"$here"/}"
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$dir/node_modules/.ct-lock"
  fi
}
npm_ci "$here/snippet"
npm_ci "$here/tests/browser"

# --- the built snippet is current and within budget
node "$here/snippet/build.mjs" --check
"$here/snippet/check-size.sh"

# --- the browser tests
tmp="$(mktemp -d "${TMPDIR:-/tmp}/clicktrail-browser.XXXXXX")"
export CT_BROWSER_TMP="$tmp"
node_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # node (and the browser it started) run in their own process group: end that group by id.
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM -- "-$node_pid" 2>/dev/null || true
    sleep 2
    kill -KILL -- "-$node_pid" 2>/dev/null || true
  fi
  # What the tests started, in case node could not stop it: each collector by its pid file,
  # each ClickHouse through its script (a test file may keep its servers in a subdirectory).
  local d
  for d in "$tmp" "$tmp"/*/; do
    d="${d%/}"
    if [ -f "$d/collector.pid" ]; then
      kill -TERM "$(cat "$d/collector.pid")" 2>/dev/null || true
    fi
    if [ -d "$d/clickhouse" ]; then
      "$here/scripts/clickhouse.sh" stop "$d/clickhouse" >/dev/null 2>&1 || true
    fi
  done
  if [ "$rc" -ne 0 ] || [ "${CT_KEEP_TMP:-}" = 1 ]; then
    say "run directory kept: $tmp (collector and ClickHouse logs)"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "node --test (collector: $CT_COLLECTOR_BIN, run directory: $tmp)"
cd "$here/tests/browser"
setsid node --test --test-concurrency=1 --test-timeout=300000 ./*.test.mjs &
node_pid=$!
for ((waited = 0; waited < limit; waited++)); do
  kill -0 "$node_pid" 2>/dev/null || break
  sleep 1
done
if kill -0 "$node_pid" 2>/dev/null; then
  say "browser tests still running after ${limit}s: stopping them" >&2
  exit 1 # cleanup ends the process group
fi
rc=0
wait "$node_pid" || rc=$?
node_pid=""
[ "$rc" -eq 0 ] && say "ok" || say "FAILED (exit $rc)" >&2
exit "$rc"
