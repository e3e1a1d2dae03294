# Confab. `make run` serves on the embedded defaults; `make test` runs
# everything. See README.md and docs/operations.md.

CARGO ?= cargo

.PHONY: run test lint fmt migrate openapi bench deps services release check-architecture clean

## Serve on the embedded defaults: SQLite in ./data, in-process adapters.
run: deps
	$(CARGO) run --bin confab -- serve

## Everything: architecture rules, unit, store suites (SQLite + PostgreSQL),
## app, CLI and end-to-end tests, and OpenAPI validation.
test: deps services check-architecture
	$(CARGO) test --workspace
	./scripts/validate-openapi.sh

## Formatting and clippy with warnings as errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Apply pending migrations to DATABASE_URL (default: the SQLite file).
migrate: deps
	$(CARGO) run --bin confab -- migrate

## Write the OpenAPI document to docs/openapi.json and validate it.
openapi:
	$(CARGO) run --quiet --bin confab -- openapi --output docs/openapi.json
	./scripts/validate-openapi.sh

## Measure and write docs/benchmarks.md.
bench: deps
	$(CARGO) run --release -p confab-e2e --bin confab-bench -- docs/benchmarks.md

## An optimised binary in target/release/confab.
release: deps
	$(CARGO) build --release --bin confab

check-architecture:
	./scripts/check-architecture.sh

## System packages a fresh machine lacks (libpq-dev, pkg-config).
deps:
	@./scripts/install-deps.sh

## Start PostgreSQL and Redis when they are down; fail when they can't run.
services:
	@./scripts/services.sh

clean:
	$(CARGO) clean
