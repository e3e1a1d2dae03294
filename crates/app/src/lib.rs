//! Confab's use cases, written against the ports only.
//!
//! Each use case takes raw input, turns it into validated domain values,
//! calls the ports and returns domain values or an [`AppError`]. Nothing
//! here knows HTTP or SQL; the binary wires concrete adapters in.

mod accounts;
mod conversations;
mod error;
mod known;
mod limits;
mod readiness;

pub use accounts::{
    AccountPorts, AccountRules, Accounts, AdmittedRequest, CreatedKey, LoginAttempt, LoginFailures,
    NewApiKey, PasswordChange, Registration, Session, SessionView,
};
pub use conversations::{
    AllowanceView, AnswerEnd, Cached, ConversationPage, ConversationPorts, ConversationRules,
    Conversations, Kept, ListVersion, ModelInfo, NothingKept, Read, SendAction, SendMessage,
    Started, TreePage,
};
pub use error::{AppError, AuthFailure, ReaderScope};
pub use limits::{FallbackLimiter, SeparateAdmission};
pub use readiness::{DependencyStatus, Readiness, ReadinessReport};
