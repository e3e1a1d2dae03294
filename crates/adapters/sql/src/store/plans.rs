//! The plans PostgreSQL keeps for the hot kept statements.
//!
//! A connection keeps a statement prepared; from its sixth run PostgreSQL
//! may use one generic plan for it (made without the bind values) for as
//! long as the connection lives, or until an ANALYZE of its tables. On a
//! new database that plan is made while the tables are small and were
//! never analyzed, when several indexes cost the same: these tests make
//! the generic plans there, then fill the tables, and check that each
//! statement still finds its rows by the primary key (or at least not by
//! an index that grows with the owner, with every running answer or with
//! every user's usage).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};

use super::conversations::SET_GENERATED_TITLE;
use super::usage::STANDING;
use crate::answer::{
    SAVE_POSTGRES, TOUCH_CONVERSATIONS_POSTGRES, UPDATE_CONTENT, UPDATE_CONTENTS_POSTGRES,
};
use crate::testing::TestDatabase;

/// `pieces` as PostgreSQL text, the binds numbered `$1`…
fn numbered(pieces: &[&str]) -> String {
    let mut text = String::new();
    for (n, piece) in pieces.iter().enumerate() {
        if n > 0 {
            text.push_str(&format!("${n}"));
        }
        text.push_str(piece);
    }
    text
}

/// The generic plan of `pieces` run with `values` (SQL literals), a line
/// each: prepared while the tables hold a few rows, explained after `grow`
/// has filled them.
fn generic_plan(conn: &mut PgConnection, pieces: &[&str], values: &str, grow: &str) -> String {
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }

    conn.batch_execute("SET plan_cache_mode = force_generic_plan")
        .unwrap();
    conn.batch_execute(&format!("PREPARE kept AS {}", numbered(pieces)))
        .unwrap();
    conn.batch_execute(&format!("EXPLAIN EXECUTE kept({values})"))
        .unwrap();
    conn.batch_execute(grow).unwrap();
    let lines: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN EXECUTE kept({values})"))
        .load(conn)
        .unwrap();
    conn.batch_execute("DEALLOCATE kept").unwrap();
    lines
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Conversations `c{from}`…`c{to}` of the user `u1`, each with an answer
/// `m{n}` in progress, and as many other users with a day of usage each,
/// as SQL.
fn rows(from: u32, to: u32) -> String {
    format!(
        "INSERT INTO conversations (id, user_id, title, created_at, updated_at)
             SELECT 'c' || g, 'u1', 'New chat', g, g FROM generate_series({from}, {to}) g;
         INSERT INTO messages (conversation_id, id, position, role, content, status,
             created_at, updated_at)
             SELECT 'c' || g, 'm' || g, 1, 'assistant', '{{}}', 'in_progress', g, g
             FROM generate_series({from}, {to}) g;
         INSERT INTO users (id, username, email, password_hash, role, disabled,
             created_at, updated_at)
             SELECT 'u' || g, 'user' || g, 'user' || g || '@example.com', 'x', 'user',
             FALSE, 0, 0 FROM generate_series({from} + 1, {to} + 1) g;
         INSERT INTO usage_daily SELECT 'u' || g, '2026-12-05', 'm', 1, 0, 1, 1
             FROM generate_series({from} + 1, {to} + 1) g;"
    )
}

/// Fails unless `plan` finds the answer (`$4`, `$5`) by the messages'
/// primary key, never by the index of the running answers.
fn assert_finds_the_answer_by_its_key(plan: &str) {
    assert!(!plan.contains("messages_in_progress_idx"), "{plan}");
    assert!(
        plan.lines()
            .any(|l| l.contains("Index Cond: (") && l.contains("conversation_id = $4")),
        "{plan}"
    );
}

/// A fresh database with the user `u1` and three of everything [`rows`]
/// makes.
async fn fresh() -> (TestDatabase, PgConnection) {
    let db = TestDatabase::postgres();
    let _store = db.store().await;
    let mut conn = PgConnection::establish(db.direct_url()).unwrap();
    conn.batch_execute(
        "INSERT INTO users VALUES ('u1', 'planner', 'planner@example.com', 'x', 'user', FALSE, 0, 0);
         INSERT INTO usage_daily VALUES ('u1', '2026-12-05', 'm', 1, 0, 1, 1)",
    )
    .unwrap();
    conn.batch_execute(&rows(1, 3)).unwrap();
    (db, conn)
}

#[tokio::test]
async fn a_kept_title_update_finds_the_conversation_by_its_primary_key() {
    let (_db, mut conn) = fresh().await;
    let plan = generic_plan(
        &mut conn,
        SET_GENERATED_TITLE,
        "'T', 1, 'c2000', 'New chat', 'u1'",
        &rows(4, 3000),
    );
    assert!(plan.contains("conversations_pkey"), "{plan}");
}

