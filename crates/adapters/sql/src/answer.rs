//! An answer's text saved: alone, two statements (the message, then its
//! conversation's row); with the other saves a group of writes holds, two
//! statements for all of them.
//!
//! Saving an answer updates its message, whose search trigger computes the
//! answer's words on PostgreSQL and adds them to the search index on both
//! backends, and touches the conversation's row. Alone that is two
//! statements a save: on PostgreSQL two round trips, and on SQLite one
//! flush of FTS5's pending terms per answer (FTS5 writes them out at every
//! statement savepoint, and both statements open one). When the answers
//! of a burst end together, their saves meet in one group of writes
//! (see `executor.rs`), which saves them together instead.

use diesel::prelude::*;

use confab_domain::MessageStatus;

use crate::connection::{AnyConnection, Bind, SqlRows, SqlText, on_backend};

/// An answer's text and status, if it is still in progress: binds content,
/// status, time, conversation, id, `in_progress`.
///
/// The status it must have is a bind, not the literal `'in_progress'`: with
/// the literal, the plan a connection keeps for the statement may serve it
/// with the partial index of the answers in progress (whose predicate the
/// literal matches), which a new database's small, unanalyzed table makes
/// look as cheap as the primary key; kept, that plan read the row of every
/// running answer for each save.
pub(crate) const UPDATE_CONTENT: &[&str] = &[
    "UPDATE messages SET content = ",
    ", status = ",
    ", updated_at = ",
    " WHERE conversation_id = ",
    " AND id = ",
    " AND status = ",
    "",
];

/// The grouped [`UPDATE_CONTENT`] up to its `VALUES` list, and its
/// conditions (see [`UPDATE_CONTENTS_SQLITE`]).
///
/// `RETURNING` names the target's columns unqualified: SQLite takes a
/// table-qualified name there only since 3.46 (the bundled one is newer;
/// a build on an older system SQLite would fail every group otherwise).
macro_rules! update_contents {
    (head) => {
        "UPDATE messages SET content = v.column3, status = v.column4, \
         updated_at = v.column5 FROM (VALUES "
    };
    (join) => {
        "v.column1 = messages.conversation_id AND v.column2 = messages.id \
         AND v.column6 = messages.status RETURNING conversation_id"
    };
}

/// The grouped [`UPDATE_CONTENT`] on SQLite: each row of the `VALUES` list
/// is (conversation, message, content, status, updated at, the
/// in-progress status). The status to match is a bind, as in
/// [`UPDATE_CONTENT`], so the index of running answers cannot serve the
/// join. SQLite joins the list row by row on the primary key.
pub(crate) const UPDATE_CONTENTS_SQLITE: &[&str] = &[
    update_contents!(head),
    concat!(") AS v WHERE ", update_contents!(join)),
];

/// [`UPDATE_CONTENTS_SQLITE`] on PostgreSQL, with the answers' keys again
/// in a row-value `IN` list. A join with a `VALUES` list is planned with
/// what PostgreSQL knows of the table: a table never analyzed (a new
/// database where autovacuum is off) of up to tens of thousands of rows it
/// reads whole and hashes, for every group. Each key of the `IN` list it
/// estimates at one row of the primary key, and looks up there.
pub(crate) const UPDATE_CONTENTS_POSTGRES: &[&str] = &[
    update_contents!(head),
    ") AS v WHERE (messages.conversation_id, messages.id) IN (",
    concat!(") AND ", update_contents!(join)),
];

/// The grouped conversation touch up to its `VALUES` list, and its
/// conditions (see [`TOUCH_CONVERSATIONS_SQLITE`]).
macro_rules! touch_conversations {
    (head) => {
        "UPDATE conversations SET updated_at = v.column2, \
         last_message = COALESCE(v.column3, conversations.last_message), \
         title = CASE WHEN conversations.title = v.column4 \
         AND conversations.user_id = v.column5 THEN v.column6 ELSE conversations.title END \
         FROM (VALUES "
    };
    (join) => {
        "conversations.id = v.column1 AND conversations.deleted_at IS NULL \
         RETURNING id, title"
    };
}

/// The grouped conversation touch on SQLite: each row is (conversation,
/// updated at, preview or `NULL`, the untitled placeholder or `NULL`, the
/// owner or `NULL`, the title or `NULL`). A `NULL` placeholder never
/// equals a title, so a row without one keeps its title.
pub(crate) const TOUCH_CONVERSATIONS_SQLITE: &[&str] = &[
    touch_conversations!(head),
    concat!(") AS v WHERE ", touch_conversations!(join)),
];

