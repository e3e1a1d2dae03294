//! Accounts and tokens: register, login, refresh, logout.

use actix_web::http::header::{HeaderValue, SET_COOKIE};
use actix_web::{HttpRequest, HttpResponse};
use confab_app::{AppError, AuthFailure, LoginAttempt, Registration, Session};
use confab_domain::{Password, User};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::ApiError;
use crate::State;
use crate::auth::AuthUser;
use crate::client::client_key;
use crate::error::ErrorBody;
use crate::extract::{Json, MaybeJson};

/// The refresh cookie's name; scoped to `/api/v1/auth`.
pub(crate) const REFRESH_COOKIE: &str = "confab_refresh";

/// A new account. Unknown fields are refused (`role` can't be chosen).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    /// The login name.
    #[schema(schema_with = crate::fields::username)]
    username: String,
    /// The e-mail address.
    #[schema(schema_with = crate::fields::email)]
    email: String,
    /// The password.
    #[schema(schema_with = crate::fields::new_password)]
    password: String,
}

/// Credentials: a username *or* an e-mail address (exactly one of the
/// two, neither `null`), and the password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginRequest {
    /// Username (or e-mail address).
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(schema_with = crate::fields::login_name)]
    username: Option<String>,
    /// E-mail address, instead of `username`.
    #[serde(default, deserialize_with = "crate::extract::present")]
    #[schema(schema_with = crate::fields::login_name)]
    email: Option<String>,
    /// The password.
    #[schema(schema_with = crate::fields::presented_password)]
    password: String,
}

/// A refresh token sent in the body (clients without cookies).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshRequest {
    /// The refresh token of the last login or refresh.
    refresh_token: String,
}

/// A fresh token pair.
#[derive(Serialize, ToSchema)]
pub(crate) struct TokenBody {
    /// The access token (JWT, 15 minutes).
    access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    expires_in: i64,
    /// The refresh token (one use; also set as an `HttpOnly` cookie).
    refresh_token: String,
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
    /// A disabled user can't log in or use tokens.
    disabled: bool,
    /// RFC 3339 creation time.
    #[schema(example = "2026-11-21T09:30:00Z")]
    created_at: String,
}

impl UserBody {
    pub(crate) fn from_user(user: &User) -> Result<Self, ApiError> {
        Ok(Self {
            id: *user.id.as_uuid(),
            username: user.username.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            role: user.role.as_str().to_owned(),
            disabled: user.disabled,
            created_at: user
                .created_at
                .format(&Rfc3339)
                .map_err(ApiError::internal)?,
        })
    }
}

pub(crate) fn cookie(value: &str, max_age: i64) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/api/v1/auth; Max-Age={max_age}"
    ))
    .map_err(ApiError::internal)
}

/// Seconds from now until `at`, to the nearest second (a token issued a
/// few microseconds ago still says its full lifetime).
fn seconds_until(at: confab_domain::OffsetDateTime) -> i64 {
    let left = (at - confab_domain::OffsetDateTime::now_utc())
        .as_seconds_f64()
        .round();
    // Lifetimes are configured in whole seconds, far below i64's range.
    #[allow(clippy::cast_possible_truncation)]
    let left = left as i64;
    left.max(0)
}

fn session_response(session: &Session) -> Result<HttpResponse, ApiError> {
    let refresh_max_age = seconds_until(session.refresh.expires_at);
    Ok(HttpResponse::Ok()
        .insert_header((SET_COOKIE, cookie(&session.refresh.token, refresh_max_age)?))
        .json(TokenBody {
            access_token: session.access.token.clone(),
            token_type: "Bearer",
            expires_in: seconds_until(session.access.expires_at),
            refresh_token: session.refresh.token.clone(),
        }))
}

/// Opens an account with role `user`.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account was created.", body = UserBody,
            headers(("Location" = String, description = "`/api/v1/users/me`: the account, once signed in."))),
        (status = 400, description = "A field is invalid; `field` names it.", body = ErrorBody),
        (status = 409, description = "The username or e-mail is taken.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After`.", body = ErrorBody),
        (status = 503, description = "Hashing capacity or the database is exhausted; retry after `Retry-After`.", body = ErrorBody),
        (status = 500, description = "Unexpected failure; logged with the request id.", body = ErrorBody),
    ),
)]
pub(crate) async fn register(
    req: HttpRequest,
    state: State,
    Json(body): Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let accounts = &state.accounts;
    let password = Password::presented(&body.password).map_err(AppError::from)?;
    let user = accounts
        .register(Registration {
            username: body.username,
            email: body.email,
            password,
            client: client_key(&req, &state.trusted_proxies),
        })
        .await?;
    // The new account's own view, once it signs in.
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::LOCATION, "/api/v1/users/me"))
        .json(UserBody::from_user(&user)?))
}

