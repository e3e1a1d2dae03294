//! [`TokenBlocklist`] in a map, pruned as entries expire, beside each
//! changed user's account-state version.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use confab_domain::{DomainError, FamilyId, OffsetDateTime, TokenId, UserId};
use confab_ports::{AccessClaims, Erasure, ErasureTargets, Standing, TokenBlocklist};

/// Blocked token ids and login sessions, each refusing until its expiry
/// and kept no longer than that: expired entries are dropped at the next
/// block. Users whose account state changed have a version here (one
/// counter per such user, for the life of the process, as long as what the
/// process remembers of them).
#[derive(Default)]
pub struct InMemoryBlocklist {
    tokens: Mutex<HashMap<TokenId, OffsetDateTime>>,
    families: Mutex<HashMap<FamilyId, OffsetDateTime>>,
    users: Mutex<HashMap<UserId, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops the expired entries of `entries` and adds `key` until `until`,
/// unless that is already past (what it would refuse has expired).
fn block<K: Eq + Hash>(entries: &Mutex<HashMap<K, OffsetDateTime>>, key: K, until: OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let mut entries = lock(entries);
    entries.retain(|_, expiry| *expiry > now);
    if until > now {
        entries.insert(key, until);
    }
}

/// Whether `key` is blocked at `now`.
fn holds<K: Eq + Hash>(
    entries: &Mutex<HashMap<K, OffsetDateTime>>,
    key: &K,
    now: OffsetDateTime,
) -> bool {
    lock(entries).get(key).is_some_and(|expiry| *expiry > now)
}

impl InMemoryBlocklist {
    /// An empty blocklist.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries are held (for tests of the pruning).
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.tokens).len() + lock(&self.families).len()
    }

    /// Whether nothing is blocked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl TokenBlocklist for InMemoryBlocklist {
    async fn block_token(
        &self,
        _: UserId,
        jti: TokenId,
        until: OffsetDateTime,
    ) -> Result<(), DomainError> {
        block(&self.tokens, jti, until);
        Ok(())
    }

    async fn block_family(
        &self,
        _: UserId,
        family: FamilyId,
        until: OffsetDateTime,
    ) -> Result<(), DomainError> {
        block(&self.families, family, until);
        Ok(())
    }

    async fn standing(&self, claims: &AccessClaims) -> Result<Standing, DomainError> {
        let now = OffsetDateTime::now_utc();
        let blocked =
            holds(&self.tokens, &claims.jti, now) || holds(&self.families, &claims.family, now);
        let user_version = lock(&self.users).get(&claims.user_id).copied().unwrap_or(0);
        Ok(Standing {
            blocked,
            user_version,
        })
    }

    async fn user_changed(&self, user: UserId) -> Result<(), DomainError> {
        *lock(&self.users).entry(user).or_insert(0) += 1;
        Ok(())
    }
}

#[async_trait]
impl Erasure for InMemoryBlocklist {
    /// Forgets the user's account version; the blocked sessions and tokens
    /// stay until they expire (they name no user, and must keep refusing).
    async fn erase(&self, targets: &ErasureTargets) -> Result<u64, DomainError> {
        Ok(u64::from(
            lock(&self.users).remove(&targets.user()).is_some(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn expired_entries_are_pruned() {
        let list = InMemoryBlocklist::new();
        let now = OffsetDateTime::now_utc();
        list.block_token(
            UserId::generate(),
            TokenId::generate(),
            now + Duration::from_millis(20),
        )
        .await
        .unwrap();
        list.block_token(
            UserId::generate(),
            TokenId::generate(),
            now - Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(list.len(), 1, "a past expiry is not stored");
        tokio::time::sleep(Duration::from_millis(40)).await;
        list.block_token(
            UserId::generate(),
            TokenId::generate(),
            now + Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(list.len(), 1, "the first, expired entry was dropped");
    }
}