#[tokio::test]
async fn a_kept_answer_save_never_reads_every_running_answer() {
    let (_db, mut conn) = fresh().await;
    let plan = generic_plan(
        &mut conn,
        UPDATE_CONTENT,
        "'{}', 'finished_successfully', 1, 'c2', 'm2', 'in_progress'",
        &rows(4, 3000),
    );
    assert_finds_the_answer_by_its_key(&plan);
}

/// A lone answer save (the answer and its conversation in one statement)
/// finds both rows by their primary keys, never by the index of the running
/// answers.
#[tokio::test]
async fn a_kept_lone_save_finds_the_answer_and_the_conversation_by_their_keys() {
    let (_db, mut conn) = fresh().await;
    let plan = generic_plan(
        &mut conn,
        SAVE_POSTGRES,
        "'{}', 'finished_successfully', 1, 'c2', 'm2', 'in_progress', 1, 'x', \
         'New chat', 'u1', 'T', 'c2'",
        &rows(4, 3000),
    );
    assert_finds_the_answer_by_its_key(&plan);
    assert!(plan.contains("conversations_pkey"), "{plan}");
}

/// The allowance read before every send sums one user's days: by the
/// primary key (user, day), never over the index of every user's days.
#[tokio::test]
async fn a_kept_allowance_read_sums_one_users_days_by_the_primary_key() {
    let (_db, mut conn) = fresh().await;
    let plan = generic_plan(
        &mut conn,
        STANDING,
        "'u1', 'u1', '2026-12-05', 'u1', '2026-12-05', '2026-12-01'",
        &rows(4, 3000),
    );
    assert!(plan.contains("usage_daily_pkey"), "{plan}");
    assert!(!plan.contains("usage_daily_day_idx"), "{plan}");
}

/// The plan of `sql` (not kept: planned with its values), a line each.
fn plan_of(conn: &mut PgConnection, sql: &str) -> String {
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let lines: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN {sql}"))
        .load(conn)
        .unwrap();
    lines
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A group's answer saves (never kept: their text changes with the
/// group's size, so each is planned with its values and what PostgreSQL
/// knows of the tables then) find each answer through its conversation's
/// key and each conversation by its primary key, never by the index of
/// every running answer nor by reading the table: on tables never
/// analyzed (this machine's PostgreSQL runs without autovacuum, so a new
/// database's are not; without the `IN` lists the planner read both
/// tables whole for every group up to tens of thousands of rows), and
/// after an ANALYZE.
#[tokio::test]
async fn a_groups_answer_saves_find_each_row_by_its_key() {
    let (_db, mut conn) = fresh().await;
    conn.batch_execute(&rows(4, 20_000)).unwrap();
    let answers = (1..=50)
        .map(|n| {
            format!("('c{n}', 'm{n}', '{{}}', 'finished_successfully', 1::bigint, 'in_progress')")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let touches = (1..=50)
        .map(|n| format!("('c{n}', 1::bigint, 'words', 'New chat', 'u1', 'Title')"))
        .collect::<Vec<_>>()
        .join(", ");
    let answer_keys = (1..=50)
        .map(|n| format!("('c{n}', 'm{n}')"))
        .collect::<Vec<_>>()
        .join(", ");
    let keys = (1..=50)
        .map(|n| format!("('c{n}', 'c{n}')"))
        .collect::<Vec<_>>()
        .join(", ");
    for analyzed in [false, true] {
        if analyzed {
            conn.batch_execute("ANALYZE").unwrap();
        }
        let [head, middle, tail] = UPDATE_CONTENTS_POSTGRES else {
            unreachable!()
        };
        let plan = plan_of(
            &mut conn,
            &format!("{head}{answers}{middle}{answer_keys}{tail}"),
        );
        assert!(
            plan.lines()
                .any(|l| l.contains("Index Cond: (") && l.contains("conversation_id = 'c1'::text")),
            "{plan}"
        );
        assert!(!plan.contains("messages_in_progress_idx"), "{plan}");
        assert!(!plan.contains("Seq Scan on messages"), "{plan}");
        let [head, middle, tail] = TOUCH_CONVERSATIONS_POSTGRES else {
            unreachable!()
        };
        let plan = plan_of(&mut conn, &format!("{head}{touches}{middle}{keys}{tail}"));
        assert!(plan.contains("conversations_pkey"), "{plan}");
        assert!(!plan.contains("Seq Scan on conversations"), "{plan}");
    }
}
