//! The ports' contract suites (`confab-testkit`) on the in-process
//! adapters: each behaviour a test of its own, on a fresh adapter.

use confab_memory::{
    GovernorLimiter, IdempotencyLimits, InMemoryBlocklist, InMemoryFailures, InMemoryIdempotency,
    MemoryCache, MemoryStreamLog, StreamLogOptions,
};
use confab_testkit::contract::stream_log::Limits;

mod cache {
    use super::*;

    confab_testkit::cache_contract!(|| async { MemoryCache::new(1_000, 1 << 30) });
}

mod limiter {
    use super::*;

    confab_testkit::limiter_contract!(|| async { GovernorLimiter::new() });
}

mod blocklist {
    use super::*;

    confab_testkit::blocklist_contract!(|| async { InMemoryBlocklist::new() });
}

mod failures {
    use super::*;

    confab_testkit::failure_counter_contract!(|| async { InMemoryFailures::new(10_000) });
}

mod idempotency {
    use super::*;

    confab_testkit::idempotency_contract!(|max_per_owner: usize| async move {
        InMemoryIdempotency::new(IdempotencyLimits {
            max_entries: 100_000,
            max_bytes: usize::MAX,
            max_per_owner,
        })
    });
}

mod stream_log {
    use super::*;

    confab_testkit::stream_log_contract!(|limits: Limits| async move {
        MemoryStreamLog::new(StreamLogOptions {
            retention: limits.retention,
            max_events_per_log: limits.max_events_per_log,
            max_logs: 1_000,
        })
    });
}
