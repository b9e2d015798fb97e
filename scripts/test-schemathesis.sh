#!/usr/bin/env bash
# The public HTTP API, tested by a tool we did not write: schemathesis generates requests from
# docs/openapi.yaml (valid ones, and invalid ones) and sends them to the real collector, with
# a real ClickHouse 18.16 behind it, and fails on any answer the document does not describe:
#   - not_a_server_error            no 5xx, except the 503s the document lists
#   - status_code_conformance       every status is documented for its operation
#   - response_schema_conformance   every JSON body matches its schema
#   - content_type_conformance      every Content-Type is the documented one
#   - response_headers_conformance  required headers (X-Request-Id, Retry-After, ETag, ...) are there
#   - valid_pageviews_are_accepted  (ours, below) a page view valid by the document is not rejected
# Also fails if the collector dies or logs a panic during the run.
#   scripts/test-schemathesis.sh
# Expects target/debug/clicktrail (run `cargo build` first; this script never builds Rust) and
# schemathesis in var/venv (scripts/deps.sh --test). Servers listen on 127.0.0.1 only, on free
# ports; everything started here is stopped on exit.
# Env: CT_COLLECTOR_BIN (collector binary), CT_SCHEMATHESIS_EXAMPLES (per operation, default 50),
#      CT_SCHEMATHESIS_TIMEOUT (seconds for the whole run, default 600), CT_SCHEMATHESIS_SEED
#      (replay a run), CT_KEEP_TMP=1 keeps the run directory (logs, JUnit report).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${CT_COLLECTOR_BIN:-$here/target/debug/clicktrail}"
examples="${CT_SCHEMATHESIS_EXAMPLES:-50}"
limit="${CT_SCHEMATHESIS_TIMEOUT:-600}"
spec="$here/docs/openapi.yaml"

say() { echo "test-schemathesis: $*"; }

if [ ! -x "$bin" ]; then
  say "collector binary $bin not found: run 'cargo build' first" >&2
  exit 1
fi
st="$here/var/venv/bin/schemathesis"
if [ ! -x "$st" ]; then
  say "schemathesis not found in var/venv: run scripts/deps.sh --test" >&2
  exit 1
fi
"$here/scripts/clickhouse.sh" locate >/dev/null || exit 1

tmp="$(mktemp -d "${TMPDIR:-/tmp}/clicktrail-schemathesis.XXXXXX")"
collector_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$collector_pid" ] && kill -0 "$collector_pid" 2>/dev/null; then
    kill -TERM "$collector_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$collector_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$collector_pid" 2>/dev/null || true
    wait "$collector_pid" 2>/dev/null || true
  fi
  "$here/scripts/clickhouse.sh" stop "$tmp/clickhouse" >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ] || [ "${CT_KEEP_TMP:-}" = 1 ]; then
    say "run directory kept: $tmp (collector.log, clickhouse/log, report/)"
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$here/var/venv/bin/python3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ch_http="$(free_port)"; ch_tcp="$(free_port)"; port="$(free_port)"
while [ "$ch_tcp" = "$ch_http" ]; do ch_tcp="$(free_port)"; done
while [ "$port" = "$ch_http" ] || [ "$port" = "$ch_tcp" ]; do port="$(free_port)"; done

# --- ClickHouse and the schema
"$here/scripts/clickhouse.sh" start "$tmp/clickhouse" "$ch_http" "$ch_tcp" >/dev/null

# A site that takes any origin, so that valid posts are accepted whatever schemathesis sends.
config="$tmp/clicktrail.toml"
cat > "$config" <<TOML
listen = "127.0.0.1:$port"
data_dir = "$tmp/data"

[log]
level = "warn"

[clickhouse]
url = "http://127.0.0.1:$ch_http"

[compactor]
enabled = false

[[sites]]
key = "demo"
origins = ["*"]
read_tokens = ["schemathesis-read-token"]

[[sites]]
key = "other"
origins = ["*"]
read_tokens = ["other-site-read-token"]
TOML
# The collector reads only this file and these variables; none of the caller's CLICKTRAIL_*.
unset "${!CLICKTRAIL_@}" 2>/dev/null || true
"$bin" --config "$config" migrate --no-insert-wait >"$tmp/migrate.log" 2>&1 || { cat "$tmp/migrate.log" >&2; exit 1; }

# --- the collector
"$bin" --config "$config" serve >"$tmp/collector.log" 2>&1 &
collector_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
  curl -sf "$base/readyz" >/dev/null 2>&1 && break
  kill -0 "$collector_pid" 2>/dev/null || { say "the collector exited at start:" >&2; cat "$tmp/collector.log" >&2; exit 1; }
  sleep 0.1
done
curl -sf "$base/healthz" >/dev/null || { say "the collector does not answer on $base" >&2; exit 1; }

