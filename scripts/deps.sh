#!/usr/bin/env bash
# Installs what `make run` and `make test` need and is missing, on Debian/Ubuntu.
# Idempotent and quiet when everything is there. Other platforms: docker compose up.
set -euo pipefail

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; exit 1; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then need_root apt-get update -qq; apt_updated=1; fi
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ! -x /usr/sbin/clickhouse-server ]; then
  echo "installing clickhouse-server (Debian package)..."
  apt_install clickhouse-server
  # The package may start a system instance on the default ports; our runs use their own.
  if command -v systemctl >/dev/null && systemctl is-active --quiet clickhouse-server 2>/dev/null; then
    need_root systemctl stop clickhouse-server || true
  fi
fi
command -v curl >/dev/null || apt_install curl

if [ "${1:-}" = "--test" ]; then
  if ! python3 -c "import chdb" 2>/dev/null; then
    echo "installing chdb-core (ClickHouse 26.x in-process, for migration checks)..."
    python3 -m pip install --quiet chdb-core
  fi
  if ! python3 -c "import pyarrow" 2>/dev/null; then
    echo "installing pyarrow (independent reader of the Parquet archive in tests)..."
    python3 -m pip install --quiet pyarrow
  fi
fi
