//! [`StreamLog`] on Redis Streams, shared by every instance on one Redis and
//! key prefix: a generation running on one instance is followed and resumed
//! from any other, and stopped from any.
//!
//! # Keys
//!
//! Under the pool's prefix, for each conversation (the braces make
//! `{conversation}` the keys' hash tag, one cluster slot for both, unless
//! the prefix holds braces itself):
//!
//! - `log:{conversation}:meta`, a hash: the latest generation's number
//!   (`gen`), its message id (`msg`), whether it is open (`open`), whether
//!   a stop was asked of it (`stop`), whether a reader on another instance
//!   wants its events (`want`) and the number of the last event Redis
//!   holds (`tail`): see `scripts.rs`.
//! - `log:{conversation}:{generation}`, a Redis Stream: that generation's
//!   events, then, once closed, an end entry readers never deliver.
//!
//! Every `open` takes a new generation number (ms of Redis's clock, always
//! above the previous one; see `scripts.rs`), so a stream never mixes two
//! generations. Every step that reads the hash and writes depending on it is
//! one Lua script (`EVALSHA`), atomic across instances.
//!
//! # Ids
//!
//! A reader sees `{generation}-0-{n}`: the generation, then the Redis entry
//! id of the event, `0-{n}` for the generation's `n`th event, numbered by
//! the instance running it (see `ids.rs`). `Last-Event-ID` must be an event
//! of the conversation's current generation: an id from an older
//! generation, a made-up one, or the end entry's is
//! [`DomainError::Invalid`], never a silent resume at the wrong place. The
//! instance running the generation judges by its local copy (which has
//! every event before Redis does); any other asks Redis, which also takes
//! two kinds of number it does not hold:
//!
//! - one of the open generation above its last (within the most events a
//!   log holds): an event shown before Redis had it. The reader waits for
//!   what follows; if the generation closes without reaching that number
//!   (the end entry holds its last event's number), the reader ends with
//!   [`DomainError::Invalid`];
//! - one below its last that the stream lacks: an event shown before its
//!   append failed for good (numbers are never given twice). The reader
//!   goes on with the events that followed the failure.
//!
//! # Lease and stop
//!
//! While a generation is open its keys expire after
//! [`lease`](RedisStreamLogOptions::lease), and the instance running it
//! renews them for as long as the generation is open on it: from `open` to
//! `close`, a task of its own renews the lease every
//! [`poll_interval`](RedisStreamLogOptions::poll_interval) (three times per
//! lease at least), whatever the app does meanwhile (see `renewal.rs`). A
//! failed renewal (Redis unreachable) is logged and tried again an interval
//! later, never given up while the generation is open here.
//!
//! A stop request sets the generation's stop flag and publishes it; the
//! running instance hears it on its one pub/sub connection and resolves the
//! [`StopSignal`] at once, without polling (see `signal.rs`). A publish it
//! missed (disconnected at that moment) is caught by the next renewal,
//! which reads the flag.
//!
//! Other instances rely on that lease: if the running instance dies, its
//! renewals die with it and its generation's keys expire a lease later,
//! after which [`current`](StreamLog::current) is
//! [`DomainError::NotFound`], a new `open` succeeds and readers of the dead
//! log end with [`DomainError::NotFound`].
//!
//! # Whose generation `append` and `close` act on
//!
//! The API names only the conversation, but a generation is appended to
//! and closed by the instance that opened it. So an instance remembers the
//! generation it opened of each conversation until it closes it (or opens
//! the next), and its `append` and `close` act on that generation only: if
//! its lease ran out and another instance opened a newer one, `append` is
//! [`DomainError::NotFound`] and `close` does nothing, instead of writing
//! into (or ending) the newer generation. On a conversation it did not
//! open, they act on whichever generation is open, as the in-process log
//! does.
//!
//! # Closing and retention
//!
//! `close` marks the generation closed, adds the end entry (which wakes
//! blocked readers) and leaves both keys to expire after the
//! [`retention`](RedisStreamLogOptions::retention). `finish` does the same
//! with the generation's last events (`[DONE]`) added in the close's own
//! call, once every event before them is in Redis; the local readers get
//! them, with the end, when that call has returned. So no reader anywhere
//! has `[DONE]` while the generation is still open in Redis, and a client
//! may send its next message the moment it has it, to any instance. A generation replaced by
//! a newer `open` keeps its stream until then, so its readers finish with
//! its events, as in the in-process log; only the newest generation can be
//! resumed.
//!
//! # Appends
//!
//! On a generation this instance runs, [`append_all`](StreamLog::append_all)
//! numbers the batch and adds it to the local copy (its readers have it at
//! once: they never wait for Redis). Redis gets a generation's events only
//! once they are wanted elsewhere: until then they wait in the local copy,
//! which holds them all anyway, and an answer followed only by its own
//! instance's readers costs Redis no write per delta. They are wanted
//! when a reader on an instance that does not run the generation locates
//! it (the locate script sets the hash's `want` flag and publishes on the
//! want channel, which the instance running it hears, or reads at its next
//! renewal: see `signal.rs`), and when the generation closes: `close`
//! hands every event not yet in Redis over before the end entry, so a
//! closed log is whole in Redis for the retention, for a resume on any
//! instance. From then on each batch is queued as it comes; a sender hands
//! everything queued to Redis, in order: on a single Redis one script call
//! (one round trip) carries the batches of up to 64 generations, on a
//! cluster one generation's (see `append.rs`). If the instance dies first,
//! Redis never has the events it kept: a reader elsewhere waits, as for
//! any event shown before Redis had it, until the lease runs out (and the
//! app closes the answer as the database saved it). An append that fails for a reason that may
//! pass (a reply timed out, the connection dropped) is tried again, up to
//! four times; the script takes a batch whose numbers it already holds as
//! landed, so a retried batch is not appended twice. The close (which
//! carries the answer's last events) is tried again the same way: a close
//! whose reply was lost finds the generation closed, and does nothing. An append that
//! failed for good ends the local readers with an error and is returned
//! by the generation's next `append_all` (or logged by `close`, which
//! waits for the queue before it adds the end entry). Appends to a
//! generation another instance runs wait for Redis, which numbers them.
//!
//! # Readers
//!
//! A reader of a generation this instance runs reads the instance's own
//! copy of the events it appended (see `local.rs`): it never reads Redis.
//! Any other reader reads the stream with `XRANGE` on the shared
//! connections and, once caught up with an open log, is woken by the log's
//! hub, one task that follows every such stream with one `XREAD BLOCK` on
//! one dedicated connection (see `hub.rs`, `feed.rs`). No reader holds a
//! connection, so the readers an instance serves are not bounded by any
//! pool.

