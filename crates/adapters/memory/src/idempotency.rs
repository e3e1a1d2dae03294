//! [`IdempotencyStore`] in a bounded map, for a single instance.
//!
//! Each key holds its request's fingerprint, whether it is still running
//! or completed (with its outcome), and when it expires: an in-flight
//! claim lapses after the claim's `in_flight_ttl`, a completed outcome
//! after the `ttl` it was stored with. An expired entry is the same as no
//! entry: the key checked by a call is judged by its own expiry, and every
//! expired entry is dropped in a sweep run when the map is full, and
//! otherwise at most once every [`SWEEP_EVERY`] (a sweep is a pass over
//! the whole map: run on every call it would cost each request O(n) under
//! the lock).
//!
//! # The bounds
//!
//! Each owner holds at most `max_per_owner` live keys: a new key of an
//! owner at the cap is [`Claim::OwnerFull`], with the time until their
//! first key lapses, and nobody else is affected. The whole store holds at
//! most `max_entries` keys and takes no new key once the outcomes it holds
//! reach `max_bytes` (an entry counts its key, fingerprint, stored
//! headers and body, plus [`ENTRY_OVERHEAD`]); the outcome of a request
//! already claimed is always stored, so the bytes can pass the bound by
//! what the running requests record. When the store is full a new key's
//! claim is refused with [`DomainError::Unavailable`] (the caller refuses
//! the request) instead of evicting an entry to make room: evicting a
//! completed key would let its retry find the key free and run the request
//! a second time, and evicting a running claim would let a concurrent
//! retry run alongside it. Keys already held are still answered when the
//! store is full.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{Claim, Erasure, ErasureTargets, IdempotencyStore, StoredOutcome};

/// The longest TTL honoured; longer ones are cut to it, so `now + ttl`
/// cannot overflow an `Instant`.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// How often, at most, expired entries are swept while the map isn't full.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What an entry costs besides its strings and outcome: the map slots,
/// the entry's fields, the allocations' headers (an estimate).
pub(crate) const ENTRY_OVERHEAD: usize = 160;

/// Where a claimed key stands.
enum State {
    /// Its request is running.
    InFlight,
    /// Its request completed with this outcome.
    Completed(StoredOutcome),
}

/// One key's record.
struct Entry {
    fingerprint: String,
    state: State,
    expires: Instant,
    /// What it counts towards `max_bytes`.
    bytes: usize,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        self.expires > now
    }

    /// Whether `fingerprint`'s claim still holds this entry, running.
    fn is_in_flight_for(&self, fingerprint: &str, now: Instant) -> bool {
        self.is_live(now)
            && self.fingerprint == fingerprint
            && matches!(self.state, State::InFlight)
    }
}

/// What `outcome` counts towards `max_bytes`.
fn outcome_bytes(outcome: &StoredOutcome) -> usize {
    match outcome {
        StoredOutcome::Response { headers, body, .. } => {
            body.len()
                + headers
                    .iter()
                    .map(|(name, value)| name.len() + value.len() + 48)
                    .sum::<usize>()
        }
        StoredOutcome::Stream { message, .. } => 16 + message.as_str().len(),
    }
}

/// The entries, per owner, with their totals, and when they were last
/// swept.
struct Entries {
    owners: HashMap<String, HashMap<String, Entry>>,
    len: usize,
    bytes: usize,
    last_sweep: Instant,
}

impl Entries {
    /// Drops every expired entry if the store is full or the last sweep is
    /// older than [`SWEEP_EVERY`].
    fn sweep(&mut self, limits: &Limits, now: Instant) {
        let full = self.len >= limits.max_entries || self.bytes >= limits.max_bytes;
        if full || now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            let (mut len, mut bytes) = (0, 0);
            self.owners.retain(|_, keys| {
                keys.retain(|_, entry| entry.is_live(now));
                len += keys.len();
                bytes += keys.values().map(|e| e.bytes).sum::<usize>();
                !keys.is_empty()
            });
            (self.len, self.bytes) = (len, bytes);
            self.last_sweep = now;
        }
    }

    /// Removes `owner`'s `key`, keeping the totals.
    fn remove(&mut self, owner: &str, key: &str) {
        let Some(keys) = self.owners.get_mut(owner) else {
            return;
        };
        if let Some(entry) = keys.remove(key) {
            self.len -= 1;
            self.bytes -= entry.bytes;
        }
        if keys.is_empty() {
            self.owners.remove(owner);
        }
    }

    /// The live entry of `owner`'s `key`; an expired one is dropped.
    fn live(&mut self, owner: &str, key: &str, now: Instant) -> Option<&mut Entry> {
        let expired = self
            .owners
            .get(owner)
            .and_then(|keys| keys.get(key))
            .is_some_and(|entry| !entry.is_live(now));
        if expired {
            self.remove(owner, key);
        }
        self.owners.get_mut(owner)?.get_mut(key)
    }
}

