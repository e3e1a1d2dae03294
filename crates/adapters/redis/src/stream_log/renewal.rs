//! The renewal of one generation's lease by the instance running it: a task
//! started by `open` that renews the lease at a fixed pace until `close`,
//! whatever the app does meanwhile (awaiting the stop signal or not). Each
//! renewal also reads the stop and want flags: a stop or a want whose
//! publish this instance missed is seen at the next renewal.
//!
//! The task ends when:
//!
//! - its [`Renewal`] is dropped: `close` drops it, so does a newer `open` of
//!   the same conversation on this instance, and so does the log's shared
//!   state when it goes (the task holds it by a [`Weak`] only);
//! - the renewal finds the generation is no longer the open one (closed,
//!   replaced, or its lease ran out while this instance could not reach
//!   Redis): there is nothing of it left to renew.
//!
//! A renewal that fails (Redis unreachable) is retried at the next tick: it
//! never ends the task. If the process dies, the task dies with it and the
//! lease runs out, which is how another instance takes over.

use std::sync::{Arc, Weak};
use std::time::Duration;

use confab_domain::{ConversationId, DomainError};
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Inner, RedisStreamLogOptions, millis};
use crate::pool::unavailable;

/// Keeps a generation's lease renewed for as long as it lives; dropping it
/// ends the renewal.
#[derive(Debug)]
pub(super) struct Renewal {
    /// Never sent on: dropping it is the signal.
    _ended: oneshot::Sender<()>,
}

/// Time between renewals: the configured interval, but at least three per
/// lease, so one late or failed renewal costs nothing.
pub(super) fn interval(options: &RedisStreamLogOptions) -> Duration {
    options
        .poll_interval
        .min(options.lease / 3)
        .max(Duration::from_millis(1))
}

/// The generation `generation` of `conversation`, whose meta hash and
/// stream are `meta` and `stream`.
struct Target {
    conversation: ConversationId,
    meta: String,
    stream: String,
    generation: String,
}

impl Target {
    /// Renews the lease: 1, plus 1 when a stop was asked and 2 when a
    /// reader elsewhere wants its events; 0 when the generation is no
    /// longer the open one.
    async fn renew(&self, inner: &Inner) -> Result<i64, DomainError> {
        let mut conn = inner.pool.connection()?;
        inner
            .scripts
            .renew
            .key(&self.meta)
            .key(&self.stream)
            .arg(&self.generation)
            .arg(millis(inner.options.lease).max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }
}

impl Renewal {
    /// Starts renewing the lease of `generation` of `conversation`, just
    /// opened (so just leased) by this instance.
    pub(super) fn start(
        inner: &Arc<Inner>,
        conversation: ConversationId,
        meta: String,
        stream: String,
        generation: String,
    ) -> Self {
        let (ended, on_end) = oneshot::channel();
        let target = Target {
            conversation,
            meta,
            stream,
            generation,
        };
        inner.pool.spawn(renew(
            Arc::downgrade(inner),
            target,
            interval(&inner.options),
            on_end,
        ));
        Self { _ended: ended }
    }
}

/// The renewal task: see the module docs.
async fn renew(
    inner: Weak<Inner>,
    target: Target,
    every: Duration,
    mut ended: oneshot::Receiver<()>,
) {
    // `open` has just set the lease: the first renewal is one interval on.
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The last renewal failed (logged once per outage, not once per tick).
    let mut failing = false;
    loop {
        tokio::select! {
            // Ended first: no renewal once `close` has been called.
            biased;
            // Only ever an error: the sender is never sent on, only dropped.
            _ = &mut ended => return,
            _ = ticks.tick() => {}
        }
        // The log's shared state is gone: so is everything it opened.
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let renewed = target.renew(&strong).await;
        if let Ok(flags @ 1..) = renewed {
            if (flags - 1) & 1 == 1 {
                strong.deliver_stop(target.conversation, &target.generation);
            }
            if (flags - 1) & 2 == 2 {
                strong.share(target.conversation, &target.generation);
            }
        }
        // Never held between renewals, so the state can go meanwhile.
        drop(strong);
        match renewed {
            Ok(1..) => {
                if failing {
                    tracing::info!(
                        conversation = %target.conversation,
                        generation = %target.generation,
                        "renewing a generation's lease again"
                    );
                }
                failing = false;
            }
            Ok(_) => {
                // Unless `close` ended it meanwhile, the generation was lost
                // while this instance still runs it.
                if matches!(ended.try_recv(), Err(TryRecvError::Empty)) {
                    if let Some(inner) = inner.upgrade() {
                        inner.lost(target.conversation, &target.generation);
                    }
                    tracing::warn!(
                        conversation = %target.conversation,
                        generation = %target.generation,
                        "a running generation is no longer open (its lease ran out, or \
                         another instance closed or replaced it): no longer renewing it"
                    );
                }
                return;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        conversation = %target.conversation,
                        generation = %target.generation,
                        %error,
                        "cannot renew a running generation's lease; retrying"
                    );
                }
                failing = true;
            }
        }
    }
}