mod append;
mod feed;
mod hub;
mod ids;
mod local;
mod renewal;
mod scripts;
mod signal;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::{ConversationId, DomainError, EventName, Field, MessageId, WireEvent};
use confab_ports::{EventFeed, LogHead, LoggedEvent, ReadFrom, StopSignal, StreamLog};
use tokio::sync::watch;

use self::feed::RedisFeed;
use self::hub::Hub;
use self::ids::parse_event_id;
use self::local::LocalLog;
use self::renewal::Renewal;
use self::scripts::Scripts;
use self::signal::{Listener, RedisStopSignal};
use crate::pool::{RedisPool, unavailable};

/// The longest retention or lease honoured; longer ones are cut to it.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// Limits and timings of a [`RedisStreamLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisStreamLogOptions {
    /// How long a closed log is kept for readers that resume late.
    pub retention: Duration,
    /// The most events one log holds; appending more fails as unavailable.
    pub max_events_per_log: usize,
    /// How long an open generation's keys outlive the last renewal by the
    /// instance running it (see the module docs): how long after that
    /// instance dies its conversation can generate again. Several poll
    /// intervals at least, and longer than a Redis hiccup.
    pub lease: Duration,
    /// How often the instance running a generation renews its lease (but
    /// at least three times per lease), and so the longest a stop or a
    /// want whose publish it missed waits to be seen.
    pub poll_interval: Duration,
}

/// What the log, its stop signals and its readers share.
#[derive(Debug)]
struct Inner {
    pool: RedisPool,
    scripts: Scripts,
    options: RedisStreamLogOptions,
    /// The generation this instance opened of each conversation, until it
    /// closes it (or opens the next).
    opened: Mutex<HashMap<ConversationId, Opened>>,
    /// The generations waiting to hand their queued events to Redis.
    sends: Mutex<append::Sends>,
    /// Wakes the readers of generations run elsewhere.
    hub: Hub,
    /// Hears stop requests and wants.
    listener: Listener,
    /// Dropped with the log: ends its tasks.
    gone: watch::Sender<()>,
}

