//! The models a caller may name in a send.

use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiError;
use crate::State;
use crate::auth::AuthUser;
use crate::error::ErrorBody;

/// A model a send may name.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelBody {
    /// Its name: a send's `model`.
    #[schema(example = "gpt-4o-mini")]
    id: String,
    /// Who serves it: `local` (the built-in model, in the server) or
    /// `openai` (the configured OpenAI-compatible server).
    #[schema(example = "openai")]
    provider: &'static str,
    /// `ready`; for the built-in model `loading` while its weights load
    /// (a send is then 503) and `failed` if they could not be. An
    /// OpenAI-compatible server is not probed: it is `ready`.
    #[schema(example = "ready")]
    state: &'static str,
    /// The most tokens a prompt and its answer can span, when known (the
    /// built-in model's, once loaded); `null` otherwise.
    context_length: Option<u64>,
    /// Whether a send that names no model gets this one.
    default: bool,
}

/// The models a caller may name.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModelList {
    /// The default first, then the others as configured; empty when the
    /// service has no model (a send is then 503).
    items: Vec<ModelBody>,
}

/// The models a send may name (`model`), the default first, and whether
/// each can answer now.
#[utoipa::path(
    get,
    path = "/api/v1/models",
    operation_id = "list_models",
    tag = "conversations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The models, the default first.", body = ModelList),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    state: State,
    AuthUser(_caller): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let items = state
        .conversations
        .models()
        .into_iter()
        .map(|m| ModelBody {
            id: m.id.as_str().to_owned(),
            provider: m.status.provider.as_str(),
            state: m.status.state.as_str(),
            context_length: m.status.context_length,
            default: m.is_default,
        })
        .collect();
    Ok(HttpResponse::Ok().json(ModelList { items }))
}
