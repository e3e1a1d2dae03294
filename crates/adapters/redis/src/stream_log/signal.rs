//! The stop signal of one generation: while awaited, it polls the
//! generation's stop flag. It does not renew the lease: the generation's
//! renewal task does, from `open` to `close`, whether the signal is awaited
//! or not (see `renewal.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::StopSignal;
use tokio::time::Instant;

use super::Inner;
use crate::pool::unavailable;

/// What one poll found.
enum Polled {
    /// A stop was asked of this generation.
    Stopped,
    /// The generation runs without a stop.
    Running,
    /// The generation is over without a stop (closed, replaced, or its lease
    /// ran out): none can come any more.
    Over,
}

type Polling = Pin<Box<dyn Future<Output = Result<Polled, DomainError>> + Send>>;

/// What a poll looks at.
struct Target {
    inner: Arc<Inner>,
    meta: String,
    generation: String,
}

impl Target {
    async fn poll(self: Arc<Self>) -> Result<Polled, DomainError> {
        let mut conn = self.inner.pool.connection().await?;
        let polled: i64 = self
            .inner
            .scripts
            .poll_stop
            .key(&self.meta)
            .arg(&self.generation)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(match polled {
            1 => Polled::Stopped,
            0 => Polled::Running,
            _ => Polled::Over,
        })
    }
}

/// Resolves when a stop is requested of the generation it was opened with,
/// looking for one every poll interval while it is awaited.
///
/// The app awaits [`stopped`](StopSignal::stopped) in a `select!` that
/// drops it whenever another branch wins (every token): the poll in flight
/// is kept here, not in the dropped future, so the next call carries on
/// with it and a poll completes however often the call is dropped.
pub(super) struct RedisStopSignal {
    target: Arc<Target>,
    /// Time between polls.
    every: Duration,
    next_poll: Instant,
    polling: Option<Polling>,
    /// The generation is over without a stop.
    over: bool,
    /// The last poll failed (logged once per outage, not once per poll).
    failing: bool,
}

impl RedisStopSignal {
    pub(super) fn new(inner: Arc<Inner>, meta: String, generation: String) -> Self {
        let every = inner.options.poll_interval.max(Duration::from_millis(1));
        Self {
            target: Arc::new(Target {
                inner,
                meta,
                generation,
            }),
            every,
            // The first poll is at once: a stop asked before anyone awaits
            // the signal still resolves it.
            next_poll: Instant::now(),
            polling: None,
            over: false,
            failing: false,
        }
    }
}

#[async_trait]
impl StopSignal for RedisStopSignal {
    async fn stopped(&mut self) {
        loop {
            if self.over {
                std::future::pending::<()>().await;
            }
            if self.polling.is_none() {
                tokio::time::sleep_until(self.next_poll).await;
            }
            let target = &self.target;
            let polling = self
                .polling
                .get_or_insert_with(|| Box::pin(Arc::clone(target).poll()));
            let polled = polling.await;
            self.polling = None;
            self.next_poll = Instant::now() + self.every;
            match polled {
                Ok(Polled::Stopped) => return,
                Ok(Polled::Running) => self.failing = false,
                Ok(Polled::Over) => self.over = true,
                Err(error) => {
                    if !self.failing {
                        tracing::warn!(
                            %error,
                            "cannot poll a generation's stop flag"
                        );
                    }
                    self.failing = true;
                }
            }
        }
    }
}