/// A generation this instance opened.
#[derive(Debug)]
struct Opened {
    generation: String,
    /// Renews its lease until dropped: taken by `close`, dropped with the
    /// entry when a newer `open` replaces it, or with the whole map.
    renewal: Option<Renewal>,
    /// Set when a stop is asked of it.
    stop: watch::Sender<bool>,
    /// What it appended, for the readers on this instance.
    local: Arc<LocalLog>,
    /// The number the next event gets (from 1). Numbers are never given
    /// twice, even those of events whose append failed for good.
    next: u64,
    /// Whether numbers were given that Redis will never hold (an append
    /// failed for good): the stream may skip them.
    skipped: bool,
    /// The number of the first event not yet handed to Redis: those from
    /// it to `next` are queued (shown locally, in the local copy).
    sent: u64,
    /// Whether a task is handing events to Redis; `close` waits for it.
    sending: watch::Sender<bool>,
    /// Whether its events go to Redis as they come: once a reader on
    /// another instance wants them, or once it closes (see the module docs).
    shared: bool,
    /// An append that failed for good, not yet reported to the app.
    failure: Option<DomainError>,
}

impl Opened {
    fn new(generation: String, renewal: Renewal, stop: watch::Sender<bool>) -> Self {
        Self {
            generation,
            renewal: Some(renewal),
            stop,
            local: Arc::new(LocalLog::new()),
            next: 1,
            skipped: false,
            sent: 1,
            sending: watch::Sender::new(false),
            shared: false,
            failure: None,
        }
    }
}

impl Inner {
    fn opened(&self) -> MutexGuard<'_, HashMap<ConversationId, Opened>> {
        self.opened.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This instance's generation of `conversation` is no longer the open
    /// one in Redis (its lease ran out, another instance replaced it): its
    /// local copy is no longer what readers should see, so readers go to
    /// Redis.
    fn lost(&self, conversation: ConversationId, generation: &str) {
        if let Some(opened) = self.opened().get(&conversation)
            && opened.generation == generation
        {
            opened.local.fail();
        }
    }

    /// Resolves the stop signal of `generation` of `conversation`, if this
    /// instance runs it.
    fn deliver_stop(&self, conversation: ConversationId, generation: &str) {
        if let Some(opened) = self.opened().get(&conversation)
            && opened.generation == generation
        {
            opened.stop.send_replace(true);
        }
    }

    /// A reader elsewhere wants the events of `generation` of
    /// `conversation`: if this instance runs it, its events go to Redis
    /// from now on, those kept so far first.
    fn share(self: &Arc<Self>, conversation: ConversationId, generation: &str) {
        let mut opened = self.opened();
        if let Some(mine) = opened
            .get_mut(&conversation)
            .filter(|mine| mine.generation == generation)
        {
            self.share_opened(conversation, mine);
        }
    }

    /// Sends `mine`'s events to Redis from now on, starting a sender for
    /// those it kept unless one is at work.
    fn share_opened(self: &Arc<Self>, conversation: ConversationId, mine: &mut Opened) {
        if mine.shared {
            return;
        }
        mine.shared = true;
        if mine.sent < mine.next && !mine.sending.send_replace(true) {
            self.wait_for_sender(conversation, mine.generation.clone());
        }
    }

    fn meta_key(&self, conversation: ConversationId) -> String {
        self.pool.key(&format!("log:{{{conversation}}}:meta"))
    }

    /// The prefix of the conversation's stream keys; a generation's key is
    /// this and the generation's number.
    fn stream_prefix(&self, conversation: ConversationId) -> String {
        self.pool.key(&format!("log:{{{conversation}}}:"))
    }
}

/// The stream logs of every instance on one Redis and key prefix.
#[derive(Debug, Clone)]
pub struct RedisStreamLog {
    inner: Arc<Inner>,
}

