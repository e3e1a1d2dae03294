//! Admission (a fixed number of generations at once, a short queue) and
//! the stream a generation's events are read from.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use confab_ports::{CompletionStream, LlmError, LlmEvent};
use tokio::sync::mpsc::Receiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::engine::Item;

/// The error for a request that finds every slot taken and no room, or no
/// time, to wait.
fn busy() -> LlmError {
    LlmError::Unavailable("the local model is busy".to_owned())
}

/// The generations that may run at once, and the requests waiting for one.
#[derive(Debug)]
pub(crate) struct Slots {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    queue_timeout: Duration,
}

impl Slots {
    /// `max_concurrent` slots (at least one), a queue of `max_waiting`
    /// that gives up after `queue_timeout`.
    pub(crate) fn new(max_concurrent: usize, max_waiting: usize, queue_timeout: Duration) -> Self {
        Self {
            running: Arc::new(Semaphore::new(max_concurrent)),
            waiting: AtomicUsize::new(0),
            max_waiting,
            queue_timeout,
        }
    }

    /// Whether a request now would be refused: every slot taken and the
    /// queue full.
    pub(crate) fn saturated(&self) -> bool {
        self.running.available_permits() == 0
            && self.waiting.load(Ordering::Acquire) >= self.max_waiting
    }

    /// A slot: at once if one is free, else after waiting in the queue
    /// (first come, first served).
    ///
    /// # Errors
    /// [`LlmError::Unavailable`] when the queue is full or the wait times
    /// out.
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit, LlmError> {
        // A released slot goes to the queue's head first, so this can't
        // overtake a waiting request.
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(permit);
        }
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_waiting).then_some(n + 1)
            })
            .map_err(|_| busy())?;
        // Leaves the queue however the wait ends, the caller giving up
        // (dropping this future) included.
        let _queued = Queued(&self.waiting);
        match tokio::time::timeout(
            self.queue_timeout,
            Arc::clone(&self.running).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => Err(busy()),
        }
    }
}

/// A generation's slot, shared by its thread and its stream: freed by
/// whichever lets go first — the thread just before its last event, or the
/// stream when dropped (a stopped generation's thread may still be
/// finishing a token: the slot is not kept for it).
#[derive(Debug, Clone)]
pub(crate) struct Held(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Held {
    /// Holds `permit` until [`Held::release`].
    pub(crate) fn new(permit: OwnedSemaphorePermit) -> Self {
        Self(Arc::new(Mutex::new(Some(permit))))
    }

    /// Frees the slot (once; later calls do nothing).
    pub(crate) fn release(&self) {
        // Poisoned only by a panic while taking it, which can't happen;
        // the slot is then freed with the last holder.
        if let Ok(mut permit) = self.0.lock() {
            drop(permit.take());
        }
    }
}

/// A place in the queue, given back when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the stream is.
#[derive(Debug)]
enum State {
    Streaming,
    /// `Finished` was returned: only `Ok(None)` follows.
    Done,
    /// It failed: the same error again.
    Failed(LlmError),
}

/// The events of a generation running on its own thread. Dropping it
/// frees the generation's slot and closes the channel, which the thread
/// checks at every token: it stops.
#[derive(Debug)]
pub(crate) struct LocalStream {
    events: Receiver<Item>,
    state: State,
    slot: Held,
}

impl LocalStream {
    /// Reads `events` of the generation holding `slot`.
    pub(crate) const fn new(events: Receiver<Item>, slot: Held) -> Self {
        Self {
            events,
            state: State::Streaming,
            slot,
        }
    }
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        self.slot.release();
    }
}

#[async_trait]
impl CompletionStream for LocalStream {
    async fn next(&mut self) -> Result<Option<LlmEvent>, LlmError> {
        match &self.state {
            State::Streaming => {}
            State::Done => return Ok(None),
            State::Failed(e) => return Err(e.clone()),
        }
        let event = match self.events.recv().await {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                self.state = State::Failed(e.clone());
                return Err(e);
            }
            None => {
                // The thread ended without its last event: it panicked.
                tracing::error!("the local model's generation thread ended abruptly");
                let e = LlmError::Upstream { status: 0 };
                self.state = State::Failed(e.clone());
                return Err(e);
            }
        };
        if matches!(event, LlmEvent::Finished { .. }) {
            self.state = State::Done;
            self.events.close();
        }
        Ok(Some(event))
    }
}
