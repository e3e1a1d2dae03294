//! What can go wrong: the API's own refusals, typed, and failures to reach it.

use std::time::Duration;

use confab_domain::ErrorCode;
use serde::Deserialize;

/// An error response of the API, in its one shape
/// (`{"error":{"code","message","field"?,"request_id"}}`), with the
/// headers a caller acts on.
///
/// ```
/// use confab_client::ApiError;
/// use confab_domain::ErrorCode;
///
/// fn explain(e: &ApiError) -> String {
///     match (e.code, e.retry_after) {
///         (Some(ErrorCode::RateLimited), Some(wait)) => format!("wait {} s", wait.as_secs()),
///         _ => e.message.clone(),
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status (`404`, `422`, …).
    pub status: u16,
    /// The code, when it is one this client knows (`None` for a code a
    /// newer server added, [`ApiError::code_text`] has it; and for a
    /// response without the API's error body, such as a proxy's 502).
    pub code: Option<ErrorCode>,
    /// The code as the server spelled it (`NOT_FOUND`); empty when the
    /// response had no API error body.
    pub code_text: String,
    /// The server's message, for people (for a response without the API's
    /// error body, the status's reason: `Bad Gateway`).
    pub message: String,
    /// The input the error is about (`username`, `messages[0].id`,
    /// `Idempotency-Key`), for validation errors and conflicts.
    pub field: Option<String>,
    /// The request's id (`X-Request-Id`), to quote to an operator.
    pub request_id: Option<String>,
    /// How long to wait before trying again (`Retry-After`, on 429 and 503).
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code_text.is_empty() {
            write!(f, "{}: {}", self.status, self.message)?;
        } else {
            write!(f, "{} {}: {}", self.status, self.code_text, self.message)?;
        }
        if let Some(field) = &self.field {
            write!(f, " (field {field})")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request {id}]")?;
        }
        Ok(())
    }
}

/// Anything a call can fail with.
///
/// ```no_run
/// use confab_client::{Client, Error};
/// use confab_domain::ErrorCode;
///
/// # async fn demo(client: Client) {
/// match client.me().await {
///     Ok(user) => println!("signed in as {}", user.username),
///     Err(Error::Api(e)) if e.code == Some(ErrorCode::AuthRequired) => println!("sign in first"),
///     Err(e) => println!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API refused the request.
    #[error("{0}")]
    Api(ApiError),
    /// The server could not be reached, or the connection broke.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The server answered something this client does not understand.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// A stream broke and could not be resumed.
    #[error("the stream was lost and could not be resumed: {0}")]
    StreamLost(String),
    /// The call needs credentials the client does not have (log in first).
    #[error("not signed in")]
    NotSignedIn,
    /// The base URL given to the client is not an http(s) URL.
    #[error("invalid base URL: {0}")]
    InvalidUrl(String),
}

impl Error {
    /// The API's error, when the API refused the request.
    ///
    /// ```
    /// # use confab_client::Error;
    /// assert!(Error::NotSignedIn.api().is_none());
    /// ```
    #[must_use]
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Self::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The API's error code, when the API refused the request with one
    /// this client knows.
    ///
    /// ```
    /// # use confab_client::Error;
    /// assert_eq!(Error::NotSignedIn.code(), None);
    /// ```
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        self.api().and_then(|e| e.code)
    }

    /// Whether the failure happened on the way to the server or back
    /// (worth retrying), not in the server's answer.
    ///
    /// ```
    /// # use confab_client::Error;
    /// assert!(Error::Connection("reset".into()).is_connection());
    /// ```
    #[must_use]
    pub fn is_connection(&self) -> bool {
        matches!(self, Self::Connection(_) | Self::StreamLost(_))
    }

    /// A transport error, without the URL (`without_url`: it carries
    /// nothing secret, but says nothing useful twice).
    pub(crate) fn transport(e: reqwest::Error) -> Self {
        let e = e.without_url();
        if e.is_decode() {
            Self::Protocol(error_chain(&e))
        } else {
            Self::Connection(error_chain(&e))
        }
    }
}

/// `e` and its sources, joined: reqwest's own message alone often says
/// only "error sending request".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Deserialize)]
struct Envelope {
    error: Body,
}

#[derive(Deserialize)]
struct Body {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

/// The [`Error`] of a response whose status is not a success: the API's
/// error, or, for a body that is not the API's error shape (a proxy's 502
/// page, a refusal of actix's codec), an [`ApiError`] without a code that
/// still keeps the status, `Retry-After` and `X-Request-Id`.
pub(crate) async fn from_response(response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let header_id = header("x-request-id");
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => return Error::transport(e),
    };
    match serde_json::from_slice::<Envelope>(&bytes) {
        Ok(Envelope { error }) => Error::Api(ApiError {
            status,
            code: serde_json::from_value(serde_json::Value::String(error.code.clone())).ok(),
            code_text: error.code,
            message: error.message,
            field: error.field,
            request_id: error.request_id.or(header_id),
            retry_after,
        }),
        Err(_) => Error::Api(ApiError {
            status,
            code: None,
            code_text: String::new(),
            message: reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("an error without the API's error body")
                .to_owned(),
            field: None,
            request_id: header_id,
            retry_after,
        }),
    }
}
