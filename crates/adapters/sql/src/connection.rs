//! Connections: one enum over both backends, and the manager that opens
//! them, picking the backend by URL scheme.

use std::time::Duration;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;

use crate::{DatabaseTarget, SqlError};

/// A connection to either backend; queries written once run on both.
#[derive(diesel::MultiConnection)]
pub(crate) enum AnyConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Connection tuning, from configuration.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Most connections open at once: one writer's, the rest readers'.
    pub max_size: u32,
    /// How long a request waits for its connection's thread to take it up
    /// before the database is reported unavailable.
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

/// Opens connections, choosing the backend from the target rather
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

/// Runs `$body` with `$c` bound to the backend's own connection.
///
/// A query run through [`AnyConnection`] has its SQL built again on every
/// call (the multi-backend wrapper renders it for the backend each time),
/// and some kinds are prepared again too; on the backend's connection a
/// query with a static shape is rendered and prepared once, then found in
/// the connection's statement cache. The hot statements of a send go
/// through this.
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::connection::AnyConnection::Postgres($c) => $body,
            $crate::connection::AnyConnection::Sqlite($c) => $body,
        }
    };
}
pub(crate) use on_backend;
