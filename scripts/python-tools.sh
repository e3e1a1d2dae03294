#!/usr/bin/env bash
# Installs the Python tools of `make test` into target/venv from
# tests/contract/requirements.txt (every package pinned): schemathesis, which
# tests/e2e/contract.rs runs against the server, and openapi-spec-validator.
# Nothing to do when the venv already holds exactly that file's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
requirements=tests/contract/requirements.txt
stamp="$venv/.requirements"
if [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then
    exit 0
fi
mkdir -p target
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
