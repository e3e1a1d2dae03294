//! The caller's account, and the admin's view of every account.

use actix_web::{HttpRequest, HttpResponse, web};
use confab_app::{AppError, PasswordChange};
use confab_domain::{DomainError, Field, PageRequest, Password, UserId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::UserBody;
use crate::ApiError;
use crate::State;
use crate::auth::{AdminUser, AuthUser};
use crate::client::client_key;
use crate::error::ErrorBody;
use crate::extract::Json;

/// The caller's own account.
#[utoipa::path(
    get,
    path = "/api/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller.", body = UserBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn me(state: State, AuthUser(caller): AuthUser) -> Result<HttpResponse, ApiError> {
    let accounts = &state.accounts;
    let user = accounts.me(&caller).await?;
    Ok(HttpResponse::Ok().json(UserBody::from_user(&user)?))
}

/// A change of the caller's password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PasswordChangeRequest {
    /// The password the account has now.
    #[schema(schema_with = crate::fields::presented_password)]
    current_password: String,
    /// The new one, as a new account's (and not the current one).
    #[schema(schema_with = crate::fields::new_password)]
    new_password: String,
}

/// Changes the caller's password. The current one must be given; the
/// attempt is limited and counted as a login is. Every other session of the
/// caller's ends at once; the caller's own stays logged in.
#[utoipa::path(
    post,
    path = "/api/v1/users/me/password",
    operation_id = "change_password",
    tag = "users",
    request_body = PasswordChangeRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Changed; every other session is ended."),
        (status = 400, description = "A malformed body.", body = ErrorBody),
        (status = 401, description = "Missing or refused access token (`AUTH_REQUIRED`, `TOKEN_EXPIRED`), or the current password is wrong (`INVALID_CREDENTIALS`).", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 422, description = "The new password breaks the policy (`field`: `new_password`), or a password is too long.", body = ErrorBody),
        (status = 429, description = "Too many attempts (the login limits); see `Retry-After`.", body = ErrorBody),
    ),
)]
pub(crate) async fn change_password(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    Json(body): Json<PasswordChangeRequest>,
) -> Result<HttpResponse, ApiError> {
    let current = Password::presented(&body.current_password).map_err(|e| {
        AppError::from(match e {
            DomainError::Invalid { message, .. } => {
                DomainError::invalid(Field::CurrentPassword, message)
            }
            other => other,
        })
    })?;
    state
        .accounts
        .change_password(
            &caller,
            PasswordChange {
                current,
                new: body.new_password,
                client: client_key(&req, &state.trusted_proxies),
            },
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The confirmation of an account's deletion.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccountDeletionRequest {
    /// The account's password.
    #[schema(schema_with = crate::fields::presented_password)]
    password: String,
}

/// Deletes the caller's account and everything of it: its conversations
/// and messages, its sessions (every token of it refused at once, on every
/// instance), its idempotency records and cached entries; any answer it is
/// generating is stopped first. The password is checked as a login's is
/// (the same limits). What is deleted, and when, is in docs/security.md.
#[utoipa::path(
    delete,
    path = "/api/v1/users/me",
    operation_id = "delete_own_account",
    tag = "users",
    request_body = AccountDeletionRequest,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; the caller's tokens no longer work."),
        (status = 400, description = "A malformed body.", body = ErrorBody),
        (status = 401, description = "Missing or refused access token (`AUTH_REQUIRED`, `TOKEN_EXPIRED`; a deleted account's tokens are refused), or the password is wrong (`INVALID_CREDENTIALS`).", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 422, description = "The password is too long.", body = ErrorBody),
        (status = 429, description = "Too many attempts (the login limits); see `Retry-After`.", body = ErrorBody),
        (status = 503, description = "A store failed part-way; what was deleted stays deleted and a retry (or an admin's deletion) finishes the rest.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_me(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    Json(body): Json<AccountDeletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let password = Password::presented(&body.password).map_err(AppError::from)?;
    state
        .accounts
        .delete_own_account(
            &caller,
            &password,
            &client_key(&req, &state.trusted_proxies),
            &state.conversations,
        )
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Paging of a list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Items to skip.
    #[param(schema_with = crate::fields::offset)]
    offset: Option<u32>,
    /// Items to return.
    #[param(schema_with = crate::fields::limit)]
    limit: Option<u32>,
}

/// A page of users.
#[derive(Serialize, ToSchema)]
pub(crate) struct UserPage {
    /// The users, oldest first.
    items: Vec<UserBody>,
    /// The window's size.
    limit: u32,
    /// The window's start.
    offset: u32,
    /// How many users there are.
    total: u64,
}

/// Every account, oldest first (admins only).
#[utoipa::path(
    get,
    path = "/api/v1/admin/users",
    tag = "admin",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of users.", body = UserPage),
        (status = 400, description = "A bad `offset` or `limit`.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "The caller is not an admin.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    state: State,
    AdminUser(caller): AdminUser,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let accounts = &state.accounts;
    let page = PageRequest::new(
        query.offset.unwrap_or(0),
        query.limit.unwrap_or(PageRequest::DEFAULT_LIMIT),
    )
    .map_err(confab_app::AppError::from)?;
    let users = accounts.list_users(&caller, page).await?;
    Ok(HttpResponse::Ok().json(UserPage {
        items: users
            .items
            .iter()
            .map(UserBody::from_user)
            .collect::<Result<_, _>>()?,
        limit: page.limit(),
        offset: page.offset(),
        total: users.total,
    }))
}

/// A change of an account's status.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserPatch {
    /// Disable (true) or enable (false) the account.
    disabled: bool,
}

/// Disables or enables an account (admins only). Disabling revokes all its
/// sessions at once.
#[utoipa::path(
    patch,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The user's id")),
    request_body = UserPatch,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The updated user.", body = UserBody),
        (status = 400, description = "A bad body, or an admin disabling themselves.", body = ErrorBody),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "The caller is not an admin.", body = ErrorBody),
        (status = 404, description = "No such user (or a malformed id).", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
    ),
)]
pub(crate) async fn update(
    state: State,
    AdminUser(caller): AdminUser,
    id: web::Path<String>,
    Json(patch): Json<UserPatch>,
) -> Result<HttpResponse, ApiError> {
    let accounts = &state.accounts;
    let id: UserId = id.parse().map_err(|_| ApiError::not_found())?;
    let user = accounts.set_disabled(&caller, id, patch.disabled).await?;
    Ok(HttpResponse::Ok().json(UserBody::from_user(&user)?))
}

/// Deletes an account and everything of it, as the owner's own deletion
/// does (admins only; an admin deletes their own account with `DELETE
/// /api/v1/users/me`). Idempotent: an account that is gone already is
/// 204 too, and its stores are swept again.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/users/{id}",
    operation_id = "delete_user",
    tag = "admin",
    params(("id" = uuid::Uuid, Path, description = "The user's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted (or already gone)."),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 403, description = "The caller is not an admin.", body = ErrorBody),
        (status = 404, description = "A malformed id.", body = ErrorBody),
        (status = 422, description = "The id is the caller's own (`field`: `user_id`).", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
        (status = 503, description = "A store failed part-way; a retry finishes the rest.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    state: State,
    AdminUser(caller): AdminUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: UserId = id.parse().map_err(|_| ApiError::not_found())?;
    state
        .accounts
        .delete_user(&caller, id, &state.conversations)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
