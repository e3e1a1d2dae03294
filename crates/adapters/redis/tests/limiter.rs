//! What only [`RedisLimiter`] does, against the real Redis: buckets shared
//! across instances, keys that expire, a script Redis may forget. What every
//! limiter promises is the contract suite's (`tests/contract.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use confab_domain::DomainError;
use confab_ports::{RateLimiter, RatePolicy};
use confab_redis::RedisLimiter;

fn policy(quota: u32, window: Duration) -> RatePolicy {
    RatePolicy {
        name: "test".into(),
        quota,
        window,
    }
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
async fn a_bucket_key_expires_once_the_bucket_is_full_again() {
    let (pool, prefix) = support::pool_with_prefix().await;
    let limiter = RedisLimiter::new(pool);
    let p = policy(5, Duration::from_secs(60));
    let d = limiter.check(&p, "ip:9").await.unwrap();
    assert_eq!(d.reset_after, Duration::from_secs(12));

    let key = format!("{prefix}rl:v1:test:ip:9");
    let mut conn = support::raw_connection().await;
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

    let mut conn = support::raw_connection().await;
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

async fn script_exists(conn: &mut support::Raw, hash: &str) -> bool {
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(hash)
        .query_async(conn)
        .await
        .unwrap();
    exists == [true]
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
