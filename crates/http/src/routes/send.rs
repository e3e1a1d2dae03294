//! Sending a message: `POST /api/v1/conversations`,
//! `POST /api/v1/conversations/{id}/messages` and the seed's
//! `POST /backend-api/f/conversation` (same handler, three entries).

use actix_web::http::StatusCode;
use actix_web::http::header::ACCEPT;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use confab_app::{AnswerEnd, Conversations, SendAction, SendMessage, Started};
use confab_domain::{
    Conversation, ConversationId, ErrorCode, Message, MessageDocument, MessageId, MessageStatus,
};
use confab_ports::AccessClaims;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::conversations::conversation_id;
use super::schema::MessageView;
use crate::ApiError;
use crate::auth::{AuthUser, account_version};
use crate::error::ErrorBody;
use crate::extract::{BodyLimits, parse, read_json_body};
use crate::middleware::{Keyed, claim, requested_key};
use crate::negotiate::{Preferred, preferred};
use crate::sse;
use crate::{AppState, State};

/// A message's content as sent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContentInput {
    /// Must be `text`.
    #[schema(schema_with = crate::fields::text_type)]
    content_type: String,
    /// The text.
    #[schema(schema_with = crate::fields::parts)]
    parts: Vec<String>,
}

/// The message to send.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageInput {
    /// Its id; generated when absent.
    #[schema(schema_with = crate::fields::message_id)]
    id: Option<String>,
    /// Must be `user`.
    #[schema(schema_with = crate::fields::user_role)]
    role: String,
    /// The text.
    content: ContentInput,
}

/// Generation options.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendOptions {
    /// Sampling temperature.
    #[schema(minimum = 0.0, maximum = 2.0)]
    temperature: Option<f64>,
}

/// A message to send on the seed's route (seed `000`'s shape).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendBody {
    /// Must be the caller's id when present (403 otherwise).
    #[schema(value_type = Option<uuid::Uuid>)]
    user_id: Option<String>,
    /// The conversation to continue; absent starts a new one (`next`
    /// only).
    #[schema(value_type = Option<uuid::Uuid>)]
    conversation_id: Option<String>,
    /// What the send asks for: `next` (the default), `variant` or
    /// `continue`.
    #[schema(schema_with = crate::fields::action)]
    action: Option<String>,
    /// For `next`, exactly one message, of role `user`; for `variant` and
    /// `continue`, none.
    #[serde(default)]
    #[schema(max_items = 1)]
    messages: Vec<MessageInput>,
    /// For `next`, the message it follows: any message of the
    /// conversation (an edit is a new question under the edited one's
    /// parent); absent, the conversation's current node. For `variant`,
    /// the question to answer again (absent: the current node's); for
    /// `continue`, the answer to go on with.
    #[schema(schema_with = crate::fields::parent_message_id)]
    parent_message_id: Option<String>,
    /// A configured model; absent or `default` for the default.
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,100}$")]
    model: Option<String>,
    /// Options.
    metadata: Option<SendOptions>,
}

/// A message to send on `POST /api/v1/conversations/{id}/messages`: the
/// conversation is the path's.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageBody {
    /// Must be the caller's id when present (403 otherwise).
    #[schema(value_type = Option<uuid::Uuid>)]
    user_id: Option<String>,
    /// What the send asks for: `next` (the default), `variant` or
    /// `continue`.
    #[schema(schema_with = crate::fields::action)]
    action: Option<String>,
    /// For `next`, exactly one message, of role `user`; for `variant` and
    /// `continue`, none.
    #[serde(default)]
    #[schema(max_items = 1)]
    messages: Vec<MessageInput>,
    /// For `next`, the message it follows: any message of the
    /// conversation (an edit is a new question under the edited one's
    /// parent); absent, the conversation's current node. For `variant`,
    /// the question to answer again (absent: the current node's); for
    /// `continue`, the answer to go on with.
    #[schema(schema_with = crate::fields::parent_message_id)]
    parent_message_id: Option<String>,
    /// A configured model; absent or `default` for the default.
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,100}$")]
    model: Option<String>,
    /// Options.
    metadata: Option<SendOptions>,
}

