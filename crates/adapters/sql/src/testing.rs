//! A database per test, created on demand and dropped with the guard.
//!
//! PostgreSQL: each process migrates one template database, then every
//! test clones it with `CREATE DATABASE … TEMPLATE` (milliseconds) and drops
//! its clone `WITH (FORCE)` on [`Drop`]. Databases left by a crashed run
//! (their process id is gone) are swept the next time a process starts.
//! SQLite: a file in a temporary directory that is removed on [`Drop`].
//!
//! PostgreSQL is required, never skipped: when it can't be reached the test
//! fails with a message that says how to start it. Its admin URL comes from
//! `CONFAB_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! With `CONFAB_TEST_PGBOUNCER_URL` set (`postgres://postgres@127.0.0.1:6432`,
//! a PgBouncer in transaction mode in front of that server, started by
//! `scripts/pgbouncer.sh`), each PostgreSQL test database is reached through
//! it: [`TestDatabase::url`] names the pooler, and stores opened on it send
//! statements unprepared and migrate over [`TestDatabase::direct_url`].

#![allow(clippy::panic, clippy::expect_used)] // test support: failing loudly is the point

use std::sync::{Mutex, OnceLock};

use diesel::pg::PgConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl, sql_types::Text};

use crate::connection::AnyConnection;
use crate::migrate::run_pending;
use crate::{Backend, DatabaseTarget, PoolOptions, SqlStore};

/// The statement that reads a branch of a conversation on PostgreSQL
/// (parameters: conversation, the branch's end, messages skipped, deepest
/// depth), for tests of its plan.
pub const BRANCH_STATEMENT_POSTGRES: &str = crate::store::messages::BRANCH_POSTGRES;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A throw-away database for one test.
pub struct TestDatabase {
    url: String,
    /// The database on the server itself (the same as `url` unless pooled).
    direct: String,
    kind: Kind,
}

enum Kind {
    Postgres { admin_url: String, name: String },
    Sqlite { _dir: tempfile::TempDir },
}

impl TestDatabase {
    /// A fresh database on `backend`.
    ///
    /// # Panics
    /// When the database can't be created (PostgreSQL down, disk full).
    #[must_use]
    pub fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite(),
            Backend::Postgres => Self::postgres(),
        }
    }

    /// A fresh, empty SQLite file (migrated when a store opens it).
    ///
    /// # Panics
    /// When no temporary directory can be made.
    #[must_use]
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for a SQLite test database");
        let url = format!("sqlite://{}/confab.db", dir.path().display());
        Self {
            direct: url.clone(),
            url,
            kind: Kind::Sqlite { _dir: dir },
        }
    }

    /// A fresh PostgreSQL database, already migrated.
    ///
    /// # Panics
    /// When PostgreSQL can't be reached or the database can't be created.
    #[must_use]
    pub fn postgres() -> Self {
        let admin_url = admin_url();
        let template = template(&admin_url);
        let name = format!(
            "confab_t_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        {
            // Clones of one template are made one at a time: PostgreSQL
            // refuses to copy a database that another session is copying.
            static CLONING: Mutex<()> = Mutex::new(());
            let _one = CLONING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut admin = connect_admin(&admin_url);
            diesel::sql_query(format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            ))
            .execute(&mut admin)
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        }
        let direct = with_database(&admin_url, &name);
        let url =
            pooler_url().map_or_else(|| direct.clone(), |pooler| with_database(&pooler, &name));
        Self {
            url,
            direct,
            kind: Kind::Postgres { admin_url, name },
        }
    }

    /// The database URL, for `DATABASE_URL` or [`DatabaseTarget::parse`]:
    /// through the pooler when [`TestDatabase::pooled`].
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database on the server itself, never through a pooler: for
    /// migrations (`DATABASE_MIGRATION_URL`) and a test's own connection.
    #[must_use]
    pub fn direct_url(&self) -> &str {
        &self.direct
    }

    /// Whether [`TestDatabase::url`] goes through PgBouncer.
    #[must_use]
    pub fn pooled(&self) -> bool {
        self.url != self.direct
    }

    /// How a store on this database is opened: as a deployment behind the
    /// pooler would be when [`TestDatabase::pooled`].
    ///
    /// # Panics
    /// When the direct URL does not parse.
    #[must_use]
    pub fn pool_options(&self) -> PoolOptions {
        if !self.pooled() {
            return PoolOptions::default();
        }
        PoolOptions {
            prepared_statements: false,
            migration_target: Some(
                DatabaseTarget::parse(&self.direct).expect("direct test database URL"),
            ),
            ..PoolOptions::default()
        }
    }

    /// Opens a migrated [`SqlStore`] on this database.
    ///
    /// # Panics
    /// When it can't be opened or migrated.
    pub async fn store(&self) -> SqlStore {
        let target = DatabaseTarget::parse(&self.url).expect("test database URL");
        let store = SqlStore::open(target, self.pool_options())
            .await
            .expect("open test store");
        store.migrate().await.expect("migrate test store");
        store
    }
}

