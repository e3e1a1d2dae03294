//! A reader of one generation's stream in Redis (a generation this
//! instance does not run: see `local.rs` for the others).
//!
//! It reads what the stream holds after its position with `XRANGE`, a batch
//! at a time, on the shared connections: a reader of a closed log reaches
//! the end entry this way and never waits. Once caught up with an open log
//! it registers with the log's hub (see `hub.rs`), which wakes it when the
//! stream grows, and reads again. After [`WAIT`] without a wake-up it
//! checks that its log still exists, so a log whose lease or retention ran
//! out under it ends the feed with [`DomainError::NotFound`] instead of a
//! wait forever.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::{DomainError, EventName, Field, WireEvent};
use confab_ports::{EventFeed, LoggedEvent};

use super::Inner;
use super::hub::Watch;
use super::ids::{event_id, event_number};
use crate::pool::unavailable;

/// Entries asked for per `XRANGE`.
const BATCH: usize = 256;

/// The longest a caught-up reader waits for a wake-up before it checks
/// that its log still exists.
const WAIT: Duration = Duration::from_secs(1);

/// One entry of a stream.
enum Entry {
    Event(LoggedEvent),
    /// The end entry `close` adds: never delivered.
    End,
}

/// An entry as `XRANGE` and `XREAD` give it: its id, then its fields and
/// values in turn.
type RawEntry = (String, Vec<String>);

/// What [`Reader::fetch`] hands back: the reader, and what it fetched.
type Fetching =
    Pin<Box<dyn Future<Output = (Box<Reader>, Result<Vec<Entry>, DomainError>)> + Send>>;

enum State {
    Idle(Box<Reader>),
    /// A fetch in flight, kept across calls to `next`: the SSE body drops
    /// `next` at every keep-alive, and the fetch must survive that.
    Fetching(Fetching),
    /// The end entry was delivered.
    Ended,
}

/// A reader of one generation's stream, at its own position.
pub(super) struct RedisFeed {
    /// Fetched and not yet delivered.
    buffered: VecDeque<Entry>,
    state: State,
}

impl RedisFeed {
    /// A reader of `generation`'s stream after the entry `after` (from the
    /// first when `None`).
    pub(super) fn new(
        inner: Arc<Inner>,
        meta: String,
        stream: String,
        generation: String,
        after: Option<String>,
    ) -> Self {
        Self {
            buffered: VecDeque::new(),
            state: State::Idle(Box::new(Reader {
                inner,
                meta,
                stream,
                generation,
                resumed_after: after.as_deref().and_then(event_number),
                last: after,
                watch: None,
            })),
        }
    }
}

#[async_trait]
impl EventFeed for RedisFeed {
    async fn next(&mut self) -> Result<Option<LoggedEvent>, DomainError> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                return Ok(match entry {
                    Entry::Event(event) => Some(event),
                    Entry::End => {
                        // Drops the reader: its connection goes back to the
                        // pool.
                        self.buffered.clear();
                        self.state = State::Ended;
                        None
                    }
                });
            }
            self.state = match std::mem::replace(&mut self.state, State::Ended) {
                State::Idle(reader) => State::Fetching(Box::pin(reader.fetch())),
                other => other,
            };
            let State::Fetching(fetching) = &mut self.state else {
                return Ok(None);
            };
            let (reader, fetched) = fetching.await;
            self.state = State::Idle(reader);
            self.buffered.extend(fetched?);
        }
    }
}

struct Reader {
    inner: Arc<Inner>,
    meta: String,
    stream: String,
    generation: String,
    /// The number of the event it resumed after, if it did: one Redis may
    /// not hold yet (see `locate`), which the end entry must show the
    /// generation reached.
    resumed_after: Option<u64>,
    /// The entry id of the last entry fetched.
    last: Option<String>,
    /// The hub's wake-ups, once caught up.
    watch: Option<Watch>,
}

impl Reader {
    async fn fetch(mut self: Box<Self>) -> (Box<Self>, Result<Vec<Entry>, DomainError>) {
        let fetched = self.fetch_more().await;
        (self, fetched)
    }

    /// The next entries: at least one, unless it fails.
    async fn fetch_more(&mut self) -> Result<Vec<Entry>, DomainError> {
        loop {
            // Wake-ups before this read are covered by it.
            if let Some(watch) = &mut self.watch {
                watch.grew.borrow_and_update();
            }
            let entries = self.read().await?;
            if !entries.is_empty() {
                return Ok(entries);
            }
            let Some(watch) = &mut self.watch else {
                // Caught up: follow from here, and read once more, for what
                // came between the read and the registration.
                let after = self.last.as_deref().unwrap_or("0-0");
                self.watch = Some(self.inner.hub.watch(&self.stream, after));
                continue;
            };
            match tokio::time::timeout(WAIT, watch.grew.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(DomainError::unavailable(
                        "redis: the stream log's hub is gone",
                    ));
                }
                Err(_) => {
                    if !self.alive().await? {
                        return Err(DomainError::NotFound);
                    }
                }
            }
        }
    }

    /// The next batch after `last`, without waiting.
    async fn read(&mut self) -> Result<Vec<Entry>, DomainError> {
        let start = match &self.last {
            None => "-".to_owned(),
            Some(last) => format!("({last}"),
        };
        let mut conn = self.inner.pool.connection()?;
        let raw: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        self.entries(raw)
    }

    /// Whether to keep waiting after a block that brought nothing.
    async fn alive(&self) -> Result<bool, DomainError> {
        let mut conn = self.inner.pool.connection()?;
        let alive: i64 = self
            .inner
            .scripts
            .alive
            .key(&self.meta)
            .key(&self.stream)
            .arg(&self.generation)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(alive == 1)
    }

    /// Raw entries as [`Entry`]s; moves `last` to the last of them.
    fn entries(&mut self, raw: Vec<RawEntry>) -> Result<Vec<Entry>, DomainError> {
        let mut entries = Vec::with_capacity(raw.len());
        for (id, fields) in raw {
            let entry = match <[String; 4]>::try_from(fields) {
                Ok([e, name, d, data]) if e == "e" && d == "d" => Entry::Event(LoggedEvent {
                    id: event_id(&self.generation, &id),
                    event: WireEvent {
                        name: event_name(&name)?,
                        data,
                    },
                }),
                Err(fields) if fields.first().is_some_and(|field| field == "end") => {
                    // The end entry holds the number of events before it:
                    // a reader that waited after one the generation never
                    // reached resumed at no place of it.
                    let events = fields.get(1).and_then(|n| n.parse::<u64>().ok());
                    if let (Some(after), Some(events)) = (self.resumed_after, events)
                        && after > events
                    {
                        return Err(DomainError::invalid(
                            Field::LastEventId,
                            "not an event id of this stream",
                        ));
                    }
                    Entry::End
                }
                _ => {
                    return Err(DomainError::internal(
                        "redis: an entry of the stream log has an unknown shape",
                    ));
                }
            };
            entries.push(entry);
            self.last = Some(id);
        }
        Ok(entries)
    }
}

/// An event name read back; the empty name (a plain `data:` event) is
/// none, and a name the service never writes is a corrupted log.
fn event_name(name: &str) -> Result<Option<EventName>, DomainError> {
    if name.is_empty() {
        return Ok(None);
    }
    EventName::parse(name).map(Some).ok_or_else(|| {
        DomainError::internal("redis: the stream log holds an unexpected event name")
    })
}