/// [`TOUCH_CONVERSATIONS_SQLITE`] on PostgreSQL, with the conversations
/// again in a row-value `IN` list (see [`UPDATE_CONTENTS_POSTGRES`]), each
/// named twice: PostgreSQL expands a list of rows into one condition per
/// row, each a look-up of the primary key, where a one-column `IN` list
/// becomes one array condition, which on a table never analyzed it
/// estimated as costlier than reading 20,000 rows.
pub(crate) const TOUCH_CONVERSATIONS_POSTGRES: &[&str] = &[
    touch_conversations!(head),
    ") AS v WHERE (conversations.id, conversations.id) IN (",
    concat!(") AND ", touch_conversations!(join)),
];

/// An answer's save alone in one statement on PostgreSQL: [`UPDATE_CONTENT`]
/// and the conversation's touch (with its title, when one is given) as one
/// statement, atomic by itself and one round trip, where alone they were
/// `BEGIN`, two updates and `COMMIT`. Binds: content, status, time,
/// conversation, id, `in_progress` (as [`UPDATE_CONTENT`]); then the time,
/// the preview or `NULL`, the untitled placeholder or `NULL`, the owner or
/// `NULL`, the title or `NULL`, and the conversation again. The
/// conversation is touched only when the answer was (`EXISTS`), and
/// found by its primary key; a `NULL` placeholder never equals a title,
/// so a save without one keeps the title. Answers how many answers it
/// changed (0 or 1) and the conversation's title after it (`NULL` when it
/// was not touched: deleted, or the answer not in progress).
pub(crate) const SAVE_POSTGRES: &[&str] = &[
    "WITH m AS (UPDATE messages SET content = ",
    ", status = ",
    ", updated_at = ",
    " WHERE conversation_id = ",
    " AND id = ",
    " AND status = ",
    " RETURNING 1), t AS (UPDATE conversations SET updated_at = ",
    ", last_message = COALESCE(",
    ", last_message), title = CASE WHEN title = ",
    " AND user_id = ",
    " THEN ",
    " ELSE title END WHERE id = ",
    " AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM m) RETURNING title) \
     SELECT (SELECT count(*) FROM m) AS found, (SELECT title FROM t) AS title",
];

/// What [`SAVE_POSTGRES`] answers.
#[derive(QueryableByName)]
struct SavedAlone {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    found: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    title: Option<String>,
}

/// A conversation a grouped save's message update found.
#[derive(QueryableByName)]
struct SavedRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    conversation_id: String,
}

/// A conversation's title as an update left it.
#[derive(QueryableByName)]
struct TitleRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    title: String,
}

/// A conversation a grouped touch found, and its title after it.
#[derive(QueryableByName)]
struct TouchedRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    title: String,
}

/// A title to give the conversation in the same change of its row, if it
/// still has the untitled placeholder and is the owner's.
pub(crate) struct NewTitle {
    /// The placeholder a conversation without a title has.
    pub(crate) untitled: String,
    /// The conversation's owner.
    pub(crate) owner: String,
    /// The title.
    pub(crate) title: String,
}

/// One answer's save: its content and status, if it is still in progress,
/// and its conversation marked as changed (with its preview, and its
/// title when one is given).
pub(crate) struct AnswerSave {
    /// The conversation.
    pub(crate) conversation: String,
    /// The answer's message id.
    pub(crate) id: String,
    /// The content, as stored (JSON).
    pub(crate) json: String,
    /// The status it has after the save.
    pub(crate) status: MessageStatus,
    /// When (Unix microseconds).
    pub(crate) at: i64,
    /// The conversation list's preview, `None` while the answer is empty.
    pub(crate) preview: Option<String>,
    /// A title for a conversation that has none yet.
    pub(crate) title: Option<NewTitle>,
}

/// What a save did: `None` when there was no such answer in progress (no
/// such answer, or closed meanwhile), else, for a save given a title, the
/// conversation's title after it (`None` when the conversation is deleted,
/// and for a save given none).
pub(crate) type Saved = Option<Option<String>>;

