#!/usr/bin/env bash
# `make run`: a local ClickHouse under var/, the schema, and the collector with its demo page.
set -euo pipefail
cd "$(dirname "$0")/.."
ch_dir="$PWD/var/clickhouse"
http_port="${CH_HTTP_PORT:-18123}"
tcp_port="${CH_TCP_PORT:-19000}"
export CLICKTRAIL_CLICKHOUSE_URL="${CLICKTRAIL_CLICKHOUSE_URL:-http://127.0.0.1:$http_port}"

scripts/clickhouse.sh start "$ch_dir" "$http_port" "$tcp_port"
trap 'scripts/clickhouse.sh stop "$ch_dir"' EXIT
# No collector runs yet: a cutover migration (0006) need not wait for its inserts.
target/release/clicktrail migrate --no-insert-wait
listen="${CLICKTRAIL_LISTEN:-127.0.0.1:8080}"
echo
echo "  demo page:   http://$listen/   (click around, then:)"
echo "  your events: curl '$CLICKTRAIL_CLICKHOUSE_URL/?query=SELECT+type,x,y,selector,path+FROM+clicktrail.events+ORDER+BY+received_at+DESC+LIMIT+20'"
admin="${CLICKTRAIL_ADMIN_LISTEN:-127.0.0.1:9091}"
echo "  metrics:     http://$admin/metrics   ([admin] listen)   stop: Ctrl-C"
echo
target/release/clicktrail serve
