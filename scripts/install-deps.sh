#!/usr/bin/env bash
# Installs the system packages a fresh machine needs to build Confab:
# libpq (PostgreSQL client library, linked by diesel) and pkg-config.
# SQLite needs nothing: it is compiled into the binary.
set -euo pipefail
missing=()
for pkg in libpq-dev pkg-config; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "installing: ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
