//! The words of the API that more than one layer speaks, as types: the
//! error codes a client can get and the names of a stream's events.
//!
//! Their spellings come from serde (`SCREAMING_SNAKE_CASE` codes,
//! `snake_case` event names), so the string a client sees is derived from
//! the variant in one place and no layer holds it as a literal.

use serde::{Deserialize, Serialize};

/// Every error code the API can answer with, in an error body
/// (`{"error":{"code":…}}`) or in a stream's `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 400: the input broke a rule.
    ValidationError,
    /// 401: no credentials, or a refused token.
    AuthRequired,
    /// 401: a valid token that has expired.
    TokenExpired,
    /// 401: a login that failed.
    InvalidCredentials,
    /// 403: authenticated, not allowed.
    Forbidden,
    /// 404: no such route or resource (or not the caller's).
    NotFound,
    /// 405: the path has other methods.
    MethodNotAllowed,
    /// 406: no acceptable representation.
    NotAcceptable,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 409: a unique value is taken, or an answer is still running.
    Conflict,
    /// 412: `If-Match` names a version that is no longer current.
    PreconditionFailed,
    /// 413: the body is too large.
    PayloadTooLarge,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 422: an idempotency key reused for a different request.
    IdempotencyKeyReused,
    /// 429: a rate limit refused the request.
    RateLimited,
    /// 429: the user's token allowance for the day or month is used up.
    QuotaExceeded,
    /// 500: anything unexpected.
    InternalError,
    /// 502: the model's server failed.
    UpstreamError,
    /// 503: a dependency is down or saturated.
    Unavailable,
    /// 504: the model took too long.
    UpstreamTimeout,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [Self; 20] = [
        Self::ValidationError,
        Self::AuthRequired,
        Self::TokenExpired,
        Self::InvalidCredentials,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::NotAcceptable,
        Self::RequestTimeout,
        Self::Conflict,
        Self::PreconditionFailed,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::IdempotencyKeyReused,
        Self::RateLimited,
        Self::QuotaExceeded,
        Self::InternalError,
        Self::UpstreamError,
        Self::Unavailable,
        Self::UpstreamTimeout,
    ];
}

impl std::fmt::Display for ErrorCode {
    /// The code as a client sees it (`NOT_FOUND`), for log lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(code)) => f.write_str(&code),
            _ => Err(std::fmt::Error),
        }
    }
}

/// The SSE event name of a stream event; a plain `data:` event has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    /// `event: delta_encoding`, the stream's first event.
    DeltaEncoding,
    /// `event: delta`, a change to the message being generated.
    Delta,
}

impl EventName {
    /// Every name.
    pub const ALL: [Self; 2] = [Self::DeltaEncoding, Self::Delta];

    /// The name as the SSE `event:` field (and a stored log) spells it.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DeltaEncoding => "delta_encoding",
            Self::Delta => "delta",
        }
    }

    /// The name spelled `name`, if it is one.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_screaming_snake_case_and_round_trip() {
        for code in ErrorCode::ALL {
            let spelled = code.to_string();
            assert!(
                spelled.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{spelled}"
            );
            let text = serde_json::to_string(&code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&text).unwrap(), code);
            assert_eq!(text, format!("\"{code}\""));
        }
    }

    #[test]
    fn event_names_are_the_seed_spellings() {
        assert_eq!(
            serde_json::to_string(&EventName::DeltaEncoding).unwrap(),
            "\"delta_encoding\""
        );
        for name in EventName::ALL {
            let text = serde_json::to_string(&name).unwrap();
            assert_eq!(serde_json::from_str::<EventName>(&text).unwrap(), name);
            assert_eq!(text, format!("\"{}\"", name.as_str()));
            assert_eq!(EventName::parse(name.as_str()), Some(name));
        }
        assert_eq!(EventName::parse("message"), None);
    }
}
