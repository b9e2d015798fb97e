# Quick start: `make run` (collector + demo page on http://127.0.0.1:8080) and `make test`.
# Both install what is missing (Debian/Ubuntu; root or sudo).

.PHONY: run test lint unit-and-integration test-browser test-prometheus snippet deps deps-test bench clean

run: deps
	cargo build --release --locked
	scripts/run.sh

# Every test: lint, unit + integration (real ClickHouse 18.16, chDB 26.x, pyarrow), browser
# tests of the snippet (Debian Chromium), Prometheus rule tests (promtool).
test: deps-test lint unit-and-integration test-browser test-prometheus
	@echo "make test: all checks passed"

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

# Not --all-targets: that would also run the minutes-long load and archive benchmarks.
unit-and-integration:
	cargo test --locked

test-browser:
	cargo build --locked
	scripts/test-browser.sh

test-prometheus:
	scripts/test-prometheus.sh

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

clean:
	-scripts/clickhouse.sh stop var/clickhouse
	rm -rf var target
