#!/usr/bin/env bash
# Installs the browser the chat page's end-to-end tests drive (tests/e2e/web.rs):
# Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver).
# `make test` runs it; `make run` does not need a browser.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" chromium chromium-driver
