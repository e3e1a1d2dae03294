//! The API's one error shape, and the one mapping from [`AppError`] to it.
//!
//! Every failure leaves the server as
//! `{"error": {"code", "message", "field"?, "request_id"}}`. A handler's
//! error renders that body and leaves a copy in the response's extensions;
//! the request-id middleware fills in `request_id` and converts any other
//! error response (actix's own, a library's) into the same shape.

use std::borrow::Cow;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use confab_app::{AppError, AuthFailure, ReaderScope};
use confab_domain::{
    AllowancePeriod, BoxError, ErrorCode, Exhausted, Field, OffsetDateTime, rfc3339,
};
use confab_ports::{RateDecision, RatePolicy};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`VALIDATION_ERROR`, `NOT_FOUND`, …).
    #[schema(value_type = String, example = "VALIDATION_ERROR")]
    pub code: ErrorCode,
    /// A human-readable explanation. Never holds internal detail.
    #[schema(example = "must be between 3 and 32 characters")]
    pub message: String,
    /// The first invalid input field, for validation errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "username")]
    pub field: Option<String>,
    /// The request's id, also sent as the `X-Request-Id` header.
    #[schema(example = "req_0193b8a1c2d34e5f8a9b0c1d2e3f4a5b")]
    pub request_id: String,
}

impl ErrorBody {
    /// The JSON bytes of this body for request `request_id`.
    pub(crate) fn render(&self, request_id: &str) -> Vec<u8> {
        let mut body = self.clone();
        request_id.clone_into(&mut body.error.request_id);
        serde_json::to_vec(&body)
            .unwrap_or_else(|_| br#"{"error":{"code":"INTERNAL_ERROR"}}"#.to_vec())
    }

    /// The generic body for an error response that carries none of ours.
    pub(crate) fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status.as_u16() {
            400 => (ErrorCode::ValidationError, "the request is malformed"),
            401 => (ErrorCode::AuthRequired, "authentication is required"),
            403 => (ErrorCode::Forbidden, "not allowed"),
            404 => (ErrorCode::NotFound, "not found"),
            405 => (ErrorCode::MethodNotAllowed, "method not allowed"),
            406 => (ErrorCode::NotAcceptable, "no acceptable representation"),
            408 => (
                ErrorCode::RequestTimeout,
                "the request took too long to arrive",
            ),
            409 => (ErrorCode::Conflict, "conflict"),
            412 => (ErrorCode::PreconditionFailed, "the precondition failed"),
            413 => (ErrorCode::PayloadTooLarge, "the request body is too large"),
            415 => (
                ErrorCode::UnsupportedMediaType,
                "the content type is not supported",
            ),
            429 => (ErrorCode::RateLimited, "too many requests"),
            502 => (ErrorCode::UpstreamError, "an upstream service failed"),
            503 => (ErrorCode::Unavailable, "temporarily unavailable"),
            504 => (ErrorCode::UpstreamTimeout, "an upstream service timed out"),
            s if s >= 500 => (ErrorCode::InternalError, "internal error"),
            _ => (ErrorCode::ValidationError, "the request was refused"),
        };
        Self {
            error: ErrorDetail {
                code,
                message: message.to_owned(),
                field: None,
                request_id: String::new(),
            },
        }
    }
}

