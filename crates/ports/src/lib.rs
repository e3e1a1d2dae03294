//! The traits Confab's use cases need from the world.
//!
//! Every port is `Send + Sync + 'static` so the binary can hold it as an
//! `Arc<dyn Port>` in one application state. Methods return
//! [`DomainError`]: adapters translate their own failures at their boundary
//! (a unique violation becomes [`DomainError::Duplicate`], a refused
//! connection [`DomainError::Unavailable`]), so nothing above a port knows
//! which library sits behind it.

mod api_key;
mod auth;
mod cache;
mod clock;
mod erasure;
mod failures;
mod health;
mod idempotency;
mod llm;
mod password;
mod store;
mod stream;
mod usage;

pub use api_key::{ApiKeySecrets, ApiKeyStore, KeyCreation, StoredKey};
pub use auth::{
    AccessClaims, Admission, Admitted, IssuedToken, KeyGrant, NewRefreshToken, RateDecision,
    RateLimiter, RatePolicy, Redemption, RefreshClaims, RefreshTokenStore, ResumeClaims,
    ResumeTokenCodec, SessionOrigin, SessionRecord, Standing, TokenBlocklist, TokenCodec,
    TokenRejection,
};
pub use cache::{Cache, CachedValue, entry_key};
pub use clock::{Clock, SystemClock};
pub use erasure::{Erasure, ErasureTargets};
pub use failures::{FailureCount, FailureCounter};
pub use health::HealthCheck;
pub use idempotency::{Claim, IdempotencyStore, StoredOutcome};
pub use llm::{
    ChatModel, CompletionRequest, CompletionStream, FinishReason, LlmError, LlmEvent,
    ModelProvider, ModelState, ModelStatus, PromptRole, PromptTurn, Usage,
};
pub use password::{PasswordHasher, Verification};
pub use store::{ConversationQuery, ConversationStore, MessageStore, TitleIfUntitled, UserStore};
pub use stream::{EventFeed, LogHead, LoggedEvent, ReadFrom, StopSignal, StreamLog};
pub use usage::{UsageStanding, UsageStore};
