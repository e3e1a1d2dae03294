//! A generation's stream: resume it, stop it.

use actix_web::http::header::HeaderName;
use actix_web::{HttpRequest, HttpResponse, web};

use super::conversations::conversation_id;
use crate::ApiError;
use crate::State;
use crate::auth::AuthUser;
use crate::error::ErrorBody;
use crate::sse;

const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const RESUME_TOKEN: HeaderName = HeaderName::from_static("x-resume-token");

fn header(req: &HttpRequest, name: &HeaderName) -> Result<Option<String>, ApiError> {
    req.headers()
        .get(name)
        .map(|v| {
            v.to_str().map(|s| s.trim().to_owned()).map_err(|_| {
                ApiError::malformed(Some(name.as_str().to_owned()), "must be visible ASCII")
            })
        })
        .transpose()
}

/// Resumes the stream of the conversation's latest generation: the events
/// after `Last-Event-ID` (all without it), then live ones while it runs,
/// for a while after it ends. Needs the stream's
/// `resume_conversation_token` in `X-Resume-Token`.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/{id}/stream",
    operation_id = "resume_stream",
    tag = "conversations",
    params(
        ("id" = uuid::Uuid, Path, description = "The conversation's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "The `id:` of the last event received"),
        ("X-Resume-Token" = String, Header, description = "The stream's `resume_conversation_token`"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rest of the event stream (delta encoding v1).", content_type = "text/event-stream", body = String),
        (status = 400, description = "A header that is not visible ASCII.", body = ErrorBody),
        (status = 422, description = "No resume token, or a `Last-Event-ID` the stream never gave.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "The resume token is invalid, expired, or not for this conversation.", body = ErrorBody),
        (status = 404, description = "No such conversation or not the caller's, or its stream is no longer kept.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn resume(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversations = &state.conversations;
    let sse_settings = state.sse;
    let id = conversation_id(&id)?;
    let token = header(&req, &RESUME_TOKEN)?;
    let last = header(&req, &LAST_EVENT_ID)?.filter(|s| !s.is_empty());
    let feed = conversations
        .resume(&caller, id, token.as_deref(), last)
        .await?;
    Ok(sse::response(feed, sse_settings))
}

/// Stops the generation running in the conversation: the model's request
/// is dropped and the answer ends `finished_partial_completion` with the
/// text so far (saved before this answers).
#[utoipa::path(
    delete,
    path = "/api/v1/conversations/{id}/stream",
    operation_id = "stop_stream",
    tag = "conversations",
    params(("id" = uuid::Uuid, Path, description = "The conversation's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Stopped."),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No such conversation or not the caller's, or nothing is being generated.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn stop(
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let conversations = &state.conversations;
    let id = conversation_id(&id)?;
    conversations.stop(&caller, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
