//! Appends. A generation this instance runs numbers its events itself:
//! a batch is given its ids, added to the local copy (its readers have it
//! at once) and queued; one task at a time hands what is queued to Redis
//! in one script call, in order, retried when its reply may have been
//! lost (see the module docs of `stream_log`). An append that failed for
//! good is reported by the next `append_all` (and logged by `close`),
//! and the local copy ends with an error; the numbers that batch had are
//! never given again, so a client that saw one of its events resumes
//! after it at what came next. Later appends of that generation wait for
//! Redis. Appends to a generation another instance runs wait for Redis
//! too, which numbers them after the stream's last entry.

use std::sync::Arc;
use std::time::Duration;

use confab_domain::{ConversationId, DomainError, EventName, WireEvent};
use confab_ports::LoggedEvent;

use super::ids::{entry_id, event_id};
use super::{Inner, Opened, RedisStreamLog, unexpected};
use crate::pool::unavailable;

/// Attempts of one append before it fails (350 ms of pauses in all).
const APPEND_ATTEMPTS: u32 = 4;

/// Attempts on a Redis Cluster: the pauses (3.15 s in all) outlast a
/// primary's failover, which fails a command in flight on the dead
/// primary at once, and others until its replica has taken over.
const CLUSTER_APPEND_ATTEMPTS: u32 = 7;

/// The pause before the second attempt; doubled before each next one.
const APPEND_BACKOFF: Duration = Duration::from_millis(50);

impl Inner {
    /// Appends `events` to `generation` of `conversation` (any open one
    /// when empty) in one script call, numbered from `first` (after the
    /// stream's last entry when `None`; `skipped`: numbers before it may
    /// be missing), retried as the module docs say; their generation and
    /// entry ids.
    async fn append_batch(
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
        let mut pause = APPEND_BACKOFF;
        let mut attempt = 1;
        let attempts = if self.pool.is_cluster() {
            CLUSTER_APPEND_ATTEMPTS
        } else {
            APPEND_ATTEMPTS
        };
        let reply: Vec<String> = loop {
            let mut conn = self.pool.connection()?;
            match invocation.invoke_async(&mut conn).await {
                Ok(reply) => break reply,
                Err(e) if attempt < attempts && transient(&e) => {
                    tracing::debug!(%conversation, attempt, error = %unavailable(&e), "append to the stream log failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(unavailable(&e)),
            }
        };
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

    /// Hands what `generation` of `conversation` has queued to Redis (the
    /// events of its local copy numbered from `sent` on), a batch at a
    /// time, until nothing is left (or the generation is no longer this
    /// instance's). The one sender of that generation.
    async fn send_pending(self: Arc<Self>, conversation: ConversationId, generation: String) {
        loop {
            let (invocation, count) = {
                let mut opened = self.opened();
                let Some(mine) = opened
                    .get_mut(&conversation)
                    .filter(|mine| mine.generation == generation)
                else {
                    return;
                };
                let (first, next) = (mine.sent, mine.next);
                if first == next {
                    mine.sending.send_replace(false);
                    return;
                }
                mine.sent = next;
                let count = usize::try_from(next - first).unwrap_or(usize::MAX);
                // The copy holds event `n` at `n - 1`: it has every event
                // this instance numbered while it sends (a copy that ended
                // takes no more, and nothing is queued after that).
                let invocation = mine.local.with_events(|events| {
                    let from = usize::try_from(first - 1).unwrap_or(usize::MAX);
                    let batch = events.iter().skip(from).take(count).map(|e| &e.event);
                    self.append_script(conversation, &generation, Some((first, false)), batch)
                });
                (invocation, count)
            };
            let sent = self.run_append(conversation, &invocation, count).await;
            if let Err(e) = sent {
                let mut opened = self.opened();
                if let Some(mine) = opened
                    .get_mut(&conversation)
                    .filter(|mine| mine.generation == generation)
                {
                    // Redis will never hold these: local readers end (their
                    // client resumes from Redis, after an event it saw
                    // here), the app hears of it at its next append, and
                    // their numbers stay given.
                    mine.local.fail();
                    mine.sent = mine.next;
                    mine.skipped = true;
                    mine.failure = Some(e);
                    mine.sending.send_replace(false);
                }
                return;
            }
        }
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
    /// local readers and queues them for Redis (starting the sender when
    /// none runs).
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
        if !mine.sending.send_replace(true) {
            self.inner
                .pool
                .spawn(Arc::clone(&self.inner).send_pending(conversation, mine.generation.clone()));
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
