//! The events of a generation this instance runs, as it numbered them,
//! kept in process for the readers on this instance: the reader of a send
//! (and any resume that lands here) follows the generation without reading
//! Redis at all. An event is added here when it is appended, before Redis
//! has it, under the id it will have in Redis, so a local reader and a
//! reader on any other instance see the same events under the same ids,
//! and a client can resume on either.
//!
//! The copy lives from `open` to `close` on this instance (bounded by the
//! log's most events); readers that hold it finish reading it after that.

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{EventFeed, LoggedEvent};
use tokio::sync::watch;

/// How a local copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Closed: readers end after the last event.
    Closed,
    /// An append failed for good: readers end with an error, and the client
    /// may resume from Redis (which holds what was stored).
    Failed,
}

/// What readers see.
#[derive(Debug, Default)]
pub(super) struct Copy {
    events: Vec<LoggedEvent>,
    end: Option<End>,
    /// A close began: appends are refused, and the readers wait for the
    /// generation's last events and its end.
    sealed: bool,
}

/// The writing side, held by the instance's record of the generation.
#[derive(Debug)]
pub(super) struct LocalLog {
    tx: watch::Sender<Copy>,
}

impl LocalLog {
    pub(super) fn new() -> Self {
        Self {
            tx: watch::Sender::new(Copy::default()),
        }
    }

    /// Adds appended events; none once the copy ended (after a failed
    /// append Redis lacks events, so the copy must not look whole) or was
    /// sealed.
    pub(super) fn extend(&self, events: impl IntoIterator<Item = LoggedEvent>) {
        self.tx.send_if_modified(|copy| {
            if copy.end.is_some() || copy.sealed {
                return false;
            }
            copy.events.extend(events);
            true
        });
    }

    /// Refuses appends from now on; readers go on waiting, for
    /// [`close_with`](Self::close_with).
    pub(super) fn seal(&self) {
        self.tx.send_if_modified(|copy| {
            copy.sealed = true;
            false
        });
    }

    /// Runs `f` on the events the copy holds, in order.
    pub(super) fn with_events<R>(&self, f: impl FnOnce(&[LoggedEvent]) -> R) -> R {
        f(&self.tx.borrow().events)
    }

    /// Whether an append failed: readers go to Redis instead.
    pub(super) fn failed(&self) -> bool {
        self.tx.borrow().end == Some(End::Failed)
    }

    /// Readers end after what they have and `last`, which they get with
    /// the end, in one wake-up (sealed or not; nothing once ended).
    pub(super) fn close_with(&self, last: Vec<LoggedEvent>) {
        self.end(End::Closed, last);
    }

    /// Readers end with an error after what they have.
    pub(super) fn fail(&self) {
        self.end(End::Failed, Vec::new());
    }

    fn end(&self, end: End, last: Vec<LoggedEvent>) {
        self.tx.send_if_modified(|copy| {
            if copy.end.is_some() {
                return false;
            }
            copy.events.extend(last);
            copy.end = Some(end);
            true
        });
    }

    /// A reader from the first event, or after the event `after`; `None`
    /// when `after` is not an event of this copy.
    pub(super) fn reader(&self, after: Option<&str>) -> Option<LocalFeed> {
        let next = match after {
            None => 0,
            Some(id) => {
                self.tx
                    .borrow()
                    .events
                    .iter()
                    .position(|event| event.id == id)?
                    + 1
            }
        };
        Some(LocalFeed {
            rx: self.tx.subscribe(),
            next,
        })
    }
}

/// A reader of a local copy, at its own position.
pub(super) struct LocalFeed {
    rx: watch::Receiver<Copy>,
    next: usize,
}

#[async_trait]
impl EventFeed for LocalFeed {
    async fn next(&mut self) -> Result<Option<LoggedEvent>, DomainError> {
        loop {
            {
                let copy = self.rx.borrow_and_update();
                if let Some(event) = copy.events.get(self.next) {
                    self.next += 1;
                    return Ok(Some(event.clone()));
                }
                match copy.end {
                    Some(End::Closed) => return Ok(None),
                    Some(End::Failed) => {
                        return Err(DomainError::unavailable(
                            "redis: the stream log could not be written",
                        ));
                    }
                    None => {}
                }
            }
            // Cancel-safe: the position is ours, the wait holds nothing.
            if self.rx.changed().await.is_err() {
                // The instance let go of the generation without closing it
                // (a newer generation replaced it here): nothing more comes.
                let copy = self.rx.borrow();
                if copy.events.len() > self.next || copy.end.is_some() {
                    continue;
                }
                return Err(DomainError::NotFound);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> LoggedEvent {
        LoggedEvent {
            id: id.to_owned(),
            event: confab_domain::WireEvent {
                name: Some(confab_domain::EventName::Delta),
                data: format!("{{\"v\":\"{id}\"}}"),
            },
        }
    }

    #[tokio::test]
    async fn a_reader_gets_every_event_then_the_end() {
        let log = LocalLog::new();
        log.extend([event("1"), event("2")]);
        let mut feed = log.reader(None).unwrap();
        assert_eq!(feed.next().await.unwrap(), Some(event("1")));
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = feed.next().await.unwrap() {
                got.push(e.id);
            }
            got
        });
        log.extend([event("3")]);
        log.close_with(Vec::new());
        assert_eq!(waiting.await.unwrap(), ["2", "3"]);
    }

    #[tokio::test]
    async fn a_reader_resumes_after_an_id_and_refuses_an_unknown_one() {
        let log = LocalLog::new();
        log.extend([event("1"), event("2"), event("3")]);
        log.close_with(Vec::new());
        let mut feed = log.reader(Some("2")).unwrap();
        assert_eq!(feed.next().await.unwrap(), Some(event("3")));
        assert_eq!(feed.next().await.unwrap(), None);
        assert!(log.reader(Some("9")).is_none());
    }

    #[tokio::test]
    async fn a_failed_copy_ends_its_readers_with_an_error() {
        let log = LocalLog::new();
        log.extend([event("1")]);
        let mut feed = log.reader(None).unwrap();
        log.fail();
        // Closing after a failure changes nothing.
        log.close_with(vec![event("2")]);
        assert_eq!(feed.next().await.unwrap(), Some(event("1")));
        assert!(matches!(
            feed.next().await,
            Err(DomainError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_sealed_copy_takes_no_append_and_gives_its_last_events_with_the_end() {
        let log = LocalLog::new();
        log.extend([event("1")]);
        let mut feed = log.reader(None).unwrap();
        assert_eq!(feed.next().await.unwrap(), Some(event("1")));
        log.seal();
        log.extend([event("x")]);
        // Sealed, not ended: the reader waits.
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = feed.next().await.unwrap() {
                got.push(e.id);
            }
            got
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        log.close_with(vec![event("2"), event("3")]);
        assert_eq!(waiting.await.unwrap(), ["2", "3"]);
        assert!(!log.failed());
    }

    #[tokio::test]
    async fn a_copy_let_go_of_without_an_end_ends_its_readers() {
        let log = LocalLog::new();
        let mut feed = log.reader(None).unwrap();
        drop(log);
        assert!(matches!(feed.next().await, Err(DomainError::NotFound)));
    }
}