/// `now + ttl`, the TTL cut to [`MAX_TTL`].
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl.min(MAX_TTL)).unwrap_or(now)
}

/// The bounds of an [`InMemoryIdempotency`] (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys held in all (at least one).
    pub max_entries: usize,
    /// Bytes of entries past which no new key is taken.
    pub max_bytes: usize,
    /// Live keys one owner may hold (at least one).
    pub max_per_owner: usize,
}

/// Idempotency keys in this process, within its [`Limits`] (see the module
/// docs for why a full store refuses new keys).
pub struct InMemoryIdempotency {
    limits: Limits,
    entries: Mutex<Entries>,
}

impl InMemoryIdempotency {
    /// An empty store within `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                max_entries: limits.max_entries.max(1),
                max_per_owner: limits.max_per_owner.max(1),
                ..limits
            },
            entries: Mutex::new(Entries {
                owners: HashMap::new(),
                len: 0,
                bytes: 0,
                last_sweep: Instant::now(),
            }),
        }
    }

    /// How many keys are held, expired ones not yet swept included (for
    /// tests of the bound).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// The bytes the held entries count (as [`len`](Self::len)).
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Whether no key is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for InMemoryIdempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys: they are the users'.
        f.debug_struct("InMemoryIdempotency")
            .field("limits", &self.limits)
            .field("len", &self.len())
            .finish()
    }
}

#[async_trait]
impl IdempotencyStore for InMemoryIdempotency {
    async fn claim(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> Result<Claim, DomainError> {
        let now = Instant::now();
        let limits = &self.limits;
        let mut entries = self.lock();
        entries.sweep(limits, now);
        if let Some(entry) = entries.live(owner, key, now) {
            return Ok(if entry.fingerprint != fingerprint {
                Claim::Mismatch
            } else {
                match &entry.state {
                    State::Completed(outcome) => Claim::Completed(outcome.clone()),
                    State::InFlight => Claim::InFlight,
                }
            });
        }
        if let Some(keys) = entries.owners.get(owner) {
            let live = || keys.values().filter(|entry| entry.is_live(now));
            if live().count() >= limits.max_per_owner {
                let first = live().map(|entry| entry.expires).min().unwrap_or(now);
                return Ok(Claim::OwnerFull {
                    retry_after: first.saturating_duration_since(now),
                });
            }
        }
        if entries.len >= limits.max_entries || entries.bytes >= limits.max_bytes {
            return Err(DomainError::unavailable(format!(
                "idempotency store full ({} keys, {} bytes held)",
                entries.len, entries.bytes
            )));
        }
        let bytes = ENTRY_OVERHEAD + owner.len() + key.len() + fingerprint.len();
        entries.owners.entry(owner.to_owned()).or_default().insert(
            key.to_owned(),
            Entry {
                fingerprint: fingerprint.to_owned(),
                state: State::InFlight,
                expires: expiry(now, in_flight_ttl),
                bytes,
            },
        );
        entries.len += 1;
        entries.bytes += bytes;
        Ok(Claim::Claimed)
    }

    async fn complete(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), DomainError> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.sweep(&self.limits, now);
        let added = outcome_bytes(&outcome);
        if let Some(entry) = entries.live(owner, key, now)
            && entry.is_in_flight_for(fingerprint, now)
        {
            entry.state = State::Completed(outcome);
            entry.expires = expiry(now, ttl);
            entry.bytes += added;
            entries.bytes += added;
        }
        Ok(())
    }

