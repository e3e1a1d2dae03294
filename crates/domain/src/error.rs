//! The one error type of the domain layer.

use std::borrow::Cow;

use crate::Field;

/// A boxed error from below the domain (a driver, a pool), kept as a source
/// for logs and never shown to a client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the domain and behind the ports.
///
/// Adapters translate their own failures into these variants at their
/// boundary (a unique-constraint violation becomes [`DomainError::Duplicate`]),
/// so nothing above them knows which database or library was used.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A value broke a rule; `field` names the input it came from.
    #[error("{field:?}: {message}")]
    Invalid {
        /// The input it came from.
        field: Field,
        /// What is wrong with it, safe to show to the client.
        message: Cow<'static, str>,
    },
    /// The thing does not exist (or is not visible to the caller).
    #[error("not found")]
    NotFound,
    /// A unique value is already taken; `field` names which.
    #[error("{field:?} is already taken")]
    Duplicate {
        /// The field whose value is taken.
        field: Field,
    },
    /// A dependency (the database) cannot be reached right now.
    #[error("a dependency is unavailable")]
    Unavailable(#[source] BoxError),
    /// An unexpected failure: a bug or corrupted data.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl DomainError {
    /// A validation failure on `field`.
    pub fn invalid(field: Field, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    /// An unexpected failure with its cause.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        Self::Internal(source.into())
    }

    /// A dependency failure with its cause.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::Unavailable(source.into())
    }
}
