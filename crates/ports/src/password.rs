//! Password hashing.

use async_trait::async_trait;
use confab_domain::{DomainError, Password, PasswordHash};

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The password is wrong (or the hash unreadable).
    Mismatch,
    /// The password is right and the hash uses the current parameters.
    Match,
    /// The password is right but the hash uses older parameters: store a
    /// new hash.
    MatchNeedsRehash,
}

/// Hashes and verifies passwords. Implementations run the work off the
/// async workers and bound how many hashes run at once.
#[async_trait]
pub trait PasswordHasher: Send + Sync + 'static {
    /// Hashes a new password with a fresh salt and the current parameters.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the hashing capacity is exhausted,
    /// [`DomainError::Internal`] if the hash cannot be computed.
    async fn hash(&self, password: &Password) -> Result<PasswordHash, DomainError>;

    /// Checks `password` against `hash`, comparing the derived bytes in
    /// constant time. `None` verifies against a dummy hash made with the
    /// current parameters, so an unknown user costs what a wrong password
    /// for a current hash costs (a hash with older parameters costs what
    /// those parameters cost, until it is rehashed).
    ///
    /// # Errors
    /// As [`PasswordHasher::hash`].
    async fn verify(
        &self,
        password: &Password,
        hash: Option<&PasswordHash>,
    ) -> Result<Verification, DomainError>;
}
