#!/usr/bin/env bash
# Run a private ClickHouse server for local use and tests.
#   scripts/clickhouse.sh start DIR HTTP_PORT TCP_PORT   # returns once /ping answers
#   scripts/clickhouse.sh stop DIR
#   scripts/clickhouse.sh locate                         # prints the server to run, or says what to install
# Everything (data, logs, pid) lives under DIR, so several servers can run side by side.
#
# Which server: $CLICKHOUSE_SERVER if set, else an installed clickhouse-server (official
# packages put it in /usr/bin, Debian's in /usr/sbin), else a `clickhouse` multi-binary (in
# PATH, /usr/local/bin, or ./clickhouse as its one-line installer leaves it). Any release from
# 18.16 on works with config/clickhouse/.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"

# The multi-binary picks its tool from the name it is started by, so a link named
# clickhouse-server to it is a server; the Rust tests take that one path in CLICKHOUSE_SERVER.
locate() {
  if [ -n "${CLICKHOUSE_SERVER:-}" ]; then
    [ -x "$CLICKHOUSE_SERVER" ] || { echo "CLICKHOUSE_SERVER=$CLICKHOUSE_SERVER is not an executable" >&2; return 1; }
    echo "$CLICKHOUSE_SERVER"; return 0
  fi
  local c
  for c in "$(command -v clickhouse-server 2>/dev/null || true)" /usr/bin/clickhouse-server \
           /usr/sbin/clickhouse-server /usr/local/bin/clickhouse-server; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  for c in "$(command -v clickhouse 2>/dev/null || true)" /usr/bin/clickhouse /usr/local/bin/clickhouse \
           "$here/clickhouse" "$here/var/bin/clickhouse"; do
    if [ -n "$c" ] && [ -x "$c" ] && [ ! -d "$c" ]; then
      mkdir -p "$here/var/bin"
      ln -sfn "$(cd "$(dirname "$c")" && pwd)/$(basename "$c")" "$here/var/bin/clickhouse-server"
      echo "$here/var/bin/clickhouse-server"; return 0
    fi
  done
  cat >&2 <<'MSG'
No ClickHouse server found. Install one of (any release from 18.16 on):
  - the official packages: clickhouse-server (https://clickhouse.com/docs/install, "Debian/Ubuntu")
  - the single binary: `curl https://clickhouse.com/ | sh` in this directory, or put `clickhouse` in PATH
  - Debian's package, where the release still has it: apt-get install clickhouse-server
or point CLICKHOUSE_SERVER at a clickhouse-server executable.
MSG
  return 1
}

cmd="${1:-}"
if [ "$cmd" = locate ]; then locate; exit; fi
dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start DIR HTTP_PORT TCP_PORT | stop DIR | locate" >&2; exit 2; }
mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"

case "$cmd" in
  start)
    http="${3:?HTTP_PORT missing}"; tcp="${4:?TCP_PORT missing}"
    server="$(locate)" || exit 1
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
