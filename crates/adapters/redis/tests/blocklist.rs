//! [`RedisBlocklist`] against the real Redis: the in-process blocklist's
//! semantics, shared across instances, entries expiring on their own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use confab_domain::{DomainError, FamilyId, OffsetDateTime, Role, TokenId, UserId};
use confab_ports::{AccessClaims, TokenBlocklist};
use confab_redis::{RedisBlocklist, RedisPool, RedisSettings};
use secrecy::SecretString;

fn claims(user: UserId, issued_at: OffsetDateTime) -> AccessClaims {
    AccessClaims {
        user_id: user,
        role: Role::User,
        jti: TokenId::generate(),
        family: FamilyId::generate(),
        issued_at,
        expires_at: issued_at + Duration::from_secs(900),
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
async fn blocked_tokens_and_families() {
    let list = RedisBlocklist::new(support::pool().await);
    let now = OffsetDateTime::now_utc();
    let user = UserId::generate();
    let a = claims(user, now);
    assert!(!list.is_blocked(&a).await.unwrap());
    list.block_token(a.jti, a.expires_at).await.unwrap();
    assert!(list.is_blocked(&a).await.unwrap());
    let b = claims(user, now);
    assert!(!list.is_blocked(&b).await.unwrap(), "another token");
    list.block_family(b.family, b.expires_at).await.unwrap();
    let sibling = AccessClaims {
        jti: TokenId::generate(),
        ..b.clone()
    };
    assert!(list.is_blocked(&b).await.unwrap());
    assert!(
        list.is_blocked(&sibling).await.unwrap(),
        "every token of the family"
    );
    assert!(
        !list.is_blocked(&claims(user, now)).await.unwrap(),
        "another session of the user"
    );
}

#[tokio::test]
async fn entries_expire_with_the_tokens() {
    let (pool, prefix) = pool_with_prefix();
    let list = RedisBlocklist::new(pool);
    let now = OffsetDateTime::now_utc();
    let token = claims(UserId::generate(), now);
    let family = claims(UserId::generate(), now);
    list.block_token(token.jti, now + Duration::from_millis(300))
        .await
        .unwrap();
    list.block_family(family.family, family.expires_at)
        .await
        .unwrap();
    assert!(list.is_blocked(&token).await.unwrap());
    assert!(list.is_blocked(&family).await.unwrap());

    // The family's key lives as long as its tokens, no longer (give or
    // take the millisecond it is rounded up to, and Redis's cached clock).
    let mut conn = raw_connection().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}bl:fam:{}", family.family))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 800_000 && pttl <= 900_050, "PTTL {pttl}");

    // The token's entry goes by itself once the token would have expired.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while list.is_blocked(&token).await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still blocked long after its expiry"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(OffsetDateTime::now_utc() >= now + Duration::from_millis(290));
    assert!(
        list.is_blocked(&family).await.unwrap(),
        "the family still is"
    );
}

#[tokio::test]
async fn an_expiry_in_the_past_stores_nothing() {
    let (pool, prefix) = pool_with_prefix();
    let list = RedisBlocklist::new(pool);
    let past = OffsetDateTime::now_utc() - Duration::from_secs(1);
    let c = claims(UserId::generate(), past - Duration::from_secs(900));
    list.block_token(c.jti, past).await.unwrap();
    list.block_family(c.family, past).await.unwrap();
    assert!(!list.is_blocked(&c).await.unwrap());

    let mut conn = raw_connection().await;
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
    a.block_token(logged_out.jti, logged_out.expires_at)
        .await
        .unwrap();
    b.block_family(revoked.family, revoked.expires_at)
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
        list.block_token(c.jti, c.expires_at),
    )
    .await
    .expect("no hang");
    assert!(
        matches!(block, Err(DomainError::Unavailable(_))),
        "{block:?}"
    );
}
