#!/usr/bin/env bash
# Events/s through haproxy with 1 and 2 collectors, into 1 and 2 shards (2 replicas each) of
# the loopback ClickHouse cluster (scripts/cluster.sh), and the CPU each component spent per
# event. Figures: docs/scaling.md and docs/benchmarks.md.
#
#   scripts/bench-cluster.sh [BINARY] [SECONDS]    # release build by default; 15 s per run
#
# One cluster serves all four runs: "2 shards" is the cluster `clicktrail` (s1r1 s1r2 | s2r1
# s2r2), "1 shard" a cluster `one_shard` of s1r1 and s1r2 only (added to every server's
# config.d; servers reload remote_servers by themselves), each in a database of its own.
# A run: load for SECONDS (4 client threads, 20 events a post), then until every collector's
# spool is delivered; CPU = utime + stime from /proc of every process, over the whole run.
# Ports: CLUSTER_BASE_PORT (default 24000) like scripts/test-cluster.sh.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$here/target/release/clicktrail}"; seconds="${2:-15}"
export CLUSTER_BASE_PORT="${CLUSTER_BASE_PORT:-24000}"
base="$CLUSTER_BASE_PORT"; lb=$((base + 500)); stats=$((base + 509))
dir="$(mktemp -d /tmp/clicktrail-bench-cluster.XXXXXX)"
cp "$bin" "$dir/clicktrail"; bin="$dir/clicktrail"
cluster="$here/scripts/cluster.sh"
tck="$(getconf CLK_TCK)"
pids=()
cleanup() {
  [ -f "$dir/haproxy.pid" ] && kill "$(cat "$dir/haproxy.pid")" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  "$cluster" stop "$dir" >/dev/null 2>&1
  rm -rf "$dir"
}
trap cleanup EXIT
q() { curl -sS --max-time 60 "http://127.0.0.1:$1/" --data-binary "$2"; }
# utime + stime in clock ticks, summed; a process that has just exited counts 0.
ticks() { local t=0 p v; for p in "$@"; do v="$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null)"; [ -n "$v" ] && t=$((t + v)); done; echo $t; }

"$cluster" start "$dir" >/dev/null || exit 1
# shellcheck disable=SC1090
. <("$cluster" ports "$dir")
for n in s1r1 s1r2 s2r1 s2r2; do
  cat > "$dir/$n/config.d/bench.xml" <<EOT
<yandex><remote_servers><one_shard><shard><internal_replication>true</internal_replication>
<replica><host>127.0.0.1</host><port>$S1R1_TCP</port></replica><replica><host>127.0.0.1</host><port>$S1R2_TCP</port></replica>
</shard></one_shard></remote_servers></yandex>
EOT
done
for _ in $(seq 1 300); do [ "$(q "$S2R2_HTTP" "SELECT count() FROM system.clusters WHERE cluster = 'one_shard'")" = 2 ] && [ "$(q "$S1R1_HTTP" "SELECT count() FROM system.clusters WHERE cluster = 'one_shard'")" = 2 ] && break; sleep 0.1; done
ch_pids=(); for n in s1r1 s1r2 s2r1 s2r2; do ch_pids+=("$(cat "$dir/$n/pid")"); done
zk_pid="$(cat "$dir/zk/pid")"

