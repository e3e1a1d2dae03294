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
        cluster: support::cluster(),
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
    (
        RedisIdempotency::new(pool_at_prefix(&prefix), 1_000),
        prefix,
    )
}

async fn store() -> RedisIdempotency {
    RedisIdempotency::new(support::pool().await, 1_000)
}

#[tokio::test]
async fn a_release_deletes_the_key() {
    let (store, prefix) = store_and_prefix().await;
    assert_eq!(
        store.claim("u", "k", "a", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    store.release("u", "k", "a").await.unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}idem:v2:{{u}}:k:k"))
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
            .arg(format!("{prefix}idem:v2:{{u}}:k:{key}"))
            .clone()
    };

    // A running claim lives for its in-flight TTL.
    assert_eq!(
        store
            .claim("u", "k", "a", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let running: i64 = pttl("k").query_async(&mut conn).await.unwrap();
    assert!(running > 25_000 && running <= 30_000, "PTTL {running}");

    // The outcome, for the TTL it was stored with.
    store
        .complete("u", "k", "a", response(b"a"), Duration::from_secs(600))
        .await
        .unwrap();
    let done: i64 = pttl("k").query_async(&mut conn).await.unwrap();
    assert!(done > 595_000 && done <= 600_000, "PTTL {done}");
}

#[tokio::test]
async fn two_instances_share_the_keys() {
    let (one, prefix) = store_and_prefix().await;
    let two = RedisIdempotency::new(pool_at_prefix(&prefix), 1_000);
    assert_eq!(
        one.claim("u", "k", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        two.claim("u", "k", "fp", MINUTE).await.unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        two.claim("u", "k", "x", MINUTE).await.unwrap(),
        Claim::Mismatch
    );
    one.complete("u", "k", "fp", response(b"one"), MINUTE)
        .await
        .unwrap();
    assert_eq!(
        two.claim("u", "k", "fp", MINUTE).await.unwrap(),
        Claim::Completed(response(b"one"))
    );

    // A release on one frees the key for the other.
    assert_eq!(
        two.claim("u", "r", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    one.release("u", "r", "fp").await.unwrap();
    assert_eq!(
        one.claim("u", "r", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );

    // Another prefix is another namespace.
    let other = store().await;
    assert_eq!(
        other.claim("u", "k", "x", MINUTE).await.unwrap(),
        Claim::Claimed
    );
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
        hset.arg(format!("{prefix}idem:v2:{{u}}:k:{key}"))
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
                store.claim("u", key, "fp", MINUTE).await,
                Err(DomainError::Internal(_))
            ),
            "{key}: never a miss"
        );
    }
}

#[tokio::test]
async fn a_redis_that_is_down_is_unavailable() {
    let store = RedisIdempotency::new(support::unchecked_pool("redis://127.0.0.1:1"), 1_000);
    // Each call is bounded only so that a hang fails the test.
    let limit = Duration::from_secs(5);
    let claim = timeout(limit, store.claim("u", "k", "fp", MINUTE))
        .await
        .unwrap();
    assert!(matches!(claim, Err(DomainError::Unavailable(_))));
    let complete = timeout(
        limit,
        store.complete("u", "k", "fp", response(b"x"), MINUTE),
    )
    .await
    .unwrap();
    assert!(matches!(complete, Err(DomainError::Unavailable(_))));
    let release = timeout(limit, store.release("u", "k", "fp")).await.unwrap();
    assert!(matches!(release, Err(DomainError::Unavailable(_))));
}

/// The owner's set as Redis holds it: members and their scores.
async fn owned(prefix: &str, owner: &str) -> Vec<(String, f64)> {
    redis::cmd("ZRANGE")
        .arg(format!("{prefix}idem:v2:{{{owner}}}:keys"))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut support::raw_connection().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_owner_at_the_cap_is_refused_on_every_instance_and_nobody_else() {
    let prefix = format!("confab-test:{}:", uuid::Uuid::new_v4());
    let one = RedisIdempotency::new(pool_at_prefix(&prefix), 2);
    let two = RedisIdempotency::new(pool_at_prefix(&prefix), 2);
    assert_eq!(
        one.claim("u", "a", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        two.claim("u", "b", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    one.complete("u", "a", "fp", response(b"a"), Duration::from_secs(600))
        .await
        .unwrap();
    let Claim::OwnerFull { retry_after } = two.claim("u", "c", "fp", MINUTE).await.unwrap() else {
        panic!("the owner's third key, on the other instance");
    };
    assert!(
        retry_after > Duration::from_secs(50) && retry_after <= MINUTE,
        "until b's claim lapses: {retry_after:?}"
    );
    let members: Vec<String> = owned(&prefix, "u").await.into_iter().map(|m| m.0).collect();
    assert_eq!(members, ["b", "a"], "the refused key was not stored");
    // Held keys are answered; another owner is another budget.
    assert_eq!(
        one.claim("u", "a", "fp", MINUTE).await.unwrap(),
        Claim::Completed(response(b"a"))
    );
    assert_eq!(
        one.claim("v", "c", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    // A release frees a place, and so does a lapse.
    two.release("u", "b", "fp").await.unwrap();
    let short = Duration::from_millis(50);
    assert_eq!(
        one.claim("u", "c", "fp", short).await.unwrap(),
        Claim::Claimed
    );
    assert!(matches!(
        one.claim("u", "d", "fp", MINUTE).await.unwrap(),
        Claim::OwnerFull { .. }
    ));
    tokio::time::sleep(short + Duration::from_millis(30)).await;
    assert_eq!(
        one.claim("u", "d", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    let members: Vec<String> = owned(&prefix, "u").await.into_iter().map(|m| m.0).collect();
    assert_eq!(members, ["d", "a"], "the lapsed member was dropped");
}

#[tokio::test]
async fn the_owners_set_lives_as_long_as_its_longest_key() {
    let (store, prefix) = store_and_prefix().await;
    let mut conn = support::raw_connection().await;
    let set = format!("{prefix}idem:v2:{{u}}:keys");
    assert_eq!(
        store.claim("u", "a", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    store
        .complete("u", "a", "fp", response(b"a"), Duration::from_secs(600))
        .await
        .unwrap();
    // A shorter claim after it does not shorten the set's life.
    assert_eq!(
        store.claim("u", "b", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&set)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 595_000 && pttl <= 600_000, "PTTL {pttl}");
}

/// What docs/operations.md and the adapter's docs say a key costs, held
/// to a bound: `MEMORY USAGE` of a completed send's hash and of a
/// completed conversation `PATCH`'s, and of the owner's set per member.
#[tokio::test]
async fn what_a_key_costs_in_redis() {
    let (store, prefix) = store_and_prefix().await;
    let mut conn = support::raw_connection().await;
    let owner = uuid::Uuid::new_v4().to_string();
    let print = "f".repeat(64);
    let usage = async |conn: &mut support::Raw, key: String| -> i64 {
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await
            .unwrap()
    };
    let send_key = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        store
            .claim(&owner, &send_key, &print, MINUTE)
            .await
            .unwrap(),
        Claim::Claimed
    );
    let send = confab_ports::StoredOutcome::Stream {
        conversation: confab_domain::ConversationId::generate(),
        message: confab_domain::MessageId::parse(uuid::Uuid::new_v4().to_string()).unwrap(),
    };
    store
        .complete(&owner, &send_key, &print, send, MINUTE)
        .await
        .unwrap();
    let send_bytes = usage(
        &mut conn,
        format!("{prefix}idem:v2:{{{owner}}}:k:{send_key}"),
    )
    .await;
    let patch_key = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        store
            .claim(&owner, &patch_key, &print, MINUTE)
            .await
            .unwrap(),
        Claim::Claimed
    );
    let patch = confab_ports::StoredOutcome::Response {
        status: 200,
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("etag".to_owned(), format!("\"{}\"", "e".repeat(20))),
            ("cache-control".to_owned(), "private, no-store".to_owned()),
        ],
        body: vec![b'x'; 400],
    };
    store
        .complete(&owner, &patch_key, &print, patch, MINUTE)
        .await
        .unwrap();
    let patch_bytes = usage(
        &mut conn,
        format!("{prefix}idem:v2:{{{owner}}}:k:{patch_key}"),
    )
    .await;
    let set = format!("{prefix}idem:v2:{{{owner}}}:keys");
    let set_two = usage(&mut conn, set.clone()).await;
    for _ in 0..98 {
        let key = uuid::Uuid::new_v4().to_string();
        store.claim(&owner, &key, &print, MINUTE).await.unwrap();
    }
    let per_member = (usage(&mut conn, set).await - set_two) / 98;
    assert!(
        send_bytes <= 700,
        "a send's key: {send_bytes} B (docs say ~600)"
    );
    assert!(patch_bytes <= 1_400, "a patch's key: {patch_bytes} B");
    assert!(
        per_member <= 100,
        "a member of the owner's set: {per_member} B"
    );
}
