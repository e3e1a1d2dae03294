//! Sending a message: what a send asks for ([`Send`]), streamed or in
//! JSON mode, retried with its idempotency key; stopping an answer.

use std::time::Duration;

use confab_domain::{ConversationId, MessageId};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::stream::AnswerStream;
use crate::{Call, Client, Error, Sent, json};

/// How many times in all a send is sent (the first attempt, then its
/// retries with its key).
const SEND_ATTEMPTS: u32 = 4;

/// The wait before retry `n` (from 1) of something that failed on the way:
/// none for the first retry, then 100 ms doubling (at most 6.4 s).
pub(crate) fn backoff(retry: u32) -> Duration {
    match retry {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(100u64 << (n - 2).min(6)),
    }
}

/// The wait before a retry that met the key's first request still running
/// (409 without `Retry-After`): long enough for it to store its message.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(1);

/// The longest `Retry-After` a retry waits for; a longer one is the
/// caller's to decide on (the error is returned).
pub(crate) const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

/// Whether a request that failed with `e` is worth sending again, and after
/// how long (`retry` counts the retries so far, from 1 for the first).
/// `repeat` says that an earlier attempt of the same request may have
/// reached the server: its key may be held (409 `CONFLICT`, the first
/// still running) and its readers counted (429 with `Retry-After`, a cap
/// of readers), which a first attempt's 409 and 429 never mean.
pub(crate) fn retry_wait(e: &Error, retry: u32, repeat: bool) -> Option<Duration> {
    if e.is_connection() {
        return Some(backoff(retry));
    }
    let api = e.api()?;
    let wait = match api.status {
        409 if repeat => api.retry_after.unwrap_or(IN_FLIGHT_WAIT),
        429 | 503 if repeat => api.retry_after?,
        _ => return None,
    };
    (wait <= MAX_RETRY_WAIT).then_some(wait)
}

/// What a send asks for.
///
/// ```
/// use confab_client::{Action, Send};
/// # let id = confab_domain::ConversationId::generate();
/// assert_eq!(Send::regenerate(id).action(), Action::Variant);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A new message, then its answer.
    Next,
    /// A new answer to a question already asked (regenerate).
    Variant,
    /// The model goes on with an answer that stopped early.
    Continue,
}

/// A message to send, built for one of the three actions. Each `Send` has
/// an idempotency key of its own, which every retry of it reuses.
///
/// A clone keeps the key: sending a clone (or the same `Send` twice) is a
/// retry of the first send, which the server answers with the first's
/// answer (replayed; nothing new is stored and the model is not asked
/// again). To send the same text again as a new message, build a new
/// `Send`, or give the clone a key of its own with [`Send::new_key`].
///
/// ```
/// use confab_client::Send;
/// let send = Send::new_conversation("Explain Redis caching")
///     .system_prompt("Answer in one paragraph.")
///     .temperature(0.2);
/// assert!(send.conversation().is_none());
/// // A clone is the same send: the same key.
/// assert_eq!(send.clone().key(), send.key());
/// assert_ne!(send.clone().new_key().key(), send.key());
/// ```
#[derive(Debug, Clone)]
pub struct Send {
    conversation: Option<ConversationId>,
    action: Action,
    text: Option<String>,
    message_id: Option<String>,
    parent: Option<String>,
    model: Option<String>,
    system_prompt: Option<String>,
    temperature: Option<f64>,
    key: String,
}

