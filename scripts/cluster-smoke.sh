#!/usr/bin/env bash
# Two collectors behind haproxy, writing to the loopback ClickHouse cluster (scripts/cluster.sh):
#
#   scripts/cluster-smoke.sh DIR [CLICKTRAIL_BINARY]    # binary default: target/release/clicktrail
#
# Starts the cluster in DIR if it is not running (and stops it again at the end), runs
# `clicktrail migrate` with clickhouse.cluster (ON CLUSTER, idempotent), starts collector 1 -> s1r1 and
# collector 2 -> s2r1 (each with its own data_dir and port), haproxy from
# deploy/haproxy/haproxy.cfg.in in front of them, posts events through haproxy and checks them
# through the Distributed table; then kills collector 2 and checks haproxy routes around it.
# Everything it started is stopped at the end. Last line: "N passed, N failed".
# Ports: CLUSTER_BASE_PORT (default 31000) + 500 (haproxy), +501/+502 (collectors), +509 (stats).
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:?usage: $0 DIR [CLICKTRAIL_BINARY]}"; mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
bin="${2:-$here/target/release/clicktrail}"
[ -x "$bin" ] || { echo "no collector binary at $bin" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "haproxy not found; run: apt-get install -y haproxy" >&2; exit 1; }
cluster="$here/scripts/cluster.sh"
base="${CLUSTER_BASE_PORT:-31000}"
lb=$((base + 500)); stats=$((base + 509))
passed=0; failed=0; started_cluster=0; pids=()
s="$dir/smoke"; mkdir -p "$s"

cleanup() {
  [ -f "$s/haproxy.pid" ] && kill "$(cat "$s/haproxy.pid")" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null; done
  rm -f "$s/haproxy.pid"
  [ $started_cluster = 1 ] && "$cluster" stop "$dir"
}
trap cleanup EXIT
check() { if [ "$2" = "$3" ]; then echo "ok   $1: $3"; passed=$((passed + 1)); else echo "FAIL $1: want [$2] got [$3]"; failed=$((failed + 1)); fi; }
q() { curl -sS --max-time 30 "http://127.0.0.1:$1/" --data-binary "$2"; }

if ! "$cluster" status "$dir" >/dev/null 2>&1; then "$cluster" start "$dir" || exit 1; started_cluster=1; fi
# shellcheck disable=SC1090
. <("$cluster" ports "$dir")
# The schema as a user creates it: `clicktrail migrate` with clickhouse.cluster (idempotent).
cat > "$s/migrate.toml" <<EOF
[clickhouse]
url = "http://127.0.0.1:$S1R1_HTTP"
database = "clicktrail"
cluster = "$CLUSTER_NAME"
[[sites]]
key = "demo"
origins = ["*"]
EOF
"$bin" --config "$s/migrate.toml" migrate --no-insert-wait >/dev/null || { echo "clicktrail migrate failed"; exit 1; }

servers=""
for i in 1 2; do
  ch="$S1R1_HTTP"; [ $i = 2 ] && ch="$S2R1_HTTP"
  port=$((base + 500 + i))
  mkdir -p "$s/c$i"
  cat > "$s/c$i/clicktrail.toml" <<EOF
listen = "127.0.0.1:$port"
data_dir = "$s/c$i/data"
[server]
trusted_proxies = ["127.0.0.1"]
[clickhouse]
url = "http://127.0.0.1:$ch"
database = "clicktrail"
cluster = "$CLUSTER_NAME"
[compactor]
enabled = false
[freshness]
canary_interval = "5s"
[[sites]]
key = "demo"
origins = ["*"]
EOF
  # In a subshell, so that the kill -9 below is not reported by this shell's job control.
  pids+=("$( (nohup "$bin" serve --config "$s/c$i/clicktrail.toml" > "$s/c$i/out.log" 2>&1 & echo $!) )")
  servers+="    server c$i 127.0.0.1:$port check"$'\n'
