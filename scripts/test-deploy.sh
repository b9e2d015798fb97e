#!/usr/bin/env bash
# Checks the deployment files, offline: docker-compose.yml, deploy/k8s, the Debian package.
#   scripts/test-deploy.sh              every check
#   scripts/test-deploy.sh --deb-only   build target/debian/clicktrail_*.deb and check it
# Installs what is missing: Debian's docker-compose and kubernetes-client (kubectl), systemd
# (systemd-analyze), cargo-deb (cargo install, once). Python tools come from var/venv
# (scripts/deps.sh --test). No Docker engine, cluster or running systemd is needed.
# Env: KUBE_VERSIONS (default "1.31 1.37": the oldest EKS still supports and the newest the
# schemas know), CT_SKIP_DEB=1 skips the package (its release build is the slow part).
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
py="$here/var/venv/bin/python3"
kube_versions="${KUBE_VERSIONS:-1.31 1.37}"

log() { printf '==> %s\n' "$*"; }
die() { printf 'test-deploy: %s\n' "$*" >&2; exit 1; }

[ -x "$py" ] || die "var/venv missing: run scripts/deps.sh --test (or make deps-test)"

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || die "install $* (apt-get not available)"
  [ "$(id -u)" -eq 0 ] || die "missing $*; run as root or install it: apt-get install $*"
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  log "installing $* (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

failed=0 passed=0
check() {
  local name="$1"; shift
  log "$name"
  if "$@"; then
    printf '    ok\n'; passed=$((passed + 1))
  else
    printf '    FAILED: %s\n' "$name" >&2; failed=$((failed + 1))
  fi
}

tmp="$(mktemp -d "${TMPDIR:-/tmp}/clicktrail-deploy.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# --- docker-compose.yml -------------------------------------------------------------------
compose_checks() {
  command -v docker-compose >/dev/null || apt_install docker-compose
  # Throwaway values: the real ones live in the operator's .env, never in the repo.
  printf 'CLICKHOUSE_PASSWORD=ch-test\nGRAFANA_CLICKHOUSE_PASSWORD=gf-test\nGRAFANA_ADMIN_PASSWORD=admin-test\n' > "$tmp/test.env"
  check "docker-compose config" \
    sh -c "docker-compose --env-file '$tmp/test.env' config > '$tmp/compose.yml'"
  check "compose: ClickHouse private and passworded, collector healthcheck and spool volume, Prometheus rules, Grafana provisioning" \
    "$py" tests/deploy/check_deploy.py compose "$tmp/compose.yml"
  check "compose: refuses to start with the passwords of .env.example (empty)" \
    sh -c "! docker-compose --env-file .env.example config -q 2>'$tmp/nopw.err' && grep -q CLICKHOUSE_PASSWORD '$tmp/nopw.err'"
  check "ClickHouse and Grafana config files are well-formed" \
    "$py" -c '
import sys, xml.etree.ElementTree as ET, yaml
for f in sys.argv[1:]:
    (yaml.safe_load if f.endswith(".yml") else ET.parse)(open(f))
' deploy/clickhouse/low-memory.xml deploy/clickhouse/low-memory-users.xml deploy/clickhouse/grafana-user.xml \
      deploy/grafana/provisioning/datasources/clicktrail.yml deploy/grafana/provisioning/dashboards/clicktrail.yml
}

# --- deploy/k8s ---------------------------------------------------------------------------
kube_validate() {
  # --strict: an unknown field is an error (the API server would drop a misspelt one silently).
  # Unknown kinds only warn; the Prometheus operator's are checked by check_deploy.py.
  "$here/var/venv/bin/kubernetes-validate" --strict --quiet -k "$1" "$tmp/k8s.yml" > "$tmp/kv.out" 2>&1
  local rc=$?
  grep -v "^WARN .*Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\) " "$tmp/kv.out" >&2
  return $rc
}

k8s_checks() {
  command -v kubectl >/dev/null || apt_install kubernetes-client
  check "kubectl kustomize deploy/k8s" \
    sh -c "kubectl kustomize deploy/k8s > '$tmp/k8s.yml' 2>'$tmp/kustomize.err' || { cat '$tmp/kustomize.err' >&2; exit 1; }"
  local v
  for v in $kube_versions; do
    check "kubernetes-validate --strict -k $v" kube_validate "$v"
  done
  check "k8s: ServiceMonitor/PrometheusRule schemas, rules == deploy/prometheus/rules.yml, probes, volumes, selectors, config keys" \
    "$py" tests/deploy/check_deploy.py k8s "$tmp/k8s.yml"
}

