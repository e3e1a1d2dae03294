//! A reader of one generation's stream.
//!
//! It first replays what the stream holds with `XRANGE`, a batch at a time,
//! on the shared pool: a reader of a closed log reaches the end entry this
//! way and never blocks. Once caught up with an open log it follows with
//! `XREAD BLOCK` on a connection of the blocking pool, held until the feed
//! ends or is dropped. Each block lasts at most [`BLOCK_MS`]; after one that
//! brought nothing, the reader checks that its log still exists, so a log
//! whose lease or retention ran out under it ends the feed with
//! [`DomainError::NotFound`] instead of a wait forever.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{EventFeed, LoggedEvent};
use deadpool_redis::{Connection, redis};

use super::Inner;
use super::ids::event_id;
use crate::pool::unavailable;

/// Entries asked for per `XRANGE` or `XREAD`.
const BATCH: usize = 256;

/// The longest one `XREAD` blocks before the reader checks its log (ms).
const BLOCK_MS: u64 = 1_000;

/// How long past [`BLOCK_MS`] a blocked read may take to answer before it
/// fails: the blocking pool's connections wait this long for a reply (the
/// client's default, 500 ms, is shorter than a block).
const REPLY_MARGIN: Duration = Duration::from_secs(1);

/// The most distinct event names one process turns into `&'static str`.
const MAX_EVENT_NAMES: usize = 64;

/// The longest event name read back.
const MAX_EVENT_NAME_LEN: usize = 64;

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
                last: after,
                following: false,
                held: None,
                busy: false,
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
    /// The entry id of the last entry fetched.
    last: Option<String>,
    /// Caught up once: from now on, reads block.
    following: bool,
    /// The blocking pool's connection, while following.
    held: Option<Connection>,
    /// A read is in flight on `held`.
    busy: bool,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // A reader dropped during a blocking read (the client went away)
        // must not hand the connection back: its next user would wait
        // behind the read.
        if self.busy {
            self.discard();
        }
    }
}

impl Reader {
    /// Takes the held connection out of the pool and drops it, which closes
    /// it and ends a read still blocked on Redis's side.
    fn discard(&mut self) {
        if let Some(conn) = self.held.take() {
            drop(Connection::take(conn));
        }
        self.busy = false;
    }

    async fn fetch(mut self: Box<Self>) -> (Box<Self>, Result<Vec<Entry>, DomainError>) {
        let fetched = self.fetch_more().await;
        (self, fetched)
    }

    /// The next entries: at least one, unless it fails.
    async fn fetch_more(&mut self) -> Result<Vec<Entry>, DomainError> {
        if !self.following {
            let entries = self.replay().await?;
            let more_to_replay = entries.len() == BATCH;
            if more_to_replay || matches!(entries.last(), Some(Entry::End)) {
                return Ok(entries);
            }
            self.following = true;
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
        loop {
            let entries = self.follow().await?;
            if !entries.is_empty() {
                return Ok(entries);
            }
            if !self.alive().await? {
                return Err(DomainError::NotFound);
            }
        }
    }

    /// The next batch after `last`, without blocking, on the shared pool.
    async fn replay(&mut self) -> Result<Vec<Entry>, DomainError> {
        let start = match &self.last {
            None => "-".to_owned(),
            Some(last) => format!("({last}"),
        };
        let mut conn = self.inner.pool.connection().await?;
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

    /// The next batch after `last`, waiting up to [`BLOCK_MS`] for one, on the
    /// held connection (taken from the blocking pool first if needed).
    async fn follow(&mut self) -> Result<Vec<Entry>, DomainError> {
        let conn = match self.held.take() {
            Some(conn) => conn,
            None => {
                let mut conn = self.inner.blocking.connection().await?;
                conn.set_response_timeout(Duration::from_millis(BLOCK_MS) + REPLY_MARGIN);
                conn
            }
        };
        let conn = self.held.insert(conn);
        self.busy = true;
        // One stream asked, so at most one in the reply: its key and entries.
        let reply: Result<Vec<(String, Vec<RawEntry>)>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(self.last.as_deref().unwrap_or("0-0"))
            .query_async(conn)
            .await;
        match reply {
            Ok(streams) => {
                self.busy = false;
                let raw = streams
                    .into_iter()
                    .flat_map(|(_, entries)| entries)
                    .collect();
                self.entries(raw)
            }
            Err(e) => {
                // The reply may still come (a reply timeout): this
                // connection can't go back to the pool; the next fetch
                // takes another.
                self.discard();
                Err(unavailable(&e))
            }
        }
    }

    /// Whether to keep waiting after a block that brought nothing.
    async fn alive(&self) -> Result<bool, DomainError> {
        let mut conn = self.inner.pool.connection().await?;
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
                    event: event_name(&name)?,
                    data,
                }),
                Err(fields) if fields.first().is_some_and(|field| field == "end") => Entry::End,
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

/// An event name read back, as the `&'static str` the port's events carry.
///
/// A name read for the first time is leaked once and kept for the life of
/// the process; only [`MAX_EVENT_NAMES`] names of up to
/// [`MAX_EVENT_NAME_LEN`] bytes are, which bounds the leak to a few KiB even
/// if the log held garbage. The names the service writes are a handful of
/// constants (`delta`, `delta_encoding`); an empty name is no name.
fn event_name(name: &str) -> Result<Option<&'static str>, DomainError> {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    if name.is_empty() {
        return Ok(None);
    }
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.iter().copied().find(|known| *known == name) {
        return Ok(Some(known));
    }
    if names.len() >= MAX_EVENT_NAMES || name.len() > MAX_EVENT_NAME_LEN {
        return Err(DomainError::internal(
            "redis: the stream log holds an unexpected event name",
        ));
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(leaked);
    Ok(Some(leaked))
}
