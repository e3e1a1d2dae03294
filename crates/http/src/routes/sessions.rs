//! The caller's login sessions: list them, end one, end all.

use actix_web::http::header::SET_COOKIE;
use actix_web::{HttpResponse, web};
use confab_app::{AppError, SessionView};
use confab_domain::{FamilyId, rfc3339};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::cookie;
use crate::ApiError;
use crate::State;
use crate::auth::AuthUser;
use crate::error::ErrorBody;

/// A live login session (a login and the refreshes that followed it).
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionBody {
    /// Its id: `DELETE /api/v1/auth/sessions/{id}` ends it.
    id: String,
    /// When it was opened (the login), RFC 3339.
    created_at: String,
    /// When it last got a token pair (the login or the latest refresh).
    last_used_at: String,
    /// When its refresh token expires, ending it unless refreshed.
    expires_at: String,
    /// The `User-Agent` it logged in with (at most 256 characters), if any.
    user_agent: Option<String>,
    /// The client address it logged in from, as the trusted-proxy rules
    /// give it.
    client_address: Option<String>,
    /// Whether it is the session of the access token of this request.
    current: bool,
}

impl SessionBody {
    fn of(view: &SessionView) -> Result<Self, ApiError> {
        let r = &view.record;
        Ok(Self {
            id: r.id.to_string(),
            created_at: rfc3339(r.created_at).map_err(AppError::from)?,
            last_used_at: rfc3339(r.last_used_at).map_err(AppError::from)?,
            expires_at: rfc3339(r.expires_at).map_err(AppError::from)?,
            user_agent: r.origin.user_agent.clone(),
            client_address: r.origin.client.clone(),
            current: view.current,
        })
    }
}

/// The caller's live sessions.
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionList {
    /// The most recently used first.
    items: Vec<SessionBody>,
}

/// The caller's live login sessions, the most recently used first.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sessions",
    operation_id = "list_sessions",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The live sessions; `current` marks this one.", body = SessionList),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    state: State,
    AuthUser(caller): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let sessions = state.accounts.sessions(&caller).await?;
    let items = sessions
        .iter()
        .map(SessionBody::of)
        .collect::<Result<_, _>>()?;
    Ok(HttpResponse::Ok().json(SessionList { items }))
}

/// Ends one of the caller's sessions: its refresh token stops working and
/// its access tokens are refused at once, on every instance.
#[utoipa::path(
    delete,
    path = "/api/v1/auth/sessions/{id}",
    operation_id = "end_session",
    tag = "auth",
    params(("id" = uuid::Uuid, Path, description = "The session's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Ended. Ending the caller's own session is a logout."),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "No live session of the caller's has that id.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn end(
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: FamilyId = id.parse().map_err(|_| AppError::NotFound)?;
    state.accounts.end_session(&caller, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Which sessions a logout everywhere ends.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogoutAllQuery {
    /// Keep the caller's own session (default: end it too).
    keep_current: Option<bool>,
}

/// Ends every session of the caller's (or every other one, with
/// `keep_current=true`).
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout-all",
    operation_id = "logout_all",
    tag = "auth",
    params(LogoutAllQuery),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Ended; without `keep_current` the refresh cookie is cleared too."),
        (status = 400, description = "An unknown query parameter, or `keep_current` not a boolean.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn logout_all(
    state: State,
    AuthUser(caller): AuthUser,
    q: web::Query<LogoutAllQuery>,
) -> Result<HttpResponse, ApiError> {
    let keep_current = q.keep_current.unwrap_or(false);
    state.accounts.logout_all(&caller, keep_current).await?;
    let mut res = HttpResponse::NoContent();
    if !keep_current {
        res.insert_header((SET_COOKIE, cookie("", 0)?));
    }
    Ok(res.finish())
}
