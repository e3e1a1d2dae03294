//! A rate limiter that falls back to another when its store fails, and
//! an admission made of a blocklist and a limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{
    AccessClaims, Admission, Admitted, RateDecision, RateLimiter, RatePolicy, TokenBlocklist,
};

/// Asks `primary` (the limiter every instance shares); when its store
/// can't answer, asks `fallback` (this instance's own) instead, so limits
/// keep holding — per instance — while the shared store is down, and are
/// shared again as soon as it is back.
pub struct FallbackLimiter {
    primary: Arc<dyn RateLimiter>,
    fallback: Arc<dyn RateLimiter>,
    /// Whether the last check fell back: the switch is logged once each
    /// way, not at every request of an outage.
    degraded: AtomicBool,
}

impl FallbackLimiter {
    /// `primary`, backed by `fallback`.
    #[must_use]
    pub fn new(primary: Arc<dyn RateLimiter>, fallback: Arc<dyn RateLimiter>) -> Self {
        Self {
            primary,
            fallback,
            degraded: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl RateLimiter for FallbackLimiter {
    async fn check(&self, policy: &RatePolicy, key: &str) -> Result<RateDecision, DomainError> {
        match self.primary.check(policy, key).await {
            Err(DomainError::Unavailable(e)) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "shared rate limiter unavailable: limiting in this instance");
                }
                self.fallback.check(policy, key).await
            }
            other => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared rate limiter available again");
                }
                other
            }
        }
    }
}

/// Admission in two look-ups: the blocklist's standing, then — for a token
/// that is not refused — the limiter's check (what a backend without a
/// combined step does).
pub struct SeparateAdmission {
    blocklist: Arc<dyn TokenBlocklist>,
    limiter: Arc<dyn RateLimiter>,
}

impl SeparateAdmission {
    /// `blocklist`'s standing, then `limiter`'s check.
    #[must_use]
    pub fn new(blocklist: Arc<dyn TokenBlocklist>, limiter: Arc<dyn RateLimiter>) -> Self {
        Self { blocklist, limiter }
    }
}

#[async_trait]
impl Admission for SeparateAdmission {
    async fn admit(
        &self,
        claims: &AccessClaims,
        policy: &RatePolicy,
        key: &str,
        _cache_key: Option<&str>,
    ) -> Result<Option<Admitted>, DomainError> {
        let standing = self.blocklist.standing(claims).await?;
        if standing.blocked {
            return Ok(None);
        }
        let decision = self.limiter.check(policy, key).await?;
        Ok(Some(Admitted {
            user_version: standing.user_version,
            decision,
            // Separate stores share no step with the cache: the caller
            // asks the cache.
            cache_version: None,
        }))
    }
}
