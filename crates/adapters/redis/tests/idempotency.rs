//! [`RedisIdempotency`] against the real Redis: the in-process store's
//! semantics, shared by instances, outcomes round-tripping exactly, claims
//! lapsing and outcomes expiring on Redis's clock, and a Redis that is
//! down reported as such.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_domain::{ConversationId, DomainError, MessageId};
use confab_ports::{Claim, IdempotencyStore, StoredOutcome};
use confab_redis::{RedisIdempotency, RedisPool, RedisSettings};
use secrecy::SecretString;

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

/// A connection outside the adapter.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(support::url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn response(body: &[u8]) -> StoredOutcome {
    StoredOutcome::Response {
        status: 201,
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("location".to_owned(), "/v1/conversations/1".to_owned()),
        ],
        body: body.to_vec(),
    }
}

#[tokio::test]
async fn claim_complete_and_replay() {
    let store = store().await;
    assert_eq!(
        store.claim("k", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    store
        .complete("k", "fp", response(b"{\"id\":1}"), MINUTE)
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            store.claim("k", "fp", MINUTE).await.unwrap(),
            Claim::Completed(response(b"{\"id\":1}")),
            "every retry gets it"
        );
    }
}

#[tokio::test]
async fn both_outcomes_round_trip() {
    let store = store().await;
    let response = StoredOutcome::Response {
        status: 207,
        headers: vec![
            (
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            ),
            (
                "location".to_owned(),
                "/v1/conversations/é?x=1&y=2".to_owned(),
            ),
            ("x-request-id".to_owned(), "abc".to_owned()),
            ("x-request-id".to_owned(), "repeated, in order".to_owned()),
            ("x-empty".to_owned(), String::new()),
        ],
        // Every byte value, none of it UTF-8 as a whole.
        body: (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect(),
    };
    assert_eq!(
        store.claim("r", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    store
        .complete("r", "fp", response.clone(), MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.claim("r", "fp", MINUTE).await.unwrap(),
        Claim::Completed(response)
    );

    let empty = StoredOutcome::Response {
        status: 204,
        headers: Vec::new(),
        body: Vec::new(),
    };
    assert_eq!(
        store.claim("e", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    store
        .complete("e", "fp", empty.clone(), MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.claim("e", "fp", MINUTE).await.unwrap(),
        Claim::Completed(empty)
    );

    for message in [MessageId::generate(), MessageId::parse("msg_001").unwrap()] {
        let stream = StoredOutcome::Stream {
            conversation: ConversationId::generate(),
            message,
        };
        let key = format!("s:{}", uuid::Uuid::new_v4());
        assert_eq!(
            store.claim(&key, "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        store
            .complete(&key, "fp", stream.clone(), MINUTE)
            .await
            .unwrap();
        assert_eq!(
            store.claim(&key, "fp", MINUTE).await.unwrap(),
            Claim::Completed(stream)
        );
    }
}

#[tokio::test]
async fn another_fingerprint_is_a_mismatch() {
    let store = store().await;
    assert_eq!(store.claim("k", "a", MINUTE).await.unwrap(), Claim::Claimed);
    assert_eq!(
        store.claim("k", "b", MINUTE).await.unwrap(),
        Claim::Mismatch,
        "while in flight"
    );
    // Another request's complete and release don't touch the claim.
    store
        .complete("k", "b", response(b"b"), MINUTE)
        .await
        .unwrap();
    store.release("k", "b").await.unwrap();
    assert_eq!(
        store.claim("k", "a", MINUTE).await.unwrap(),
        Claim::InFlight
    );

    store
        .complete("k", "a", response(b"a"), MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.claim("k", "b", MINUTE).await.unwrap(),
        Claim::Mismatch,
        "once completed"
    );
    assert_eq!(
        store.claim("k", "a", MINUTE).await.unwrap(),
        Claim::Completed(response(b"a"))
    );
}

#[tokio::test]
async fn a_running_claim_is_in_flight() {
    let store = store().await;
    assert_eq!(
        store.claim("k", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
    assert_eq!(
        store.claim("k", "fp", MINUTE).await.unwrap(),
        Claim::InFlight
    );
    assert_eq!(
        store.claim("other", "fp", MINUTE).await.unwrap(),
        Claim::Claimed,
        "keys are independent"
    );
}

#[tokio::test]
async fn release_frees_the_key() {
    let (store, prefix) = store_and_prefix().await;
    assert_eq!(store.claim("k", "a", MINUTE).await.unwrap(), Claim::Claimed);
    store.release("k", "a").await.unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}idem:v1:k"))
        .query_async(&mut raw().await)
        .await
        .unwrap();
    assert_eq!(exists, 0, "the key is deleted");
    assert_eq!(
        store.claim("k", "b", MINUTE).await.unwrap(),
        Claim::Claimed,
        "free for any request"
    );

    // A completed key is not released.
    store
        .complete("k", "b", response(b"b"), MINUTE)
        .await
        .unwrap();
    store.release("k", "b").await.unwrap();
    assert_eq!(
        store.claim("k", "b", MINUTE).await.unwrap(),
        Claim::Completed(response(b"b"))
    );
}

/// Claims `key` for `fingerprint` until it succeeds (the earlier claim
/// lapsed), failing after a deadline.
async fn claim_once_lapsed(store: &RedisIdempotency, key: &str, fingerprint: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store.claim(key, fingerprint, MINUTE).await.unwrap() {
            Claim::Claimed => return,
            Claim::InFlight | Claim::Mismatch => {
                assert!(Instant::now() < deadline, "the claim never lapsed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Claim::Completed(outcome) => panic!("unexpected outcome {outcome:?}"),
        }
    }
}

#[tokio::test]
async fn a_lapsed_claim_can_be_claimed_again() {
    let store = store().await;
    let short = Duration::from_millis(100);
    let started = Instant::now();
    assert_eq!(
        store.claim("k", "old", short).await.unwrap(),
        Claim::Claimed
    );
    claim_once_lapsed(&store, "k", "new").await;
    assert!(started.elapsed() >= Duration::from_millis(90), "not early");
    // The old holder comes back: its outcome and release are dropped.
    store
        .complete("k", "old", response(b"old"), MINUTE)
        .await
        .unwrap();
    store.release("k", "old").await.unwrap();
    assert_eq!(
        store.claim("k", "new", MINUTE).await.unwrap(),
        Claim::InFlight
    );

    // A lapsed claim alone can't be completed either.
    assert_eq!(store.claim("j", "fp", short).await.unwrap(), Claim::Claimed);
    tokio::time::sleep(short + Duration::from_millis(50)).await;
    store
        .complete("j", "fp", response(b"late"), MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.claim("j", "fp", MINUTE).await.unwrap(),
        Claim::Claimed
    );
}

#[tokio::test]
async fn completed_outcomes_expire() {
    let (store, prefix) = store_and_prefix().await;
    let mut conn = raw().await;
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

    // A short one expires, and the key is free again for any request.
    assert_eq!(store.claim("s", "a", MINUTE).await.unwrap(), Claim::Claimed);
    store
        .complete("s", "a", response(b"a"), Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(
        store.claim("s", "a", MINUTE).await.unwrap(),
        Claim::Completed(response(b"a"))
    );
    claim_once_lapsed(&store, "s", "b").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_have_one_winner() {
    let (_, prefix) = store_and_prefix().await;
    // Two instances, so the claims race over several connections.
    let stores = [
        Arc::new(RedisIdempotency::new(pool_at_prefix(&prefix))),
        Arc::new(RedisIdempotency::new(pool_at_prefix(&prefix))),
    ];
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = Arc::clone(&stores[i % 2]);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                store.claim("k", "fp", MINUTE).await.unwrap()
            })
        })
        .collect();
    let mut claimed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Claim::Claimed => claimed += 1,
            Claim::InFlight => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claimed, 1);
}

#[tokio::test]
async fn an_outcome_that_does_not_decode_is_an_error() {
    let (store, prefix) = store_and_prefix().await;
    let mut conn = raw().await;
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
    let started = Instant::now();
    assert!(matches!(
        store.claim("k", "fp", MINUTE).await,
        Err(DomainError::Unavailable(_))
    ));
    assert!(matches!(
        store.complete("k", "fp", response(b"x"), MINUTE).await,
        Err(DomainError::Unavailable(_))
    ));
    assert!(matches!(
        store.release("k", "fp").await,
        Err(DomainError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