impl TestDatabase {
    /// Brings the database to the schema it had before migration `version`
    /// (migrating, then reverting the newest ones down to that one) and
    /// returns the reverted versions, newest first; a store opened
    /// afterwards upgrades it.
    ///
    /// # Panics
    /// When the database can't be reached or a migration fails.
    #[must_use]
    pub fn before_migration(&self, version: &str) -> Vec<String> {
        let mut conn = self.connect();
        crate::migrate::to_before(&mut conn, version)
            .unwrap_or_else(|e| panic!("cannot revert down to {version}: {e}"))
    }

    /// Runs `sql` (one or more statements) on the database as it is.
    ///
    /// # Panics
    /// When the database can't be reached or a statement fails.
    pub fn execute(&self, sql: &str) {
        use diesel::connection::SimpleConnection;
        let mut conn = self.connect();
        crate::connection::on_backend!(&mut conn, |c| c.batch_execute(sql))
            .unwrap_or_else(|e| panic!("cannot run {sql}: {e}"));
    }

    /// Every table that has a row in which some column, read as text,
    /// contains one of `needles`, with how many such rows: what a deleted
    /// account would have left behind. Every table is read, the search
    /// index's and the migrations' own included.
    ///
    /// # Panics
    /// When the database can't be reached or read.
    #[must_use]
    pub fn rows_containing(&self, needles: &[String]) -> Vec<(String, i64)> {
        let mut conn = self.connect();
        let tables_sql = match self.kind {
            Kind::Postgres { .. } => {
                "SELECT table_name::text AS name FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            }
            Kind::Sqlite { .. } => "SELECT name FROM sqlite_master WHERE type = 'table'",
        };
        let tables: Vec<Name> =
            crate::connection::on_backend!(&mut conn, |c| diesel::sql_query(tables_sql).load(c))
                .expect("the tables");
        let mut found = Vec::new();
        for table in tables.iter().map(|t| t.name.as_str()) {
            let columns_sql = match self.kind {
                Kind::Postgres { .. } => format!(
                    "SELECT column_name::text AS name FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = '{table}'"
                ),
                Kind::Sqlite { .. } => format!("SELECT name FROM pragma_table_info('{table}')"),
            };
            let columns: Vec<Name> = crate::connection::on_backend!(&mut conn, |c| {
                diesel::sql_query(&columns_sql).load(c)
            })
            .expect("the columns");
            let tests: Vec<String> = columns
                .iter()
                .flat_map(|column| {
                    needles.iter().map(move |needle| {
                        format!(
                            "CAST(\"{}\" AS TEXT) LIKE '%{}%'",
                            column.name,
                            needle.replace('\'', "''")
                        )
                    })
                })
                .collect();
            if tests.is_empty() {
                continue;
            }
            let count_sql = format!(
                "SELECT COUNT(*) AS n FROM \"{table}\" WHERE {}",
                tests.join(" OR ")
            );
            let count: Count = crate::connection::on_backend!(&mut conn, |c| {
                diesel::sql_query(&count_sql).get_result(c)
            })
            .unwrap_or_else(|e| panic!("cannot read {table}: {e}"));
            if count.n > 0 {
                found.push((table.to_owned(), count.n));
            }
        }
        found
    }

    fn connect(&self) -> AnyConnection {
        let target = DatabaseTarget::parse(&self.direct).expect("test database URL");
        crate::connection::Manager::new(target, &PoolOptions::default())
            .probe()
            .expect("a connection to the test database")
    }

    /// Makes the database refuse every connection, new and existing, as a
    /// crashed or unreachable server would (PostgreSQL only; a no-op
    /// report of `false` on SQLite).
    ///
    /// # Panics
    /// When PostgreSQL can't be told.
    #[must_use]
    pub fn cut_off(&self) -> bool {
        let Kind::Postgres { admin_url, name } = &self.kind else {
            return false;
        };
        let mut admin = connect_admin(admin_url);
        diesel::sql_query(format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            ident(name)
        ))
        .execute(&mut admin)
        .expect("refuse new connections");
        diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            name.replace('\'', "''")
        ))
        .execute(&mut admin)
        .expect("end existing connections");
        true
    }

    /// Lets connections in again after [`TestDatabase::cut_off`], as a
    /// restarted server would (PostgreSQL only; `false` on SQLite).
    ///
    /// # Panics
    /// When PostgreSQL can't be told.
    #[must_use]
    pub fn reconnect(&self) -> bool {
        let Kind::Postgres { admin_url, name } = &self.kind else {
            return false;
        };
        let mut admin = connect_admin(admin_url);
        diesel::sql_query(format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
            ident(name)
        ))
        .execute(&mut admin)
        .expect("allow connections again");
        true
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Kind::Postgres { admin_url, name } = &self.kind {
            match PgConnection::establish(admin_url) {
                Ok(mut admin) => {
                    if let Err(e) = diesel::sql_query(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    ))
                    .execute(&mut admin)
                    {
                        eprintln!("warning: could not drop test database {name}: {e}");
                    }
                }
                Err(e) => eprintln!("warning: could not drop test database {name}: {e}"),
            }
        }
    }
}

