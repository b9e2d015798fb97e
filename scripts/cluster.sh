#!/usr/bin/env bash
# A ClickHouse cluster on loopback for local runs and tests: one ZooKeeper (Debian's `zookeeper`
# package, run as a plain java process) and 4 clickhouse-server processes, 2 shards x 2 replicas,
# cluster name `clicktrail`. Everything (configs, data, logs, pids) lives under DIR.
#
#   scripts/cluster.sh start DIR          # returns once ZooKeeper says imok and every server answers /ping
#   scripts/cluster.sh stop DIR           # stops everything it started under DIR; nothing is left running
#   scripts/cluster.sh status DIR         # one line per process; exit 0 only if all are up
#   scripts/cluster.sh ports DIR          # the ports as shell variables (source it)
#   scripts/cluster.sh kill DIR NODE      # kill -9 one server (s1r1 s1r2 s2r1 s2r2) or zk, for failure tests
#   scripts/cluster.sh start-node DIR NODE  # (re)start one server or zk
#
# CLUSTER_PASSWORD (default empty): the `default` user's password on every server, and the
# <user>/<password> that remote_servers gives each replica (what Distributed inserts and the
# collectors' remote() probes log in with). Read at each start, so `CLUSTER_PASSWORD=other
# scripts/cluster.sh start-node DIR s2r2` starts one server that the others cannot log in to.
#
# Ports: CLUSTER_BASE_PORT (default 31000) + offsets, fixed per DIR once started:
#   zookeeper   BASE+81
#   node k=1..4 (s1r1 s1r2 s2r1 s2r2): tcp BASE+100k, http BASE+100k+23, interserver BASE+100k+9
# Server configs: config/clickhouse/config.xml.in (the single-node low-memory config) plus
# deploy/clickhouse/cluster.xml.in and node.xml.in in config.d/ (the shipped cluster config).
# Requires: apt-get install -y clickhouse-server zookeeper
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
server="${CLICKHOUSE_SERVER:-/usr/sbin/clickhouse-server}"
java="${JAVA:-java}"
cluster_name="${CLUSTER_NAME:-clicktrail}"
nodes=(s1r1 s1r2 s2r1 s2r2)
timeout_s="${CLUSTER_START_TIMEOUT:-30}"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,22p' "$0" >&2; exit 2; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

# Ports are chosen once per DIR and kept in DIR/ports.env, so a restart reuses them.
if [ ! -f "$dir/ports.env" ]; then
  base="${CLUSTER_BASE_PORT:-31000}"
  {
    echo "CLUSTER_NAME=$cluster_name"
    echo "ZK_PORT=$((base + 81))"
    k=1
    for n in "${nodes[@]}"; do
      u="${n^^}"
      echo "${u}_TCP=$((base + 100 * k))"
      echo "${u}_HTTP=$((base + 100 * k + 23))"
      echo "${u}_INTERSERVER=$((base + 100 * k + 9))"
      k=$((k + 1))
    done
  } > "$dir/ports.env"
fi
# shellcheck disable=SC1091
. "$dir/ports.env"

port_of() { local v="${1^^}_$2"; echo "${!v}"; }

# A pid file counts only if that process is alive and is ours (its command line names DIR).
alive() {
  local f="$1" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/"
}

# `srvr` names the mode only once the server serves requests (`ruok` says imok earlier, and
# ClickHouse's first handshake may then fail with "Cannot read all data").
zk_ok() { (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf srvr >&3 && cat <&3) 2>/dev/null | grep -q '^Mode: '; }
ping_ok() { curl -sf --max-time 1 "http://127.0.0.1:$1/ping" >/dev/null 2>&1; }

start_zk() {
  local z="$dir/zk"
  if alive "$z/pid"; then return 0; fi
  mkdir -p "$z/data" "$z/conf" "$z/log"
  sed -e "s|@DIR@|$z|g" -e "s|@ZK_PORT@|$ZK_PORT|g" "$here/deploy/clickhouse/zoo.cfg.in" > "$z/conf/zoo.cfg"
  cat > "$z/conf/log4j.properties" <<EOF
log4j.rootLogger=WARN, FILE
log4j.appender.FILE=org.apache.log4j.FileAppender
log4j.appender.FILE.File=$z/log/zookeeper.log
log4j.appender.FILE.layout=org.apache.log4j.PatternLayout
log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n
EOF
  [ -f /usr/share/java/zookeeper.jar ] || { echo "ZooKeeper not found; run: apt-get install -y zookeeper" >&2; exit 1; }
  # zookeeper.jar's manifest names its dependencies; slf4j-log4j12 + log4j give it a log file.
  nohup "$java" -Xms32m -Xmx256m -XX:+UseSerialGC \
    -cp "$z/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
    -Dlog4j.configuration="file:$z/conf/log4j.properties" -Dzookeeper.jmx.log4j.disable=true \
    org.apache.zookeeper.server.ZooKeeperServerMain "$z/conf/zoo.cfg" > "$z/log/stdout.log" 2>&1 &
  echo $! > "$z/pid"
}

wait_zk() {
  local deadline=$((SECONDS + timeout_s))
  until zk_ok; do
    alive "$dir/zk/pid" || { echo "ZooKeeper exited; see $dir/zk/log" >&2; tail -n 20 "$dir/zk/log/"* >&2 || true; return 1; }
    [ $SECONDS -lt $deadline ] || { echo "ZooKeeper did not answer on port $ZK_PORT within ${timeout_s}s" >&2; return 1; }
    sleep 0.1
  done
}

