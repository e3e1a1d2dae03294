//! [`StreamLog`] in process memory: one log per conversation, each log's
//! events in a `Vec` behind a `tokio::sync::watch` channel.
//!
//! The watch channel does two jobs: it holds the events (readers borrow it
//! for as long as it takes to clone one `Arc`, never across an await), and
//! it wakes every waiting reader when an event is appended or the log is
//! closed. Readers keep their own index into the `Vec`, so a slow reader
//! costs the writer nothing and loses nothing: the writer only ever pushes.
//!
//! Closed logs are dropped lazily: every `open`, `read` and `current`
//! first drops those closed longer than the retention ago. Nothing is
//! spawned, so nothing outlives the runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use confab_domain::{ConversationId, DomainError, Field, MessageId, WireEvent};
use confab_ports::{
    Erasure, ErasureTargets, EventFeed, LogHead, LoggedEvent, ReadFrom, StopSignal, StreamLog,
};
use tokio::sync::watch;

/// Limits of a [`MemoryStreamLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLogOptions {
    /// How long a closed log is kept for readers that resume late.
    pub retention: Duration,
    /// The most events one log holds; appending more fails.
    pub max_events_per_log: usize,
    /// The most logs held at once, open or closed.
    pub max_logs: usize,
}

/// What readers see of one log.
#[derive(Default)]
struct Events {
    /// `Arc`'d so a reader clones a pointer while it borrows the channel,
    /// and copies the text after letting go.
    list: Vec<Arc<LoggedEvent>>,
    closed: bool,
}

/// One generation's log.
struct Log {
    /// Tells a log from the one that replaced it in the same conversation.
    generation: u64,
    message: MessageId,
    /// `None` while open.
    closed_at: Option<Instant>,
    events: watch::Sender<Events>,
    /// This log's own stop flag: a stop asked of a later generation must not
    /// reach this one's signal.
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct Logs {
    by_conversation: HashMap<ConversationId, Log>,
    /// Closed logs, oldest close first (closes happen under the lock, so
    /// the order of pushes is the order of close times). An entry whose
    /// log has since been replaced is stale and skipped.
    closed: VecDeque<(ConversationId, u64)>,
    next_generation: u64,
}

impl Logs {
    fn is_current(&self, conversation: ConversationId, generation: u64) -> bool {
        self.by_conversation
            .get(&conversation)
            .is_some_and(|log| log.generation == generation)
    }

    /// Drops the logs closed longer than `retention` ago.
    fn prune(&mut self, retention: Duration, now: Instant) {
        while let Some(&(conversation, generation)) = self.closed.front() {
            let expired = match self.by_conversation.get(&conversation) {
                Some(log) if log.generation == generation => log
                    .closed_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= retention),
                // Stale: that log was already replaced or dropped.
                _ => true,
            };
            if !expired {
                break;
            }
            self.closed.pop_front();
            if self.is_current(conversation, generation) {
                self.by_conversation.remove(&conversation);
            }
        }
    }

    /// Drops the oldest closed log; `false` when every log is open.
    fn evict_oldest_closed(&mut self) -> bool {
        while let Some((conversation, generation)) = self.closed.pop_front() {
            if self.is_current(conversation, generation) {
                self.by_conversation.remove(&conversation);
                return true;
            }
        }
        false
    }

    /// Records a close. Stale entries pile up when one conversation is
    /// reopened and closed many times within the retention; compacting
    /// when they outnumber the logs keeps the queue bounded at O(1)
    /// amortised cost.
    fn push_closed(&mut self, conversation: ConversationId, generation: u64) {
        self.closed.push_back((conversation, generation));
        if self.closed.len() > 2 * self.by_conversation.len() + 16 {
            let by_conversation = &self.by_conversation;
            self.closed.retain(|&(c, g)| {
                by_conversation
                    .get(&c)
                    .is_some_and(|log| log.generation == g && log.closed_at.is_some())
            });
        }
    }
}

/// The stream logs of one process. Readers on other instances cannot see
/// them: with several instances, use a shared backend instead.
pub struct MemoryStreamLog {
    options: StreamLogOptions,
    logs: Mutex<Logs>,
}

impl MemoryStreamLog {
    /// An empty set of logs with these limits.
    #[must_use]
    pub fn new(options: StreamLogOptions) -> Self {
        Self {
            options,
            logs: Mutex::new(Logs::default()),
        }
    }

