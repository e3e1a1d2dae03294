# Confab. `make run` serves on the embedded defaults; `make test` runs
# everything. See README.md and docs/operations.md.

CARGO ?= cargo
TEST_THREADS := $(or $(RUST_TEST_THREADS),4)

.PHONY: run test load lint fmt migrate openapi bench deps model services python-tools release check-architecture package clean browser proxy test-pgbouncer test-redis-cluster

## Serve on the embedded defaults: SQLite in ./data, in-process adapters,
## the built-in model (fetched into ./models on first use).
run: deps model
	CONFAB_BANNER=1 $(CARGO) run --release --bin confab -- serve

## Everything: architecture rules, unit, store suites (SQLite + PostgreSQL),
## app, CLI and end-to-end tests (schemathesis against the served OpenAPI
## document among them), then the PostgreSQL store and end-to-end tests a
## second time through PgBouncer in transaction mode, the Redis tests a
## second time on a Redis Cluster, OpenAPI validation, and the client's
## packaging.
## Each test binary runs four tests at a time (two cores): most of the
## end-to-end tests wait on sockets and processes, not the cores (the load
## tests take a lock and run one at a time). Set `RUST_TEST_THREADS` to
## change it.
test: deps model services python-tools browser proxy check-architecture package
	RUST_TEST_THREADS=$(TEST_THREADS) $(CARGO) test --workspace
	$(MAKE) test-pgbouncer
	$(MAKE) test-redis-cluster
	CONFAB_BIN=target/debug/confab ./scripts/validate-openapi.sh

## PostgreSQL through PgBouncer in transaction mode (scripts/pgbouncer.sh
## starts it): the store suite, which runs every statement the store has,
## and the end-to-end tests of what a pooler can break beyond a statement:
## several instances (cluster, balancers, rolling restarts), a crash's
## recovery, and concurrent sends. The other PostgreSQL end-to-end tests
## run the same statements as the store suite and are not repeated here.
test-pgbouncer: services
	./scripts/pgbouncer.sh
	CONFAB_TEST_PGBOUNCER_URL=postgres://postgres@127.0.0.1:6432 \
		./scripts/test-package.sh confab-sql postgres
	CONFAB_TEST_PGBOUNCER_URL=postgres://postgres@127.0.0.1:6432 RUST_TEST_THREADS=$(TEST_THREADS) \
		$(CARGO) test --workspace -- cluster:: balancer:: rolling:: recovery::postgres \
		load::postgres::a_hundred_sends_at_once_all_complete \
		load::postgres::a_hundred_regenerations_and_continues_at_once_all_complete

## The Redis adapter suites (contracts included) and the end-to-end tests
## of several instances on Redis, again on a Redis Cluster of three
## primaries with a replica each (scripts/redis-cluster.sh starts it on
## 127.0.0.1:7100-7105). Both reuse the binaries `cargo test --workspace`
## built (`cargo test -p` would rebuild dependencies with other features).
test-redis-cluster: services
	./scripts/redis-cluster.sh
	CONFAB_TEST_REDIS_CLUSTER=redis://127.0.0.1:7100 ./scripts/test-package.sh confab-redis
	CONFAB_TEST_REDIS_CLUSTER=redis://127.0.0.1:7100 RUST_TEST_THREADS=$(TEST_THREADS) $(CARGO) test --workspace -- \
		redis:: cluster:: balancer:: rolling:: deletion:: idempotency:: load::cluster_ \
		load::postgres::a_hundred_sends_at_once_with_redis

## The concurrent-send load tests alone (tests/e2e/load.rs: in process, and
## two `confab serve` processes on PostgreSQL or SQLite and Redis), with
## each burst's counts printed.
load: deps services
	$(CARGO) build --bin confab
	$(CARGO) test -p confab-e2e --test e2e load:: -- --nocapture

## Formatting and clippy with warnings as errors, the client's `tls`
## feature (https) included: no other build compiles it.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --features confab-client/tls -- -D warnings

fmt:
	$(CARGO) fmt --all

## Apply pending migrations to DATABASE_URL (default: the SQLite file).
migrate: deps
	$(CARGO) run --bin confab -- migrate

## Write the OpenAPI document to docs/openapi.json and validate it.
openapi:
	$(CARGO) run --quiet --bin confab -- openapi --output docs/openapi.json
	./scripts/validate-openapi.sh

## Measure and write docs/benchmarks.md: issue 13's goals table, the request
## paths, the cached list vs /healthz, the relay overhead, sends per second,
## the built-in model, the shared-state ports, concurrent sends, stream
## density and search over 100,000 messages. The concurrent-sends and stream-density sections run release
## `confab serve` processes (built first); several sections use PostgreSQL
## and Redis. One section alone, printed: `target/release/confab-bench
## --<name>-only` (relay, list, throughput, sends, density, search, model).
bench: deps model services
	$(CARGO) build --release --bin confab
	$(CARGO) run --release -p confab-e2e --bin confab-bench -- docs/benchmarks.md
	@printf '\n## The built-in model\n\nWritten by `make bench` (`crates/adapters/llm/examples/local_speed.rs`, release build):\nSmolLM2-135M-Instruct, 128 tokens per completion, a short prompt; each configuration runs\nin its own process, because candle sizes its thread pool once per process. "2 at once" is\nthe total rate of two concurrent generations.\n\n' >> docs/benchmarks.md
	$(CARGO) run --release --quiet -p confab-llm --example local_speed >> docs/benchmarks.md

## An optimised binary in target/release/confab.
release: deps
	$(CARGO) build --release --bin confab

check-architecture:
	./scripts/check-architecture.sh

## Package confab-domain and confab-client as a registry would take them
## (other Rust services import both) and build the packaged client against
## the packaged domain: they stay publishable. In target/package/. (The
## client's `tls` feature, which the packaged build's default features
## leave out, is compiled by `make lint`.) Needs the registry index, so
## the network: `cargo package` resolves the packaged crates' dependencies
## afresh from crates.io. A few seconds with a warm target/.
package:
	$(CARGO) package -p confab-domain -p confab-client --allow-dirty

## System packages a fresh machine lacks (libpq-dev, pkg-config).
deps:
	@./scripts/install-deps.sh

## The built-in model, ./models/SmolLM2-135M-Instruct.Q4_1.gguf (98 MB,
## checksum verified; nothing to do when it is there).
model:
	@./scripts/fetch-model.sh

## Chromium and ChromeDriver (Debian's chromium, chromium-driver), which the
## chat page's end-to-end tests drive headless.
browser:
	@./scripts/install-browser.sh

## nginx (Debian's nginx-light) and HAProxy, the load balancers of the
## cluster tests.
proxy:
	@./scripts/install-proxy.sh

## schemathesis and openapi-spec-validator, pinned in
## tests/contract/requirements.txt, in target/venv.
python-tools:
	@./scripts/python-tools.sh

## Start PostgreSQL and Redis when they are down; fail when they can't run.
services:
	@./scripts/services.sh

clean:
	$(CARGO) clean
