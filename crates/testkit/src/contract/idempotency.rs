//! What every [`IdempotencyStore`] promises: a key is claimed by one
//! request at a time, its outcome is replayed to that request's retries and
//! to no other request, claims and outcomes lapse after their TTLs, and an
//! owner holds no more keys than the cap the store was made with.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use confab_domain::{ConversationId, MessageId};
use confab_ports::{Claim, IdempotencyStore, StoredOutcome};

use super::eventually;

/// The adapter under test, shared with the tasks a test spawns.
pub type Adapter = Arc<dyn IdempotencyStore>;

const MINUTE: Duration = Duration::from_secs(60);

/// The per-owner cap of the stores most tests get: more keys than any
/// test claims.
pub const STANDARD_CAP: usize = 1_000;

/// The owner of the keys of the tests with one owner.
const OWNER: &str = "0190c7c4-6a5e-7000-8000-00000000000a";

/// A short in-flight or outcome TTL, for the tests of lapsing.
const SHORT: Duration = Duration::from_millis(100);

/// A created-resource response with `body`, as a request leaves it.
#[must_use]
pub fn response(body: &[u8]) -> StoredOutcome {
    StoredOutcome::Response {
        status: 201,
        headers: vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("location".to_owned(), "/v1/conversations/1".to_owned()),
        ],
        body: body.to_vec(),
    }
}

async fn claim(store: &dyn IdempotencyStore, key: &str, fingerprint: &str) -> Claim {
    store
        .claim(OWNER, key, fingerprint, MINUTE)
        .await
        .expect("claim")
}

async fn complete(store: &dyn IdempotencyStore, key: &str, fingerprint: &str, body: &[u8]) {
    store
        .complete(OWNER, key, fingerprint, response(body), MINUTE)
        .await
        .expect("complete");
}

/// Claims `key` for `fingerprint` as soon as the earlier claim or outcome
/// has lapsed; fails the test if it never does.
async fn claim_once_lapsed(store: &dyn IdempotencyStore, key: &str, fingerprint: &str) {
    eventually("the key is free again", async || {
        match claim(store, key, fingerprint).await {
            Claim::Claimed => true,
            Claim::InFlight | Claim::Mismatch | Claim::Completed(_) | Claim::OwnerFull { .. } => {
                false
            }
        }
    })
    .await;
}

/// A free key is claimed; once its request completed, every retry of that
/// request gets the outcome.
pub async fn claim_complete_and_replay(store: &dyn IdempotencyStore) {
    assert_eq!(claim(store, "k", "fp").await, Claim::Claimed);
    complete(store, "k", "fp", b"{\"id\":1}").await;
    for _ in 0..2 {
        assert_eq!(
            claim(store, "k", "fp").await,
            Claim::Completed(response(b"{\"id\":1}")),
            "every retry gets it"
        );
    }
}

/// Outcomes come back exactly as stored: any bytes in the body, repeated
/// and empty headers in order, an empty response, a stream with a
/// generated or a seeded message id.
pub async fn both_outcomes_round_trip(store: &dyn IdempotencyStore) {
    let full = StoredOutcome::Response {
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
            ("x-trace".to_owned(), "abc".to_owned()),
            ("x-trace".to_owned(), "repeated, in order".to_owned()),
            ("x-empty".to_owned(), String::new()),
        ],
        // Every byte value, none of it UTF-8 as a whole.
        body: (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect(),
    };
    let empty = StoredOutcome::Response {
        status: 204,
        headers: Vec::new(),
        body: Vec::new(),
    };
    let streams = [
        MessageId::generate(),
        MessageId::parse("msg_001").expect("a valid message id"),
    ]
    .map(|message| StoredOutcome::Stream {
        conversation: ConversationId::generate(),
        message,
    });
    let outcomes = [full, empty].into_iter().chain(streams);
    for (i, outcome) in outcomes.enumerate() {
        let key = format!("k{i}");
        assert_eq!(claim(store, &key, "fp").await, Claim::Claimed);
        store
            .complete(OWNER, &key, "fp", outcome.clone(), MINUTE)
            .await
            .expect("complete");
        assert_eq!(claim(store, &key, "fp").await, Claim::Completed(outcome));
    }
}

/// A key claimed by one request is a mismatch for any other, running or
/// completed, and another request's `complete` and `release` leave the
/// claim alone.
pub async fn another_fingerprint_is_a_mismatch(store: &dyn IdempotencyStore) {
    assert_eq!(claim(store, "k", "a").await, Claim::Claimed);
    assert_eq!(
        claim(store, "k", "b").await,
        Claim::Mismatch,
        "while in flight"
    );
    complete(store, "k", "b", b"b").await;
    store.release(OWNER, "k", "b").await.expect("release");
    assert_eq!(claim(store, "k", "a").await, Claim::InFlight);

    complete(store, "k", "a", b"a").await;
    assert_eq!(
        claim(store, "k", "b").await,
        Claim::Mismatch,
        "once completed"
    );
    assert_eq!(
        claim(store, "k", "a").await,
        Claim::Completed(response(b"a"))
    );
}