impl AnswerSave {
    /// Saves this answer alone: on PostgreSQL one kept statement, which
    /// needs no transaction around it; on SQLite two.
    pub(crate) fn save(&self, conn: &mut AnyConnection) -> QueryResult<Saved> {
        if let AnyConnection::Postgres(c) = conn {
            let title = self.title.as_ref();
            let mut binds = self.content_binds();
            binds.extend([
                Bind::BigInt(self.at),
                Bind::MaybeText(self.preview.as_deref()),
                Bind::MaybeText(title.map(|t| t.untitled.as_str())),
                Bind::MaybeText(title.map(|t| t.owner.as_str())),
                Bind::MaybeText(title.map(|t| t.title.as_str())),
                Bind::Text(&self.conversation),
            ]);
            let saved: SavedAlone = SqlText::new(SAVE_POSTGRES, binds).get_result(c)?;
            return Ok((saved.found > 0).then(|| title.and(saved.title)));
        }
        if self.save_content(conn)? == 0 {
            return Ok(None);
        }
        let Some(title) = &self.title else {
            // A conversation deleted while its answer was generating still
            // gets the answer closed; there is no list to touch.
            self.touch(conn)?;
            return Ok(Some(None));
        };
        self.touch_and_title(conn, title).map(Some)
    }

    /// Saves every answer of `saves` in two statements (their
    /// conversations must differ: one row of a grouped update is changed
    /// once, whichever `VALUES` row matched it), and says what each did, in
    /// order.
    pub(crate) fn save_all(conn: &mut AnyConnection, saves: &[&Self]) -> QueryResult<Vec<Saved>> {
        let in_progress = MessageStatus::InProgress.as_str();
        let rows = saves
            .iter()
            .map(|s| {
                vec![
                    Bind::Text(&s.conversation),
                    Bind::Text(&s.id),
                    Bind::Text(&s.json),
                    Bind::Text(s.status.as_str()),
                    Bind::BigInt(s.at),
                    Bind::Text(in_progress),
                ]
            })
            .collect();
        let keys = saves
            .iter()
            .map(|s| vec![Bind::Text(&s.conversation), Bind::Text(&s.id)])
            .collect();
        let found: Vec<SavedRow> = match conn {
            AnyConnection::Postgres(c) => {
                SqlRows::new(UPDATE_CONTENTS_POSTGRES, vec![rows, keys]).load(c)
            }
            AnyConnection::Sqlite(c) => SqlRows::new(UPDATE_CONTENTS_SQLITE, vec![rows]).load(c),
        }?;
        let found: std::collections::HashSet<String> =
            found.into_iter().map(|row| row.conversation_id).collect();
        let to_touch: Vec<&&Self> = saves
            .iter()
            .filter(|s| found.contains(&s.conversation))
            .collect();
        let rows: Vec<Vec<Bind<'_>>> = to_touch
            .iter()
            .map(|s| {
                let title = s.title.as_ref();
                vec![
                    Bind::Text(&s.conversation),
                    Bind::BigInt(s.at),
                    Bind::MaybeText(s.preview.as_deref()),
                    Bind::MaybeText(title.map(|t| t.untitled.as_str())),
                    Bind::MaybeText(title.map(|t| t.owner.as_str())),
                    Bind::MaybeText(title.map(|t| t.title.as_str())),
                ]
            })
            .collect();
        let keys = to_touch
            .iter()
            .map(|s| vec![Bind::Text(&s.conversation), Bind::Text(&s.conversation)])
            .collect();
        let touched: Vec<TouchedRow> = match conn {
            _ if rows.is_empty() => Ok(Vec::new()),
            AnyConnection::Postgres(c) => {
                SqlRows::new(TOUCH_CONVERSATIONS_POSTGRES, vec![rows, keys]).load(c)
            }
            AnyConnection::Sqlite(c) => {
                SqlRows::new(TOUCH_CONVERSATIONS_SQLITE, vec![rows]).load(c)
            }
        }?;
        let mut titles: std::collections::HashMap<String, String> =
            touched.into_iter().map(|row| (row.id, row.title)).collect();
        Ok(saves
            .iter()
            .map(|s| {
                found.contains(&s.conversation).then(|| {
                    s.title
                        .as_ref()
                        .and_then(|_| titles.remove(&s.conversation))
                })
            })
            .collect())
    }

    /// Replaces the answer's content and status if it is still in
    /// progress; how many rows changed (0 or 1).
    fn save_content(&self, conn: &mut AnyConnection) -> QueryResult<usize> {
        on_backend!(conn, |c| SqlText::new(UPDATE_CONTENT, self.content_binds())
            .execute(c))
    }

