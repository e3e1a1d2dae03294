//! An answer as it streams: typed events, the message as it builds up,
//! and transparent resumption of a dropped connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use confab_domain::{ConversationId, DeltaApplier, ErrorCode, EventName, MessageStatus};
use futures_util::{FutureExt, Stream, StreamExt};
use reqwest::Method;
use serde_json::Value;

use crate::send::backoff;
use crate::sse::{Parser, RawEvent};
use crate::{Call, Client, Error, Message};

/// Attempts to resume one break of a stream before giving up.
const RESUME_ATTEMPTS: u32 = 6;

/// One event of an answer's stream, typed.
///
/// ```no_run
/// use confab_client::Event;
/// use futures_util::StreamExt;
/// # async fn demo(mut answer: confab_client::AnswerStream) -> Result<(), confab_client::Error> {
/// while let Some(event) = answer.next().await {
///     match event? {
///         Event::Text(text) => print!("{text}"),
///         Event::Ended(status) => println!("\n({status:?})"),
///         Event::Failed { message, .. } => println!("\nfailed: {message}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The stream's encoding (`v1`).
    Encoding(String),
    /// The answer's conversation is known (a new one's id).
    Started(ConversationId),
    /// The question, as stored.
    Input(Message),
    /// The answer, empty (or, for a continue, with the text it had) and
    /// `in_progress`.
    Added(Message),
    /// The first visible text follows.
    FirstToken,
    /// More text of the answer.
    Text(String),
    /// The answer ended so: `finished_successfully`,
    /// `finished_partial_completion` (stopped, or cut), or `failed`.
    Ended(MessageStatus),
    /// Another change to the answer.
    Changed,
    /// The new conversation's title.
    Title(String),
    /// The generation failed (the model, a timeout, shutdown).
    Failed {
        /// The code, when this client knows it.
        code: Option<ErrorCode>,
        /// What happened, for people.
        message: String,
    },
    /// No more changes are coming.
    Complete,
    /// The stream's end (`[DONE]`).
    Done,
    /// The connection dropped and the stream was resumed where it broke.
    Reconnected,
    /// An event this client does not know (a newer server's), as JSON.
    Other(Value),
}

type Body = Pin<Box<dyn Stream<Item = Result<Vec<u8>, reqwest::Error>> + Send>>;
type Connecting = Pin<Box<dyn Future<Output = Result<reqwest::Response, Error>> + Send>>;

enum State {
    Reading(Body),
    Connecting(Connecting),
    Ended,
}

/// A streamed answer: a [`Stream`] of [`Event`]s, ending after
/// [`Event::Done`], that also keeps the message the events build
/// ([`AnswerStream::message`]). A dropped connection is resumed from the
/// last event id (`GET …/stream` with the stream's resume token, or the
/// send again with its idempotency key before the token arrived), so no
/// text is lost or repeated; [`Event::Reconnected`] says it happened.
///
/// ```no_run
/// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
/// let mut answer = client.send(&confab_client::Send::new_conversation("Hi")).await?;
/// let message = answer.finish().await?;
/// println!("{}", message.text());
/// # Ok(()) }
/// ```
pub struct AnswerStream {
    client: Client,
    send: Call,
    conversation: Option<ConversationId>,
    resume_token: Option<String>,
    last_event_id: Option<String>,
    applier: DeltaApplier,
    title: Option<String>,
    parser: Parser,
    pending: VecDeque<Event>,
    state: State,
    /// Failed attempts since the last event received.
    failures: u32,
}

impl std::fmt::Debug for AnswerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerStream")
            .field("conversation", &self.conversation)
            .field("last_event_id", &self.last_event_id)
            .finish_non_exhaustive()
    }
}

fn body_of(response: reqwest::Response) -> Body {
    Box::pin(
        response
            .bytes_stream()
            .map(|chunk| chunk.map(|b| b.to_vec())),
    )
}

impl AnswerStream {
    pub(crate) fn new(
        client: Client,
        send: Call,
        conversation: Option<ConversationId>,
        response: reqwest::Response,
    ) -> Self {
        Self {
            client,
            send,
            conversation,
            resume_token: None,
            last_event_id: None,
            applier: DeltaApplier::new(),
            title: None,
            parser: Parser::default(),
            pending: VecDeque::new(),
            state: State::Reading(body_of(response)),
            failures: 0,
        }
    }

