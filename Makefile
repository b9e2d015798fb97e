# Quick start: `make run` (collector + demo page on http://127.0.0.1:8080) and `make test`.
# Both install what is missing (Debian/Ubuntu; root or sudo).

.PHONY: run test lint unit-and-integration deps deps-test clean

run: deps
	cargo build --release --locked
	scripts/run.sh

test: deps-test lint unit-and-integration
	@echo "make test: all checks passed"

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

unit-and-integration:
	cargo test --locked --all-targets

deps:
	scripts/deps.sh

deps-test:
	scripts/deps.sh --test

clean:
	-scripts/clickhouse.sh stop var/clickhouse
	rm -rf var target
