# Quick start: `make run` (collector + demo page on http://127.0.0.1:8080) and `make test`.
# Both install what is missing (Debian 12/13, Ubuntu 22.04/24.04; root or sudo).

.PHONY: run test lint unit-and-integration test-chaos test-cluster test-browser test-api test-prometheus test-deploy test-analytics deb snippet deps deps-test bench clean

# The Python test tools live in var/venv (scripts/deps.sh --test); putting it first in PATH
# makes it the `python3` of every script and of the Rust tests that spawn python3.
export PATH := $(CURDIR)/var/venv/bin:$(PATH)
# The server the Rust tests start: an installed clickhouse-server, or a link to a `clickhouse`
# multi-binary (scripts/clickhouse.sh locate). Resolved when a recipe runs, after deps.
CH_SERVER = CLICKHOUSE_SERVER="$$(scripts/clickhouse.sh locate)"

run: deps
	cargo build --release --locked
	scripts/run.sh

# Every test: lint, unit + integration (real ClickHouse 18.16, chDB 26.x, pyarrow), the cluster
# proof (2 x 2 ClickHouse, ZooKeeper, haproxy), browser
# tests of the snippet (Debian Chromium), Prometheus rule tests (promtool), the deployment
# files (compose, Kubernetes, the Debian package).
test: deps-test lint unit-and-integration test-chaos test-cluster test-analytics test-browser test-api test-prometheus test-deploy
	@echo "make test: all checks passed"

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

# Not --all-targets: that would also run the minutes-long load and archive benchmarks.
# REQUIRE_MOTO: the S3 tests fail instead of skipping when moto (var/venv) is missing.
unit-and-integration:
	$(CH_SERVER) REQUIRE_MOTO=1 cargo test --locked --features failpoints

# 2 shards x 2 replicas of ClickHouse 18.16 with Debian's ZooKeeper, 2 collectors behind haproxy;
# kill -9 of a replica and a collector under load; every acknowledged event once (~2.5 min).
test-cluster:
	cargo build --locked --features failpoints
	CLICKHOUSE_SERVER="$$(scripts/clickhouse.sh locate)" scripts/test-cluster.sh

# A bounded chaos soak (75 s): load while the collector is killed -9 every 10-20 s and
# ClickHouse stopped and started; every acknowledged id must be in events FINAL exactly once.
# The 10-minute soak is in `make bench`.
test-chaos:
	cargo build --locked
	python3 scripts/chaos.py --seconds 75 --bin target/debug/clicktrail --kill-every 10,20 --outage-every 15,30

test-browser:
	cargo build --locked
	scripts/test-browser.sh

# The public API (docs/openapi.yaml) against the real collector and ClickHouse, by schemathesis.
test-api:
	cargo build --locked
	scripts/test-schemathesis.sh

test-prometheus:
	scripts/test-prometheus.sh

# The analyst rollups (migrations/0002) and every report query of docs/queries.md, checked cell
# by cell on a real ClickHouse 18.16 and on chDB 26.x.
test-analytics:
	scripts/test-analytics.sh

# docker-compose config, kubectl kustomize + kubernetes-validate, the .deb's contents and its
# systemd unit (builds the release binary through cargo deb).
test-deploy:
	scripts/test-deploy.sh

# target/debian/clicktrail_*.deb: binary, /etc/clicktrail/clicktrail.toml, systemd unit, rules.
deb:
	scripts/test-deploy.sh --deb-only

# After editing snippet/src: rebuild the committed snippet/dist and check its size budget.
snippet:
	cd snippet && npm ci --ignore-scripts && node build.mjs && ./check-size.sh

deps:
	scripts/deps.sh

deps-test:
	scripts/deps.sh --test

# Load benchmark (end to end, with references) and criterion micro-benchmarks, release builds.
# Figures and how to read them: docs/benchmarks.md. BENCH_ARGS="--clients 64 --seconds 30 --json"
bench: deps
	cargo bench --bench load -- $(BENCH_ARGS)
	cargo bench --bench archive
	cargo bench --bench hot_paths
	CLICKTRAIL_FUZZ_CASES=100000 cargo test --release --locked --test fuzz
	cargo build --release --locked
	python3 scripts/chaos.py --seconds 600 --bin target/release/clicktrail

clean:
	-scripts/clickhouse.sh stop var/clickhouse
	rm -rf var target
