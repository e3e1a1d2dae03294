//! `POST /api/v1/auth/register`.

use actix_web::HttpResponse;
use actix_web::web;
use confab_app::{Accounts, AppError, Registration};
use confab_domain::{Password, User};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::ApiError;
use crate::error::ErrorBody;
use crate::extract::Json;

/// A new account. Unknown fields are refused (`role` can't be chosen).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    /// 3..=32 characters of letters, digits, `_` and `-`; stored lower-case.
    #[schema(
        example = "alice",
        min_length = 3,
        max_length = 32,
        pattern = "^[A-Za-z0-9_-]+$"
    )]
    username: String,
    /// A valid address; stored lower-case.
    #[schema(example = "alice@example.com", max_length = 254, format = "email")]
    email: String,
    /// 8..=128 characters, not containing the username, not a common password.
    #[schema(
        example = "correct horse battery staple",
        min_length = 8,
        max_length = 128,
        format = "password"
    )]
    password: String,
}

/// A user as the API shows it: never a hash or an internal field.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserBody {
    /// Stable id.
    id: uuid::Uuid,
    /// Login name.
    #[schema(example = "alice")]
    username: String,
    /// E-mail address.
    #[schema(example = "alice@example.com")]
    email: String,
    /// `user` or `admin`.
    #[schema(example = "user")]
    role: String,
    /// RFC 3339 creation time.
    #[schema(example = "2026-11-21T09:30:00Z")]
    created_at: String,
}

impl UserBody {
    fn from_user(user: &User) -> Result<Self, ApiError> {
        Ok(Self {
            id: *user.id.as_uuid(),
            username: user.username.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            role: user.role.as_str().to_owned(),
            created_at: user
                .created_at
                .format(&Rfc3339)
                .map_err(ApiError::internal)?,
        })
    }
}

/// Opens an account with role `user`.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account was created.", body = UserBody),
        (status = 400, description = "A field is invalid; `field` names it.", body = ErrorBody),
        (status = 409, description = "The username or e-mail is taken.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 503, description = "Hashing capacity or the database is exhausted; retry after `Retry-After`.", body = ErrorBody),
        (status = 500, description = "Unexpected failure; logged with the request id.", body = ErrorBody),
    ),
)]
pub(crate) async fn register(
    accounts: web::Data<Accounts>,
    Json(body): Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let password = Password::presented(&body.password).map_err(AppError::from)?;
    let user = accounts
        .register(Registration {
            username: body.username,
            email: body.email,
            password,
        })
        .await?;
    Ok(HttpResponse::Created().json(UserBody::from_user(&user)?))
}
