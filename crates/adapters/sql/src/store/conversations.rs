//! [`ConversationStore`] over SQL.

use async_trait::async_trait;
use confab_domain::{
    Conversation, ConversationId, ConversationPatch, ConversationSummary, DomainError, ListOrder,
    NewConversation, OffsetDateTime, Page, PageRequest, Title, UserId,
};
use confab_ports::{ConversationQuery, ConversationStore};
use diesel::prelude::*;

use super::{SqlStore, search};
use crate::connection::{AnyConnection, Bind, SqlText, on_backend};
use crate::rows::{ConversationRow, SummaryRow, micros};
use crate::schema::conversations;

/// Escapes `LIKE` wildcards so a search is a literal substring match.
fn like_pattern(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

type Boxed<'a> = conversations::BoxedQuery<'a, <AnyConnection as diesel::Connection>::Backend>;

/// The rows of `owner`'s list that `query` selects, before paging (a
/// search is [`search::run`]'s).
fn listed<'a>(owner: &str, query: &ConversationQuery) -> Boxed<'a> {
    conversations::table
        .filter(conversations::user_id.eq(owner.to_owned()))
        .filter(conversations::deleted_at.is_null())
        .filter(conversations::is_archived.eq(query.archived))
        .into_boxed()
}

#[derive(AsChangeset)]
#[diesel(table_name = conversations)]
struct Changes {
    title: Option<String>,
    is_archived: Option<bool>,
    current_node: Option<String>,
    /// `Some(None)` writes NULL.
    system_prompt: Option<Option<String>>,
    /// `Some(None)` writes NULL.
    model: Option<Option<String>>,
    updated_at: i64,
}

fn owned_row(
    conn: &mut AnyConnection,
    owner: &str,
    id: &str,
) -> Result<ConversationRow, diesel::result::Error> {
    conversations::table
        .filter(conversations::id.eq(id))
        .filter(conversations::user_id.eq(owner))
        .filter(conversations::deleted_at.is_null())
        .select(ConversationRow::as_select())
        .first(conn)
}

/// A new conversation's title, if still untitled: binds title, time, id,
/// the placeholder, owner.
///
/// Found by its primary key alone. The owner is compared as an expression
/// (`user_id || ''`), which no index serves: written `user_id = $5`,
/// PostgreSQL may serve it with the owner's list index, and the plan a
/// connection keeps for a statement is made on its sixth run, when a new
/// database's tables are small and unanalyzed and both indexes cost the
/// same. Kept, that plan read every conversation of the owner for each
/// title (3 ms a title at 2,000 conversations, measured) until an ANALYZE
/// replaced it.
pub(crate) const SET_GENERATED_TITLE: &[&str] = &[
    "UPDATE conversations SET title = ",
    ", updated_at = ",
    " WHERE id = ",
    " AND deleted_at IS NULL AND title = ",
    " AND user_id || '' = ",
    "",
];

#[async_trait]
impl ConversationStore for SqlStore {
    async fn create(&self, new: NewConversation) -> Result<Conversation, DomainError> {
        let at = micros(new.created_at);
        let row = ConversationRow::new(&new, at);
        let (owner, id) = (row.user_id.clone(), row.id.clone());
        self.db
            .write(move |conn| {
                diesel::insert_into(conversations::table)
                    .values(&row)
                    .execute(conn)?;
                owned_row(conn, &owner, &id)
            })
            .await?
            .into_conversation()
    }

    async fn get(&self, owner: UserId, id: ConversationId) -> Result<Conversation, DomainError> {
        let (owner, id) = (owner.to_string(), id.to_string());
        self.db
            .read(move |conn| owned_row(conn, &owner, &id))
            .await?
            .into_conversation()
    }

    async fn list(
        &self,
        owner: UserId,
        query: &ConversationQuery,
    ) -> Result<Page<ConversationSummary>, DomainError> {
        let (owner, query) = (owner.to_string(), query.clone());
        let page = query.page;
        if let Some(search) = query.search.clone() {
            let like = like_pattern(search.as_str());
            let (items, total) = self
                .db
                .read(move |conn| {
                    let rows = search::run(conn, &owner, &query, &search, &like)?;
                    // Past the end, the page is empty and has no count: ask
                    // for the first one's.
                    let total = match rows.first() {
                        Some(row) => row.total(),
                        None if page.offset() > 0 => {
                            let first = ConversationQuery {
                                page: PageRequest::default(),
                                ..query.clone()
                            };
                            search::run(conn, &owner, &first, &search, &like)?
                                .first()
                                .map_or(0, search::FoundRow::total)
                        }
                        None => 0,
                    };
                    Ok((
                        rows.into_iter()
                            .map(|row| row.into_summary(&search))
                            .collect::<Vec<_>>(),
                        total,
                    ))
                })
                .await?;
            return Ok(Page {
                items: items.into_iter().collect::<Result<_, _>>()?,
                total: u64::try_from(total).unwrap_or(0),
                request: page,
            });
        }
        let (total, rows) = self
            .db
            .read(move |conn| {
                let total: i64 = listed(&owner, &query).count().get_result(conn)?;
                let ordered = match query.order {
                    ListOrder::Updated => listed(&owner, &query)
                        .order((conversations::updated_at.desc(), conversations::id.desc())),
                    ListOrder::Created => listed(&owner, &query)
                        .order((conversations::created_at.desc(), conversations::id.desc())),
                };
                let rows: Vec<SummaryRow> = ordered
                    .limit(i64::from(page.limit()))
                    .offset(i64::from(page.offset()))
                    .select(SummaryRow::as_select())
                    .load(conn)?;
                Ok((total, rows))
            })
            .await?;
        Ok(Page {
            items: rows
                .into_iter()
                .map(SummaryRow::into_summary)
                .collect::<Result<_, _>>()?,
            total: u64::try_from(total).unwrap_or(0),
            request: page,
        })
    }

    async fn update(
        &self,
        owner: UserId,
        id: ConversationId,
        patch: ConversationPatch,
        at: OffsetDateTime,
    ) -> Result<Conversation, DomainError> {
        let (owner, id) = (owner.to_string(), id.to_string());
        let changes = Changes {
            title: patch.title.map(|t| t.as_str().to_owned()),
            is_archived: patch.is_archived,
            current_node: patch.current_node.map(|node| node.as_str().to_owned()),
            system_prompt: patch
                .system_prompt
                .map(|p| p.map(|p| p.as_str().to_owned())),
            model: patch.model.map(|m| m.map(|m| m.as_str().to_owned())),
            updated_at: micros(at),
        };
        self.db
            .write(move |conn| {
                let changed = diesel::update(
                    conversations::table
                        .filter(conversations::id.eq(&id))
                        .filter(conversations::user_id.eq(&owner))
                        .filter(conversations::deleted_at.is_null()),
                )
                .set(&changes)
                .execute(conn)?;
                if changed == 0 {
                    return Err(diesel::result::Error::NotFound);
                }
                owned_row(conn, &owner, &id)
            })
            .await?
            .into_conversation()
    }

    async fn set_generated_title(
        &self,
        owner: UserId,
        id: ConversationId,
        untitled: &Title,
        title: &Title,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let (owner, id, at) = (owner.to_string(), id.to_string(), micros(at));
        let (untitled, title) = (untitled.as_str().to_owned(), title.as_str().to_owned());
        let changed = self
            .db
            .write(move |conn| {
                on_backend!(conn, |c| SqlText::new(
                    SET_GENERATED_TITLE,
                    vec![
                        Bind::Text(&title),
                        Bind::BigInt(at),
                        Bind::Text(&id),
                        Bind::Text(&untitled),
                        Bind::Text(&owner),
                    ],
                )
                .execute(c))
            })
            .await?;
        Ok(changed > 0)
    }

    async fn ids(&self, owner: UserId) -> Result<Vec<ConversationId>, DomainError> {
        let owner = owner.to_string();
        let ids: Vec<String> = self
            .db
            .read(move |conn| {
                on_backend!(conn, |c| conversations::table
                    .filter(conversations::user_id.eq(&owner))
                    .filter(conversations::deleted_at.is_null())
                    .order((conversations::created_at.desc(), conversations::id.desc()))
                    .select(conversations::id)
                    .load(c))
            })
            .await?;
        ids.iter()
            .map(|id| id.parse().map_err(DomainError::internal))
            .collect()
    }

    async fn soft_delete_all(
        &self,
        owner: UserId,
        at: OffsetDateTime,
    ) -> Result<Vec<ConversationId>, DomainError> {
        let (owner, at) = (owner.to_string(), micros(at));
        let ids: Vec<String> = self
            .db
            .write(move |conn| {
                let live = conversations::table
                    .filter(conversations::user_id.eq(&owner))
                    .filter(conversations::deleted_at.is_null());
                let ids = on_backend!(conn, |c| live.select(conversations::id).load(c))?;
                on_backend!(conn, |c| diesel::update(live)
                    .set((
                        conversations::deleted_at.eq(Some(at)),
                        conversations::updated_at.eq(at),
                    ))
                    .execute(c))?;
                Ok(ids)
            })
            .await?;
        ids.iter()
            .map(|id| id.parse().map_err(DomainError::internal))
            .collect()
    }

    async fn soft_delete(
        &self,
        owner: UserId,
        id: ConversationId,
        at: OffsetDateTime,
    ) -> Result<(), DomainError> {
        let (owner, id, at) = (owner.to_string(), id.to_string(), micros(at));
        let changed = self
            .db
            .write(move |conn| {
                diesel::update(
                    conversations::table
                        .filter(conversations::id.eq(&id))
                        .filter(conversations::user_id.eq(&owner))
                        .filter(conversations::deleted_at.is_null()),
                )
                .set((
                    conversations::deleted_at.eq(Some(at)),
                    conversations::updated_at.eq(at),
                ))
                .execute(conn)
            })
            .await?;
        if changed == 0 {
            Err(DomainError::NotFound)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(like_pattern("50%_Off\\"), "%50\\%\\_off\\\\%");
    }
}
