//! An answer as it streams: typed events, the message as it builds up,
//! and transparent resumption of a dropped connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use confab_domain::{ConversationId, DeltaApplier, ErrorCode, EventName, MessageStatus};
use futures_util::{FutureExt, Stream, StreamExt};
use reqwest::Method;
use serde_json::Value;

use crate::send::{backoff, retry_wait, silent};
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
    /// Reading a response's events; `silence` fires when nothing (no
    /// event, no keep-alive comment) came for the client's read timeout.
    Reading {
        body: Body,
        silence: Pin<Box<tokio::time::Sleep>>,
    },
    Connecting(Connecting),
    Ended,
}

/// What a received event asks of the stream.
enum Flow {
    /// Read on.
    Continue,
    /// The server interrupted the stream: resume it from the last event id.
    Resume,
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
    /// What the next polls give, in order: events, then possibly the
    /// error that ended the stream.
    pending: VecDeque<Result<Event, Error>>,
    state: State,
    /// Failed attempts since the last new event received.
    failures: u32,
    /// The answer's end (`Ended` or `Complete`) was received: a resumption
    /// that fails now only lost the stream's last events, and ends it
    /// without an error.
    finished: bool,
}

impl std::fmt::Debug for AnswerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerStream")
            .field("conversation", &self.conversation)
            .field("last_event_id", &self.last_event_id)
            .finish_non_exhaustive()
    }
}

/// The state that reads `response`'s events, timed out after `silence`.
fn reading(response: reqwest::Response, silence: Duration) -> State {
    State::Reading {
        body: Box::pin(
            response
                .bytes_stream()
                .map(|chunk| chunk.map(|b| b.to_vec())),
        ),
        silence: Box::pin(tokio::time::sleep(silence)),
    }
}

impl AnswerStream {
    pub(crate) fn new(
        client: Client,
        send: Call,
        conversation: Option<ConversationId>,
        response: reqwest::Response,
    ) -> Self {
        Self {
            send,
            conversation,
            resume_token: None,
            last_event_id: None,
            applier: DeltaApplier::new(),
            title: None,
            parser: Parser::default(),
            pending: VecDeque::new(),
            state: reading(response, client.read_timeout()),
            client,
            failures: 0,
            finished: false,
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

    /// Starts a resumption after `wait` (by default a backoff), or ends the
    /// stream when too many attempts failed: with [`Error::StreamLost`]
    /// saying `why`, or without an error once the answer's end arrived.
    fn reconnect(&mut self, why: String, wait: Option<Duration>) {
        self.failures += 1;
        if self.failures > RESUME_ATTEMPTS {
            self.give_up(Error::StreamLost(why));
            return;
        }
        let call = match self.resume_call() {
            Ok(call) => call,
            Err(e) => {
                self.give_up(e);
                return;
            }
        };
        let client = self.client.clone();
        let wait = wait.unwrap_or_else(|| backoff(self.failures));
        let limit = client.read_timeout();
        self.state = State::Connecting(Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            tokio::time::timeout(limit, client.authorized(&call))
                .await
                .unwrap_or_else(|_| Err(silent(limit)))
        }));
        self.parser = Parser::default();
    }

    /// Ends the stream after a resumption that can't succeed: with `error`,
    /// unless the answer's end had arrived (then only the stream's last
    /// events, the title or `[DONE]`, were lost).
    fn give_up(&mut self, error: Error) {
        self.state = State::Ended;
        if !self.finished {
            self.pending.push_back(Err(error));
        }
    }

    /// Turns one received event into typed events (queued).
    fn receive(&mut self, raw: RawEvent) -> Result<Flow, Error> {
        if raw.id.is_some() && raw.id != self.last_event_id {
            // Progress: a break after it gets its attempts anew. (An
            // interruption repeats the last id, and is no progress.)
            self.failures = 0;
            self.last_event_id.clone_from(&raw.id);
        }
        if raw.event.is_none() && raw.data == "[DONE]" {
            self.pending.push_back(Ok(Event::Done));
            self.state = State::Ended;
            return Ok(Flow::Continue);
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
        if let Event::Failed {
            code: Some(ErrorCode::Unavailable),
            ..
        } = &event
        {
            // Before the answer's final delta, `UNAVAILABLE` is the server
            // saying it could not deliver the stream to its end (the
            // answer may well go on): resume from the last event id, and
            // drop the `[DONE]` that follows. After it (a shutdown ending
            // the answer), it is the answer's failure.
            let running = self
                .message_state()
                .is_none_or(|(_, status)| status == MessageStatus::InProgress);
            if running {
                return Ok(Flow::Resume);
            }
        }
        if matches!(event, Event::Ended(_) | Event::Complete) {
            self.finished = true;
        }
        self.pending.push_back(Ok(event));
        Ok(Flow::Continue)
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

impl AnswerStream {
    /// Reads on: queues what `bytes` complete, or starts a resumption when
    /// the server interrupted the stream. A protocol error is queued after
    /// the events before it, and ends the stream.
    fn take(&mut self, bytes: &[u8]) {
        let (events, failure) = self.parser.feed(bytes);
        for raw in events {
            match self.receive(raw) {
                Ok(Flow::Continue) if matches!(self.state, State::Ended) => return,
                Ok(Flow::Continue) => {}
                Ok(Flow::Resume) => {
                    self.reconnect("the server interrupted the stream".to_owned(), None);
                    return;
                }
                Err(e) => {
                    self.state = State::Ended;
                    self.pending.push_back(Err(e));
                    return;
                }
            }
        }
        if let Some(e) = failure {
            self.state = State::Ended;
            self.pending.push_back(Err(e));
        }
    }
}

impl Stream for AnswerStream {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            match &mut this.state {
                State::Ended => return Poll::Ready(None),
                State::Reading { body, silence } => match body.poll_next_unpin(cx) {
                    Poll::Pending => {
                        if silence.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        let limit = this.client.read_timeout();
                        let why = format!(
                            "nothing received for {} s (read timeout)",
                            limit.as_secs_f32()
                        );
                        this.reconnect(why, None);
                    }
                    Poll::Ready(Some(Ok(bytes))) => {
                        let limit = this.client.read_timeout();
                        silence.as_mut().reset(tokio::time::Instant::now() + limit);
                        this.take(&bytes);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.reconnect(Error::transport(e).to_string(), None);
                    }
                    Poll::Ready(None) => {
                        this.reconnect("the stream ended before [DONE]".to_owned(), None);
                    }
                },
                State::Connecting(connecting) => match connecting.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(response)) => {
                        this.state = reading(response, this.client.read_timeout());
                        this.pending.push_back(Ok(Event::Reconnected));
                    }
                    Poll::Ready(Err(e)) => {
                        // A resumption is always a repeat: its 409 (the
                        // send's key still held) and 429 (a cap of
                        // readers) pass.
                        match retry_wait(&e, this.failures + 1, true) {
                            Some(wait) => this.reconnect(e.to_string(), Some(wait)),
                            None => this.give_up(e),
                        }
                    }
                },
            }
        }
    }
}