fn admin_url() -> String {
    std::env::var("CONFAB_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// PgBouncer in front of the admin URL's server, when the run goes through
/// it (`CONFAB_TEST_PGBOUNCER_URL`).
fn pooler_url() -> Option<String> {
    std::env::var("CONFAB_TEST_PGBOUNCER_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

fn connect_admin(url: &str) -> PgConnection {
    PgConnection::establish(url).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is required by this test and is not reachable at {url}: {e}\n\
             Start it (`make services`, or `.ci/run` starts it) or point \
             CONFAB_TEST_POSTGRES_URL at one."
        )
    })
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct DbName {
    #[diesel(sql_type = Text)]
    datname: String,
}

/// The name of this process's migrated template, made on first use.
fn template(admin_url: &str) -> String {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let mut admin = connect_admin(admin_url);
            sweep_leftovers(&mut admin);
            let name = format!("confab_tpl_{}", std::process::id());
            diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut admin)
                .expect("drop a stale template");
            diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .unwrap_or_else(|e| panic!("cannot create template database {name}: {e}"));
            let pg = PgConnection::establish(&with_database(admin_url, &name))
                .unwrap_or_else(|e| panic!("cannot open template database {name}: {e}"));
            let mut conn = AnyConnection::Postgres(pg);
            run_pending(&mut conn).unwrap_or_else(|e| panic!("cannot migrate template: {e}"));
            name
        })
        .clone()
}

/// `name` as a quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops test and template databases whose process is gone (on this
/// machine: runs sharing the server from another PID namespace would need
/// another naming scheme).
fn sweep_leftovers(admin: &mut PgConnection) {
    let names: Vec<DbName> = diesel::sql_query(
        "SELECT datname FROM pg_database WHERE datname LIKE 'confab\\_t\\_%' \
         OR datname LIKE 'confab\\_tpl\\_%'",
    )
    .load(admin)
    .unwrap_or_default();
    for DbName { datname } in names {
        let pid = datname
            .trim_start_matches("confab_tpl_")
            .trim_start_matches("confab_t_")
            .split('_')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(&datname)
            ))
            .execute(admin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
    }
}