# Some data for the reports: page views, clicks (one rage, one dead) and a scroll of
# /products/42 today. The spec's report examples name the day 2026-01-15; the copy run here
# names today instead, so the examples phase reads these rows back through every report.
today="$(date -u +%F)"; now_ms="$(date -u +%s)000"
ev() { printf '{"type":"%s","id":"%s","ts":%s,"url":"https://shop.test/products/42","session":"s-1","visitor":"v-1","pv":"pv-1","vw":1280,"vh":720,"dw":1280,"dh":4000%s}' "$1" "$2" "$now_ms" "$3"; }
seed="{\"site\":\"demo\",\"events\":[$(ev pageview pv-1 ''),$(ev click c-1 ',"x":100,"y":300,"selector":"main > a","ex":30000,"ey":20000'),$(ev click c-2 ',"x":640,"y":900,"selector":"button.buy","rage":true,"dead":true'),$(ev scroll s-1 ',"depth":60,"from":0')]}"
curl -sf -H 'Content-Type: application/json' --data "$seed" "$base/v1/events" >/dev/null \
  || { say "seeding the reports' rows failed" >&2; exit 1; }
for _ in $(seq 1 100); do
  curl -sf "$base/metrics" | grep -q '^clicktrail_sink_rows_inserted_total 4$' && break
  sleep 0.2
done
sed "s/2026-01-15/$today/g" "$spec" > "$tmp/openapi.yaml"
spec="$tmp/openapi.yaml"

# --- schemathesis
# Generated batches name random site keys, which stop at 403 unknown_site. The hook gives most
# of them the configured key, so that validation and the 200 answer (with its rejected[]) are
# reached too; the rest keep the generated key. One check of our own: a page view that the
# document calls valid (positive generation) is accepted, never listed in rejected[] (the
# other types have per-type required fields that the schema does not spell out).
cat > "$tmp/hooks.py" <<'PY'
import functools
import json

import schemathesis
from hypothesis import strategies as st


# Named functions, not lambdas, in the strategies: hypothesis describes a lambda by parsing its
# source, which fails at random when two workers do it at once ("AST constructor recursion
# depth mismatch").
def with_site(value, configured):
    return {**value, "site": "demo"} if configured else value


@schemathesis.hook
def flatmap_body(context, body):
    op = context.operation
    if op is not None and op.path == "/v1/events" and isinstance(body, dict) and isinstance(body.get("site"), str):
        return st.sampled_from([True, True, True, False]).map(functools.partial(with_site, body))
    return st.just(body)


# The reports (/v1/query/*) check the bearer token before any parameter: most generated cases
# get the site's read token and the configured site, so that parameter checks and the 200
# answers are reached; the rest keep what was generated (401 / 403 / 400 unknown site), and
# one case in eight carries the other site's token (403).
TOKENS = ["schemathesis-read-token"] * 6 + ["other-site-read-token", None]


def is_report(context):
    op = context.operation
    return op is not None and op.path.startswith("/v1/query/")


def with_token(headers, token):
    return headers if token is None else {**(headers or {}), "Authorization": f"Bearer {token}"}


@schemathesis.hook
def flatmap_headers(context, headers):
    if not is_report(context):
        return st.just(headers)
    return st.sampled_from(TOKENS).map(functools.partial(with_token, headers))


@schemathesis.hook
def flatmap_query(context, query):
    if not is_report(context) or not isinstance(query, dict) or not isinstance(query.get("site"), str):
        return st.just(query)
    return st.sampled_from([True, True, True, False]).map(functools.partial(with_site, query))


@schemathesis.check
def valid_pageviews_are_accepted(ctx, response, case):
    if case.operation.path != "/v1/events" or case.method.upper() != "POST" or response.status_code != 200:
        return None
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return None
    events = case.body.get("events") or []
    for r in response.json().get("rejected", []):
        ev = events[r["index"]]
        if isinstance(ev, dict) and ev.get("type") == "pageview":
            raise AssertionError(
                f"a page view valid by docs/openapi.yaml was rejected ({r['error']}): {json.dumps(ev)[:600]}"
            )
    return None
PY
export SCHEMATHESIS_HOOKS="$tmp/hooks.py"
# One worker: with two, hypothesis's lambda descriptions (ast.parse, not thread-safe on
# Python 3.11) failed schemathesis's own coverage phase at random ("AST constructor recursion
# depth mismatch"). The run takes about 20 s either way.
checks=not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,response_headers_conformance,valid_pageviews_are_accepted
args=(run "$spec" --url "$base"
  --checks "$checks"
  --phases examples,coverage,fuzzing
  --mode all
  --max-examples "$examples"
  --workers 1
  --request-timeout 20
  --generation-database none
  --no-color
  --report junit,har --report-dir "$tmp/report")
if [ -n "${CT_SCHEMATHESIS_SEED:-}" ]; then args+=(--seed "$CT_SCHEMATHESIS_SEED"); fi
say "schemathesis against $base (collector $bin, ClickHouse on $ch_http, at most $examples examples per operation, ${limit}s)"
rc=0
# Its cwd is the run directory, so nothing it writes lands in the tree.
(cd "$tmp" && exec timeout --kill-after=10 "$limit" "$st" "${args[@]}") || rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  say "schemathesis still running after ${limit}s: stopped" >&2
fi

# --- the collector must have survived everything, without a panic
if ! kill -0 "$collector_pid" 2>/dev/null; then
  say "the collector died during the run:" >&2
  tail -n 50 "$tmp/collector.log" >&2
  rc=1
elif grep -q "panicked" "$tmp/collector.log"; then
  say "the collector panicked during the run:" >&2
  grep -n -A5 "panicked" "$tmp/collector.log" | head -n 40 >&2
  rc=1
fi
[ "$rc" -eq 0 ] && say "ok" || say "FAILED (exit $rc)" >&2
exit "$rc"
