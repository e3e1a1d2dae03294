//! [`RedisLimiter`] against the real Redis: the in-process limiter's
//! semantics, shared across instances, atomic under concurrency.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use confab_domain::DomainError;
use confab_ports::{RateLimiter, RatePolicy};
use confab_redis::{RedisLimiter, RedisPool, RedisSettings};
use secrecy::SecretString;

fn policy(quota: u32, window: Duration) -> RatePolicy {
    RatePolicy {
        name: "test".into(),
        quota,
        window,
    }
}

/// A pool on the test Redis with a fresh prefix this test knows, to read
/// its keys through a raw connection.
fn pool_with_prefix() -> (RedisPool, String) {
    let prefix = format!("confab-test:{}:", uuid::Uuid::new_v4());
    let pool = RedisPool::new(&RedisSettings {
        url: SecretString::from(support::url()),
        connections: 2,
        command_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        key_prefix: prefix.clone(),
    })
    .expect("a pool");
    (pool, prefix)
}

async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(support::url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bucket_empties_then_refuses_with_a_retry_time() {
    let limiter = RedisLimiter::new(support::pool().await);
    let p = policy(5, Duration::from_secs(60));
    for expected_remaining in (0..5).rev() {
        let d = limiter.check(&p, "ip:1").await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, expected_remaining, "{d:?}");
        assert_eq!(d.retry_after, Duration::ZERO);
        // Full again once every token taken so far has come back.
        let taken = 5 - expected_remaining;
        assert!(
            d.reset_after <= Duration::from_secs(12) * taken
                && d.reset_after > Duration::from_secs(12) * (taken - 1),
            "{d:?}"
        );
    }
    let d = limiter.check(&p, "ip:1").await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    // One token comes back every 12 s.
    assert!(
        d.retry_after > Duration::from_secs(10) && d.retry_after <= Duration::from_secs(12),
        "{d:?}"
    );
    // Full again when the last of the five has come back.
    assert_eq!(d.reset_after, d.retry_after + Duration::from_secs(12) * 4);
    // Other keys have their own bucket.
    let other = limiter.check(&p, "ip:2").await.unwrap();
    assert!(other.allowed);
    assert_eq!(other.remaining, 4);
}

#[tokio::test]
async fn policies_with_different_names_have_their_own_buckets() {
    let limiter = RedisLimiter::new(support::pool().await);
    let login = RatePolicy {
        name: "login".into(),
        ..policy(1, Duration::from_secs(60))
    };
    let default = RatePolicy {
        name: "default".into(),
        ..policy(1, Duration::from_secs(60))
    };
    assert!(limiter.check(&login, "ip:1").await.unwrap().allowed);
    assert!(!limiter.check(&login, "ip:1").await.unwrap().allowed);
    assert!(limiter.check(&default, "ip:1").await.unwrap().allowed);
}

#[tokio::test]
async fn two_instances_on_one_redis_share_a_bucket() {
    let pool = support::pool().await;
    let a = RedisLimiter::new(pool.clone());
    let b = RedisLimiter::new(pool);
    let p = policy(5, Duration::from_secs(60));
    for (i, expected_remaining) in (0..5).rev().enumerate() {
        let limiter = if i % 2 == 0 { &a } else { &b };
        let d = limiter.check(&p, "user:1").await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, expected_remaining, "{d:?}");
    }
    assert!(!b.check(&p, "user:1").await.unwrap().allowed);
    assert!(!a.check(&p, "user:1").await.unwrap().allowed);
}

