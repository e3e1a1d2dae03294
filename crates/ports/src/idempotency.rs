//! Idempotency keys: a retried request gets the first one's response
//! instead of being run twice.

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::{ConversationId, DomainError, MessageId};

/// What a completed request left for its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredOutcome {
    /// A whole response, replayed as it was.
    Response {
        /// The status code.
        status: u16,
        /// The headers worth replaying (content type, location, …), in
        /// order.
        headers: Vec<(String, String)>,
        /// The body.
        body: Vec<u8>,
    },
    /// A message send whose answer streams: a retry re-attaches to that
    /// answer's stream instead of sending again.
    Stream {
        /// The conversation.
        conversation: ConversationId,
        /// The answer being generated.
        message: MessageId,
    },
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now this request's: run it, then
    /// [`IdempotencyStore::complete`] or [`IdempotencyStore::release`].
    Claimed,
    /// The same request already completed: its outcome.
    Completed(StoredOutcome),
    /// The same request is still running (its claim hasn't expired).
    InFlight,
    /// The key was used for a different request.
    Mismatch,
    /// The key is new, and its owner already holds as many live keys as
    /// one owner may: refused, and nothing was stored. Other owners are
    /// not affected.
    OwnerFull {
        /// How long until the owner's first key lapses (and a new key can
        /// be claimed), as far as the store knows.
        retry_after: Duration,
    },
}

/// Keys of requests already made, each bound to one request (its
/// fingerprint: method, path, body) and kept for a while. Every key has an
/// owner (the signed-in user): keys of one owner are apart from another's
/// of the same spelling, and each owner may hold a bounded number of live
/// keys (set when the store is built), so one owner can't fill the store
/// for everyone.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Atomically claims `owner`'s `key` for the request `fingerprint`,
    /// unless it is already known. A claim that is neither completed nor
    /// released lapses after `in_flight_ttl` (its instance died): the key
    /// is free again. A new key of an owner who holds as many live keys as
    /// allowed is [`Claim::OwnerFull`].
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer, or (a
    /// store in one process) is full for everyone; callers then refuse the
    /// request rather than risk running it twice.
    async fn claim(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> Result<Claim, DomainError>;

    /// Records the outcome of the request that claimed `owner`'s `key` with
    /// `fingerprint`, kept for `ttl`. Does nothing if the claim is no
    /// longer this request's (it lapsed and another took the key).
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer.
    async fn complete(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), DomainError>;

    /// Frees `owner`'s `key` if `fingerprint`'s claim still holds it and it
    /// is not completed (the request failed in a way a retry may redo).
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer.
    async fn release(&self, owner: &str, key: &str, fingerprint: &str) -> Result<(), DomainError>;
}
