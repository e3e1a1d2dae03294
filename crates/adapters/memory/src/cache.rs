//! [`Cache`] in a bounded map, for a single instance.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{Cache, CachedValue};

/// The longest TTL honoured; longer ones are cut to it, so `now + ttl`
/// cannot overflow an `Instant`.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

#[derive(Default)]
struct Entries {
    values: HashMap<String, (CachedValue, Instant)>,
    /// Version counters never expire: dropping one early would let a
    /// reader's stale entry be found again. They count towards the bound
    /// and are evicted only when no value is left to evict.
    versions: HashMap<String, u64>,
    /// The highest version ever evicted: a recreated counter starts above
    /// it, so no version number is ever used twice, even when the clock
    /// steps back or a counter was bumped faster than once a microsecond.
    evicted_floor: u64,
}

impl Entries {
    fn len(&self) -> usize {
        self.values.len() + self.versions.len()
    }

    /// A fresh counter: above the clock and above anything evicted.
    fn new_version(&self) -> u64 {
        now_micros().max(self.evicted_floor.saturating_add(1))
    }

    /// Makes room for one more entry when at `max`. An O(n) pass, so it
    /// frees an eighth of the capacity at once and the cost is paid once
    /// every `max / 8` inserts: expired values go first, then the values
    /// closest to expiry, and version counters (smallest first) only when
    /// no value is left.
    fn make_room(&mut self, max: usize, now: Instant) {
        if self.len() < max {
            return;
        }
        self.values.retain(|_, (_, expires)| *expires > now);
        let target = max - (max / 8).max(1);
        if self.len() <= target {
            return;
        }
        let mut excess = self.len() - target;
        let from_values = excess.min(self.values.len());
        if from_values > 0 {
            let mut by_expiry: Vec<(Instant, String)> = self
                .values
                .iter()
                .map(|(k, (_, expires))| (*expires, k.clone()))
                .collect();
            by_expiry.select_nth_unstable(from_values - 1);
            for (_, key) in by_expiry.into_iter().take(from_values) {
                self.values.remove(&key);
            }
            excess -= from_values;
        }
        if excess > 0 {
            let mut by_version: Vec<(u64, String)> =
                self.versions.iter().map(|(k, v)| (*v, k.clone())).collect();
            by_version.select_nth_unstable(excess - 1);
            for (version, key) in by_version.into_iter().take(excess) {
                self.versions.remove(&key);
                self.evicted_floor = self.evicted_floor.max(version);
            }
        }
    }
}

/// Microseconds since the Unix epoch (0 for a clock before it).
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A cache of at most `max_entries` values and version counters together.
/// Expired values are dropped lazily (on `get`, and when room is needed).
pub struct MemoryCache {
    max_entries: usize,
    entries: Mutex<Entries>,
}

impl MemoryCache {
    /// An empty cache holding at most `max_entries` entries (at least one).
    #[must_use]
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            entries: Mutex::new(Entries::default()),
        }
    }

    /// How many values and version counters are held (for tests of the
    /// bound).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<CachedValue>, DomainError> {
        let mut entries = self.lock();
        match entries.values.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Ok(Some(value.clone())),
            Some(_) => {
                entries.values.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: CachedValue, ttl: Duration) -> Result<(), DomainError> {
        let now = Instant::now();
        let Some(expires) = now.checked_add(ttl.min(MAX_TTL)).filter(|e| *e > now) else {
            // A zero TTL: the value would never be found.
            return Ok(());
        };
        let mut entries = self.lock();
        if let Some(slot) = entries.values.get_mut(key) {
            *slot = (value, expires);
            return Ok(());
        }
        entries.make_room(self.max_entries, now);
        entries.values.insert(key.to_owned(), (value, expires));
        Ok(())
    }

    async fn version(&self, key: &str) -> Result<u64, DomainError> {
        let mut entries = self.lock();
        if let Some(version) = entries.versions.get(key) {
            return Ok(*version);
        }
        entries.make_room(self.max_entries, Instant::now());
        let version = entries.new_version();
        entries.versions.insert(key.to_owned(), version);
        Ok(version)
    }

    async fn bump(&self, key: &str) -> Result<(), DomainError> {
        let mut entries = self.lock();
        if let Some(old) = entries.versions.get(key).copied() {
            let new = old.saturating_add(1).max(now_micros());
            entries.versions.insert(key.to_owned(), new);
            return Ok(());
        }
        entries.make_room(self.max_entries, Instant::now());
        let version = entries.new_version();
        entries.versions.insert(key.to_owned(), version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use confab_domain::{Page, PageRequest};

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn an_expired_value_is_dropped_on_get() {
        let cache = MemoryCache::new(10);
        cache
            .put("short", value(1), Duration::from_millis(10))
            .await
            .unwrap();
        cache.put("long", value(2), SECOND * 60).await.unwrap();
        assert_eq!(cache.len(), 2);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(cache.get("short").await.unwrap(), None);
        assert_eq!(cache.len(), 1, "the expired value was dropped on get");
    }

    /// A value told apart by `n`.
    fn value(n: u64) -> CachedValue {
        CachedValue::ConversationList(Page {
            items: Vec::new(),
            total: n,
            request: PageRequest::default(),
        })
    }

    #[tokio::test]
    async fn an_evicted_counter_comes_back_higher() {
        let cache = MemoryCache::new(1);
        // Bumped far ahead of the clock, so only the floor keeps the
        // recreated counter above it.
        cache.version("k").await.unwrap();
        for _ in 0..10_000 {
            cache.bump("k").await.unwrap();
        }
        let before = cache.version("k").await.unwrap();
        cache.version("x").await.unwrap();
        assert_eq!(cache.len(), 1, "k was evicted for x");
        let after = cache.version("k").await.unwrap();
        assert!(after > before, "{after} after {before}");
    }

    #[tokio::test]
    async fn the_bound_holds_and_values_go_before_counters() {
        let cache = MemoryCache::new(16);
        for i in 0..4 {
            cache.version(&format!("v{i}")).await.unwrap();
        }
        let versions: Vec<u64> = {
            let mut v = Vec::new();
            for i in 0..4 {
                v.push(cache.version(&format!("v{i}")).await.unwrap());
            }
            v
        };
        for i in 0..100u32 {
            cache
                .put(&format!("k{i}"), value(u64::from(i)), SECOND * (i + 1))
                .await
                .unwrap();
            assert!(cache.len() <= 16);
        }
        for (i, v) in versions.iter().enumerate() {
            assert_eq!(cache.version(&format!("v{i}")).await.unwrap(), *v);
        }
        // The values kept are those furthest from expiry.
        assert_eq!(cache.get("k99").await.unwrap(), Some(value(99)));
        assert_eq!(cache.get("k0").await.unwrap(), None);
    }
}
