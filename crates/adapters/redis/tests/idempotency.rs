//! What only [`RedisIdempotency`] does, against the real Redis: keys
//! shared by instances, their TTLs as Redis holds them, stored outcomes
//! that don't decode, and a Redis that is down reported as such. What every
//! store promises is the contract suite's (`tests/contract.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use confab_domain::DomainError;
use confab_ports::{Claim, IdempotencyStore};
use confab_redis::{RedisIdempotency, RedisPool, RedisSettings};
use confab_testkit::contract::idempotency::response;
use secrecy::SecretString;
use tokio::time::timeout;

const MINUTE: Duration = Duration::from_secs(60);

/// A pool on the test Redis under `prefix`.
fn pool_at_prefix(prefix: &str) -> RedisPool {
    RedisPool::new(&RedisSettings {
        url: SecretString::from(support::url()),
        connections: 2,
        command_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        key_prefix: prefix.to_owned(),
    })
    .expect("a pool")
}

/// A store on a fresh prefix, and that prefix (to reach its keys with a
/// raw connection).
async fn store_and_prefix() -> (RedisIdempotency, String) {
    let prefix = format!("confab-test:{}:", uuid::Uuid::new_v4());
    // Checked first, so a missing Redis fails with a clear message.
    drop(support::pool().await);
    (RedisIdempotency::new(pool_at_prefix(&prefix)), prefix)
}

async fn store() -> RedisIdempotency {
    RedisIdempotency::new(support::pool().await)
}

#[tokio::test]
async fn a_release_deletes_the_key() {
    let (store, prefix) = store_and_prefix().await;
    assert_eq!(store.claim("k", "a", MINUTE).await.unwrap(), Claim::Claimed);
    store.release("k", "a").await.unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}idem:v1:k"))
        .query_async(&mut support::raw_connection().await)
        .await
        .unwrap();
    assert_eq!(exists, 0, "the key is deleted");
}

#[tokio::test]
async fn keys_live_for_the_claim_then_the_outcome_ttl() {
    let (store, prefix) = store_and_prefix().await;
    let mut conn = support::raw_connection().await;
    let pttl = |key: &str| {
        redis::cmd("PTTL")
            .arg(format!("{prefix}idem:v1:{key}"))
            .clone()
    };

    // A running claim lives for its in-flight TTL.
    assert_eq!(
        store
            .claim("k", "a", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let running: i64 = pttl("k").query_async(&mut conn).await.unwrap();
    assert!(running > 25_000 && running <= 30_000, "PTTL {running}");

    // The outcome, for the TTL it was stored with.
    store
        .complete("k", "a", response(b"a"), Duration::from_secs(600))
        .await
        .unwrap();
    let done: i64 = pttl("k").query_async(&mut conn).await.unwrap();
    assert!(done > 595_000 && done <= 600_000, "PTTL {done}");
}

#[tokio::test]
async fn two_instances_share_the_keys() {
    let (one, prefix) = store_and_prefix().await;
    let two = RedisIdempotency::new(pool_at_prefix(&prefix));
    assert_eq!(one.claim("k", "fp", MINUTE).await.unwrap(), Claim::Claimed);
    assert_eq!(two.claim("k", "fp", MINUTE).await.unwrap(), Claim::InFlight);
    assert_eq!(two.claim("k", "x", MINUTE).await.unwrap(), Claim::Mismatch);
    one.complete("k", "fp", response(b"one"), MINUTE)
        .await
        .unwrap();
    assert_eq!(
        two.claim("k", "fp", MINUTE).await.unwrap(),
        Claim::Completed(response(b"one"))
    );

    // A release on one frees the key for the other.
    assert_eq!(two.claim("r", "fp", MINUTE).await.unwrap(), Claim::Claimed);
    one.release("r", "fp").await.unwrap();
    assert_eq!(one.claim("r", "fp", MINUTE).await.unwrap(), Claim::Claimed);

    // Another prefix is another namespace.
    let other = store().await;
    assert_eq!(other.claim("k", "x", MINUTE).await.unwrap(), Claim::Claimed);
}

#[tokio::test]
async fn an_outcome_that_does_not_decode_is_an_error() {
    let (store, prefix) = store_and_prefix().await;
    let mut conn = support::raw_connection().await;
    for (key, outcome) in [
        ("garbage", Some("not json")),
        ("no-body", Some(r#"{"kind":"response","status":200}"#)),
        ("missing", None),
    ] {
        let mut hset = redis::cmd("HSET");
        hset.arg(format!("{prefix}idem:v1:{key}"))
            .arg("fp")
            .arg("fp")
            .arg("state")
            .arg("done");
        if let Some(outcome) = outcome {
            hset.arg("outcome").arg(outcome);
        }
        let _: i64 = hset.query_async(&mut conn).await.unwrap();
        assert!(
            matches!(
                store.claim(key, "fp", MINUTE).await,
                Err(DomainError::Internal(_))
            ),
            "{key}: never a miss"
        );
    }
}

#[tokio::test]
async fn a_redis_that_is_down_is_unavailable() {
    let store = RedisIdempotency::new(support::unchecked_pool("redis://127.0.0.1:1"));
    // Each call is bounded only so that a hang fails the test.
    let limit = Duration::from_secs(5);
    let claim = timeout(limit, store.claim("k", "fp", MINUTE))
        .await
        .unwrap();
    assert!(matches!(claim, Err(DomainError::Unavailable(_))));
    let complete = timeout(limit, store.complete("k", "fp", response(b"x"), MINUTE))
        .await
        .unwrap();
    assert!(matches!(complete, Err(DomainError::Unavailable(_))));
    let release = timeout(limit, store.release("k", "fp")).await.unwrap();
    assert!(matches!(release, Err(DomainError::Unavailable(_))));
}