/// A conversation's first message (`POST /api/v1/conversations`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewConversationBody {
    /// Must be the caller's id when present (403 otherwise).
    #[schema(value_type = Option<uuid::Uuid>)]
    user_id: Option<String>,
    /// Exactly one message, of role `user`.
    #[schema(min_items = 1, max_items = 1)]
    messages: Vec<MessageInput>,
    /// A new conversation has no message to follow: present, it is 404.
    #[schema(schema_with = crate::fields::parent_message_id)]
    parent_message_id: Option<String>,
    /// A configured model; absent or `default` for the default. Named, it
    /// is also the conversation's default model.
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,100}$")]
    model: Option<String>,
    /// The conversation's own system prompt, used by every send in it.
    #[schema(schema_with = crate::fields::system_prompt)]
    system_prompt: Option<String>,
    /// Options.
    metadata: Option<SendOptions>,
}

impl From<MessageBody> for SendBody {
    fn from(body: MessageBody) -> Self {
        Self {
            user_id: body.user_id,
            conversation_id: None,
            action: body.action,
            messages: body.messages,
            parent_message_id: body.parent_message_id,
            model: body.model,
            metadata: body.metadata,
        }
    }
}

impl NewConversationBody {
    /// The send, and the conversation's system prompt.
    fn split(self) -> (SendBody, Option<String>) {
        let send = SendBody {
            user_id: self.user_id,
            conversation_id: None,
            action: None,
            messages: self.messages,
            parent_message_id: self.parent_message_id,
            model: self.model,
            metadata: self.metadata,
        };
        (send, self.system_prompt)
    }
}

/// The answer in JSON mode (`Accept: application/json`).
#[derive(Serialize, ToSchema)]
pub(crate) struct SentBody<'a> {
    /// The conversation.
    conversation_id: String,
    /// Its title (generated for a new conversation).
    title: String,
    /// The stored user message.
    #[schema(value_type = MessageView)]
    input_message: MessageDocument<'a>,
    /// The finished assistant message.
    #[schema(value_type = MessageView)]
    message: MessageDocument<'a>,
}

fn invalid(field: &str, message: &'static str) -> ApiError {
    ApiError::validation(Some(field.to_owned()), message)
}

/// The send as the use case takes it; `must_be_new` for the route that
/// only starts conversations.
fn input(
    body: SendBody,
    path_id: Option<ConversationId>,
    must_be_new: bool,
) -> Result<SendMessage, ApiError> {
    let body_id = body
        .conversation_id
        .as_deref()
        .map(|raw| raw.parse::<ConversationId>())
        .transpose()
        .map_err(|_| invalid("conversation_id", "must be a conversation id (a UUID)"))?;
    // Only the seed's route takes a body id, and it has no path id.
    let conversation_id = path_id.or(body_id);
    let action = match body.action.as_deref() {
        None | Some("next") => SendAction::Next,
        Some("variant") => SendAction::Variant,
        Some("continue") => SendAction::Continue,
        Some(_) => return Err(invalid("action", "must be next, variant or continue")),
    };
    let mut messages = body.messages;
    let (message_id, parts) = if action == SendAction::Next {
        if messages.len() != 1 {
            return Err(invalid("messages", "must hold exactly one message"));
        }
        let message = messages.remove(0);
        if message.role != "user" {
            return Err(invalid("messages[0].role", "must be user"));
        }
        if message.content.content_type != "text" {
            return Err(invalid("messages[0].content.content_type", "must be text"));
        }
        (message.id, message.content.parts)
    } else {
        if !messages.is_empty() {
            return Err(invalid(
                "messages",
                "must be empty for a variant or a continue: it answers a message already sent",
            ));
        }
        (None, Vec::new())
    };
    Ok(SendMessage {
        action,
        system_prompt: None,
        conversation_id,
        must_be_new,
        message_id,
        parent_message_id: body.parent_message_id,
        parts,
        model: body.model,
        temperature: body.metadata.and_then(|m| m.temperature),
        user_id: body.user_id,
        account_version: None,
    })
}

/// The answer the client prefers: the stream (the default) or, with
/// `Accept: application/json`, the finished message; 406 for neither.
fn mode(req: &HttpRequest) -> Result<Preferred, ApiError> {
    preferred(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()))
        .ok_or_else(ApiError::not_acceptable)
}