impl RedisStreamLog {
    /// A stream log on `pool`. The scripts are hashed here, once; the
    /// log's tasks (the stop listener, the followers' hub) start when first
    /// needed and end when the last clone of the log is dropped.
    #[must_use]
    pub fn new(pool: RedisPool, options: RedisStreamLogOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                hub: Hub::new(pool.clone()),
                pool,
                scripts: Scripts::new(),
                options,
                opened: Mutex::new(HashMap::new()),
                sends: Mutex::new(append::Sends::default()),
                listener: Listener::default(),
                gone: watch::Sender::new(()),
            }),
        }
    }

    /// Closes the conversation's log, with `last` its generation's final
    /// events (see [`StreamLog::finish`]). On a generation this instance
    /// runs, they are numbered once everything before them is in Redis,
    /// go to Redis in the close's own call (which adds them, marks the
    /// generation closed and adds the end entry at once), and reach the
    /// local readers with the end once that call returned: no reader, here
    /// or elsewhere, has them while the generation is still open.
    async fn end(
        &self,
        conversation: ConversationId,
        last: Vec<WireEvent>,
    ) -> Result<(), DomainError> {
        let inner = &self.inner;
        // The local copy takes no more appends. Whole in Redis for the
        // retention: what it kept and never handed over goes in the close's
        // own call, before the end entry (or, past one call's worth,
        // through the senders first, as do the events still queued of a
        // shared generation).
        let mut kept = None;
        let sending = inner.opened().get_mut(&conversation).map(|opened| {
            opened.local.seal();
            kept = take_kept(opened);
            if kept.is_none() {
                inner.share_opened(conversation, opened);
            }
            (opened.sending.subscribe(), opened.generation.clone())
        });
        let Some((mut sending, generation)) = sending else {
            // A generation run elsewhere, or none: Redis numbers the
            // events, then the close acts on whichever generation is open.
            let appended = self.append_events(conversation, last).await.map(drop);
            return appended.and(self.close_call(conversation, "", None).await);
        };
        // An error: the entry was replaced, its sender is done.
        let _ = sending.wait_for(|busy| !*busy).await;
        // This instance is done with its generation: it stops renewing the
        // lease, even should the close below fail (its lease then runs
        // out, instead of the generation staying open for good).
        let mut last = Ending::new(last);
        let local = match inner
            .opened()
            .get_mut(&conversation)
            .filter(|opened| opened.generation == generation)
        {
            Some(opened) => {
                opened.renewal = None;
                if let Some(failure) = opened.failure.take() {
                    tracing::warn!(%conversation, error = %failure, "events of the answer could not be added to the shared stream log");
                }
                last.number(opened, inner.options.max_events_per_log);
                if !opened.skipped {
                    last.carry(&mut kept, opened.next);
                }
                Some(Arc::clone(&opened.local))
            }
            None => None,
        };
        let appended = last.append_alone(inner, conversation, &generation).await;
        let closed = self.close_call(conversation, &generation, kept).await;
        if let Some(local) = local {
            local.close_with(last.logged);
        }
        let mut opened = inner.opened();
        // Unless this instance opened a newer one meanwhile.
        if opened
            .get(&conversation)
            .is_some_and(|opened| opened.generation == generation)
        {
            opened.remove(&conversation);
        }
        last.refused.map_or(Ok(()), Err).and(appended).and(closed)
    }

    /// The close script's call on `generation` of `conversation` (any open
    /// one when empty), adding `kept` (the number of the first, and the
    /// events) before the end entry; retried as an append is (a close whose
    /// reply was lost finds the generation closed, and does nothing).
    async fn close_call(
        &self,
        conversation: ConversationId,
        generation: &str,
        kept: Option<(u64, Vec<WireEvent>)>,
    ) -> Result<(), DomainError> {
        let inner = &self.inner;
        // Closing what is not open (never opened, closed, expired) does
        // nothing: closing is idempotent.
        let mut invocation = inner.scripts.close.key(inner.meta_key(conversation));
        invocation
            .arg(inner.stream_prefix(conversation))
            .arg(millis(inner.options.retention))
            .arg(generation);
        match &kept {
            Some((first, events)) => {
                invocation.arg(first);
                for event in events {
                    invocation
                        .arg(event.name.map_or("", EventName::as_str))
                        .arg(&event.data);
                }
            }
            None => {
                invocation.arg("");
            }
        }
        let closed: i64 = inner.invoke_retried(&invocation, &conversation).await?;
        if closed == 2 {
            tracing::warn!(%conversation, "events of the answer could not be added to the shared stream log: they do not follow what it holds");
        }
        Ok(())
    }
}

/// A generation's final events on their way through its close.
struct Ending {
    /// Not numbered yet.
    events: Vec<WireEvent>,
    /// Numbered, for the local readers.
    logged: Vec<LoggedEvent>,
    /// Numbered after numbers Redis may lack (an append failed for good):
    /// they go in an append of their own, which takes the gap, before the
    /// close; the number of the first.
    alone: Option<u64>,
    /// Why they were refused (the log would hold too many).
    refused: Option<DomainError>,
}