    async fn release(&self, owner: &str, key: &str, fingerprint: &str) -> Result<(), DomainError> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.sweep(&self.limits, now);
        if entries
            .live(owner, key, now)
            .is_some_and(|entry| entry.is_in_flight_for(fingerprint, now))
        {
            entries.remove(owner, key);
        }
        Ok(())
    }
}

#[async_trait]
impl Erasure for InMemoryIdempotency {
    async fn erase(&self, targets: &ErasureTargets) -> Result<u64, DomainError> {
        let mut entries = self.lock();
        let owner = targets.user().to_string();
        let keys: Vec<String> = entries
            .owners
            .get(&owner)
            .map(|keys| keys.keys().cloned().collect())
            .unwrap_or_default();
        for key in &keys {
            entries.remove(&owner, key);
        }
        Ok(u64::try_from(keys.len()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use confab_testkit::contract::idempotency::response;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limits() -> Limits {
        Limits {
            max_entries: 1000,
            max_bytes: usize::MAX,
            max_per_owner: 2,
        }
    }

    #[tokio::test]
    async fn the_bytes_bound_refuses_new_keys_and_counts_outcomes() {
        let store = InMemoryIdempotency::new(Limits {
            max_bytes: 10_000,
            max_per_owner: 100,
            ..limits()
        });
        assert_eq!(
            store.claim("u", "a", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        let claimed = store.bytes();
        assert!(claimed >= ENTRY_OVERHEAD + 4, "{claimed}");
        store
            .complete("u", "a", "fp", response(&[7; 9_000]), MINUTE)
            .await
            .unwrap();
        assert!(store.bytes() >= claimed + 9_000, "the body counts");
        assert_eq!(
            store.claim("v", "b", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        let short = Duration::from_millis(30);
        store
            .complete("v", "b", "fp", response(&[7; 1_000]), short)
            .await
            .unwrap();
        assert!(store.bytes() >= 10_000, "{}", store.bytes());
        assert!(matches!(
            store.claim("w", "c", "fp", MINUTE).await,
            Err(DomainError::Unavailable(_))
        ));
        // Held keys are answered; a lapsed outcome gives its bytes back.
        assert_eq!(
            store.claim("u", "a", "fp", MINUTE).await.unwrap(),
            Claim::Completed(response(&[7; 9_000]))
        );
        tokio::time::sleep(short + Duration::from_millis(20)).await;
        assert_eq!(
            store.claim("w", "c", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            store.bytes(),
            2 * claimed + outcome_bytes(&response(&[7; 9_000])),
            "u's entry and w's claim"
        );
    }

    #[tokio::test]
    async fn the_bound_refuses_new_claims() {
        let store = InMemoryIdempotency::new(Limits {
            max_entries: 2,
            max_bytes: usize::MAX,
            max_per_owner: 10,
        });
        assert_eq!(
            store.claim("u", "a", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        store
            .complete("u", "a", "fp", response(b"a"), MINUTE)
            .await
            .unwrap();
        assert_eq!(
            store.claim("u", "b", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        assert!(matches!(
            store.claim("u", "c", "fp", MINUTE).await,
            Err(DomainError::Unavailable(_))
        ));
        assert_eq!(store.len(), 2, "nothing was evicted");
        // Keys already held are still answered.
        assert_eq!(
            store.claim("u", "a", "fp", MINUTE).await.unwrap(),
            Claim::Completed(response(b"a"))
        );
        assert_eq!(
            store.claim("u", "b", "fp", MINUTE).await.unwrap(),
            Claim::InFlight
        );
        assert_eq!(
            store.claim("u", "b", "x", MINUTE).await.unwrap(),
            Claim::Mismatch
        );

        // A release makes room, and so does an expiry.
        store.release("u", "b", "fp").await.unwrap();
        assert_eq!(
            store.claim("u", "c", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        assert!(matches!(
            store.claim("u", "d", "fp", MINUTE).await,
            Err(DomainError::Unavailable(_))
        ));
        store.release("u", "c", "fp").await.unwrap();
        let short = Duration::from_millis(30);
        assert_eq!(
            store.claim("u", "c", "fp", short).await.unwrap(),
            Claim::Claimed
        );
        tokio::time::sleep(short + Duration::from_millis(20)).await;
        assert_eq!(
            store.claim("u", "d", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(store.len(), 2, "the expired claim was swept");
    }
}
