//! [`SqlStore`]: the pool, and the port implementations over it.

mod api_keys;
mod conversations;
pub(crate) mod messages;
#[cfg(test)]
mod plans;
mod refresh_tokens;
mod search;
mod usage;
mod users;

use std::sync::Arc;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::HealthCheck;
use diesel::RunQueryDsl;

use crate::connection::Manager;
use crate::executor::{Executor, Sizes};
use crate::migrate::run_pending;
use crate::{Backend, DatabaseTarget, PoolOptions, SqlError};

/// The most writer connections on PostgreSQL.
const MAX_POSTGRES_WRITERS: usize = 4;

/// The SQL store. Cheap to clone (it holds a handle on its threads, which
/// end when the last clone is dropped); implements
/// [`confab_ports::UserStore`], [`confab_ports::ConversationStore`], [`confab_ports::ApiKeyStore`],
/// [`confab_ports::MessageStore`] and [`HealthCheck`].
#[derive(Clone)]
pub struct SqlStore {
    db: Executor,
    /// Where migrations run: the store's database, or a direct connection.
    migrations: Arc<Manager>,
    backend: Backend,
    usage: Arc<usage::Pending>,
}

impl SqlStore {
    /// Opens the database named by `target` and starts the store's
    /// threads: `options.max_size` connections in all, the writers' (one on
    /// SQLite; half, at most 4, on PostgreSQL) and the readers'. A SQLite
    /// file (and its directory) is created when missing; PostgreSQL must be
    /// reachable now.
    ///
    /// # Errors
    /// [`SqlError::Connect`] with the driver's reason when the database
    /// can't be opened; [`SqlError::Io`] when the SQLite directory can't be
    /// created.
    pub async fn open(target: DatabaseTarget, options: PoolOptions) -> Result<Self, SqlError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(target, &options))
            .await
            .map_err(|e| SqlError::Migration(format!("start-up task failed: {e}")))?
    }

    fn open_blocking(target: DatabaseTarget, options: &PoolOptions) -> Result<Self, SqlError> {
        if let DatabaseTarget::Sqlite(path) = &target
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)?;
        }
        let backend = target.backend();
        if let Some(direct) = &options.migration_target
            && direct.backend() != backend
        {
            return Err(SqlError::Url(
                "the migration URL must name a database of the same kind as the database URL"
                    .into(),
            ));
        }
        let manager = Arc::new(Manager::new(target, options));
        let migrations = match &options.migration_target {
            Some(direct) => Arc::new(Manager::new(direct.clone(), options)),
            None => Arc::clone(&manager),
        };
        // Fail now with the driver's reason, not later with a time-out.
        drop(manager.probe()?);
        let max = usize::try_from(options.max_size).unwrap_or(usize::MAX);
        // SQLite has one write lock: one writer, so that our connections
        // never wait on each other's. PostgreSQL takes writes on several
        // connections at once: a few writers, each committing its groups.
        let writers = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => (max / 2).clamp(1, MAX_POSTGRES_WRITERS),
        };
        let db = Executor::start(
            Arc::clone(&manager),
            Sizes {
                writers,
                readers: max.saturating_sub(writers).max(1),
                acquire_timeout: options.acquire_timeout,
            },
        )
        .map_err(SqlError::Threads)?;
        Ok(Self {
            db,
            migrations,
            backend,
            usage: Arc::default(),
        })
    }

    /// Applies pending migrations (under an advisory lock on PostgreSQL)
    /// on a connection of their own — to the migration target when one is
    /// set — and returns how many ran.
    ///
    /// # Errors
    /// [`SqlError::Migration`] or [`SqlError::Connect`] when they can't
    /// run.
    pub async fn migrate(&self) -> Result<usize, SqlError> {
        let manager = Arc::clone(&self.migrations);
        tokio::task::spawn_blocking(move || run_pending(&mut manager.probe()?))
            .await
            .map_err(|e| SqlError::Migration(format!("migration task failed: {e}")))?
    }

    /// Closes the store: every later call fails `Unavailable`, and this
    /// waits (blocking) until its threads have closed their connections.
    /// For the end of a process, which must not exit while they still do.
    pub fn close(&self) {
        self.db.close();
    }

    /// Which backend this store runs on.
    #[must_use]
    pub const fn backend(&self) -> Backend {
        self.backend
    }
}

#[async_trait]
impl HealthCheck for SqlStore {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn check(&self) -> Result<(), DomainError> {
        self.db
            .read(|conn| diesel::sql_query("SELECT 1").execute(conn))
            .await?;
        Ok(())
    }
}