impl Ending {
    fn new(events: Vec<WireEvent>) -> Self {
        Self {
            events,
            logged: Vec::new(),
            alone: None,
            refused: None,
        }
    }

    /// Numbers the events after `opened`'s last, as handed over (they go
    /// with the close), unless the log would then hold more than `most`.
    fn number(&mut self, opened: &mut Opened, most: usize) {
        if self.events.is_empty() {
            return;
        }
        let count = u64::try_from(self.events.len()).unwrap_or(u64::MAX);
        let most = u64::try_from(most).unwrap_or(u64::MAX);
        let first = opened.next;
        if (first - 1).saturating_add(count) > most {
            self.events.clear();
            self.refused = Some(DomainError::unavailable("the stream log is full"));
            return;
        }
        self.logged = (first..)
            .zip(&self.events)
            .map(|(n, event)| LoggedEvent {
                id: ids::event_id(&opened.generation, &ids::entry_id(n)),
                event: event.clone(),
            })
            .collect();
        opened.next = first + count;
        opened.sent = opened.next;
        if opened.skipped {
            self.alone = Some(first);
        }
    }

    /// Adds the numbered events to what the close's call carries, after
    /// what it kept (`next`: the number after the last event given).
    fn carry(&mut self, kept: &mut Option<(u64, Vec<WireEvent>)>, next: u64) {
        if self.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.events);
        match kept {
            Some((_, carried)) => carried.extend(events),
            None => {
                let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
                *kept = Some((next - count, events));
            }
        }
    }

    /// Appends the events numbered after a gap in a call of their own.
    async fn append_alone(
        &mut self,
        inner: &Inner,
        conversation: ConversationId,
        generation: &str,
    ) -> Result<(), DomainError> {
        let Some(first) = self.alone else {
            return Ok(());
        };
        let events = std::mem::take(&mut self.events);
        inner
            .append_batch(conversation, generation, Some((first, true)), &events)
            .await
            .map(drop)
    }
}

/// The events `opened` kept and never handed to Redis, from the number of
/// the first, for its close to carry: none when it was shared (its events
/// go through the senders), when nothing is kept, or when more are kept
/// than one call may carry (they go through the senders, in calls of
/// [`append::MAX_CALL_EVENTS`]). Taken, they count as handed over.
fn take_kept(opened: &mut Opened) -> Option<(u64, Vec<WireEvent>)> {
    let (first, next) = (opened.sent, opened.next);
    if opened.shared || first == next || next - first > append::MAX_CALL_EVENTS {
        return None;
    }
    // The copy holds event `n` at `n - 1`; events numbered after the close
    // began are not in it, and are never handed over.
    let from = usize::try_from(first - 1).unwrap_or(usize::MAX);
    let events = opened.local.with_events(|events| {
        events
            .iter()
            .skip(from)
            .map(|logged| logged.event.clone())
            .collect()
    });
    opened.shared = true;
    opened.sent = next;
    Some((first, events))
}

/// `duration` in whole milliseconds, rounded up, at most [`MAX_TTL`].
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.min(MAX_TTL).as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// A script replied with something it never returns.
fn unexpected(script: &str) -> DomainError {
    DomainError::internal(format!(
        "redis: unexpected reply from the stream log's {script} script"
    ))
}

