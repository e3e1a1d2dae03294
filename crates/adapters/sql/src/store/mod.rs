//! [`SqlStore`]: the pool, and the port implementations over it.

mod conversations;
mod messages;
mod refresh_tokens;
mod users;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::HealthCheck;
use diesel::RunQueryDsl;

use crate::connection::{Manager, Pool, run};
use crate::migrate::run_pending;
use crate::{Backend, DatabaseTarget, PoolOptions, SqlError};

/// The SQL store. Cheap to clone (it holds a pool); implements
/// [`confab_ports::UserStore`], [`confab_ports::ConversationStore`],
/// [`confab_ports::MessageStore`] and [`HealthCheck`].
#[derive(Clone)]
pub struct SqlStore {
    pool: Pool,
    backend: Backend,
}

impl SqlStore {
    /// Opens the database named by `target` and builds the pool. A SQLite
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
        let manager = Manager::new(target, options);
        // Fail now with the driver's reason, not later with a pool time-out.
        drop(manager.probe()?);
        let pool = r2d2::Pool::builder()
            .max_size(options.max_size)
            .min_idle(Some(0))
            .connection_timeout(options.acquire_timeout)
            .build_unchecked(manager);
        Ok(Self { pool, backend })
    }

    /// Applies pending migrations (under an advisory lock on PostgreSQL)
    /// and returns how many ran.
    ///
    /// # Errors
    /// [`SqlError::Migration`] or [`SqlError::Pool`] when they can't run.
    pub async fn migrate(&self) -> Result<usize, SqlError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            run_pending(&mut conn)
        })
        .await
        .map_err(|e| SqlError::Migration(format!("migration task failed: {e}")))?
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
        run(&self.pool, |conn| {
            diesel::sql_query("SELECT 1").execute(conn)
        })
        .await?;
        Ok(())
    }
}
