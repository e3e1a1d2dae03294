//! Forgetting a deleted account: what a store outside the database holds
//! of one user and of their conversations.

use std::collections::HashSet;

use async_trait::async_trait;
use confab_domain::{ConversationId, DomainError, UserId};

/// Whose entries an [`Erasure`] forgets: a user's, and their
/// conversations'.
#[derive(Debug, Clone)]
pub struct ErasureTargets {
    user: UserId,
    user_text: String,
    conversations: HashSet<String>,
}

impl ErasureTargets {
    /// `user` and their `conversations`.
    #[must_use]
    pub fn new(user: UserId, conversations: &[ConversationId]) -> Self {
        Self {
            user,
            user_text: user.to_string(),
            conversations: conversations.iter().map(ToString::to_string).collect(),
        }
    }

    /// The user.
    #[must_use]
    pub fn user(&self) -> UserId {
        self.user
    }

    /// Whether a store's key names the user or one of the conversations:
    /// one of its `:`-separated parts is the id (in `{}` braces, as a
    /// Redis hash tag, or bare). Every key Confab derives from a user or a
    /// conversation has the id as such a part.
    #[must_use]
    pub fn names(&self, key: &str) -> bool {
        key.split(':').any(|part| {
            let part = part.trim_start_matches('{').trim_end_matches('}');
            part == self.user_text || self.conversations.contains(part)
        })
    }
}

/// A store that keeps something of a user outside the database (cache
/// entries, idempotency records, rate and failure counts, answer streams,
/// an account version) and can forget all of it when the account is
/// deleted. The database's rows go with
/// [`UserStore::delete`](crate::UserStore::delete).
///
/// What stays is what names no user: the blocklist's entries for the
/// deleted account's login sessions (random ids, refusing those sessions'
/// access tokens until they expire).
#[async_trait]
pub trait Erasure: Send + Sync + 'static {
    /// Forgets every entry whose key [names](ErasureTargets::names) the
    /// targets; how many entries went. Forgetting what is not there is no
    /// error.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails (a repeated
    /// erasure picks up what the first left).
    async fn erase(&self, targets: &ErasureTargets) -> Result<u64, DomainError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_its_user_or_conversation_only_as_a_whole_part() {
        let user = UserId::generate();
        let conversation = ConversationId::generate();
        let targets = ErasureTargets::new(user, &[conversation]);
        for key in [
            format!("user:{user}:conversation_list"),
            format!("confab:rl:v1:api:user:{user}"),
            format!("idem:v2:{{{user}}}:k:abc"),
            format!("uv:{user}"),
            format!("log:{{{conversation}}}:meta"),
            format!("conv:{conversation}:history:17"),
        ] {
            assert!(targets.names(&key), "{key}");
        }
        let other = UserId::generate();
        for key in [
            format!("user:{other}:conversation_list"),
            format!("bl:fam:{}", ConversationId::generate()),
            format!("uv:{user}x"),
            "rl:v1:login:ip:127.0.0.1".to_owned(),
        ] {
            assert!(!targets.names(&key), "{key}");
        }
        assert_eq!(targets.user(), user);
    }
}
