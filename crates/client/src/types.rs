//! What the API answers, typed with confab-domain's ids, roles and
//! statuses. Fields a newer server adds are ignored.

use std::collections::BTreeMap;

use confab_domain::{ConversationId, MessageId, MessageRole, MessageStatus, Role, UserId};
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;

time::serde::format_description!(day, Date, "[year]-[month]-[day]");

/// A message id read from the wire, checked by confab-domain's rule.
fn message_id<'de, D: Deserializer<'de>>(d: D) -> Result<MessageId, D::Error> {
    let text = String::deserialize(d)?;
    MessageId::parse(text).map_err(serde::de::Error::custom)
}

fn optional_message_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MessageId>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| MessageId::parse(text).map_err(serde::de::Error::custom))
        .transpose()
}

/// An account as the API shows it.
///
/// ```no_run
/// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
/// let me: confab_client::User = client.me().await?;
/// assert!(!me.disabled);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Its login name (lower case).
    pub username: String,
    /// Its e-mail address (lower case).
    pub email: String,
    /// `user` or `admin`.
    pub role: Role,
    /// A disabled account can't log in or use its tokens.
    pub disabled: bool,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A fresh pair of tokens (the client keeps them; they are shown to
/// nobody).
#[derive(Clone, Deserialize)]
pub(crate) struct Tokens {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
}

/// A message in the API's one message form (history, stream, JSON-mode
/// send): what the stream's deltas build, equal to what the history
/// returns once the answer has ended.
///
/// ```
/// let json = serde_json::json!({
///     "id": "msg_1", "author": {"role": "user"}, "role": "user",
///     "create_time": 1762484547.338, "update_time": 1762484547.338,
///     "created_at": "2025-11-07T02:49:07.338Z",
///     "content": {"content_type": "text", "parts": ["Hello"]},
///     "status": "finished_successfully", "metadata": {}
/// });
/// let message: confab_client::Message = serde_json::from_value(json)?;
/// assert_eq!(message.text(), "Hello");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    /// Its id, unique in its conversation.
    #[serde(deserialize_with = "message_id")]
    pub id: MessageId,
    /// `user` or `assistant`.
    pub role: MessageRole,
    /// Creation, in seconds since the Unix epoch (millisecond precision).
    pub create_time: f64,
    /// Last change, in seconds since the Unix epoch.
    pub update_time: f64,
    /// Creation.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Its text, in parts.
    pub content: MessageContent,
    /// `in_progress` while an answer runs, then how it ended.
    pub status: MessageStatus,
    /// The model, the parent and, once an answer ended, `is_complete`.
    pub metadata: MessageMetadata,
    /// On an answer that has ended: whether it ended its turn (it was not
    /// stopped or cut).
    #[serde(default)]
    pub end_turn: Option<bool>,
}

impl Message {
    /// Its text: the parts, joined.
    ///
    /// ```
    /// # let json = serde_json::json!({"id": "m", "role": "assistant", "create_time": 1.0,
    /// #   "update_time": 1.0, "created_at": "2025-11-07T02:49:07Z", "status": "in_progress",
    /// #   "content": {"content_type": "text", "parts": ["Hel", "lo"]}, "metadata": {}});
    /// let message: confab_client::Message = serde_json::from_value(json)?;
    /// assert_eq!(message.text(), "Hello");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    #[must_use]
    pub fn text(&self) -> String {
        self.content.parts.concat()
    }
}

/// A message's content.
///
/// ```
/// let content: confab_client::MessageContent =
///     serde_json::from_str(r#"{"content_type": "text", "parts": ["Hi"]}"#)?;
/// assert_eq!(content.parts, ["Hi"]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageContent {
    /// `text`.
    pub content_type: String,
    /// The text, in parts.
    pub parts: Vec<String>,
}

