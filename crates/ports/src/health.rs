//! Readiness of a dependency.

use async_trait::async_trait;
use confab_domain::DomainError;

/// A dependency that `/readyz` asks whether it can serve now.
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// A short, stable name for the readiness report (`database`).
    fn name(&self) -> &'static str;

    /// Checks the dependency with one cheap round trip.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when it cannot be reached.
    async fn check(&self) -> Result<(), DomainError>;
}
