#!/usr/bin/env bash
# Installs what `make run` and `make test` need and is missing, on Debian 12/13 and Ubuntu
# 22.04/24.04. Idempotent and quiet when everything is there. Other platforms: docker compose up.
#   scripts/deps.sh          ClickHouse, curl
#   scripts/deps.sh --test   also Node and npm, ZooKeeper and haproxy (cluster test), and the
#                            Python test tools in var/venv
#
# Python packages go into a virtualenv under var/ (never the system Python, which Debian 12
# and Ubuntu 23.04+ refuse to pip into); the Makefile puts var/venv/bin first in PATH, so the
# tests' `python3` is the venv's.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/var/venv"
requirements="$here/scripts/requirements-test.txt"

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; exit 1; fi
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || { echo "apt-get not found; install $* by hand (or use docker compose)" >&2; exit 1; }
  if [ "$apt_updated" = 0 ]; then need_root apt-get update -qq; apt_updated=1; fi
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Whether apt can install a package here (newer releases dropped Debian's clickhouse-server).
apt_has() {
  command -v apt-cache >/dev/null || return 1
  if [ "$apt_updated" = 0 ]; then need_root apt-get update -qq; apt_updated=1; fi
  local candidate
  candidate="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  [ -n "$candidate" ] && [ "$candidate" != "(none)" ]
}

# --- ClickHouse: one already installed (official packages or a `clickhouse` binary) first,
# Debian's package only when there is none.
if ! "$here/scripts/clickhouse.sh" locate >/dev/null 2>&1; then
  if apt_has clickhouse-server; then
    echo "installing clickhouse-server (Debian package)..."
    apt_install clickhouse-server
    # The package may start a system instance on the default ports; our runs use their own.
    if command -v systemctl >/dev/null && systemctl is-active --quiet clickhouse-server 2>/dev/null; then
      need_root systemctl stop clickhouse-server || true
    fi
  fi
  "$here/scripts/clickhouse.sh" locate >/dev/null # prints what to install when still missing
fi
command -v curl >/dev/null || apt_install curl

[ "${1:-}" = "--test" ] || exit 0

# --- Node and npm for the snippet's build and browser tests. An npm that came with Node
# (NodeSource) counts; Debian's npm package would conflict with that Node.
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)..."
  apt_install "${missing[@]}"
fi

# --- The cluster test (make test-cluster): Debian's ZooKeeper (run as a plain java process by
# scripts/cluster.sh, never as a service) and haproxy in front of the collectors.
missing=()
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)..."
  apt_install "${missing[@]}"
  # The packages may start their services; the tests start their own on other ports.
  if command -v systemctl >/dev/null; then
    for unit in zookeeper haproxy; do
      systemctl is-active --quiet "$unit" 2>/dev/null && need_root systemctl stop "$unit" || true
    done
  fi
fi

# --- Python tools in var/venv: chdb-core (ClickHouse 26.x in-process, migration checks),
# pyarrow (independent reader of the Parquet archive), kubernetes-validate (deploy/k8s), moto
# (a real S3 API for the archive tests), schemathesis (API property tests).
command -v python3 >/dev/null || apt_install python3
if [ ! -x "$venv/bin/python3" ]; then
  # Debian and Ubuntu ship venv without ensurepip unless python3-venv is installed.
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "installing python3-venv (apt)..."
    apt_install python3-venv
  fi
  echo "creating the test virtualenv in var/venv..."
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
# Reinstall only when the requirements changed since the last successful install.
if ! cmp -s "$requirements" "$venv/.ct-requirements"; then
  echo "installing Python test tools into var/venv ($(grep -c '^[a-z]' "$requirements") packages)..."
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.ct-requirements"
fi