    /// The conversation, once the stream has named it (at once for a send
    /// into an existing one).
    ///
    /// ```no_run
    /// # async fn demo(answer: confab_client::AnswerStream, client: confab_client::Client)
    /// # -> Result<(), confab_client::Error> {
    /// if let Some(id) = answer.conversation_id() {
    ///     client.stop(id).await?;
    /// }
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn conversation_id(&self) -> Option<ConversationId> {
        self.conversation
    }

    /// The answer as the events so far built it (`None` before its `add`).
    ///
    /// ```no_run
    /// # fn demo(answer: &confab_client::AnswerStream) {
    /// if let Some(message) = answer.message() {
    ///     println!("{:?}: {}", message.status, message.text());
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn message(&self) -> Option<Message> {
        serde_json::from_value(self.applier.document().get("message")?.clone()).ok()
    }

    /// The answer's text so far.
    ///
    /// ```no_run
    /// # fn demo(answer: &confab_client::AnswerStream) {
    /// println!("{}", answer.text());
    /// # }
    /// ```
    #[must_use]
    pub fn text(&self) -> String {
        text_of(self.applier.document())
    }

    /// The new conversation's title, once the stream has sent it.
    ///
    /// ```no_run
    /// # fn demo(answer: &confab_client::AnswerStream) {
    /// println!("{}", answer.title().unwrap_or("(untitled)"));
    /// # }
    /// ```
    #[must_use]
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    /// Reads the stream to its end; returns the answer as it ended. The
    /// stream still tells its conversation and title afterwards.
    ///
    /// ```no_run
    /// # async fn demo(client: confab_client::Client) -> Result<(), confab_client::Error> {
    /// let mut answer = client.send(&confab_client::Send::new_conversation("Hi")).await?;
    /// let message = answer.finish().await?;
    /// println!("{:?}: {}", answer.conversation_id(), message.text());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The stream's error: it broke and could not be resumed, or sent what
    /// this client can't read; [`Error::Protocol`] when it ended with no
    /// answer.
    pub async fn finish(&mut self) -> Result<Message, Error> {
        while let Some(event) = self.next().await {
            event?;
        }
        self.message()
            .ok_or_else(|| Error::Protocol("the stream ended without an answer".to_owned()))
    }

    /// The request that picks the stream up after its last event.
    fn resume_call(&self) -> Result<Call, Error> {
        let mut call = match (self.conversation, &self.resume_token) {
            (Some(id), Some(token)) => {
                let url = self
                    .client
                    .url(&format!("api/v1/conversations/{id}/stream"))?;
                Call::new(Method::GET, url)
                    .header("accept", "text/event-stream")?
                    .header("x-resume-token", token)?
            }
            // Before the token: the send again, with its key.
            _ => Call {
                method: self.send.method.clone(),
                url: self.send.url.clone(),
                body: self.send.body.clone(),
                headers: self.send.headers.clone(),
            },
        };
        if let Some(id) = &self.last_event_id {
            call = call.header("last-event-id", id)?;
        }
        Ok(call)
    }

