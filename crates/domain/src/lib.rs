//! Confab's domain: the types every other crate speaks, and the rules that make
//! a value of those types valid.
//!
//! Constructors validate, so once a value exists it is known to be good:
//! a [`Username`] matches the charset and is not reserved, a [`Title`] has no
//! NUL byte and fits its bound in characters, and so on. Nothing here does
//! I/O, spawns tasks or knows about HTTP or SQL; other Rust services can
//! import this crate to speak Confab's types.

mod api_key;
mod conversation;
mod delta;
mod error;
mod field;
mod ids;
mod message;
mod page;
mod search;
mod text;
mod usage;
mod user;
mod vocabulary;
mod wire;

pub use api_key::{ApiKey, ApiKeyDigest, ApiKeyName, ApiKeyText, KeyLifetime, Scope, Scopes};
pub use conversation::{
    Conversation, ConversationPatch, ConversationSettings, ConversationSummary, NewConversation,
    SystemPrompt, Title,
};
pub use delta::{DeltaApplier, DeltaError, DeltaFrame, DeltaOp};
pub use error::{BoxError, DomainError};
pub use field::Field;
pub use ids::{ApiKeyId, ConversationId, FamilyId, MessageId, TokenId, UserId};
pub use message::{
    Content, ContentType, Message, MessageMetadata, MessageRole, MessageStatus, ModelSlug,
};
pub use page::{Children, HistoryRequest, ListOrder, MessagePage, Page, PageRequest};
pub use search::{SearchHit, SearchQuery, Snippet};
pub use usage::{
    Allowance, AllowancePeriod, AnswerUsage, DailyUsage, Exhausted, TokenUsage, TokensUsed,
    UsagePeriod, month_start,
};
pub use user::{Email, NewUser, Password, PasswordHash, Role, User, Username};
pub use vocabulary::{ErrorCode, EventName};
pub use wire::{MessageDocument, TEXT_PATH, WireEvent, epoch_seconds, events, rfc3339};

/// A calendar day (of usage reports, UTC).
pub use time::Date;
/// The time type every Confab timestamp uses (always UTC).
pub use time::OffsetDateTime;
