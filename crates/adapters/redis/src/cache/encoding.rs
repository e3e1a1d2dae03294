//! The stored form of a [`CachedValue`]: JSON of private types that mirror
//! the domain types field by field, under a format version:
//!
//! ```json
//! {"v":2,"value":{"conversation_list":{"items":[…],"total":42,"offset":0,"limit":20}}}
//! {"v":2,"value":{"history":{"conversation":{…},"messages":[…],"has_more":true}}}
//! ```
//!
//! The format belongs to this adapter, not to the domain's serde
//! representations: ids, titles, roles and statuses are plain strings, and
//! times are Unix nanoseconds (lossless; read back as UTC). Decoding
//! rebuilds every value with the domain's own parsers (`Title::parse`,
//! `MessageId::parse`, `Content::text`, …), so a value read from the cache
//! is as valid as one read from the database; a title is kept only if
//! parsing leaves it unchanged, so decoding never alters a value.
//!
//! Any change to the format gets a new `v`: an entry of another version
//! (an older or newer instance during a rolling deploy) does not decode,
//! and the cache treats it as a miss.

use std::borrow::Cow;

use confab_domain::{
    Children, Content, ContentType, Conversation, ConversationId, ConversationSettings,
    ConversationSummary, DomainError, Field, Message, MessageId, MessageMetadata, MessagePage,
    MessageRole, MessageStatus, ModelSlug, OffsetDateTime, Page, PageRequest, SearchHit, Snippet,
    SystemPrompt, Title, UserId,
};
use confab_ports::CachedValue;
use serde::{Deserialize, Serialize};

/// The format this build writes and reads (2: a history is a page of
/// messages, with `has_more`; 3: a conversation has a `current_node`; 4: a
/// history has its messages' children; 5: a search's item has its hit).
const FORMAT: u64 = 5;

/// Why a stored entry could not be read back. Never holds any of the
/// entry's text (it is logged): only where and why decoding stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    /// Written in another format version.
    #[error("format version {0}, this instance reads {FORMAT}")]
    Version(u64),
    /// Not JSON of the expected shape.
    #[error("malformed ({category:?} error at line {line}, column {column})")]
    Malformed {
        /// What kind of JSON error.
        category: serde_json::error::Category,
        /// Where it was found.
        line: usize,
        /// Where it was found.
        column: usize,
    },
    /// Well-formed, but a value breaks a domain rule.
    #[error("invalid value: {0}")]
    Invalid(#[from] DomainError),
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        Self::Malformed {
            category: e.classify(),
            line: e.line(),
            column: e.column(),
        }
    }
}

/// `value` as stored.
pub(super) fn encode(value: &CachedValue) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Entry {
        v: FORMAT,
        value: ValueDto::from(value),
    })
}

/// The value stored as `bytes`.
pub(super) fn decode(bytes: &[u8]) -> Result<CachedValue, DecodeError> {
    match serde_json::from_slice::<Entry<'_>>(bytes) {
        Ok(entry) if entry.v == FORMAT => Ok(CachedValue::try_from(entry.value)?),
        Ok(entry) => Err(DecodeError::Version(entry.v)),
        Err(e) => {
            // Another version may have another shape: say so rather than
            // "malformed" when the version alone can be read.
            match serde_json::from_slice::<Header>(bytes) {
                Ok(header) if header.v != FORMAT => Err(DecodeError::Version(header.v)),
                _ => Err(e.into()),
            }
        }
    }
}

/// The version alone (every other field is skipped).
#[derive(Deserialize)]
struct Header {
    v: u64,
}

/// A stored entry. `v` comes first, so it is what a reader sees first.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry<'a> {
    v: u64,
    value: ValueDto<'a>,
}

/// [`CachedValue`].
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ValueDto<'a> {
    ConversationList(PageDto<'a>),
    History(Box<HistoryDto<'a>>),
}

impl<'a> From<&'a CachedValue> for ValueDto<'a> {
    fn from(value: &'a CachedValue) -> Self {
        match value {
            CachedValue::ConversationList(page) => Self::ConversationList(PageDto::from(page)),
            CachedValue::History(conversation, page) => Self::History(Box::new(HistoryDto {
                conversation: ConversationDto::from(&**conversation),
                messages: page.messages.iter().map(MessageDto::from).collect(),
                has_more: page.has_more,
                children: page.children.iter().map(ChildrenDto::from).collect(),
            })),
        }
    }
}

