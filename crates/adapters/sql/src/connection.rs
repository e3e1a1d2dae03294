//! Connections: one enum over both backends, and the manager that opens
//! them, picking the backend by URL scheme.

use std::time::Duration;

use diesel::backend::Backend;
use diesel::connection::{CacheSize, SimpleConnection};
use diesel::pg::PgConnection;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{self, HasSqlType};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryResult, RunQueryDsl};

use crate::{DatabaseTarget, SqlError};

/// A connection to either backend; queries written once run on both.
#[derive(diesel::MultiConnection)]
pub(crate) enum AnyConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl AnyConnection {
    /// Whether this is a PostgreSQL connection, where a new exchange's
    /// inserts and an answer's save are one statement each (`rows.rs`,
    /// `answer.rs`), atomic without a transaction around them.
    pub(crate) const fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
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
    /// PostgreSQL: keep each statement prepared on its connection once
    /// (named, server-side), or send every one unprepared with its
    /// parameters (one round trip, nothing left on the server). Off behind
    /// a pooler in transaction mode (PgBouncer), where a connection's next
    /// statement may run on another server session.
    pub prepared_statements: bool,
    /// PostgreSQL: where migrations run, when not on `target` itself: a
    /// direct connection to the server, for their session-level advisory
    /// lock (a transaction-mode pooler would run the unlock on another
    /// session).
    pub migration_target: Option<DatabaseTarget>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 10,
            acquire_timeout: Duration::from_secs(5),
            sqlite_busy_timeout: Duration::from_secs(5),
            prepared_statements: true,
            migration_target: None,
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
    prepared_statements: bool,
}

/// Why a connection could not be opened or checked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("{0}")]
    Query(#[from] diesel::result::Error),
}

/// The WAL pages past which SQLite's committing connection checkpoints
/// itself (its default is 1,000): 8,192 pages of 4 KiB, 32 MiB. The writer
/// asks a reader for a checkpoint every second it commits, so this is
/// reached only when those can't keep up.
const WAL_AUTOCHECKPOINT: u32 = 8192;

impl Manager {
    /// Whether the target is SQLite.
    pub(crate) const fn is_sqlite(&self) -> bool {
        matches!(self.target, DatabaseTarget::Sqlite(_))
    }

    pub(crate) fn new(target: DatabaseTarget, options: &PoolOptions) -> Self {
        Self {
            target,
            busy_timeout: options.sqlite_busy_timeout,
            prepared_statements: options.prepared_statements,
        }
    }

    pub(crate) fn open(&self) -> Result<AnyConnection, ConnectError> {
        match &self.target {
            DatabaseTarget::Postgres(url) => {
                let mut conn = PgConnection::establish(url)?;
                if !self.prepared_statements {
                    // Each statement becomes one `PQsendQueryParams`: parse,
                    // bind and execute in one message batch, nothing named
                    // left on the server session.
                    conn.set_prepared_statement_cache_size(CacheSize::Disabled);
                }
                Ok(AnyConnection::Postgres(conn))
            }
            DatabaseTarget::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
                // WAL lets readers run beside the writer; the busy timeout
                // makes a writer wait for the lock instead of failing. The
                // WAL is checkpointed by a reader, asked by the writer
                // (`executor.rs`); the committing connection does it itself
                // only past `WAL_AUTOCHECKPOINT` pages, a back-stop.
                // Temporary storage in memory: a statement that changes
                // many rows (a group's exchanges, with their search index)
                // keeps its statement journal there instead of spilling it
                // past 64 KiB into a temporary file made, written and
                // deleted for that one statement.
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                     PRAGMA temp_store = MEMORY; \
                     PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT};",
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

/// A statement written as SQL text with bind parameters, which the
/// connection prepares once and keeps: diesel's statement cache keys it by
/// its SQL text.
///
/// diesel never caches an `UPDATE` it builds (a changeset may skip `None`
/// fields, so one Rust type can render several texts), so each one is
/// prepared again on every call: on PostgreSQL one more round trip and a
/// parse and plan, on SQLite a compile. The send's hot updates are written
/// this way instead. Only texts from a fixed set may be used (values go in
/// binds), or the cache grows with them.
#[derive(Debug)]
pub(crate) struct SqlText<'a> {
    /// The text around the binds: one more piece than binds.
    pieces: &'static [&'static str],
    binds: Vec<Bind<'a>>,
}

