#!/usr/bin/env bash
# Installs the load balancer the cluster tests put in front of three
# instances (tests/e2e/balancer.rs): Debian's nginx-light (/usr/sbin/nginx).
# The tests run their own nginx on a free port; the package's own service
# is not needed and is not started here.
set -euo pipefail
if [ -x /usr/sbin/nginx ]; then
    exit 0
fi
echo "installing: nginx-light"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq nginx-light