impl TryFrom<ValueDto<'_>> for CachedValue {
    type Error = DomainError;

    fn try_from(dto: ValueDto<'_>) -> Result<Self, Self::Error> {
        Ok(match dto {
            ValueDto::ConversationList(page) => Self::ConversationList(page.try_into()?),
            ValueDto::History(history) => Self::History(
                Box::new(history.conversation.try_into()?),
                MessagePage {
                    messages: history
                        .messages
                        .into_iter()
                        .map(Message::try_from)
                        .collect::<Result<_, _>>()?,
                    has_more: history.has_more,
                    children: history
                        .children
                        .into_iter()
                        .map(Children::try_from)
                        .collect::<Result<_, _>>()?,
                },
            ),
        })
    }
}

/// [`Page`] of [`ConversationSummary`], its [`PageRequest`] inline.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageDto<'a> {
    items: Vec<SummaryDto<'a>>,
    total: u64,
    offset: u32,
    limit: u32,
}

impl<'a> From<&'a Page<ConversationSummary>> for PageDto<'a> {
    fn from(page: &'a Page<ConversationSummary>) -> Self {
        Self {
            items: page.items.iter().map(SummaryDto::from).collect(),
            total: page.total,
            offset: page.request.offset(),
            limit: page.request.limit(),
        }
    }
}

impl TryFrom<PageDto<'_>> for Page<ConversationSummary> {
    type Error = DomainError;

    fn try_from(dto: PageDto<'_>) -> Result<Self, Self::Error> {
        Ok(Self {
            items: dto
                .items
                .into_iter()
                .map(ConversationSummary::try_from)
                .collect::<Result<_, _>>()?,
            total: dto.total,
            request: PageRequest::new(dto.offset, dto.limit)?,
        })
    }
}

/// [`ConversationSummary`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SummaryDto<'a> {
    id: String,
    title: Cow<'a, str>,
    last_message: Option<Cow<'a, str>>,
    is_archived: bool,
    #[serde(with = "time::serde::timestamp::nanoseconds")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::timestamp::nanoseconds")]
    updated_at: OffsetDateTime,
    hit: Option<HitDto<'a>>,
}

/// [`SearchHit`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HitDto<'a> {
    message_id: Option<Cow<'a, str>>,
    snippet: Cow<'a, str>,
    highlights: Cow<'a, [(usize, usize)]>,
}

impl<'a> From<&'a SearchHit> for HitDto<'a> {
    fn from(hit: &'a SearchHit) -> Self {
        Self {
            message_id: hit.message_id.as_ref().map(|id| Cow::Borrowed(id.as_str())),
            snippet: Cow::Borrowed(hit.snippet.text()),
            highlights: Cow::Borrowed(hit.snippet.highlights()),
        }
    }
}

impl TryFrom<HitDto<'_>> for SearchHit {
    type Error = DomainError;

    fn try_from(dto: HitDto<'_>) -> Result<Self, Self::Error> {
        Ok(Self {
            message_id: dto.message_id.map(MessageId::parse).transpose()?,
            snippet: Snippet::new(dto.snippet.into_owned(), dto.highlights.into_owned())?,
        })
    }
}

impl<'a> From<&'a ConversationSummary> for SummaryDto<'a> {
    fn from(summary: &'a ConversationSummary) -> Self {
        Self {
            id: summary.id.to_string(),
            title: Cow::Borrowed(summary.title.as_str()),
            last_message: summary.last_message.as_deref().map(Cow::Borrowed),
            is_archived: summary.is_archived,
            created_at: summary.created_at,
            updated_at: summary.updated_at,
            hit: summary.hit.as_ref().map(HitDto::from),
        }
    }
}

impl TryFrom<SummaryDto<'_>> for ConversationSummary {
    type Error = DomainError;

    fn try_from(dto: SummaryDto<'_>) -> Result<Self, Self::Error> {
        Ok(Self {
            id: dto.id.parse::<ConversationId>()?,
            title: title(&dto.title)?,
            last_message: dto.last_message.map(Cow::into_owned),
            is_archived: dto.is_archived,
            created_at: dto.created_at,
            updated_at: dto.updated_at,
            hit: dto.hit.map(SearchHit::try_from).transpose()?,
        })
    }
}