/// One bind parameter of a [`SqlText`] statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bind<'a> {
    /// `TEXT`.
    Text(&'a str),
    /// `TEXT` or `NULL`.
    MaybeText(Option<&'a str>),
    /// `BIGINT`.
    BigInt(i64),
    /// `BIGINT` or `NULL`.
    MaybeBigInt(Option<i64>),
    /// `BOOLEAN`.
    Bool(bool),
}

impl Bind<'_> {
    /// Adds this value to `pass` as a bind parameter.
    fn push<'b, DB>(&'b self, pass: &mut AstPass<'_, 'b, DB>) -> QueryResult<()>
    where
        DB: Backend
            + HasSqlType<sql_types::Text>
            + HasSqlType<sql_types::BigInt>
            + HasSqlType<sql_types::Bool>,
        str: ToSql<sql_types::Text, DB>,
        i64: ToSql<sql_types::BigInt, DB>,
        bool: ToSql<sql_types::Bool, DB>,
    {
        match self {
            Bind::Text(text) => pass.push_bind_param::<sql_types::Text, str>(text),
            Bind::MaybeText(text) => {
                pass.push_bind_param::<sql_types::Nullable<sql_types::Text>, Option<&str>>(text)
            }
            Bind::BigInt(n) => pass.push_bind_param::<sql_types::BigInt, i64>(n),
            Bind::MaybeBigInt(n) => {
                pass.push_bind_param::<sql_types::Nullable<sql_types::BigInt>, Option<i64>>(n)
            }
            Bind::Bool(b) => pass.push_bind_param::<sql_types::Bool, bool>(b),
        }
    }
}

impl<'a> SqlText<'a> {
    /// The statement `pieces[0] bind[0] pieces[1] … bind[n-1] pieces[n]`.
    pub(crate) fn new(pieces: &'static [&'static str], binds: Vec<Bind<'a>>) -> Self {
        debug_assert_eq!(pieces.len(), binds.len() + 1);
        Self { pieces, binds }
    }
}

impl<DB> QueryFragment<DB> for SqlText<'_>
where
    DB: Backend
        + HasSqlType<sql_types::Text>
        + HasSqlType<sql_types::BigInt>
        + HasSqlType<sql_types::Bool>,
    str: ToSql<sql_types::Text, DB>,
    i64: ToSql<sql_types::BigInt, DB>,
    bool: ToSql<sql_types::Bool, DB>,
{
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let mut binds = self.binds.iter();
        for (n, piece) in self.pieces.iter().enumerate() {
            if n > 0 {
                let Some(bind) = binds.next() else {
                    return Err(diesel::result::Error::QueryBuilderError(
                        "a kept statement has fewer binds than places".into(),
                    ));
                };
                bind.push(&mut pass)?;
            }
            pass.push_sql(piece);
        }
        Ok(())
    }
}

impl QueryId for SqlText<'_> {
    type QueryId = ();
    // No static id: the statement cache keys it by its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// A kept statement that returns rows is read into a type that names its
/// columns (`QueryableByName`), as `diesel::sql_query` is; unlike
/// `sql_query`, which diesel never caches (its text may be anything), it
/// is prepared once per connection.
impl diesel::query_builder::Query for SqlText<'_> {
    type SqlType = sql_types::Untyped;
}

impl<Conn> RunQueryDsl<Conn> for SqlText<'_> {}

/// A statement around lists of rows of any length: `pieces[0]`, the rows
/// of `lists[0]` as `(…, …), (…, …)`, `pieces[1]`, and so on. Its text
/// changes with the number of rows, so it is not kept prepared (the
/// statement cache would keep one entry per length), unless the caller
/// says the lists' lengths are always the same ([`kept`](Self::kept)).
#[derive(Debug)]
pub(crate) struct SqlRows<'a> {
    /// The text around the lists: one more piece than lists.
    pieces: &'static [&'static str],
    lists: Vec<Vec<Vec<Bind<'a>>>>,
    /// Kept prepared, as a [`SqlText`] is.
    kept: bool,
}

