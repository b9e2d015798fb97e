#!/usr/bin/env bash
# Proves clicktrail's cluster schema and the behaviours the sink, compactor and freshness rely on,
# on a real 2 shards x 2 replicas ClickHouse (scripts/cluster.sh) with Debian's ZooKeeper:
#
#   scripts/cluster-proof.sh [DIR]     # DIR defaults to a fresh temp dir; takes about 1-2 minutes
#
# Each check prints `ok` or `FAIL` with what it saw; the last line is "N passed, N failed".
# The cluster is stopped at the end whatever happens. Ports: CLUSTER_BASE_PORT (default 31000).
# Needs: clickhouse-server (18.16 here), zookeeper, curl, python3, and a clicktrail binary for
# the schema (CLICKTRAIL_BIN, default target/debug/clicktrail: `migrate --print-sql --cluster`).
# docs/scaling.md explains every result.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$(mktemp -d /tmp/clicktrail-cluster-proof.XXXXXX)}"
cluster="$here/scripts/cluster.sh"
passed=0; failed=0
trap '"$cluster" stop "$dir" >/dev/null 2>&1 || true' EXIT

"$cluster" start "$dir" || { echo "cluster did not start"; echo "0 passed, 1 failed"; exit 1; }
# shellcheck disable=SC1090
. <("$cluster" ports "$dir")
R1="127.0.0.1:$S1R1_TCP|127.0.0.1:$S1R2_TCP"   # shard 1, for remote()
R2="127.0.0.1:$S2R1_TCP|127.0.0.1:$S2R2_TCP"   # shard 2
EVERY="127.0.0.1:$S1R1_TCP,127.0.0.1:$S1R2_TCP,127.0.0.1:$S2R1_TCP,127.0.0.1:$S2R2_TCP"  # each replica
HTTPS=("$S1R1_HTTP" "$S1R2_HTTP" "$S2R1_HTTP" "$S2R2_HTTP")

# q PORT SQL [SETTINGS as URL query]: body on stdout; a ClickHouse error (18.16 sends no
# X-ClickHouse-Exception-Code header: the body starts with "Code: N") is printed too.
q() { curl -sS --max-time 60 "http://127.0.0.1:$1/?${3:-}" --data-binary "$2"; }
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then echo "ok   $1: $3"; passed=$((passed + 1))
  else echo "FAIL $1: want [$2] got [$3]"; failed=$((failed + 1)); fi
}
code_of() { sed -n 's/^Code: \([0-9]*\).*/\1/p' | head -1; }
urlq() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1"; }
COLS="event_id, site, type, name, ts, ts_ms, received_at, url, host, path, referrer, title, session_id, visitor_id, x, y, viewport_w, viewport_h, doc_w, doc_h, selector, text, rage, scroll_depth, duration_ms, props, browser, os, device, user_agent, ip"
# block TAG DAY N [with_inserted_at=1]: a RowBinary block as the sink sends it, 50 sessions on 2 sites.
block() {
  local ia=", toDateTime('2026-12-01 12:00:00', 'UTC') AS inserted_at"; [ "${4:-1}" = 1 ] || ia=""
  q "$S1R1_HTTP" "SELECT concat('$1-', toString(number)) AS event_id, if(number % 3 = 0, 'siteA', 'siteB') AS site,
    'click' AS type, '' AS name, toDateTime('$2 10:00:00', 'UTC') + number AS ts, toUInt16(number % 1000) AS ts_ms,
    toDateTime('$2 10:00:00', 'UTC') + number AS received_at, 'https://a.example/p' AS url, 'a.example' AS host,
    '/p' AS path, '' AS referrer, '' AS title, concat('sess-', toString(number % 50)) AS session_id, 'v' AS visitor_id,
    toInt32(number) AS x, toInt32(1) AS y, toUInt16(1) AS viewport_w, toUInt16(1) AS viewport_h, toUInt32(1) AS doc_w,
    toUInt32(1) AS doc_h, '' AS selector, '' AS text, toUInt8(0) AS rage, toUInt8(0) AS scroll_depth,
    toUInt32(0) AS duration_ms, '' AS props, '' AS browser, '' AS os, '' AS device, '' AS user_agent, '' AS ip $ia
    FROM system.numbers LIMIT $3 FORMAT RowBinary"
}
# insert PORT FILE [with_inserted_at=1] [settings]: HTTP status, then the body (an error) if any.
insert() {
  local cols="$COLS"; [ "${3:-1}" = 1 ] && cols="$COLS, inserted_at"
  curl -sS --max-time 60 -o "$dir/insert.out" -w '%{http_code}' \
    "http://127.0.0.1:$1/?query=$(urlq "INSERT INTO clicktrail.events ($cols) FORMAT RowBinary")&${4:-insert_distributed_sync=1}" \
    --data-binary @"$2"
  echo; cat "$dir/insert.out"
}
settle() { wait_equal "$S1R1_HTTP" "$S1R2_HTTP"; wait_equal "$S2R1_HTTP" "$S2R2_HTTP"; }
rows_on() { q "$1" "SELECT count() FROM clicktrail.events_local ${2:-}"; }
day_count() { q "$S1R1_HTTP" "SELECT count() FROM clicktrail.events WHERE toDate(ts) = '$1'"; }
wait_equal() { # wait_equal PORT_A PORT_B: the two replicas of a shard hold the same rows (<= 60 s)
  for _ in $(seq 1 600); do
    [ "$(rows_on "$1")" = "$(rows_on "$2")" ] && [ "$(q "$2" "SELECT is_readonly + queue_size FROM system.replicas WHERE table = 'events_local'")" = 0 ] && return 0
    sleep 0.1
  done; return 1
}