/// A retry while the request still runs is in flight; other keys are
/// independent.
pub async fn a_running_claim_is_in_flight(store: &dyn IdempotencyStore) {
    assert_eq!(claim(store, "k", "fp").await, Claim::Claimed);
    assert_eq!(claim(store, "k", "fp").await, Claim::InFlight);
    assert_eq!(
        claim(store, "other", "fp").await,
        Claim::Claimed,
        "keys are independent"
    );
}

/// A released claim frees the key for any request; a completed key is not
/// released.
pub async fn release_frees_the_key(store: &dyn IdempotencyStore) {
    assert_eq!(claim(store, "k", "a").await, Claim::Claimed);
    store.release(OWNER, "k", "a").await.expect("release");
    assert_eq!(
        claim(store, "k", "b").await,
        Claim::Claimed,
        "free for any request"
    );

    complete(store, "k", "b", b"b").await;
    store.release(OWNER, "k", "b").await.expect("release");
    assert_eq!(
        claim(store, "k", "b").await,
        Claim::Completed(response(b"b"))
    );
}

/// A claim neither completed nor released lapses after its in-flight TTL:
/// another request takes the key, and the first holder's late `complete`
/// and `release` leave the new claim alone.
pub async fn a_lapsed_claim_can_be_claimed_again(store: &dyn IdempotencyStore) {
    assert_eq!(
        store.claim(OWNER, "k", "old", SHORT).await.expect("claim"),
        Claim::Claimed
    );
    claim_once_lapsed(store, "k", "new").await;
    complete(store, "k", "old", b"old").await;
    store.release(OWNER, "k", "old").await.expect("release");
    assert_eq!(claim(store, "k", "new").await, Claim::InFlight);
}

/// A `complete` after its claim lapsed stores nothing, even when no one
/// took the key meanwhile: the key is free.
pub async fn a_lapsed_claim_cannot_be_completed(store: &dyn IdempotencyStore) {
    assert_eq!(
        store.claim(OWNER, "k", "fp", SHORT).await.expect("claim"),
        Claim::Claimed
    );
    tokio::time::sleep(SHORT * 2).await;
    complete(store, "k", "fp", b"late").await;
    assert_eq!(claim(store, "k", "fp").await, Claim::Claimed);
}

/// A completed outcome is replayed until its TTL runs out; then the key
/// is free again, for any request.
pub async fn completed_outcomes_expire(store: &dyn IdempotencyStore) {
    assert_eq!(claim(store, "k", "a").await, Claim::Claimed);
    store
        .complete(OWNER, "k", "a", response(b"a"), Duration::from_secs(1))
        .await
        .expect("complete");
    assert_eq!(
        claim(store, "k", "a").await,
        Claim::Completed(response(b"a"))
    );
    claim_once_lapsed(store, "k", "b").await;
}

/// Of many requests claiming one key at once, exactly one wins; the
/// others see it in flight.
pub async fn concurrent_claims_have_one_winner(store: &Adapter) {
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(store);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                claim(&*store, "k", "fp").await
            })
        })
        .collect();
    let mut claimed = 0;
    for task in tasks {
        match task.await.expect("the claim ran") {
            Claim::Claimed => claimed += 1,
            other => assert_eq!(other, Claim::InFlight),
        }
    }
    assert_eq!(claimed, 1);
}

/// A new key of an owner who holds as many live keys as the cap is
/// refused with the time until their first lapses; keys they hold are
/// still answered, other owners are not affected, and a release frees a
/// place.
pub async fn an_owner_at_the_cap_is_refused_and_nobody_else<S, F>(make: impl FnOnce(usize) -> F)
where
    S: IdempotencyStore,
    F: Future<Output = S>,
{
    let store = make(2).await;
    assert_eq!(claim(&store, "a", "fp").await, Claim::Claimed);
    complete(&store, "a", "fp", b"a").await;
    assert_eq!(claim(&store, "b", "fp").await, Claim::Claimed);
    match store.claim(OWNER, "c", "fp", MINUTE).await.expect("claim") {
        Claim::OwnerFull { retry_after } => assert!(
            retry_after > Duration::from_secs(50) && retry_after <= MINUTE,
            "until the first of the owner's keys lapses: {retry_after:?}"
        ),
        other => panic!("the owner's third key: {other:?}"),
    }
    assert_eq!(
        claim(&store, "a", "fp").await,
        Claim::Completed(response(b"a"))
    );
    assert_eq!(claim(&store, "b", "fp").await, Claim::InFlight);
    let other = "0190c7c4-6a5e-7000-8000-00000000000b";
    for key in ["c", "a"] {
        let claimed = store.claim(other, key, "fp", MINUTE).await.expect("claim");
        assert_eq!(claimed, Claim::Claimed, "another owner's {key}");
    }
    store.release(OWNER, "b", "fp").await.expect("release");
    assert_eq!(claim(&store, "c", "fp").await, Claim::Claimed);
}
