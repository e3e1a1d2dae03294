//! A typed async client for Confab's HTTP API.
//!
//! [`Client`] signs in (or carries an API key), keeps its tokens in memory
//! and refreshes them by itself, and speaks every route a user or an admin
//! needs: accounts, conversations, messages, streams, usage, admin. Values
//! come back as confab-domain's types (ids, roles, statuses, error codes).
//!
//! [`Client::send`] returns an [`AnswerStream`]: a
//! [`futures_util::Stream`] of typed [`Event`]s that also holds the message
//! as it builds up, replayed with confab-domain's [`DeltaApplier`]
//! (delta encoding v1). A connection that drops mid-answer is resumed
//! without the caller noticing, from the last event id, and every send
//! carries an `Idempotency-Key` that its retries reuse, so nothing is sent
//! twice. [`Client::send_json`] waits for the finished answer instead.
//!
//! ```no_run
//! use confab_client::{Client, Event, Send};
//! use futures_util::StreamExt;
//!
//! # async fn demo() -> Result<(), confab_client::Error> {
//! let client = Client::new("http://127.0.0.1:8080")?;
//! client.login("alice", "correct horse battery staple").await?;
//! let mut answer = client.send(&Send::new_conversation("Explain Redis caching")).await?;
//! while let Some(event) = answer.next().await {
//!     if let Event::Text(text) = event? {
//!         print!("{text}");
//!     }
//! }
//! println!("\n{}", answer.text());
//! # Ok(()) }
//! ```
//!
//! https needs the `tls` feature (rustls with the *ring* provider).
//!
//! [`DeltaApplier`]: confab_domain::DeltaApplier

mod admin;
mod auth;
mod conversations;
mod error;
mod send;
mod sse;
mod stream;
mod types;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde_json::Value;

pub use conversations::{ConversationPatch, ListQuery};
pub use error::{ApiError, Error};
pub use send::{Action, Send};
pub use stream::{AnswerStream, Event};
pub use types::{
    Allowance, AllowancePart, Conversation, ConversationSummary, Message, MessageContent,
    MessageMetadata, Model, OwnAllowance, Page, SearchMatch, Sent, Siblings, UsageCounts, UsageDay,
    UsageReport, User,
};

/// A client of one Confab server. Cheap to clone: clones share the
/// connection pool and the credentials (a refresh by one is seen by all).
///
/// ```no_run
/// # async fn demo() -> Result<(), confab_client::Error> {
/// let client = confab_client::Client::new("http://127.0.0.1:8080")?;
/// client.login("alice", "correct horse battery staple").await?;
/// let me = client.me().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    /// The longest silence a stream may keep (and the longest wait for a
    /// stream's response head) before it is taken for a dead connection
    /// and resumed.
    read_timeout: Duration,
    credential: Mutex<Credential>,
    /// Held while a refresh runs: one refresh at a time, and a request
    /// that failed with an access token already replaced retries with the
    /// new one instead of refreshing again (a refresh token works once).
    refreshing: futures_util::lock::Mutex<()>,
}

/// Builds a [`Client`] with timeouts other than the defaults.
///
/// ```
/// use std::time::Duration;
/// let client = confab_client::Client::builder("http://127.0.0.1:8080")
///     .read_timeout(Duration::from_secs(10))
///     .build()?;
/// # Ok::<(), confab_client::Error>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    api_key: Option<String>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The default connect timeout: 10 s.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The default read timeout: 45 s, three times the server's default
    /// `generation.keep_alive_secs` (15), so that two keep-alive comments
    /// may go missing before a stream is taken for dead.
    pub const READ_TIMEOUT: Duration = Duration::from_secs(45);

    /// The longest wait for a TCP connection (and TLS handshake) to the
    /// server: a call that can't connect by then fails with
    /// [`Error::Connection`] (a send, or a stream's resumption, is tried
    /// again).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = confab_client::Client::builder("http://127.0.0.1:8080")
    ///     .connect_timeout(Duration::from_secs(2));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest a streamed answer may stay silent (no event, no
    /// keep-alive comment), and the longest wait for a stream's response
    /// head, before the connection is taken for dead (half-open) and the
    /// stream resumed from its last event id. Keep it well above the
    /// server's `generation.keep_alive_secs`. Calls answered in JSON (a
    /// [`Client::send_json`] waits for the whole answer) are not cut by it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = confab_client::Client::builder("http://127.0.0.1:8080")
    ///     .read_timeout(Duration::from_secs(60));
    /// ```
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Presents the API key `key` (`cfk_…`), as [`Client::with_api_key`].
    ///
    /// ```
    /// let client = confab_client::Client::builder("http://127.0.0.1:8080")
    ///     .api_key("cfk_…")
    ///     .build()?;
    /// assert!(client.is_signed_in());
    /// # Ok::<(), confab_client::Error>(())
    /// ```
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_owned());
        self
    }

    /// The client.
    ///
    /// ```
    /// let client = confab_client::Client::builder("http://127.0.0.1:8080").build()?;
    /// # Ok::<(), confab_client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn build(self) -> Result<Client, Error> {
        let base_url = self.base_url.as_str();
        let mut base =
            Url::parse(base_url).map_err(|e| Error::InvalidUrl(format!("{base_url}: {e}")))?;
        let supported =
            base.scheme() == "http" || (base.scheme() == "https" && cfg!(feature = "tls"));
        if !supported || base.cannot_be_a_base() {
            return Err(Error::InvalidUrl(format!(
                "{base_url}: not an http URL (https needs the `tls` feature)"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        #[cfg(feature = "tls")]
        {
            // reqwest is built without a provider of its own: install ring
            // unless the process has one already.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("confab-client/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the bearer token to another address.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(Error::transport)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                read_timeout: self.read_timeout,
                credential: Mutex::new(self.api_key.map_or(Credential::None, Credential::ApiKey)),
                refreshing: futures_util::lock::Mutex::new(()),
            }),
        })
    }
}