    /// Starts a resumption, or ends the stream with `why` when too many
    /// attempts failed.
    fn reconnect(&mut self, why: String) -> Option<Error> {
        self.failures += 1;
        if self.failures > RESUME_ATTEMPTS {
            self.state = State::Ended;
            return Some(Error::StreamLost(why));
        }
        let call = match self.resume_call() {
            Ok(call) => call,
            Err(e) => {
                self.state = State::Ended;
                return Some(e);
            }
        };
        let client = self.client.clone();
        let wait = backoff(self.failures);
        self.state = State::Connecting(Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            client.authorized(&call).await
        }));
        self.parser = Parser::default();
        None
    }

    /// Turns one received event into typed events (queued).
    fn receive(&mut self, raw: RawEvent) -> Result<(), Error> {
        if raw.id.is_some() {
            self.last_event_id.clone_from(&raw.id);
        }
        self.failures = 0;
        if raw.event.is_none() && raw.data == "[DONE]" {
            self.pending.push_back(Event::Done);
            self.state = State::Ended;
            return Ok(());
        }
        let data: Value = serde_json::from_str(&raw.data)
            .map_err(|e| Error::Protocol(format!("event data: {e}")))?;
        let event = match raw.event.as_deref().and_then(EventName::parse) {
            Some(EventName::DeltaEncoding) => {
                Event::Encoding(data.as_str().unwrap_or_default().to_owned())
            }
            Some(EventName::Delta) => self.delta(&data)?,
            None => self.typed(data),
        };
        self.pending.push_back(event);
        Ok(())
    }

    fn delta(&mut self, frame: &Value) -> Result<Event, Error> {
        let before = self.message_state();
        self.applier
            .apply_json(frame)
            .map_err(|e| Error::Protocol(format!("a delta that does not apply: {e}")))?;
        if let Some(id) = self.applier.document()["conversation_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
        {
            self.conversation.get_or_insert(id);
        }
        let after = self.message_state();
        Ok(match (before, after) {
            (None, Some(_)) => match self.message() {
                Some(message) => Event::Added(message),
                None => Event::Changed,
            },
            (Some((_, MessageStatus::InProgress)), Some((_, status)))
                if status != MessageStatus::InProgress =>
            {
                Event::Ended(status)
            }
            (Some((old, _)), Some((new, _))) if new.len() > old.len() && new.starts_with(&old) => {
                Event::Text(new[old.len()..].to_owned())
            }
            _ => Event::Changed,
        })
    }

    /// The answer's text and status, once it has been added.
    fn message_state(&self) -> Option<(String, MessageStatus)> {
        let message = self.applier.document().get("message")?;
        let status = serde_json::from_value(message.get("status")?.clone()).ok()?;
        Some((text_of(self.applier.document()), status))
    }

    fn typed(&mut self, data: Value) -> Event {
        let conversation = data["conversation_id"]
            .as_str()
            .and_then(|id| id.parse::<ConversationId>().ok());
        match data["type"].as_str() {
            Some("resume_conversation_token") => {
                self.resume_token = data["token"].as_str().map(str::to_owned);
                match conversation {
                    Some(id) => {
                        self.conversation = Some(id);
                        Event::Started(id)
                    }
                    None => Event::Other(data),
                }
            }
            Some("input_message") => {
                match serde_json::from_value::<Message>(data["input_message"].clone()) {
                    Ok(message) => Event::Input(message),
                    Err(_) => Event::Other(data),
                }
            }
            Some("message_marker") => Event::FirstToken,
            Some("title_generation") => {
                self.title = data["title"].as_str().map(str::to_owned);
                match &self.title {
                    Some(title) => Event::Title(title.clone()),
                    None => Event::Other(data),
                }
            }
            Some("error") => Event::Failed {
                code: serde_json::from_value(data["error"]["code"].clone()).ok(),
                message: data["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            },
            Some("message_stream_complete") => Event::Complete,
            _ => Event::Other(data),
        }
    }
}

/// The joined text parts of the message in `document`.
fn text_of(document: &Value) -> String {
    document["message"]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

impl Stream for AnswerStream {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            match &mut this.state {
                State::Ended => return Poll::Ready(None),
                State::Reading(body) => match body.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(bytes))) => {
                        for raw in this.parser.feed(&bytes) {
                            if matches!(this.state, State::Ended) {
                                break;
                            }
                            if let Err(e) = this.receive(raw) {
                                this.state = State::Ended;
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(e) = this.reconnect(Error::transport(&e).to_string()) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Poll::Ready(None) => {
                        let why = "the stream ended before [DONE]".to_owned();
                        if let Some(e) = this.reconnect(why) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                },
                State::Connecting(connecting) => match connecting.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(response)) => {
                        this.state = State::Reading(body_of(response));
                        this.pending.push_back(Event::Reconnected);
                    }
                    Poll::Ready(Err(e)) if e.is_connection() => {
                        if let Some(e) = this.reconnect(e.to_string()) {
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        this.state = State::Ended;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }
}