/// JSON mode: the finished answer, once the generation has ended; the
/// error its stream ended with when it failed.
async fn finished(
    conversations: &Conversations,
    caller: &AccessClaims,
    started: &Started,
) -> Result<HttpResponse, ApiError> {
    if let AnswerEnd::Failed(code) = started.ended().await {
        return Err(ApiError::generation_failed(code));
    }
    let (conversation, user, answer) = conversations
        .exchange(
            caller,
            started.conversation.id,
            &started.assistant_message.id,
        )
        .await?;
    sent(&conversation, &user, &answer, started.created)
}

/// The JSON answer of a send: the conversation's title, the user message
/// and its answer; 201 with `Location` when the send created the
/// conversation, else 200.
fn sent(
    conversation: &Conversation,
    user: &Message,
    answer: &Message,
    created: bool,
) -> Result<HttpResponse, ApiError> {
    let id = conversation.id;
    let body = SentBody {
        conversation_id: id.to_string(),
        title: conversation.title.as_str().to_owned(),
        input_message: MessageDocument::of(user).map_err(confab_app::AppError::from)?,
        message: MessageDocument::of(answer).map_err(confab_app::AppError::from)?,
    };
    let mut res = if created {
        let mut res = HttpResponse::build(StatusCode::CREATED);
        res.insert_header((
            actix_web::http::header::LOCATION,
            format!("/api/v1/conversations/{id}"),
        ));
        res
    } else {
        HttpResponse::build(StatusCode::OK)
    };
    Ok(res.json(body))
}

