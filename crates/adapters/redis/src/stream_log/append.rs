//! Appends: a batch of events in one script call, retried when its reply
//! may have been lost, and added to the local copy of a generation this
//! instance runs (see the module docs of `stream_log`).

use std::time::Duration;

use confab_domain::{ConversationId, DomainError, EventName, WireEvent};
use confab_ports::LoggedEvent;

use super::ids::event_id;
use super::{RedisStreamLog, unexpected};
use crate::pool::unavailable;

/// Attempts of one append before it fails.
const APPEND_ATTEMPTS: u32 = 4;

/// The pause before the second attempt; doubled before each next one.
const APPEND_BACKOFF: Duration = Duration::from_millis(50);

impl RedisStreamLog {
    /// Appends `events` in one script call, retried as the module docs
    /// say; their generation, entry ids, and how many entries the stream
    /// held before them (when known).
    async fn append_batch(
        &self,
        conversation: ConversationId,
        events: &[WireEvent],
    ) -> Result<(String, Vec<String>, Option<usize>), DomainError> {
        let inner = &self.inner;
        let (generation, mut appended) = inner
            .opened()
            .get(&conversation)
            .map(|o| (o.generation.clone(), o.appended))
            .unwrap_or_default();
        if appended.is_none() && !generation.is_empty() {
            // An earlier append failed: what the stream holds is counted
            // again, so this batch's retries stay safe.
            let stream = format!("{}{generation}", inner.stream_prefix(conversation));
            let mut conn = inner.pool.connection()?;
            appended = redis::cmd("XLEN")
                .arg(stream)
                .query_async::<usize>(&mut conn)
                .await
                .ok();
        }
        let mut invocation = inner.scripts.append.key(inner.meta_key(conversation));
        invocation
            .arg(inner.stream_prefix(conversation))
            .arg(inner.options.max_events_per_log)
            .arg(&generation)
            .arg(appended.map(|n| n.to_string()).unwrap_or_default());
        for event in events {
            invocation
                .arg(event.name.map_or("", EventName::as_str))
                .arg(&event.data);
        }
        let mut pause = APPEND_BACKOFF;
        let mut attempt = 1;
        let reply: Vec<String> = loop {
            let mut conn = inner.pool.connection()?;
            match invocation.invoke_async(&mut conn).await {
                Ok(reply) => break reply,
                Err(e) if attempt < APPEND_ATTEMPTS && transient(&e) => {
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
                if ids.len() == events.len() {
                    Ok((generation, ids, appended))
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

    /// Appends `events` (see [`append_batch`](Self::append_batch)) and, for
    /// a generation this instance runs, adds them to its local copy; their
    /// event ids.
    pub(super) async fn append_events(
        &self,
        conversation: ConversationId,
        events: Vec<WireEvent>,
    ) -> Result<Vec<String>, DomainError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let appended = self.append_batch(conversation, &events).await;
        let mut opened = self.inner.opened();
        let mine = opened.get_mut(&conversation);
        match appended {
            Ok((generation, entries, counted)) => {
                let logged: Vec<LoggedEvent> = entries
                    .iter()
                    .zip(events)
                    .map(|(entry, event)| LoggedEvent {
                        id: event_id(&generation, entry),
                        event,
                    })
                    .collect();
                let ids = logged.iter().map(|e| e.id.clone()).collect();
                if let Some(mine) = mine.filter(|o| o.generation == generation) {
                    mine.appended = counted.map(|n| n + logged.len());
                    mine.local.extend(logged);
                }
                Ok(ids)
            }
            Err(e) => {
                if let Some(mine) = mine {
                    // What Redis holds of the batch is unknown now: the next
                    // append doesn't compare, and local readers end (they
                    // can resume from Redis).
                    mine.appended = None;
                    mine.local.fail();
                }
                Err(e)
            }
        }
    }
}

/// Whether a failed command may succeed if tried again: its reply was lost
/// or late, or the connection failed.
fn transient(e: &redis::RedisError) -> bool {
    e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}
