//! The followers' hub: one task per stream log that waits for new entries
//! on every stream its readers follow with one `XREAD BLOCK` over all of
//! them, on one dedicated connection, and wakes the readers of each stream
//! that grew. A reader then fetches its new entries with `XRANGE` on the
//! shared connections, from its own position. However many readers follow,
//! an instance holds one blocking connection and one blocked read.
//!
//! Only readers of a generation running on another instance (or of one
//! this instance no longer runs) come here: readers of a generation this
//! instance runs read its local copy (see `local.rs`).
//!
//! The hub's position in each stream starts at the position of the first
//! reader that asked for it and only moves over entries it has read; a
//! reader registers before it reads, and reads again after. So an entry
//! appended after a reader's read is always one the hub has yet to read,
//! and its wake-up follows.
//!
//! A newly followed stream joins the blocked read when that read returns:
//! at the latest after [`BLOCK`], so a new reader's first wake-up can be
//! that late (its own read has already delivered what was there).
//!
//! # On a Redis Cluster
//!
//! One `XREAD` can't span slots, and every conversation's stream has a
//! slot of its own; a blocked read per stream would hold a connection per
//! stream. So on a cluster the hub polls instead: every [`POLL`], one
//! non-blocking `XREAD` per followed stream, all sent at once on the shared
//! connections (each to its stream's primary). A follower on another
//! instance than the answer's therefore sees new events up to [`POLL`]
//! later than on a single Redis; readers on the answer's own instance read
//! its local copy, as everywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use confab_domain::DomainError;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, watch};

use crate::pool::{RedisPool, unavailable};

/// The longest one read blocks before it starts again with the streams
/// followed by then.
const BLOCK: Duration = Duration::from_millis(200);

/// Entries asked for per stream and read.
const COUNT: usize = 64;

/// How long the hub waits between two polls that found nothing new, on a
/// cluster (see the module docs).
const POLL: Duration = Duration::from_millis(50);

/// How long the hub waits after a failed read before the next.
const RETRY: Duration = Duration::from_millis(250);

/// A stream being followed.
#[derive(Debug)]
struct Followed {
    /// The last entry id the hub read of it.
    cursor: String,
    /// Bumped whenever the hub reads new entries of it.
    grew: watch::Sender<u64>,
    /// Readers following it.
    readers: usize,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, Followed>,
    running: bool,
}

/// What the hub and its readers share.
#[derive(Debug)]
struct Shared {
    pool: RedisPool,
    state: Mutex<State>,
    /// A stream was added (wakes an idle hub).
    added: Arc<Notify>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // An idle hub waits on `added`: wake it to see it is gone.
        self.added.notify_one();
    }
}

/// The hub of one stream log.
#[derive(Debug)]
pub(super) struct Hub {
    shared: Arc<Shared>,
}

/// A reader's registration: wakes when its stream grows; unregisters when
/// dropped.
pub(super) struct Watch {
    shared: Weak<Shared>,
    stream: String,
    /// Changes when the hub reads new entries of the stream.
    pub(super) grew: watch::Receiver<u64>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut state = shared.state();
        if let Some(followed) = state.streams.get_mut(&self.stream) {
            followed.readers -= 1;
            if followed.readers == 0 {
                state.streams.remove(&self.stream);
            }
        }
    }
}

impl Hub {
    pub(super) fn new(pool: RedisPool) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                state: Mutex::new(State::default()),
                added: Arc::new(Notify::new()),
            }),
        }
    }

    /// Follows `stream` from the entry `after` (its start for `0-0`) for
    /// as long as the returned [`Watch`] lives.
    pub(super) fn watch(&self, stream: &str, after: &str) -> Watch {
        let mut state = self.shared.state();
        let followed = state
            .streams
            .entry(stream.to_owned())
            .or_insert_with(|| Followed {
                cursor: after.to_owned(),
                grew: watch::Sender::new(0),
                readers: 0,
            });
        followed.readers += 1;
        let grew = followed.grew.subscribe();
        if !state.running {
            state.running = true;
            self.shared.pool.spawn(run(
                Arc::downgrade(&self.shared),
                Arc::clone(&self.shared.added),
            ));
        }
        drop(state);
        self.shared.added.notify_one();
        Watch {
            shared: Arc::downgrade(&self.shared),
            stream: stream.to_owned(),
            grew,
        }
    }
}

/// A stream in an `XREAD` reply: its key and its entries (id, fields).
type Read = (String, Vec<(String, Vec<String>)>);

/// The hub task: see the module docs.
async fn run(shared: Weak<Shared>, added: Arc<Notify>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut failing = false;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let followed: Vec<(String, String)> = strong
            .state()
            .streams
            .iter()
            .map(|(stream, f)| (stream.clone(), f.cursor.clone()))
            .collect();
        if followed.is_empty() {
            drop(strong);
            added.notified().await;
            continue;
        }
        let read = read(&strong.pool, &mut conn, &followed).await;
        match read {
            Ok(streams) => {
                if failing {
                    tracing::info!("following answer streams on Redis again");
                }
                failing = false;
                let mut state = strong.state();
                for (stream, entries) in streams {
                    let (Some(followed), Some((last, _))) =
                        (state.streams.get_mut(&stream), entries.last())
                    else {
                        continue;
                    };
                    followed.cursor.clone_from(last);
                    followed.grew.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(error) => {
                conn = None;
                if !failing {
                    tracing::warn!(%error, "cannot follow answer streams on Redis; retrying");
                }
                failing = true;
                drop(strong);
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// One blocked read over `followed` (stream, cursor), on the hub's own
/// connection (made first if needed).
async fn read(
    pool: &RedisPool,
    conn: &mut Option<MultiplexedConnection>,
    followed: &[(String, String)],
) -> Result<Vec<Read>, DomainError> {
    if pool.is_cluster() {
        return poll(pool, followed).await;
    }
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(
            pool.dedicated(BLOCK + pool.settings().command_timeout)
                .await?,
        ),
    };
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT")
        .arg(COUNT)
        .arg("BLOCK")
        .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(u64::MAX))
        .arg("STREAMS");
    for (stream, _) in followed {
        cmd.arg(stream);
    }
    for (_, cursor) in followed {
        cmd.arg(cursor);
    }
    cmd.query_async(conn).await.map_err(|e| unavailable(&e))
}

/// One non-blocking read of each of `followed` (stream, cursor), all at
/// once on the shared connections, and a pause of [`POLL`] when none grew
/// (a cluster's hub: see the module docs).
async fn poll(pool: &RedisPool, followed: &[(String, String)]) -> Result<Vec<Read>, DomainError> {
    let reads = followed.iter().map(|(stream, cursor)| async move {
        let mut conn = pool.connection()?;
        let read: Vec<Read> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(COUNT)
            .arg("STREAMS")
            .arg(stream)
            .arg(cursor)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok::<_, DomainError>(read)
    });
    let grown: Vec<Read> = futures_util::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
        .collect();
    if grown.is_empty() {
        tokio::time::sleep(POLL).await;
    }
    Ok(grown)
}
