//! Conversations.

use time::OffsetDateTime;

use crate::text::{check_text, visible_line};
use crate::{ConversationId, DomainError, Field, MessageId, ModelSlug, SearchHit, UserId};

/// A conversation's title: 1..=200 characters after trimming, no NUL, no
/// control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    /// Longest title, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Validates a title: 1..=200 characters, no control character, not
    /// only white space; stored without its leading and trailing white
    /// space.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `title`.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        visible_line(Field::Title, value, Self::MAX_CHARS).map(Self)
    }

    /// The title a conversation has before one is chosen.
    #[must_use]
    pub fn placeholder() -> Self {
        Self("New chat".to_owned())
    }

    /// Rebuilds a title read back from storage.
    #[must_use]
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The title as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A conversation's own instructions to the model (its system prompt):
/// 1..=20,000 characters, not only white space, no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPrompt(String);

impl SystemPrompt {
    /// Longest system prompt, in characters.
    pub const MAX_CHARS: usize = 20_000;

    /// Validates a system prompt (kept as written: white space may matter
    /// to the model).
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `system_prompt`.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        check_text(Field::SystemPrompt, value, 1, Self::MAX_CHARS)?;
        if value.trim().is_empty() {
            return Err(DomainError::invalid(
                Field::SystemPrompt,
                "must not be blank",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// Rebuilds a system prompt read back from storage.
    #[must_use]
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The prompt as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a conversation asks of the model on every send in it, where it
/// differs from the service's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConversationSettings {
    /// Its system prompt; `None`: the service's (`llm.system_prompt`).
    pub system_prompt: Option<SystemPrompt>,
    /// Its default model (one the service allows); `None`: the service's.
    pub model: Option<ModelSlug>,
}

/// A conversation and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Stable id (UUIDv7).
    pub id: ConversationId,
    /// The owner; nobody else can see it.
    pub owner: UserId,
    /// Display title.
    pub title: Title,
    /// Hidden from the default list, still readable.
    pub is_archived: bool,
    /// The message its current branch ends at (a send moves it to its
    /// answer); `None` while it has no message. Its history is the path
    /// from the root message to this one.
    pub current_node: Option<MessageId>,
    /// Its own system prompt and default model.
    pub settings: ConversationSettings,
    /// Set when soft-deleted; a deleted conversation is not found anywhere.
    pub deleted_at: Option<OffsetDateTime>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change (new message, rename, archive).
    pub updated_at: OffsetDateTime,
}

/// Everything needed to store a new conversation.
#[derive(Debug, Clone)]
pub struct NewConversation {
    /// The id to give it.
    pub id: ConversationId,
    /// Its owner.
    pub owner: UserId,
    /// Initial title.
    pub title: Title,
    /// Its own system prompt and default model.
    pub settings: ConversationSettings,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// A partial update: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ConversationPatch {
    /// New title.
    pub title: Option<Title>,
    /// New archived flag.
    pub is_archived: Option<bool>,
    /// The message the current branch now ends at (switching branch): one
    /// of the conversation's messages.
    pub current_node: Option<MessageId>,
    /// A new system prompt; `Some(None)` goes back to the service's.
    pub system_prompt: Option<Option<SystemPrompt>>,
    /// A new default model; `Some(None)` goes back to the service's.
    pub model: Option<Option<ModelSlug>>,
}

impl ConversationPatch {
    /// True when the patch changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.title.is_none()
            && self.is_archived.is_none()
            && self.current_node.is_none()
            && self.system_prompt.is_none()
            && self.model.is_none()
    }
}

/// One row of a conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation.
    pub id: ConversationId,
    /// Its title.
    pub title: Title,
    /// The start of its latest message, if any.
    pub last_message: Option<String>,
    /// Whether it is archived.
    pub is_archived: bool,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
    /// Why a search found it; `None` in a list that is not a search.
    pub hit: Option<SearchHit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_is_trimmed_and_bounded() {
        assert_eq!(
            Title::parse("  Redis caching ").unwrap().as_str(),
            "Redis caching"
        );
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse(&"t".repeat(201)).is_err());
        assert!(Title::parse(&"題".repeat(200)).is_ok());
    }

    #[test]
    fn title_refuses_nul_and_control_characters() {
        assert!(Title::parse("a\0b").is_err());
        assert!(Title::parse("a\u{1b}[31mred").is_err());
        assert!(Title::parse("line\nbreak").is_err());
    }

    #[test]
    fn empty_patch() {
        assert!(ConversationPatch::default().is_empty());
        let p = ConversationPatch {
            is_archived: Some(true),
            ..Default::default()
        };
        assert!(!p.is_empty());
    }
}
