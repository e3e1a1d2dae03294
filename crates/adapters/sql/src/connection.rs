//! Connections: one enum over both backends, a pool manager that picks the
//! backend by URL scheme, and the helper that runs work on the blocking pool.

use std::time::Duration;

use confab_domain::DomainError;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, RunQueryDsl};

use crate::error::{domain, pool};
use crate::{DatabaseTarget, SqlError};

/// A connection to either backend; queries written once run on both.
#[derive(diesel::MultiConnection)]
pub(crate) enum AnyConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

pub(crate) type Pool = r2d2::Pool<Manager>;

/// Pool tuning, from configuration.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: u32,
    /// How long a request waits for a free connection before the database
    /// is reported unavailable.
    pub acquire_timeout: Duration,
    /// How long SQLite waits on a locked database before giving up.
    pub sqlite_busy_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 10,
            acquire_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens connections for r2d2, choosing the backend from the target rather
/// than trying each in turn (the derive's `establish` would turn a refused
/// PostgreSQL into a new SQLite file named after the URL).
#[derive(Debug)]
pub(crate) struct Manager {
    target: DatabaseTarget,
    busy_timeout: Duration,
}

/// Why a connection could not be opened or checked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("{0}")]
    Query(#[from] diesel::result::Error),
}

impl Manager {
    pub(crate) fn new(target: DatabaseTarget, options: &PoolOptions) -> Self {
        Self {
            target,
            busy_timeout: options.sqlite_busy_timeout,
        }
    }

    pub(crate) fn open(&self) -> Result<AnyConnection, ConnectError> {
        match &self.target {
            DatabaseTarget::Postgres(url) => {
                Ok(AnyConnection::Postgres(PgConnection::establish(url)?))
            }
            DatabaseTarget::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
                // WAL lets readers run beside the writer; the busy timeout
                // makes a writer wait for the lock instead of failing.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                    self.busy_timeout.as_millis()
                ))?;
                Ok(AnyConnection::Sqlite(conn))
            }
        }
    }

    /// Opens one connection now, so that start-up fails with the driver's
    /// reason rather than a pool time-out.
    pub(crate) fn probe(&self) -> Result<AnyConnection, SqlError> {
        self.open().map_err(|e| SqlError::Connect {
            target: self.target.redacted(),
            reason: e.to_string().trim().to_owned(),
        })
    }
}

impl r2d2::ManageConnection for Manager {
    type Connection = AnyConnection;
    type Error = ConnectError;

    fn connect(&self) -> Result<AnyConnection, ConnectError> {
        self.open()
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), ConnectError> {
        diesel::sql_query("SELECT 1").execute(conn)?;
        Ok(())
    }

    fn has_broken(&self, _conn: &mut AnyConnection) -> bool {
        false
    }
}

/// Runs `work` with a pooled connection on tokio's blocking pool, inside the
/// caller's tracing span, translating diesel errors at this boundary.
pub(crate) async fn run<T, F>(pool: &Pool, work: F) -> Result<T, DomainError>
where
    T: Send + 'static,
    F: FnOnce(&mut AnyConnection) -> Result<T, diesel::result::Error> + Send + 'static,
{
    let pool = pool.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut conn = pool.get().map_err(pool_error)?;
        work(&mut conn).map_err(domain)
    })
    .await
    .map_err(DomainError::internal)?
}

fn pool_error(err: r2d2::Error) -> DomainError {
    tracing::warn!(error = %err, "no database connection available");
    pool(err)
}
