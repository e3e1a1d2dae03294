//! The adapter's settings and their validation.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Where and how to reach an OpenAI-compatible server.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// The API root, e.g. `http://127.0.0.1:11434/v1`; requests go to
    /// `{base_url}/chat/completions` (a trailing slash is fine).
    pub base_url: String,
    /// Sent as `Authorization: Bearer …` when set; never logged or printed.
    pub api_key: Option<SecretString>,
    /// The most time to open the connection.
    pub connect_timeout: Duration,
    /// The most time from sending the request to the first text delta
    /// (waiting for the response headers included).
    pub first_token_timeout: Duration,
    /// The longest gap allowed between two reads of the body once text is
    /// streaming.
    pub idle_timeout: Duration,
    /// The most time for the whole completion.
    pub total_timeout: Duration,
    /// The most idle connections kept open for the next completions (0:
    /// each completion opens its own and closes it).
    pub pool_max_idle: usize,
    /// The longest an idle connection is kept.
    pub pool_idle_timeout: Duration,
}

impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base_url = Url::parse(&self.base_url)
            .map_or_else(|_| "<not a URL>".to_owned(), |u| redacted(&u).to_string());
        f.debug_struct("OpenAiSettings")
            .field("base_url", &base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("connect_timeout", &self.connect_timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("pool_max_idle", &self.pool_max_idle)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .finish()
    }
}

/// Why an adapter can't be built from its settings. The messages never
/// quote the URL (it may carry credentials) or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmSetupError {
    /// `base_url` is unusable: the reason says why.
    #[error("the model's base URL is invalid: {0}")]
    BaseUrl(&'static str),
    /// A timeout is zero: the field is named.
    #[error("the model's {0} must be more than zero")]
    ZeroTimeout(&'static str),
    /// The API key holds a character an HTTP header can't carry (only
    /// visible ASCII and spaces can).
    #[error("the model's API key has a character a header can't carry")]
    ApiKey,
    /// The HTTP client could not be built.
    #[error("the model's HTTP client could not be built: {0}")]
    Client(String),
}

/// Checks the settings and works out the endpoint,
/// `{base_url}/chat/completions`.
pub(crate) fn check(settings: &OpenAiSettings) -> Result<Url, LlmSetupError> {
    for (name, value) in [
        ("connect_timeout", settings.connect_timeout),
        ("first_token_timeout", settings.first_token_timeout),
        ("idle_timeout", settings.idle_timeout),
        ("total_timeout", settings.total_timeout),
        ("pool_idle_timeout", settings.pool_idle_timeout),
    ] {
        if value.is_zero() {
            return Err(LlmSetupError::ZeroTimeout(name));
        }
    }
    // The key goes into a header as it is: a line break would end it.
    if settings.api_key.as_ref().is_some_and(|key| {
        !key.expose_secret()
            .bytes()
            .all(|b| b == b' ' || b.is_ascii_graphic())
    }) {
        return Err(LlmSetupError::ApiKey);
    }
    let base = Url::parse(settings.base_url.trim())
        .map_err(|_| LlmSetupError::BaseUrl("it is not an absolute URL"))?;
    match base.scheme() {
        "http" => {}
        "https" if cfg!(feature = "tls") => {}
        "https" => {
            return Err(LlmSetupError::BaseUrl(
                "https needs confab-llm's `tls` feature",
            ));
        }
        _ => return Err(LlmSetupError::BaseUrl("the scheme must be http or https")),
    }
    if base.host_str().is_none_or(str::is_empty) {
        return Err(LlmSetupError::BaseUrl("it has no host"));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(LlmSetupError::BaseUrl("it has a query or a fragment"));
    }
    let path = format!("{}/chat/completions", base.path().trim_end_matches('/'));
    let mut endpoint = base;
    endpoint.set_path(&path);
    Ok(endpoint)
}

/// `url` without its user name and password, for logs and messages.
pub(crate) fn redacted(url: &Url) -> Url {
    let mut clean = url.clone();
    // Both fail only for URLs that can't have credentials: nothing to hide.
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(base_url: &str) -> OpenAiSettings {
        OpenAiSettings {
            base_url: base_url.to_owned(),
            api_key: Some(SecretString::from("sk-very-secret")),
            connect_timeout: Duration::from_secs(1),
            first_token_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            total_timeout: Duration::from_secs(1),
            pool_max_idle: 8,
            pool_idle_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_endpoint_tolerates_a_trailing_slash() {
        for base in ["http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1/"] {
            let checked = check(&settings(base)).unwrap();
            assert_eq!(
                checked.as_str(),
                "http://127.0.0.1:11434/v1/chat/completions"
            );
        }
        let checked = check(&settings("http://llm.internal")).unwrap();
        assert_eq!(checked.as_str(), "http://llm.internal/chat/completions");
    }

    #[test]
    fn bad_urls_and_zero_timeouts_are_refused() {
        for base in [
            "",
            "llm:8080",
            "ftp://host/v1",
            "file:///tmp/x",
            "http://host/v1?x=1",
        ] {
            assert!(
                matches!(check(&settings(base)), Err(LlmSetupError::BaseUrl(_))),
                "{base}"
            );
        }
        let mut s = settings("http://host/v1");
        s.idle_timeout = Duration::ZERO;
        assert_eq!(
            check(&s).unwrap_err(),
            LlmSetupError::ZeroTimeout("idle_timeout")
        );
    }

    #[test]
    fn a_key_that_would_break_its_header_is_refused() {
        for key in ["sk-1\r\nX-Injected: 1", "sk-\u{7f}", "sk-é", "sk\t1"] {
            let mut s = settings("http://host/v1");
            s.api_key = Some(SecretString::from(key));
            assert_eq!(check(&s).unwrap_err(), LlmSetupError::ApiKey, "{key:?}");
        }
        let mut s = settings("http://host/v1");
        s.api_key = Some(SecretString::from("sk-proj-AZ_az09-+/= ok"));
        assert!(check(&s).is_ok());
    }

    #[test]
    fn https_follows_the_tls_feature() {
        let result = check(&settings("https://api.example.com/v1"));
        assert_eq!(result.is_ok(), cfg!(feature = "tls"));
    }

    #[test]
    fn debug_hides_the_key_and_url_credentials() {
        let shown = format!("{:?}", settings("http://user:hunter2@host/v1"));
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[REDACTED]") && shown.contains("http://host/v1"));
    }
}
