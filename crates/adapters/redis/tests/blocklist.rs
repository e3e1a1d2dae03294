//! What only [`RedisBlocklist`] does, against the real Redis: keys that
//! expire with the tokens, shared across instances. What every blocklist
//! promises is the contract suite's (`tests/contract.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use confab_domain::{DomainError, OffsetDateTime, UserId};
use confab_ports::TokenBlocklist;
use confab_redis::RedisBlocklist;
use confab_testkit::contract::blocklist::claims;

#[tokio::test]
async fn keys_expire_with_the_tokens() {
    let (pool, prefix) = support::pool_with_prefix().await;
    let list = RedisBlocklist::new(pool);
    let family = claims(UserId::generate(), OffsetDateTime::now_utc());
    list.block_family(family.user_id, family.family, family.expires_at)
        .await
        .unwrap();
    // The family's key lives as long as its tokens, no longer (give or
    // take the millisecond it is rounded up to, and Redis's cached clock).
    let mut conn = support::raw_connection().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(if support::cluster() {
            format!(
                "{prefix}bl:fam:{}:{}",
                support::tag(&family.user_id),
                family.family
            )
        } else {
            format!("{prefix}bl:fam:{}", family.family)
        })
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 800_000 && pttl <= 900_050, "PTTL {pttl}");
}

#[tokio::test]
async fn an_expiry_in_the_past_stores_no_key() {
    let (pool, prefix) = support::pool_with_prefix().await;
    let list = RedisBlocklist::new(pool);
    let past = OffsetDateTime::now_utc() - Duration::from_secs(1);
    let c = claims(UserId::generate(), past - Duration::from_secs(900));
    list.block_token(c.user_id, c.jti, past).await.unwrap();
    list.block_family(c.user_id, c.family, past).await.unwrap();
    let mut conn = support::raw_connection().await;
    let stored: u64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}bl:jti:{}", c.jti))
        .arg(format!("{prefix}bl:fam:{}", c.family))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn two_instances_on_one_redis_see_each_others_blocks() {
    let pool = support::pool().await;
    let a = RedisBlocklist::new(pool.clone());
    let b = RedisBlocklist::new(pool);
    let now = OffsetDateTime::now_utc();
    let user = UserId::generate();
    let logged_out = claims(user, now);
    let revoked = claims(user, now);
    a.block_token(logged_out.user_id, logged_out.jti, logged_out.expires_at)
        .await
        .unwrap();
    b.block_family(revoked.user_id, revoked.family, revoked.expires_at)
        .await
        .unwrap();
    assert!(b.is_blocked(&logged_out).await.unwrap());
    assert!(a.is_blocked(&revoked).await.unwrap());
    assert!(!a.is_blocked(&claims(user, now)).await.unwrap());
}

#[tokio::test]
async fn a_redis_that_is_down_is_unavailable() {
    let list = RedisBlocklist::new(support::unchecked_pool("redis://127.0.0.1:1"));
    let c = claims(UserId::generate(), OffsetDateTime::now_utc());
    let blocked = tokio::time::timeout(Duration::from_secs(5), list.is_blocked(&c))
        .await
        .expect("no hang");
    assert!(
        matches!(blocked, Err(DomainError::Unavailable(_))),
        "{blocked:?}"
    );
    let block = tokio::time::timeout(
        Duration::from_secs(5),
        list.block_token(c.user_id, c.jti, c.expires_at),
    )
    .await
    .expect("no hang");
    assert!(
        matches!(block, Err(DomainError::Unavailable(_))),
        "{block:?}"
    );
}

/// Admission in one script sees, and leaves, the state the blocklist and
/// the limiter on the same Redis see.
#[tokio::test]
async fn admission_shares_the_blocklist_and_the_limiter() {
    let pool = support::pool().await;
    confab_testkit::contract::admission::a_refused_token_is_charged_nothing(
        &confab_redis::RedisAdmission::new(pool.clone()),
        &RedisBlocklist::new(pool.clone()),
        &confab_redis::RedisLimiter::new(pool),
    )
    .await;
}

/// The same off a request worker (a multi-threaded runtime), where each
/// admission is a script call of its own rather than one of a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_off_a_worker_shares_the_blocklist_and_the_limiter() {
    let pool = support::pool().await;
    confab_testkit::contract::admission::a_refused_token_is_charged_nothing(
        &confab_redis::RedisAdmission::new(pool.clone()),
        &RedisBlocklist::new(pool.clone()),
        &confab_redis::RedisLimiter::new(pool),
    )
    .await;
}

/// Admission reads the cache's version counter in its script: the list
/// route then makes no round trip of its own for it.
#[tokio::test]
async fn admission_reads_the_cache_version_of_the_same_redis() {
    let pool = support::pool().await;
    confab_testkit::contract::admission::the_cache_version_read_with_a_charge_is_the_caches(
        &confab_redis::RedisAdmission::new(pool.clone()),
        &confab_redis::RedisCache::new(pool),
        true,
    )
    .await;
}
