#!/usr/bin/env bash
# Installs the system packages a fresh machine needs to build Confab:
# libpq (PostgreSQL client library, linked by diesel) and pkg-config.
# SQLite needs nothing: it is compiled into the binary.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" libpq-dev pkg-config
