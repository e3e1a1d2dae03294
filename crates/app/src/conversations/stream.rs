//! Reading a generation's stream: following it, resuming it, stopping it.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use confab_domain::{
    ConversationId, DomainError, ErrorCode, Field, MessageId, MessageStatus, WireEvent, events,
};
use confab_ports::{AccessClaims, EventFeed, LoggedEvent, ReadFrom};
use futures_util::future::BoxFuture;

use super::{Conversations, Inner, ReaderSlot};
use crate::AppError;

impl Conversations {
    /// A reader of the stream of a generation the caller just started
    /// (from [`Conversations::send`]), from its first event. It counts
    /// among the caller's readers but is never refused by their caps: the
    /// send's own generation cap bounds these.
    ///
    /// # Errors
    /// [`AppError::Unavailable`] when the log's backend fails.
    pub async fn follow(
        &self,
        caller: &AccessClaims,
        conversation: ConversationId,
    ) -> Result<Box<dyn EventFeed>, AppError> {
        let slot = self.inner.reader_slot(caller.user_id, conversation, true)?;
        let feed = self
            .inner
            .ports
            .log
            .read(conversation, ReadFrom::Start)
            .await?;
        Ok(Box::new(Guarded::new(feed, conversation, None, slot, None)))
    }

    /// Resumes the stream of the conversation's generation for its owner:
    /// the events after `last_event_id` (all of them without one), then
    /// live ones while it runs. The resume token must be the one this
    /// generation's stream gave the caller.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for another user's or a missing conversation,
    /// or when no stream of that generation is kept any more;
    /// [`AppError::Validation`] without a resume token;
    /// [`AppError::Forbidden`] for an invalid or expired one, or one issued
    /// for another user or conversation;
    /// [`AppError::Validation`] for a `Last-Event-ID` the stream never gave;
    /// [`AppError::TooManyReaders`] when the caller, or the answer, already
    /// has as many readers on this instance as allowed.
    pub async fn resume(
        &self,
        caller: &AccessClaims,
        conversation: ConversationId,
        resume_token: Option<&str>,
        last_event_id: Option<String>,
    ) -> Result<Box<dyn EventFeed>, AppError> {
        let ports = &self.inner.ports;
        ports
            .conversations
            .get(caller.user_id, conversation)
            .await?;
        let token = resume_token.ok_or_else(|| AppError::Validation {
            field: Field::ResumeToken,
            message: "send the resume_conversation_token of the stream".into(),
        })?;
        let claims = ports
            .resume_tokens
            .verify_resume(token)
            .map_err(|_| AppError::Forbidden)?;
        if claims.user_id != caller.user_id || claims.conversation_id != conversation {
            return Err(AppError::Forbidden);
        }
        self.read_answer(caller, conversation, &claims.message_id, last_event_id)
            .await
    }

    /// Re-attaches the owner to the stream of the answer `message` (an
    /// idempotent retry of the send that started it): the events after
    /// `last_event_id` (all without one), then live ones while it runs.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for another user's or a missing conversation,
    /// or when that answer's stream is no longer kept;
    /// [`AppError::Validation`] for a `Last-Event-ID` the stream never gave;
    /// [`AppError::TooManyReaders`] as for [`Conversations::resume`].
    pub async fn reattach(
        &self,
        caller: &AccessClaims,
        conversation: ConversationId,
        message: &MessageId,
        last_event_id: Option<String>,
    ) -> Result<Box<dyn EventFeed>, AppError> {
        self.inner
            .ports
            .conversations
            .get(caller.user_id, conversation)
            .await?;
        self.read_answer(caller, conversation, message, last_event_id)
            .await
    }

