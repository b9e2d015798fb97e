#!/usr/bin/env bash
# Run a private ClickHouse server for local use and tests.
#   scripts/clickhouse.sh start DIR HTTP_PORT TCP_PORT   # returns once /ping answers
#   scripts/clickhouse.sh stop DIR
# Everything (data, logs, pid) lives under DIR, so several servers can run side by side.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
server="${CLICKHOUSE_SERVER:-/usr/sbin/clickhouse-server}"

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR HTTP_PORT TCP_PORT | stop DIR" >&2; exit 2; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

case "$cmd" in
  start)
    http="${3:?HTTP_PORT missing}"; tcp="${4:?TCP_PORT missing}"
    [ -x "$server" ] || { echo "clickhouse-server not found at $server; run: apt-get install -y clickhouse-server" >&2; exit 1; }
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "ClickHouse already running in $dir (pid $(cat "$dir/pid"))"; exit 0
    fi
    mkdir -p "$dir/log" "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
    sed -e "s|@DIR@|$dir|g" -e "s|@HTTP_PORT@|$http|g" -e "s|@TCP_PORT@|$tcp|g" \
      "$here/config/clickhouse/config.xml.in" > "$dir/config.xml"
    cp "$here/config/clickhouse/users.xml" "$dir/users.xml"
    nohup "$server" --config-file="$dir/config.xml" > "$dir/log/stdout.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 1 300); do
      if curl -sf "http://127.0.0.1:$http/ping" >/dev/null 2>&1; then
        echo "ClickHouse up on http://127.0.0.1:$http (data in $dir)"; exit 0
      fi
      kill -0 "$(cat "$dir/pid")" 2>/dev/null || { echo "ClickHouse exited; see $dir/log" >&2; tail -n 20 "$dir/log/error.log" "$dir/log/stdout.log" >&2 || true; exit 1; }
      sleep 0.1
    done
    echo "ClickHouse did not answer on port $http within 30 s; see $dir/log" >&2; exit 1 ;;
  stop)
    if [ -f "$dir/pid" ]; then
      pid="$(cat "$dir/pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/pid"
    fi ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