/// Logs in; answers a token pair and sets the refresh cookie. Limited to 5
/// attempts a minute per client address; failed logins are counted per
/// account and address (docs/security.md, "Login").
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in. The refresh token is also set as an `HttpOnly; Secure; SameSite=Strict` cookie scoped to `/api/v1/auth`.", body = TokenBody),
        (status = 400, description = "A field is missing or invalid.", body = ErrorBody),
        (status = 401, description = "`INVALID_CREDENTIALS`: unknown user, wrong password or disabled account, indistinguishably.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
        (status = 429, description = "Too many attempts; see `Retry-After` and `RateLimit`.", body = ErrorBody),
        (status = 503, description = "Hashing capacity exhausted; retry after `Retry-After`.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
    ),
)]
pub(crate) async fn login(
    req: HttpRequest,
    state: State,
    Json(body): Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let accounts = &state.accounts;
    let login = match (body.username, body.email) {
        (Some(login), None) | (None, Some(login)) => login,
        _ => {
            return Err(ApiError::validation(
                Some("username".to_owned()),
                "give either username or email",
            ));
        }
    };
    let password = Password::presented(&body.password).map_err(AppError::from)?;
    let session = accounts
        .login(LoginAttempt {
            login,
            password,
            client: client_key(&req, &state.trusted_proxies),
            address: state
                .trusted_proxies
                .client_ip(&req)
                .map(|ip| ip.to_string()),
            user_agent: req
                .headers()
                .get(actix_web::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
        .await?;
    session_response(&session)
}

/// Exchanges a refresh token (the cookie, or `refresh_token` in the body)
/// for a new pair. Each refresh token works once; presenting a used one
/// revokes its whole session.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    request_body(content = Option<RefreshRequest>, description = "Optional when the refresh cookie is sent."),
    responses(
        (status = 200, description = "A new pair; the old refresh token is used up.", body = TokenBody),
        (status = 401, description = "Missing, invalid, expired, revoked or reused refresh token.", body = ErrorBody),
        (status = 403, description = "A refresh by cookie that a browser sent from another site's page (`Sec-Fetch-Site` other than `same-origin` or `none`; without it, an `Origin` that is not this host; an allowed CORS origin passes).", body = ErrorBody),
        (status = 400, description = "A malformed body.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
        (status = 413, description = "The body is too large.", body = ErrorBody),
        (status = 415, description = "The body is not JSON.", body = ErrorBody),
    ),
)]
pub(crate) async fn refresh(
    req: HttpRequest,
    state: State,
    body: MaybeJson<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let accounts = &state.accounts;
    let token = match body.0 {
        Some(body) => Some(body.refresh_token),
        None => {
            if sent_from_another_site(&req, &state.cors) {
                return Err(ApiError::new(
                    actix_web::http::StatusCode::FORBIDDEN,
                    confab_domain::ErrorCode::Forbidden,
                    "a refresh by cookie must come from this site's own pages",
                ));
            }
            cookie_value(&req, REFRESH_COOKIE)
        }
    };
    let token = token.ok_or(ApiError::unauthorized(AuthFailure::Missing))?;
    let session = accounts.refresh(&token).await?;
    session_response(&session)
}

/// Ends the session: the refresh family is revoked and this access token
/// refused until it expires. Clears the refresh cookie.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Logged out."),
        (status = 401, description = "Missing, invalid or expired access token.", body = ErrorBody),
        (status = 429, description = "Rate limited; see `Retry-After` and the `RateLimit` headers.", body = ErrorBody),
    ),
)]
pub(crate) async fn logout(
    state: State,
    AuthUser(caller): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let accounts = &state.accounts;
    accounts.logout(&caller).await?;
    Ok(HttpResponse::NoContent()
        .insert_header((SET_COOKIE, cookie("", 0)?))
        .finish())
}

/// Whether a browser sent this request from a page of another site (not
/// this origin and not one of `cors.allowed_origins`). The refresh cookie
/// is `SameSite=Strict` already: this also refuses a cookie refresh from a
/// sibling subdomain (the same site, another origin) and from browsers
/// that ignore `SameSite`.
///
/// A browser's own `Sec-Fetch-Site` decides when it sends one (a page
/// can't set it): `same-origin` and `none` pass, anything else is refused.
/// Without it (older browsers), an `Origin` must name this host and port,
/// default ports aside: a proxy in front must pass the `Host` the browser
/// used. Clients without a browser send neither header.
fn sent_from_another_site(req: &HttpRequest, cors: &crate::CorsPolicy) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let origin = header("origin");
    if origin.is_some_and(|o| cors.allows(o)) {
        return false;
    }
    if let Some(site) = header("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = origin else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        // `null` (an opaque origin) and anything else unreadable.
        return true;
    };
    let own = header("host").or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(own) = own else {
        return true;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        _ => ":80",
    };
    let bare = |a: &str| {
        a.strip_suffix(default_port)
            .unwrap_or(a)
            .to_ascii_lowercase()
    };
    bare(authority) != bare(own)
}

/// One cookie's value, without the cookie jar machinery.
fn cookie_value(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}
