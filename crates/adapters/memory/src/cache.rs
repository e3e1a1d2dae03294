//! [`Cache`] in a bounded map, for a single instance.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{Cache, CachedValue, Erasure, ErasureTargets};

/// The longest TTL honoured; longer ones are cut to it, so `now + ttl`
/// cannot overflow an `Instant`.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

#[derive(Default)]
struct Entries {
    /// Each value with its expiry and weight ([`CachedValue::weight`]).
    values: HashMap<String, (CachedValue, Instant, usize)>,
    /// The weights of `values`, summed.
    bytes: usize,
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

    /// Makes room for one more entry weighing `incoming` bytes when the
    /// cache is at `max` entries or would pass `max_bytes`. An O(n log n)
    /// pass, so it frees an eighth of both bounds at once and the cost is
    /// paid once every many inserts: expired values go first, then the
    /// values closest to expiry, and version counters (smallest first) only
    /// when no value is left.
    fn make_room(&mut self, max: usize, max_bytes: usize, incoming: usize, now: Instant) {
        if self.len() < max && self.bytes.saturating_add(incoming) <= max_bytes {
            return;
        }
        let mut freed = 0;
        self.values.retain(|_, (_, expires, weight)| {
            let keep = *expires > now;
            if !keep {
                freed += *weight;
            }
            keep
        });
        self.bytes -= freed;
        let target = max - (max / 8).max(1);
        let target_bytes = (max_bytes - max_bytes / 8).saturating_sub(incoming);
        let done = |e: &Self| e.len() <= target && e.bytes <= target_bytes;
        if done(self) {
            return;
        }
        let mut by_expiry: Vec<(Instant, String)> = self
            .values
            .iter()
            .map(|(k, (_, expires, _))| (*expires, k.clone()))
            .collect();
        by_expiry.sort_unstable();
        for (_, key) in by_expiry {
            if done(self) {
                break;
            }
            if let Some((_, _, weight)) = self.values.remove(&key) {
                self.bytes -= weight;
            }
        }
        if self.len() > target {
            let excess = self.len() - target;
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

/// A cache of at most `max_entries` values and version counters together,
/// and at most `max_bytes` of values by their [`CachedValue::weight`] (a
/// value heavier than that alone is not kept). Expired values are dropped
/// lazily (on `get`, and when room is needed).
pub struct MemoryCache {
    max_entries: usize,
    max_bytes: usize,
    entries: Mutex<Entries>,
}

impl MemoryCache {
    /// An empty cache holding at most `max_entries` entries (at least one)
    /// and `max_bytes` of values.
    #[must_use]
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            max_bytes,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// The weight of the values held (for tests of the bound).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
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
            Some((value, expires, _)) if *expires > Instant::now() => Ok(Some(value.clone())),
            Some(_) => {
                if let Some((_, _, weight)) = entries.values.remove(key) {
                    entries.bytes -= weight;
                }
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
        let weight = value.weight();
        if weight > self.max_bytes {
            return Ok(());
        }
        let mut entries = self.lock();
        if let Some((_, _, old)) = entries.values.remove(key) {
            entries.bytes -= old;
        }
        entries.make_room(self.max_entries, self.max_bytes, weight, now);
        entries.bytes += weight;
        entries
            .values
            .insert(key.to_owned(), (value, expires, weight));
        Ok(())
    }

    async fn version(&self, key: &str) -> Result<u64, DomainError> {
        let mut entries = self.lock();
        if let Some(version) = entries.versions.get(key) {
            return Ok(*version);
        }
        entries.make_room(self.max_entries, self.max_bytes, 0, Instant::now());
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
        entries.make_room(self.max_entries, self.max_bytes, 0, Instant::now());
        let version = entries.new_version();
        entries.versions.insert(key.to_owned(), version);
        Ok(())
    }
}

#[async_trait]
impl Erasure for MemoryCache {
    async fn erase(&self, targets: &ErasureTargets) -> Result<u64, DomainError> {
        let mut entries = self.lock();
        let values: Vec<String> = entries
            .values
            .keys()
            .filter(|key| targets.names(key))
            .cloned()
            .collect();
        for key in &values {
            if let Some((_, _, weight)) = entries.values.remove(key) {
                entries.bytes -= weight;
            }
        }
        let versions: Vec<String> = entries
            .versions
            .keys()
            .filter(|key| targets.names(key))
            .cloned()
            .collect();
        for key in &versions {
            // As an eviction: a recreated counter starts above it.
            if let Some(version) = entries.versions.remove(key) {
                entries.evicted_floor = entries.evicted_floor.max(version);
            }
        }
        Ok(u64::try_from(values.len() + versions.len()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use confab_domain::{Page, PageRequest};

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn an_expired_value_is_dropped_on_get() {
        let cache = MemoryCache::new(10, 1 << 30);
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
        let cache = MemoryCache::new(1, 1 << 30);
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
        let cache = MemoryCache::new(16, 1 << 30);
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

    /// A history of `messages` messages of `bytes` bytes of text each.
    fn history(messages: usize, bytes: usize) -> CachedValue {
        use confab_domain::{
            Content, Conversation, ConversationId, Message, MessageId, MessageMetadata,
            MessagePage, MessageRole, MessageStatus, OffsetDateTime, Title, UserId,
        };
        let at = OffsetDateTime::UNIX_EPOCH;
        let conversation = ConversationId::generate();
        CachedValue::History(
            Box::new(Conversation {
                id: conversation,
                owner: UserId::generate(),
                title: Title::parse("t").unwrap(),
                is_archived: false,
                current_node: None,
                settings: Default::default(),
                deleted_at: None,
                created_at: at,
                updated_at: at,
            }),
            MessagePage {
                messages: (0..messages)
                    .map(|n| Message {
                        id: MessageId::parse(format!("m{n}")).unwrap(),
                        conversation_id: conversation,
                        parent_id: None,
                        role: MessageRole::User,
                        content: Content::text(vec!["x".repeat(bytes)]).unwrap(),
                        status: MessageStatus::FinishedSuccessfully,
                        model_slug: None,
                        metadata: MessageMetadata::new(),
                        created_at: at,
                        updated_at: at,
                    })
                    .collect(),
                has_more: false,
                children: Vec::new(),
            },
        )
    }

    #[tokio::test]
    async fn the_byte_bound_holds_and_evicts_the_closest_to_expiry() {
        let one = history(10, 10_000).weight();
        assert!((100_000..110_000).contains(&one), "{one}");
        // Room for about eight values of that weight.
        let cache = MemoryCache::new(1_000, one * 8 + one / 2);
        for i in 0..40u32 {
            cache
                .put(&format!("h{i}"), history(10, 10_000), SECOND * (i + 1))
                .await
                .unwrap();
            assert!(cache.bytes() <= one * 8 + one / 2, "after {i}");
        }
        assert!(cache.get("h39").await.unwrap().is_some());
        assert_eq!(cache.get("h0").await.unwrap(), None);
        assert_eq!(cache.bytes(), cache.len() * one);
        // A value heavier than the whole bound is not kept, and costs
        // nothing.
        let before = cache.bytes();
        cache
            .put("huge", history(100, 10_000), SECOND * 60)
            .await
            .unwrap();
        assert_eq!(cache.get("huge").await.unwrap(), None);
        assert_eq!(cache.bytes(), before);
        // A replaced or expired value gives its bytes back.
        cache.put("h39", value(1), SECOND * 60).await.unwrap();
        assert!(cache.bytes() < before);
        cache
            .put("gone", value(2), Duration::from_millis(10))
            .await
            .unwrap();
        let with_gone = cache.bytes();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(cache.get("gone").await.unwrap(), None);
        assert_eq!(cache.bytes(), with_gone - value(2).weight());
    }
}