done
for i in 1 2; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$((base + 500 + i))/healthz" >/dev/null && break; sleep 0.1; done
done
sed -e "s|@DIR@|$s|g" -e "s|@LISTEN@|127.0.0.1:$lb|" -e "s|@STATS@|127.0.0.1:$stats|" \
  "$here/deploy/haproxy/haproxy.cfg.in" | awk -v servers="$servers" '$0 == "@SERVERS@" { printf "%s", servers; next } { print }' > "$s/haproxy.cfg"
haproxy -c -q -f "$s/haproxy.cfg" || exit 1
haproxy -f "$s/haproxy.cfg" || exit 1
up() { curl -s "http://127.0.0.1:$stats/;csv" | awk -F, '$1 == "collectors" && $2 ~ /^c[0-9]/ { printf "%s=%s ", $2, $18 }' | sed 's/ $//'; }
for _ in $(seq 1 100); do [ "$(up)" = "c1=UP c2=UP" ] && break; sleep 0.1; done
check "haproxy sees both collectors (health: /readyz body accepting_events)" "c1=UP c2=UP" "$(up)"

# post PREFIX REQUESTS: REQUESTS posts of 10 page views each, 40 sessions; prints the status counts.
post() {
  python3 - "$1" "$2" "$(date +%s%3N)" <<'EOF' > "$s/bodies"
import json, sys
prefix, n, now = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for r in range(n):
    print(json.dumps({"site": "demo", "events": [{"type": "pageview", "id": f"{prefix}-{r}-{i}", "ts": now + i,
        "url": f"https://shop.example/p{i % 5}", "session": f"{prefix}-s{r % 40}", "visitor": f"v{r % 40}",
        "title": "t", "referrer": ""} for i in range(10)]}))
EOF
  while IFS= read -r b; do
    curl -s -o /dev/null -w '%{http_code}\n' -H 'Content-Type: text/plain' -H 'X-Forwarded-For: 203.0.113.7' \
      --data-binary "$b" "http://127.0.0.1:$lb/v1/events"
  done < "$s/bodies" | sort | uniq -c | awk '{ printf "%s x%s ", $2, $1 }' | sed 's/ $//'
}
count() { q "$S1R1_HTTP" "SELECT count() FROM clicktrail.events WHERE site = 'demo' AND event_id LIKE '$1-%'"; }
wait_count() { for _ in $(seq 1 300); do [ "$(count "$1")" = "$2" ] && break; sleep 0.1; done; count "$1"; }

check "200 posts through haproxy" "200 x200" "$(post smoke 200)"
check "both collectors took requests" "yes" "$(curl -s "http://127.0.0.1:$stats/;csv" | awk -F, '$1 == "collectors" && $2 ~ /^c[0-9]/ && $8 > 0' | wc -l | awk '{ print ($1 == 2) ? "yes" : "no" }')"
check "events through the Distributed table" "2000" "$(wait_count smoke 2000)"
check "no session on both shards" "0" "$(q "$S1R1_HTTP" "SELECT count() FROM (SELECT session_id FROM remote('127.0.0.1:$S1R1_TCP|127.0.0.1:$S1R2_TCP', clicktrail.events_local) WHERE site = 'demo' GROUP BY session_id) ANY INNER JOIN (SELECT session_id FROM remote('127.0.0.1:$S2R1_TCP|127.0.0.1:$S2R2_TCP', clicktrail.events_local) WHERE site = 'demo' GROUP BY session_id) USING session_id")"
check "client address from X-Forwarded-For (anonymised)" "203.0.113.0" "$(q "$S1R1_HTTP" "SELECT arrayStringConcat(groupUniqArray(ip), ',') FROM clicktrail.events WHERE site = 'demo' AND event_id LIKE 'smoke-%'")"

kill -9 "${pids[1]}"
check "with collector 2 killed (-9), posts still land (retry-on conn-failure)" "200 x20" "$(post dead 20)"
for _ in $(seq 1 100); do [ "$(up)" = "c1=UP c2=DOWN" ] && break; sleep 0.1; done
check "haproxy marks collector 2 down" "c1=UP c2=DOWN" "$(up)"
check "events through the Distributed table" "200" "$(wait_count dead 200)"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
