//! Connections kept open between completions (HTTP/1.1 keep-alive).
//!
//! A completion's connection comes back here when its body was read to
//! its exact end and the server let it stay open; the next completion on
//! the same thread takes the one that came back last. Each thread keeps
//! its own: a server's request workers each run their own runtime, and a
//! socket is best used on the runtime whose reactor registered it. At most
//! [`PoolLimits::max_idle`] are kept in all, each for at most
//! [`PoolLimits::idle_timeout`]: a task closes the expired ones while any
//! are kept, and a take skips them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::time::Instant;

use super::Conn;

/// How many idle connections are kept, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolLimits {
    /// The most kept at once (0: none, every completion connects anew).
    pub(crate) max_idle: usize,
    /// The longest one is kept unused.
    pub(crate) idle_timeout: Duration,
}

/// The idle connections to one server.
pub(crate) struct Pool {
    limits: PoolLimits,
    idle: Mutex<Idle>,
}

/// What the lock guards.
#[derive(Default)]
struct Idle {
    /// Each thread's idle connections, the oldest first.
    by_thread: HashMap<ThreadId, Vec<(Instant, Conn)>>,
    /// How many there are in all.
    count: usize,
    /// A task is closing the expired ones.
    reaping: bool,
}

impl Idle {
    /// Takes out every connection idle since before `oldest`.
    fn expire(&mut self, oldest: Instant, into: &mut Vec<Conn>) {
        for list in self.by_thread.values_mut() {
            let fresh = list
                .iter()
                .position(|(since, _)| *since >= oldest)
                .unwrap_or(list.len());
            into.extend(list.drain(..fresh).map(|(_, conn)| conn));
        }
        self.by_thread.retain(|_, list| !list.is_empty());
        self.count = self.by_thread.values().map(Vec::len).sum();
    }
}

impl Pool {
    /// An empty pool.
    pub(crate) fn new(limits: PoolLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            idle: Mutex::new(Idle::default()),
        })
    }

    /// How many connections are kept now.
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count
    }

    /// Whether connections are kept at all.
    pub(crate) const fn keeps(&self) -> bool {
        self.limits.max_idle > 0
    }

    /// The idle connection this thread put back last that the server has
    /// neither closed nor written to; the ones found closed or expired are
    /// closed.
    pub(crate) fn take(&self) -> Option<Conn> {
        let thread = std::thread::current().id();
        let oldest = self.oldest_kept();
        let mut closed = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let mut found = None;
            if let Some(list) = idle.by_thread.get_mut(&thread) {
                while let Some((since, conn)) = list.pop() {
                    if since >= oldest && conn.is_open_and_quiet() {
                        found = Some(conn);
                        break;
                    }
                    closed.push(conn);
                }
                if list.is_empty() {
                    idle.by_thread.remove(&thread);
                }
            }
            idle.count -= closed.len() + usize::from(found.is_some());
            found
        };
        // Closed outside the lock.
        drop(closed);
        found
    }

    /// Keeps `conn` for a later completion on this thread, unless the pool
    /// is full (then it is closed).
    pub(crate) fn put(self: &Arc<Self>, conn: Conn) {
        let thread = std::thread::current().id();
        let mut refused = None;
        let start_reaper = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.count >= self.limits.max_idle {
                refused = Some(conn);
                false
            } else {
                idle.by_thread
                    .entry(thread)
                    .or_default()
                    .push((Instant::now(), conn));
                idle.count += 1;
                !std::mem::replace(&mut idle.reaping, true)
            }
        };
        drop(refused);
        if start_reaper {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(reap(Arc::downgrade(self), self.limits.idle_timeout));
                }
                // No runtime to close them on time: a later take skips
                // the expired ones.
                Err(_) => self.stopped_reaping(),
            }
        }
    }

    /// The earliest instant a connection may have been put back and still
    /// be taken.
    fn oldest_kept(&self) -> Instant {
        let now = Instant::now();
        now.checked_sub(self.limits.idle_timeout).unwrap_or(now)
    }

    /// Closes the expired connections; whether any are still kept (when
    /// none are, the reaper stops).
    fn reap_expired(&self) -> bool {
        let mut expired = Vec::new();
        let left = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.expire(self.oldest_kept(), &mut expired);
            if idle.count == 0 {
                idle.reaping = false;
            }
            idle.count > 0
        };
        drop(expired);
        left
    }

    /// Marks the reaper gone, so the next put starts another.
    fn stopped_reaping(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reaping = false;
    }
}

/// Closes `pool`'s expired connections every half `timeout`, until none
/// are kept or the pool is gone.
async fn reap(pool: Weak<Pool>, timeout: Duration) {
    /// Marks the reaper gone if it ends early (its runtime may drop it).
    struct Reaping {
        pool: Weak<Pool>,
        early: bool,
    }
    impl Drop for Reaping {
        fn drop(&mut self) {
            if let (true, Some(pool)) = (self.early, self.pool.upgrade()) {
                pool.stopped_reaping();
            }
        }
    }
    let mut reaping = Reaping {
        pool: pool.clone(),
        early: true,
    };
    let every = (timeout / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        if !pool.reap_expired() {
            // Marked gone under the lock already: a put since may have
            // started the next reaper.
            reaping.early = false;
            return;
        }
    }
}