/// A message's metadata.
///
/// ```
/// let meta: confab_client::MessageMetadata =
///     serde_json::from_str(r#"{"model_slug": "gpt-4o-mini", "is_complete": true}"#)?;
/// assert_eq!(meta.is_complete, Some(true));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MessageMetadata {
    /// The model that wrote an answer.
    #[serde(default)]
    pub model_slug: Option<String>,
    /// The message this one follows.
    #[serde(default, deserialize_with = "optional_message_id")]
    pub parent_id: Option<MessageId>,
    /// `true` once an answer has ended.
    #[serde(default)]
    pub is_complete: Option<bool>,
}

/// A page of a list: its items and where the window is.
///
/// ```no_run
/// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
/// let page = client.conversations(&confab_client::ListQuery::default()).await?;
/// println!("{} of {}", page.items.len(), page.total);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The window's size.
    pub limit: u32,
    /// The window's start.
    pub offset: u32,
    /// How many items there are in all.
    pub total: u64,
}

/// One row of a conversation list.
///
/// ```no_run
/// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
/// for c in client.conversations(&Default::default()).await?.items {
///     println!("{} {}", c.id, c.title);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConversationSummary {
    /// Its id.
    pub id: ConversationId,
    /// Its title.
    pub title: String,
    /// The start of its latest message.
    #[serde(default)]
    pub last_message: Option<String>,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Creation.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Whether it is archived.
    pub is_archived: bool,
    /// Why a search found it (only in a search's results).
    #[serde(default, rename = "match")]
    pub found: Option<SearchMatch>,
}

/// Where a search matched a conversation.
///
/// ```
/// let m: confab_client::SearchMatch = serde_json::from_str(
///     r#"{"message_id": null, "snippet": "Travel", "highlights": [[0, 6]]}"#)?;
/// assert_eq!(m.highlights, [[0, 6]]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SearchMatch {
    /// The message that matched best; `None` when only the title did.
    #[serde(default, deserialize_with = "optional_message_id")]
    pub message_id: Option<MessageId>,
    /// Plain text around the first match.
    pub snippet: String,
    /// The matched words in `snippet`, `[start, end)` in code points.
    pub highlights: Vec<[usize; 2]>,
}

/// A conversation and one page of its current branch.
///
/// ```no_run
/// # async fn demo(client: confab_client::Client, id: confab_domain::ConversationId)
/// # -> Result<(), confab_client::Error> {
/// let conversation = client.conversation(id).await?;
/// for m in &conversation.messages {
///     println!("{:?}: {}", m.role, m.text());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Conversation {
    /// Its id.
    pub conversation_id: ConversationId,
    /// Its title.
    pub title: String,
    /// Whether it is archived.
    pub is_archived: bool,
    /// The message its current branch ends at.
    #[serde(default, deserialize_with = "optional_message_id")]
    pub current_node: Option<MessageId>,
    /// Its own system prompt (`None`: the service's).
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Its default model (`None`: the service's).
    #[serde(default)]
    pub model: Option<String>,
    /// Creation.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The page's messages, oldest first (absent from a rename's answer).
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Whether older messages precede these.
    #[serde(default)]
    pub has_more: bool,
    /// With `has_more`, the id to read the older page before.
    #[serde(default)]
    pub cursor: Option<String>,
    /// For each message of the page with siblings: their ids and its place.
    #[serde(default)]
    pub siblings: BTreeMap<String, Siblings>,
}

/// A message's siblings (other answers to its question, other questions
/// after its answer).
///
/// ```
/// let s: confab_client::Siblings = serde_json::from_str(r#"{"ids": ["a", "b"], "index": 1}"#)?;
/// assert_eq!(s.index, 1);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Siblings {
    /// The ids of the messages sharing its parent, itself included.
    pub ids: Vec<String>,
    /// Its place among them.
    pub index: usize,
}

/// A JSON-mode send's answer (`Accept: application/json`).
///
/// ```no_run
/// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
/// let sent = client.send_json(&confab_client::Send::new_conversation("Hi")).await?;
/// println!("{}: {}", sent.title, sent.message.text());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Sent {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its title.
    pub title: String,
    /// The question.
    pub input_message: Message,
    /// The answer, ended.
    pub message: Message,
}

