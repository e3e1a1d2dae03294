#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are up,
# starting them when they are installed but down. Exits non-zero when either
# can't be reached: the tests that need them fail, they never skip.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

if ! pg_up && command -v pg_ctlcluster >/dev/null 2>&1; then
    for version in /etc/postgresql/*; do
        [ -d "$version" ] || continue
        echo "starting PostgreSQL $(basename "$version")"
        pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
fi
if ! redis_up && command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

for _ in $(seq 1 30); do
    if pg_up && redis_up; then
        echo "services: PostgreSQL and Redis are up"
        exit 0
    fi
    sleep 1
done
pg_up || echo "services: PostgreSQL is not reachable at 127.0.0.1:5432" >&2
redis_up || echo "services: Redis is not reachable at 127.0.0.1:6379" >&2
exit 1