    /// How many logs are held, open or closed (for tests of the bounds).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().by_conversation.len()
    }

    /// Whether no log is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock, with expired logs already dropped.
    fn pruned(&self) -> MutexGuard<'_, Logs> {
        let mut logs = self.lock();
        logs.prune(self.options.retention, Instant::now());
        logs
    }

    /// Appends `events` to the conversation's open log under one lock,
    /// waking its readers once (none when nothing changed), and with
    /// `close` closes it in the same step: its readers get the events and
    /// the end together. The id of the last event appended. Refused as
    /// unavailable at the first event that does not fit (those before it
    /// stay, and the log is still closed when asked).
    fn push(
        &self,
        conversation: ConversationId,
        events: impl IntoIterator<Item = WireEvent>,
        close: bool,
    ) -> Result<Option<String>, DomainError> {
        let mut logs = self.lock();
        let log = logs
            .by_conversation
            .get_mut(&conversation)
            .filter(|log| log.closed_at.is_none())
            .ok_or(DomainError::NotFound)?;
        let max = self.options.max_events_per_log;
        let mut full = false;
        let mut last = None;
        // `send_if_modified` so a refused append wakes nobody.
        log.events.send_if_modified(|list| {
            let before = list.list.len();
            for event in events {
                if list.list.len() >= max {
                    full = true;
                    break;
                }
                let number = list.list.len() + 1;
                list.list.push(Arc::new(LoggedEvent {
                    id: number.to_string(),
                    event,
                }));
                last = Some(number);
            }
            list.closed |= close;
            list.list.len() != before || close
        });
        if close {
            log.closed_at = Some(Instant::now());
            let generation = log.generation;
            logs.push_closed(conversation, generation);
        }
        if full {
            return Err(DomainError::unavailable("the stream log is full"));
        }
        Ok(last.map(|number| number.to_string()))
    }
}

/// Parses a `Last-Event-ID` into how many events the reader has seen:
/// only the ids this log gave (`1` to `len`, written canonically) pass.
fn position_after(id: &str, len: usize) -> Result<usize, DomainError> {
    let invalid = || DomainError::invalid(Field::LastEventId, "not an event id of this stream");
    let n: usize = id.parse().map_err(|_| invalid())?;
    // `parse` also takes `+1` and `01`, which this log never gave.
    if n == 0 || n > len || n.to_string() != id {
        return Err(invalid());
    }
    Ok(n)
}

#[async_trait]
impl StreamLog for MemoryStreamLog {
    async fn open(
        &self,
        conversation: ConversationId,
        message: &MessageId,
    ) -> Result<Box<dyn StopSignal>, DomainError> {
        let mut logs = self.pruned();
        match logs.by_conversation.get(&conversation) {
            Some(log) if log.closed_at.is_none() => {
                return Err(DomainError::Duplicate {
                    field: Field::ConversationId,
                });
            }
            // A closed log is replaced in place: the count does not grow.
            Some(_) => {}
            None => {
                if logs.by_conversation.len() >= self.options.max_logs
                    && !logs.evict_oldest_closed()
                {
                    return Err(DomainError::unavailable(
                        "too many generations are streaming at once",
                    ));
                }
            }
        }
        let generation = logs.next_generation;
        logs.next_generation += 1;
        let (stop, stop_rx) = watch::channel(false);
        // Replacing drops the old log's senders: its readers, which hold
        // receivers, still read what it had and then see it closed.
        logs.by_conversation.insert(
            conversation,
            Log {
                generation,
                message: message.clone(),
                closed_at: None,
                events: watch::Sender::new(Events::default()),
                stop,
            },
        );
        Ok(Box::new(MemoryStopSignal(stop_rx)))
    }

    async fn append(
        &self,
        conversation: ConversationId,
        event: WireEvent,
    ) -> Result<String, DomainError> {
        self.push(conversation, std::iter::once(event), false)?
            .ok_or_else(|| DomainError::internal("an append of one event gave no id"))
    }

    /// All of `events` under one lock, waking the readers once: a batch of
    /// pieces that piled up is one wake-up, not one per event.
    async fn append_all(
        &self,
        conversation: ConversationId,
        events: Vec<WireEvent>,
    ) -> Result<(), DomainError> {
        self.push(conversation, events, false).map(drop)
    }

