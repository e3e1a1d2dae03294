//! Messages and their content.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::text::check_text;
use crate::{ConversationId, DomainError, Field, MessageId};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// Instructions that frame the conversation.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's output.
    Tool,
}

impl MessageRole {
    /// The role's stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }

    /// Parses a stored role name.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `role` for an unknown name.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        match value {
            "system" => Ok(Self::System),
            "user" => Ok(Self::User),
            "assistant" => Ok(Self::Assistant),
            "tool" => Ok(Self::Tool),
            _ => Err(DomainError::invalid(
                Field::MessageRole,
                "must be system, user, assistant or tool",
            )),
        }
    }
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Being generated.
    InProgress,
    /// Complete.
    FinishedSuccessfully,
    /// Stopped early (by the user, or at the length cap); the text so far is kept.
    FinishedPartialCompletion,
    /// Generation failed; the text saved before the failure is kept.
    Failed,
}

impl MessageStatus {
    /// The status's stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::FinishedSuccessfully => "finished_successfully",
            Self::FinishedPartialCompletion => "finished_partial_completion",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored status name.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `status` for an unknown name.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        match value {
            "in_progress" => Ok(Self::InProgress),
            "finished_successfully" => Ok(Self::FinishedSuccessfully),
            "finished_partial_completion" => Ok(Self::FinishedPartialCompletion),
            "failed" => Ok(Self::Failed),
            _ => Err(DomainError::invalid(
                Field::MessageStatus,
                "unknown message status",
            )),
        }
    }
}

/// The kind of a message's content. Only text exists today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    /// Plain text parts.
    Text,
}

/// A message's content: `{"content_type": "text", "parts": [...]}`.
///
/// At most [`Content::MAX_PARTS`] parts and [`Content::MAX_CHARS`]
/// characters in all; no NUL bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawContent")]
pub struct Content {
    content_type: ContentType,
    parts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContent {
    content_type: ContentType,
    parts: Vec<String>,
}

impl TryFrom<RawContent> for Content {
    type Error = DomainError;

    fn try_from(raw: RawContent) -> Result<Self, Self::Error> {
        let _ = raw.content_type;
        Self::text(raw.parts)
    }
}

impl Content {
    /// Most parts in one message.
    pub const MAX_PARTS: usize = 32;
    /// Most characters in one message, all parts together.
    pub const MAX_CHARS: usize = 100_000;

    /// Text content.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `content` when there are no parts, too
    /// many, too much text, or a NUL byte.
    pub fn text(parts: Vec<String>) -> Result<Self, DomainError> {
        if parts.is_empty() || parts.len() > Self::MAX_PARTS {
            return Err(DomainError::invalid(
                Field::ContentParts,
                "must hold 1 to 32 parts",
            ));
        }
        let mut total = 0;
        for part in &parts {
            check_text(Field::ContentParts, part, 0, Self::MAX_CHARS)?;
            total += part.chars().count();
        }
        if total > Self::MAX_CHARS {
            return Err(DomainError::invalid(
                Field::ContentParts,
                "must hold at most 100000 characters in all",
            ));
        }
        Ok(Self {
            content_type: ContentType::Text,
            parts,
        })
    }

    /// Text content typed by a person: as [`Content::text`], and not blank.
    ///
    /// # Errors
    /// As [`Content::text`], and when every part is white space.
    pub fn user_text(parts: Vec<String>) -> Result<Self, DomainError> {
        let content = Self::text(parts)?;
        if content.parts.iter().all(|p| p.trim().is_empty()) {
            return Err(DomainError::invalid(
                Field::ContentParts,
                "must not be empty",
            ));
        }
        Ok(content)
    }

    /// The empty content an assistant message starts with (`parts: [""]`).
    #[must_use]
    pub fn empty_text() -> Self {
        Self {
            content_type: ContentType::Text,
            parts: vec![String::new()],
        }
    }

    /// The content type.
    #[must_use]
    pub const fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// The parts.
    #[must_use]
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// All parts joined, for previews and prompts.
    #[must_use]
    pub fn joined(&self) -> String {
        self.parts.concat()
    }

    /// The bytes of text of all parts (UTF-8).
    #[must_use]
    pub fn text_bytes(&self) -> usize {
        self.parts.iter().map(String::len).sum()
    }
}

/// The model a message was generated by: 1..=100 characters of
/// `[A-Za-z0-9._:/-]` (`gpt-4o`, `llama3.1:8b`, `org/model`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ModelSlug(String);

impl ModelSlug {
    /// Validates a model name.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `model`.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        let ok = (1..=100).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b));
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(DomainError::invalid(
                Field::Model,
                "must be 1 to 100 characters of letters, digits and . _ : / -",
            ))
        }
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free-form metadata of a message (a JSON object).
pub type MessageMetadata = serde_json::Map<String, serde_json::Value>;

/// A message in a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Id, unique within the conversation.
    pub id: MessageId,
    /// The conversation it belongs to.
    pub conversation_id: ConversationId,
    /// The message it answers or follows, if any.
    pub parent_id: Option<MessageId>,
    /// Who wrote it.
    pub role: MessageRole,
    /// What it says.
    pub content: Content,
    /// Where it is in its life.
    pub status: MessageStatus,
    /// The model that generated it (assistant messages).
    pub model_slug: Option<ModelSlug>,
    /// Free-form metadata (a JSON object).
    pub metadata: MessageMetadata,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_the_seed_shape() {
        let json = r#"{"content_type":"text","parts":["Hello! Can you explain Redis caching?"]}"#;
        let c: Content = serde_json::from_str(json).unwrap();
        assert_eq!(c.parts(), ["Hello! Can you explain Redis caching?"]);
        assert_eq!(serde_json::to_string(&c).unwrap(), json);
    }

    #[test]
    fn content_refuses_nul_unknown_fields_and_bad_types() {
        for bad in [
            r#"{"content_type":"text","parts":["a\u0000b"]}"#,
            r#"{"content_type":"text","parts":["a"],"user_id":"x"}"#,
            r#"{"content_type":"image","parts":["a"]}"#,
            r#"{"content_type":"text","parts":[]}"#,
        ] {
            assert!(
                serde_json::from_str::<Content>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn content_bounds() {
        assert!(Content::text(vec![String::new(); 33]).is_err());
        assert!(Content::text(vec!["x".repeat(50_000), "y".repeat(50_001)]).is_err());
        assert!(Content::text(vec!["é".repeat(100_000)]).is_ok());
    }

    #[test]
    fn user_text_must_not_be_blank() {
        assert!(Content::user_text(vec!["  \n".into()]).is_err());
        assert!(Content::user_text(vec!["hi".into()]).is_ok());
        assert_eq!(Content::empty_text().parts(), [""]);
    }

    #[test]
    fn statuses_and_roles_round_trip() {
        for s in [
            MessageStatus::InProgress,
            MessageStatus::FinishedSuccessfully,
            MessageStatus::FinishedPartialCompletion,
            MessageStatus::Failed,
        ] {
            assert_eq!(MessageStatus::parse(s.as_str()).unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in [
            MessageRole::System,
            MessageRole::User,
            MessageRole::Assistant,
            MessageRole::Tool,
        ] {
            assert_eq!(MessageRole::parse(r.as_str()).unwrap(), r);
        }
    }

    #[test]
    fn model_slugs() {
        assert!(ModelSlug::parse("llama3.1:8b").is_ok());
        assert!(ModelSlug::parse("org/model-v2").is_ok());
        assert!(ModelSlug::parse("").is_err());
        assert!(ModelSlug::parse("bad model").is_err());
    }
}
