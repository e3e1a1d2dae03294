//! Forgetting a deleted account: what a store outside the database holds
//! of one user and of their conversations.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::{ConversationId, DomainError, UserId};

/// Whose entries an [`Erasure`] forgets: a user's, and their
/// conversations'.
#[derive(Debug, Clone)]
pub struct ErasureTargets {
    user: UserId,
    user_text: String,
    names: Vec<String>,
    conversations: HashSet<String>,
    version_grace: Option<Duration>,
}

impl ErasureTargets {
    /// `user`, known by `names` (their username and e-mail address), and
    /// their `conversations`.
    #[must_use]
    pub fn new(user: UserId, names: &[&str], conversations: &[ConversationId]) -> Self {
        Self {
            user,
            user_text: user.to_string(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            conversations: conversations.iter().map(ToString::to_string).collect(),
            version_grace: None,
        }
    }

    /// The same targets, but the user's account version (which the
    /// deletion has just moved, so that every instance reads the account
    /// again and finds it gone) is kept `grace` longer rather than
    /// forgotten at once: forgotten now, the version would go back to the
    /// one an instance may have remembered the account at.
    #[must_use]
    pub fn keeping_version_for(mut self, grace: Duration) -> Self {
        self.version_grace = Some(grace);
        self
    }

    /// The user.
    #[must_use]
    pub fn user(&self) -> UserId {
        self.user
    }

    /// How long the account version is still to be kept, if it is
    /// ([`keeping_version_for`](Self::keeping_version_for)).
    #[must_use]
    pub fn version_grace(&self) -> Option<Duration> {
        self.version_grace
    }

    /// Whether a store's key names the user or one of the conversations:
    /// one of its `:`-separated parts is the id (in `{}` braces, as a
    /// Redis hash tag, or bare), or a part following `name` is the user's
    /// username or e-mail address (what failed logins are counted under
    /// when no account has the name typed). Every key Confab derives from
    /// a user or a conversation is such a key.
    #[must_use]
    pub fn names(&self, key: &str) -> bool {
        let mut after_name = false;
        key.split(':').any(|part| {
            let part = part.trim_start_matches('{').trim_end_matches('}');
            let named = (after_name && self.names.iter().any(|n| n == part))
                || part == self.user_text
                || self.conversations.contains(part);
            after_name = part == "name";
            named
        })
    }
}

/// A store that keeps something of a user outside the database (cache
/// entries, idempotency records, rate and failure counts, answer streams,
/// an account version) and can forget all of it when the account is
/// deleted. The database's rows go with
/// [`UserStore::delete`](crate::UserStore::delete).
///
/// What stays is the blocklist's entries for the deleted account's login
/// sessions and keys, refusing their tokens until those expire (random
/// ids; on a Redis Cluster, under the user's id as hash tag).
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
        let targets = ErasureTargets::new(user, &["vera", "vera@example.com"], &[conversation]);
        for key in [
            format!("user:{user}:conversation_list"),
            format!("confab:rl:v1:api:user:{user}"),
            format!("idem:v2:{{{user}}}:k:abc"),
            format!("uv:{user}"),
            format!("log:{{{conversation}}}:meta"),
            format!("conv:{conversation}:history:17"),
            "lf:v1:login:name:vera".to_owned(),
            "lf:v1:login:name:vera@example.com:from:10.0.0.1".to_owned(),
        ] {
            assert!(targets.names(&key), "{key}");
        }
        let other = UserId::generate();
        for key in [
            format!("user:{other}:conversation_list"),
            format!("bl:fam:{}", ConversationId::generate()),
            format!("uv:{user}x"),
            "rl:v1:login:ip:127.0.0.1".to_owned(),
            // A name matches only where a name is keyed.
            "rl:v1:vera:ip:127.0.0.1".to_owned(),
            "lf:v1:login:name:veronica".to_owned(),
        ] {
            assert!(!targets.names(&key), "{key}");
        }
        assert_eq!(targets.user(), user);
        assert_eq!(targets.version_grace(), None);
        let kept = targets.keeping_version_for(Duration::from_secs(12));
        assert_eq!(kept.version_grace(), Some(Duration::from_secs(12)));
    }
}