impl<'a> SqlRows<'a> {
    /// The statement `pieces[0] (row), (row)… pieces[1] …`.
    pub(crate) fn new(pieces: &'static [&'static str], lists: Vec<Vec<Vec<Bind<'a>>>>) -> Self {
        debug_assert_eq!(pieces.len(), lists.len() + 1);
        Self {
            pieces,
            lists,
            kept: false,
        }
    }

    /// This statement kept prepared: only for a use whose lists always
    /// have the same lengths (one text), or the cache grows with them.
    pub(crate) fn kept(self) -> Self {
        Self { kept: true, ..self }
    }
}

impl<DB> QueryFragment<DB> for SqlRows<'_>
where
    DB: Backend
        + HasSqlType<sql_types::Text>
        + HasSqlType<sql_types::BigInt>
        + HasSqlType<sql_types::Bool>,
    str: ToSql<sql_types::Text, DB>,
    i64: ToSql<sql_types::BigInt, DB>,
    bool: ToSql<sql_types::Bool, DB>,
{
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if !self.kept {
            pass.unsafe_to_cache_prepared();
        }
        let mut lists = self.lists.iter();
        for (n, piece) in self.pieces.iter().enumerate() {
            if n > 0 {
                let Some(rows) = lists.next() else {
                    return Err(diesel::result::Error::QueryBuilderError(
                        "a statement has fewer lists than places".into(),
                    ));
                };
                for (r, row) in rows.iter().enumerate() {
                    pass.push_sql(if r == 0 { "(" } else { ", (" });
                    for (b, bind) in row.iter().enumerate() {
                        if b > 0 {
                            pass.push_sql(", ");
                        }
                        bind.push(&mut pass)?;
                    }
                    pass.push_sql(")");
                }
            }
            pass.push_sql(piece);
        }
        Ok(())
    }
}

impl QueryId for SqlRows<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

/// Read into a type that names its columns, as [`SqlText`] is.
impl diesel::query_builder::Query for SqlRows<'_> {
    type SqlType = sql_types::Untyped;
}

