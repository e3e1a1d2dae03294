//! Where the store's database work runs: a fixed set of threads, each
//! owning one connection, fed by two queues. Reads go to whichever reader
//! is free. Writes go to whichever writer is free (SQLite has one: it has
//! one write lock), which commits every write waiting when it gets to them
//! in one transaction (group commit). One write's failure stays its own:
//! the group runs first with its writes straight in the transaction, and
//! if one of them fails, it is rolled back and run again with each write in
//! a savepoint of its own (so a write's work may run more than once; it
//! must do only database work). Failures are rare, and the savepoints'
//! two statements per write are a round trip each on PostgreSQL. A group's
//! new conversations with their first exchange
//! ([`Executor::insert_exchange`]) are inserted together, ahead of the
//! group's other writes (queued at once, they waited for none of each
//! other): on PostgreSQL in one statement (a group of nothing else, and a
//! lone exchange, in that statement alone, with no `BEGIN` and `COMMIT`:
//! one round trip where there were four or five), on SQLite in one
//! statement per table, one flush of the search index instead of one per
//! question. The group's answer saves
//! ([`Executor::save_answer`]) go in together too, ahead of its other
//! writes (after its exchanges when those go in together), two statements
//! for all of them (see `answer.rs`). If either fails, the group runs again as
//! above, each write doing its own work in its savepoint.
//!
//! Against tokio's blocking pool and a connection pool, this means no
//! thread started per query, no check-out (r2d2 ran `SELECT 1` on every
//! one), no lock contention between writers (SQLite never sleeps in its
//! busy handler waiting for another of our connections), and one commit
//! (one WAL flush on PostgreSQL) for many concurrent writes. A write's
//! result is sent only once its transaction has committed: a caller never
//! sees a write that could still be rolled back.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use confab_domain::DomainError;
use diesel::{Connection, RunQueryDsl};
use tokio::sync::oneshot;

use crate::answer::{AnswerSave, Saved};
use crate::connection::{AnyConnection, Manager};
use crate::error::domain;
use crate::rows::NewExchange;

/// The most writes one transaction commits.
const MAX_GROUP: usize = 256;

