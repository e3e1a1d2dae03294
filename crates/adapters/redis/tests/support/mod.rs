//! The real Redis the adapter tests run against: `REDIS_URL`, else the
//! local one. A Redis that can't be reached fails the test (never a skip).
//! Each test writes under a prefix of its own, so tests run in parallel
//! and runs never see each other's keys.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, unreachable_pub)]

use std::time::Duration;

use confab_ports::HealthCheck;
use confab_redis::{RedisPool, RedisSettings};
use secrecy::SecretString;

/// The Redis URL under test.
pub fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A pool on the test Redis whose keys start with a fresh prefix;
/// panics when Redis doesn't answer.
pub async fn pool() -> RedisPool {
    pool_at(&url()).await
}

/// A pool on `url` with a fresh prefix, checked with a PING.
pub async fn pool_at(url: &str) -> RedisPool {
    let pool = unchecked_pool(url);
    pool.check()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for these tests: {e}"));
    pool
}

/// A pool on `url` with a fresh prefix, not checked (for a Redis that is
/// down on purpose).
pub fn unchecked_pool(url: &str) -> RedisPool {
    RedisPool::new(&RedisSettings {
        url: SecretString::from(url.to_owned()),
        connections: 2,
        command_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        key_prefix: format!("confab-test:{}:", uuid::Uuid::new_v4()),
    })
    .expect("a pool")
}
