#!/usr/bin/env bash
# The cluster proof (make test-cluster): 2 shards x 2 replicas of ClickHouse (18.16 here) with
# Debian's ZooKeeper (scripts/cluster.sh), `clicktrail migrate` with clickhouse.cluster, 2
# collectors (each its own data_dir, entry servers s1r1 and s2r1) behind haproxy
# (deploy/haproxy/haproxy.cfg.in). Under load it kills -9 one replica (s1r2) and one collector
# (c2), restarts both, and then checks:
#   - every acknowledged id is in the Distributed `events`, and exactly once as analysts count:
#     count() FINAL = uniqExact(event_id) = acknowledged (+ any unacknowledged that landed);
#     raw count() may be higher only by copies not merged yet (printed);
#   - the two replicas of each shard converge (same count, same ids), no session on two shards;
#   - the rollups read through their Distributed tables (and the query API) count every view once;
#   - the probe showed the dead replica (clicktrail_clickhouse_replica_up 0, shard still up);
#   - per-shard canaries (shard_canaries_* below): a series per shard and replica while all is
#     up, each shard's canary on its own shard, the dead replica's delay rising while its peer's
#     stays low, and back low after its restart; the servers require a password (default user,
#     CLUSTER_PASSWORD), the probe logs in with clickhouse.password and calls a replica with
#     another password down with ClickHouse's reason; the password is in no collector output;
#   - the compactor archives a cold day per shard (count and checksum of each shard, its ids),
#     deletes it from every replica and nothing else, and holds the day while a replica is down;
#   - the same plan rendered for ClickHouse 26.x parses and runs in chDB (tests/chdb/cluster_ddl.py).
#
#   scripts/test-cluster.sh [BINARY]     # default target/debug/clicktrail; ~2-3 minutes
#   (CLUSTER_BASE_PORT=26000 ... to run beside another run)
#
# Ports: CLUSTER_BASE_PORT (default 23000, below the ephemeral range) + offsets (scripts/cluster.sh), +500 haproxy,
# +501/+502 collectors, +503 the compactor's (unused) listen address, +509 haproxy stats. Everything started is stopped at the end.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$here/target/debug/clicktrail}"
[ -x "$bin" ] || { echo "no collector binary at $bin (cargo build first)" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "haproxy not found; run scripts/deps.sh --test" >&2; exit 1; }
export CLUSTER_BASE_PORT="${CLUSTER_BASE_PORT:-23000}"
base="$CLUSTER_BASE_PORT"; lb=$((base + 500)); stats=$((base + 509))
load_seconds="${LOAD_SECONDS:-40}"
dir="$(mktemp -d /tmp/clicktrail-test-cluster.XXXXXX)"
# A copy: the collectors restarted mid-test run the same build whatever happens to target/.
cp "$bin" "$dir/clicktrail"; bin="$dir/clicktrail"
cluster="$here/scripts/cluster.sh"
passed=0; failed=0
declare -A cpid
TOKEN="cluster-read-token-0123456789"
# Every server's `default` user has this password (scripts/cluster.sh CLUSTER_PASSWORD); a quote
# and a backslash, so that the probe's and the canaries' literals are escaped or fail.
CH_PASSWORD="ct-s3cr'et\\pw"
export CLUSTER_PASSWORD="$CH_PASSWORD"
CH_PASSWORD_SQL="${CH_PASSWORD//\\/\\\\}"; CH_PASSWORD_SQL="${CH_PASSWORD_SQL//\'/\\\'}"

cleanup() {
  [ -f "$dir/haproxy.pid" ] && kill "$(cat "$dir/haproxy.pid")" 2>/dev/null
  for i in "${!cpid[@]}"; do kill "${cpid[$i]}" 2>/dev/null; done
  for i in "${!cpid[@]}"; do
    for _ in $(seq 1 100); do kill -0 "${cpid[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${cpid[$i]}" 2>/dev/null
  done
  "$cluster" stop "$dir" >/dev/null 2>&1
  [ "$failed" = 0 ] && rm -rf "$dir" || echo "kept $dir for inspection"
}
trap cleanup EXIT
check() { if [ "$2" = "$3" ]; then echo "ok   $1: $3"; passed=$((passed + 1)); else echo "FAIL $1: want [$2] got [$3]"; failed=$((failed + 1)); fi; }
q() { curl -sS --max-time 60 -u "default:$CH_PASSWORD" "http://127.0.0.1:$1/" --data-binary "$2"; }
# q with URL settings: qs PORT 'name=value&...' SQL
qs() { curl -sS --max-time 60 -u "default:$CH_PASSWORD" "http://127.0.0.1:$1/?$2" --data-binary "$3"; }
t0=$SECONDS
say() { echo "[$((SECONDS - t0))s] $*"; }