    async fn close(&self, conversation: ConversationId) -> Result<(), DomainError> {
        match self.push(conversation, std::iter::empty(), true) {
            // Nothing open to close (never opened, closed, or expired):
            // closing is idempotent.
            Err(DomainError::NotFound) => Ok(()),
            closed => closed.map(drop),
        }
    }

    /// The events and the end under one lock, one wake-up.
    async fn finish(
        &self,
        conversation: ConversationId,
        events: Vec<WireEvent>,
    ) -> Result<(), DomainError> {
        self.push(conversation, events, true).map(drop)
    }

    async fn current(&self, conversation: ConversationId) -> Result<LogHead, DomainError> {
        let logs = self.pruned();
        let log = logs
            .by_conversation
            .get(&conversation)
            .ok_or(DomainError::NotFound)?;
        Ok(LogHead {
            message: log.message.clone(),
            open: log.closed_at.is_none(),
        })
    }

    async fn read(
        &self,
        conversation: ConversationId,
        from: ReadFrom,
    ) -> Result<Box<dyn EventFeed>, DomainError> {
        let logs = self.pruned();
        let log = logs
            .by_conversation
            .get(&conversation)
            .ok_or(DomainError::NotFound)?;
        let events = log.events.subscribe();
        let next = match from {
            ReadFrom::Start => 0,
            ReadFrom::After(id) => position_after(&id, events.borrow().list.len())?,
        };
        Ok(Box::new(MemoryFeed {
            events,
            next,
            orphaned: false,
        }))
    }

    async fn request_stop(&self, conversation: ConversationId) -> Result<bool, DomainError> {
        let logs = self.lock();
        match logs
            .by_conversation
            .get(&conversation)
            .filter(|log| log.closed_at.is_none())
        {
            Some(log) => {
                // `send_replace` stores the flag even before anyone awaits
                // the signal, so a later `stopped` resolves at once.
                log.stop.send_replace(true);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// A reader of one log, at its own position.
struct MemoryFeed {
    events: watch::Receiver<Events>,
    /// Index of the next event to yield.
    next: usize,
    /// The log was dropped while still open (the whole store went away).
    orphaned: bool,
}

#[async_trait]
impl EventFeed for MemoryFeed {
    async fn next(&mut self) -> Result<Option<LoggedEvent>, DomainError> {
        loop {
            {
                // Marking the value seen before looking at it means an
                // append after this look makes `changed` resolve: no wakeup
                // is lost between the check and the wait.
                let events = self.events.borrow_and_update();
                if let Some(event) = events.list.get(self.next).map(Arc::clone) {
                    drop(events);
                    self.next += 1;
                    return Ok(Some(LoggedEvent::clone(&event)));
                }
                if events.closed {
                    return Ok(None);
                }
            }
            if self.orphaned {
                return Err(DomainError::unavailable(
                    "the stream log was dropped while open",
                ));
            }
            if self.events.changed().await.is_err() {
                // The sender is gone; look once more at the final value.
                self.orphaned = true;
            }
        }
    }
}

/// Resolves when a stop is requested of the log it was opened with.
struct MemoryStopSignal(watch::Receiver<bool>);

#[async_trait]
impl StopSignal for MemoryStopSignal {
    async fn stopped(&mut self) {
        // `wait_for` looks at the current value first, so a stop requested
        // before this call resolves at once.
        if self.0.wait_for(|stopped| *stopped).await.is_err() {
            // The log is gone without a stop: none will ever come.
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Erasure for MemoryStreamLog {
    async fn erase(&self, targets: &ErasureTargets) -> Result<u64, DomainError> {
        let mut logs = self.lock();
        let before = logs.by_conversation.len();
        // A log dropped here leaves a stale entry in `closed`, skipped as
        // any replaced log's is.
        logs.by_conversation
            .retain(|conversation, _| !targets.names(&conversation.to_string()));
        Ok(u64::try_from(before - logs.by_conversation.len()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::position_after;

    proptest! {
        /// A `Last-Event-ID` is taken only as an id this log gave: `1` to
        /// its length, written canonically.
        #[test]
        fn only_given_ids_are_positions(
            id in prop_oneof![any::<String>(), "[0-9+ -]{1,6}"],
            len in 0_usize..1_000,
        ) {
            let given = (1..=len).map(|n| n.to_string()).any(|n| n == id);
            match position_after(&id, len) {
                Ok(n) => {
                    prop_assert!(given);
                    prop_assert_eq!(n.to_string(), id);
                }
                Err(_) => prop_assert!(!given),
            }
        }
    }
}