impl Send {
    fn of(conversation: Option<ConversationId>, action: Action, text: Option<String>) -> Self {
        Self {
            conversation,
            action,
            text,
            message_id: None,
            parent: None,
            model: None,
            system_prompt: None,
            temperature: None,
            key: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Starts a conversation with `text`.
    ///
    /// ```
    /// let send = confab_client::Send::new_conversation("Hello!");
    /// ```
    #[must_use]
    pub fn new_conversation(text: impl Into<String>) -> Self {
        Self::of(None, Action::Next, Some(text.into()))
    }

    /// Sends `text` into `conversation`, after its current node.
    ///
    /// ```
    /// # let id = confab_domain::ConversationId::generate();
    /// let send = confab_client::Send::message(id, "And then?");
    /// ```
    #[must_use]
    pub fn message(conversation: ConversationId, text: impl Into<String>) -> Self {
        Self::of(Some(conversation), Action::Next, Some(text.into()))
    }

    /// A new answer to the question the current node answers (or to the
    /// question [`Send::parent`] names).
    ///
    /// ```
    /// # let id = confab_domain::ConversationId::generate();
    /// let send = confab_client::Send::regenerate(id);
    /// ```
    #[must_use]
    pub fn regenerate(conversation: ConversationId) -> Self {
        Self::of(Some(conversation), Action::Variant, None)
    }

    /// Goes on with `answer`, which stopped early.
    ///
    /// ```
    /// # let id = confab_domain::ConversationId::generate();
    /// # let answer = confab_domain::MessageId::parse("a1").unwrap();
    /// let send = confab_client::Send::continue_answer(id, &answer);
    /// ```
    #[must_use]
    pub fn continue_answer(conversation: ConversationId, answer: &MessageId) -> Self {
        Self::of(Some(conversation), Action::Continue, None).parent(answer)
    }

    /// The message this one follows (an edit: a new branch beside the old
    /// one), or for a regeneration the question to answer again.
    ///
    /// ```
    /// # let id = confab_domain::ConversationId::generate();
    /// # let answer = confab_domain::MessageId::parse("a1").unwrap();
    /// let edit = confab_client::Send::message(id, "Or rather…").parent(&answer);
    /// ```
    #[must_use]
    pub fn parent(mut self, parent: &MessageId) -> Self {
        self.parent = Some(parent.as_str().to_owned());
        self
    }

    /// The new message's id (else the server makes one).
    ///
    /// ```
    /// let send = confab_client::Send::new_conversation("Hi").message_id("msg_001");
    /// ```
    #[must_use]
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// The model to answer with (one of [`Client::models`]).
    ///
    /// ```
    /// let send = confab_client::Send::new_conversation("Hi").model("gpt-4o-mini");
    /// ```
    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// A new conversation's own system prompt.
    ///
    /// ```
    /// let send = confab_client::Send::new_conversation("Hi").system_prompt("Be brief.");
    /// ```
    #[must_use]
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.system_prompt = Some(prompt.into());
        self
    }

    /// The sampling temperature (0 to 2).
    ///
    /// ```
    /// let send = confab_client::Send::new_conversation("Hi").temperature(0.7);
    /// ```
    #[must_use]
    pub fn temperature(mut self, temperature: f64) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// The `Idempotency-Key` to send (by default a random one per `Send`).
    ///
    /// ```
    /// let send = confab_client::Send::new_conversation("Hi").idempotency_key("order-42");
    /// assert_eq!(send.key(), "order-42");
    /// ```
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }

    /// The same send under a new random `Idempotency-Key`: a new message
    /// when sent, not a retry of this one.
    ///
    /// ```
    /// let send = confab_client::Send::new_conversation("Hi");
    /// let again = send.clone().new_key();
    /// assert_ne!(again.key(), send.key());
    /// ```
    #[must_use]
    pub fn new_key(mut self) -> Self {
        self.key = uuid::Uuid::new_v4().to_string();
        self
    }

    /// The conversation sent into (`None`: a new one).
    ///
    /// ```
    /// assert!(confab_client::Send::new_conversation("Hi").conversation().is_none());
    /// ```
    #[must_use]
    pub fn conversation(&self) -> Option<ConversationId> {
        self.conversation
    }

    /// The action.
    ///
    /// ```
    /// use confab_client::{Action, Send};
    /// assert_eq!(Send::new_conversation("Hi").action(), Action::Next);
    /// ```
    #[must_use]
    pub fn action(&self) -> Action {
        self.action
    }

