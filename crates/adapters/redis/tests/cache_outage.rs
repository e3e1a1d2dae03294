//! A cache invalidation that fails while Redis is down is made good once it
//! is back: a stale entry never lives on until its TTL. The Redis here is a
//! private `redis-server` that keeps every write (append-only file, fsync
//! on every write), so it comes back from a kill with its counters.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use confab_ports::Cache;
use confab_redis::{RedisCache, RedisPool, RedisSettings};
use secrecy::SecretString;

fn cache_on(url: &str, prefix: &str) -> RedisCache {
    RedisCache::new(
        RedisPool::new(&RedisSettings {
            url: SecretString::from(url.to_owned()),
            cluster: false,
            connections: 1,
            connect_timeout: Duration::from_millis(300),
            command_timeout: Duration::from_secs(2),
            key_prefix: prefix.to_owned(),
        })
        .unwrap(),
    )
}

/// The version counter of `key` as Redis holds it, read from outside.
async fn counter(url: &str, prefix: &str, key: &str) -> Option<u64> {
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("GET")
        .arg(format!("{prefix}ver:{key}"))
        .query_async(&mut raw)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bump_that_fails_while_redis_is_down_is_made_in_the_background_once_it_is_back() {
    let mut redis = support::PrivateRedis::start();
    let url = redis.url();
    let cache = cache_on(&url, "t:");
    let before = cache.version("conv:1:history").await.unwrap();

    redis.kill();
    assert!(
        cache
            .bump_all(&["conv:1:history".to_owned()])
            .await
            .is_err()
    );
    redis.restart();
    assert_eq!(
        counter(&url, "t:", "conv:1:history").await,
        Some(before),
        "the counter came back as it was"
    );
    // Nobody reads or writes through the cache: the retry makes the bump.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = counter(&url, "t:", "conv:1:history").await;
        if now.is_some_and(|now| now > before) {
            break;
        }
        assert!(Instant::now() < deadline, "the failed bump was never made");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_bump_that_failed_is_made_before_the_next_version_read() {
    let mut redis = support::PrivateRedis::start();
    let url = redis.url();
    let cache = cache_on(&url, "t:");
    let before = cache.version("user:1:conversation_list").await.unwrap();

    redis.kill();
    assert!(cache.bump("user:1:conversation_list").await.is_err());
    redis.restart();
    // Read at once, before the retry's first tick: the version read makes
    // the bump first, so no entry stored under `before` can be found. The
    // first command after a restart may meet the connection the restart
    // broke (it fails, and the connection is made again): read again then.
    let deadline = Instant::now() + Duration::from_secs(5);
    let version = loop {
        match cache.version("user:1:conversation_list").await {
            Ok(version) => break version,
            Err(e) => assert!(Instant::now() < deadline, "no version read: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(version > before);
}

#[tokio::test]
async fn a_version_seen_before_a_failed_bump_is_not_used() {
    let mut redis = support::PrivateRedis::start();
    let url = redis.url();
    let cache = cache_on(&url, "t:");
    let key = "user:2:conversation_list";
    let before = cache.version(key).await.unwrap();
    // What admission read just before: as it is, while nothing is pending.
    assert_eq!(cache.version_seen(key, before).await.unwrap(), before);

    redis.kill();
    assert!(cache.bump(key).await.is_err());
    redis.restart();
    // A version admission read before the bump (or from a Redis that lost
    // it) is not taken: the pending bump is made and its result used.
    let deadline = Instant::now() + Duration::from_secs(5);
    let version = loop {
        match cache.version_seen(key, before).await {
            Ok(version) => break version,
            Err(e) => assert!(Instant::now() < deadline, "no version read: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(version > before);
}
