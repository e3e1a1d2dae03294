//! The adapter: the request, the response's status, and failures to reach
//! the server.

use std::error::Error as _;
use std::fmt;
use std::io::ErrorKind;
use std::time::Duration;

use async_trait::async_trait;
use confab_ports::{ChatModel, CompletionRequest, CompletionStream, LlmError};
use reqwest::header::ACCEPT;
use reqwest::{Client, Response, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::time::{Instant, timeout_at};

use crate::settings::{self, LlmSetupError, OpenAiSettings};
use crate::stream::{Deadlines, OpenAiStream};

/// The most of an error response's body read, and logged.
const MAX_ERROR_BODY_BYTES: usize = 4096;

/// A chat model served by an OpenAI-compatible `/chat/completions`
/// endpoint, streamed.
pub struct OpenAiCompatible {
    client: Client,
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
    /// With the `tls` feature this installs rustls' *ring* crypto provider
    /// as the process default (see `install_tls_provider`).
    ///
    /// # Errors
    /// [`LlmSetupError`] when `base_url` isn't an http(s) URL (https only
    /// with the `tls` feature), a timeout is zero, or the client can't be
    /// built.
    pub fn new(settings: OpenAiSettings) -> Result<Self, LlmSetupError> {
        let endpoint = settings::check(&settings)?;
        #[cfg(feature = "tls")]
        crate::install_tls_provider();
        let client = Client::builder()
            .connect_timeout(settings.connect_timeout)
            // A redirect is an error status here: no credentials follow it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("confab/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmSetupError::Client(e.without_url().to_string()))?;
        Ok(Self {
            client,
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
    fn send_error(&self, error: reqwest::Error) -> LlmError {
        let target = self.target();
        let error = error.without_url();
        tracing::warn!(
            target_addr = %target,
            error = %chain(&error),
            "the model's server could not be reached"
        );
        if error.is_timeout() {
            // The client's only own timeout is the connect timeout.
            return LlmError::Timeout("connect");
        }
        if error.is_dns() {
            return LlmError::Unavailable(format!("could not resolve {target}"));
        }
        let mut io_kind = None;
        let mut source = error.source();
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                io_kind = Some(io.kind());
            }
            source = cause.source();
        }
        let reason = match io_kind {
            Some(ErrorKind::ConnectionRefused) => "connection refused by",
            Some(ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
                "connection reset by"
            }
            _ if error.is_connect() => "could not connect to",
            _ => "no response from",
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
        let mut builder = self
            .client
            .post(self.endpoint.clone())
            .header(ACCEPT, "text/event-stream")
            .json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key.expose_secret());
        }
        let (deadline, what) = deadlines.before_first_token();
        let response = match timeout_at(deadline, builder.send()).await {
            Err(_) => return Err(LlmError::Timeout(what)),
            Ok(Err(e)) => return Err(self.send_error(e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            log_error_body(status, response, &deadlines).await;
            return Err(LlmError::Upstream {
                status: status.as_u16(),
            });
        }
        Ok(Box::new(OpenAiStream::new(
            response,
            request.max_tokens,
            deadlines,
        )))
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
async fn log_error_body(status: StatusCode, mut response: Response, deadlines: &Deadlines) {
    let mut body = Vec::new();
    let (deadline, _) = deadlines.between_tokens();
    let read = async {
        while body.len() < MAX_ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(bytes)) => body.extend_from_slice(&bytes),
                Ok(None) | Err(_) => break,
            }
        }
    };
    // Whatever came before the deadline is logged.
    let _ = timeout_at(deadline, read).await;
    body.truncate(MAX_ERROR_BODY_BYTES);
    tracing::warn!(
        status = status.as_u16(),
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

/// An error and its causes, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