impl<Conn> RunQueryDsl<Conn> for SqlRows<'_> {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use diesel::prelude::*;

    use super::*;
    use crate::schema::conversations;
    use crate::testing::TestDatabase;

    /// PostgreSQL lists the statements a connection keeps prepared (diesel
    /// names the ones it caches; an unnamed one is gone after its call).
    fn kept_updates(conn: &mut PgConnection) -> i64 {
        diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE 'UPDATE%'",
        )
        .get_result::<Count>(conn)
        .unwrap()
        .n
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    #[tokio::test]
    async fn a_kept_statement_is_prepared_once_per_text_and_a_built_update_every_time() {
        let db = TestDatabase::postgres();
        let _migrated = db.store().await;
        let mut conn = PgConnection::establish(db.direct_url()).unwrap();
        for at in 0..3 {
            diesel::update(conversations::table.filter(conversations::id.eq("none")))
                .set(conversations::updated_at.eq(at))
                .execute(&mut conn)
                .unwrap();
        }
        assert_eq!(
            kept_updates(&mut conn),
            0,
            "diesel keeps no UPDATE it builds"
        );
        let touch = |at: i64| {
            SqlText::new(
                &["UPDATE conversations SET updated_at = ", " WHERE id = ", ""],
                vec![Bind::BigInt(at), Bind::Text("none")],
            )
        };
        for at in 0..3 {
            assert_eq!(touch(at).execute(&mut conn).unwrap(), 0);
        }
        assert_eq!(kept_updates(&mut conn), 1, "one text, kept once");
        SqlText::new(
            &["UPDATE conversations SET created_at = ", " WHERE id = ", ""],
            vec![Bind::BigInt(1), Bind::Text("none")],
        )
        .execute(&mut conn)
        .unwrap();
        assert_eq!(kept_updates(&mut conn), 2, "another text, its own entry");
    }

    /// Behind a transaction-mode pooler a connection's next statement may
    /// run on another server session: with `prepared_statements` off,
    /// none is left prepared on any, and results stay right.
    #[tokio::test]
    async fn without_prepared_statements_nothing_is_kept_on_the_server() {
        let db = TestDatabase::postgres();
        let _migrated = db.store().await;
        let target = DatabaseTarget::parse(db.direct_url()).unwrap();
        let options = PoolOptions {
            prepared_statements: false,
            ..PoolOptions::default()
        };
        let AnyConnection::Postgres(mut conn) = Manager::new(target, &options).open().unwrap()
        else {
            panic!("a PostgreSQL connection");
        };
        for at in 0..3 {
            let touch = SqlText::new(
                &["UPDATE conversations SET updated_at = ", " WHERE id = ", ""],
                vec![Bind::BigInt(at), Bind::Text("none")],
            );
            assert_eq!(touch.execute(&mut conn).unwrap(), 0);
            let found: i64 = conversations::table
                .filter(conversations::id.eq("none"))
                .count()
                .get_result(&mut conn)
                .unwrap();
            assert_eq!(found, 0);
        }
        let kept: Count = diesel::sql_query("SELECT count(*) AS n FROM pg_prepared_statements")
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(kept.n, 0, "no statement left prepared");
    }

    /// A store connection to a new SQLite file in `dir`, opened as the
    /// store opens its own.
    fn sqlite_connection(dir: &tempfile::TempDir) -> SqliteConnection {
        let target = DatabaseTarget::Sqlite(dir.path().join("store.db"));
        match Manager::new(target, &PoolOptions::default())
            .open()
            .unwrap()
        {
            AnyConnection::Sqlite(conn) => conn,
            AnyConnection::Postgres(_) => panic!("a SQLite connection"),
        }
    }

    #[derive(QueryableByName)]
    struct TempStore {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        temp_store: i32,
    }

    /// A SQLite connection keeps its temporary storage (a large
    /// statement's journal, a sort's spill) in memory: no file is made,
    /// written and deleted for one statement, and none is needed where
    /// the temporary directory is not writable.
    #[test]
    fn a_sqlite_connection_keeps_its_temporary_storage_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = sqlite_connection(&dir);
        let mode: TempStore = diesel::sql_query("PRAGMA temp_store")
            .get_result(&mut conn)
            .unwrap();
        assert_eq!(mode.temp_store, 2, "2 is MEMORY");
    }

    #[derive(QueryableByName)]
    struct CompileOption {
        #[diesel(sql_type = diesel::sql_types::Text)]
        compile_options: String,
    }

    /// The bundled SQLite is built as the workspace's `.cargo/config.toml`
    /// asks (`LIBSQLITE3_FLAGS`): without memory statistics, whose global
    /// mutex every allocation takes, and in multi-thread mode, where a
    /// connection takes no mutex of its own (diesel's connections are used
    /// by one thread at a time).
    #[test]
    fn the_bundled_sqlite_takes_no_mutex_for_statistics_or_connections() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = sqlite_connection(&dir);
        let options: Vec<String> = diesel::sql_query("PRAGMA compile_options")
            .load::<CompileOption>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|o| o.compile_options)
            .collect();
        assert!(options.iter().any(|o| o == "THREADSAFE=2"), "{options:?}");
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    #[test]
    fn a_kept_statement_renders_its_binds_in_place_on_both_backends() {
        let statement = SqlText::new(
            &["UPDATE t SET a = ", ", b = ", " WHERE c = ", ""],
            vec![Bind::Text("x"), Bind::BigInt(2), Bind::Text("y")],
        );
        let pg = diesel::debug_query::<diesel::pg::Pg, _>(&statement).to_string();
        assert!(
            pg.starts_with("UPDATE t SET a = $1, b = $2 WHERE c = $3 -- binds: [\"x\", 2, \"y\"]"),
            "{pg}"
        );
        let sqlite = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&statement).to_string();
        assert!(
            sqlite.starts_with("UPDATE t SET a = ?, b = ? WHERE c = ?"),
            "{sqlite}"
        );
    }
}
