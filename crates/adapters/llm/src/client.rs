//! The adapter: the request, the response's status, and failures to reach
//! the server.

use std::fmt;
use std::io::ErrorKind;
use std::time::Duration;

use async_trait::async_trait;
use confab_ports::{ChatModel, CompletionRequest, CompletionStream, LlmError};
use secrecy::SecretString;
use serde::Serialize;
use tokio::time::{Instant, timeout_at};
use url::Url;

use crate::http::{Connector, PoolLimits, Response, SendError};
use crate::settings::{self, LlmSetupError, OpenAiSettings};
use crate::stream::{Deadlines, OpenAiStream};

/// The most of an error response's body read, and logged.
const MAX_ERROR_BODY_BYTES: usize = 4096;

/// A chat model served by an OpenAI-compatible `/chat/completions`
/// endpoint, streamed.
pub struct OpenAiCompatible {
    connector: Connector,
    endpoint: Url,
    api_key: Option<SecretString>,
    first_token_timeout: Duration,
    idle_timeout: Duration,
    total_timeout: Duration,
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiCompatible")
            .field("endpoint", &settings::redacted(&self.endpoint).as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("first_token_timeout", &self.first_token_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("total_timeout", &self.total_timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompatible {
    /// Checks the settings and builds the HTTP client.
    ///
    /// # Errors
    /// [`LlmSetupError`] when `base_url` isn't an http(s) URL (https only
    /// with the `tls` feature), a timeout is zero, or the client can't be
    /// built (rustls' configuration, for https).
    pub fn new(settings: OpenAiSettings) -> Result<Self, LlmSetupError> {
        let endpoint = settings::check(&settings)?;
        warn_of_proxy_variables();
        let limits = PoolLimits {
            max_idle: settings.pool_max_idle,
            idle_timeout: settings.pool_idle_timeout,
        };
        let connector = Connector::new(&endpoint, settings.connect_timeout, limits)
            .map_err(LlmSetupError::Client)?;
        Ok(Self {
            connector,
            endpoint,
            api_key: settings.api_key,
            first_token_timeout: settings.first_token_timeout,
            idle_timeout: settings.idle_timeout,
            total_timeout: settings.total_timeout,
        })
    }

    /// `host:port` of the server, for messages (never the credentials).
    fn target(&self) -> String {
        let host = self.endpoint.host_str().unwrap_or("?");
        match self.endpoint.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// What a failure to get a response means.
    fn send_error(&self, error: &SendError) -> LlmError {
        let target = self.target();
        tracing::warn!(
            target_addr = %target,
            error = %error,
            "the model's server could not be reached"
        );
        let reason = match error {
            SendError::ConnectTimeout => return LlmError::Timeout("connect"),
            SendError::Resolve => "could not resolve",
            SendError::Protocol(what) => {
                return LlmError::Protocol(format!("{what} (from {target})"));
            }
            _ => match error.io_kind() {
                Some(ErrorKind::ConnectionRefused) => "connection refused by",
                Some(
                    ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe,
                ) => "connection reset by",
                _ if matches!(error, SendError::Connect(_)) => "could not connect to",
                #[cfg(feature = "tls")]
                _ if matches!(error, SendError::Handshake(_)) => "could not connect to",
                _ => "no response from",
            },
        };
        LlmError::Unavailable(format!("{reason} {target}"))
    }
}

#[async_trait]
impl ChatModel for OpenAiCompatible {
    async fn complete(
        &self,
        request: CompletionRequest,
    ) -> Result<Box<dyn CompletionStream>, LlmError> {
        let started = Instant::now();
        let deadlines = Deadlines::new(
            started + self.first_token_timeout,
            started + self.total_timeout,
            self.idle_timeout,
        );
        let body = RequestBody {
            model: request.model.as_str(),
            messages: request
                .turns
                .iter()
                .map(|t| MessageBody {
                    role: t.role.as_str(),
                    content: &t.text,
                })
                .collect(),
            stream: true,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            stream_options: StreamOptions {
                include_usage: true,
            },
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| LlmError::Protocol(format!("the request could not be encoded: {e}")))?;
        let (deadline, what) = deadlines.before_first_token();
        let sent = self.connector.post(&body, self.api_key.as_ref());
        let response = match timeout_at(deadline, sent).await {
            Err(_) => return Err(LlmError::Timeout(what)),
            Ok(Err(e)) => return Err(self.send_error(&e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !(200..300).contains(&status) {
            log_error_body(status, response, &deadlines).await;
            return Err(LlmError::Upstream { status });
        }
        Ok(Box::new(OpenAiStream::new(
            response,
            request.max_tokens,
            deadlines,
        )))
    }
}

/// Says, once per adapter built, that a proxy set in the environment is
/// not used: requests go straight to the model's server. (reqwest, the
/// client before, read these variables.)
fn warn_of_proxy_variables() {
    let set: Vec<&str> = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .filter(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
    .collect();
    if !set.is_empty() {
        tracing::warn!(
            variables = %set.join(", "),
            "a proxy is set in the environment; the model's client does not use proxies and connects directly"
        );
    }
}

/// The JSON body of a streamed chat completion request.
#[derive(Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: Vec<MessageBody<'a>>,
    stream: bool,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct MessageBody<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// Reads at most [`MAX_ERROR_BODY_BYTES`] of an error response and logs
/// them; the body goes nowhere else.
async fn log_error_body(status: u16, mut response: Response, deadlines: &Deadlines) {
    let mut body = Vec::new();
    let (deadline, _) = deadlines.between_tokens();
    let read = async {
        while body.len() < MAX_ERROR_BODY_BYTES {
            match response.read(|bytes| body.extend_from_slice(bytes)).await {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
        }
    };
    // Whatever came before the deadline is logged.
    let _ = timeout_at(deadline, read).await;
    body.truncate(MAX_ERROR_BODY_BYTES);
    tracing::warn!(
        status,
        body = %printable(&body),
        "the model's server answered with an error"
    );
}

/// Upstream bytes as text safe for one log line: invalid UTF-8 replaced,
/// control characters escaped.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for c in String::from_utf8_lossy(bytes).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters() {
        assert_eq!(
            printable(b"a\nb\r\x1b[31m\tc\xff"),
            "a\\nb\\r\\u{1b}[31m\\tc\u{fffd}"
        );
        assert_eq!(printable("grüße".as_bytes()), "grüße");
    }

    #[test]
    fn the_request_body_has_the_openai_shape() {
        let body = RequestBody {
            model: "m",
            messages: vec![MessageBody {
                role: "user",
                content: "hi",
            }],
            stream: true,
            max_tokens: 5,
            temperature: None,
            stream_options: StreamOptions {
                include_usage: true,
            },
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": true,
                "max_tokens": 5,
                "stream_options": {"include_usage": true}
            })
        );
    }
}