"$cluster" start "$dir" || { echo "cluster did not start"; exit 1; }
# shellcheck disable=SC1090
. <("$cluster" ports "$dir")
HTTPS=("$S1R1_HTTP" "$S1R2_HTTP" "$S2R1_HTTP" "$S2R2_HTTP")

write_config() { # write_config N ENTRY_HTTP_PORT
  mkdir -p "$dir/c$1"
  cat > "$dir/c$1/clicktrail.toml" <<EOT
listen = "127.0.0.1:$((base + 500 + $1))"
data_dir = "$dir/c$1/data"
[server]
# haproxy on loopback sets X-Forwarded-For (option forwardfor).
trusted_proxies = ["127.0.0.1/32"]
[clickhouse]
url = "http://127.0.0.1:$2"
database = "clicktrail"
password = "${CH_PASSWORD//\\/\\\\}"
cluster = "$CLUSTER_NAME"
probe_interval = "1s"
timeout = "10s"
[sink]
batch_age = "300ms"
retry_initial = "100ms"
retry_max = "2s"
[compactor]
enabled = false
[freshness]
canary_interval = "3s"
[rate_limit]
per_ip_per_second = 0
per_site_per_second = 0
[[sites]]
key = "demo"
origins = ["*"]
read_tokens = ["$TOKEN"]
EOT
}
start_collector() { # start_collector N
  # A subshell, so that kill -9 is not reported by this shell's job control.
  cpid[$1]="$( (nohup "$bin" serve --config "$dir/c$1/clicktrail.toml" >> "$dir/c$1/out.log" 2>&1 & echo $!) )"
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$((base + 500 + $1))/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "collector $1 did not start"; tail -5 "$dir/c$1/out.log"; return 1
}
metric() { # metric N NAME_WITH_LABELS
  curl -s "http://127.0.0.1:$((base + 500 + $1))/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}

write_config 1 "$S1R1_HTTP"; write_config 2 "$S2R1_HTTP"

# ---- per-shard canaries and probe auth (src/freshness.rs); each call adds at most seconds.
canary_of() { # canary_of N NODE: collector N's clicktrail_canary_delay_seconds for that replica
  local shard="${2:1:1}" tcp="${2^^}_TCP"
  metric "$1" "clicktrail_canary_delay_seconds{shard=\"$shard\",replica=\"127.0.0.1:${!tcp}\"}"
}
replica_up_of() { local tcp="${2^^}_TCP"; metric "$1" "clicktrail_clickhouse_replica_up{shard=\"${2:1:1}\",replica=\"127.0.0.1:${!tcp}\"}"; }
below() { awk -v v="$1" -v m="$2" 'BEGIN { exit !(v != "" && v + 0 < m) }'; }
shard_canaries_all_up() { # every replica answers the password-protected probe and shows its shard's canary
  local n ok
  for _ in $(seq 1 150); do
    ok=1; for n in s1r1 s1r2 s2r1 s2r2; do below "$(canary_of 1 $n)" 3 || ok=0; done
    [ $ok = 1 ] && break; sleep 0.1
  done
  say "shard canaries on collector 1: s1r1 $(canary_of 1 s1r1) s1r2 $(canary_of 1 s1r2) s2r1 $(canary_of 1 s2r1) s2r2 $(canary_of 1 s2r2) s"
  check "probe logged in with clickhouse.password: every replica up (collector 1)" "1 1 1 1" \
    "$(replica_up_of 1 s1r1) $(replica_up_of 1 s1r2) $(replica_up_of 1 s2r1) $(replica_up_of 1 s2r2)"
  check "a canary series per shard and replica, each below 3 s (collector 1)" "1" "$ok"
  ok=1; for n in s1r1 s1r2 s2r1 s2r2; do below "$(canary_of 2 $n)" 3 || ok=0; done
  check "the same on collector 2" "1" "$ok"
}
shard_canaries_dead_replica() { # s1r2 dead for ~16 s: its delay rises, s1r1's stays low
  local dead live
  dead="$(canary_of 1 s1r2)"; live="$(canary_of 1 s1r1)"
  say "canary delays with s1r2 dead: s1r2 ${dead}s, s1r1 ${live}s"
  check "the dead replica's canary delay rises (> 8 s), its peer's stays below 3 s" "yes yes" \
    "$(below 8 "$dead" && echo yes || echo "no($dead)") $(below "$live" 3 && echo yes || echo "no($live)")"
}
shard_canaries_recovered() { # after s1r2's restart its delay falls back (it had to replicate first)
  local t=$SECONDS
  for _ in $(seq 1 300); do below "$(canary_of 1 s1r2)" 3 && break; sleep 0.1; done
  say "s1r2's canary delay $(canary_of 1 s1r2)s (waited $((SECONDS - t))s)"
  check "the restarted replica's canary delay is back below 3 s" "yes" "$(below "$(canary_of 1 s1r2)" 3 && echo yes)"
  local s
  for s in 1 2; do
    local own="S${s}R1_HTTP" other="S$((3 - s))R1_HTTP"
    check "shard $s's canaries are on shard $s only (hashed session id)" "yes 0" \
      "$( [ "$(q "${!own}" "SELECT count() FROM clicktrail.events_local WHERE site = '__canary' AND event_id LIKE 'canary-s$s-%'")" -gt 0 ] && echo yes) $(q "${!other}" "SELECT count() FROM clicktrail.events_local WHERE site = '__canary' AND event_id LIKE 'canary-s$s-%'")"
  done
}
shard_canaries_wrong_password() { # s2r2 restarted with another password: down, with the reason
  "$cluster" kill "$dir" s2r2
  CLUSTER_PASSWORD="not-$CH_PASSWORD" "$cluster" start-node "$dir" s2r2 || { echo "FAIL s2r2 did not start"; failed=$((failed + 1)); return; }
  # Down already while it was killed: wait for the probe that meets the password.
  why() { grep -a 'replica does not answer the probe' "$dir/c1/out.log" | grep -q "replica.*127.0.0.1:$S2R2_TCP.*Wrong password for user default" && echo yes; }
  for _ in $(seq 1 50); do [ "$(why)" = yes ] && break; sleep 0.1; done
  check "collector 1 logged why (ClickHouse's reason, on one line)" "yes" "$(why)"
  check "probe: a replica with another password is down (collector 1)" "0" "$(replica_up_of 1 s2r2)"
  "$cluster" kill "$dir" s2r2; "$cluster" start-node "$dir" s2r2
  for _ in $(seq 1 50); do [ "$(replica_up_of 1 s2r2)" = 1 ] && break; sleep 0.1; done
  check "probe: the same replica with the right password is up again" "1" "$(replica_up_of 1 s2r2)"
  check "the password is in no collector log, metrics or readyz" "0" \
    "$(cat "$dir"/c*/out.log <(curl -s "http://127.0.0.1:$((base + 501))/metrics") <(curl -s "http://127.0.0.1:$((base + 501))/readyz") | grep -cF -e "$CH_PASSWORD" -e "$CH_PASSWORD_SQL")"
}
# ---- end of per-shard canaries
say "the same plan for ClickHouse 26.x, checked in chDB (tests/chdb/cluster_ddl.py)"
"$bin" migrate --print-sql --server-version 26.1 --cluster "$CLUSTER_NAME" > "$dir/plan-26.sql"
python3 "$here/tests/chdb/cluster_ddl.py" "$dir/plan-26.sql" > "$dir/chdb.log" 2>&1; rc=$?
check "the cluster plan for 26.x parses and runs in chDB" "0" "$rc"; [ $rc = 0 ] || tail -20 "$dir/chdb.log"
say "migrate ON CLUSTER $CLUSTER_NAME"
out="$("$bin" --config "$dir/c1/clicktrail.toml" migrate --no-insert-wait 2>&1)"; rc=$?
check "clicktrail migrate with clickhouse.cluster" "0" "$rc"; [ $rc = 0 ] || { echo "$out"; exit 1; }
check "a second migrate is a no-op" "schema is up to date" "$("$bin" --config "$dir/c1/clicktrail.toml" migrate --no-insert-wait 2>/dev/null)"
for p in "${HTTPS[@]}"; do
  got="$(q "$p" "SELECT arrayStringConcat(groupArray(concat(name, ':', engine)), ' ') FROM (SELECT name, engine FROM system.tables WHERE database = 'clicktrail' AND name IN ('events', 'events_local', 'page_stats_hourly_sum', 'page_stats_hourly_sum_local', 'page_stats_hourly_sum_mv') ORDER BY name)")"
  check "tables on :$p" "events:Distributed events_local:ReplicatedReplacingMergeTree page_stats_hourly_sum:Distributed page_stats_hourly_sum_local:ReplicatedAggregatingMergeTree page_stats_hourly_sum_mv:MaterializedView" "$got"
done

start_collector 1 || exit 1; start_collector 2 || exit 1
servers="    server c1 127.0.0.1:$((base + 501)) check"$'\n'"    server c2 127.0.0.1:$((base + 502)) check"$'\n'
sed -e "s|@DIR@|$dir|g" -e "s|@LISTEN@|127.0.0.1:$lb|" -e "s|@STATS@|127.0.0.1:$stats|" \
  "$here/deploy/haproxy/haproxy.cfg.in" | awk -v servers="$servers" '$0 == "@SERVERS@" { printf "%s", servers; next } { print }' > "$dir/haproxy.cfg"
haproxy -c -q -f "$dir/haproxy.cfg" && haproxy -f "$dir/haproxy.cfg" || { echo "haproxy did not start"; exit 1; }
up() { curl -s "http://127.0.0.1:$stats/;csv" | awk -F, '$1 == "collectors" && $2 ~ /^c[0-9]/ { printf "%s=%s ", $2, $18 }' | sed 's/ $//'; }
for _ in $(seq 1 100); do [ "$(up)" = "c1=UP c2=UP" ] && break; sleep 0.1; done
check "haproxy sees both collectors" "c1=UP c2=UP" "$(up)"
shard_canaries_all_up

say "load through haproxy for ${load_seconds}s; kill -9 s1r2 at 8s and collector 2 at 12s, restart c2 at 18s and s1r2 at 24s"
python3 "$here/scripts/load-gen.py" "http://127.0.0.1:$lb" "$load_seconds" 4 "$dir/acked.txt" load > "$dir/load.json" &
load=$!
sleep 8; "$cluster" kill "$dir" s1r2; say "killed s1r2"
sleep 3
check "probe: replica s1r2 down, shard 1 up (collector 1's metrics)" "0 1" \
  "$(metric 1 "clicktrail_clickhouse_replica_up{shard=\"1\",replica=\"127.0.0.1:$S1R2_TCP\"}") $(metric 1 'clicktrail_clickhouse_shard_up{shard="1"}')"
sleep 1; kill -9 "${cpid[2]}"; say "killed collector 2 (pid ${cpid[2]})"
sleep 6; start_collector 2 && say "restarted collector 2"
sleep 6; shard_canaries_dead_replica; "$cluster" start-node "$dir" s1r2 && say "restarted s1r2"
wait $load
say "load done: $(cat "$dir/load.json")"
acked="$(wc -l < "$dir/acked.txt" | tr -d ' ')"
[ "$acked" -gt 1000 ] || { echo "FAIL too few acknowledged events ($acked)"; failed=$((failed + 1)); }

say "waiting for both spools to drain and the replicas to converge"
lag() { metric "$1" clicktrail_freshness_lag_seconds | awk '{ print ($1 == 0) ? "0" : $1 }'; }
drained() { for i in 1 2; do [ "$(lag "$i")" = 0 ] || return 1; done; }
for _ in $(seq 1 600); do drained && break; sleep 0.1; done
check "both collectors delivered their spools (freshness lag 0)" "0 0" "$(lag 1) $(lag 2)"
rows_on() { q "$1" "SELECT count(), uniqExact(event_id), sum(cityHash64(event_id)) FROM clicktrail.events_local WHERE site = 'demo'" | tr '\t' ' '; }
converged() {
  [ "$(rows_on "$S1R1_HTTP")" = "$(rows_on "$S1R2_HTTP")" ] && [ "$(rows_on "$S2R1_HTTP")" = "$(rows_on "$S2R2_HTTP")" ] &&
  for p in "${HTTPS[@]}"; do [ "$(q "$p" "SELECT sum(queue_size) FROM system.replicas WHERE database = 'clicktrail'")" = 0 ] || return 1; done
}
for _ in $(seq 1 900); do converged && break; sleep 0.1; done
say "converged: shard 1 [$(rows_on "$S1R1_HTTP")] [$(rows_on "$S1R2_HTTP")], shard 2 [$(rows_on "$S2R1_HTTP")] [$(rows_on "$S2R2_HTTP")]"
check "shard 1's replicas hold the same rows (count, ids, id hash)" "$(rows_on "$S1R1_HTTP")" "$(rows_on "$S1R2_HTTP")"
check "shard 2's replicas hold the same rows" "$(rows_on "$S2R1_HTTP")" "$(rows_on "$S2R2_HTTP")"
check "both shards have rows" "yes" "$( [ "$(q "$S1R1_HTTP" "SELECT count() FROM clicktrail.events_local WHERE site = 'demo'")" -gt 0 ] && [ "$(q "$S2R1_HTTP" "SELECT count() FROM clicktrail.events_local WHERE site = 'demo'")" -gt 0 ] && echo yes)"

# Exactly once, as analysts count: every acknowledged id is there; FINAL (per shard: all copies
# of an id are on one shard, the key hashes site and session) leaves one row per id.
q "$S1R1_HTTP" "SELECT DISTINCT event_id FROM clicktrail.events WHERE site = 'demo' AND event_id LIKE 'load-%' FORMAT TSV" | sort > "$dir/landed.txt"
sort "$dir/acked.txt" > "$dir/acked.sorted"
check "acknowledged ids missing from the Distributed table" "0" "$(comm -23 "$dir/acked.sorted" "$dir/landed.txt" | wc -l | tr -d ' ')"
extra="$(comm -13 "$dir/acked.sorted" "$dir/landed.txt" | wc -l | tr -d ' ')"
read -r raw final distinct <<<"$(q "$S1R1_HTTP" "SELECT (SELECT count() FROM clicktrail.events WHERE site = 'demo' AND event_id LIKE 'load-%'), (SELECT count() FROM clicktrail.events FINAL WHERE site = 'demo' AND event_id LIKE 'load-%'), (SELECT uniqExact(event_id) FROM clicktrail.events WHERE site = 'demo' AND event_id LIKE 'load-%')" | tr '\t' ' ')"
dups=0; for p in "${HTTPS[@]}"; do dups=$((dups + $(q "$p" "SELECT sum(value) FROM system.events WHERE event = 'DuplicatedInsertedBlocks'"))); done
echo "     acknowledged $acked, landed ids $distinct (of them not acknowledged: $extra), rows: raw $raw, FINAL $final; blocks dropped as duplicates by the replicas (since their last start): $dups"
check "count() FINAL = uniqExact(event_id) = acknowledged + landed-unacknowledged" "$distinct $distinct" "$final $((acked + extra))"
check "no (site, session) on both shards" "0" \
  "$(q "$S1R1_HTTP" "SELECT count() FROM (SELECT session_id FROM remote('127.0.0.1:$S1R1_TCP', clicktrail.events_local, 'default', '$CH_PASSWORD_SQL') WHERE site = 'demo' GROUP BY session_id) ANY INNER JOIN (SELECT session_id FROM remote('127.0.0.1:$S2R1_TCP', clicktrail.events_local, 'default', '$CH_PASSWORD_SQL') WHERE site = 'demo' GROUP BY session_id) USING session_id")"

# The rollups, fed by the views on each shard's events_local, read through their Distributed
# tables. Since migration 0006 `views` is a sum (the collector keeps copies out, and a replica
# drops a block it already has), so it is compared with the exact count of distinct page-view
# ids, grouped as the query API groups them (per path over the range). One shortfall is known
# and bounded (docs/delivery.md, "A replica killed during an insert"): s1r2 killed -9 in the
# middle of an insert leaves a view that had not written its part without the block, and the
# sink's retry is dropped as a duplicate by events_local, whose views 18.16 then skips. At most
# the rows of the inserts that failed meanwhile: each failed batch's first failure, from the
# collectors' logs.
per_path="SELECT sum(v) FROM (SELECT path, uniqExactIf(event_id, type = 'pageview') AS v FROM clicktrail.events WHERE site = 'demo' GROUP BY path)"
views="$(q "$S1R1_HTTP" "$per_path")"
failed_rows="$(cat "$dir/c1/out.log" "$dir/c2/out.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'rows=[0-9]* attempt=1$' | awk -F'[= ]' '{ s += $2 } END { print s + 0 }')"
echo "     page views per path, summed: exact $views (of $distinct landed ids); rows of inserts that failed while a replica was down: $failed_rows"
within() {
  if ! [[ "$3" =~ ^[0-9]+$ ]]; then echo "FAIL $1: want [$2] got [$3]"; failed=$((failed + 1)); return; fi
  local short=$(( $2 - $3 ))
  if [ "$short" -ge 0 ] && [ "$short" -le "$4" ]; then
    echo "ok   $1: $3 (exact $2, short by $short, at most $4)"; passed=$((passed + 1))
  else
    echo "FAIL $1: want [$2, or short by at most $4] got [$3]"; failed=$((failed + 1))
  fi
}
within "page views in the Distributed rollup page_stats_hourly_sum (per path, summed)" "$views" \
  "$(q "$S1R1_HTTP" "SELECT sum(v) FROM (SELECT path, sumMerge(views) AS v FROM clicktrail.page_stats_hourly_sum WHERE site = 'demo' GROUP BY path)")" "$failed_rows"
