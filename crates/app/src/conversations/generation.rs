//! The generation task: reads the model's stream, appends v1 events to the
//! stream log, saves the text in batches, and always ends the message and
//! the stream — on success, stop, failure and shutdown alike.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_domain::{
    AnswerUsage, Content, ConversationId, DomainError, ErrorCode, Message, MessageStatus,
    ModelSlug, OffsetDateTime, TokenUsage, UserId, WireEvent, events,
};
use confab_ports::{
    ChatModel, CompletionRequest, CompletionStream, FinishReason, LlmError, LlmEvent, StopSignal,
    TitleIfUntitled, Usage,
};
use futures_util::FutureExt;
use tokio::sync::{oneshot, watch};

use super::prompt::{TITLE_ANSWER_BYTES, clean_title, heuristic_title, title_request};
use super::{Inner, Slot};

/// One generation, owned by its task.
pub(super) struct Generation {
    pub(super) inner: Arc<Inner>,
    pub(super) owner: UserId,
    pub(super) conversation: ConversationId,
    pub(super) created: bool,
    pub(super) message: Message,
    pub(super) first_text: String,
    pub(super) model: ModelSlug,
    pub(super) chat_model: Arc<dyn ChatModel>,
    pub(super) shutdown: watch::Receiver<bool>,
    /// Where the generation says how it ended.
    pub(super) ended: watch::Sender<Option<AnswerEnd>>,
    /// The characters of the prompt sent, for an estimate of its tokens
    /// when the model reports none.
    pub(super) prompt_chars: usize,
    /// The usage the model reported at its end.
    pub(super) reported: Option<Usage>,
}

/// The model's answer being opened: the request is made while the send
/// stores its exchange.
type Opening<'a> = futures_util::future::CatchUnwind<
    AssertUnwindSafe<
        Pin<Box<dyn Future<Output = Result<Box<dyn CompletionStream>, LlmError>> + Send + 'a>>,
    >,
>;

/// What asking the model gave: its answer, its refusal, or a panic.
type Opened = std::thread::Result<Result<Box<dyn CompletionStream>, LlmError>>;

/// The outcome of a model adapter that panicked while asked.
fn panicked() -> Outcome {
    Outcome::Broken(DomainError::internal("the generation panicked"))
}

/// How an answer ended, as its sender learns it (a JSON-mode send waits
/// for this instead of reading the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerEnd {
    /// The model finished its turn: `finished_successfully`.
    Finished,
    /// The model reached the length cap: `finished_partial_completion`.
    Length,
    /// Someone stopped it: `finished_partial_completion`.
    Stopped,
    /// It failed with this code (the code of its stream's `error` event):
    /// `failed`, with the text it had.
    Failed(ErrorCode),
}

/// How a generation ended.
enum Outcome {
    /// The model finished (its turn, or the length cap).
    Finished(FinishReason),
    /// Someone asked it to stop.
    Stopped,
    /// The model failed.
    Failed(LlmError),
    /// The server is shutting down.
    Interrupted,
    /// Confab itself failed (the log or the database).
    Broken(DomainError),
}

impl Outcome {
    const fn status(&self) -> MessageStatus {
        match self {
            Self::Finished(FinishReason::Stop) => MessageStatus::FinishedSuccessfully,
            Self::Finished(FinishReason::Length) | Self::Stopped => {
                MessageStatus::FinishedPartialCompletion
            }
            Self::Failed(_) | Self::Interrupted | Self::Broken(_) => MessageStatus::Failed,
        }
    }

    /// The `error` event's code and message, for a failed generation.
    const fn error(&self) -> Option<(ErrorCode, &'static str)> {
        match self {
            Self::Failed(e) => Some((e.code(), e.public_message())),
            Self::Interrupted => Some((
                ErrorCode::Unavailable,
                "The server shut down while answering.",
            )),
            // The log or the database unreachable: a service outage, as
            // every request that needs them answers it.
            Self::Broken(DomainError::Unavailable(_)) => Some((
                ErrorCode::Unavailable,
                "The answer could not be completed: a service it needs is unavailable.",
            )),
            Self::Broken(_) => Some((
                ErrorCode::InternalError,
                "The answer could not be completed.",
            )),
            Self::Finished(_) | Self::Stopped => None,
        }
    }

