#!/usr/bin/env bash
# Installs the browser the chat page's end-to-end tests drive (tests/e2e/web.rs):
# Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver).
# `make test` runs it; `make run` does not need a browser.
set -euo pipefail
missing=()
for pkg in chromium chromium-driver; do
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
