//! [`FailureCounter`] in a bounded map, for a single instance.
//!
//! Each key holds its count and when its window ends. Ended windows are
//! swept when the map is full, and otherwise at most once every
//! [`SWEEP_EVERY`]. A map full of live windows takes no new key: its
//! failure is not counted (logged once per sweep period), which leaves the
//! per-address limits as the only bound on guessing until windows end,
//! rather than forgetting failures already counted.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{Erasure, ErasureTargets, FailureCount, FailureCounter};

/// How often, at most, ended windows are swept while the map isn't full.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The longest window honoured, so `now + window` cannot overflow.
const MAX_WINDOW: Duration = Duration::from_secs(365 * 86_400);

struct Window {
    failures: u32,
    ends: Instant,
}

struct Windows {
    map: HashMap<String, Window>,
    last_sweep: Instant,
}

impl Windows {
    fn sweep(&mut self, max: usize, now: Instant) {
        if self.map.len() >= max || now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            let before = self.map.len();
            self.map.retain(|_, w| w.ends > now);
            if before >= max && self.map.len() >= max {
                tracing::warn!(
                    keys = max,
                    "failure counter full of live windows: new failures are not counted"
                );
            }
            self.last_sweep = now;
        }
    }
}

/// Failure counts in this process, for at most `max_keys` keys at once.
pub struct InMemoryFailures {
    max_keys: usize,
    windows: Mutex<Windows>,
}

impl InMemoryFailures {
    /// An empty counter holding at most `max_keys` keys (at least one).
    #[must_use]
    pub fn new(max_keys: usize) -> Self {
        Self {
            max_keys: max_keys.max(1),
            windows: Mutex::new(Windows {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for InMemoryFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys: they name accounts and addresses.
        f.debug_struct("InMemoryFailures")
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl FailureCounter for InMemoryFailures {
    async fn counts(&self, keys: &[String]) -> Result<Vec<FailureCount>, DomainError> {
        let now = Instant::now();
        let windows = self.lock();
        Ok(keys
            .iter()
            .map(|key| match windows.map.get(key) {
                Some(w) if w.ends > now => FailureCount {
                    failures: w.failures,
                    resets_in: w.ends - now,
                },
                _ => FailureCount::default(),
            })
            .collect())
    }

    async fn record(&self, keys: &[String], window: Duration) -> Result<(), DomainError> {
        let now = Instant::now();
        let ends = now.checked_add(window.min(MAX_WINDOW)).unwrap_or(now);
        let mut windows = self.lock();
        windows.sweep(self.max_keys, now);
        for key in keys {
            if let Some(w) = windows.map.get_mut(key) {
                if w.ends > now {
                    w.failures = w.failures.saturating_add(1);
                } else {
                    *w = Window { failures: 1, ends };
                }
            } else if windows.map.len() < self.max_keys {
                windows
                    .map
                    .insert(key.clone(), Window { failures: 1, ends });
            }
        }
        Ok(())
    }

    async fn clear(&self, key: &str) -> Result<(), DomainError> {
        self.lock().map.remove(key);
        Ok(())
    }
}

#[async_trait]
impl Erasure for InMemoryFailures {
    async fn erase(&self, targets: &ErasureTargets) -> Result<u64, DomainError> {
        let mut windows = self.lock();
        let before = windows.map.len();
        windows.map.retain(|key, _| !targets.names(key));
        Ok(u64::try_from(before - windows.map.len()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_counter_keeps_what_it_counted() {
        let counter = InMemoryFailures::new(2);
        let keys: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        counter
            .record(&keys, Duration::from_secs(60))
            .await
            .unwrap();
        counter
            .record(&keys, Duration::from_secs(60))
            .await
            .unwrap();
        let counts = counter.counts(&keys).await.unwrap();
        let failures: Vec<u32> = counts.iter().map(|c| c.failures).collect();
        assert_eq!(failures, [2, 2, 0], "c found no room; a and b kept theirs");
        // An ended window makes room.
        counter.clear("a").await.unwrap();
        counter
            .record(&keys[2..], Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(counter.counts(&keys[2..]).await.unwrap()[0].failures, 1);
    }
}