today="$(date -u +%F)"
api="$(curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$((base + 501))/v1/query/pages?site=demo&from=$(date -u -d yesterday +%F)&to=$today")"
within "the query API's page views (pages_daily_sum, summed over pages) through collector 1" "$views" \
  "$(python3 -c 'import json,sys; print(sum(p["views"] for p in json.load(sys.stdin)["pages"]))' <<<"$api" 2>/dev/null || echo "$api")" "$failed_rows"
# The site's distinct visitors (the API's `site_totals` over pages_daily_sum's states of every
# path, since 0008 dropped 0007's site_daily): each shard's states merged. A row missing from a
# view (above) can take at most one visitor with it.
visitors="$(q "$S1R1_HTTP" "SELECT uniqExactIf(visitor_id, type = 'pageview') FROM clicktrail.events WHERE site = 'demo' AND toDate(ts) >= toDate('$(date -u -d yesterday +%F)') AND toDate(ts) <= toDate('$today')")"
within "the query API's site visitors (every path's states) through collector 1" "$visitors" \
  "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["visitors"])' <<<"$api" 2>/dev/null || echo "$api")" "$failed_rows"
check "0008 dropped site_daily (Distributed and local) on every server" "0 0 0 0" \
  "$(for h in "${HTTPS[@]}"; do q "$h" "SELECT count() FROM system.tables WHERE database = 'clicktrail' AND name LIKE 'site_daily%'"; done | xargs)"