/// An error on its way to becoming a response.
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: Cow<'static, str>,
    field: Option<Cow<'static, str>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    source: Option<BoxError>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            headers: Vec::new(),
            source: None,
        }
    }

    /// 422 `VALIDATION_ERROR`: a well-formed request that breaks a rule
    /// (too short, out of range, not one of the allowed values), naming the
    /// field when there is one.
    pub fn validation(field: Option<String>, message: impl Into<Cow<'static, str>>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ValidationError,
            message,
        );
        e.field = field.map(Cow::Owned);
        e
    }

    /// 400 `VALIDATION_ERROR`: a request that isn't well-formed (not JSON,
    /// a value of the wrong type, an unknown or missing field, a malformed
    /// header or query), naming the field when there is one.
    pub fn malformed(field: Option<String>, message: impl Into<Cow<'static, str>>) -> Self {
        let mut e = Self::validation(field, message);
        e.status = StatusCode::BAD_REQUEST;
        e
    }

    /// 429 `RATE_LIMITED` for a cap that is not a rate (answers running,
    /// streams read, keys held), with `Retry-After` (at least a second).
    pub(crate) fn too_many(message: impl Into<Cow<'static, str>>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            message,
        );
        e.headers
            .push((RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1))));
        e
    }

    /// 412 `PRECONDITION_FAILED`: `If-Match` names a version that is no
    /// longer current.
    pub(crate) fn precondition_failed() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            ErrorCode::PreconditionFailed,
            "the resource changed since the version If-Match names: read it again",
        )
    }

    /// 404 `NOT_FOUND`.
    #[must_use]
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "not found")
    }

    /// 405 `METHOD_NOT_ALLOWED` with the `Allow` header.
    #[must_use]
    pub fn method_not_allowed(allow: &str) -> Self {
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "method not allowed",
        );
        if let Ok(value) = HeaderValue::from_str(allow) {
            e.headers.push((actix_web::http::header::ALLOW, value));
        }
        e
    }

    /// 413 `PAYLOAD_TOO_LARGE`.
    #[must_use]
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 408 `REQUEST_TIMEOUT`: the body did not arrive in time.
    #[must_use]
    pub fn request_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            "the request body did not arrive in time",
        )
    }

    /// 406 `NOT_ACCEPTABLE`: the request's `Accept` allows nothing the route answers.
    pub(crate) fn not_acceptable() -> Self {
        Self::new(
            StatusCode::NOT_ACCEPTABLE,
            ErrorCode::NotAcceptable,
            "accept text/event-stream or application/json",
        )
    }

    /// A generation that failed, by the code of its stream's `error` event.
    pub(crate) fn generation_failed(code: ErrorCode) -> Self {
        match code {
            ErrorCode::UpstreamTimeout => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::UpstreamTimeout,
                "the model took too long to answer",
            ),
            ErrorCode::UpstreamError => Self::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::UpstreamError,
                "the model's server failed",
            ),
            ErrorCode::Unavailable => Self::unavailable("the model is unavailable", 1),
            _ => Self::internal("the generation failed"),
        }
    }

    /// 415 `UNSUPPORTED_MEDIA_TYPE`.
    #[must_use]
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON (Content-Type: application/json)",
        )
    }

    /// 503 `UNAVAILABLE` with `Retry-After`.
    pub fn unavailable(message: impl Into<Cow<'static, str>>, retry_after_secs: u32) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        );
        e.headers
            .push((RETRY_AFTER, HeaderValue::from(retry_after_secs)));
        e
    }

    /// 500 `INTERNAL_ERROR`; `source` is logged, never sent.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::InternalError,
            "internal error",
        );
        e.source = Some(source.into());
        e
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone().into_owned(),
                field: self.field.clone().map(Cow::into_owned),
                request_id: String::new(),
            },
        }
    }
}

#[cfg(test)]
impl ApiError {
    pub(crate) fn body_for_tests(&self) -> Vec<u8> {
        self.body().render("")
    }
}

/// How a client names the input `field`: its JSON path in the request
/// body, its header or its query parameter. The one place these are spelled.
#[must_use]
pub(crate) const fn field_name(field: Field) -> &'static str {
    match field {
        Field::Username => "username",
        Field::Email => "email",
        Field::Password => "password",
        Field::CurrentPassword => "current_password",
        Field::NewPassword => "new_password",
        Field::Role | Field::MessageRole => "role",
        Field::Disabled => "disabled",
        Field::Title => "title",
        Field::Limit => "limit",
        Field::Offset => "offset",
        Field::Before => "before",
        Field::CurrentNode => "current_node",
        Field::Order => "order",
        Field::Query => "q",
        Field::UserId => "user_id",
        Field::ConversationId => "conversation_id",
        Field::TokenId => "jti",
        Field::SessionId => "sid",
        Field::Id => "id",
        Field::MessageId => "messages[0].id",
        Field::ParentMessageId => "parent_message_id",
        Field::Action => "action",
        Field::After => "after",
        Field::Messages => "messages",
        Field::ContentType => "messages[0].content.content_type",
        Field::ContentParts => "messages[0].content.parts",
        Field::MessageStatus => "status",
        Field::Model => "model",
        Field::SystemPrompt => "system_prompt",
        Field::Confirm => "confirm",
        Field::Temperature => "metadata.temperature",
        Field::ResumeToken => "X-Resume-Token",
        Field::LastEventId => "Last-Event-ID",
        Field::From => "from",
        Field::To => "to",
        Field::DailyTokens => "daily_tokens",
        Field::Name => "name",
        Field::Scopes => "scopes",
        Field::ExpiresInDays => "expires_in_days",
        Field::MonthlyTokens => "monthly_tokens",
    }
}