# --- the Debian package -------------------------------------------------------------------
deb_checks() {
  if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb (cargo install, once)"
    flock /tmp/cargo.lock cargo install cargo-deb --locked || die "cargo install cargo-deb failed"
  fi
  command -v systemd-analyze >/dev/null || apt_install systemd
  log "cargo deb (release build)"
  rm -f target/debian/clicktrail_*.deb
  # One cargo build on the machine at a time.
  if ! flock /tmp/cargo.lock cargo deb --locked > "$tmp/cargo-deb.log" 2>&1; then
    tail -n 30 "$tmp/cargo-deb.log" >&2
    check "cargo deb builds the package" false
    return
  fi
  local deb
  deb="$(ls target/debian/clicktrail_*.deb 2>/dev/null | head -n1)"
  check "cargo deb builds target/debian/clicktrail_*.deb" test -f "$deb"
  [ -f "$deb" ] || return
  dpkg-deb -c "$deb" | awk '{print $1, $NF}' > "$tmp/contents"
  deb_has() {
    local mode="$1" path="$2"
    grep -qE "^${mode} \./${path}\$" "$tmp/contents" || { echo "    missing $mode ./$path" >&2; return 1; }
  }
  deb_contents() {
    local ok=0
    deb_has '-rwxr-xr-x' usr/bin/clicktrail || ok=1
    deb_has '-rw-r-----' etc/clicktrail/clicktrail.toml || ok=1
    deb_has '-rw-r--r--' 'lib/systemd/system/clicktrail\.service|usr/lib/systemd/system/clicktrail\.service' || ok=1
    deb_has '-rw-r--r--' usr/share/clicktrail/prometheus/rules.yml || ok=1
    deb_has '-rw-r--r--' usr/share/clicktrail/grafana/clicktrail.json || ok=1
    deb_has '-rw-r--r--' usr/share/clicktrail/grafana/clicktrail-analytics.json || ok=1
    deb_has '-rw-r--r--' usr/share/doc/clicktrail/queries.md || ok=1
    deb_has '-rw-r--r--' usr/share/doc/clicktrail/operations.md || ok=1
    return $ok
  }
  check "package contents (binary, /etc/clicktrail/clicktrail.toml, unit, rules, dashboards, docs)" deb_contents
  check "package control: conffile, maintainer scripts create the user and enable the unit" sh -c "
    dpkg-deb -e '$deb' '$tmp/control' &&
    grep -qx /etc/clicktrail/clicktrail.toml '$tmp/control/conffiles' &&
    grep -q 'adduser --system' '$tmp/control/postinst' &&
    grep -q 'deb-systemd-helper' '$tmp/control/postinst'"

  dpkg-deb -x "$deb" "$tmp/root"
  unit="$(find "$tmp/root" -name clicktrail.service | head -n1)"
  # verify wants the binaries the unit names to exist: point it at the extracted one.
  sed -e "s|/usr/bin/clicktrail|$tmp/root/usr/bin/clicktrail|g" "$unit" > "$tmp/clicktrail.service"
  check "systemd-analyze verify clicktrail.service" sh -c "
    SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no '$tmp/clicktrail.service' 2>'$tmp/verify.err'
    rc=\$?
    # Without a running systemd it may still complain about the host (no D-Bus, no /run/systemd):
    # only lines about our unit count.
    grep 'clicktrail.service' '$tmp/verify.err' >&2 && exit 1
    exit \$rc"
  check "unit hardening (own user, StateDirectory, ProtectSystem=strict, ...)" sh -c "
    for k in 'User=clicktrail' 'StateDirectory=clicktrail' 'ProtectSystem=strict' 'NoNewPrivileges=yes' \
             'ProtectHome=yes' 'PrivateTmp=yes' 'CapabilityBoundingSet=' 'SystemCallFilter=@system-service'; do
      grep -qx \"\$k\" '$unit' || { echo \"    unit lacks \$k\" >&2; exit 1; }
    done"
  # systemd >= 250 (not Ubuntu 22.04's) can score a unit file offline: 0 is locked down, 10 is none.
  if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
    check "systemd-analyze security: exposure at most 2.5 (of 10)" sh -c "
      systemd-analyze security --offline=yes --threshold=25 '$tmp/clicktrail.service' > '$tmp/security.txt' 2>&1 \
        || { tail -n 25 '$tmp/security.txt' >&2; exit 1; }"
  fi
  check "the packaged binary runs" "$tmp/root/usr/bin/clicktrail" --version
}

# --- docs/operations.md -------------------------------------------------------------------
docs_checks() {
  check "docs/operations.md has a 'what to do' section for every alert in rules.yml" "$py" -c '
import re, sys, yaml
alerts = {r["alert"] for g in yaml.safe_load(open("deploy/prometheus/rules.yml"))["groups"]
          for r in g["rules"] if "alert" in r}
doc = set(re.findall(r"^### (Clicktrail\w+)", open("docs/operations.md").read(), re.M))
for a in sorted(alerts - doc):
    print("    no section for", a, file=sys.stderr)
for a in sorted(doc - alerts):
    print("    section for an alert that does not exist:", a, file=sys.stderr)
sys.exit(1 if alerts != doc else 0)
'
}

if [ "${1:-}" = "--deb-only" ]; then
  deb_checks
else
  compose_checks
  k8s_checks
  docs_checks
  if [ "${CT_SKIP_DEB:-}" = 1 ]; then log "CT_SKIP_DEB=1: Debian package not checked"; else deb_checks; fi
fi

printf 'test-deploy: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
