//! Embedded migrations, one folder per backend.

use diesel::RunQueryDsl;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::SqlError;
use crate::connection::AnyConnection;

const POSTGRES: EmbeddedMigrations = embed_migrations!("../../../migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("../../../migrations/sqlite");

/// An arbitrary constant naming Confab's migration lock among PostgreSQL
/// advisory locks.
const MIGRATION_LOCK: i64 = 0x0C0F_AB00_0001;

/// Applies every pending migration and returns how many ran. On PostgreSQL
/// this holds an advisory lock, so instances starting together migrate one
/// at a time; SQLite's own write lock does the same for a file.
pub(crate) fn run_pending(conn: &mut AnyConnection) -> Result<usize, SqlError> {
    match conn {
        AnyConnection::Postgres(pg) => {
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).execute(pg)?;
            let result = pg.run_pending_migrations(POSTGRES).map(|v| v.len());
            let unlock = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
                .execute(pg);
            let ran = result.map_err(|e| SqlError::Migration(e.to_string()))?;
            unlock?;
            Ok(ran)
        }
        AnyConnection::Sqlite(lite) => lite
            .run_pending_migrations(SQLITE)
            .map(|v| v.len())
            .map_err(|e| SqlError::Migration(e.to_string())),
    }
}

/// Migrates, then reverts the newest migrations down to `version` (that
/// one included), and says which it reverted, newest first: the schema of
/// the release before `version`, for tests of the upgrade.
#[cfg(feature = "testing")]
pub(crate) fn to_before(conn: &mut AnyConnection, version: &str) -> Result<Vec<String>, SqlError> {
    let migration =
        |e: Box<dyn std::error::Error + Send + Sync>| SqlError::Migration(e.to_string());
    run_pending(conn)?;
    let mut reverted = Vec::new();
    while reverted.last().map(String::as_str) != Some(version) {
        let last = match conn {
            AnyConnection::Postgres(pg) => pg.revert_last_migration(POSTGRES).map_err(migration),
            AnyConnection::Sqlite(lite) => lite.revert_last_migration(SQLITE).map_err(migration),
        }?;
        reverted.push(last.to_string());
        if reverted.len() > 100 {
            return Err(SqlError::Migration(format!("no migration {version}")));
        }
    }
    Ok(reverted)
}
