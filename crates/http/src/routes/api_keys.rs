//! The caller's API keys: create one (its text shown once), list them,
//! revoke one.

use actix_web::{HttpRequest, HttpResponse, web};
use confab_app::{AppError, NewApiKey};
use confab_domain::{ApiKey, ApiKeyId, Password, rfc3339};
use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::ApiError;
use crate::State;
use crate::auth::AuthUser;
use crate::client::client_key;
use crate::error::ErrorBody;
use crate::extract::Json;

/// A key to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyRequest {
    /// What to call it.
    #[schema(schema_with = crate::fields::api_key_name)]
    name: String,
    /// What it may do.
    #[schema(schema_with = crate::fields::api_key_scopes)]
    scopes: Vec<String>,
    /// How many days it lasts (absent: until revoked).
    #[schema(schema_with = crate::fields::api_key_days)]
    #[serde(default, deserialize_with = "whole_number")]
    expires_in_days: Option<i64>,
    /// The caller's password, checked and limited as a login's.
    #[schema(schema_with = crate::fields::presented_password)]
    password: String,
}

/// A number as JSON Schema reads an integer: `852` and `852.0` alike (the
/// rule on its range is the domain's: one out of `i64` is clamped to it).
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    const LIMIT: f64 = 9.0e18;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    if n.as_u64().is_some() {
        return Ok(Some(i64::MAX));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= LIMIT => Ok(Some(i64::MAX)),
        Some(f) if f.fract() == 0.0 && f <= -LIMIT => Ok(Some(i64::MIN)),
        // Whole and within ±9e18: exact in an i64.
        #[allow(clippy::cast_possible_truncation)]
        Some(f) if f.fract() == 0.0 => Ok(Some(f as i64)),
        // Not an integer: the wrong type, as a string would be (400).
        Some(f) => Err(D::Error::invalid_type(
            Unexpected::Float(f),
            &"a whole number",
        )),
        None => Err(D::Error::custom("expected a whole number")),
    }
}

/// An API key, as its owner sees it (never its secret).
#[derive(Serialize, ToSchema)]
pub(crate) struct ApiKeyBody {
    /// Its id: `DELETE /api/v1/users/me/api-keys/{id}` revokes it.
    id: String,
    /// What its owner calls it.
    name: String,
    /// What it may do.
    scopes: Vec<String>,
    /// When it was created, RFC 3339.
    created_at: String,
    /// When it stops working, RFC 3339; null: until revoked.
    expires_at: Option<String>,
    /// When it was last used, RFC 3339, to within a minute or so; null:
    /// never.
    last_used_at: Option<String>,
    /// The first characters of its text (`cfk_` and the start of its id),
    /// to recognise it by.
    prefix: String,
}

impl ApiKeyBody {
    fn of(key: &ApiKey) -> Result<Self, ApiError> {
        let time = |t| rfc3339(t).map_err(AppError::from);
        Ok(Self {
            id: key.id.to_string(),
            name: key.name.as_str().to_owned(),
            scopes: key.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            created_at: time(key.created_at)?,
            expires_at: key.expires_at.map(time).transpose()?,
            last_used_at: key.last_used_at.map(time).transpose()?,
            prefix: format!(
                "cfk_{}",
                key.id
                    .as_uuid()
                    .simple()
                    .to_string()
                    .chars()
                    .take(8)
                    .collect::<String>()
            ),
        })
    }
}

/// A key just created, with its text: shown this once, never again.
#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedKeyBody {
    /// The key.
    #[serde(flatten)]
    details: ApiKeyBody,
    /// The key's whole text, to send as `Authorization: Bearer <key>`.
    /// Store it now: only a digest of it is kept.
    key: String,
}

/// The caller's API keys.
#[derive(Serialize, ToSchema)]
pub(crate) struct ApiKeyList {
    /// The newest first.
    items: Vec<ApiKeyBody>,
}

/// Creates an API key for a service to call the API as the caller, within
/// the key's scopes, without the caller's password. The password is asked
/// for here (checked and limited as a login's: a key outlives sessions).
/// Its text is in this response only.
#[utoipa::path(
    post,
    path = "/api/v1/users/me/api-keys",
    operation_id = "create_api_key",
    tag = "users",
    request_body = ApiKeyRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; `key` is shown this once.", body = CreatedKeyBody),
        (status = 400, description = "A malformed body.", body = ErrorBody),
        (status = 401, description = "Missing or refused access token (`AUTH_REQUIRED`, `TOKEN_EXPIRED`), or the password is wrong (`INVALID_CREDENTIALS`).", body = ErrorBody),
        (status = 409, description = "The caller has a key of that name (`field`: `name`).", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 422, description = "A bad `name`, `scopes` or `expires_in_days`, or the caller has the most keys an account may have (`field`: `name`).", body = ErrorBody),
        (status = 429, description = "Too many attempts (the login limits) or requests; see `Retry-After`.", body = ErrorBody),
    ),
)]
pub(crate) async fn create(
    req: HttpRequest,
    state: State,
    AuthUser(caller): AuthUser,
    Json(body): Json<ApiKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    let password = Password::presented(&body.password).map_err(AppError::from)?;
    let created = state
        .accounts
        .create_api_key(
            &caller,
            NewApiKey {
                name: body.name,
                scopes: body.scopes,
                expires_in_days: body.expires_in_days,
                password,
                client: client_key(&req, &state.trusted_proxies),
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(CreatedKeyBody {
        details: ApiKeyBody::of(&created.key)?,
        key: created.text,
    }))
}

/// The caller's API keys, the newest first, expired ones included (never
/// their text).
#[utoipa::path(
    get,
    path = "/api/v1/users/me/api-keys",
    operation_id = "list_api_keys",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's keys.", body = ApiKeyList),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    state: State,
    AuthUser(caller): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let keys = state.accounts.api_keys(&caller).await?;
    let items = keys.iter().map(ApiKeyBody::of).collect::<Result<_, _>>()?;
    Ok(HttpResponse::Ok().json(ApiKeyList { items }))
}

/// Revokes one of the caller's API keys: the next request with it is
/// refused, on every instance.
#[utoipa::path(
    delete,
    path = "/api/v1/users/me/api-keys/{id}",
    operation_id = "revoke_api_key",
    tag = "users",
    params(("id" = uuid::Uuid, Path, description = "The key's id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Revoked."),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 404, description = "The caller has no key with that id.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke(
    state: State,
    AuthUser(caller): AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: ApiKeyId = id.parse().map_err(|_| AppError::NotFound)?;
    state.accounts.revoke_api_key(&caller, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
