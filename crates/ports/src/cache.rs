//! A cache of rendered reads (conversation lists and histories).

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::{Conversation, ConversationSummary, DomainError, MessagePage, Page};

/// What the cache holds: domain values, so the in-process adapter keeps
/// them as they are and a remote one chooses its own encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum CachedValue {
    /// A page of a user's conversation list.
    ConversationList(Page<ConversationSummary>),
    /// A conversation and a page of its messages.
    History(Box<Conversation>, MessagePage),
}

impl CachedValue {
    /// About how many bytes of memory the value holds: its text (titles,
    /// previews, message parts) and a fixed cost per item. What a cache
    /// bounded by bytes weighs it by.
    #[must_use]
    pub fn weight(&self) -> usize {
        /// The fixed cost of one item: ids, times, roles and the rest.
        const ITEM: usize = 256;
        match self {
            Self::ConversationList(page) => page.items.iter().fold(ITEM, |sum, c| {
                sum + ITEM + c.title.as_str().len() + c.last_message.as_ref().map_or(0, String::len)
            }),
            Self::History(conversation, page) => {
                let children = page.children.iter().fold(0, |sum, group| {
                    sum + ITEM + group.ids.iter().map(|id| id.as_str().len()).sum::<usize>()
                });
                page.messages.iter().fold(
                    ITEM + conversation.title.as_str().len() + children,
                    |sum, m| {
                        sum + ITEM
                            + m.content.text_bytes()
                            + m.metadata
                                .iter()
                                .map(|(k, v)| k.len() + v.to_string().len())
                                .sum::<usize>()
                    },
                )
            }
        }
    }
}

/// The key of the entry stored under `version` of `key`, with `suffix`
/// (what else the entry depends on, such as a page): `{key}:{version}{suffix}`.
#[must_use]
pub fn entry_key(key: &str, version: u64, suffix: &str) -> String {
    format!("{key}:{version}{suffix}")
}

/// A key-value cache with expiry, and version counters that make
/// invalidation safe against racing readers: a reader takes the version,
/// reads the database and stores its result under a key that includes the
/// version; a writer changes the database and then bumps the version, so a
/// result read before the write is never found again.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// The value under `key`, if present and not expired.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails (callers then
    /// read the database).
    async fn get(&self, key: &str) -> Result<Option<CachedValue>, DomainError>;

    /// Stores `value` under `key` for `ttl`.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails.
    async fn put(&self, key: &str, value: CachedValue, ttl: Duration) -> Result<(), DomainError>;

    /// The current version of `key`: a number no earlier version used,
    /// created when absent.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails.
    async fn version(&self, key: &str) -> Result<u64, DomainError>;

    /// As [`version`](Cache::version), given `seen`: the version of `key`
    /// read an instant ago, in the same step as the request's admission
    /// ([`Admitted::cache_version`](crate::Admitted::cache_version)), on
    /// this cache's backend. It is the answer, unless the adapter has
    /// something to make good for `key` first (a bump that failed): then
    /// it reads the version as [`version`](Cache::version) does. By default
    /// `seen` is not used.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails.
    async fn version_seen(&self, key: &str, seen: u64) -> Result<u64, DomainError> {
        let _ = seen;
        self.version(key).await
    }

    /// Moves `key` to a new version, so every entry stored under an older
    /// one is unreachable.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails.
    async fn bump(&self, key: &str) -> Result<(), DomainError>;

    /// Bumps every key of `keys` (see [`bump`](Cache::bump)), in one step
    /// where the backend can (one round trip on Redis).
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails.
    async fn bump_all(&self, keys: &[String]) -> Result<(), DomainError> {
        for key in keys {
            self.bump(key).await?;
        }
        Ok(())
    }
}
