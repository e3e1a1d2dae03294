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
}

/// Keys of requests already made, each bound to one request (its
/// fingerprint: method, path, body) and kept for a while. Keys are opaque
/// here: the caller scopes them (per user) before they get here.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Atomically claims `key` for the request `fingerprint`, unless it is
    /// already known. A claim that is neither completed nor released lapses
    /// after `in_flight_ttl` (its instance died): the key is free again.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer (callers
    /// then refuse the request rather than risk running it twice).
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> Result<Claim, DomainError>;

    /// Records the outcome of the request that claimed `key` with
    /// `fingerprint`, kept for `ttl`. Does nothing if the claim is no
    /// longer this request's (it lapsed and another took the key).
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer.
    async fn complete(
        &self,
        key: &str,
        fingerprint: &str,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), DomainError>;

    /// Frees `key` if `fingerprint`'s claim still holds it and it is not
    /// completed (the request failed in a way a retry may redo).
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer.
    async fn release(&self, key: &str, fingerprint: &str) -> Result<(), DomainError>;
}