/// A model a send may name.
///
/// ```no_run
/// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
/// let default = client.models().await?.into_iter().find(|m| m.default);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Model {
    /// Its name, as a send's `model`.
    pub id: String,
    /// `local` or `openai`.
    pub provider: String,
    /// `ready`, `loading` or `failed`.
    pub state: String,
    /// Its context length, when known.
    #[serde(default)]
    pub context_length: Option<u64>,
    /// Whether it is the default.
    pub default: bool,
}

/// Tokens used per day and model, with totals.
///
/// ```no_run
/// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
/// let usage = client.usage().await?;
/// println!("{} tokens since {}", usage.totals.total_tokens, usage.from);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UsageReport {
    /// The first day (UTC).
    #[serde(with = "day")]
    pub from: time::Date,
    /// The last day (UTC).
    #[serde(with = "day")]
    pub to: time::Date,
    /// Each day and model with usage, the oldest first.
    pub days: Vec<UsageDay>,
    /// The sums.
    pub totals: UsageCounts,
}

/// One day and model of a [`UsageReport`].
///
/// ```
/// let d: confab_client::UsageDay = serde_json::from_str(r#"{"date": "2026-12-05", "model": "m",
///     "answers": 1, "estimated_answers": 0, "prompt_tokens": 5, "completion_tokens": 3,
///     "total_tokens": 8}"#)?;
/// assert_eq!(d.counts.total_tokens, 8);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UsageDay {
    /// The day (UTC).
    #[serde(with = "day")]
    pub date: time::Date,
    /// The model.
    pub model: String,
    /// The counts.
    #[serde(flatten)]
    pub counts: UsageCounts,
}

/// Counts of answers and tokens.
///
/// ```
/// let c: confab_client::UsageCounts = serde_json::from_str(r#"{"answers": 1,
///     "estimated_answers": 1, "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}"#)?;
/// assert_eq!(c.answers, 1);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct UsageCounts {
    /// Answers.
    pub answers: u64,
    /// Answers whose tokens were estimated.
    pub estimated_answers: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Answer tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// A user's own token allowances, as an admin sets them (`None`: the
/// service's default; `Some(0)`: no limit).
///
/// ```
/// let a: confab_client::OwnAllowance =
///     serde_json::from_str(r#"{"daily_tokens": 50000, "monthly_tokens": null}"#)?;
/// assert_eq!(a.daily_tokens, Some(50000));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct OwnAllowance {
    /// Tokens per day.
    pub daily_tokens: Option<u64>,
    /// Tokens per calendar month.
    pub monthly_tokens: Option<u64>,
}

/// A user's allowances: the day's and the month's, and their own setting.
///
/// ```no_run
/// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
/// let allowance = client.allowance().await?;
/// if allowance.daily.remaining == Some(0) {
///     println!("used up until {}", allowance.daily.resets_at);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Allowance {
    /// Today's (UTC).
    pub daily: AllowancePart,
    /// This calendar month's (UTC).
    pub monthly: AllowancePart,
    /// The user's own setting.
    pub own: OwnAllowance,
}

/// One period of an [`Allowance`].
///
/// ```
/// let p: confab_client::AllowancePart = serde_json::from_str(r#"{"limit": null, "used": 3,
///     "remaining": null, "resets_at": "2026-12-06T00:00:00Z"}"#)?;
/// assert_eq!(p.limit, None);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AllowancePart {
    /// The tokens allowed (`None`: no limit).
    pub limit: Option<u64>,
    /// The tokens used.
    pub used: u64,
    /// What is left (`None`: no limit).
    pub remaining: Option<u64>,
    /// When the period starts again.
    #[serde(with = "time::serde::rfc3339")]
    pub resets_at: OffsetDateTime,
}
