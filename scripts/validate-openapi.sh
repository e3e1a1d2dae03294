#!/usr/bin/env bash
# Validates the OpenAPI document `confab openapi` prints with
# openapi-spec-validator (installed into target/venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'openapi-spec-validator>=0.7,<0.9'
fi
doc=target/openapi.json
cargo run --quiet --bin confab -- openapi --output "$doc"
"$venv/bin/openapi-spec-validator" "$doc"
