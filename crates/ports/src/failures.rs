//! Recent failures per key: what the login policy counts (failed logins
//! per account, and per account and client address) so that it can keep
//! guessing out without letting anyone lock an account's owner out.

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;

/// A key's failures in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureCount {
    /// Failures counted since the window began (0: none, or it ended).
    pub failures: u32,
    /// Time until the window ends and the count is forgotten (zero when
    /// there are none).
    pub resets_in: Duration,
}

/// Counts failures per key in fixed windows: a key's window opens at its
/// first failure and lasts the `window` given then; the count is forgotten
/// when it ends.
#[async_trait]
pub trait FailureCounter: Send + Sync + 'static {
    /// The current counts of `keys`, in order, in one step where the
    /// backend can (one round trip on Redis).
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer.
    async fn counts(&self, keys: &[String]) -> Result<Vec<FailureCount>, DomainError>;

    /// Counts one more failure of each of `keys`; a key without a current
    /// window opens one of `window`.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer.
    async fn record(&self, keys: &[String], window: Duration) -> Result<(), DomainError>;

    /// Forgets `key`'s failures.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the store can't answer.
    async fn clear(&self, key: &str) -> Result<(), DomainError>;
}
