#!/usr/bin/env bash
# The analyst rollups and queries (migrations/0002_analytics.sql, docs/queries.md) on a real
# ClickHouse 18.16 and on chDB 26.x, checked cell by cell by tests/chdb/analytics.py; the SQL of
# deploy/grafana/clicktrail-analytics.json (macros expanded as the plugin does) by tests/chdb/grafana.py.
#   scripts/test-analytics.sh            # both
#   scripts/test-analytics.sh 18.16      # only the real server
#   scripts/test-analytics.sh chdb       # only chDB
# The private server runs on free loopback ports with its own data dir, and is stopped on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
which="${1:-all}"
py="${PYTHON:-python3}"

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [ "$which" = all ] || [ "$which" = 18.16 ]; then
  dir="$(mktemp -d /tmp/clicktrail-analytics.XXXXXX)"
  trap '"$here/scripts/clickhouse.sh" stop "$dir" || true; rm -rf "$dir"' EXIT
  http="$(free_port)"; tcp="$(free_port)"
  "$here/scripts/clickhouse.sh" start "$dir" "$http" "$tcp"
  "$py" "$here/tests/chdb/analytics.py" --http "http://127.0.0.1:$http" --version 18.16
  "$py" "$here/tests/chdb/grafana.py" --http "http://127.0.0.1:$http" --version 18.16
fi
if [ "$which" = all ] || [ "$which" = chdb ]; then
  "$py" "$here/tests/chdb/analytics.py"
  "$py" "$here/tests/chdb/grafana.py"
fi
echo "analytics: all checks passed ($which)"