/// A conversation and a page of its messages.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryDto<'a> {
    conversation: ConversationDto<'a>,
    messages: Vec<MessageDto<'a>>,
    has_more: bool,
    children: Vec<ChildrenDto<'a>>,
}

/// [`Children`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChildrenDto<'a> {
    parent: Option<Cow<'a, str>>,
    ids: Vec<Cow<'a, str>>,
}

impl<'a> From<&'a Children> for ChildrenDto<'a> {
    fn from(s: &'a Children) -> Self {
        Self {
            parent: s.parent.as_ref().map(|p| Cow::Borrowed(p.as_str())),
            ids: s.ids.iter().map(|id| Cow::Borrowed(id.as_str())).collect(),
        }
    }
}

impl TryFrom<ChildrenDto<'_>> for Children {
    type Error = DomainError;

    fn try_from(dto: ChildrenDto<'_>) -> Result<Self, Self::Error> {
        let parse = |id: Cow<'_, str>| MessageId::parse(id.into_owned());
        Ok(Self {
            parent: dto.parent.map(parse).transpose()?,
            ids: dto.ids.into_iter().map(parse).collect::<Result<_, _>>()?,
        })
    }
}

/// [`Conversation`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversationDto<'a> {
    id: String,
    owner: String,
    title: Cow<'a, str>,
    is_archived: bool,
    current_node: Option<Cow<'a, str>>,
    system_prompt: Option<Cow<'a, str>>,
    model: Option<Cow<'a, str>>,
    #[serde(with = "time::serde::timestamp::nanoseconds::option")]
    deleted_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::timestamp::nanoseconds")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::timestamp::nanoseconds")]
    updated_at: OffsetDateTime,
}

impl<'a> From<&'a Conversation> for ConversationDto<'a> {
    fn from(conversation: &'a Conversation) -> Self {
        Self {
            id: conversation.id.to_string(),
            owner: conversation.owner.to_string(),
            title: Cow::Borrowed(conversation.title.as_str()),
            is_archived: conversation.is_archived,
            current_node: conversation
                .current_node
                .as_ref()
                .map(|id| Cow::Borrowed(id.as_str())),
            system_prompt: conversation
                .settings
                .system_prompt
                .as_ref()
                .map(|p| Cow::Borrowed(p.as_str())),
            model: conversation
                .settings
                .model
                .as_ref()
                .map(|m| Cow::Borrowed(m.as_str())),
            deleted_at: conversation.deleted_at,
            created_at: conversation.created_at,
            updated_at: conversation.updated_at,
        }
    }
}

impl TryFrom<ConversationDto<'_>> for Conversation {
    type Error = DomainError;

    fn try_from(dto: ConversationDto<'_>) -> Result<Self, Self::Error> {
        Ok(Self {
            id: dto.id.parse::<ConversationId>()?,
            owner: dto.owner.parse::<UserId>()?,
            title: title(&dto.title)?,
            is_archived: dto.is_archived,
            current_node: dto
                .current_node
                .map(|id| MessageId::parse(id.into_owned()))
                .transpose()?,
            settings: ConversationSettings {
                system_prompt: dto
                    .system_prompt
                    .map(|p| SystemPrompt::parse(&p))
                    .transpose()?,
                model: dto.model.map(|m| ModelSlug::parse(&m)).transpose()?,
            },
            deleted_at: dto.deleted_at,
            created_at: dto.created_at,
            updated_at: dto.updated_at,
        })
    }
}

/// [`Message`], its [`Content`] inline.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageDto<'a> {
    id: Cow<'a, str>,
    conversation_id: String,
    parent_id: Option<Cow<'a, str>>,
    role: Cow<'a, str>,
    content_type: Cow<'a, str>,
    parts: Cow<'a, [String]>,
    status: Cow<'a, str>,
    model_slug: Option<Cow<'a, str>>,
    metadata: Cow<'a, MessageMetadata>,
    #[serde(with = "time::serde::timestamp::nanoseconds")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::timestamp::nanoseconds")]
    updated_at: OffsetDateTime,
}

/// The stored name of a content type.
const fn content_type_name(content_type: ContentType) -> &'static str {
    match content_type {
        ContentType::Text => "text",
    }
}

