//! The one error type of the application layer.

use std::borrow::Cow;

use confab_domain::{BoxError, DomainError, Exhausted, Field};
use confab_ports::{RateDecision, RatePolicy};

/// Why a caller is not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials were presented.
    Missing,
    /// The token is not acceptable (garbage, tampered, revoked, reused…).
    InvalidToken,
    /// The token was valid but has expired.
    ExpiredToken,
    /// Login with an unknown user, a wrong password or a disabled account
    /// (deliberately indistinguishable).
    BadCredentials,
}

/// What a stream reader cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderScope {
    /// The streams one user reads at once.
    User,
    /// The readers of one answer at once.
    Answer,
}

/// What a use case can fail with. The HTTP layer maps each variant to one
/// status and error code, once.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Input broke a rule; `field` names it.
    #[error("{field:?}: {message}")]
    Validation {
        /// The input.
        field: Field,
        /// Safe to show to the client.
        message: Cow<'static, str>,
    },
    /// Missing, or not the caller's.
    #[error("not found")]
    NotFound,
    /// The id in `field` (a parameter, not the path's resource) names
    /// nothing there: a page's `before` that is not one of the
    /// conversation's messages.
    #[error("{field:?} names nothing")]
    Missing {
        /// The parameter.
        field: Field,
    },
    /// A unique value is taken.
    #[error("{field:?} is already taken")]
    Conflict {
        /// The field whose value is taken.
        field: Field,
    },
    /// The caller is not authenticated.
    #[error("not authenticated")]
    Unauthorized(AuthFailure),
    /// The caller is authenticated but not allowed.
    #[error("not allowed")]
    Forbidden,
    /// A rate limit refused the request.
    #[error("rate limited")]
    RateLimited {
        /// The policy that refused it.
        policy: RatePolicy,
        /// Its bucket's state.
        decision: RateDecision,
    },
    /// The caller's token allowance is used up: no answer until it resets.
    #[error("token allowance used up")]
    QuotaExceeded(Exhausted),
    /// The conversation is still generating an answer.
    #[error("an answer is still being generated")]
    Busy,
    /// The caller already runs as many generations as allowed at once.
    #[error("too many generations at once")]
    TooManyGenerations {
        /// The cap.
        limit: usize,
    },
    /// The caller already reads as many streams as allowed at once.
    #[error("too many streams read at once")]
    TooManyReaders {
        /// The cap.
        limit: usize,
        /// What it caps.
        scope: ReaderScope,
    },
    /// A dependency is down or saturated; retrying later may work.
    #[error("temporarily unavailable")]
    Unavailable(#[source] BoxError),
    /// A bug or corrupted data.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl From<DomainError> for AppError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::Invalid { field, message } => Self::Validation { field, message },
            DomainError::NotFound => Self::NotFound,
            DomainError::Duplicate { field } => Self::Conflict { field },
            DomainError::Unavailable(source) => Self::Unavailable(source),
            DomainError::Internal(source) => Self::Internal(source),
        }
    }
}