    /// The stream of the answer `wanted`, if the conversation's log still
    /// holds it.
    async fn read_answer(
        &self,
        caller: &AccessClaims,
        conversation: ConversationId,
        wanted: &MessageId,
        last_event_id: Option<String>,
    ) -> Result<Box<dyn EventFeed>, AppError> {
        let ports = &self.inner.ports;
        let slot = self
            .inner
            .reader_slot(caller.user_id, conversation, false)?;
        let holds_claimed = || async {
            match ports.log.current(conversation).await {
                Ok(head) => Ok(&head.message == wanted),
                Err(DomainError::NotFound) => Ok(false),
                Err(e) => Err(e),
            }
        };
        let orphan = Orphan {
            inner: Arc::clone(&self.inner),
            message: wanted.clone(),
        };
        // The stream of that generation may have been replaced by a later
        // one. Logs are only ever replaced by newer ones, so the claimed log
        // current before and after the read is the log that was read.
        if !holds_claimed().await? {
            // No log holds it: gone with its retention, or its generation
            // died (its instance was killed) and the lease ran out. The
            // latter is still in progress: end it now, as saved.
            let stored = ports.messages.find(conversation, wanted).await?;
            if stored.is_some_and(|m| m.status == MessageStatus::InProgress) {
                return Ok(Box::new(Guarded::new(
                    Box::new(Gone),
                    conversation,
                    last_event_id,
                    slot,
                    Some(orphan),
                )));
            }
            return Err(AppError::NotFound);
        }
        let from = last_event_id
            .clone()
            .map_or(ReadFrom::Start, ReadFrom::After);
        let feed = ports.log.read(conversation, from).await?;
        if !holds_claimed().await? {
            return Err(AppError::NotFound);
        }
        Ok(Box::new(Guarded::new(
            feed,
            conversation,
            last_event_id,
            slot,
            Some(orphan),
        )))
    }

    /// Stops the generation running in one of the caller's conversations
    /// and waits (a bounded time) until it has saved its text and ended its
    /// stream, so a read that follows sees the final message.
    ///
    /// # Errors
    /// [`AppError::NotFound`] for another user's or a missing conversation,
    /// or when nothing is generating in it.
    pub async fn stop(
        &self,
        caller: &AccessClaims,
        conversation: ConversationId,
    ) -> Result<(), AppError> {
        let ports = &self.inner.ports;
        ports
            .conversations
            .get(caller.user_id, conversation)
            .await?;
        if !ports.log.request_stop(conversation).await? {
            return Err(AppError::NotFound);
        }
        let mut feed = ports.log.read(conversation, ReadFrom::Start).await?;
        let drained = async {
            while let Some(_event) = feed.next().await? {}
            Ok::<(), DomainError>(())
        };
        match tokio::time::timeout(self.inner.rules.stop_wait, drained).await {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}

/// The code and message of the `error` event that ends a stream the log
/// could not deliver to its end.
const INTERRUPTED: (ErrorCode, &str) = (
    ErrorCode::Unavailable,
    "The stream was interrupted. Resume it from the last event id.",
);

/// The code and message of the `error` event that ends a resumed stream
/// whose generation died (its instance was killed).
const GENERATION_LOST: (ErrorCode, &str) = (
    ErrorCode::Unavailable,
    "The instance running this answer stopped; the answer is closed with the text it had saved.",
);

/// The log of a generation that is gone: its first read says so.
struct Gone;

#[async_trait]
impl EventFeed for Gone {
    async fn next(&mut self) -> Result<Option<LoggedEvent>, DomainError> {
        Err(DomainError::NotFound)
    }
}

/// The answer a resumed stream follows, to close it if its generation is
/// found dead (the orphan sweep's work, done at once for this reader).
#[derive(Clone)]
struct Orphan {
    inner: Arc<Inner>,
    message: MessageId,
}

impl Orphan {
    /// The events that end a resumed stream whose generation is gone: the
    /// answer as stored once closed. `None` when it can't be closed or
    /// read now, or is still held after all (the stream then ends as
    /// interrupted; the sweep closes the answer later).
    async fn closed(self, conversation: ConversationId) -> Option<Vec<WireEvent>> {
        let closing = async {
            self.inner.close_orphan(conversation, &self.message).await?;
            let Some(stored) = self
                .inner
                .ports
                .messages
                .find(conversation, &self.message)
                .await?
            else {
                return Ok(None);
            };
            if stored.status == MessageStatus::InProgress {
                return Ok(None);
            }
            let text = stored.content.parts().concat();
            let end = if stored.status == MessageStatus::FinishedSuccessfully {
                events::stream_complete(conversation)?
            } else {
                let (code, message) = GENERATION_LOST;
                events::error(code, message, conversation)?
            };
            Ok::<_, AppError>(Some(vec![
                events::replace_text(&text)?,
                events::finish(stored.status, stored.updated_at)?,
                end,
                events::done(),
            ]))
        };
        match closing.await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(%conversation, error = %e, "could not close an answer whose generation is gone");
                None
            }
        }
    }
}