/// What the client presents. Never printed.
#[derive(Clone)]
enum Credential {
    None,
    Session { access: String, refresh: String },
    ApiKey(String),
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A request, kept whole so that it can be sent again (after a refresh,
/// or a broken connection).
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) url: Url,
    pub(crate) body: Option<Value>,
    pub(crate) headers: HeaderMap,
}

impl Call {
    pub(crate) fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            body: None,
            headers: HeaderMap::new(),
        }
    }

    pub(crate) fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Result<Self, Error> {
        let value = HeaderValue::from_str(value)
            .map_err(|_| Error::Protocol(format!("a value {name} can't carry")))?;
        self.headers.insert(name, value);
        Ok(self)
    }
}

impl Client {
    /// A client of the server at `base_url` (`http://127.0.0.1:8080`),
    /// signed in as nobody yet, with the default timeouts
    /// ([`ClientBuilder`] sets others).
    ///
    /// ```
    /// let client = confab_client::Client::new("http://127.0.0.1:8080")?;
    /// assert!(confab_client::Client::new("ftp://example.com").is_err());
    /// # Ok::<(), confab_client::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when `base_url` is not an http(s) URL (https
    /// only with the `tls` feature); [`Error::Connection`] when the HTTP
    /// client can't be built.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Self::builder(base_url).build()
    }

    /// A builder of a client of the server at `base_url`, to set its
    /// timeouts.
    ///
    /// ```
    /// use std::time::Duration;
    /// let client = confab_client::Client::builder("http://127.0.0.1:8080")
    ///     .connect_timeout(Duration::from_secs(3))
    ///     .read_timeout(Duration::from_secs(20))
    ///     .build()?;
    /// # Ok::<(), confab_client::Error>(())
    /// ```
    pub fn builder(base_url: &str) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.to_owned(),
            connect_timeout: ClientBuilder::CONNECT_TIMEOUT,
            read_timeout: ClientBuilder::READ_TIMEOUT,
            api_key: None,
        }
    }

    /// A client that presents the API key `key` (`cfk_…`) as its bearer
    /// token: it acts as the key's owner on the routes its scopes reach.
    ///
    /// ```
    /// let client = confab_client::Client::with_api_key("http://127.0.0.1:8080", "cfk_…")?;
    /// # Ok::<(), confab_client::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn with_api_key(base_url: &str, key: &str) -> Result<Self, Error> {
        Self::builder(base_url).api_key(key).build()
    }

    /// The server's base URL.
    ///
    /// ```
    /// let client = confab_client::Client::new("http://127.0.0.1:8080")?;
    /// assert_eq!(client.base_url(), "http://127.0.0.1:8080/");
    /// # Ok::<(), confab_client::Error>(())
    /// ```
    #[must_use]
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// Whether the client holds credentials (a session or an API key).
    ///
    /// ```
    /// let client = confab_client::Client::new("http://127.0.0.1:8080")?;
    /// assert!(!client.is_signed_in());
    /// # Ok::<(), confab_client::Error>(())
    /// ```
    #[must_use]
    pub fn is_signed_in(&self) -> bool {
        !matches!(self.credential(), Credential::None)
    }

    /// See [`ClientBuilder::read_timeout`].
    pub(crate) fn read_timeout(&self) -> Duration {
        self.inner.read_timeout
    }

    fn credential(&self) -> Credential {
        self.inner
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_credential(&self, credential: Credential) {
        *self
            .inner
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = credential;
    }

    /// The URL of `path` (relative, without a leading slash) on the server.
    pub(crate) fn url(&self, path: &str) -> Result<Url, Error> {
        self.inner
            .base
            .join(path)
            .map_err(|e| Error::InvalidUrl(format!("{path}: {e}")))
    }

    /// Sends `call` as it is, with the bearer token given.
    async fn send_once(
        &self,
        call: &Call,
        bearer: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let mut request = self
            .inner
            .http
            .request(call.method.clone(), call.url.clone())
            .headers(call.headers.clone());
        if let Some(token) = bearer {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::Protocol("a token a header can't carry".to_owned()))?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        request.send().await.map_err(Error::transport)
    }

    /// Sends `call` without credentials; a status that is not a success
    /// becomes the API's error.
    pub(crate) async fn anonymous(&self, call: &Call) -> Result<reqwest::Response, Error> {
        success(self.send_once(call, None).await?).await
    }

    /// Sends `call` with the client's credentials. An expired access token
    /// is refreshed once and the call sent again; a status that is not a
    /// success becomes the API's error.
    pub(crate) async fn authorized(&self, call: &Call) -> Result<reqwest::Response, Error> {
        let credential = self.credential();
        let bearer = match &credential {
            Credential::None => return Err(Error::NotSignedIn),
            Credential::Session { access, .. } => access.clone(),
            Credential::ApiKey(key) => key.clone(),
        };
        let response = self.send_once(call, Some(&bearer)).await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED
            || !matches!(credential, Credential::Session { .. })
        {
            return success(response).await;
        }
        let error = error::from_response(response).await;
        if error.code() != Some(confab_domain::ErrorCode::TokenExpired) {
            return Err(error);
        }
        let access = self.refresh_replacing(&bearer).await?;
        success(self.send_once(call, Some(&access)).await?).await
    }
}

/// `response` when its status is a success, else the API's error.
async fn success(response: reqwest::Response) -> Result<reqwest::Response, Error> {
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(error::from_response(response).await)
    }
}

/// The JSON body of `response` as `T`.
pub(crate) async fn json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, Error> {
    let bytes = response.bytes().await.map_err(Error::transport)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))
}
