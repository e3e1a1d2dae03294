//! A search of a user's conversations: titles and the text of finished
//! messages, ranked, each with the message that matched best.
//!
//! Message text is found by each backend's full-text index (PostgreSQL:
//! `messages.search_vector` under a GIN index; SQLite: the FTS5 table
//! `message_search_text`), each term quoted as a word prefix so nothing a
//! user types is query syntax. A title matches when it contains the whole
//! query, or every term, as text. Title matches come first, then the best
//! message match's rank, then the list's order. The snippet is made here
//! from the matched text by [`SearchQuery::snippet`], the same on both
//! backends.

use confab_domain::{
    Content, ConversationSummary, DomainError, ListOrder, MessageId, SearchHit, SearchQuery,
};
use confab_ports::ConversationQuery;
use diesel::RunQueryDsl;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use crate::connection::AnyConnection;
use crate::rows::SummaryRow;

/// One conversation a search found, the content of its best message (if
/// one matched), and how many were found in all.
#[derive(diesel::QueryableByName)]
pub(super) struct FoundRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    title: String,
    #[diesel(sql_type = Nullable<Text>)]
    last_message: Option<String>,
    #[diesel(sql_type = Bool)]
    is_archived: bool,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = BigInt)]
    updated_at: i64,
    #[diesel(sql_type = Nullable<Text>)]
    message_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    content: Option<String>,
    #[diesel(sql_type = BigInt)]
    total: i64,
}

impl FoundRow {
    /// The summary, with the snippet of what matched.
    pub(super) fn into_summary(
        self,
        search: &SearchQuery,
    ) -> Result<ConversationSummary, DomainError> {
        let hit =
            match (self.message_id, self.content) {
                (Some(id), Some(content)) => {
                    let content: Content =
                        serde_json::from_str(&content).map_err(DomainError::internal)?;
                    SearchHit {
                        message_id: Some(MessageId::parse(id).map_err(|_| {
                            DomainError::internal("a stored message id is malformed")
                        })?),
                        snippet: search.snippet(&content.parts().join(" ")),
                    }
                }
                _ => SearchHit {
                    message_id: None,
                    snippet: search.snippet(&self.title),
                },
            };
        let mut summary = SummaryRow {
            id: self.id,
            title: self.title,
            last_message: self.last_message,
            is_archived: self.is_archived,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
        .into_summary()?;
        summary.hit = Some(hit);
        Ok(summary)
    }

    /// How many conversations the search found.
    pub(super) const fn total(&self) -> i64 {
        self.total
    }
}

/// The statement's text on PostgreSQL, for a list in `order`. Binds: `$1`
/// owner, `$2` archived, `$3` the whole query as a `LIKE` pattern, `$4` the
/// terms (a JSON array), `$5` limit, `$6` offset, `$7` the `tsquery` text
/// (NULL when no term has a word).
fn postgres(order: ListOrder) -> String {
    let statement = r"
WITH hits AS (
    SELECT m.conversation_id AS cid, m.id AS mid,
           ts_rank(m.search_vector, to_tsquery('simple', $7), 32) AS rank,
           row_number() OVER (
               PARTITION BY m.conversation_id
               ORDER BY ts_rank(m.search_vector, to_tsquery('simple', $7), 32) DESC,
                        m.position DESC
           ) AS nth
    FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
    WHERE m.search_vector @@ to_tsquery('simple', $7)
      AND c.user_id = $1 AND c.deleted_at IS NULL AND c.is_archived = $2
),
found AS (
    SELECT c.id, c.title, c.last_message, c.is_archived, c.created_at, c.updated_at,
           h.mid AS message_id, coalesce(h.rank, 0) AS rank,
           (lower(c.title) LIKE $3 ESCAPE '\' OR NOT EXISTS (
               SELECT 1 FROM jsonb_array_elements_text($4::jsonb) AS t(term)
               WHERE strpos(lower(c.title), t.term) = 0
           )) AS title_hit
    FROM conversations AS c LEFT JOIN hits AS h ON h.cid = c.id AND h.nth = 1
    WHERE c.user_id = $1 AND c.deleted_at IS NULL AND c.is_archived = $2
),
page AS (
    SELECT f.*, count(*) OVER () AS total FROM found AS f
    WHERE f.message_id IS NOT NULL OR f.title_hit
    ORDER BY f.title_hit DESC, f.rank DESC, f.{order} DESC, f.id DESC
    LIMIT $5 OFFSET $6
)
SELECT p.id, p.title, p.last_message, p.is_archived, p.created_at, p.updated_at,
       p.message_id, m.content, p.total
FROM page AS p LEFT JOIN messages AS m ON m.conversation_id = p.id AND m.id = p.message_id
ORDER BY p.title_hit DESC, p.rank DESC, p.{order} DESC, p.id DESC";
    statement.replace("{order}", column(order))
}

