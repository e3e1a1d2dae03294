#!/usr/bin/env bash
# Starts a Redis Cluster of three primaries with a replica each on
# 127.0.0.1:${CONFAB_REDIS_CLUSTER_PORT:-7100} and the five ports after it
# (`redis-server --cluster-enabled yes`, then `redis-cli --cluster
# create`), in memory only (no RDB, no AOF), with a node timeout of one
# second so that a killed primary's replica takes over within about two.
# Does nothing when a cluster already answers there with every slot
# served. Exits non-zero when it can't be started: the cluster tests then
# fail, they never skip.
#
# The nodes' files (nodes.conf, logs) are in
# ${CONFAB_REDIS_CLUSTER_DIR:-/tmp/confab-redis-cluster}/<port>.
# `redis-cluster.sh restart <port>` starts a node the tests killed again,
# with the same settings and directory: it rejoins as a replica
# (tests/src/redis_cluster.rs).
#
# This is the topology docs/operations.md ("Redis Cluster") describes,
# minus persistence, TLS and a password.
set -euo pipefail
first="${CONFAB_REDIS_CLUSTER_PORT:-7100}"
dir="${CONFAB_REDIS_CLUSTER_DIR:-/tmp/confab-redis-cluster}"
ports=()
for i in 0 1 2 3 4 5; do ports+=("$((first + i))"); done

"$(dirname "$0")/apt-install.sh" redis-server redis-tools

state() { redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | tr -d '\r' | awk -F: '$1 == "cluster_state" { print $2 }'; }
# Whether every node answers, the cluster serves every slot, and each of
# the three replicas is in sync with its primary.
healthy() {
    local port synced=0
    for port in "${ports[@]}"; do
        [ "$(state "$port")" = "ok" ] || return 1
        if redis-cli -h 127.0.0.1 -p "$port" info replication 2>/dev/null | tr -d '\r' |
            grep -q '^master_link_status:up$'; then
            synced=$((synced + 1))
        fi
    done
    [ "$synced" -eq 3 ]
}
wait_healthy() {
    for _ in $(seq 1 100); do
        healthy && return 0
        sleep 0.1
    done
    return 1
}

# One node, on its port, in its directory.
node() {
    mkdir -p "$dir/$1"
    redis-server --port "$1" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
        --save "" --appendonly no --repl-diskless-sync yes --repl-diskless-sync-delay 0 \
        --dir "$dir/$1" --logfile "$dir/$1/redis.log" --daemonize yes
}

if [ "${1:-}" = "restart" ]; then
    node "$2"
    exit 0
fi

if healthy; then
    echo "redis-cluster: up on 127.0.0.1:${ports[0]}-${ports[5]}"
    exit 0
fi

# Anything half there (a node of an earlier run) goes: the cluster is made
# afresh.
for port in "${ports[@]}"; do
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
done
for port in "${ports[@]}"; do
    for _ in $(seq 1 50); do
        redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 || break
        sleep 0.1
    done
done
rm -rf "$dir"
for port in "${ports[@]}"; do
    node "$port"
done
for port in "${ports[@]}"; do
    for _ in $(seq 1 50); do
        redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
done
nodes=()
for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 || {
    cat "$dir/create.log" >&2
    echo "redis-cluster: redis-cli --cluster create failed" >&2
    exit 1
}
if ! wait_healthy; then
    echo "redis-cluster: the cluster did not come up on 127.0.0.1:${ports[0]}-${ports[5]}" >&2
    exit 1
fi
echo "redis-cluster: started on 127.0.0.1:${ports[0]}-${ports[5]}"
