//! Appends. A generation this instance runs numbers its events itself:
//! a batch is given its ids, added to the local copy (its readers have it
//! at once) and, once the generation is shared (wanted by a reader on
//! another instance, or closing: see the module docs of `stream_log`),
//! queued; sharing queues what the local copy kept until then. Senders hand what is queued to Redis: on a single
//! Redis at most two, each taking up to 64 generations with events queued
//! and handing all their batches over in one call of the many-logs script
//! (group commit, as the store's writer does); on a cluster one call per
//! generation, whose keys lie in its own slot. A generation is in one call
//! at a time, so its batches land in order; a call is retried when its
//! reply may have been lost (see the module docs of `stream_log`), and
//! each generation's batch is judged on its own. An append that failed for
//! good is reported by the next `append_all` (and logged by `close`),
//! and the local copy ends with an error; the numbers that batch had are
//! never given again, so a client that saw one of its events resumes
//! after it at what came next. Later appends of that generation wait for
//! Redis. Appends to a generation another instance runs wait for Redis
//! too, which numbers them after the stream's last entry.

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use confab_domain::{ConversationId, DomainError, EventName, WireEvent};
use confab_ports::LoggedEvent;

use super::ids::{entry_id, event_id};
use super::{Inner, Opened, RedisStreamLog, unexpected};
use crate::pool::{for_each, unavailable};

/// Attempts of one append before it fails (350 ms of pauses in all).
const APPEND_ATTEMPTS: u32 = 4;

/// Attempts on a Redis Cluster: the pauses (3.15 s in all) outlast a
/// primary's failover, which fails a command in flight on the dead
/// primary at once, and others until its replica has taken over.
const CLUSTER_APPEND_ATTEMPTS: u32 = 7;

/// The pause before the second attempt; doubled before each next one.
const APPEND_BACKOFF: Duration = Duration::from_millis(50);

/// The most generations one call hands over on a single Redis.
const MAX_GROUP: usize = 64;

/// The most events one call hands over: a call runs in Redis at once, so
/// a long answer's events, kept until its end, go in a few calls of a few
/// milliseconds each instead of one that holds every other client back.
pub(super) const MAX_CALL_EVENTS: u64 = 1024;

/// The most senders at once on a single Redis: while one waits for its
/// reply, another may carry what was queued meanwhile.
const MAX_SENDERS: usize = 2;

/// A sender as [`Sends::senders`] counts it, from its spawn: one that ends
/// any other way than by finding nothing left (its task dropped, before it
/// ran or with its runtime; a panic) is no longer counted, so later
/// generations still find a sender.
struct Running {
    inner: Arc<Inner>,
    counted: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.counted {
            self.inner.sends().senders -= 1;
        }
    }
}

/// The generations whose queued events wait for a sender, and how many
/// senders run.
#[derive(Debug, Default)]
pub(super) struct Sends {
    waiting: VecDeque<(ConversationId, String)>,
    senders: usize,
}

impl Inner {
    /// Appends `events` to `generation` of `conversation` (any open one
    /// when empty) in one script call, numbered from `first` (after the
    /// stream's last entry when `None`; `skipped`: numbers before it may
    /// be missing), retried as the module docs say; their generation and
    /// entry ids.
    pub(super) async fn append_batch(
        &self,
        conversation: ConversationId,
        generation: &str,
        first: Option<(u64, bool)>,
        events: &[WireEvent],
    ) -> Result<(String, Vec<String>), DomainError> {
        let invocation = self.append_script(conversation, generation, first, events.iter());
        self.run_append(conversation, &invocation, events.len())
            .await
    }