/// The whole `source()` chain of an error, for one log line.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("field", &self.field)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        // Logged once, here where it is handled, with the request's span.
        match (&self.source, self.status.is_server_error()) {
            (Some(source), true) => {
                tracing::error!(code = %self.code, error = %chain(source.as_ref()), "request failed");
            }
            (Some(source), false) => {
                tracing::warn!(code = %self.code, error = %chain(source.as_ref()), "request refused");
            }
            (None, _) => {}
        }
        let body = self.body();
        let mut builder = HttpResponse::build(self.status);
        for (name, value) in &self.headers {
            builder.insert_header((name.clone(), value.clone()));
        }
        let mut response = builder
            .content_type("application/json")
            .body(body.render(""));
        response.extensions_mut().insert(body);
        response
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> Self {
        match err {
            AppError::Validation { field, message } => {
                Self::validation(Some(field_name(field).to_owned()), message)
            }
            AppError::NotFound => Self::not_found(),
            AppError::Missing { field } => {
                let name = field_name(field);
                let mut e = Self::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::NotFound,
                    format!("{name} names nothing here"),
                );
                e.field = Some(Cow::Borrowed(name));
                e
            }
            AppError::Conflict { field } => {
                let name = field_name(field);
                let mut e = Self::new(
                    StatusCode::CONFLICT,
                    ErrorCode::Conflict,
                    format!("{name} is already taken"),
                );
                e.field = Some(Cow::Borrowed(name));
                e
            }
            AppError::Unavailable(source) => {
                let mut e = Self::unavailable("temporarily unavailable, retry shortly", 1);
                e.source = Some(source);
                e
            }
            AppError::Internal(source) => Self::internal(source),
            AppError::Unauthorized(failure) => Self::unauthorized(failure),
            AppError::Forbidden => {
                Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "not allowed")
            }
            AppError::RateLimited { policy, decision } => Self::rate_limited(&policy, &decision),
            AppError::QuotaExceeded(exhausted) => Self::quota_exceeded(&exhausted),
            AppError::Busy => Self::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                "an answer is still being generated in this conversation: wait for it or stop it",
            ),
            AppError::TooManyGenerations { limit } => Self::too_many(
                format!("at most {limit} answers can be generated at once; wait for one to end"),
                1,
            ),
            AppError::TooManyReaders { limit, scope } => {
                let what = match scope {
                    ReaderScope::User => "streams can be read at once by one user",
                    ReaderScope::Answer => "streams of one answer can be read at once",
                };
                Self::too_many(format!("at most {limit} {what}; close one and retry"), 1)
            }
        }
    }
}

/// Whole seconds, rounded up (a client must not retry too early).
fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `RateLimit-Policy` and `RateLimit` headers
/// (draft-ietf-httpapi-ratelimit-headers, structured fields).
pub(crate) fn rate_limit_headers(
    policy: &RatePolicy,
    decision: &RateDecision,
) -> [(HeaderName, HeaderValue); 2] {
    let name = &policy.name;
    let policy_value = format!(
        "\"{name}\";q={};w={}",
        policy.quota,
        policy.window.as_secs()
    );
    let state_value = format!(
        "\"{name}\";r={};t={}",
        decision.remaining,
        ceil_secs(decision.reset_after)
    );
    [
        (
            HeaderName::from_static("ratelimit-policy"),
            HeaderValue::from_str(&policy_value).unwrap_or(HeaderValue::from_static("\"default\"")),
        ),
        (
            HeaderName::from_static("ratelimit"),
            HeaderValue::from_str(&state_value).unwrap_or(HeaderValue::from_static("\"default\"")),
        ),
    ]
}

