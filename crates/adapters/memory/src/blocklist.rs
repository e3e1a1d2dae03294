//! [`TokenBlocklist`] in a map, pruned as entries expire.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use confab_domain::{DomainError, FamilyId, OffsetDateTime, TokenId};
use confab_ports::{AccessClaims, TokenBlocklist};

/// Blocked token ids and login sessions, each kept until the tokens it
/// refuses have expired anyway.
#[derive(Default)]
pub struct InMemoryBlocklist {
    tokens: Mutex<HashMap<TokenId, OffsetDateTime>>,
    families: Mutex<HashMap<FamilyId, OffsetDateTime>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    async fn block_token(&self, jti: TokenId, until: OffsetDateTime) -> Result<(), DomainError> {
        let now = OffsetDateTime::now_utc();
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, expiry| *expiry > now);
        tokens.insert(jti, until);
        Ok(())
    }

    async fn block_family(
        &self,
        family: FamilyId,
        until: OffsetDateTime,
    ) -> Result<(), DomainError> {
        let now = OffsetDateTime::now_utc();
        let mut families = lock(&self.families);
        families.retain(|_, expiry| *expiry > now);
        families.insert(family, until);
        Ok(())
    }

    async fn is_blocked(&self, claims: &AccessClaims) -> Result<bool, DomainError> {
        if lock(&self.tokens).contains_key(&claims.jti) {
            return Ok(true);
        }
        Ok(lock(&self.families).contains_key(&claims.family))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use confab_domain::{Role, UserId};

    use super::*;

    fn claims(user: UserId, issued_at: OffsetDateTime) -> AccessClaims {
        AccessClaims {
            user_id: user,
            role: Role::User,
            jti: TokenId::generate(),
            family: FamilyId::generate(),
            issued_at,
            expires_at: issued_at + Duration::from_secs(900),
        }
    }

    #[tokio::test]
    async fn blocked_tokens_and_families() {
        let list = InMemoryBlocklist::new();
        let now = OffsetDateTime::now_utc();
        let user = UserId::generate();
        let a = claims(user, now);
        assert!(!list.is_blocked(&a).await.unwrap());
        list.block_token(a.jti, a.expires_at).await.unwrap();
        assert!(list.is_blocked(&a).await.unwrap());
        let b = claims(user, now);
        assert!(!list.is_blocked(&b).await.unwrap());
        list.block_family(b.family, b.expires_at).await.unwrap();
        let sibling = AccessClaims {
            jti: TokenId::generate(),
            ..b.clone()
        };
        assert!(
            list.is_blocked(&sibling).await.unwrap(),
            "every token of the family"
        );
        assert!(
            !list.is_blocked(&claims(user, now)).await.unwrap(),
            "another session of the user"
        );
    }

    #[tokio::test]
    async fn expired_entries_are_pruned() {
        let list = InMemoryBlocklist::new();
        let past = OffsetDateTime::now_utc() - Duration::from_secs(1);
        list.block_token(TokenId::generate(), past).await.unwrap();
        list.block_token(TokenId::generate(), past).await.unwrap();
        assert_eq!(list.len(), 1, "the first, expired entry was dropped");
    }
}
