//! Sending a message: what a send asks for ([`Send`]), streamed or in
//! JSON mode, retried with its idempotency key; stopping an answer.

use std::time::Duration;

use confab_domain::{ConversationId, MessageId};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::stream::AnswerStream;
use crate::{Call, Client, Error, Sent, json};

/// How many times a send is sent again, with its key, after its
/// connection failed.
const SEND_ATTEMPTS: u32 = 4;

/// The wait before attempt `n` (from 1) of something that failed on the
/// way: none for the first retry, then 100 ms doubling.
pub(crate) fn backoff(attempt: u32) -> Duration {
    match attempt {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(100u64 << (n - 2).min(6)),
    }
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
/// ```
/// use confab_client::Send;
/// let send = Send::new_conversation("Explain Redis caching")
///     .system_prompt("Answer in one paragraph.")
///     .temperature(0.2);
/// assert!(send.conversation().is_none());
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

impl Client {
    /// Sends a message and streams its answer. The stream resumes by itself
    /// when its connection drops; a send whose request failed on the way is
    /// sent again with its idempotency key (the server then answers the
    /// first one's stream, and stores nothing twice).
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
        let response = self.with_retries(&call).await?;
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
        json(self.with_retries(&call).await?).await
    }

    /// Sends `call`, again (up to [`SEND_ATTEMPTS`] in all) while its
    /// connection fails.
    async fn with_retries(&self, call: &Call) -> Result<reqwest::Response, Error> {
        let mut attempt = 1;
        loop {
            match self.authorized(call).await {
                Err(e) if e.is_connection() && attempt < SEND_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
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
