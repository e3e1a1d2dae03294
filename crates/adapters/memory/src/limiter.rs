//! [`RateLimiter`] on governor's keyed GCRA token buckets.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{RateDecision, RateLimiter, RatePolicy};
use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;

type Keyed = governor::RateLimiter<
    String,
    DefaultKeyedStateStore<String>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// How many checks between two sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

struct Bucket {
    policy: RatePolicy,
    period: Duration,
    limiter: Keyed,
}

/// Keyed token buckets, one limiter per policy. Memory stays bounded: every
/// few thousand checks, keys whose bucket is full again (idle) are dropped.
#[derive(Default)]
pub struct GovernorLimiter {
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
    checks: AtomicU64,
}

impl GovernorLimiter {
    /// An empty limiter; buckets are made on first use of a policy.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys currently tracked across all policies.
    #[must_use]
    pub fn tracked_keys(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|b| b.limiter.len())
            .sum()
    }

    /// Drops the keys whose buckets are full again.
    pub fn sweep(&self) {
        for bucket in self
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            bucket.limiter.retain_recent();
            bucket.limiter.shrink_to_fit();
        }
    }

    fn bucket(&self, policy: &RatePolicy) -> Result<Arc<Bucket>, DomainError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = buckets.get(&policy.name).filter(|b| b.policy == *policy) {
            return Ok(Arc::clone(b));
        }
        let quota_n = NonZeroU32::new(policy.quota).ok_or_else(|| {
            DomainError::internal(format!("rate policy {} has a zero quota", policy.name))
        })?;
        let period = policy.window / policy.quota;
        let quota = Quota::with_period(period)
            .ok_or_else(|| {
                DomainError::internal(format!("rate policy {} has a zero period", policy.name))
            })?
            .allow_burst(quota_n);
        let bucket = Arc::new(Bucket {
            policy: policy.clone(),
            period,
            limiter: governor::RateLimiter::keyed(quota)
                .with_middleware::<StateInformationMiddleware>(),
        });
        buckets.insert(policy.name.clone(), Arc::clone(&bucket));
        Ok(bucket)
    }
}

#[async_trait]
impl RateLimiter for GovernorLimiter {
    async fn check(&self, policy: &RatePolicy, key: &str) -> Result<RateDecision, DomainError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let bucket = self.bucket(policy)?;
        let quota = policy.quota;
        Ok(match bucket.limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateDecision {
                    allowed: true,
                    remaining,
                    reset_after: bucket.period * (quota - remaining.min(quota)),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(bucket.limiter.clock().now());
                RateDecision {
                    allowed: false,
                    remaining: 0,
                    reset_after: retry_after + bucket.period * (quota - 1),
                    retry_after,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_keys_are_swept() {
        let limiter = GovernorLimiter::new();
        let p = RatePolicy {
            name: "fast".into(),
            quota: 1000,
            window: Duration::from_millis(10),
        };
        for i in 0..100 {
            limiter.check(&p, &format!("k{i}")).await.unwrap();
        }
        assert_eq!(limiter.tracked_keys(), 100);
        tokio::time::sleep(Duration::from_millis(30)).await;
        limiter.sweep();
        assert_eq!(limiter.tracked_keys(), 0);
    }
}