/// A reader that never ends silently: when the log fails under it, or ends
/// after giving events but before the stream's `[DONE]`, it ends with an
/// `error` event (code `UNAVAILABLE`) and `[DONE]`, both under the id of
/// the last event it delivered, so that a client resuming from the last id
/// it saw loses nothing. When the log says the generation is gone (no
/// instance holds it any more), a resumed stream closes the answer as the
/// orphan sweep would and ends with it as stored instead: its saved text
/// (a `replace`), its final status, an `error` event and `[DONE]`.
struct Guarded {
    feed: Box<dyn EventFeed>,
    conversation: ConversationId,
    /// The id of the last event delivered (or resumed after).
    last_id: String,
    /// An event was delivered.
    delivered: bool,
    /// `[DONE]` was delivered.
    done: bool,
    /// The closing events, once the log failed.
    ending: VecDeque<LoggedEvent>,
    /// Nothing more comes.
    ended: bool,
    /// Its place among the counted readers, held while it lives.
    _slot: ReaderSlot,
    /// The answer it resumes, when it resumes one.
    orphan: Option<Orphan>,
    /// Closing that answer, once its generation was found gone: kept
    /// here, so that a `next` dropped meanwhile (the keep-alive timer of
    /// the SSE body) resumes it instead of losing it.
    closing: Option<BoxFuture<'static, Option<Vec<WireEvent>>>>,
}

impl Guarded {
    fn new(
        feed: Box<dyn EventFeed>,
        conversation: ConversationId,
        after: Option<String>,
        slot: ReaderSlot,
        orphan: Option<Orphan>,
    ) -> Self {
        Self {
            feed,
            conversation,
            last_id: after.unwrap_or_default(),
            delivered: false,
            done: false,
            ending: VecDeque::new(),
            ended: false,
            _slot: slot,
            orphan,
            closing: None,
        }
    }

    /// The events that end an interrupted stream.
    fn interrupted(&self) -> Result<VecDeque<LoggedEvent>, DomainError> {
        let (code, message) = INTERRUPTED;
        let error = events::error(code, message, self.conversation)?;
        Ok(self.numbered(vec![error, events::done()]))
    }

    /// `events`, each under the id of the last event delivered.
    fn numbered(&self, events: Vec<WireEvent>) -> VecDeque<LoggedEvent> {
        events
            .into_iter()
            .map(|event| LoggedEvent {
                id: self.last_id.clone(),
                event,
            })
            .collect()
    }
}

#[async_trait]
impl EventFeed for Guarded {
    async fn next(&mut self) -> Result<Option<LoggedEvent>, DomainError> {
        if let Some(event) = self.ending.pop_front() {
            return Ok(Some(event));
        }
        if let Some(closing) = self.closing.as_mut() {
            let closed = closing.await;
            self.closing = None;
            self.ending = match closed {
                Some(events) => {
                    tracing::warn!(conversation = %self.conversation, "a resumed answer's generation is gone; ending its stream with the answer as saved");
                    self.numbered(events)
                }
                None => self.interrupted()?,
            };
            return Ok(self.ending.pop_front());
        }
        if self.ended {
            return Ok(None);
        }
        let failure = match self.feed.next().await {
            Ok(Some(event)) => {
                self.done = event.event.is_done();
                self.delivered = true;
                self.last_id.clone_from(&event.id);
                return Ok(Some(event));
            }
            // A resume after the last event gets nothing, and that is the
            // end; a log that gave events and ends without `[DONE]` lost
            // its last ones.
            Ok(None) if self.done || !self.delivered => None,
            Ok(None) => Some(DomainError::unavailable("the log ended before [DONE]")),
            // After `[DONE]` the stream is whole whatever the log says.
            Err(_) if self.done => None,
            Err(e) => Some(e),
        };
        self.ended = true;
        let Some(error) = failure else {
            return Ok(None);
        };
        if matches!(error, DomainError::NotFound)
            && let Some(orphan) = self.orphan.clone()
        {
            self.closing = Some(Box::pin(orphan.closed(self.conversation)));
            return self.next().await;
        }
        tracing::warn!(conversation = %self.conversation, %error, "a stream could not be read to its end; ending it with an error event");
        self.ending = self.interrupted()?;
        Ok(self.ending.pop_front())
    }
}
