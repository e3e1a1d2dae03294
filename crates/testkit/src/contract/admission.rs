//! The [`Admission`] contract: a token's standing and its charge in one
//! step, on the same state as the blocklist and the limiter beside it.

use std::time::Duration;

use confab_domain::{OffsetDateTime, UserId};
use confab_ports::{AccessClaims, Admission, Cache, RateLimiter, RatePolicy, TokenBlocklist};

use super::blocklist::claims;

async fn admit(admission: &dyn Admission, c: &AccessClaims, policy: &RatePolicy) -> Option<u32> {
    admission
        .admit(c, policy, &format!("user:{}", c.user_id), None)
        .await
        .expect("admit")
        .map(|admitted| admitted.decision.remaining)
}

/// A good token is charged to its bucket, shared with `limiter`; a
/// blocked token or session is refused and charged nothing; a changed
/// user shows a new version.
pub async fn a_refused_token_is_charged_nothing(
    admission: &dyn Admission,
    blocklist: &dyn TokenBlocklist,
    limiter: &dyn RateLimiter,
) {
    let policy = RatePolicy {
        name: format!("admission-{}", UserId::generate()),
        quota: 5,
        window: Duration::from_secs(3600),
    };
    let now = OffsetDateTime::now_utc();
    let user = UserId::generate();
    let good = claims(user, now);
    let first = admission
        .admit(&good, &policy, &format!("user:{user}"), None)
        .await
        .expect("admit")
        .expect("a good token is admitted");
    assert!(first.decision.allowed);
    assert_eq!(first.decision.remaining, 4);
    assert_eq!(
        first.user_version,
        blocklist
            .standing(&good)
            .await
            .expect("standing")
            .user_version
    );

    // A blocked token, and every token of a blocked session: refused,
    // however often, and never charged.
    let logged_out = claims(user, now);
    blocklist
        .block_token(logged_out.user_id, logged_out.jti, logged_out.expires_at)
        .await
        .expect("block token");
    let revoked = claims(user, now);
    blocklist
        .block_family(revoked.user_id, revoked.family, revoked.expires_at)
        .await
        .expect("block family");
    for _ in 0..10 {
        assert_eq!(admit(admission, &logged_out, &policy).await, None);
        assert_eq!(admit(admission, &revoked, &policy).await, None);
    }
    // The limiter sees the one charge: its check is the second.
    let seen = limiter
        .check(&policy, &format!("user:{user}"))
        .await
        .expect("check");
    assert_eq!(seen.remaining, 3);
    assert_eq!(admit(admission, &good, &policy).await, Some(2));

    // A changed user: admitted with a new version.
    blocklist.user_changed(user).await.expect("user changed");
    let after = admission
        .admit(&good, &policy, &format!("user:{user}"), None)
        .await
        .expect("admit")
        .expect("still admitted");
    assert_ne!(after.user_version, first.user_version);
    assert_eq!(
        after.user_version,
        blocklist
            .standing(&good)
            .await
            .expect("standing")
            .user_version
    );
    // An emptied bucket refuses, and says so.
    assert_eq!(admit(admission, &good, &policy).await, Some(0));
    let last = admission
        .admit(&good, &policy, &format!("user:{user}"), None)
        .await
        .expect("admit")
        .expect("admitted");
    assert!(!last.decision.allowed);
}

/// The cache version admission reads with a charge is the cache's own:
/// never a number the cache would not answer, nothing before the counter
/// exists, the new one after a bump. `reads`: whether `admission` shares
/// a step with `cache` (then it must read the version, not leave it to
/// the caller).
pub async fn the_cache_version_read_with_a_charge_is_the_caches(
    admission: &dyn Admission,
    cache: &dyn Cache,
    reads: bool,
) {
    let policy = RatePolicy {
        name: format!("admission-cache-{}", UserId::generate()),
        quota: 100,
        window: Duration::from_secs(3600),
    };
    let user = UserId::generate();
    let good = claims(user, OffsetDateTime::now_utc());
    let lists = format!("user:{user}:lists");
    let read = || async {
        admission
            .admit(&good, &policy, &format!("user:{user}"), Some(&lists))
            .await
            .expect("admit")
            .expect("a good token is admitted")
            .cache_version
    };
    // No counter yet: nothing to read (the cache creates it, on its clock).
    assert_eq!(read().await, None);
    let first = cache.version(&lists).await.expect("version");
    let seen = read().await;
    assert_eq!(seen, reads.then_some(first));
    if let Some(seen) = seen {
        assert_eq!(cache.version_seen(&lists, seen).await.expect("seen"), first);
    }
    cache.bump(&lists).await.expect("bump");
    let bumped = cache.version(&lists).await.expect("version");
    assert!(bumped > first);
    assert_eq!(read().await, reads.then_some(bumped));
    // Not asked: not read.
    let unasked = admission
        .admit(&good, &policy, &format!("user:{user}"), None)
        .await
        .expect("admit")
        .expect("admitted");
    assert_eq!(unasked.cache_version, None);
}