/// A JSON-mode send retried with its `Idempotency-Key`: what the first
/// request answered, once the answer it started has ended (followed on its
/// stream while that is kept): the same 201 or 200 body, or the same
/// model error.
pub(crate) async fn replayed_json(
    conversations: &Conversations,
    caller: &AccessClaims,
    (conversation, answer): (ConversationId, &MessageId),
    created: bool,
) -> Result<HttpResponse, ApiError> {
    let mut failure = None;
    match conversations
        .reattach(caller, conversation, answer, None)
        .await
    {
        Ok(mut feed) => {
            while let Some(logged) = feed.next().await.map_err(confab_app::AppError::from)? {
                failure = failure.or_else(|| error_code(&logged.event));
            }
        }
        // No stream kept any more: the stored answer is final.
        Err(confab_app::AppError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let (stored, user, message) = conversations.exchange(caller, conversation, answer).await?;
    match message.status {
        MessageStatus::Failed => {
            return Err(ApiError::generation_failed(
                failure.unwrap_or(ErrorCode::UpstreamError),
            ));
        }
        // Its stream ended (the log failed) while it still runs elsewhere.
        MessageStatus::InProgress => {
            return Err(ApiError::unavailable(
                "the answer is still being generated",
                1,
            ));
        }
        MessageStatus::FinishedSuccessfully | MessageStatus::FinishedPartialCompletion => {}
    }
    sent(&stored, &user, &message, created)
}

/// Whether the send of `body` to `path` started its conversation (and so
/// answered 201): the route that only starts them, or the seed's route
/// without a `conversation_id`. A retry is the same request as the first
/// (its fingerprint matched), so it tells what the first did; the answer
/// can't (a regeneration or a continue of the first answer looks alike).
pub(crate) fn starts_conversation(path: &str, body: &[u8]) -> bool {
    match path {
        "/api/v1/conversations" => true,
        "/backend-api/f/conversation" => serde_json::from_slice::<serde_json::Value>(body)
            .is_ok_and(|b| {
                b.get("conversation_id")
                    .is_none_or(serde_json::Value::is_null)
            }),
        _ => false,
    }
}

/// The code of a stream's `error` event.
fn error_code(event: &confab_domain::WireEvent) -> Option<ErrorCode> {
    #[derive(Deserialize)]
    struct ErrorEvent {
        error: ErrorDetail,
    }
    #[derive(Deserialize)]
    struct ErrorDetail {
        code: ErrorCode,
    }
    let parsed: ErrorEvent = serde_json::from_str(&event.data).ok()?;
    Some(parsed.error.code)
}

/// The conversation a send continues (from the path), and whether it
/// must start one.
#[derive(Clone, Copy)]
struct Target<'a> {
    path_id: Option<&'a str>,
    must_be_new: bool,
    /// The body's shape.
    shape: Shape,
}

/// The shape of a send's body.
#[derive(Clone, Copy)]
enum Shape {
    /// Seed `000`'s [`SendBody`] (with `conversation_id`).
    Seed,
    /// A [`MessageBody`].
    Message,
    /// A [`NewConversationBody`].
    New,
}

/// A send: reads its body; with an `Idempotency-Key`, claims it, answers a
/// retry from what the first request left, and records the send as its
/// answer the moment the message is stored (the typed [`Started`] the app
/// returns) or, when it is refused, records the refusal.
async fn send(
    req: &HttpRequest,
    state: &State,
    caller: &AccessClaims,
    payload: web::Payload,
    target: Target<'_>,
) -> Result<HttpResponse, ApiError> {
    let key = requested_key(req)?;
    let limits = BodyLimits {
        max_bytes: state.body.max_send_bytes,
        ..state.body
    };
    let body = read_json_body(req, payload.into_inner(), limits).await?;
    let Some(key) = key else {
        let (mode, started) = start(req, state, caller, &body, target).await?;
        return answer(state, caller, mode, &started).await;
    };
    match claim(state, req, caller, &key, &body).await {
        Keyed::Answer(res) => Ok(res),
        Keyed::Run(claimed) => match start(req, state, caller, &body, target).await {
            Err(e) => claimed
                .record(e.error_response())
                .await
                .map_err(|e| ApiError::internal(e.to_string())),
            Ok((mode, started)) => {
                // The message is stored: a retry re-attaches to this
                // answer from now on, whatever happens next.
                claimed
                    .record_stream(
                        started.conversation.id,
                        started.assistant_message.id.clone(),
                    )
                    .await;
                answer(state, caller, mode, &started).await
            }
        },
    }
}

/// Parses and checks the send, and starts the answer.
async fn start(
    req: &HttpRequest,
    state: &AppState,
    caller: &AccessClaims,
    body: &[u8],
    target: Target<'_>,
) -> Result<(Preferred, Started), ApiError> {
    let (body, system_prompt) = match target.shape {
        Shape::Seed => (parse(body)?, None),
        Shape::Message => (parse::<MessageBody>(body)?.into(), None),
        Shape::New => parse::<NewConversationBody>(body)?.split(),
    };
    let path_id = target.path_id.map(conversation_id).transpose()?;
    let mut input = input(body, path_id, target.must_be_new)?;
    input.system_prompt = system_prompt;
    input.account_version = account_version(req);
    let mode = mode(req)?;
    let started = state.conversations.send(caller, input).await?;
    Ok((mode, started))
}

/// The answer's stream, or in JSON mode the finished answer.
async fn answer(
    state: &AppState,
    caller: &AccessClaims,
    mode: Preferred,
    started: &Started,
) -> Result<HttpResponse, ApiError> {
    let conversations = &state.conversations;
    match mode {
        Preferred::EventStream => {
            let feed = conversations
                .follow(caller, started.conversation.id)
                .await?;
            Ok(sse::response(feed, state.sse))
        }
        Preferred::Json => finished(conversations, caller, started).await,
    }
}

/// Starts a new conversation with its first message; the answer streams
/// (delta encoding v1), or with `Accept: application/json` is returned
/// when finished.
#[utoipa::path(
    post,
    path = "/api/v1/conversations",
    operation_id = "create_conversation",
    tag = "conversations",
    request_body = NewConversationBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The answer's event stream (delta encoding v1).", content_type = "text/event-stream", body = String),
        (status = 201, description = "JSON mode: the finished answer.", body = SentBody,
            headers(("Location" = String, description = "The new conversation: `/api/v1/conversations/{id}`."))),
        (status = 400, description = "A bad body (unknown fields, NUL bytes, bounds).", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "`user_id` is not the caller.", body = ErrorBody),
        (status = 404, description = "`parent_message_id` names no message: a new conversation has none.", body = ErrorBody),
        (status = 406, description = "Neither SSE nor JSON is acceptable.", body = ErrorBody),
        (status = 409, description = "The message id is taken.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 429, description = "Rate limited, or too many answers at once (`RATE_LIMITED`), or the caller's token allowance is used up (`QUOTA_EXCEEDED`); see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
        (status = 502, description = "JSON mode: the model's server failed.", body = ErrorBody),
        (status = 503, description = "No model configured, or a dependency is down.", body = ErrorBody),
        (status = 504, description = "JSON mode: the model timed out.", body = ErrorBody),
    ),
)]
pub(crate) async fn create(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let target = Target {
        path_id: None,
        must_be_new: true,
        shape: Shape::New,
    };
    send(&req, &state, &caller, payload, target).await
}