check "the canary of each collector reached ClickHouse" "yes" \
  "$( [ "$(q "$S1R1_HTTP" "SELECT count() FROM clicktrail.events WHERE site = '__canary'")" -gt 2 ] && echo yes)"
shard_canaries_recovered
shard_canaries_wrong_password

# --- The compactor on a cluster (src/compactor/cluster.rs) ------------------------------------
# A cold day (4 days ago, inserted an hour ago) seeded through the Distributed table lands on
# both shards. First s2r2 is killed -9: the run must hold the day (nothing recorded, nothing
# deleted). Then s2r2 is back: the run archives one file per shard, whose manifest count and
# checksum equal what every replica of that shard held, whose ids are that shard's ids, and the
# day's rows leave all four replicas while today's rows stay.
compactor_phase() {
  mkdir -p "$dir/c0"
  cat > "$dir/c0/clicktrail.toml" <<EOT
listen = "127.0.0.1:$((base + 503))"
data_dir = "$dir/c0/data"
[clickhouse]
url = "http://127.0.0.1:$S1R1_HTTP"
database = "clicktrail"
cluster = "$CLUSTER_NAME"
timeout = "10s"
password = "${CH_PASSWORD//\\/\\\\}"
[compactor]
hot_days = 2
archive_url = "$dir/archive"
insert_settle = "10s"
mutation_timeout = "120s"
[[sites]]
key = "demo"
origins = ["*"]
EOT
  local cold cold_s
  cold="$(q "$S1R1_HTTP" "SELECT toUInt32(toDate(now())) - 4")"; cold_s="$(q "$S1R1_HTTP" "SELECT toString(toDate(now()) - 4)")"
  # insert_distributed_sync as a URL setting: 18.16 applies an INSERT ... SELECT's trailing
  # SETTINGS to the SELECT only, and the Distributed table then queued shard 2's rows for a
  # background send (the day was seen with shard 2 empty).
  out="$(qs "$S1R1_HTTP" insert_distributed_sync=1 "INSERT INTO clicktrail.events (event_id, site, type, ts, ts_ms, received_at, url, host, path, session_id, visitor_id, x, y, inserted_at) \
    SELECT concat('cold-', toString(number)), 'demo', 'click', toDateTime($cold * 86400 + number % 86400), number % 1000, toDateTime($cold * 86400 + number % 86400 + 1), \
    'https://a.test/p', 'a.test', concat('/p/', toString(number % 7)), concat('cs', toString(number % 500)), concat('v', toString(number % 300)), toInt32(number % 1280), toInt32(number % 4000), \
    toDateTime(toUInt32(now()) - 3600) FROM system.numbers LIMIT 20000")"
  [ -z "$out" ] || echo "$out"
  local cols hash day_rows
  cols="$(q "$S1R1_HTTP" "SELECT arrayStringConcat(groupArray(name), ', ') FROM system.columns WHERE database = 'clicktrail' AND table = 'events_local' AND name != 'inserted_at'")"
  hash="cityHash64($cols)"
  day_rows() { q "$1" "SELECT count(), sum($hash) FROM clicktrail.events_local WHERE toDate(ts) = toDate('$cold_s')" | tr '\t' ' '; }
  # s2r2 was restarted just before (the wrong-password phase): its replication queue may take
  # a while to fetch the day's part, and the ids below are read from every shard's replica 2.
  local converged_cold=no
  for _ in $(seq 1 600); do [ "$(day_rows "$S1R1_HTTP")" = "$(day_rows "$S1R2_HTTP")" ] && [ "$(day_rows "$S2R1_HTTP")" = "$(day_rows "$S2R2_HTTP")" ] && converged_cold=yes && break; sleep 0.1; done
  check "the cold day reached both replicas of each shard (within 60 s)" "yes" "$converged_cold"
  local s1 s2 today_before
  s1="$(day_rows "$S1R1_HTTP")"; s2="$(day_rows "$S2R1_HTTP")"
  say "cold day $cold_s seeded: shard 1 [$s1], shard 2 [$s2] (count, checksum)"
  check "the cold day is on both shards, all 20000 rows" "20000 yes" "$(( ${s1%% *} + ${s2%% *} )) $( [ "${s1%% *}" -gt 0 ] && [ "${s2%% *}" -gt 0 ] && echo yes)"
  today_rows() { for p in "${HTTPS[@]}"; do q "$p" "SELECT count() FROM clicktrail.events_local WHERE site = 'demo' AND toDate(ts) != toDate('$cold_s')"; done | tr '\n' ' '; }
  today_before="$(today_rows)"
  q "$S1R1_HTTP" "SELECT event_id FROM remote('127.0.0.1:$S1R2_TCP', clicktrail.events_local, 'default', '$CH_PASSWORD_SQL') WHERE toDate(ts) = toDate('$cold_s') FORMAT TSV" > "$dir/cold-s1.ids"
  q "$S1R1_HTTP" "SELECT event_id FROM remote('127.0.0.1:$S2R2_TCP', clicktrail.events_local, 'default', '$CH_PASSWORD_SQL') WHERE toDate(ts) = toDate('$cold_s') FORMAT TSV" > "$dir/cold-s2.ids"

  say "compactor with replica s2r2 killed -9: the run must hold the day"
  "$cluster" kill "$dir" s2r2
  out="$("$bin" --config "$dir/c0/clicktrail.toml" compact --once 2>&1)"; rc=$?
  check "compact --once with s2r2 down fails" "1" "$([ $rc != 0 ] && echo 1 || echo 0)"
  check "... naming the held shard" "1" "$(grep -c "day $cold_s, shard 2: replica 127.0.0.1:$S2R2_TCP does not answer" <<<"$out" | awk '{ print ($1 > 0) }')"
  check "... recording nothing in the archive" "0" "$(find "$dir/archive" -type f 2>/dev/null | wc -l | tr -d ' ')"
  check "... deleting nothing (shard 1 on both replicas, shard 2 on s2r1)" "$s1 $s1 $s2" "$(day_rows "$S1R1_HTTP") $(day_rows "$S1R2_HTTP") $(day_rows "$S2R1_HTTP")"

  "$cluster" start-node "$dir" s2r2 >/dev/null 2>&1
  for _ in $(seq 1 100); do [ "$(day_rows "$S2R2_HTTP" 2>/dev/null)" = "$s2" ] && break; sleep 0.1; done
  say "s2r2 back; compactor killed -9 once a shard's file is verified, before any delete"
  FAILPOINTS=compactor::after_verify=pause "$bin" --config "$dir/c0/clicktrail.toml" compact --once > "$dir/c0/killed-run.log" 2>&1 &
  local cpid=$! verified=no
  for _ in $(seq 1 600); do grep -qs '"state": *"verified"' "$dir/archive/manifest/events/date=$cold_s/"*.json && verified=yes && break; sleep 0.1; done
  kill -9 "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null
  check "the killed run had verified a file (and paused there)" "yes" "$verified"
  check "... and deleted nothing from any replica" "$s1 $s1 $s2 $s2" "$(day_rows "$S1R1_HTTP") $(day_rows "$S1R2_HTTP") $(day_rows "$S2R1_HTTP") $(day_rows "$S2R2_HTTP")"
  say "compactor again: resumes the killed run's entries, archives the rest"
  local t_c=$SECONDS
  out="$("$bin" --config "$dir/c0/clicktrail.toml" compact --once 2>&1)"; rc=$?
  say "compact --once took $((SECONDS - t_c))s"
  check "compact --once with every replica up" "0" "$rc"; [ $rc = 0 ] || tail -5 <<<"$out"
  grep -E "^$cold_s|^archived" <<<"$out" | sed 's/^/     /'
  local m1 m2
  m1="$(ls "$dir/archive/manifest/events/date=$cold_s/"*-s1.json 2>/dev/null)"; m2="$(ls "$dir/archive/manifest/events/date=$cold_s/"*-s2.json 2>/dev/null)"
  manifest() { python3 -c 'import json,sys; m = json.load(open(sys.argv[1])); print(m["state"], m["rows"], m["checksum"], m["shard"]["num"])' "$1" 2>/dev/null; }
  check "shard 1's manifest: dropped, count and checksum of shard 1" "dropped $s1 1" "$(manifest "$m1")"
  check "shard 2's manifest: dropped, count and checksum of shard 2" "dropped $s2 2" "$(manifest "$m2")"
  # The files themselves, read by pyarrow (var/venv): each holds its shard's ids.
  local f
  for n in 1 2; do
    f="$dir/archive/events/date=$cold_s/$(basename "$( [ $n = 1 ] && echo "$m1" || echo "$m2")" .json).parquet"
    python3 -c 'import pyarrow.parquet as pq,sys; print("\n".join(sorted(pq.read_table(sys.argv[1], columns=["event_id"]).column(0).to_pylist())))' "$f" > "$dir/file-s$n.ids"
  done
  check "the files' ids are each shard's ids (shard 1, shard 2)" "$(LC_ALL=C sort "$dir/cold-s1.ids" | md5sum) $(LC_ALL=C sort "$dir/cold-s2.ids" | md5sum)" \
    "$(md5sum < "$dir/file-s1.ids") $(md5sum < "$dir/file-s2.ids")"
  check "one Parquet file per shard, none archived twice" "2" "$(find "$dir/archive/events" -name '*.parquet' | wc -l | tr -d ' ')"
  check "the cold day's rows are gone from every replica" "0 0 0 0" \
    "$(for p in "${HTTPS[@]}"; do q "$p" "SELECT count() FROM clicktrail.events_local WHERE toDate(ts) = toDate('$cold_s')"; done | tr '\n' ' ' | sed 's/ $//')"
  check "every other day's rows (the load's) stay on every replica" "$today_before" "$(today_rows)"
}
compactor_phase

say "done"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