render_node() {
  local n="$1" d="$dir/$1" shard="0${1:1:1}"
  mkdir -p "$d/log" "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas" "$d/config.d"
  sed -e "s|@DIR@|$d|g" -e "s|@HTTP_PORT@|$(port_of "$n" HTTP)|g" -e "s|@TCP_PORT@|$(port_of "$n" TCP)|g" \
    "$here/config/clickhouse/config.xml.in" > "$d/config.xml"
  local pw="${CLUSTER_PASSWORD:-}" pw_sed
  pw_sed="$(printf '%s' "$pw" | sed -e 's/[\\|&]/\\&/g')"
  if [ -n "$pw" ]; then
    sed -e "s|<password></password>|<password>$pw_sed</password>|" "$here/config/clickhouse/users.xml" > "$d/users.xml"
  else
    cp "$here/config/clickhouse/users.xml" "$d/users.xml"
  fi
  local args=(-e "s|@CLUSTER@|$CLUSTER_NAME|g" -e "s|@ZK_HOST@|127.0.0.1|g" -e "s|@ZK_PORT@|$ZK_PORT|g")
  for m in "${nodes[@]}"; do
    args+=(-e "s|@${m^^}_HOST@|127.0.0.1|g" -e "s|@${m^^}_TCP@|$(port_of "$m" TCP)|g")
  done
  [ -z "$pw" ] || args+=(-e "s|</port></replica>|</port><user>default</user><password>$pw_sed</password></replica>|")
  sed "${args[@]}" "$here/deploy/clickhouse/cluster.xml.in" > "$d/config.d/cluster.xml"
  sed -e "s|@CLUSTER@|$CLUSTER_NAME|g" -e "s|@SHARD@|$shard|g" -e "s|@REPLICA@|$n|g" \
    -e "s|@HOST@|127.0.0.1|g" -e "s|@INTERSERVER_PORT@|$(port_of "$n" INTERSERVER)|g" \
    "$here/deploy/clickhouse/node.xml.in" > "$d/config.d/node.xml"
}

start_node() {
  local n="$1" d="$dir/$1"
  if alive "$d/pid"; then return 0; fi
  [ -x "$server" ] || { echo "clickhouse-server not found at $server; run: apt-get install -y clickhouse-server" >&2; exit 1; }
  render_node "$n"
  # 18.16 checks the status file's lock itself; a stale file from a kill -9 is fine.
  nohup "$server" --config-file="$d/config.xml" > "$d/log/stdout.log" 2>&1 &
  echo $! > "$d/pid"
}

wait_node() {
  local n="$1" d="$dir/$1" http deadline=$((SECONDS + timeout_s))
  http="$(port_of "$n" HTTP)"
  until ping_ok "$http"; do
    alive "$d/pid" || { echo "$n exited; see $d/log" >&2; tail -n 20 "$d/log/error.log" "$d/log/stdout.log" >&2 || true; return 1; }
    [ $SECONDS -lt $deadline ] || { echo "$n did not answer on port $http within ${timeout_s}s" >&2; return 1; }
    sleep 0.1
  done
}

# TERM, wait up to 10 s, then KILL. Several at once so stop takes as long as the slowest.
stop_pids() {
  local pids=() f
  for f in "$@"; do
    if alive "$f"; then pids+=("$(cat "$f")"); fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 100); do
      local left=0 p
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
      [ $left = 0 ] && break
      sleep 0.1
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
    for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
  fi
  rm -f "$@"
}

node_file() { if [ "$1" = zk ]; then echo "$dir/zk/pid"; else echo "$dir/$1/pid"; fi; }
check_node() { case " ${nodes[*]} zk " in *" $1 "*) ;; *) echo "unknown node $1 (one of: ${nodes[*]} zk)" >&2; exit 2;; esac; }

case "$cmd" in
  start)
    start_zk
    wait_zk
    for n in "${nodes[@]}"; do start_node "$n"; done
    for n in "${nodes[@]}"; do wait_node "$n"; done
    echo "cluster $CLUSTER_NAME up in $dir: zookeeper 127.0.0.1:$ZK_PORT; http $S1R1_HTTP $S1R2_HTTP (shard 01), $S2R1_HTTP $S2R2_HTTP (shard 02)" ;;
  stop)
    files=()
    for n in "${nodes[@]}"; do files+=("$dir/$n/pid"); done
    stop_pids "${files[@]}"
    stop_pids "$dir/zk/pid" ;;
  status)
    ok=0
    if alive "$dir/zk/pid" && zk_ok; then echo "zk    up    pid $(cat "$dir/zk/pid") port $ZK_PORT"; else echo "zk    DOWN  port $ZK_PORT"; ok=1; fi
    for n in "${nodes[@]}"; do
      http="$(port_of "$n" HTTP)"
      if alive "$dir/$n/pid" && ping_ok "$http"; then
        echo "$n  up    pid $(cat "$dir/$n/pid") http $http tcp $(port_of "$n" TCP) rss $(($(awk '/VmRSS/{print $2}' "/proc/$(cat "$dir/$n/pid")/status") / 1024)) MiB"
      else echo "$n  DOWN  http $http"; ok=1; fi
    done
    exit $ok ;;
  ports) cat "$dir/ports.env" ;;
  kill)
    n="${3:?NODE missing}"; check_node "$n"; f="$(node_file "$n")"
    if alive "$f"; then pid="$(cat "$f")"; kill -9 "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; fi
    rm -f "$f" ;;
  start-node)
    n="${3:?NODE missing}"; check_node "$n"
    if [ "$n" = zk ]; then start_zk; wait_zk; else start_node "$n"; wait_node "$n"; fi ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
