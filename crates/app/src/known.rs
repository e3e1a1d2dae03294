//! What this instance remembers of each account it has served: a fact read
//! from the database (its disabled flag, its own token allowance), tagged
//! with the account-state version the blocklist gave when it was read. A
//! request whose version matches needs no database read; any change to the
//! account bumps the version on every instance.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use confab_domain::UserId;

/// The most accounts remembered; past it, the memory starts afresh (each
/// account then costs one read again).
const MAX_KNOWN: usize = 100_000;

/// How long a remembered account is trusted even with an unchanged
/// version: a bound on how long a lost version bump (a Redis flushed under
/// a running service) can hide a change.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(10);

/// One remembered account.
#[derive(Debug, Clone, Copy)]
struct Known<T> {
    version: u64,
    fact: T,
    read_at: Instant,
}

/// One fact of each account this instance has read, by user.
#[derive(Debug)]
pub(crate) struct KnownUsers<T> {
    entries: Mutex<HashMap<UserId, Known<T>>>,
}

impl<T> Default for KnownUsers<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
        }
    }
}

impl<T: Copy> KnownUsers<T> {
    fn entries(&self) -> MutexGuard<'_, HashMap<UserId, Known<T>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fact of `user`, if it was read at `version` and not too long
    /// ago.
    pub(crate) fn get(&self, user: UserId, version: u64) -> Option<T> {
        self.entries()
            .get(&user)
            .filter(|k| k.version == version && k.read_at.elapsed() < MAX_AGE)
            .map(|k| k.fact)
    }

    /// Remembers the fact of `user` as read at `version`.
    pub(crate) fn remember(&self, user: UserId, version: u64, fact: T) {
        let mut entries = self.entries();
        if entries.len() >= MAX_KNOWN && !entries.contains_key(&user) {
            entries.clear();
        }
        entries.insert(
            user,
            Known {
                version,
                fact,
                read_at: Instant::now(),
            },
        );
    }

    /// Forgets `user` (its account changed here).
    pub(crate) fn forget(&self, user: UserId) {
        self.entries().remove(&user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_known_at_the_version_it_was_read_at_only() {
        let known = KnownUsers::<bool>::default();
        let user = UserId::generate();
        assert_eq!(known.get(user, 0), None);
        known.remember(user, 3, true);
        assert_eq!(known.get(user, 3), Some(true));
        assert_eq!(known.get(user, 4), None, "a newer version");
        assert_eq!(known.get(UserId::generate(), 3), None);
        known.forget(user);
        assert_eq!(known.get(user, 3), None);
    }
}
