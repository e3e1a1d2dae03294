#!/usr/bin/env bash
# Installs the load balancers the cluster tests put in front of three
# instances (tests/e2e/balancer.rs): Debian's nginx-light (/usr/sbin/nginx)
# and haproxy (/usr/sbin/haproxy, the rolling restarts: its health checks
# follow /readyz). The tests run their own on free ports; the packages'
# own services are not needed.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" nginx-light haproxy