impl ApiError {
    /// 403 `FORBIDDEN` for an API key used beyond its grant, with RFC
    /// 6750's `insufficient_scope` challenge.
    pub(crate) fn key_forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        let mut e = Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message);
        e.headers.push((
            actix_web::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="confab", error="insufficient_scope""#),
        ));
        e
    }

    /// 401, with the `WWW-Authenticate` challenge of RFC 6750.
    #[must_use]
    pub fn unauthorized(failure: AuthFailure) -> Self {
        let (code, message, challenge) = match failure {
            AuthFailure::Missing => (
                ErrorCode::AuthRequired,
                "authentication is required",
                r#"Bearer realm="confab""#,
            ),
            AuthFailure::InvalidToken => (
                ErrorCode::AuthRequired,
                "the token is invalid",
                r#"Bearer realm="confab", error="invalid_token", error_description="the token is invalid""#,
            ),
            AuthFailure::ExpiredToken => (
                ErrorCode::TokenExpired,
                "the token has expired",
                r#"Bearer realm="confab", error="invalid_token", error_description="the token has expired""#,
            ),
            AuthFailure::BadCredentials => (
                ErrorCode::InvalidCredentials,
                "invalid username or password",
                r#"Bearer realm="confab""#,
            ),
        };
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, message);
        e.headers.push((
            actix_web::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        ));
        e
    }

    /// 429 `QUOTA_EXCEEDED`: the caller's token allowance is used up until
    /// `resets_at`, with `Retry-After` and the rate-limit headers of the
    /// allowance (`tokens-day` or `tokens-month`; `w` its length, `r` 0,
    /// `t` the seconds until it resets).
    #[must_use]
    pub fn quota_exceeded(exhausted: &Exhausted) -> Self {
        let now = OffsetDateTime::now_utc();
        let wait = (exhausted.resets_at - now).max(time::Duration::ZERO);
        let wait = std::time::Duration::try_from(wait).unwrap_or_default();
        let (name, window) = match exhausted.period {
            AllowancePeriod::Day => ("tokens-day", 86_400),
            AllowancePeriod::Month => ("tokens-month", 30 * 86_400),
        };
        let resets = rfc3339(exhausted.resets_at).unwrap_or_default();
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::QuotaExceeded,
            format!(
                "the {} token allowance ({} tokens) is used up; it resets at {resets}",
                match exhausted.period {
                    AllowancePeriod::Day => "daily",
                    AllowancePeriod::Month => "monthly",
                },
                exhausted.limit
            ),
        );
        e.headers
            .push((RETRY_AFTER, HeaderValue::from(ceil_secs(wait).max(1))));
        let policy = RatePolicy {
            name: name.to_owned(),
            quota: u32::try_from(exhausted.limit).unwrap_or(u32::MAX),
            window: std::time::Duration::from_secs(window),
        };
        let decision = RateDecision {
            allowed: false,
            remaining: 0,
            reset_after: wait,
            retry_after: wait,
        };
        e.headers.extend(rate_limit_headers(&policy, &decision));
        e
    }

    /// 429 `RATE_LIMITED` with `Retry-After` and the rate-limit headers.
    #[must_use]
    pub fn rate_limited(policy: &RatePolicy, decision: &RateDecision) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many requests; retry later",
        );
        e.headers.push((
            RETRY_AFTER,
            HeaderValue::from(ceil_secs(decision.retry_after).max(1)),
        ));
        e.headers.extend(rate_limit_headers(policy, decision));
        e
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn internal_errors_leak_nothing() {
        let e = ApiError::internal("connection to 10.0.0.5 refused, password=hunter2");
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = String::from_utf8(e.body().render("req_1")).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("10.0.0.5"),
            "{text}"
        );
        assert!(text.contains("INTERNAL_ERROR"));
    }

    #[test]
    fn conflict_names_the_field() {
        let e = ApiError::from(AppError::Conflict {
            field: Field::Email,
        });
        let v: serde_json::Value = serde_json::from_slice(&e.body().render("r")).unwrap();
        assert_eq!(v["error"]["code"], "CONFLICT");
        assert_eq!(v["error"]["field"], "email");
        assert_eq!(v["error"]["request_id"], "r");
    }

    #[test]
    fn every_code_is_spelled_as_the_api_documents_it() {
        let spelled: Vec<String> = ErrorCode::ALL.iter().map(ToString::to_string).collect();
        assert_eq!(
            spelled,
            [
                "VALIDATION_ERROR",
                "AUTH_REQUIRED",
                "TOKEN_EXPIRED",
                "INVALID_CREDENTIALS",
                "FORBIDDEN",
                "NOT_FOUND",
                "METHOD_NOT_ALLOWED",
                "NOT_ACCEPTABLE",
                "REQUEST_TIMEOUT",
                "CONFLICT",
                "PRECONDITION_FAILED",
                "PAYLOAD_TOO_LARGE",
                "UNSUPPORTED_MEDIA_TYPE",
                "IDEMPOTENCY_KEY_REUSED",
                "RATE_LIMITED",
                "QUOTA_EXCEEDED",
                "INTERNAL_ERROR",
                "UPSTREAM_ERROR",
                "UNAVAILABLE",
                "UPSTREAM_TIMEOUT",
            ]
        );
    }

    #[test]
    fn foreign_statuses_get_codes() {
        assert_eq!(
            ErrorBody::for_status(StatusCode::NOT_FOUND).error.code,
            ErrorCode::NotFound
        );
        assert_eq!(
            ErrorBody::for_status(StatusCode::BAD_GATEWAY).error.code,
            ErrorCode::UpstreamError
        );
        assert_eq!(
            ErrorBody::for_status(StatusCode::from_u16(599).unwrap())
                .error
                .code,
            ErrorCode::InternalError
        );
    }
}
