#!/usr/bin/env bash
# The dependency rules of docs/architecture.md, checked on the resolved
# dependency graph (all edges: normal, build and dev, as `cargo tree` shows).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
check() {
    local crate=$1 forbidden=$2 found
    found=$(cargo tree -p "$crate" --prefix none --format '{p}' 2>/dev/null \
        | awk '{print $1}' | grep -E "^(${forbidden})$" | sort -u || true)
    if [ -n "$found" ]; then
        echo "architecture: $crate must not depend on: $(echo "$found" | tr '\n' ' ')" >&2
        fail=1
    else
        echo "architecture: $crate is clean"
    fi
}

# The domain does no I/O: no async runtime, web, SQL, cache or HTTP client.
check confab-domain 'tokio|actix-web|actix-rt|actix-http|mio|diesel|r2d2|redis|deadpool-redis|reqwest|hyper|libsqlite3-sys|pq-sys'
# The ports are traits over the domain.
check confab-ports 'tokio|actix-web|diesel|r2d2|redis|deadpool-redis|reqwest|libsqlite3-sys|pq-sys'
# The use cases know no web framework and no adapter library.
check confab-app 'actix-web|actix-http'
# Handlers never touch an adapter library.
check confab-http 'diesel|r2d2|redis|deadpool-redis|reqwest|libsqlite3-sys|pq-sys|jsonwebtoken|governor|rustls|confab-sql|confab-password|confab-memory|confab-jwt|confab-llm|confab-redis'
# Adapters never touch the web framework.
check confab-sql 'actix-web|actix-http|confab-http'
check confab-password 'actix-web|actix-http|confab-http'
check confab-memory 'actix-web|actix-http|confab-http'
check confab-jwt 'actix-web|actix-http|confab-http'
check confab-llm 'actix-web|actix-http|confab-http'
check confab-redis 'actix-web|actix-http|confab-http|diesel|confab-sql|confab-memory'
exit $fail
