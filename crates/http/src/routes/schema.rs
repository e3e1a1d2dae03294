//! Schemas of bodies rendered by domain types, for the OpenAPI document.

use serde::Serialize;
use utoipa::ToSchema;

/// Who wrote a message.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuthorView {
    /// `user`, `assistant`, `system` or `tool`.
    role: String,
}

/// A message's content.
#[derive(Serialize, ToSchema)]
pub(crate) struct ContentView {
    /// Always `text`.
    content_type: String,
    /// The text, in parts.
    parts: Vec<String>,
}

/// A message's metadata.
#[derive(Serialize, ToSchema)]
pub(crate) struct MessageMetadataView {
    /// The model that generated it (assistant messages).
    model_slug: Option<String>,
    /// The message it follows.
    parent_id: Option<String>,
    /// Present and true once an assistant message has ended.
    is_complete: Option<bool>,
}

/// A message, as `GET /conversations/{id}`, the `input_message` event and
/// the stream's `add` delta all render it (so replaying a stream's deltas
/// gives exactly this).
#[derive(Serialize, ToSchema)]
pub(crate) struct MessageView {
    /// Unique within the conversation (`msg_001`, or generated).
    id: String,
    /// Who wrote it (seed shape).
    author: AuthorView,
    /// Who wrote it.
    role: String,
    /// Creation, seconds since the Unix epoch with milliseconds.
    create_time: f64,
    /// Last change, seconds since the Unix epoch with milliseconds: the
    /// creation time until the message changes (an answer's final delta
    /// sets it to the time stored with its final text).
    update_time: f64,
    /// Creation (RFC 3339).
    created_at: String,
    /// The text.
    content: ContentView,
    /// `in_progress`, `finished_successfully`, `finished_partial_completion` or `failed`.
    status: String,
    /// Model, parent, completion.
    metadata: MessageMetadataView,
    /// Assistant messages that have ended: whether the model ended its turn.
    end_turn: Option<bool>,
}