echo "== schema ON CLUSTER (clicktrail migrate --print-sql --server-version 18.16 --cluster clicktrail)"
"${CLICKTRAIL_BIN:-$here/target/debug/clicktrail}" migrate --print-sql --server-version 18.16 --cluster clicktrail > "$dir/plan.sql" \
  || { echo "no clicktrail binary to print the schema"; echo "0 passed, 1 failed"; exit 1; }
python3 - "$dir/plan.sql" > "$dir/schema.sql" <<'EOF'
import sys
s = open(sys.argv[1]).read()
cur = []
for line in s.splitlines():
    t = line.strip()
    if not t or t.startswith("--"): continue
    cur.append(line)
    if t.endswith(";"):
        print("\n".join(cur).strip().rstrip(";") + "\0", end=""); cur = []
EOF
n=0
while IFS= read -r -d '' st; do
  out="$(q "$S1R1_HTTP" "$st" "wait_end_of_query=1&insert_distributed_sync=1")"
  case "$st" in INSERT*) [ -z "$out" ] || echo "FAIL $st: $out"; continue ;; esac
  n=$((n + 1))
  # The answer of an ON CLUSTER statement: host, port, status, error, hosts remaining, active.
  check "statement $n answered by 4 hosts with status 0" "4" "$(printf '%s\n' "$out" | awk -F'\t' '$3 == "0"' | wc -l | tr -d ' ')"
done < "$dir/schema.sql"
for p in "${HTTPS[@]}"; do
  check "tables on :$p" "events Distributed,events_local ReplicatedReplacingMergeTree" \
    "$(q "$p" "SELECT arrayStringConcat(groupArray(concat(name, ' ', engine)), ',') FROM (SELECT name, engine FROM system.tables WHERE database = 'clicktrail' AND name IN ('events', 'events_local') ORDER BY name)")"
done
check "replica paths" "/clickhouse/tables/01/clicktrail/events_local s1r1 /clickhouse/tables/02/clicktrail/events_local s2r2" \
  "$(q "$S1R1_HTTP" "SELECT zookeeper_path, replica_name FROM system.replicas WHERE table = 'events_local'" | tr '\t' ' ') $(q "$S2R2_HTTP" "SELECT zookeeper_path, replica_name FROM system.replicas WHERE table = 'events_local'" | tr '\t' ' ')"

echo "== synchronous insert through the Distributed table"
block a 2026-11-20 1000 > "$dir/a.bin"
check "insert_distributed_sync=1 answers 200" "200" "$(insert "$S1R1_HTTP" "$dir/a.bin")"
# Right after the answer every shard holds its rows on at least ONE replica (the one the
# Distributed table wrote to); the other replica fetches the part a moment later, so a read
# through a random replica may still miss them.
now="$(for p in "${HTTPS[@]}"; do rows_on "$p"; done | xargs)"
read -r a1 a2 b1 b2 <<<"$now"
check "right after the answer, max over each shard's replicas = 450 and 550 (seen: $now)" "450 550" \
  "$(( a1 > a2 ? a1 : a2 )) $(( b1 > b2 ? b1 : b2 ))"