impl<'a> From<&'a Message> for MessageDto<'a> {
    fn from(message: &'a Message) -> Self {
        Self {
            id: Cow::Borrowed(message.id.as_str()),
            conversation_id: message.conversation_id.to_string(),
            parent_id: message
                .parent_id
                .as_ref()
                .map(|id| Cow::Borrowed(id.as_str())),
            role: Cow::Borrowed(message.role.as_str()),
            content_type: Cow::Borrowed(content_type_name(message.content.content_type())),
            parts: Cow::Borrowed(message.content.parts()),
            status: Cow::Borrowed(message.status.as_str()),
            model_slug: message
                .model_slug
                .as_ref()
                .map(|slug| Cow::Borrowed(slug.as_str())),
            metadata: Cow::Borrowed(&message.metadata),
            created_at: message.created_at,
            updated_at: message.updated_at,
        }
    }
}

impl TryFrom<MessageDto<'_>> for Message {
    type Error = DomainError;

    fn try_from(dto: MessageDto<'_>) -> Result<Self, Self::Error> {
        let content = match &*dto.content_type {
            "text" => Content::text(dto.parts.into_owned())?,
            _ => {
                return Err(DomainError::invalid(
                    Field::ContentType,
                    "unknown content type",
                ));
            }
        };
        Ok(Self {
            id: MessageId::parse(dto.id.into_owned())?,
            conversation_id: dto.conversation_id.parse::<ConversationId>()?,
            parent_id: dto
                .parent_id
                .map(|id| MessageId::parse(id.into_owned()))
                .transpose()?,
            role: MessageRole::parse(&dto.role)?,
            content,
            status: MessageStatus::parse(&dto.status)?,
            model_slug: dto
                .model_slug
                .as_deref()
                .map(ModelSlug::parse)
                .transpose()?,
            metadata: dto.metadata.into_owned(),
            created_at: dto.created_at,
            updated_at: dto.updated_at,
        })
    }
}

/// A stored title, kept only when it is one [`Title::parse`] accepts as it
/// is (parsing trims: a title it would change was not written by us).
fn title(raw: &str) -> Result<Title, DomainError> {
    let title = Title::parse(raw)?;
    if title.as_str() == raw {
        Ok(title)
    } else {
        Err(DomainError::invalid(
            Field::Title,
            "is not in canonical form",
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn page() -> CachedValue {
        CachedValue::ConversationList(Page {
            items: vec![ConversationSummary {
                id: ConversationId::generate(),
                title: Title::parse("Plan").unwrap(),
                last_message: Some("ok".to_owned()),
                is_archived: false,
                created_at: OffsetDateTime::from_unix_timestamp_nanos(1_732_000_000_123_456_789)
                    .unwrap(),
                updated_at: OffsetDateTime::from_unix_timestamp_nanos(1_732_000_001_000_000_001)
                    .unwrap(),
                hit: None,
            }],
            total: 7,
            request: PageRequest::new(5, 1).unwrap(),
        })
    }

    #[test]
    fn entries_start_with_their_version_and_round_trip() {
        let value = page();
        let bytes = encode(&value).unwrap();
        assert!(bytes.starts_with(b"{\"v\":5,\"value\":{\"conversation_list\":"));
        assert_eq!(decode(&bytes).unwrap(), value);
    }

    #[test]
    fn failures_say_why_without_the_text() {
        let text = String::from_utf8(encode(&page()).unwrap()).unwrap();
        let other = text.replacen("\"v\":5", "\"v\":4", 1);
        assert!(matches!(
            decode(other.as_bytes()),
            Err(DecodeError::Version(4))
        ));
        let reshaped = r#"{"v":6,"entry":[]}"#;
        assert!(matches!(
            decode(reshaped.as_bytes()),
            Err(DecodeError::Version(6))
        ));
        let secret = text.replacen("\"ok\"", "[\"secret\"]", 1);
        let err = decode(secret.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        let invalid = text.replacen("\"Plan\"", "\"\"", 1);
        assert!(matches!(
            decode(invalid.as_bytes()),
            Err(DecodeError::Invalid(_))
        ));
        let extra = text.replacen("\"total\"", "\"extra\":1,\"total\"", 1);
        assert!(matches!(
            decode(extra.as_bytes()),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
