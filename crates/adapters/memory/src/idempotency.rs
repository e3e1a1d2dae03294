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
//! # The bound
//!
//! At most `max_entries` keys are held. When the map is full of live
//! entries a new key's claim is refused with
//! [`DomainError::Unavailable`] (the caller refuses the request) instead
//! of evicting an entry to make room: evicting a completed key would let
//! its retry find the key free and run the request a second time, and
//! evicting a running claim would let a concurrent retry run alongside it.
//! Keys already held are still answered when the map is full.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{Claim, IdempotencyStore, StoredOutcome};

/// The longest TTL honoured; longer ones are cut to it, so `now + ttl`
/// cannot overflow an `Instant`.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// How often, at most, expired entries are swept while the map isn't full.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

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

/// The map and when it was last swept.
struct Entries {
    map: HashMap<String, Entry>,
    last_sweep: Instant,
}

impl Entries {
    /// Drops every expired entry if the map is full or the last sweep is
    /// older than [`SWEEP_EVERY`].
    fn sweep(&mut self, max: usize, now: Instant) {
        if self.map.len() >= max || now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.map.retain(|_, entry| entry.is_live(now));
            self.last_sweep = now;
        }
    }

    /// The live entry of `key`; an expired one is dropped.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.map.get(key).is_some_and(|entry| !entry.is_live(now)) {
            self.map.remove(key);
        }
        self.map.get_mut(key)
    }
}

/// `now + ttl`, the TTL cut to [`MAX_TTL`].
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl.min(MAX_TTL)).unwrap_or(now)
}

/// Idempotency keys in this process, at most `max_entries` of them (see
/// the module docs for why a full store refuses new keys).
pub struct InMemoryIdempotency {
    max_entries: usize,
    entries: Mutex<Entries>,
}

impl InMemoryIdempotency {
    /// An empty store holding at most `max_entries` keys (at least one).
    #[must_use]
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// How many keys are held, expired ones not yet swept included (for
    /// tests of the bound).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().map.len()
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
        // Never the keys: they are scoped per user.
        f.debug_struct("InMemoryIdempotency")
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

#[async_trait]
impl IdempotencyStore for InMemoryIdempotency {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> Result<Claim, DomainError> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.sweep(self.max_entries, now);
        if let Some(entry) = entries.live(key, now) {
            return Ok(if entry.fingerprint != fingerprint {
                Claim::Mismatch
            } else {
                match &entry.state {
                    State::Completed(outcome) => Claim::Completed(outcome.clone()),
                    State::InFlight => Claim::InFlight,
                }
            });
        }
        if entries.map.len() >= self.max_entries {
            return Err(DomainError::unavailable(format!(
                "idempotency store full ({} keys held)",
                self.max_entries
            )));
        }
        entries.map.insert(
            key.to_owned(),
            Entry {
                fingerprint: fingerprint.to_owned(),
                state: State::InFlight,
                expires: expiry(now, in_flight_ttl),
            },
        );
        Ok(Claim::Claimed)
    }

    async fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), DomainError> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.sweep(self.max_entries, now);
        if let Some(entry) = entries.live(key, now)
            && entry.is_in_flight_for(fingerprint, now)
        {
            entry.state = State::Completed(outcome);
            entry.expires = expiry(now, ttl);
        }
        Ok(())
    }

    async fn release(&self, key: &str, fingerprint: &str) -> Result<(), DomainError> {
        let now = Instant::now();
        let mut entries = self.lock();
        entries.sweep(self.max_entries, now);
        if entries
            .live(key, now)
            .is_some_and(|entry| entry.is_in_flight_for(fingerprint, now))
        {
            entries.map.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use confab_testkit::contract::idempotency::response;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn the_bound_refuses_new_claims() {
        let store = InMemoryIdempotency::new(2);
        assert_eq!(
            store.claim("a", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        store
            .complete("a", "fp", response(b"a"), MINUTE)
            .await
            .unwrap();
        assert_eq!(
            store.claim("b", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        assert!(matches!(
            store.claim("c", "fp", MINUTE).await,
            Err(DomainError::Unavailable(_))
        ));
        assert_eq!(store.len(), 2, "nothing was evicted");
        // Keys already held are still answered.
        assert_eq!(
            store.claim("a", "fp", MINUTE).await.unwrap(),
            Claim::Completed(response(b"a"))
        );
        assert_eq!(
            store.claim("b", "fp", MINUTE).await.unwrap(),
            Claim::InFlight
        );
        assert_eq!(
            store.claim("b", "x", MINUTE).await.unwrap(),
            Claim::Mismatch
        );

        // A release makes room, and so does an expiry.
        store.release("b", "fp").await.unwrap();
        assert_eq!(
            store.claim("c", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        assert!(matches!(
            store.claim("d", "fp", MINUTE).await,
            Err(DomainError::Unavailable(_))
        ));
        store.release("c", "fp").await.unwrap();
        let short = Duration::from_millis(30);
        assert_eq!(store.claim("c", "fp", short).await.unwrap(), Claim::Claimed);
        tokio::time::sleep(short + Duration::from_millis(20)).await;
        assert_eq!(
            store.claim("d", "fp", MINUTE).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(store.len(), 2, "the expired claim was swept");
    }
}