wait_equal "$S1R1_HTTP" "$S1R2_HTTP"; wait_equal "$S2R1_HTTP" "$S2R2_HTTP"
check "rows per replica s1r1 s1r2 s2r1 s2r2" "450 450 550 550" "$(for p in "${HTTPS[@]}"; do rows_on "$p"; done | xargs)"
check "shard N holds exactly the rows with cityHash64(site, session_id) % 2 = N - 1" "0 1" \
  "$(q "$S1R1_HTTP" "SELECT groupUniqArray(cityHash64(site, session_id) % 2) FROM clicktrail.events_local" | tr -d '[]') $(q "$S2R1_HTTP" "SELECT groupUniqArray(cityHash64(site, session_id) % 2) FROM clicktrail.events_local" | tr -d '[]')"
check "no (site, session) on both shards" "0" \
  "$(q "$S1R1_HTTP" "SELECT count() FROM (SELECT site, session_id FROM remote('$R1', clicktrail.events_local) GROUP BY site, session_id) ANY INNER JOIN (SELECT site, session_id FROM remote('$R2', clicktrail.events_local) GROUP BY site, session_id) USING site, session_id")"

echo "== a resent block is dropped (replicated block dedup, per shard)"
insert "$S1R1_HTTP" "$dir/a.bin" >/dev/null
insert "$S2R2_HTTP" "$dir/a.bin" >/dev/null
insert "$S1R2_HTTP" "$dir/a.bin" "1" "insert_distributed_sync=0" >/dev/null; sleep 1; settle
check "same bytes sent 3 more times (sync via s1r1, s2r2; async via s1r2): count" "1000" "$(day_count 2026-11-20)"
block b 2026-11-21 1000 0 > "$dir/b.bin"
insert "$S1R1_HTTP" "$dir/b.bin" 0 >/dev/null; sleep 1.1; insert "$S1R1_HTTP" "$dir/b.bin" 0 >/dev/null; settle
check "without inserted_at (DEFAULT now()), a resend a second later is NOT dropped" "2000" "$(day_count 2026-11-21)"

echo "== one replica of a shard killed (kill -9)"
"$cluster" kill "$dir" s1r2
block c 2026-11-22 1000 > "$dir/c.bin"
check "sync insert via s2r1 with s1r2 dead" "200" "$(insert "$S2R1_HTTP" "$dir/c.bin")"
check "sync insert via s1r1 (the live replica) resent" "200" "$(insert "$S1R1_HTTP" "$dir/c.bin")"
wait_equal "$S2R1_HTTP" "$S2R2_HTTP"
check "count" "1000" "$(day_count 2026-11-22)"
t0=$SECONDS; "$cluster" start-node "$dir" s1r2
if wait_equal "$S1R1_HTTP" "$S1R2_HTTP"; then
  check "s1r2 caught up after restart (took $((SECONDS - t0)) s; read-only until its old ZooKeeper session expires)" "$(rows_on "$S1R1_HTTP")" "$(rows_on "$S1R2_HTTP")"
else check "s1r2 caught up within 60 s" "caught up" "$(rows_on "$S1R2_HTTP") vs $(rows_on "$S1R1_HTTP")"; fi

echo "== a whole shard down (s2r1 and s2r2 killed)"
"$cluster" kill "$dir" s2r1; "$cluster" kill "$dir" s2r2
check "SELECT FROM events fails" "279" "$(q "$S1R1_HTTP" "SELECT count() FROM clicktrail.events" | code_of)"
check "with skip_unavailable_shards = 1: shard 1's rows only, no error" "$(rows_on "$S1R1_HTTP")" \
  "$(q "$S1R1_HTTP" "SELECT count() FROM clicktrail.events SETTINGS skip_unavailable_shards = 1")"
