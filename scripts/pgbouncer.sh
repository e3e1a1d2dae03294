#!/usr/bin/env bash
# Starts PgBouncer (Debian's package, installed when missing) in
# transaction pooling mode on 127.0.0.1:${CONFAB_PGBOUNCER_PORT:-6432}, in
# front of the local PostgreSQL (127.0.0.1:5432): any database name is
# passed through, so the suite's per-test databases are reachable through
# it. Does nothing when it already answers. Exits non-zero when it can't
# be started: the pooled tests then fail, they never skip.
#
# This is the setup docs/operations.md ("PostgreSQL behind PgBouncer")
# describes, minus TLS and real authentication.
set -euo pipefail
port="${CONFAB_PGBOUNCER_PORT:-6432}"

up() { psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; }
# The pool mode of the PgBouncer on the port (its admin console).
mode() {
    psql -h 127.0.0.1 -p "$port" -U postgres -d pgbouncer -Atc 'SHOW CONFIG' 2>/dev/null |
        awk -F'|' '$1 == "pool_mode" { print $2 }'
}

"$(dirname "$0")/apt-install.sh" pgbouncer
if up; then
    if [ "$(mode)" = "transaction" ]; then
        echo "pgbouncer: up on 127.0.0.1:$port (transaction pooling)"
        exit 0
    fi
    echo "pgbouncer: 127.0.0.1:$port answers, but not as a PgBouncer in transaction" \
        "pooling mode whose admin console postgres may use; stop it or set CONFAB_PGBOUNCER_PORT" >&2
    exit 1
fi
dir="$(mktemp -d /tmp/confab-pgbouncer.XXXXXX)"

# PgBouncer refuses to run as root: as root it runs as postgres.
run_as=()
owner="$(id -un)"
if [ "$(id -u)" -eq 0 ]; then
    run_as=(-u postgres)
    owner=postgres
fi
mkdir -p "$dir"
cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 4000
default_pool_size = 20
; per-test databases come and go: give their server connections back soon
server_idle_timeout = 10
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
admin_users = postgres
INI
printf '"postgres" ""\n"root" ""\n"%s" ""\n' "$owner" >"$dir/userlist.txt"
chown -R "$owner" "$dir"
pgbouncer -d "${run_as[@]}" "$dir/pgbouncer.ini"

for _ in $(seq 1 30); do
    if up; then
        echo "pgbouncer: started on 127.0.0.1:$port (transaction pooling)"
        exit 0
    fi
    sleep 0.2
done
echo "pgbouncer: not reachable on 127.0.0.1:$port; see $dir/pgbouncer.log" >&2
tail -5 "$dir/pgbouncer.log" >&2 || true
exit 1