    /// The append script's call for `events` (see
    /// [`append_batch`](Self::append_batch)); its arguments are copies, so
    /// the events need not outlive it.
    fn append_script<'e>(
        &self,
        conversation: ConversationId,
        generation: &str,
        first: Option<(u64, bool)>,
        events: impl Iterator<Item = &'e WireEvent>,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.scripts.append.key(self.meta_key(conversation));
        invocation
            .arg(self.stream_prefix(conversation))
            .arg(self.options.max_events_per_log)
            .arg(generation)
            .arg(first.map(|(n, _)| n.to_string()).unwrap_or_default())
            .arg(if first.is_some_and(|(_, skipped)| skipped) {
                "1"
            } else {
                ""
            });
        for event in events {
            invocation
                .arg(event.name.map_or("", EventName::as_str))
                .arg(&event.data);
        }
        invocation
    }

    /// Runs `invocation`, an append of `count` events, retried as the
    /// module docs say; the generation and entry ids.
    async fn run_append(
        &self,
        conversation: ConversationId,
        invocation: &redis::ScriptInvocation<'_>,
        count: usize,
    ) -> Result<(String, Vec<String>), DomainError> {
        let reply: Vec<String> = self.invoke_retried(invocation, &conversation).await?;
        let mut reply = reply.into_iter();
        match (reply.next().as_deref(), reply.next()) {
            (Some("ok"), Some(generation)) => {
                let ids: Vec<String> = reply.collect();
                if ids.len() == count {
                    Ok((generation, ids))
                } else {
                    Err(unexpected("append"))
                }
            }
            (Some("none"), _) => Err(DomainError::NotFound),
            (Some("full"), _) => Err(DomainError::unavailable("the stream log is full")),
            (Some("gap"), _) => Err(DomainError::internal(
                "redis: the stream log does not hold what this instance appended",
            )),
            _ => Err(unexpected("append")),
        }
    }

    fn sends(&self) -> MutexGuard<'_, Sends> {
        self.sends.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Generations one call of the many-logs script carries: many on a
    /// single Redis; one on a cluster, whose logs lie in different slots.
    fn group_size(&self) -> usize {
        if self.pool.is_cluster() { 1 } else { MAX_GROUP }
    }

    /// Senders at once: on a single Redis a few, each carrying many
    /// generations a call; on a cluster one per generation waiting, as
    /// each call carries one.
    fn most_senders(&self) -> usize {
        if self.pool.is_cluster() {
            usize::MAX
        } else {
            MAX_SENDERS
        }
    }

    /// Queues `generation` of `conversation` for a sender (it has events
    /// queued and none is handing them over), starting one if fewer than
    /// the most run.
    pub(super) fn wait_for_sender(
        self: &Arc<Self>,
        conversation: ConversationId,
        generation: String,
    ) {
        let mut sends = self.sends();
        sends.waiting.push_back((conversation, generation));
        if sends.senders < self.most_senders() {
            sends.senders += 1;
            drop(sends);
            // Counted from here: a task dropped before it first runs (its
            // runtime shutting down) is not counted once dropped.
            let running = Running {
                inner: Arc::clone(self),
                counted: true,
            };
            self.pool.spawn(Arc::clone(self).send_waiting(running));
        }
    }

    /// A sender: hands the waiting generations' queued events to Redis, a
    /// group at a time, until none waits.
    async fn send_waiting(self: Arc<Self>, mut running: Running) {
        loop {
            let group: Vec<(ConversationId, String)> = {
                let mut sends = self.sends();
                if sends.waiting.is_empty() {
                    // Under the lock: a generation queued from now on
                    // finds one sender fewer and starts another.
                    sends.senders -= 1;
                    running.counted = false;
                    return;
                }
                let n = sends.waiting.len().min(self.group_size());
                sends.waiting.drain(..n).collect()
            };
            self.send_group(group).await;
        }
    }

    /// Hands what each generation of `group` has queued (the events of its
    /// local copy numbered from `sent` on) to Redis in one script call, at
    /// most [`MAX_CALL_EVENTS`] in all; one that queued more meanwhile, or
    /// that the call had no room for, waits for a sender again. The one
    /// sender of each of those generations while it runs.
    async fn send_group(self: &Arc<Self>, group: Vec<(ConversationId, String)>) {
        let mut batches = Vec::with_capacity(group.len());
        let mut again = Vec::new();
        let mut room = MAX_CALL_EVENTS;
        let invocation = {
            let mut opened = self.opened();
            let mut invocation = self.scripts.append_many.prepare_invoke();
            invocation.arg(self.options.max_events_per_log);
            for (conversation, generation) in group {
                let Some(mine) = opened
                    .get_mut(&conversation)
                    .filter(|mine| mine.generation == generation)
                else {
                    continue;
                };
                let (first, next) = (mine.sent, mine.next);
                if first == next {
                    mine.sending.send_replace(false);
                    continue;
                }
                if room == 0 {
                    again.push((conversation, generation));
                    continue;
                }
                let taken = (next - first).min(room);
                room -= taken;
                mine.sent = first + taken;
                let count = usize::try_from(taken).unwrap_or(usize::MAX);
                // The copy holds event `n` at `n - 1`. It has every event
                // this instance numbered, but for events queued after a
                // `close` began, which the sealed copy did not take: such a
                // batch fails alone, never handing the script fewer events
                // than it says (which would misplace the next log's).
                let whole = mine.local.with_events(|events| {
                    let from = usize::try_from(first - 1).unwrap_or(usize::MAX);
                    let batch: Vec<_> = events.iter().skip(from).take(count).collect();
                    if batch.len() != count {
                        return false;
                    }
                    invocation
                        .key(self.meta_key(conversation))
                        .arg(self.stream_prefix(conversation))
                        .arg(&generation)
                        .arg(first)
                        .arg(count);
                    for logged in batch {
                        invocation
                            .arg(logged.event.name.map_or("", EventName::as_str))
                            .arg(&logged.event.data);
                    }
                    true
                });
                if !whole {
                    fail(
                        mine,
                        DomainError::internal("events were appended to a closing stream log"),
                    );
                    continue;
                }
                batches.push((conversation, generation));
            }
            invocation
        };
        if batches.is_empty() {
            self.sends().waiting.extend(again);
            return;
        }
        let logs = format!("{} logs", batches.len());
        let replies: Result<Vec<String>, DomainError> =
            self.invoke_retried(&invocation, &logs).await;
        {
            let mut opened = self.opened();
            for (n, (conversation, generation)) in batches.into_iter().enumerate() {
                let Some(mine) = opened
                    .get_mut(&conversation)
                    .filter(|mine| mine.generation == generation)
                else {
                    continue;
                };
                match batch_outcome(&replies, n) {
                    Ok(()) if mine.sent == mine.next => {
                        mine.sending.send_replace(false);
                    }
                    Ok(()) => again.push((conversation, generation)),
                    Err(e) => fail(mine, e),
                }
            }
        }
        if !again.is_empty() {
            // This sender goes on with them (it is running, so no other
            // is started for them).
            self.sends().waiting.extend(again);
        }
    }

    /// Runs `invocation`, an append or close script's call (each safe to
    /// run twice), tried again (after a pause doubled each time) while it
    /// fails for a reason that may pass (see [`transient`]), up to the
    /// attempts of the pool's kind; its reply. `log` names what it writes
    /// to, for the log line of a retry.
    pub(super) async fn invoke_retried<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        log: &(dyn std::fmt::Display + Sync),
    ) -> Result<T, DomainError> {
        let mut pause = APPEND_BACKOFF;
        let mut attempt = 1;
        let attempts = if self.pool.is_cluster() {
            CLUSTER_APPEND_ATTEMPTS
        } else {
            APPEND_ATTEMPTS
        };
        loop {
            let mut conn = self.pool.connection()?;
            match invocation.invoke_async(&mut conn).await {
                Ok(reply) => return Ok(reply),
                Err(e) if attempt < attempts && transient(&e) => {
                    tracing::debug!(%log, attempt, error = %unavailable(&e), "append to the stream log failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(unavailable(&e)),
            }
        }
    }
}

/// Ends the sending of `mine`, whose queued events Redis will never hold:
/// local readers end (their client resumes from Redis, after an event it
/// saw here), the app hears of `e` at its next append, and the numbers
/// stay given.
fn fail(mine: &mut Opened, e: DomainError) {
    mine.local.fail();
    mine.sent = mine.next;
    mine.skipped = true;
    mine.failure = Some(e);
    mine.sending.send_replace(false);
}

/// The outcome of the `n`th log's batch of a call of the many-logs script
/// (`replies`: the call's statuses, or its failure).
fn batch_outcome(replies: &Result<Vec<String>, DomainError>, n: usize) -> Result<(), DomainError> {
    let statuses = replies.as_ref().map_err(for_each)?;
    match statuses.get(n).map(String::as_str) {
        Some("ok") => Ok(()),
        Some("none") => Err(DomainError::NotFound),
        Some("full") => Err(DomainError::unavailable("the stream log is full")),
        Some("gap") => Err(DomainError::internal(
            "redis: the stream log does not hold what this instance appended",
        )),
        _ => Err(unexpected("append")),
    }
}

impl RedisStreamLog {
    /// Appends `events` (see the module docs); their event ids.
    pub(super) async fn append_events(
        &self,
        conversation: ConversationId,
        events: Vec<WireEvent>,
    ) -> Result<Vec<String>, DomainError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (generation, first) = {
            let mut opened = self.inner.opened();
            match opened.get_mut(&conversation) {
                Some(mine) => {
                    if let Some(failure) = mine.failure.take() {
                        return Err(failure);
                    }
                    if !mine.local.failed() {
                        return self.queue(conversation, mine, events);
                    }
                    (mine.generation.clone(), Some((mine.next, mine.skipped)))
                }
                None => (String::new(), None),
            }
        };
        let (generation, entries) = self
            .inner
            .append_batch(conversation, &generation, first, &events)
            .await?;
        if first.is_some() {
            let count = u64::try_from(entries.len()).unwrap_or(u64::MAX);
            if let Some(mine) = self
                .inner
                .opened()
                .get_mut(&conversation)
                .filter(|mine| mine.generation == generation)
            {
                mine.next = mine.next.saturating_add(count);
            }
        }
        Ok(entries
            .iter()
            .map(|entry| event_id(&generation, entry))
            .collect())
    }

    /// Numbers `events` after the last number given, shows them to the
    /// local readers and, once the generation is shared, queues them for
    /// Redis (starting the sender when none runs); until then they wait in
    /// the local copy (see the module docs of `stream_log`).
    fn queue(
        &self,
        conversation: ConversationId,
        mine: &mut Opened,
        events: Vec<WireEvent>,
    ) -> Result<Vec<String>, DomainError> {
        let next = mine.next;
        let count = u64::try_from(events.len()).unwrap_or(u64::MAX);
        let most = u64::try_from(self.inner.options.max_events_per_log).unwrap_or(u64::MAX);
        if (next - 1).saturating_add(count) > most {
            return Err(DomainError::unavailable("the stream log is full"));
        }
        let mut ids = Vec::with_capacity(events.len());
        let mut logged = Vec::with_capacity(events.len());
        for (n, event) in (next..).zip(events) {
            let id = event_id(&mine.generation, &entry_id(n));
            ids.push(id.clone());
            logged.push(LoggedEvent { id, event });
        }
        mine.next = next + count;
        mine.local.extend(logged);
        if mine.shared && !mine.sending.send_replace(true) {
            self.inner
                .wait_for_sender(conversation, mine.generation.clone());
        }
        Ok(ids)
    }
}

/// Whether a failed command may succeed if tried again: its reply was lost
/// or late, or the connection failed.
fn transient(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        // A cluster failing over: `CLUSTERDOWN`, `TRYAGAIN`, `MASTERDOWN`,
        // a write on a primary just demoted, a node not connected yet.
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(ServerErrorKind::MasterDown | ServerErrorKind::ReadOnly)
        )
}
