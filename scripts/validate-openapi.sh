#!/usr/bin/env bash
# Validates the OpenAPI document `confab openapi` prints with
# openapi-spec-validator (installed into target/venv by python-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
./scripts/python-tools.sh
doc=target/openapi.json
cargo run --quiet --bin confab -- openapi --output "$doc"
"$venv/bin/openapi-spec-validator" "$doc"