/// On SQLite, how often a writer that has committed asks a reader to
/// checkpoint the WAL (copy its pages into the database file).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Checkpoints asked of a reader (only this module's tests count them).
#[cfg(test)]
static CHECKPOINTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Groups whose exchanges were inserted together (only this module's
/// tests make such groups).
#[cfg(test)]
static TOGETHER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Groups of new exchanges inserted in one statement with no transaction
/// around it (only this module's tests make such groups).
#[cfg(test)]
static ALONE_STATEMENT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Groups whose answers were saved together (only this module's tests make
/// such groups).
#[cfg(test)]
static SAVED_TOGETHER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The pause before a thread tries to connect again after a failure (the
/// jobs meanwhile are answered `Unavailable`).
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// A read as its queue holds it: given a connection, or why there is none.
type Read = Box<dyn FnOnce(Result<&mut AnyConnection, DomainError>) -> Ran + Send>;

/// Whether a job's work failed (its thread then checks the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Ok,
    Failed,
}

/// A write, run in the group's transaction (its own when it is alone),
/// answered once that transaction has ended.
trait Write: Send {
    /// Runs the work on `conn`: in a savepoint of its own (a transaction
    /// when none is open) when `savepoint`, else straight in the open
    /// transaction. It may run again after a run in a group that failed.
    fn run(&mut self, conn: &mut AnyConnection, savepoint: bool) -> Ran;
    /// Whether the work is one statement on `conn`: atomic by itself, so
    /// alone it needs no transaction (one round trip fewer at each end).
    fn one_statement(&self, _conn: &AnyConnection) -> bool {
        false
    }
    /// Runs the work alone, no transaction open: in one of its own, unless
    /// it is [`one_statement`](Self::one_statement).
    fn run_alone(&mut self, conn: &mut AnyConnection) -> Ran {
        let savepoint = !self.one_statement(conn);
        self.run(conn, savepoint)
    }
    /// The new exchange this write inserts, when that is all it does: a
    /// group on PostgreSQL inserts it with the others'.
    fn exchange(&self) -> Option<&NewExchange> {
        None
    }
    /// Its [`exchange`](Self::exchange) was inserted with the group's
    /// others: its result is as if it had run.
    fn inserted(&mut self) {}
    /// The answer this write saves, when that is all it does: a group
    /// saves it with the others'.
    fn answer_save(&self) -> Option<&AnswerSave> {
        None
    }
    /// Its [`answer_save`](Self::answer_save) ran with the group's others
    /// and did this.
    fn saved(&mut self, _saved: Saved) {}
    /// Sends the result: the work's, or `failure` when the transaction
    /// it ran in did not commit (or it never ran).
    fn answer(self: Box<Self>, failure: Option<DomainError>);
}

/// One queued job and when it was queued.
struct Queued<J> {
    job: J,
    at: Instant,
}

/// A queue of jobs and its wake-up.
struct Queue<J> {
    state: Mutex<QueueState<J>>,
    ready: Condvar,
}

struct QueueState<J> {
    jobs: VecDeque<Queued<J>>,
    closed: bool,
}

impl<J> Queue<J> {
    fn new() -> Self {
        Self {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, QueueState<J>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job`; it comes back when the queue is closed.
    fn push(&self, job: J) -> Result<(), J> {
        let mut state = self.state();
        if state.closed {
            return Err(job);
        }
        state.jobs.push_back(Queued {
            job,
            at: Instant::now(),
        });
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Up to `max` jobs, waiting for the first; `None` once closed.
    fn take(&self, max: usize) -> Option<Vec<Queued<J>>> {
        let mut state = self.state();
        loop {
            if state.closed {
                return None;
            }
            if !state.jobs.is_empty() {
                let n = state.jobs.len().min(max);
                return Some(state.jobs.drain(..n).collect());
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Stops the queue: its threads end, and what was queued is dropped
    /// (its callers see the store closed).
    fn close(&self) {
        let dropped = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.jobs)
        };
        drop(dropped);
        self.ready.notify_all();
    }
}

/// The two queues, shared by the handles and the threads.
struct Queues {
    reads: Queue<Read>,
    writes: Queue<Box<dyn Write>>,
}

/// Closes the queues when the last handle goes, and waits for the threads
/// to end: a process that exits while they still close their connections
/// (libpq tearing down beside the exit's own clean-up) crashed.
struct Closer {
    queues: Arc<Queues>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.close();
    }
}

impl Closer {
    /// Closes the queues and waits for the threads (once; later calls
    /// find none to wait for).
    fn close(&self) {
        self.queues.reads.close();
        self.queues.writes.close();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        let me = std::thread::current().id();
        for thread in threads {
            // A job that dropped the last handle runs on one of them.
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

/// A handle on the store's threads; cheap to clone. The threads end (and
/// close their connections) when the last handle is dropped, which waits
/// for them (each finishes the job it is running first).
#[derive(Clone)]
pub(crate) struct Executor {
    closer: Arc<Closer>,
}

/// How the threads are set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    /// Reader threads (and connections).
    pub(crate) readers: usize,
    /// Writer threads (and connections).
    pub(crate) writers: usize,
    /// How long a job may wait in its queue before it is answered
    /// `Unavailable` without running.
    pub(crate) acquire_timeout: Duration,
}

fn closed() -> DomainError {
    DomainError::unavailable("the database store is closed")
}

fn dropped() -> DomainError {
    DomainError::internal("the database work ended without an answer")
}

impl Executor {
    /// Starts `sizes.readers` reader threads and `sizes.writers` writers,
    /// each opening
    /// its connection with `manager` when its first job comes.
    pub(crate) fn start(manager: Arc<Manager>, sizes: Sizes) -> std::io::Result<Self> {
        let queues = Arc::new(Queues {
            reads: Queue::new(),
            writes: Queue::new(),
        });
        // Made first: when a thread can't be started, dropping it stops
        // the ones that were.
        let executor = Self {
            closer: Arc::new(Closer {
                queues: Arc::clone(&queues),
                threads: Mutex::new(Vec::new()),
            }),
        };
        let mut threads = Vec::new();
        for n in 0..sizes.readers.max(1) {
            let (queues, manager) = (Arc::clone(&queues), Arc::clone(&manager));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("confab-db-read-{n}"))
                    .spawn(move || read_loop(&queues, &manager, sizes.acquire_timeout))?,
            );
        }
        for n in 0..sizes.writers.max(1) {
            let (queues, manager) = (Arc::clone(&queues), Arc::clone(&manager));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("confab-db-write-{n}"))
                    .spawn(move || write_loop(&queues, &manager, sizes.acquire_timeout))?,
            );
        }
        *executor
            .closer
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = threads;
        Ok(executor)
    }

    fn queues(&self) -> &Queues {
        &self.closer.queues
    }

    /// Closes the store now, whatever handles remain: queued and later
    /// jobs are answered `Unavailable`, and this waits until every thread
    /// has finished its job and closed its connection. Blocking.
    pub(crate) fn close(&self) {
        self.closer.close();
    }

    /// Runs `work` on a reader's connection, inside the caller's tracing
    /// span, translating diesel errors at this boundary.
    pub(crate) async fn read<T, F>(&self, work: F) -> Result<T, DomainError>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> Result<T, diesel::result::Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Read = Box::new(move |conn| {
            let _entered = span.enter();
            let result = conn.and_then(|conn| work(conn).map_err(domain));
            let ran = if result.is_ok() { Ran::Ok } else { Ran::Failed };
            let _ = tx.send(result);
            ran
        });
        self.queues().reads.push(job).map_err(|_| closed())?;
        rx.await.map_err(|_| dropped())?
    }

    /// Runs `work` on a writer's connection in the group's transaction
    /// (its own transaction when it runs alone), and answers once that has
    /// committed. `work` may run more than once (see the module docs): it
    /// must do database work only, which a rollback undoes.
    pub(crate) async fn write<T, F>(&self, work: F) -> Result<T, DomainError>
    where
        T: Send + 'static,
        F: FnMut(&mut AnyConnection) -> Result<T, diesel::result::Error> + Send + 'static,
    {
        self.queue_write(|reply| {
            Box::new(WriteJob {
                work,
                result: None,
                reply,
                span: tracing::Span::current(),
            })
        })
        .await
    }

    /// Inserts a new conversation and its first exchange as a write (see
    /// [`write`](Self::write)), together with the group's other such
    /// inserts.
    pub(crate) async fn insert_exchange(&self, rows: NewExchange) -> Result<(), DomainError> {
        self.queue_write(|reply| {
            Box::new(ExchangeJob {
                rows,
                result: None,
                reply,
                span: tracing::Span::current(),
            })
        })
        .await
    }

    /// Saves an answer as a write (see [`write`](Self::write)), together
    /// with the group's other saves.
    pub(crate) async fn save_answer(&self, save: AnswerSave) -> Result<Saved, DomainError> {
        self.queue_write(|reply| {
            Box::new(SaveJob {
                save,
                result: None,
                reply,
                span: tracing::Span::current(),
            })
        })
        .await
    }

    /// Queues the write `job` makes with its reply's sender, and waits for
    /// its answer.
    async fn queue_write<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, DomainError>>) -> Box<dyn Write>,
    ) -> Result<T, DomainError> {
        let (tx, rx) = oneshot::channel();
        self.queues().writes.push(job(tx)).map_err(|_| closed())?;
        rx.await.map_err(|_| dropped())?
    }
}

/// The result a write's caller gets: its own failure, else its group's,
/// else what its work returned.
fn outcome<T>(
    result: Option<Result<T, DomainError>>,
    failure: Option<DomainError>,
) -> Result<T, DomainError> {
    match (result, failure) {
        // Its own failure says more than the group's.
        (Some(Err(e)), _) => Err(e),
        (_, Some(failure)) => Err(failure),
        (Some(Ok(value)), None) => Ok(value),
        (None, None) => Err(dropped()),
    }
}

/// A new exchange's insert, its result and reply.
struct ExchangeJob {
    rows: NewExchange,
    result: Option<Result<(), DomainError>>,
    reply: oneshot::Sender<Result<(), DomainError>>,
    span: tracing::Span,
}

impl Write for ExchangeJob {
    fn run(&mut self, conn: &mut AnyConnection, savepoint: bool) -> Ran {
        let _entered = self.span.enter();
        let rows = &self.rows;
        let result = if savepoint {
            conn.transaction(|conn| rows.insert(conn))
        } else {
            rows.insert(conn)
        }
        .map_err(domain);
        let ran = if result.is_ok() { Ran::Ok } else { Ran::Failed };
        self.result = Some(result);
        ran
    }

    /// On PostgreSQL, as are a group's exchanges inserted together.
    fn one_statement(&self, conn: &AnyConnection) -> bool {
        conn.is_postgres()
    }

    fn exchange(&self) -> Option<&NewExchange> {
        Some(&self.rows)
    }

    fn inserted(&mut self) {
        self.result = Some(Ok(()));
    }

    fn answer(self: Box<Self>, failure: Option<DomainError>) {
        let _ = self.reply.send(outcome(self.result, failure));
    }
}

/// An answer's save, its result and reply.
struct SaveJob {
    save: AnswerSave,
    result: Option<Result<Saved, DomainError>>,
    reply: oneshot::Sender<Result<Saved, DomainError>>,
    span: tracing::Span,
}

impl Write for SaveJob {
    fn run(&mut self, conn: &mut AnyConnection, savepoint: bool) -> Ran {
        let _entered = self.span.enter();
        let save = &self.save;
        let result = if savepoint {
            conn.transaction(|conn| save.save(conn))
        } else {
            save.save(conn)
        }
        .map_err(domain);
        let ran = if result.is_ok() { Ran::Ok } else { Ran::Failed };
        self.result = Some(result);
        ran
    }

    fn one_statement(&self, conn: &AnyConnection) -> bool {
        conn.is_postgres()
    }

    fn answer_save(&self) -> Option<&AnswerSave> {
        Some(&self.save)
    }

    fn saved(&mut self, saved: Saved) {
        self.result = Some(Ok(saved));
    }

    fn answer(self: Box<Self>, failure: Option<DomainError>) {
        let _ = self.reply.send(outcome(self.result, failure));
    }
}

/// A write's work, result and reply.
struct WriteJob<T, F> {
    work: F,
    result: Option<Result<T, DomainError>>,
    reply: oneshot::Sender<Result<T, DomainError>>,
    span: tracing::Span,
}

impl<T, F> Write for WriteJob<T, F>
where
    T: Send + 'static,
    F: FnMut(&mut AnyConnection) -> Result<T, diesel::result::Error> + Send + 'static,
{
    fn run(&mut self, conn: &mut AnyConnection, savepoint: bool) -> Ran {
        let _entered = self.span.enter();
        let work = &mut self.work;
        let result = if savepoint {
            // A savepoint inside the group's transaction; alone, a
            // transaction.
            conn.transaction(|conn| work(conn))
        } else {
            work(conn)
        }
        .map_err(domain);
        let ran = if result.is_ok() { Ran::Ok } else { Ran::Failed };
        self.result = Some(result);
        ran
    }

    fn answer(self: Box<Self>, failure: Option<DomainError>) {
        let _ = self.reply.send(outcome(self.result, failure));
    }
}

/// One thread's connection, opened when needed and dropped when broken.
struct Held<'a> {
    manager: &'a Manager,
    conn: Option<AnyConnection>,
    failed_at: Option<Instant>,
}

impl<'a> Held<'a> {
    const fn new(manager: &'a Manager) -> Self {
        Self {
            manager,
            conn: None,
            failed_at: None,
        }
    }

    /// The connection, opened if need be; `Unavailable` when it can't be
    /// (and for a short pause after a failure, so a down database is not
    /// hammered by every queued job).
    fn get(&mut self) -> Result<&mut AnyConnection, DomainError> {
        if self.conn.is_none() {
            if self
                .failed_at
                .is_some_and(|at| at.elapsed() < RECONNECT_PAUSE)
            {
                return Err(DomainError::unavailable("the database is unavailable"));
            }
            match self.manager.open() {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.failed_at = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not connect to the database");
                    self.failed_at = Some(Instant::now());
                    return Err(DomainError::unavailable("the database is unavailable"));
                }
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| DomainError::unavailable("the database is unavailable"))
    }

    /// After a failed job: keeps the connection only if it still answers.
    fn check(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && diesel::sql_query("SELECT 1").execute(conn).is_err()
        {
            tracing::warn!("a database connection broke; reconnecting");
            self.conn = None;
        }
    }

    /// After a panic: the connection's state is unknown.
    fn forget(&mut self) {
        self.conn = None;
    }
}

/// The same error again, for each write of a group that failed as one.
fn again(e: &DomainError) -> DomainError {
    match e {
        DomainError::Invalid { field, message } => DomainError::invalid(*field, message.clone()),
        DomainError::NotFound => DomainError::NotFound,
        DomainError::Duplicate { field } => DomainError::Duplicate { field: *field },
        DomainError::Unavailable(source) => DomainError::unavailable(source.to_string()),
        DomainError::Internal(source) => DomainError::internal(source.to_string()),
    }
}

fn too_late() -> DomainError {
    DomainError::unavailable("no database connection became free in time")
}

fn read_loop(queues: &Queues, manager: &Manager, acquire_timeout: Duration) {
    let mut held = Held::new(manager);
    while let Some(jobs) = queues.reads.take(1) {
        for Queued { job, at } in jobs {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                if at.elapsed() > acquire_timeout {
                    return job(Err(too_late()));
                }
                match held.get() {
                    Ok(conn) => job(Ok(conn)),
                    Err(e) => job(Err(e)),
                }
            }));
            match outcome {
                Ok(Ran::Ok) => {}
                Ok(Ran::Failed) => held.check(),
                Err(_) => held.forget(),
            }
        }
    }
}

/// Asks a reader to checkpoint the WAL of SQLite, passively (it copies
/// what no reader still needs, and never waits for the writer): the writer
/// then never stops a group's commit for a checkpoint and its two `fsync`s
/// (SQLite's own at 1,000 pages, left as a back-stop at
/// [`crate::connection`]'s larger bound). At most one is queued at a time.
fn ask_checkpoint(queues: &Queues, queued: &Arc<AtomicBool>) {
    if queued.swap(true, Ordering::AcqRel) {
        return;
    }
    let taken = Arc::clone(queued);
    let job: Read = Box::new(move |conn| {
        taken.store(false, Ordering::Release);
        let Ok(AnyConnection::Sqlite(conn)) = conn else {
            return Ran::Ok;
        };
        #[cfg(test)]
        CHECKPOINTS.fetch_add(1, Ordering::Relaxed);
        // A checkpoint that could not finish is finished by a later one.
        match diesel::connection::SimpleConnection::batch_execute(
            conn,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ) {
            Ok(()) => Ran::Ok,
            Err(e) => {
                tracing::warn!(error = %e, "a WAL checkpoint failed");
                Ran::Failed
            }
        }
    });
    if queues.reads.push(job).is_err() {
        queued.store(false, Ordering::Release);
    }
}

fn write_loop(queues: &Queues, manager: &Manager, acquire_timeout: Duration) {
    let mut held = Held::new(manager);
    let sqlite = manager.is_sqlite();
    let checkpoint_queued = Arc::new(AtomicBool::new(false));
    let mut last_checkpoint = Instant::now();
    while let Some(jobs) = queues.writes.take(MAX_GROUP) {
        let mut group = Vec::with_capacity(jobs.len());
        for Queued { job, at } in jobs {
            if at.elapsed() > acquire_timeout {
                job.answer(Some(too_late()));
            } else {
                group.push(job);
            }
        }
        if group.is_empty() {
            continue;
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| commit_group(&mut held, group)));
        match outcome {
            Ok(Ran::Ok) => {}
            Ok(Ran::Failed) => held.check(),
            // The group's replies were dropped with it: its callers hear
            // that the work ended without an answer.
            Err(_) => held.forget(),
        }
        if sqlite && last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            last_checkpoint = Instant::now();
            ask_checkpoint(queues, &checkpoint_queued);
        }
    }
}

/// Runs `group` in one transaction (a lone write in its own, a lone write
/// or a group of new exchanges that is one statement in none) and answers
/// each write.
fn commit_group(held: &mut Held<'_>, mut group: Vec<Box<dyn Write>>) -> Ran {
    let conn = match held.get() {
        Ok(conn) => conn,
        Err(e) => {
            for job in group {
                job.answer(Some(again(&e)));
            }
            return Ran::Failed;
        }
    };
    if group.len() == 1 {
        let ran = group[0].run_alone(conn);
        for job in group {
            job.answer(None);
        }
        return ran;
    }
    let mut any_failed = false;
    let together = group.iter().filter(|job| job.exchange().is_some()).count() > 1;
    let saves = saves_together(&group);
    let mut done = vec![false; group.len()];
    let straight = if together
        && group
            .iter()
            .all(|job| job.exchange().is_some() && job.one_statement(conn))
    {
        // Nothing but new exchanges, in one statement: it commits alone,
        // with no `BEGIN` and `COMMIT` around it.
        let exchanges: Vec<&NewExchange> = group.iter().filter_map(|j| j.exchange()).collect();
        #[cfg(test)]
        {
            TOGETHER.fetch_add(1, Ordering::Relaxed);
            ALONE_STATEMENT.fetch_add(1, Ordering::Relaxed);
        }
        let inserted = NewExchange::insert_all(conn, &exchanges);
        drop(exchanges);
        if inserted.is_ok() {
            for job in &mut group {
                job.inserted();
            }
        } else {
            any_failed = true;
        }
        inserted
    } else {
        conn.transaction(|conn| {
        if together {
            let exchanges: Vec<&NewExchange> = group.iter().filter_map(|j| j.exchange()).collect();
            #[cfg(test)]
            TOGETHER.fetch_add(1, Ordering::Relaxed);
            if NewExchange::insert_all(conn, &exchanges).is_err() {
                any_failed = true;
                return Err(diesel::result::Error::RollbackTransaction);
            }
        }
        if saves.len() > 1 {
            let answers: Vec<&AnswerSave> = saves
                .iter()
                .filter_map(|&n| group[n].answer_save())
                .collect();
            #[cfg(test)]
            SAVED_TOGETHER.fetch_add(1, Ordering::Relaxed);
            let saved = match AnswerSave::save_all(conn, &answers) {
                Ok(saved) => saved,
                Err(e) => {
                    // Each save runs again alone: a failure that repeats
                    // would slow every group without a word otherwise.
                    tracing::warn!(error = %e, saves = answers.len(), "a group's answer saves failed together; saving them one by one");
                    any_failed = true;
                    return Err(diesel::result::Error::RollbackTransaction);
                }
            };
            for (&n, saved) in saves.iter().zip(saved) {
                group[n].saved(saved);
                done[n] = true;
            }
        }
        for (job, &done) in group.iter_mut().zip(&done) {
            if together && job.exchange().is_some() {
                job.inserted();
            } else if !done && job.run(conn, false) == Ran::Failed {
                any_failed = true;
                return Err(diesel::result::Error::RollbackTransaction);
            }
        }
        Ok(())
        })
    };
    if straight.is_ok() {
        for job in group {
            job.answer(None);
        }
        return Ran::Ok;
    }
    if !any_failed {
        // The commit itself failed: so does every write of the group.
        let failure = straight.err().map(domain);
        for job in group {
            job.answer(failure.as_ref().map(again));
        }
        return Ran::Failed;
    }
    // A write failed and the group was rolled back: again, each write in a
    // savepoint, so that only the failing ones fail.
    any_failed = false;
    let committed = conn.transaction(|conn| {
        for job in &mut group {
            any_failed |= job.run(conn, true) == Ran::Failed;
        }
        Ok::<_, diesel::result::Error>(())
    });
    let failure = committed.err().map(domain);
    let ran = if failure.is_some() || any_failed {
        Ran::Failed
    } else {
        Ran::Ok
    };
    for job in group {
        job.answer(failure.as_ref().map(again));
    }
    ran
}

/// The positions in `group` of the answer saves it can save together: the
/// first save of each conversation (a grouped update changes a row once,
/// so a second save of one conversation runs on its own, after them).
fn saves_together(group: &[Box<dyn Write>]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    group
        .iter()
        .enumerate()
        .filter_map(|(n, job)| {
            let save = job.answer_save()?;
            seen.insert(save.conversation.as_str()).then_some(n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::mpsc;

    use diesel::connection::SimpleConnection;

    use super::*;
    use crate::{DatabaseTarget, PoolOptions};

    fn executor(dir: &tempfile::TempDir) -> Executor {
        let target = DatabaseTarget::Sqlite(dir.path().join("group.db"));
        let manager = Arc::new(Manager::new(target, &PoolOptions::default()));
        Executor::start(
            manager,
            Sizes {
                readers: 1,
                writers: 1,
                acquire_timeout: Duration::from_secs(5),
            },
        )
        .unwrap()
    }

    fn insert(conn: &mut AnyConnection, id: i32) -> Result<usize, diesel::result::Error> {
        diesel::sql_query(format!("INSERT INTO t (id) VALUES ({id})")).execute(conn)
    }

    /// Writes queued while the writer is busy run as one group when it is
    /// free: a failing one fails alone, the others are stored, and each is
    /// answered only once the group has committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_together_commit_as_one_group_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = executor(&dir);
        db.write(|conn| conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            .await
            .unwrap();
        db.write(|conn| insert(conn, 1)).await.unwrap();
        let results = group_of(&db, &[2, 1, 3]).await;
        assert!(results[0].0.is_ok(), "{:?}", results[0].0);
        assert!(
            matches!(results[1].0, Err(DomainError::Duplicate { .. })),
            "{:?}",
            results[1].0
        );
        assert!(results[2].0.is_ok(), "{:?}", results[2].0);
        let stored: Vec<i32> = db
            .read(|conn| {
                #[derive(diesel::QueryableByName)]
                struct Row {
                    #[diesel(sql_type = diesel::sql_types::Integer)]
                    id: i32,
                }
                let rows: Vec<Row> =
                    diesel::sql_query("SELECT id FROM t ORDER BY id").load(conn)?;
                Ok(rows.into_iter().map(|r| r.id).collect())
            })
            .await
            .unwrap();
        assert_eq!(stored, [1, 2, 3]);
    }

    /// On SQLite the WAL is checkpointed by a reader the writer asks, once
    /// a second while it commits: a commit past that second brings the
    /// pages the WAL held into the database file, far below the pages at
    /// which the writer would checkpoint itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_checkpoints_the_wal_the_writer_asks_it_to() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let db = executor(&dir);
        let file = dir.path().join("group.db");
        db.write(|conn| {
            conn.batch_execute(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB); \
                 INSERT INTO t (body) VALUES (zeroblob(400000));",
            )?;
            Ok(0)
        })
        .await
        .unwrap();
        let size = || std::fs::metadata(&file).map_or(0, |m| m.len());
        assert!(size() < 100_000, "the rows are in the WAL: {}", size());
        let auto: i64 = db
            .read(|conn| {
                #[derive(diesel::QueryableByName)]
                struct Row {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    wal_autocheckpoint: i64,
                }
                let row: Row = diesel::sql_query("PRAGMA wal_autocheckpoint").get_result(conn)?;
                Ok(row.wal_autocheckpoint)
            })
            .await
            .unwrap();
        assert_eq!(auto, 8192);
        let asked = CHECKPOINTS.load(Ordering::Relaxed);
        tokio::time::sleep(CHECKPOINT_EVERY + Duration::from_millis(100)).await;
        db.write(|conn| insert(conn, 2)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while size() < 400_000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(size() >= 400_000, "checkpointed: {}", size());
        assert!(CHECKPOINTS.load(Ordering::Relaxed) > asked);
    }

    /// The depth of transactions `conn` is in (1: the group's, 2: a
    /// savepoint in it).
    fn depth(conn: &mut AnyConnection) -> u32 {
        use diesel::connection::TransactionManager;
        <AnyConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn)
            .transaction_depth()
            .unwrap()
            .map_or(0, std::num::NonZeroU32::get)
    }

    /// Queues inserts of `ids` as one group behind a write that holds the
    /// writer, checks that none is answered before the writer is freed,
    /// and frees it; each write's result, and the depths its work ran at,
    /// in order.
    async fn group_of(db: &Executor, ids: &[i32]) -> Vec<(Result<usize, DomainError>, Vec<u32>)> {
        let mut depths = Vec::new();
        let writes = ids.iter().map(|&id| {
            let writer = db.clone();
            let seen = Arc::new(Mutex::new(Vec::new()));
            depths.push(Arc::clone(&seen));
            async move {
                writer
                    .write(move |conn| {
                        seen.lock().unwrap().push(depth(conn));
                        insert(conn, id)
                    })
                    .await
            }
        });
        let results = queued_as_one_group(db, writes.collect()).await;
        results
            .into_iter()
            .zip(depths)
            .map(|(result, depths)| (result, depths.lock().unwrap().clone()))
            .collect()
    }

    /// Queues `writes` as one group behind a write that holds the writer,
    /// checks that none is answered before the writer is freed, and frees
    /// it; each write's result, in order.
    async fn queued_as_one_group<T, W>(db: &Executor, writes: Vec<W>) -> Vec<T>
    where
        T: Send + 'static,
        W: std::future::Future<Output = T> + Send + 'static,
    {
        let (hold, held) = mpsc::channel::<()>();
        let (busy, writer_busy) = tokio::sync::oneshot::channel();
        let first = tokio::spawn({
            let db = db.clone();
            let mut busy = Some(busy);
            async move {
                db.write(move |_conn| {
                    if let Some(busy) = busy.take() {
                        let _ = busy.send(());
                        let _ = held.recv();
                    }
                    Ok(0)
                })
                .await
            }
        });
        writer_busy.await.unwrap();
        let mut group = Vec::new();
        for (queued, write) in (1..).zip(writes) {
            group.push(tokio::spawn(write));
            // Queued in the order given: the next is spawned only then.
            while db.queues().writes.state().jobs.len() < queued {
                tokio::task::yield_now().await;
            }
        }
        // Nothing of the group is answered before it has run.
        assert!(group.iter().all(|task| !task.is_finished()));
        hold.send(()).unwrap();
        first.await.unwrap().unwrap();
        let mut results = Vec::new();
        for task in group {
            results.push(task.await.unwrap());
        }
        results
    }

    /// A new exchange's rows: conversation `id` of the user `u`.
    fn exchange_rows(id: &str) -> NewExchange {
        let message = |n: i64, role: &str, status: &str| crate::rows::MessageRow {
            conversation_id: id.to_owned(),
            id: format!("m{n}"),
            position: n,
            parent_id: (n == 2).then(|| "m1".to_owned()),
            role: role.to_owned(),
            content: r#"{"content_type":"text","parts":["hello"]}"#.to_owned(),
            status: status.to_owned(),
            model_slug: None,
            metadata: "{}".to_owned(),
            created_at: 1,
            updated_at: 1,
        };
        NewExchange {
            conversation: crate::rows::ConversationRow {
                id: id.to_owned(),
                user_id: "u".to_owned(),
                title: "New chat".to_owned(),
                last_message: Some("hello".to_owned()),
                is_archived: false,
                deleted_at: None,
                created_at: 1,
                updated_at: 1,
                current_node: Some("m2".to_owned()),
                system_prompt: None,
                model: None,
            },
            messages: [
                message(1, "user", "finished_successfully"),
                message(2, "assistant", "in_progress"),
            ],
        }
    }

    /// On both backends a group's new exchanges are inserted together (one
    /// statement per table); when that fails (one conversation's id is
    /// taken), the group runs again write by write and only that one
    /// fails. Every other exchange is stored whole. (One test for both:
    /// the count of such groups is the process's.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_groups_new_exchanges_go_in_together_and_fail_alone() {
        new_exchanges_go_in_together(crate::testing::TestDatabase::sqlite()).await;
        new_exchanges_go_in_together(crate::testing::TestDatabase::postgres()).await;
    }

    /// An executor (one reader, one writer) on `database`, migrated, with
    /// the user `u`.
    async fn executor_with_user(database: &crate::testing::TestDatabase) -> Executor {
        // Migrated (a SQLite file is migrated by the first store on it).
        drop(database.store().await);
        database.execute(
            "INSERT INTO users VALUES ('u', 'u', 'u@example.com', 'x', 'user', FALSE, 0, 0)",
        );
        let target = DatabaseTarget::parse(database.url()).unwrap();
        Executor::start(
            Arc::new(Manager::new(target, &PoolOptions::default())),
            Sizes {
                readers: 1,
                writers: 1,
                acquire_timeout: Duration::from_secs(5),
            },
        )
        .unwrap()
    }

    async fn new_exchanges_go_in_together(database: crate::testing::TestDatabase) {
        use std::sync::atomic::Ordering;
        let db = executor_with_user(&database).await;
        let insert_all = |ids: &[&str]| {
            ids.iter()
                .map(|id| {
                    let (db, rows) = (db.clone(), exchange_rows(id));
                    async move { db.insert_exchange(rows).await }
                })
                .collect::<Vec<_>>()
        };
        let before = TOGETHER.load(Ordering::Relaxed);
        let alone_before = ALONE_STATEMENT.load(Ordering::Relaxed);
        let results = queued_as_one_group(&db, insert_all(&["a", "b", "c"])).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(TOGETHER.load(Ordering::Relaxed), before + 1);
        let results = queued_as_one_group(&db, insert_all(&["d", "b", "e"])).await;
        assert_eq!(TOGETHER.load(Ordering::Relaxed), before + 2);
        // On PostgreSQL a group of nothing but new exchanges is one
        // statement with no transaction around it.
        let postgres = database.url().starts_with("postgres");
        assert_eq!(
            ALONE_STATEMENT.load(Ordering::Relaxed),
            alone_before + if postgres { 2 } else { 0 }
        );
        assert!(results[0].is_ok(), "{results:?}");
        assert!(
            matches!(results[1], Err(DomainError::Duplicate { .. })),
            "{results:?}"
        );
        assert!(results[2].is_ok(), "{results:?}");
        let stored: Vec<(String, i64)> = db
            .read(|conn| {
                #[derive(diesel::QueryableByName)]
                struct Row {
                    #[diesel(sql_type = diesel::sql_types::Text)]
                    id: String,
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    messages: i64,
                }
                let rows: Vec<Row> = diesel::sql_query(
                    "SELECT c.id, (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages \
                     FROM conversations c ORDER BY c.id",
                )
                .load(conn)?;
                Ok(rows.into_iter().map(|r| (r.id, r.messages)).collect())
            })
            .await
            .unwrap();
        let expected: Vec<(String, i64)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|id| ((*id).to_owned(), 2))
            .collect();
        assert_eq!(stored, expected);
    }

    /// What a PostgreSQL connection sent: each statement's text, and
    /// `BEGIN` for each transaction opened.
    fn recorded(conn: &mut diesel::PgConnection) -> Arc<Mutex<Vec<String>>> {
        use diesel::connection::{Instrumentation, InstrumentationEvent};
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&sent);
        let record = move |event: InstrumentationEvent<'_>| {
            let line = match event {
                InstrumentationEvent::StartQuery { query, .. } => query.to_string(),
                InstrumentationEvent::BeginTransaction { .. } => "BEGIN".to_owned(),
                _ => return,
            };
            log.lock().unwrap().push(line);
        };
        let record: Box<dyn Instrumentation> = Box::new(record);
        Connection::set_instrumentation(conn, record);
        sent
    }

    /// A migrated PostgreSQL database with the user `u`, and a store
    /// connection to it.
    async fn postgres_with_user() -> (crate::testing::TestDatabase, AnyConnection) {
        let database = crate::testing::TestDatabase::postgres();
        drop(database.store().await);
        database.execute(
            "INSERT INTO users VALUES ('u', 'u', 'u@example.com', 'x', 'user', FALSE, 0, 0)",
        );
        let target = DatabaseTarget::parse(database.url()).unwrap();
        let conn = Manager::new(target, &PoolOptions::default())
            .open()
            .unwrap();
        (database, conn)
    }

    /// On PostgreSQL a lone new exchange is one statement, sent with no
    /// transaction around it, and all or nothing: one whose second
    /// message fails leaves neither its conversation nor its first
    /// message behind.
    #[tokio::test]
    async fn a_lone_exchange_on_postgres_is_one_statement_and_all_or_nothing() {
        let (database, mut conn) = postgres_with_user().await;
        let AnyConnection::Postgres(pg) = &mut conn else {
            panic!("a PostgreSQL connection");
        };
        let sent = recorded(pg);
        let job = |rows: NewExchange| {
            let (reply, answer) = oneshot::channel();
            let job = ExchangeJob {
                rows,
                result: None,
                reply,
                span: tracing::Span::none(),
            };
            (job, answer)
        };
        let (mut whole, answer) = job(exchange_rows("whole-one"));
        assert_eq!(whole.run_alone(&mut conn), Ran::Ok);
        Box::new(whole).answer(None);
        assert!(answer.await.unwrap().is_ok());
        let statements = std::mem::take(&mut *sent.lock().unwrap());
        assert_eq!(statements.len(), 1, "{statements:?}");
        assert!(
            statements[0].starts_with("WITH c AS (INSERT INTO conversations"),
            "{statements:?}"
        );
        let mut broken = exchange_rows("broken-one");
        broken.messages[1].position = 1;
        let (mut broken, answer) = job(broken);
        assert_eq!(broken.run_alone(&mut conn), Ran::Failed);
        Box::new(broken).answer(None);
        assert!(answer.await.unwrap().is_err());
        let statements = std::mem::take(&mut *sent.lock().unwrap());
        assert_eq!(statements.len(), 1, "no BEGIN, no ROLLBACK: {statements:?}");
        let rows = database.rows_containing(&["broken-one".to_owned()]);
        assert!(rows.is_empty(), "nothing of the failed exchange: {rows:?}");
        let mut rows = database.rows_containing(&["whole-one".to_owned()]);
        rows.sort();
        assert_eq!(
            rows,
            [("conversations".to_owned(), 1), ("messages".to_owned(), 2)]
        );
    }

    /// On PostgreSQL a lone answer save is one statement, sent with no
    /// transaction around it: the answer, the conversation's preview and
    /// its title change together, and a save of an answer no longer in
    /// progress changes nothing.
    #[tokio::test]
    async fn a_lone_answer_save_on_postgres_is_one_statement() {
        let (_database, mut conn) = postgres_with_user().await;
        exchange_rows("saved-one").insert(&mut conn).unwrap();
        let AnyConnection::Postgres(pg) = &mut conn else {
            panic!("a PostgreSQL connection");
        };
        let sent = recorded(pg);
        let save = |status: confab_domain::MessageStatus| {
            let (reply, answer) = oneshot::channel();
            let job = SaveJob {
                save: AnswerSave {
                    conversation: "saved-one".to_owned(),
                    id: "m2".to_owned(),
                    json: r#"{"content_type":"text","parts":["Done."]}"#.to_owned(),
                    status,
                    at: 9,
                    preview: Some("Done.".to_owned()),
                    title: Some(crate::answer::NewTitle {
                        untitled: "New chat".to_owned(),
                        owner: "u".to_owned(),
                        title: "A title".to_owned(),
                    }),
                },
                result: None,
                reply,
                span: tracing::Span::none(),
            };
            (job, answer)
        };
        let (mut job, answer) = save(confab_domain::MessageStatus::FinishedSuccessfully);
        assert_eq!(job.run_alone(&mut conn), Ran::Ok);
        Box::new(job).answer(None);
        assert_eq!(
            answer.await.unwrap().unwrap(),
            Some(Some("A title".to_owned()))
        );
        let statements = std::mem::take(&mut *sent.lock().unwrap());
        assert_eq!(statements.len(), 1, "{statements:?}");
        assert!(
            statements[0].starts_with("WITH m AS (UPDATE messages"),
            "{statements:?}"
        );
        #[derive(diesel::QueryableByName, Debug, PartialEq)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            status: String,
            #[diesel(sql_type = diesel::sql_types::Text)]
            title: String,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            last_message: Option<String>,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            updated_at: i64,
        }
        let read = |conn: &mut AnyConnection| -> Row {
            let AnyConnection::Postgres(pg) = conn else {
                panic!("a PostgreSQL connection");
            };
            diesel::sql_query(
                "SELECT m.status, c.title, c.last_message, c.updated_at FROM messages m \
                 JOIN conversations c ON c.id = m.conversation_id \
                 WHERE m.conversation_id = 'saved-one' AND m.id = 'm2'",
            )
            .get_result(pg)
            .unwrap()
        };
        let stored = Row {
            status: "finished_successfully".to_owned(),
            title: "A title".to_owned(),
            last_message: Some("Done.".to_owned()),
            updated_at: 9,
        };
        assert_eq!(read(&mut conn), stored);
        // Ended: a second save finds no answer in progress.
        let (mut job, answer) = save(confab_domain::MessageStatus::Failed);
        assert_eq!(job.run_alone(&mut conn), Ran::Ok);
        Box::new(job).answer(None);
        assert_eq!(answer.await.unwrap().unwrap(), None);
        assert_eq!(read(&mut conn), stored);
    }

    /// The saves of answers `ids` queued at once (`grouped`) or one after
    /// another: the conversation `id` (of user `u`) has its answer `m2` in
    /// progress, except `done`, whose answer has ended, and `deleted`,
    /// which is deleted. Conversation `b`'s save gives a title, and `c`'s
    /// gives one for another owner; `a` is saved twice.
    async fn answer_saves(db: &Executor, grouped: bool) -> Vec<Result<Saved, DomainError>> {
        let save = |conversation: &str, text: &str, title: Option<(&str, &str)>| AnswerSave {
            conversation: conversation.to_owned(),
            id: "m2".to_owned(),
            json: format!(r#"{{"content_type":"text","parts":["{text}"]}}"#),
            status: confab_domain::MessageStatus::FinishedSuccessfully,
            at: 7,
            preview: (!text.is_empty()).then(|| text.to_owned()),
            title: title.map(|(owner, title)| crate::answer::NewTitle {
                untitled: "New chat".to_owned(),
                owner: owner.to_owned(),
                title: title.to_owned(),
            }),
        };
        let saves = vec![
            save("a", "first words", None),
            save("b", "", Some(("u", "Titled"))),
            save("c", "other words", Some(("someone else", "Not this"))),
            save("deleted", "late words", None),
            save("done", "too late", None),
            save("a", "again", None),
        ];
        if grouped {
            let writes = saves
                .into_iter()
                .map(|save| {
                    let db = db.clone();
                    async move { db.save_answer(save).await }
                })
                .collect();
            return queued_as_one_group(db, writes).await;
        }
        let mut results = Vec::new();
        for save in saves {
            results.push(db.save_answer(save).await);
        }
        results
    }

    /// On both backends, the answer saves a group holds are saved together
    /// (two statements), each with the outcome it has alone: saved, with
    /// its conversation's title when it gave one; saved without touching a
    /// deleted conversation; nothing for an answer no longer in progress
    /// (which fails nothing else). A second save of one conversation runs
    /// after them, on its own. The rows end the same either way. (One test
    /// for both: the count of such groups is the process's.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_groups_answer_saves_go_in_together_as_each_would_alone() {
        answer_saves_go_in_together(crate::testing::TestDatabase::sqlite()).await;
        answer_saves_go_in_together(crate::testing::TestDatabase::postgres()).await;
    }

    async fn answer_saves_go_in_together(database: crate::testing::TestDatabase) {
        use std::sync::atomic::Ordering;
        let db = executor_with_user(&database).await;
        let mut outcomes = Vec::new();
        let mut rows = Vec::new();
        for grouped in [false, true] {
            db.write(|conn| conn.batch_execute("DELETE FROM messages; DELETE FROM conversations"))
                .await
                .unwrap();
            for id in ["a", "b", "c", "deleted", "done"] {
                db.insert_exchange(exchange_rows(id)).await.unwrap();
            }
            db.write(|conn| {
                conn.batch_execute(
                    "UPDATE conversations SET deleted_at = 5 WHERE id = 'deleted'; \
                     UPDATE messages SET status = 'failed' WHERE conversation_id = 'done'",
                )
            })
            .await
            .unwrap();
            let before = SAVED_TOGETHER.load(Ordering::Relaxed);
            outcomes.push(answer_saves(&db, grouped).await);
            assert_eq!(
                SAVED_TOGETHER.load(Ordering::Relaxed),
                before + usize::from(grouped)
            );
            rows.push(stored_answers(&db).await);
        }
        let alone = &outcomes[0];
        assert!(
            matches!(
                alone.as_slice(),
                [
                    Ok(Some(None)),
                    Ok(Some(Some(b))),
                    Ok(Some(Some(c))),
                    Ok(Some(None)),
                    Ok(None),
                    Ok(None),
                ] if b == "Titled" && c == "New chat"
            ),
            "{alone:?}"
        );
        assert_eq!(format!("{:?}", outcomes[1]), format!("{alone:?}"));
        assert_eq!(rows[0], rows[1]);
        let text = |words: &str| format!(r#"{{"content_type":"text","parts":["{words}"]}}"#);
        let expected = [
            format!(
                "a finished_successfully {} | 7 first words New chat",
                text("first words")
            ),
            format!("b finished_successfully {} | 7 hello Titled", text("")),
            format!(
                "c finished_successfully {} | 7 other words New chat",
                text("other words")
            ),
            format!(
                "deleted finished_successfully {} | 1 hello New chat",
                text("late words")
            ),
            format!("done failed {} | 1 hello New chat", text("hello")),
        ];
        assert_eq!(rows[1], expected);
    }

    /// Each conversation's answer (status and text) and row (updated at,
    /// preview, title), a line each.
    async fn stored_answers(db: &Executor) -> Vec<String> {
        db.read(|conn| {
            #[derive(diesel::QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Text)]
                line: String,
            }
            let rows: Vec<Row> = diesel::sql_query(
                "SELECT c.id || ' ' || m.status || ' ' || m.content || ' | ' \
                 || CAST(c.updated_at AS TEXT) || ' ' || COALESCE(c.last_message, '-') \
                 || ' ' || c.title AS line \
                 FROM conversations c JOIN messages m ON m.conversation_id = c.id AND m.id = 'm2' \
                 ORDER BY c.id",
            )
            .load(conn)?;
            Ok(rows.into_iter().map(|r| r.line).collect())
        })
        .await
        .unwrap()
    }

    /// A group whose writes all succeed runs them straight in its
    /// transaction, without savepoints; one failure rolls the group back
    /// and runs every write again, each in a savepoint, and only the failing
    /// one fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_takes_savepoints_only_after_a_write_failed() {
        let dir = tempfile::tempdir().unwrap();
        let db = executor(&dir);
        db.write(|conn| conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            .await
            .unwrap();
        for (result, depths) in group_of(&db, &[1, 2, 3]).await {
            assert_eq!(result.unwrap(), 1);
            assert_eq!(depths, [1], "straight in the group's transaction, once");
        }
        let results = group_of(&db, &[4, 2, 5]).await;
        let depths: Vec<&[u32]> = results.iter().map(|(_, d)| d.as_slice()).collect();
        // The duplicate stops the straight run at it; the rerun takes a
        // savepoint for each write.
        assert_eq!(depths, [&[1, 2][..], &[1, 2][..], &[2][..]]);
        assert!(results[0].0.is_ok() && results[2].0.is_ok());
        assert!(matches!(results[1].0, Err(DomainError::Duplicate { .. })));
        let stored: i64 = db
            .read(|conn| {
                #[derive(diesel::QueryableByName)]
                struct Count {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                diesel::sql_query("SELECT count(*) AS n FROM t")
                    .get_result::<Count>(conn)
                    .map(|c| c.n)
            })
            .await
            .unwrap();
        assert_eq!(stored, 5, "1 to 5, each once");
    }

    /// Dropping the last handle closes both queues: the threads waiting on
    /// them wake up and end, closing their connections.
    #[tokio::test]
    async fn dropping_the_last_handle_closes_the_queues() {
        let dir = tempfile::tempdir().unwrap();
        let db = executor(&dir);
        let queues = Arc::clone(&db.closer.queues);
        drop(db);
        assert!(queues.writes.state().closed && queues.reads.state().closed);
        // The drop waited for the threads: none holds the queues now.
        assert_eq!(Arc::strong_count(&queues), 1);
    }

    #[tokio::test]
    async fn closing_waits_for_the_threads_and_refuses_later_work() {
        let dir = tempfile::tempdir().unwrap();
        let db = executor(&dir);
        let other = db.clone();
        assert_eq!(db.read(|_| Ok(1)).await.unwrap(), 1);
        let queues = Arc::clone(&db.closer.queues);
        tokio::task::spawn_blocking(move || db.close())
            .await
            .unwrap();
        // Every thread has ended (each held the queues) though a handle
        // remains, and that handle's work is refused.
        assert_eq!(Arc::strong_count(&queues), 2);
        assert!(matches!(
            other.read(|_| Ok(1)).await,
            Err(DomainError::Unavailable(_))
        ));
    }
}