    /// What the sender is told.
    const fn end(&self) -> AnswerEnd {
        match (self, self.error()) {
            (_, Some((code, _))) => AnswerEnd::Failed(code),
            (Self::Finished(FinishReason::Length), None) => AnswerEnd::Length,
            (Self::Stopped, None) => AnswerEnd::Stopped,
            (_, None) => AnswerEnd::Finished,
        }
    }
}

/// The most events one append carries.
const MAX_BATCH: usize = 64;

/// Attempts at the final save of an answer (a partial save is tried once:
/// the next one carries its text).
const SAVE_ATTEMPTS: u32 = 3;

/// The pause after a failed final save, times the attempt's number.
const SAVE_BACKOFF: Duration = Duration::from_millis(200);

/// Resolves once shutdown is signalled (never if the sender is gone).
async fn shutting_down(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Generation {
    /// Runs the generation to its end. The slot is held until then.
    ///
    /// The model is asked at once, while the sender stores the exchange;
    /// nothing reaches the log before `stored` says the exchange is
    /// committed (and its opening events are in the log). When the sender
    /// gives up instead (`stored` dropped), the generation ends without a
    /// trace: the sender undoes the start.
    pub(super) async fn run(
        mut self,
        mut stop: Box<dyn StopSignal>,
        slot: Slot,
        stored: oneshot::Receiver<()>,
        request: CompletionRequest,
    ) {
        let _slot = slot;
        let began = Instant::now();
        let chat_model = Arc::clone(&self.chat_model);
        // Caught here: the model is asked before the generation's own
        // guard below, and its panic must end the answer like any other.
        let mut opening: Opening<'_> =
            AssertUnwindSafe(chat_model.complete(request)).catch_unwind();
        let mut stored = stored;
        let mut opened = None;
        let committed = loop {
            tokio::select! {
                biased;
                done = &mut stored => break done.is_ok(),
                result = &mut opening, if opened.is_none() => opened = Some(result),
            }
        };
        if !committed {
            return;
        }
        // A continue goes on from the text the answer has.
        let mut text = self.message.content.joined();
        let continued_from = text.chars().count();
        // A panic must not leave the message in progress and its readers
        // waiting: it ends the generation like any internal failure.
        let outcome = AssertUnwindSafe(self.generate(stop.as_mut(), &mut text, opened, opening))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| panicked());
        match &outcome {
            Outcome::Failed(e) => {
                tracing::warn!(conversation = %self.conversation, error = %e, "generation failed")
            }
            Outcome::Broken(e) => {
                tracing::error!(conversation = %self.conversation, error = %e, "generation broken")
            }
            _ => {}
        }
        let generated = text.chars().count().saturating_sub(continued_from);
        self.finish(outcome, text, generated, began).await;
    }

    /// Records the answer's tokens: as the model reported them, or (a
    /// server that reports none, an answer stopped or failed before the
    /// model's end) estimated from the prompt's characters and the
    /// `generated` ones. An answer the model never began records nothing.
    /// A failure is logged: the answer stands.
    async fn record_usage(&self, generated: usize) {
        let tokens = match self.reported {
            Some(u) => TokenUsage::reported(u.prompt_tokens, u.completion_tokens),
            None if generated > 0 => TokenUsage::estimate(self.prompt_chars, generated),
            None => return,
        };
        let usage = AnswerUsage {
            user: self.owner,
            model: self.model.clone(),
            at: self.inner.now(),
            tokens,
        };
        if let Err(e) = self.inner.ports.usage.record(&usage).await {
            tracing::warn!(conversation = %self.conversation, error = %e, "could not record an answer's usage");
        }
    }

    /// Appends `events` to the log in one step.
    async fn emit_all(&self, events: Vec<WireEvent>) -> Result<(), DomainError> {
        if events.is_empty() {
            return Ok(());
        }
        self.inner
            .ports
            .log
            .append_all(self.conversation, events)
            .await
    }

    /// Appends events at the end of a generation in one step; a failure
    /// is logged (and the log is still closed).
    async fn emit_logged(&self, events: Vec<Result<WireEvent, DomainError>>) {
        if let Err(e) = self.emit_all(self.built(events)).await {
            tracing::error!(conversation = %self.conversation, error = %e, "could not append to the stream log");
        }
    }

    /// The events that could be built; the others are logged.
    fn built(&self, events: Vec<Result<WireEvent, DomainError>>) -> Vec<WireEvent> {
        let mut ready = Vec::with_capacity(events.len());
        for event in events {
            match event {
                Ok(event) => ready.push(event),
                Err(e) => {
                    tracing::error!(conversation = %self.conversation, error = %e, "could not build a stream event");
                }
            }
        }
        ready
    }

    /// Streams the answer from `opened` (the model's answer, when it came
    /// while the exchange was stored) or else from `opening`.
    async fn generate(
        &mut self,
        stop: &mut dyn StopSignal,
        text: &mut String,
        opened: Option<Opened>,
        opening: Opening<'_>,
    ) -> Outcome {
        let rules = &self.inner.rules;
        // The stop, the shutdown and the flush's timer are each waited for
        // by one future for the whole answer, not one made (and a timer
        // taken and given back) for every piece the model sends.
        let mut stopped = stop.stopped();
        let mut shutdown = self.shutdown.clone();
        let shutting = shutting_down(&mut shutdown);
        tokio::pin!(shutting);
        let opened = match opened {
            Some(opened) => {
                // Done with: its box (the request's state) goes now, not
                // at the answer's end.
                drop(opening);
                opened
            }
            None => tokio::select! {
                biased;
                () = &mut stopped => return Outcome::Stopped,
                () = &mut shutting => return Outcome::Interrupted,
                opened = opening => opened,
            },
        };
        let Ok(opened) = opened else {
            return panicked();
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e),
        };
        let flush_every = rules.flush_interval;
        let mut last_flush = Instant::now();
        let flush_at = |last: Instant| tokio::time::Instant::from_std(last + flush_every);
        let flush = tokio::time::sleep_until(flush_at(last_flush));
        tokio::pin!(flush);
        let start = text.len();
        let mut flushed = start;
        let mut chars = text.chars().count();
        loop {
            // Text not yet saved is saved when its time comes even if the
            // model goes quiet: a crash then loses at most one interval.
            let unsaved = text.len() != flushed;
            let next = tokio::select! {
                biased;
                () = &mut stopped => return Outcome::Stopped,
                () = &mut shutting => return Outcome::Interrupted,
                () = &mut flush, if unsaved => {
                    self.save(text, MessageStatus::InProgress, self.inner.now()).await;
                    flushed = text.len();
                    last_flush = Instant::now();
                    flush.as_mut().reset(flush_at(last_flush));
                    continue;
                }
                // Cancel-safe (the port's promise): the flush branch above
                // interrupts it and the loop asks again.
                next = stream.next() => next,
            };
            let mut usage = None;
            let (batch, ended) =
                self.drain(next, stream.as_mut(), text, start, &mut chars, &mut usage);
            if usage.is_some() {
                self.reported = usage;
            }
            if let Err(e) = self.emit_all(batch).await {
                return Outcome::Broken(e);
            }
            if let Some(outcome) = ended {
                return outcome;
            }
            if last_flush.elapsed() >= flush_every && text.len() != flushed {
                self.save(text, MessageStatus::InProgress, self.inner.now())
                    .await;
                flushed = text.len();
                last_flush = Instant::now();
                flush.as_mut().reset(flush_at(last_flush));
            }
        }
    }

    /// The events of `first` and of everything else the model has already
    /// sent (up to [`MAX_BATCH`] events), and the outcome if one of them
    /// ended the generation. Under load, pieces pile up while an append is
    /// under way, and the next append takes them all. `text` had `start`
    /// bytes before this generation.
    fn drain(
        &self,
        first: Result<Option<LlmEvent>, LlmError>,
        stream: &mut dyn CompletionStream,
        text: &mut String,
        start: usize,
        chars: &mut usize,
        usage: &mut Option<Usage>,
    ) -> (Vec<WireEvent>, Option<Outcome>) {
        let mut batch = Vec::new();
        let mut ended = None;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Ok(Some(LlmEvent::Text(piece))) => {
                    match self.take_piece(&piece, text, start, chars, &mut batch) {
                        Ok(false) => {}
                        Ok(true) => ended = Some(Outcome::Finished(FinishReason::Length)),
                        Err(e) => ended = Some(Outcome::Broken(e)),
                    }
                }
                Ok(Some(LlmEvent::Finished {
                    reason,
                    usage: reported,
                })) => {
                    *usage = reported;
                    ended = Some(Outcome::Finished(reason));
                }
                Ok(None) => ended = Some(Outcome::Finished(FinishReason::Stop)),
                Err(e) => ended = Some(Outcome::Failed(e)),
            }
            if ended.is_none() && batch.len() < MAX_BATCH {
                // Cancel-safe (the port's promise): a piece not ready now
                // is asked for again by the loop.
                next = stream.next().now_or_never();
            }
        }
        (batch, ended)
    }

    /// Adds the events of a piece of text to `batch` (the first-token
    /// marker before the generation's first text: `text` had `start` bytes
    /// before it); `true` when the piece reached the length cap.
    fn take_piece(
        &self,
        piece: &str,
        text: &mut String,
        start: usize,
        chars: &mut usize,
        batch: &mut Vec<WireEvent>,
    ) -> Result<bool, DomainError> {
        // PostgreSQL can't store NUL, and what is stored must equal what
        // was streamed: drop it from both.
        let room = Content::MAX_CHARS - *chars;
        let clean: String = piece.chars().filter(|c| *c != '\0').collect();
        let capped = clean.chars().count() > room;
        let kept: String = if capped {
            clean.chars().take(room).collect()
        } else {
            clean
        };
        if !kept.is_empty() {
            if text.len() == start {
                batch.push(events::first_token_marker(
                    self.conversation,
                    &self.message.id,
                )?);
            }
            batch.push(events::append_text(&kept)?);
            *chars += kept.chars().count();
            text.push_str(&kept);
        }
        Ok(capped)
    }

    /// Saves the text so far, as updated `at`, and invalidates the cached
    /// reads that show it; a failure is logged (the next save, or the
    /// final one, carries the text).
    async fn save(&self, text: &str, status: MessageStatus, at: OffsetDateTime) -> bool {
        let (saved, _) = self.store_text(text, status, at, None).await;
        if saved {
            self.inner.invalidate(self.owner, self.conversation).await;
        }
        saved
    }

    /// [`Self::save`] without the invalidation, which the caller makes,
    /// and with `title` given to the new conversation in the same write
    /// (see [`Self::store_title`]); whether the text was saved, and
    /// whether the conversation has the title.
    async fn store_text(
        &self,
        text: &str,
        status: MessageStatus,
        at: OffsetDateTime,
        title: Option<&confab_domain::Title>,
    ) -> (bool, bool) {
        let content =
            Content::text(vec![text.to_owned()]).unwrap_or_else(|_| Content::empty_text());
        let messages = &self.inner.ports.messages;
        let placeholder = confab_domain::Title::placeholder();
        for attempt in 0..SAVE_ATTEMPTS {
            let stored = match title {
                None => messages
                    .update_content(self.conversation, &self.message.id, &content, status, at)
                    .await
                    .map(|()| false),
                Some(title) => {
                    let title = TitleIfUntitled {
                        owner: self.owner,
                        untitled: &placeholder,
                        title,
                    };
                    messages
                        .update_content_titled(
                            self.conversation,
                            &self.message.id,
                            &content,
                            status,
                            at,
                            title,
                        )
                        .await
                }
            };
            match stored {
                Ok(titled) => return (true, titled),
                // No such answer in progress: its conversation was deleted,
                // or it was closed meanwhile (the orphan sweep, a reader
                // that found this generation gone), which stands.
                Err(DomainError::NotFound) => return (false, false),
                Err(e) => {
                    tracing::warn!(conversation = %self.conversation, attempt, error = %e, "could not save a generation");
                    if status == MessageStatus::InProgress {
                        return (false, false);
                    }
                    tokio::time::sleep(SAVE_BACKOFF * (attempt + 1)).await;
                }
            }
        }
        (false, false)
    }

    async fn finish(&self, outcome: Outcome, text: String, generated: usize, began: Instant) {
        let mut outcome = outcome;
        let chars = text.chars().count();
        // The final delta carries the time stored with the final text, so a
        // replayed stream equals the stored message.
        let at = self.inner.now();
        // The usage is written with the final text (one wait for both, in
        // one group commit when they meet) and before the stream ends: a
        // client that reads its usage after the answer's end finds it
        // counted, and so does its next send's allowance check.
        // A new conversation's title that the model is not asked for is
        // known now: it is stored with the final text, in the same change
        // of the conversation's row as the preview, rather than in a write
        // (a transaction) of its own after the answer's end.
        let ask_model = matches!(outcome, Outcome::Finished(_)) && self.model_titles();
        let early_title = (self.created && !ask_model).then(|| heuristic_title(&self.first_text));
        let ((saved, titled), ()) = tokio::join!(
            self.store_text(&text, outcome.status(), at, early_title.as_ref()),
            self.record_usage(generated),
        );
        let early_title = match early_title {
            // The answer was closed by someone else meanwhile, or could not
            // be saved: the conversation is titled all the same.
            Some(title) if !saved => {
                let titled = self.store_title(&title).await;
                Some((title, titled))
            }
            Some(title) => Some((title, titled)),
            None => None,
        };
        // One invalidation for the text and the title, before the final
        // delta: a client that reads the conversation once it has the
        // final delta finds both.
        if saved || early_title.as_ref().is_some_and(|(_, titled)| *titled) {
            self.inner.invalidate(self.owner, self.conversation).await;
        }
        if !saved && outcome.status() != MessageStatus::Failed {
            // The stream must not claim what the database doesn't hold.
            outcome = Outcome::Broken(DomainError::unavailable("the answer could not be saved"));
        }
        let status = outcome.status();
        self.emit_logged(vec![events::finish(status, at)]).await;
        let mut closing = Vec::with_capacity(3);
        if self.created {
            let (title, titled) = match early_title {
                Some(stored) => stored,
                None => {
                    let title = self.title().await;
                    let titled = self.store_title(&title).await;
                    if titled {
                        self.inner.invalidate(self.owner, self.conversation).await;
                    }
                    (title, titled)
                }
            };
            if titled {
                closing.push(events::title(title.as_str(), self.conversation));
            }
        }
        closing.push(match outcome.error() {
            Some((code, message)) => events::error(code, message, self.conversation),
            None => events::stream_complete(self.conversation),
        });
        closing.push(Ok(events::done()));
        // The closing events and the close in one step: no reader has
        // `[DONE]` while the log is open, so a client may send its next
        // message the moment it has it, to any instance.
        let closing = self.built(closing);
        if let Err(e) = self
            .inner
            .ports
            .log
            .finish(self.conversation, closing)
            .await
        {
            tracing::error!(conversation = %self.conversation, error = %e, "could not end the stream log");
        }
        // Nobody may be waiting: then there is no one to tell.
        let _ = self.ended.send(Some(outcome.end()));
        tracing::info!(
            conversation = %self.conversation,
            message = %self.message.id.as_str(),
            status = status.as_str(),
            chars,
            elapsed_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
            "generation ended"
        );
    }

    /// Whether a new conversation's title is asked of the model (when its
    /// answer finished): title generation is on and the server is not
    /// shutting down.
    fn model_titles(&self) -> bool {
        self.inner.rules.title_generation && !*self.shutdown.borrow()
    }

    /// Stores `title` as the new conversation's, if it is still untitled (a
    /// rename made while the answer was generating wins); whether it did.
    /// A failure is logged: the conversation keeps its placeholder.
    async fn store_title(&self, title: &confab_domain::Title) -> bool {
        match self
            .inner
            .ports
            .conversations
            .set_generated_title(
                self.owner,
                self.conversation,
                &confab_domain::Title::placeholder(),
                title,
                self.inner.now(),
            )
            .await
        {
            Ok(titled) => titled,
            Err(e) => {
                tracing::warn!(conversation = %self.conversation, error = %e, "could not store the title");
                false
            }
        }
    }

    /// A title for a new conversation whose answer finished: the model's,
    /// when it answers in time; else one made from the first message.
    async fn title(&self) -> confab_domain::Title {
        let rules = &self.inner.rules;
        if self.model_titles() {
            let request = title_request(&self.model, &self.first_text);
            let asked = async {
                let mut stream = self.chat_model.complete(request).await.ok()?;
                let mut title = String::new();
                while let Ok(Some(LlmEvent::Text(piece))) = stream.next().await {
                    title.push_str(&piece);
                    if title.len() > TITLE_ANSWER_BYTES {
                        break;
                    }
                }
                clean_title(&title)
            };
            if let Ok(Some(title)) = tokio::time::timeout(rules.title_timeout, asked).await {
                return title;
            }
            tracing::debug!(conversation = %self.conversation, "title call failed; using the heuristic");
        }
        heuristic_title(&self.first_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_broken_by_an_outage_ends_unavailable_and_by_a_bug_internal() {
        let outage = Outcome::Broken(DomainError::unavailable("redis: the log is down"));
        assert_eq!(outage.end(), AnswerEnd::Failed(ErrorCode::Unavailable));
        assert_eq!(outage.status(), MessageStatus::Failed);
        let bug = Outcome::Broken(DomainError::internal("a bad reply"));
        assert_eq!(bug.end(), AnswerEnd::Failed(ErrorCode::InternalError));
    }
}