run() { # run SHARDS COLLECTORS
  local shards=$1 n=$2 db="bench_${1}s_${2}c" name entries i servers=""
  if [ "$shards" = 1 ]; then name=one_shard; entries=("$S1R1_HTTP" "$S1R2_HTTP"); else name=clicktrail; entries=("$S1R1_HTTP" "$S2R1_HTTP"); fi
  local cpids=()
  for i in $(seq 1 "$n"); do
    mkdir -p "$dir/$db/c$i"
    cat > "$dir/$db/c$i/clicktrail.toml" <<EOT
listen = "127.0.0.1:$((base + 500 + i))"
data_dir = "$dir/$db/c$i/data"
[clickhouse]
url = "http://127.0.0.1:${entries[$((i - 1))]}"
database = "$db"
cluster = "$name"
[compactor]
enabled = false
[freshness]
canary_interval = "0s"
[rate_limit]
per_ip_per_second = 0
per_site_per_second = 0
[[sites]]
key = "demo"
origins = ["*"]
EOT
  done
  "$bin" --config "$dir/$db/c1/clicktrail.toml" migrate --no-insert-wait >/dev/null 2>&1 || { echo "migrate failed for $db"; return 1; }
  for i in $(seq 1 "$n"); do
    cpids+=("$( (nohup "$bin" serve --config "$dir/$db/c$i/clicktrail.toml" > "$dir/$db/c$i/out.log" 2>&1 & echo $!) )")
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$((base + 500 + i))/healthz" >/dev/null && break; sleep 0.1; done
    servers+="    server c$i 127.0.0.1:$((base + 500 + i)) check"$'\n'
  done
  pids+=("${cpids[@]}")
  sed -e "s|@DIR@|$dir/$db|g" -e "s|@LISTEN@|127.0.0.1:$lb|" -e "s|@STATS@|127.0.0.1:$stats|" \
    "$here/deploy/haproxy/haproxy.cfg.in" | awk -v servers="$servers" '$0 == "@SERVERS@" { printf "%s", servers; next } { print }' > "$dir/$db/haproxy.cfg"
  haproxy -f "$dir/$db/haproxy.cfg" || return 1
  local hp; hp="$(cat "$dir/$db/haproxy.pid")"
  sleep 2
  local c0 h0 z0 k0; c0=$(ticks "${cpids[@]}"); h0=$(ticks "${ch_pids[@]}"); z0=$(ticks "$zk_pid"); k0=$(ticks "$hp")
  local t_start; t_start=$(date +%s.%N)
  python3 "$here/scripts/load-gen.py" "http://127.0.0.1:$lb" "$seconds" 4 "$dir/$db/acked.txt" "$db" > "$dir/$db/load.json" &
  local lg=$!; local l0; l0=$(ticks "$lg")
  local lgt=0; while kill -0 $lg 2>/dev/null; do lgt=$(ticks "$lg"); sleep 0.2; done
  local acked; acked=$(wc -l < "$dir/$db/acked.txt")
  # Until ClickHouse has every acknowledged event (the spools delivered).
  for _ in $(seq 1 600); do [ "$(q "$S1R1_HTTP" "SELECT count() FROM $db.events")" -ge "$acked" ] && break; sleep 0.1; done
  local t_end; t_end=$(date +%s.%N)
  local c1 h1 z1 k1; c1=$(ticks "${cpids[@]}"); h1=$(ticks "${ch_pids[@]}"); z1=$(ticks "$zk_pid"); k1=$(ticks "$hp")
  python3 - "$shards" "$n" "$acked" "$seconds" "$t_start" "$t_end" "$tck" $((c1 - c0)) $((h1 - h0)) $((z1 - z0)) $((k1 - k0)) $((lgt - l0)) <<'PY'
import sys
shards, n, acked, secs, t0, t1, tck, *cpu = sys.argv[1:]
acked, secs, tck = int(acked), float(secs), int(tck)
names = ["collectors", "clickhouse", "zookeeper", "haproxy", "load generator"]
per = " ".join(f"{k} {int(v) / tck / acked * 1e6:.1f}" for k, v in zip(names, cpu))
total = sum(int(v) for v in cpu) / tck
print(f"| {shards} | {n} | {acked / secs:,.0f} | {acked:,} | {float(t1) - float(t0):.1f} | {total:.1f} | {per} |")
PY
  kill "$hp"; for p in "${cpids[@]}"; do kill "$p"; done; for p in "${cpids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
  q "$S1R1_HTTP" "DROP DATABASE IF EXISTS $db ON CLUSTER $name" >/dev/null
}

echo "| shards | collectors | events/s acknowledged | events | run s (load + drain) | CPU s (all) | CPU µs per event, by component |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for shards in 1 2; do for n in 1 2; do run "$shards" "$n"; done; done