/// The statement's text on SQLite, binds as on PostgreSQL (`?7`: the FTS5
/// query).
fn sqlite(order: ListOrder) -> String {
    let statement = r"
WITH hits AS (
    SELECT s.conversation_id AS cid, s.message_id AS mid,
           -bm25(message_search_text) AS score
    FROM message_search_text
    JOIN message_search AS s ON s.id = message_search_text.rowid
    WHERE ?7 IS NOT NULL AND message_search_text MATCH ?7
      AND s.conversation_id IN (
          SELECT id FROM conversations
          WHERE user_id = ?1 AND deleted_at IS NULL AND is_archived = ?2
      )
),
best AS (
    SELECT h.cid, h.mid, h.score / (h.score + 1.0) AS rank,
           row_number() OVER (
               PARTITION BY h.cid ORDER BY h.score DESC, m.position DESC
           ) AS nth
    FROM hits AS h JOIN messages AS m ON m.conversation_id = h.cid AND m.id = h.mid
),
found AS (
    SELECT c.id, c.title, c.last_message, c.is_archived, c.created_at, c.updated_at,
           b.mid AS message_id, coalesce(b.rank, 0.0) AS rank,
           (lower(c.title) LIKE ?3 ESCAPE '\' OR NOT EXISTS (
               SELECT 1 FROM json_each(?4) AS t WHERE instr(lower(c.title), t.value) = 0
           )) AS title_hit
    FROM conversations AS c LEFT JOIN best AS b ON b.cid = c.id AND b.nth = 1
    WHERE c.user_id = ?1 AND c.deleted_at IS NULL AND c.is_archived = ?2
),
page AS (
    SELECT f.*, count(*) OVER () AS total FROM found AS f
    WHERE f.message_id IS NOT NULL OR f.title_hit
    ORDER BY f.title_hit DESC, f.rank DESC, f.{order} DESC, f.id DESC
    LIMIT ?5 OFFSET ?6
)
SELECT p.id, p.title, p.last_message, p.is_archived, p.created_at, p.updated_at,
       p.message_id, m.content, p.total
FROM page AS p LEFT JOIN messages AS m ON m.conversation_id = p.id AND m.id = p.message_id
ORDER BY p.title_hit DESC, p.rank DESC, p.{order} DESC, p.id DESC";
    statement.replace("{order}", column(order))
}

const fn column(order: ListOrder) -> &'static str {
    match order {
        ListOrder::Updated => "updated_at",
        ListOrder::Created => "created_at",
    }
}

/// The PostgreSQL `tsquery` text of the terms with words: each one quoted
/// (so nothing in it is an operator) and matched as a word's start.
pub(super) fn tsquery(search: &SearchQuery) -> Option<String> {
    let terms: Vec<String> = search
        .word_terms()
        .map(|t| format!("'{}':*", t.replace('\\', "\\\\").replace('\'', "''")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" & "))
}

/// The FTS5 query text of the terms with words: each one a quoted phrase
/// (so nothing in it is an operator) whose last word is a prefix.
pub(super) fn fts5(search: &SearchQuery) -> Option<String> {
    let terms: Vec<String> = search
        .word_terms()
        .map(|t| format!("\"{}\"*", t.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" AND "))
}

/// Runs the search `query.search` for `owner`: one page of what it found.
pub(super) fn run(
    conn: &mut AnyConnection,
    owner: &str,
    query: &ConversationQuery,
    search: &SearchQuery,
    like: &str,
) -> Result<Vec<FoundRow>, diesel::result::Error> {
    let terms = serde_json::to_string(search.terms())
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    let (limit, offset) = (
        i64::from(query.page.limit()),
        i64::from(query.page.offset()),
    );
    macro_rules! bound {
        ($sql:expr, $text:expr) => {
            diesel::sql_query($sql)
                .bind::<Text, _>(owner)
                .bind::<Bool, _>(query.archived)
                .bind::<Text, _>(like)
                .bind::<Text, _>(&terms)
                .bind::<BigInt, _>(limit)
                .bind::<BigInt, _>(offset)
                .bind::<Nullable<Text>, _>($text)
        };
    }
    match conn {
        AnyConnection::Postgres(c) => bound!(postgres(query.order), tsquery(search)).load(c),
        AnyConnection::Sqlite(c) => bound!(sqlite(query.order), fts5(search)).load(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> SearchQuery {
        SearchQuery::parse(text).unwrap()
    }

    #[test]
    fn user_syntax_is_quoted_for_postgresql() {
        assert_eq!(
            tsquery(&q(r"Rust it's a\b | !x:* ++")).as_deref(),
            Some(r"'rust':* & 'it''s':* & 'a\\b':* & '!x:*':*")
        );
        assert_eq!(tsquery(&q("++ --")), None);
    }

    #[test]
    fn user_syntax_is_quoted_for_fts5() {
        assert_eq!(
            fts5(&q(r#"say "hi" OR NEAR(x*)"#)).as_deref(),
            Some(r#""say"* AND """hi"""* AND "or"* AND "near(x*)"*"#)
        );
        assert_eq!(fts5(&q("** ??")), None);
    }
}