/// Sends the next message of one of the caller's conversations.
#[utoipa::path(
    post,
    path = "/api/v1/conversations/{id}/messages",
    operation_id = "send_message",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    request_body = MessageBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The answer's event stream (delta encoding v1), or in JSON mode the finished answer.", content(
            (String = "text/event-stream"),
            (SentBody = "application/json"),
        )),
        (status = 400, description = "A bad body (unknown fields, NUL bytes, bounds).", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "`user_id` is not the caller.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's; or `parent_message_id` names no message of it (`field`).", body = ErrorBody),
        (status = 406, description = "Neither SSE nor JSON is acceptable.", body = ErrorBody),
        (status = 409, description = "The message id is taken, or an answer is still being generated.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 429, description = "Rate limited, or too many answers at once (`RATE_LIMITED`), or the caller's token allowance is used up (`QUOTA_EXCEEDED`); see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
        (status = 502, description = "JSON mode: the model's server failed.", body = ErrorBody),
        (status = 503, description = "No model configured, or a dependency is down.", body = ErrorBody),
        (status = 504, description = "JSON mode: the model timed out.", body = ErrorBody),
    ),
)]
pub(crate) async fn message(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let target = Target {
        path_id: Some(id.as_str()),
        must_be_new: false,
        shape: Shape::Message,
    };
    send(&req, &state, &caller, payload, target).await
}

/// The seed's send: continues `conversation_id`, or starts a new
/// conversation without one.
#[utoipa::path(
    post,
    path = "/backend-api/f/conversation",
    operation_id = "backend_send",
    tag = "chatgpt-compatible",
    request_body = SendBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The answer's event stream (delta encoding v1), or in JSON mode the finished answer in a conversation that existed.", content(
            (String = "text/event-stream"),
            (SentBody = "application/json"),
        )),
        (status = 201, description = "JSON mode: the finished answer in a new conversation.", body = SentBody,
            headers(("Location" = String, description = "The new conversation: `/api/v1/conversations/{id}`."))),
        (status = 400, description = "A bad body (unknown fields, NUL bytes, bounds).", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "`user_id` is not the caller.", body = ErrorBody),
        (status = 404, description = "No such conversation, or not the caller's; or `parent_message_id` names no message of it (`field`).", body = ErrorBody),
        (status = 406, description = "Neither SSE nor JSON is acceptable.", body = ErrorBody),
        (status = 409, description = "The message id is taken, or an answer is still being generated.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 429, description = "Rate limited, or too many answers at once (`RATE_LIMITED`), or the caller's token allowance is used up (`QUOTA_EXCEEDED`); see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
        (status = 502, description = "JSON mode: the model's server failed.", body = ErrorBody),
        (status = 503, description = "No model configured, or a dependency is down.", body = ErrorBody),
        (status = 504, description = "JSON mode: the model timed out.", body = ErrorBody),
    ),
)]
pub(crate) async fn seed(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let target = Target {
        path_id: None,
        must_be_new: false,
        shape: Shape::Seed,
    };
    send(&req, &state, &caller, payload, target).await
}

#[cfg(test)]
mod tests {
    use super::starts_conversation;

    #[test]
    fn only_a_send_that_names_no_conversation_starts_one() {
        let body = br#"{"messages":[]}"#;
        assert!(starts_conversation("/api/v1/conversations", body));
        assert!(starts_conversation("/backend-api/f/conversation", body));
        assert!(starts_conversation(
            "/backend-api/f/conversation",
            br#"{"conversation_id":null}"#
        ));
        assert!(!starts_conversation(
            "/backend-api/f/conversation",
            br#"{"conversation_id":"0190c3a1-7b4e-7000-8000-000000000000","action":"variant"}"#
        ));
        assert!(!starts_conversation(
            "/api/v1/conversations/0190c3a1-7b4e-7000-8000-000000000000/messages",
            br#"{"action":"continue","parent_message_id":"a1"}"#
        ));
    }
}
