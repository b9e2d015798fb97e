#!/usr/bin/env bash
# Check the Prometheus alerting rules, the example scrape config and the Grafana
# dashboard shipped in deploy/.
#
#   bash scripts/test-prometheus.sh
#
# Installs Debian's `prometheus` package (which ships promtool) when promtool is
# missing, never leaves the Prometheus daemon running, and exits non-zero if any
# check fails. PROMTOOL=/path/to/promtool uses a specific binary instead.
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- promtool ---------------------------------------------------------------
install_promtool() {
  command -v apt-get >/dev/null 2>&1 || die "promtool not found and apt-get is unavailable; install Prometheus' promtool"
  [ "$(id -u)" -eq 0 ] || die "promtool not found; run as root to install it (apt-get install prometheus)"
  log "promtool not found: installing Debian's prometheus package"
  # Prometheus daemons running before we install: never touch those.
  local before after pid added_policy=""
  before="$(pgrep -x prometheus 2>/dev/null | sort || true)"
  # Ask invoke-rc.d not to start services during this install (standard Debian
  # policy-rc.d mechanism), only if no policy is in place already; removed below.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && added_policy=1
  fi
  local rc=0
  apt-get update -qq || rc=$?
  if [ "$rc" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus || rc=$?
  fi
  [ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d
  # If the package started the daemon anyway, stop what it started (by pid).
  command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] && systemctl stop prometheus 2>/dev/null || true
  after="$(pgrep -x prometheus 2>/dev/null | sort || true)"
  for pid in $(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after")); do
    log "stopping prometheus daemon started by the package install (pid $pid)"
    kill "$pid" 2>/dev/null || true
  done
  [ "$rc" -eq 0 ] || die "apt-get failed (exit $rc)"
}

PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
if [ -z "$PROMTOOL" ]; then
  install_promtool
  PROMTOOL="$(command -v promtool || true)"
  [ -n "$PROMTOOL" ] || die "promtool still not found after installing prometheus"
fi
log "using $("$PROMTOOL" --version 2>&1 | head -n1)"

# --- checks -----------------------------------------------------------------
failed=0 passed=0
check() {
  local name="$1"; shift
  log "$name"
  if "$@"; then
    printf '    ok\n'
    passed=$((passed + 1))
  else
    printf '    FAILED: %s\n' "$name" >&2
    failed=$((failed + 1))
  fi
}

check_dashboard() {
  python3 - "$1" <<'PY'
import json, re, sys
path = sys.argv[1]
with open(path) as f:
    d = json.load(f)                      # fails on invalid JSON
errors = []
for key in ("title", "uid", "panels", "schemaVersion", "templating"):
    if key not in d:
        errors.append(f"missing top-level key {key!r}")
names = {v.get("name") for v in d.get("templating", {}).get("list", [])}
for var in ("instance",):
    if var not in names:
        errors.append(f"missing template variable {var!r}")
inputs = {i.get("name") for i in d.get("__inputs", [])}
if "DS_PROMETHEUS" not in inputs:
    errors.append("missing __inputs entry DS_PROMETHEUS")
ids, n_targets = set(), 0
def walk(panels):
    global n_targets
    for p in panels:
        pid = p.get("id")
        if pid in ids:
            errors.append(f"duplicate panel id {pid}")
        ids.add(pid)
        for t in p.get("targets", []):
            n_targets += 1
            expr = t.get("expr", "")
            if p.get("type") != "row" and not expr:
                errors.append(f"panel {p.get('title')!r}: target without expr")
            for m in re.findall(r"\b(clicktrail_[a-z0-9_]+)", expr):
                if "instance" not in expr:
                    errors.append(f"panel {p.get('title')!r}: {m} not filtered by $instance")
                    break
            if expr.count("(") != expr.count(")"):
                errors.append(f"panel {p.get('title')!r}: unbalanced parentheses in {expr!r}")
        walk(p.get("panels", []))
walk(d.get("panels", []))
if n_targets == 0:
    errors.append("no queries in dashboard")
for e in errors:
    print("   ", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
}

# Every dashboard query must be valid PromQL: substitute Grafana's variables and
# macros, wrap each query in a recording rule and let promtool parse them.
check_dashboard_queries() {
  local tmp rc
  tmp="$(mktemp -d)"
  python3 - "$1" "$tmp/dashboard_queries.yml" <<'PY' || { rm -rf "$tmp"; return 1; }
import json, sys
d = json.load(open(sys.argv[1]))
subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h",
         "$job": "clicktrail", "$instance": ".*"}
exprs = []
def walk(panels):
    for p in panels:
        exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
        walk(p.get("panels", []))
walk(d["panels"])
exprs += [a["expr"] for a in d.get("annotations", {}).get("list", []) if a.get("expr")]
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        for k in sorted(subst, key=len, reverse=True):
            e = e.replace(k, subst[k])
        f.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}\n")
print(f"    {len(exprs)} queries")
PY
  "$PROMTOOL" check rules "$tmp/dashboard_queries.yml" >/dev/null
  rc=$?
  rm -rf "$tmp"
  return $rc
}

# Every clicktrail_* metric named by the rules, the tests or the dashboard must be in
# the catalogue (docs/metrics.md), and every catalogued metric should be used somewhere.
check_catalogue() {
  python3 - docs/metrics.md deploy/prometheus/rules.yml deploy/prometheus/rules_test.yml deploy/grafana/clicktrail.json <<'PY'
import re, sys
doc, *users = sys.argv[1:]
catalogue = set(re.findall(r"^\| `(clicktrail_[a-z0-9_]+)`", open(doc).read(), re.M))
if not catalogue:
    print("    no metric table found in", doc, file=sys.stderr); sys.exit(1)
errors, used = [], set()
for path in users:
    text = open(path).read()
    # recording-rule names (level:metric:op) contain colons and are not metrics
    for m in set(re.findall(r"(?<![:\w])(clicktrail_[a-z0-9_]+)(?![:\w])", text)):
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        name = m if m in catalogue else base
        if name not in catalogue:
            errors.append(f"{path}: {m} is not in {doc}")
        used.add(name)
for e in sorted(errors):
    print("   ", e, file=sys.stderr)
unused = sorted(catalogue - used)
if unused:
    print("    catalogued but unused by rules/dashboard:", ", ".join(unused))
sys.exit(1 if errors else 0)
PY
}

check "promtool check rules deploy/prometheus/rules.yml" \
  "$PROMTOOL" check rules deploy/prometheus/rules.yml
check "promtool check config deploy/prometheus/prometheus.yml" \
  "$PROMTOOL" check config deploy/prometheus/prometheus.yml
check "promtool check config deploy/prometheus/prometheus-compose.yml" \
  "$PROMTOOL" check config deploy/prometheus/prometheus-compose.yml
check "promtool test rules deploy/prometheus/rules_test.yml" \
  "$PROMTOOL" test rules deploy/prometheus/rules_test.yml
check "python3 -m json.tool deploy/grafana/clicktrail.json" \
  python3 -m json.tool deploy/grafana/clicktrail.json /dev/null
check "dashboard structure (variables, datasource input, queries)" \
  check_dashboard deploy/grafana/clicktrail.json
check "dashboard queries parse as PromQL" \
  check_dashboard_queries deploy/grafana/clicktrail.json
check "metric names match the catalogue in docs/metrics.md" \
  check_catalogue

printf 'checks: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ] || exit 1
