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
# The client is what other Rust services import: the domain and an HTTP
# client, nothing of the server side, and rustls with ring only (no aws-lc).
check confab-client 'confab-ports|confab-app|confab-http|confab-server|confab-sql|confab-password|confab-memory|confab-jwt|confab-llm|confab-redis|confab-testkit|actix-web|actix-http|actix-rt|diesel|r2d2|redis|deadpool-redis|libsqlite3-sys|pq-sys|aws-lc-rs|aws-lc-sys'
# The contract suites run against every adapter, so they know none, and no
# web, SQL or Redis library.
check confab-testkit 'confab-sql|confab-password|confab-memory|confab-jwt|confab-llm|confab-redis|confab-app|confab-http|confab-server|actix-web|actix-http|actix-rt|diesel|r2d2|redis|deadpool-redis|libsqlite3-sys|pq-sys'

# confab-testkit is test code: a dev-dependency only, but for the end-to-end
# harness (confab-e2e, itself test code that is never shipped). Inverted over
# normal and build edges, with every feature and for every target (so an
# optional or platform-specific dependency counts), it must have no other
# dependent.
# The tree always lists confab-testkit itself: without it, cargo failed.
# Quiet: on a fresh machine cargo downloads other targets' crates first,
# and its progress lines are not dependents.
inverted=$(cargo tree --quiet --workspace -e normal,build --all-features --target all \
    -i confab-testkit --prefix none --format '{p}' 2>&1 | awk '{print $1}' || true)
dependents=$(echo "$inverted" | grep -vx 'confab-testkit' | grep -vx 'confab-e2e' | sort -u || true)
if ! echo "$inverted" | grep -qx 'confab-testkit'; then
    echo "architecture: cannot resolve confab-testkit's dependents: $inverted" >&2
    fail=1
elif [ -n "$dependents" ]; then
    echo "architecture: confab-testkit is a dev-dependency only, but these depend on it: $(echo "$dependents" | tr '\n' ' ')" >&2
    fail=1
else
    echo "architecture: confab-testkit is a dev-dependency only"
fi

# The words of the API belong to confab-http, which spells each typed value
# in one place: no layer below it holds an error code, a header name or the
# JSON path of a request field as a string literal (sources and their
# inline tests; an adapter's integration tests may store any data). The
# headers are the API's own: an adapter may speak another protocol's.
below_http="crates/domain/src crates/ports/src crates/app/src crates/adapters"
codes=$(awk '/^pub enum ErrorCode/,/^}/' crates/domain/src/vocabulary.rs \
    | grep -oE '^    [A-Z][A-Za-z]+,' | tr -d ' ,' \
    | sed -E 's/([a-z])([A-Z])/\1_\2/g' | tr '[:lower:]' '[:upper:]' | paste -sd'|' -)
words() {
    local what=$1 pattern=$2 found
    # shellcheck disable=SC2086
    found=$(grep -rnE $3 "$pattern" $below_http --include='*.rs' --exclude-dir=tests || true)
    if [ -n "$found" ]; then
        echo "architecture: $what below confab-http:" >&2
        echo "$found" >&2
        fail=1
    else
        echo "architecture: no $what below confab-http"
    fi
}
if [ -z "$codes" ]; then
    echo "architecture: no ErrorCode enum found in crates/domain/src/vocabulary.rs" >&2
    fail=1
else
    words "API error code" "\"($codes)\"" ""
fi
words "header name" '"(x-resume-token|last-event-id|idempotency-key|idempotent-replayed|x-request-id)"' -i
words "request JSON path" '"(messages|metadata|content)(\[[0-9]+\])?\.' ""

# docs/ and the README stand alone: a clone has nothing outside the
# repository to point to.
outside=$(grep -rnE '\.\./shared|shared/(design|seeds)' docs README.md || true)
if [ -n "$outside" ]; then
    echo "architecture: docs point outside the repository:" >&2
    echo "$outside" >&2
    fail=1
else
    echo "architecture: docs are self-contained"
fi
exit $fail
