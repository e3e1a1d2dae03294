#!/usr/bin/env bash
# Validates the OpenAPI document `confab openapi` prints with
# openapi-spec-validator (installed into target/venv by python-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
./scripts/python-tools.sh
doc=target/openapi.json
# `make test` passes the binary `cargo test --workspace` has just built
# (CONFAB_BIN): `cargo run` alone would build it again with another
# feature set, minutes on a small machine.
if [ -n "${CONFAB_BIN:-}" ]; then
    "$CONFAB_BIN" openapi --output "$doc"
else
    cargo run --quiet --bin confab -- openapi --output "$doc"
fi
"$venv/bin/openapi-spec-validator" "$doc"
