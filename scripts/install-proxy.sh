#!/usr/bin/env bash
# Installs the load balancer the cluster tests put in front of three
# instances (tests/e2e/balancer.rs): Debian's nginx-light (/usr/sbin/nginx).
# The tests run their own nginx on a free port; the package's own service
# is not needed.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" nginx-light
