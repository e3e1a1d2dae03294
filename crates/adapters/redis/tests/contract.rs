//! The ports' contract suites (`confab-testkit`) on the Redis adapters,
//! against the real Redis: each behaviour a test of its own, on a fresh
//! adapter under a key prefix of its own.

mod support;

use std::time::Duration;

use confab_redis::{
    RedisBlocklist, RedisCache, RedisFailures, RedisIdempotency, RedisLimiter, RedisStreamLog,
    RedisStreamLogOptions,
};
use confab_testkit::contract::stream_log::Limits;

mod cache {
    use super::*;

    confab_testkit::cache_contract!(|| async { RedisCache::new(support::pool().await) });
}

mod limiter {
    use super::*;

    confab_testkit::limiter_contract!(|| async { RedisLimiter::new(support::pool().await) });
}

mod blocklist {
    use super::*;

    confab_testkit::blocklist_contract!(|| async { RedisBlocklist::new(support::pool().await) });
}

mod failures {
    use super::*;

    confab_testkit::failure_counter_contract!(|| async {
        RedisFailures::new(support::pool().await)
    });
}

mod idempotency {
    use super::*;

    confab_testkit::idempotency_contract!(|max_per_owner: usize| async move {
        RedisIdempotency::new(support::pool().await, max_per_owner)
    });
}

mod stream_log {
    use super::*;

    confab_testkit::stream_log_contract!(|limits: Limits| async move {
        RedisStreamLog::new(
            support::pool().await,
            RedisStreamLogOptions {
                retention: limits.retention,
                max_events_per_log: limits.max_events_per_log,
                lease: Duration::from_secs(5),
                poll_interval: Duration::from_millis(20),
            },
        )
    });
}