    /// [`UPDATE_CONTENT`]'s binds, which [`SAVE_POSTGRES`] begins with.
    fn content_binds(&self) -> Vec<Bind<'_>> {
        vec![
            Bind::Text(&self.json),
            Bind::Text(self.status.as_str()),
            Bind::BigInt(self.at),
            Bind::Text(&self.conversation),
            Bind::Text(&self.id),
            Bind::Text(MessageStatus::InProgress.as_str()),
        ]
    }

    /// Marks the conversation as changed (and its preview, when the answer
    /// has text); nothing when it is deleted.
    fn touch(&self, conn: &mut AnyConnection) -> QueryResult<usize> {
        match self.preview.as_deref() {
            Some(text) => on_backend!(conn, |c| SqlText::new(
                &[
                    "UPDATE conversations SET updated_at = ",
                    ", last_message = ",
                    " WHERE id = ",
                    " AND deleted_at IS NULL",
                ],
                vec![
                    Bind::BigInt(self.at),
                    Bind::Text(text),
                    Bind::Text(&self.conversation),
                ],
            )
            .execute(c)),
            None => on_backend!(conn, |c| SqlText::new(
                &[
                    "UPDATE conversations SET updated_at = ",
                    " WHERE id = ",
                    " AND deleted_at IS NULL",
                ],
                vec![Bind::BigInt(self.at), Bind::Text(&self.conversation)],
            )
            .execute(c)),
        }
    }

    /// [`touch`](Self::touch) that, in the same change of the row, gives
    /// the conversation `title` when it still has the placeholder and is
    /// the owner's; its title after it, or `None` when it is deleted. The
    /// owner is compared in the `CASE`, not the `WHERE`: the row is found
    /// by its primary key alone.
    fn touch_and_title(
        &self,
        conn: &mut AnyConnection,
        title: &NewTitle,
    ) -> QueryResult<Option<String>> {
        let (set, mut binds): (&'static [&'static str], _) = match self.preview.as_deref() {
            Some(text) => (
                &[
                    "UPDATE conversations SET updated_at = ",
                    ", last_message = ",
                    ", title = CASE WHEN title = ",
                    " AND user_id = ",
                    " THEN ",
                    " ELSE title END WHERE id = ",
                    " AND deleted_at IS NULL RETURNING title",
                ],
                vec![Bind::BigInt(self.at), Bind::Text(text)],
            ),
            None => (
                &[
                    "UPDATE conversations SET updated_at = ",
                    ", title = CASE WHEN title = ",
                    " AND user_id = ",
                    " THEN ",
                    " ELSE title END WHERE id = ",
                    " AND deleted_at IS NULL RETURNING title",
                ],
                vec![Bind::BigInt(self.at)],
            ),
        };
        binds.extend([
            Bind::Text(&title.untitled),
            Bind::Text(&title.owner),
            Bind::Text(&title.title),
            Bind::Text(&self.conversation),
        ]);
        let row: Option<TitleRow> =
            on_backend!(conn, |c| SqlText::new(set, binds).get_result(c).optional())?;
        Ok(row.map(|row| row.title))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::testing::TestDatabase;

    /// The steps of SQLite's plan for `sql`, a line each.
    fn sqlite_plan(conn: &mut diesel::SqliteConnection, sql: &str) -> String {
        #[derive(QueryableByName)]
        struct Step {
            #[diesel(sql_type = diesel::sql_types::Text)]
            detail: String,
        }
        let steps: Vec<Step> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .load(conn)
            .unwrap();
        steps
            .into_iter()
            .map(|s| s.detail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// On SQLite, a group's saves look each answer and each conversation
    /// up by its primary key, one `VALUES` row at a time.
    #[tokio::test]
    async fn sqlite_saves_a_groups_answers_by_their_primary_keys() {
        let db = TestDatabase::sqlite();
        drop(db.store().await);
        let mut conn = diesel::SqliteConnection::establish(db.url()).unwrap();
        let rows = |row: &str| {
            (1..=50)
                .map(|n| row.replace('#', &n.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let [head, tail] = UPDATE_CONTENTS_SQLITE else {
            unreachable!()
        };
        let answers = rows("('c#', 'm#', '{}', 'finished_successfully', 1, 'in_progress')");
        let plan = sqlite_plan(&mut conn, &format!("{head}{answers}{tail}"));
        assert!(
            plan.contains("SEARCH messages USING INDEX sqlite_autoindex_messages_1 (conversation_id=? AND id=?)"),
            "{plan}"
        );
        let [head, tail] = TOUCH_CONVERSATIONS_SQLITE else {
            unreachable!()
        };
        let touches = rows("('c#', 1, 'words', NULL, NULL, NULL)");
        let plan = sqlite_plan(&mut conn, &format!("{head}{touches}{tail}"));
        assert!(
            plan.contains(
                "SEARCH conversations USING INDEX sqlite_autoindex_conversations_1 (id=?)"
            ),
            "{plan}"
        );
    }
}
