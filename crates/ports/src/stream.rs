//! The stream log: the events of a generation, kept so that any number of
//! readers can follow it and a reader that lost its connection can resume.

use async_trait::async_trait;
use confab_domain::{ConversationId, DomainError, MessageId, WireEvent};

/// One event of a generation as a reader gets it: the event the generation
/// appended, under its id in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Its id in the log: the SSE `id:`, what a reader resumes after.
    pub id: String,
    /// The event, as appended.
    pub event: WireEvent,
}

/// Whose generation a conversation's log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// The answer being (or last) generated.
    pub message: MessageId,
    /// Whether the generation still runs (the log is not closed).
    pub open: bool,
}

/// Where a reader starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// The first event.
    Start,
    /// The event after this id (an SSE `Last-Event-ID`).
    After(String),
}

/// A reader of one log: yields every event from where it started, waits for
/// more while the generation runs, and ends after the last.
#[async_trait]
pub trait EventFeed: Send {
    /// The next event; `Ok(None)` when the log is closed and read to its end.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the log's backend fails, or
    /// [`DomainError::NotFound`] when the log expired under the reader.
    async fn next(&mut self) -> Result<Option<LoggedEvent>, DomainError>;
}

/// Resolves when someone asks the generation to stop.
#[async_trait]
pub trait StopSignal: Send {
    /// Waits until a stop is requested (forever if none is).
    async fn stopped(&mut self);
}

/// The logs of generations, one per conversation: the latest generation's.
#[async_trait]
pub trait StreamLog: Send + Sync + 'static {
    /// Opens a new log for `message`'s generation in `conversation`,
    /// replacing a closed one, and returns the signal a stop request sets.
    ///
    /// # Errors
    /// [`DomainError::Duplicate`] on `conversation_id` while another
    /// generation of that conversation is still open.
    async fn open(
        &self,
        conversation: ConversationId,
        message: &MessageId,
    ) -> Result<Box<dyn StopSignal>, DomainError>;

    /// Appends an event to the open log and returns its id.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when no log is open for the conversation;
    /// [`DomainError::Unavailable`] when the log is full or its backend
    /// fails.
    async fn append(
        &self,
        conversation: ConversationId,
        event: WireEvent,
    ) -> Result<String, DomainError>;

    /// Appends `events` in order to the open log, in one step where the
    /// backend can (one round trip on Redis): what a generation has to say
    /// at one moment (its opening events, the text that arrived while the
    /// previous append was under way, its closing events). Either every
    /// event is appended or the call fails; on failure some may have been.
    ///
    /// # Errors
    /// As [`append`](StreamLog::append).
    async fn append_all(
        &self,
        conversation: ConversationId,
        events: Vec<WireEvent>,
    ) -> Result<(), DomainError> {
        for event in events {
            self.append(conversation, event).await?;
        }
        Ok(())
    }

    /// Closes the log: readers get what is in it and then the end; it is
    /// kept for the configured retention, then dropped. Closing a log that
    /// is not open (never opened, already closed, expired) does nothing.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails.
    async fn close(&self, conversation: ConversationId) -> Result<(), DomainError>;

    /// Appends `events`, the generation's last (its closing events, ending
    /// with `[DONE]`), and closes the log, so that no reader anywhere has
    /// them before the log is closed: a client that has read `[DONE]` can
    /// [`open`](StreamLog::open) the conversation's next generation at
    /// once, on any instance, without finding this one still open. The log
    /// is closed even when the append fails.
    ///
    /// # Errors
    /// As [`append_all`](StreamLog::append_all) and
    /// [`close`](StreamLog::close): the append's error first.
    async fn finish(
        &self,
        conversation: ConversationId,
        events: Vec<WireEvent>,
    ) -> Result<(), DomainError>;

    /// The message whose generation the conversation's log holds, and
    /// whether it is still open.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when there is no log (never opened, or
    /// expired).
    async fn current(&self, conversation: ConversationId) -> Result<LogHead, DomainError>;

    /// A reader of the conversation's log from `from`.
    ///
    /// Event ids are unique within one generation's log only: an id that a
    /// replaced generation gave may be refused or taken as a position in
    /// the current one (the in-process log numbers every log's events from
    /// 1). A caller resuming a given answer checks first, with
    /// [`current`](StreamLog::current), that the log still holds it.
    ///
    /// # Errors
    /// [`DomainError::NotFound`] when there is no log;
    /// [`DomainError::Invalid`] on `Last-Event-ID` for an id this log never
    /// gave.
    async fn read(
        &self,
        conversation: ConversationId,
        from: ReadFrom,
    ) -> Result<Box<dyn EventFeed>, DomainError>;

    /// Asks the conversation's open generation to stop. `Ok(false)` when
    /// none is open.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the backend fails.
    async fn request_stop(&self, conversation: ConversationId) -> Result<bool, DomainError>;
}