block d 2026-11-23 1000 > "$dir/d.bin"
out="$(insert "$S1R1_HTTP" "$dir/d.bin")"
check "sync insert fails" "500 279" "$(head -1 <<<"$out") $(tail -n +2 <<<"$out" | code_of)"
# Shards are written in parallel: shard 1's half may or may not have been written (both seen).
partial="$(rows_on "$S1R1_HTTP" "WHERE toDate(ts) = '2026-11-23'")"
check "... and shard 1's half was written or not (0 or 450; seen $partial)" "yes" "$([ "$partial" = 0 ] || [ "$partial" = 450 ] && echo yes)"
out="$(insert "$S1R1_HTTP" "$dir/d.bin" 1 "insert_distributed_sync=0")"
check "an async insert (the default) answers 200 anyway: shard 2's rows wait on s1r1's disk" "200 1" \
  "$(head -1 <<<"$out") $(find "$dir/s1r1/data/data/clicktrail/events" -name '*.bin' | wc -l | tr -d ' ')"
"$cluster" start-node "$dir" s2r1; "$cluster" start-node "$dir" s2r2
check "the retried sync insert after the shard is back" "200" "$(insert "$S1R1_HTTP" "$dir/d.bin")"
# Both replicas of shard 2 were restarted within ZooKeeper's session timeout (30 s): until their
# old sessions expire they accept inserts but do not replicate (18.16 logs "appears to be already
# active" and still shows is_readonly = 0, queue_size = 0), so reads through a random replica
# can miss rows for up to ~40 s.
wait_equal "$S2R1_HTTP" "$S2R2_HTTP"
for _ in $(seq 1 300); do [ "$(day_count 2026-11-23)" = 1000 ] && break; sleep 0.1; done
check "count after retry: the shard-1 half is dropped as a duplicate, shard 2 gets its half" "1000" "$(day_count 2026-11-23)"
echo "     (2026-11-23 per replica: $(for p in "${HTTPS[@]}"; do rows_on "$p" "WHERE toDate(ts) = '2026-11-23'"; done | xargs); still queued on s1r1: $(find "$dir/s1r1/data/data/clicktrail/events" -name '*.bin' | wc -l | tr -d ' '))"

echo "== the compactor's view: partitions per shard, then ON CLUSTER DELETE"
check "shard 1 partitions (remote('r1|r2', system.parts))" "2026-11-20:450 2026-11-21:900 2026-11-22:450 2026-11-23:450" \
  "$(q "$S1R1_HTTP" "SELECT partition, sum(rows) FROM remote('$R1', system.parts) WHERE database = 'clicktrail' AND table = 'events_local' AND active GROUP BY partition ORDER BY partition" | tr '\t' ':' | xargs)"
check "shard 2 rows per day (remote('r1|r2', events_local))" "2026-11-20:550 2026-11-21:1100 2026-11-22:550 2026-11-23:550" \
  "$(q "$S1R1_HTTP" "SELECT toDate(ts) AS d, count() FROM remote('$R2', clicktrail.events_local) GROUP BY d ORDER BY d" | tr '\t' ':' | xargs)"
out="$(q "$S1R1_HTTP" "ALTER TABLE clicktrail.events_local ON CLUSTER clicktrail DELETE WHERE toDate(ts) = toDate('2026-11-20') AND inserted_at <= toDateTime('2026-12-01 12:00:00', 'UTC')")"
check "ALTER ... ON CLUSTER DELETE answered by 4 hosts" "4" "$(printf '%s\n' "$out" | awk -F'\t' '$3 == "0"' | wc -l | tr -d ' ')"
# Done = on EVERY replica the mutation is listed and done (a replica that has not fetched it
# yet lists nothing, so "nothing pending" alone is not enough), and no row matches any more.
for _ in $(seq 1 300); do
  st="$(q "$S1R1_HTTP" "SELECT count(), sum(is_done) FROM remote('$EVERY', system.mutations) WHERE database = 'clicktrail' AND table = 'events_local'")"
  [ "$st" = "$(printf '4\t4')" ] && break; sleep 0.1
done
check "mutation listed and done on all 4 replicas" "4 4" "$(tr '\t' ' ' <<<"$st")"
check "rows of 2026-11-20 left on s1r1 s1r2 s2r1 s2r2" "0 0 0 0" \
  "$(for p in "${HTTPS[@]}"; do rows_on "$p" "WHERE toDate(ts) = '2026-11-20'"; done | xargs)"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