#[tokio::test]
async fn concurrent_checks_allow_exactly_the_quota() {
    let limiter = Arc::new(RedisLimiter::new(support::pool().await));
    let p = Arc::new(policy(20, Duration::from_secs(60)));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            let p = Arc::clone(&p);
            tokio::spawn(async move { limiter.check(&p, "busy").await.unwrap() })
        })
        .collect();
    let mut allowed = Vec::new();
    for task in tasks {
        let d = task.await.unwrap();
        if d.allowed {
            allowed.push(d.remaining);
        } else {
            assert_eq!(d.remaining, 0);
            assert!(d.retry_after > Duration::ZERO, "{d:?}");
        }
    }
    assert_eq!(allowed.len(), 20);
    // Each token was taken once: every remaining count from 19 down to 0.
    allowed.sort_unstable();
    assert_eq!(allowed, (0..20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_bucket_refills_over_time() {
    let limiter = RedisLimiter::new(support::pool().await);
    let p = policy(2, Duration::from_millis(200));
    assert!(limiter.check(&p, "k").await.unwrap().allowed);
    assert!(limiter.check(&p, "k").await.unwrap().allowed);
    let refused = limiter.check(&p, "k").await.unwrap();
    assert!(!refused.allowed);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100),
        "{refused:?}"
    );
    tokio::time::sleep(refused.retry_after).await;
    let d = limiter.check(&p, "k").await.unwrap();
    assert!(d.allowed, "one token is back: {d:?}");
    assert_eq!(d.remaining, 0, "only one: {d:?}");
}

#[tokio::test]
async fn a_bucket_key_expires_once_the_bucket_is_full_again() {
    let (pool, prefix) = pool_with_prefix();
    let limiter = RedisLimiter::new(pool);
    let p = policy(5, Duration::from_secs(60));
    let d = limiter.check(&p, "ip:9").await.unwrap();
    assert_eq!(d.reset_after, Duration::from_secs(12));

    let key = format!("{prefix}rl:v1:test:ip:9");
    let mut conn = raw_connection().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Full again in 12 s; the key lives a little longer, never shorter.
    assert!(pttl > 12_000 && pttl <= 13_000, "PTTL {pttl}");
    // The stored time is a whole number of µs, not a float's exponent form.
    let tat: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(tat.parse::<u64>().is_ok(), "stored {tat:?}");
}

#[tokio::test]
async fn the_script_is_loaded_once_and_reloaded_after_a_flush() {
    let limiter = RedisLimiter::new(support::pool().await);
    let p = policy(5, Duration::from_secs(60));
    assert_eq!(limiter.check(&p, "k").await.unwrap().remaining, 4);

    let mut conn = raw_connection().await;
    let hash = limiter.script_hash().to_owned();
    assert!(
        script_exists(&mut conn, &hash).await,
        "loaded by the first check"
    );

    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    // (Not asserted gone: a test running alongside may load it again.)
    // NOSCRIPT: the limiter loads it again and the bucket is intact.
    assert_eq!(limiter.check(&p, "k").await.unwrap().remaining, 3);
    assert!(script_exists(&mut conn, &hash).await, "loaded again");
    assert_eq!(limiter.check(&p, "k").await.unwrap().remaining, 2);
}

async fn script_exists(conn: &mut redis::aio::MultiplexedConnection, hash: &str) -> bool {
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(hash)
        .query_async(conn)
        .await
        .unwrap();
    exists == [true]
}

#[tokio::test]
async fn zero_quota_or_window_is_an_internal_error() {
    let limiter = RedisLimiter::new(support::pool().await);
    let zero_quota = policy(0, Duration::from_secs(60));
    assert!(matches!(
        limiter.check(&zero_quota, "k").await,
        Err(DomainError::Internal(_))
    ));
    let zero_window = policy(5, Duration::ZERO);
    assert!(matches!(
        limiter.check(&zero_window, "k").await,
        Err(DomainError::Internal(_))
    ));
}

#[tokio::test]
async fn a_redis_that_is_down_is_unavailable_quickly() {
    let limiter = RedisLimiter::new(support::unchecked_pool("redis://127.0.0.1:1"));
    let p = policy(5, Duration::from_secs(60));
    let result = tokio::time::timeout(Duration::from_secs(5), limiter.check(&p, "k"))
        .await
        .expect("no hang");
    assert!(
        matches!(result, Err(DomainError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_quota_above_one_a_microsecond_limits_instead_of_failing() {
    let limiter = RedisLimiter::new(support::pool().await);
    // 100,000,000 a minute: a period of 0.6 µs, counted as 1 µs.
    let p = policy(100_000_000, Duration::from_secs(60));
    for _ in 0..100 {
        let d = limiter.check(&p, "user:1").await.unwrap();
        assert!(d.allowed, "{d:?}");
        assert!(d.remaining > 99_000_000, "{d:?}");
    }
}