#[async_trait]
impl StreamLog for RedisStreamLog {
    async fn open(
        &self,
        conversation: ConversationId,
        message: &MessageId,
    ) -> Result<Box<dyn StopSignal>, DomainError> {
        let inner = &self.inner;
        inner
            .listener
            .ensure(inner, inner.pool.settings().connect_timeout)
            .await;
        let meta = inner.meta_key(conversation);
        let mut conn = inner.pool.connection()?;
        let reply: Vec<String> = inner
            .scripts
            .open
            .key(&meta)
            .arg(message.as_str())
            .arg(millis(inner.options.lease).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        match <[String; 2]>::try_from(reply) {
            Ok([status, generation]) if status == "ok" => {
                let stream = format!("{}{generation}", inner.stream_prefix(conversation));
                let renewal = Renewal::start(inner, conversation, meta, stream, generation.clone());
                let (stop, stopped) = watch::channel(false);
                // Replaces (and so stops renewing) an older generation this
                // instance opened and never closed, whose lease ran out.
                inner
                    .opened()
                    .insert(conversation, Opened::new(generation, renewal, stop));
                Ok(Box::new(RedisStopSignal::new(stopped)))
            }
            Err(reply) if reply.first().is_some_and(|status| status == "open") => {
                Err(DomainError::Duplicate {
                    field: Field::ConversationId,
                })
            }
            _ => Err(unexpected("open")),
        }
    }

    async fn append(
        &self,
        conversation: ConversationId,
        event: WireEvent,
    ) -> Result<String, DomainError> {
        self.append_events(conversation, vec![event])
            .await?
            .pop()
            .ok_or_else(|| unexpected("append"))
    }

    async fn append_all(
        &self,
        conversation: ConversationId,
        events: Vec<WireEvent>,
    ) -> Result<(), DomainError> {
        self.append_events(conversation, events).await.map(drop)
    }

    async fn close(&self, conversation: ConversationId) -> Result<(), DomainError> {
        self.end(conversation, Vec::new()).await
    }

    async fn finish(
        &self,
        conversation: ConversationId,
        events: Vec<WireEvent>,
    ) -> Result<(), DomainError> {
        self.end(conversation, events).await
    }

    async fn current(&self, conversation: ConversationId) -> Result<LogHead, DomainError> {
        let inner = &self.inner;
        let mut conn = inner.pool.connection()?;
        let (message, open): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(inner.meta_key(conversation))
            .arg("msg")
            .arg("open")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        let message = message.ok_or(DomainError::NotFound)?;
        let message = MessageId::parse(message)
            .map_err(|_| DomainError::internal("redis: the stream log holds a bad message id"))?;
        Ok(LogHead {
            message,
            open: open.as_deref() == Some("1"),
        })
    }

    async fn read(
        &self,
        conversation: ConversationId,
        from: ReadFrom,
    ) -> Result<Box<dyn EventFeed>, DomainError> {
        let invalid = || DomainError::invalid(Field::LastEventId, "not an event id of this stream");
        let after = match &from {
            ReadFrom::Start => None,
            ReadFrom::After(id) => Some(parse_event_id(id).ok_or_else(invalid)?),
        };
        let inner = &self.inner;
        // A generation this instance runs: its local copy.
        if let Some(opened) = inner
            .opened()
            .get(&conversation)
            .filter(|opened| !opened.local.failed())
        {
            match (&from, after) {
                (ReadFrom::Start, _) => {
                    if let Some(feed) = opened.local.reader(None) {
                        return Ok(Box::new(feed));
                    }
                }
                (ReadFrom::After(id), Some((generation, _))) if generation == opened.generation => {
                    // The copy holds every event this instance numbered,
                    // before Redis does: an id it doesn't hold was never
                    // given.
                    return match opened.local.reader(Some(id)) {
                        Some(feed) => Ok(Box::new(feed)),
                        None => Err(invalid()),
                    };
                }
                _ => {}
            }
        }
        let (after_generation, after_entry) = after.unwrap_or(("", ""));
        let meta = inner.meta_key(conversation);
        let prefix = inner.stream_prefix(conversation);
        let mut conn = inner.pool.connection()?;
        let reply: Vec<String> = inner
            .scripts
            .locate
            .key(&meta)
            .arg(&prefix)
            .arg(after_generation)
            .arg(after_entry)
            .arg(inner.options.max_events_per_log)
            .arg(signal::want_channel(inner))
            .arg(conversation.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        match <[String; 2]>::try_from(reply) {
            Ok([status, generation]) if status == "ok" => Ok(Box::new(RedisFeed::new(
                Arc::clone(inner),
                meta,
                format!("{prefix}{generation}"),
                generation,
                after.map(|(_, entry)| entry.to_owned()),
            ))),
            Err(reply) => match reply.first().map(String::as_str) {
                Some("none") => Err(DomainError::NotFound),
                Some("invalid") => Err(invalid()),
                _ => Err(unexpected("locate")),
            },
            Ok(_) => Err(unexpected("locate")),
        }
    }

    async fn request_stop(&self, conversation: ConversationId) -> Result<bool, DomainError> {
        let inner = &self.inner;
        let mut conn = inner.pool.connection()?;
        let asked: i64 = inner
            .scripts
            .request_stop
            .key(inner.meta_key(conversation))
            .arg(signal::channel(inner))
            .arg(conversation.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(asked == 1)
    }
}
