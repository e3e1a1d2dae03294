//! What every [`RateLimiter`] promises: a token bucket per policy and key,
//! `quota` requests per `window` refilled evenly, each token taken once,
//! and decisions that say how long until a retry and until the bucket is
//! full.

use std::sync::Arc;
use std::time::Duration;

use confab_domain::DomainError;
use confab_ports::{RateLimiter, RatePolicy};

/// The adapter under test, shared with the tasks a test spawns.
pub type Adapter = Arc<dyn RateLimiter>;

fn policy(quota: u32, window: Duration) -> RatePolicy {
    RatePolicy {
        name: "test".into(),
        quota,
        window,
    }
}

/// A bucket of five a minute allows five checks, counting down what is
/// left and how long until it is full again (up to a whole refill period
/// per token taken), then refuses with a retry time of at most one period.
pub async fn a_bucket_empties_then_refuses_with_a_retry_time(limiter: &dyn RateLimiter) {
    let period = Duration::from_secs(12);
    let p = policy(5, period * 5);
    for expected_remaining in (0..5).rev() {
        let d = limiter.check(&p, "ip:1").await.expect("check");
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, expected_remaining, "{d:?}");
        assert_eq!(d.retry_after, Duration::ZERO, "{d:?}");
        // Full again once every token taken so far has come back.
        let taken = 5 - expected_remaining;
        assert!(
            d.reset_after <= period * taken && d.reset_after > period * (taken - 1),
            "{d:?}"
        );
    }
    let d = limiter.check(&p, "ip:1").await.expect("check");
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.remaining, 0);
    // One token comes back every 12 s.
    assert!(
        d.retry_after > Duration::from_secs(10) && d.retry_after <= period,
        "{d:?}"
    );
    // Full again when the last of the five has come back.
    assert_eq!(d.reset_after, d.retry_after + period * 4, "{d:?}");
}

/// Each key has a bucket of its own: emptying one leaves another full.
pub async fn keys_have_their_own_buckets(limiter: &dyn RateLimiter) {
    let p = policy(2, Duration::from_secs(60));
    assert!(limiter.check(&p, "ip:1").await.expect("check").allowed);
    assert!(limiter.check(&p, "ip:1").await.expect("check").allowed);
    assert!(!limiter.check(&p, "ip:1").await.expect("check").allowed);
    let other = limiter.check(&p, "ip:2").await.expect("check");
    assert!(other.allowed, "{other:?}");
    assert_eq!(other.remaining, 1, "{other:?}");
}

/// Policies with different names have their own buckets for the same key.
pub async fn policies_with_different_names_have_their_own_buckets(limiter: &dyn RateLimiter) {
    let login = RatePolicy {
        name: "login".into(),
        ..policy(1, Duration::from_secs(60))
    };
    let default = RatePolicy {
        name: "default".into(),
        ..policy(1, Duration::from_secs(60))
    };
    assert!(limiter.check(&login, "ip:1").await.expect("check").allowed);
    assert!(!limiter.check(&login, "ip:1").await.expect("check").allowed);
    assert!(
        limiter
            .check(&default, "ip:1")
            .await
            .expect("check")
            .allowed
    );
}

/// Checks racing on one bucket allow exactly its quota, each token taken
/// once (every remaining count from quota − 1 down to 0 seen once), and
/// the refused ones get a retry time.
pub async fn concurrent_checks_allow_exactly_the_quota(limiter: &Adapter) {
    let p = Arc::new(policy(20, Duration::from_secs(60)));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let limiter = Arc::clone(limiter);
            let p = Arc::clone(&p);
            tokio::spawn(async move { limiter.check(&p, "busy").await.expect("check") })
        })
        .collect();
    let mut allowed = Vec::new();
    for task in tasks {
        let d = task.await.expect("the check ran");
        if d.allowed {
            allowed.push(d.remaining);
        } else {
            assert_eq!(d.remaining, 0, "{d:?}");
            assert!(d.retry_after > Duration::ZERO, "{d:?}");
        }
    }
    allowed.sort_unstable();
    assert_eq!(allowed, (0..20).collect::<Vec<_>>());
}

/// After waiting out the retry time of a refusal, one more request is
/// allowed.
pub async fn a_bucket_refills_over_time(limiter: &dyn RateLimiter) {
    // A token back every second: the retry time is at most that.
    let p = policy(2, Duration::from_secs(2));
    assert!(limiter.check(&p, "k").await.expect("check").allowed);
    assert!(limiter.check(&p, "k").await.expect("check").allowed);
    let refused = limiter.check(&p, "k").await.expect("check");
    assert!(!refused.allowed, "{refused:?}");
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1),
        "{refused:?}"
    );
    tokio::time::sleep(refused.retry_after).await;
    let d = limiter.check(&p, "k").await.expect("check");
    assert!(d.allowed, "one token is back: {d:?}");
}

/// A policy with a zero quota or a zero window is a configuration bug:
/// [`DomainError::Internal`], never a silent allow or refusal.
pub async fn zero_quota_or_window_is_an_internal_error(limiter: &dyn RateLimiter) {
    let zero_quota = policy(0, Duration::from_secs(60));
    let result = limiter.check(&zero_quota, "k").await;
    assert!(
        matches!(result, Err(DomainError::Internal(_))),
        "{result:?}"
    );
    let zero_window = policy(5, Duration::ZERO);
    let result = limiter.check(&zero_window, "k").await;
    assert!(
        matches!(result, Err(DomainError::Internal(_))),
        "{result:?}"
    );
}

/// A quota above one request a microsecond (100,000,000 a minute) still
/// limits, with its whole bucket, instead of failing.
pub async fn a_quota_above_one_a_microsecond_limits_instead_of_failing(limiter: &dyn RateLimiter) {
    let p = policy(100_000_000, Duration::from_secs(60));
    for _ in 0..100 {
        let d = limiter.check(&p, "user:1").await.expect("check");
        assert!(d.allowed, "{d:?}");
        assert!(d.remaining > 99_000_000, "{d:?}");
    }
}