    /// The `Idempotency-Key` this send and its retries carry.
    ///
    /// ```
    /// let send = confab_client::Send::new_conversation("Hi");
    /// assert!(!send.key().is_empty());
    /// ```
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    fn body(&self) -> Value {
        let mut body = Map::new();
        if let Some(text) = &self.text {
            let mut message = Map::new();
            if let Some(id) = &self.message_id {
                message.insert("id".into(), json!(id));
            }
            message.insert("role".into(), json!("user"));
            message.insert(
                "content".into(),
                json!({"content_type": "text", "parts": [text]}),
            );
            body.insert("messages".into(), json!([message]));
        }
        match self.action {
            Action::Next => {}
            Action::Variant => {
                body.insert("action".into(), json!("variant"));
            }
            Action::Continue => {
                body.insert("action".into(), json!("continue"));
            }
        }
        let optional = [
            ("parent_message_id", &self.parent),
            ("model", &self.model),
            ("system_prompt", &self.system_prompt),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                body.insert(name.into(), json!(value));
            }
        }
        if let Some(t) = self.temperature {
            body.insert("metadata".into(), json!({ "temperature": t }));
        }
        Value::Object(body)
    }

    /// The request, for `accept` (`text/event-stream` or
    /// `application/json`).
    pub(crate) fn call(&self, client: &Client, accept: &str) -> Result<Call, Error> {
        let path = match self.conversation {
            None => "api/v1/conversations".to_owned(),
            Some(id) => format!("api/v1/conversations/{id}/messages"),
        };
        Call::new(Method::POST, client.url(&path)?)
            .json(self.body())
            .header("accept", accept)?
            .header("idempotency-key", &self.key)
    }
}

/// The error of a response that did not come within `limit`.
pub(crate) fn silent(limit: Duration) -> Error {
    Error::Connection(format!(
        "no response within {} s (read timeout)",
        limit.as_secs_f32()
    ))
}

impl Client {
    /// Sends a message and streams its answer. The stream resumes by itself
    /// when its connection drops; a send whose request failed on the way is
    /// sent again with its idempotency key (the server then answers the
    /// first one's stream, and stores nothing twice). A retry that meets
    /// the first attempt still running (409) or a cap of readers (429) waits
    /// and tries again, a few times.
    ///
    /// ```no_run
    /// use futures_util::StreamExt;
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let mut answer = client.send(&confab_client::Send::new_conversation("Hi")).await?;
    /// while let Some(event) = answer.next().await {
    ///     if let confab_client::Event::Text(text) = event? {
    ///         print!("{text}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`]: 404 for an unknown conversation or parent, 409 while
    /// the conversation is still generating, 422 naming a field, 429 with
    /// `retry_after`, 503; [`Error::Connection`] when every attempt failed.
    pub async fn send(&self, send: &Send) -> Result<AnswerStream, Error> {
        let call = send.call(self, "text/event-stream")?;
        let response = self.with_retries(&call, Some(self.read_timeout())).await?;
        Ok(AnswerStream::new(
            self.clone(),
            call,
            send.conversation,
            response,
        ))
    }

    /// Sends a message and waits for the finished answer (JSON mode).
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let sent = client.send_json(&confab_client::Send::new_conversation("Hi")).await?;
    /// println!("{}", sent.message.text());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::send`], and 502 `UPSTREAM_ERROR`, 503, 504
    /// `UPSTREAM_TIMEOUT` when the model failed.
    pub async fn send_json(&self, send: &Send) -> Result<Sent, Error> {
        let call = send.call(self, "application/json")?;
        json(self.with_retries(&call, None).await?).await
    }

    /// Sends `call`, again (up to [`SEND_ATTEMPTS`] in all) while it fails
    /// in a way a retry may cure ([`retry_wait`]); each attempt's response
    /// head waits at most `timeout`, when given.
    async fn with_retries(
        &self,
        call: &Call,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, Error> {
        // The attempt whose result comes next, from 1.
        let mut attempt = 1;
        loop {
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit, self.authorized(call))
                    .await
                    .unwrap_or_else(|_| Err(silent(limit))),
                None => self.authorized(call).await,
            };
            match result {
                // Only a retry's 409 and 429 are retried: the first
                // attempt's are the caller's (a conversation still
                // generating, a rate limit).
                Err(e) if attempt < SEND_ATTEMPTS => match retry_wait(&e, attempt, attempt > 1) {
                    Some(wait) => {
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// Stops the answer running in `conversation`: it ends
    /// `finished_partial_completion` with the text so far, saved when this
    /// returns.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client, id: confab_domain::ConversationId)
    /// # -> Result<(), confab_client::Error> {
    /// client.stop(id).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Api`] 404 when nothing runs there.
    pub async fn stop(&self, conversation: ConversationId) -> Result<(), Error> {
        let url = self.url(&format!("api/v1/conversations/{conversation}/stream"))?;
        self.authorized(&Call::new(Method::DELETE, url))
            .await
            .map(|_| ())
    }
}
