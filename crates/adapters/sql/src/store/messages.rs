//! [`MessageStore`] over SQL.

use async_trait::async_trait;
use confab_domain::{
    Content, Conversation, ConversationId, DomainError, Message, MessageId, MessagePage,
    MessageStatus, NewConversation, OffsetDateTime,
};
use confab_ports::{MessageStore, TitleIfUntitled};
use diesel::prelude::*;

use super::SqlStore;
use crate::answer::{AnswerSave, NewTitle};
use crate::connection::{AnyConnection, Bind, SqlText, on_backend};
use crate::rows::{ConversationRow, MessageRow, NewExchange, micros, preview};
use crate::schema::{conversations, messages};

/// [`touch_conversation`], and its current branch now ends at `node`.
fn touch_and_move(
    conn: &mut AnyConnection,
    conversation: &str,
    preview: Option<&str>,
    node: &str,
    at: i64,
) -> Result<(), diesel::result::Error> {
    let changed = match preview {
        Some(text) => on_backend!(conn, |c| SqlText::new(
            &[
                "UPDATE conversations SET updated_at = ",
                ", last_message = ",
                ", current_node = ",
                " WHERE id = ",
                " AND deleted_at IS NULL",
            ],
            vec![
                Bind::BigInt(at),
                Bind::Text(text),
                Bind::Text(node),
                Bind::Text(conversation),
            ],
        )
        .execute(c))?,
        None => on_backend!(conn, |c| SqlText::new(
            &[
                "UPDATE conversations SET updated_at = ",
                ", current_node = ",
                " WHERE id = ",
                " AND deleted_at IS NULL",
            ],
            vec![Bind::BigInt(at), Bind::Text(node), Bind::Text(conversation)],
        )
        .execute(c))?,
    };
    if changed == 0 {
        Err(diesel::result::Error::NotFound)
    } else {
        Ok(())
    }
}

/// The branch that ends at `end`, read upwards through `parent_id` over the
/// primary key: the ancestors of `end` (and `end` itself unless `skip` is
/// 1), newest first, at most `take` of them.
fn branch(
    conn: &mut AnyConnection,
    conversation: &str,
    end: &str,
    skip: i64,
    take: i64,
) -> Result<Vec<MessageRow>, diesel::result::Error> {
    use diesel::sql_types::{BigInt, Text};
    let deepest = skip.saturating_add(take).saturating_sub(1);
    match conn {
        AnyConnection::Postgres(c) => diesel::sql_query(BRANCH_POSTGRES)
            .bind::<Text, _>(conversation)
            .bind::<Text, _>(end)
            .bind::<BigInt, _>(skip)
            .bind::<BigInt, _>(deepest)
            .load(c),
        AnyConnection::Sqlite(c) => diesel::sql_query(BRANCH_SQLITE)
            .bind::<Text, _>(conversation)
            .bind::<Text, _>(end)
            .bind::<BigInt, _>(skip)
            .bind::<BigInt, _>(deepest)
            .load(c),
    }
}

/// [`branch`] on PostgreSQL: conversation, end, skip, deepest depth.
pub(crate) const BRANCH_POSTGRES: &str = "WITH RECURSIVE branch (id, parent_id, depth) AS ( \
    SELECT id, parent_id, 0 FROM messages WHERE conversation_id = $1 AND id = $2 \
    UNION ALL \
    SELECT m.id, m.parent_id, b.depth + 1 FROM branch b \
    JOIN messages m ON m.conversation_id = $1 AND m.id = b.parent_id \
    WHERE b.depth < $4) \
    SELECT messages.* FROM branch \
    JOIN messages ON messages.conversation_id = $1 AND messages.id = branch.id \
    WHERE branch.depth >= $3 ORDER BY branch.depth";

/// [`BRANCH_POSTGRES`] on SQLite.
const BRANCH_SQLITE: &str = "WITH RECURSIVE branch (id, parent_id, depth) AS ( \
    SELECT id, parent_id, 0 FROM messages WHERE conversation_id = ?1 AND id = ?2 \
    UNION ALL \
    SELECT m.id, m.parent_id, b.depth + 1 FROM branch b \
    JOIN messages m ON m.conversation_id = ?1 AND m.id = b.parent_id \
    WHERE b.depth < ?4) \
    SELECT messages.* FROM branch \
    JOIN messages ON messages.conversation_id = ?1 AND messages.id = branch.id \
    WHERE branch.depth >= ?3 ORDER BY branch.depth";

/// The save of an answer's `content` as the store writes it.
fn answer_save(
    conversation: ConversationId,
    id: &MessageId,
    content: &Content,
    status: MessageStatus,
    at: OffsetDateTime,
    title: Option<NewTitle>,
) -> Result<AnswerSave, DomainError> {
    Ok(AnswerSave {
        conversation: conversation.to_string(),
        id: id.as_str().to_owned(),
        json: serde_json::to_string(content).map_err(DomainError::internal)?,
        status,
        at: micros(at),
        preview: preview(content),
        title,
    })
}

#[async_trait]
impl MessageStore for SqlStore {
    async fn insert(&self, message: &Message) -> Result<(), DomainError> {
        let mut row = MessageRow::from_message(message)?;
        let text = preview(&message.content);
        self.db
            .write(move |conn| {
                touch_and_move(
                    conn,
                    &row.conversation_id,
                    text.as_deref(),
                    &row.id,
                    row.updated_at,
                )?;
                let last: Option<i64> = messages::table
                    .filter(messages::conversation_id.eq(&row.conversation_id))
                    .select(diesel::dsl::max(messages::position))
                    .first(conn)?;
                row.position = last.unwrap_or(0) + 1;
                diesel::insert_into(messages::table)
                    .values(&row)
                    .execute(conn)?;
                Ok(())
            })
            .await
    }

    async fn insert_exchange(
        &self,
        user: &Message,
        assistant: &Message,
    ) -> Result<(), DomainError> {
        let mut rows = [
            MessageRow::from_message(user)?,
            MessageRow::from_message(assistant)?,
        ];
        let text = preview(&user.content);
        self.db
            .write(move |conn| {
                let [first, second] = &mut rows;
                touch_and_move(
                    conn,
                    &first.conversation_id,
                    text.as_deref(),
                    &second.id,
                    second.updated_at,
                )?;
                let last: Option<i64> = on_backend!(conn, |c| messages::table
                    .filter(messages::conversation_id.eq(&first.conversation_id))
                    .select(diesel::dsl::max(messages::position))
                    .first(c))?;
                first.position = last.unwrap_or(0) + 1;
                second.position = first.position + 1;
                for row in [&*first, &*second] {
                    on_backend!(conn, |c| diesel::insert_into(messages::table)
                        .values(row)
                        .execute(c))?;
                }
                Ok(())
            })
            .await
    }

    async fn create_with_exchange(
        &self,
        conversation: NewConversation,
        user: &Message,
        assistant: &Message,
    ) -> Result<Conversation, DomainError> {
        let (mut first, mut second) = (
            MessageRow::from_message(user)?,
            MessageRow::from_message(assistant)?,
        );
        (first.position, second.position) = (1, 2);
        let row = ConversationRow {
            last_message: preview(&user.content),
            current_node: Some(second.id.clone()),
            ..ConversationRow::new(&conversation, second.updated_at)
        };
        let stored = row.clone();
        self.db
            .insert_exchange(NewExchange {
                conversation: row,
                messages: [first, second],
            })
            .await?;
        stored.into_conversation()
    }

    async fn update_content(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        content: &Content,
        status: MessageStatus,
        at: OffsetDateTime,
    ) -> Result<(), DomainError> {
        let save = answer_save(conversation, id, content, status, at, None)?;
        match self.db.save_answer(save).await? {
            Some(_) => Ok(()),
            None => Err(DomainError::NotFound),
        }
    }

    async fn update_content_titled(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        content: &Content,
        status: MessageStatus,
        at: OffsetDateTime,
        title: TitleIfUntitled<'_>,
    ) -> Result<bool, DomainError> {
        let wanted = title.title.as_str().to_owned();
        let title = NewTitle {
            untitled: title.untitled.as_str().to_owned(),
            owner: title.owner.to_string(),
            title: wanted.clone(),
        };
        let save = answer_save(conversation, id, content, status, at, Some(title))?;
        match self.db.save_answer(save).await? {
            // A deleted conversation has neither list nor title to change
            // (the answer is closed all the same).
            Some(now) => Ok(now.is_some_and(|now| now == wanted)),
            None => Err(DomainError::NotFound),
        }
    }

    async fn reopen(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let (conversation, id) = (conversation.to_string(), id.as_str().to_owned());
        let at = micros(at);
        self.db
            .write(move |conn| {
                let changed = on_backend!(conn, |c| SqlText::new(
                    &[
                        "UPDATE messages SET status = 'in_progress', updated_at = ",
                        " WHERE conversation_id = ",
                        " AND id = ",
                        " AND role = 'assistant' AND status = 'finished_partial_completion'",
                    ],
                    vec![Bind::BigInt(at), Bind::Text(&conversation), Bind::Text(&id)],
                )
                .execute(c))?;
                if changed == 0 {
                    // Nothing to reopen: nothing written.
                    return Ok(false);
                }
                // A deleted conversation is NotFound, and the update above
                // is rolled back with it.
                touch_and_move(conn, &conversation, None, &id, at)?;
                Ok(true)
            })
            .await
    }

    async fn page(
        &self,
        conversation: ConversationId,
        before: Option<&MessageId>,
        limit: usize,
    ) -> Result<MessagePage, DomainError> {
        let conversation = conversation.to_string();
        let before = before.map(|id| id.as_str().to_owned());
        // One more than asked: whether it comes says if older ones exist.
        let take = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let mut rows: Vec<MessageRow> = self
            .db
            .read(move |conn| {
                // The branch's end: the conversation's current node, or the
                // message `before` (then itself skipped).
                let (end, skip) = match before {
                    Some(id) => {
                        let found = on_backend!(conn, |c| messages::table
                            .filter(messages::conversation_id.eq(&conversation))
                            .filter(messages::id.eq(&id))
                            .select(messages::id)
                            .first::<String>(c))?;
                        (Some(found), 1)
                    }
                    None => {
                        let current = on_backend!(conn, |c| conversations::table
                            .filter(conversations::id.eq(&conversation))
                            .select(conversations::current_node)
                            .first::<Option<String>>(c)
                            .optional())?;
                        (current.flatten(), 0)
                    }
                };
                let Some(end) = end else {
                    return Ok(Vec::new());
                };
                branch(conn, &conversation, &end, skip, take)
            })
            .await?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        Ok(MessagePage {
            messages: rows
                .into_iter()
                .map(MessageRow::into_message)
                .collect::<Result<_, _>>()?,
            has_more,
            children: Vec::new(),
        })
    }

    async fn in_order(
        &self,
        conversation: ConversationId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), DomainError> {
        let conversation = conversation.to_string();
        let after = after.map(|id| id.as_str().to_owned());
        // One more than asked: whether it comes says if more follow.
        let take = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let mut rows: Vec<MessageRow> = self
            .db
            .read(move |conn| {
                let from = match &after {
                    Some(id) => on_backend!(conn, |c| messages::table
                        .filter(messages::conversation_id.eq(&conversation))
                        .filter(messages::id.eq(id))
                        .select(messages::position)
                        .first::<i64>(c))?,
                    None => 0,
                };
                // Over the unique index on (conversation_id, position).
                on_backend!(conn, |c| messages::table
                    .filter(messages::conversation_id.eq(&conversation))
                    .filter(messages::position.gt(from))
                    .order(messages::position)
                    .limit(take)
                    .select(MessageRow::as_select())
                    .load(c))
            })
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let messages = rows
            .into_iter()
            .map(MessageRow::into_message)
            .collect::<Result<_, _>>()?;
        Ok((messages, more))
    }

    async fn children(
        &self,
        conversation: ConversationId,
        parents: &[Option<MessageId>],
    ) -> Result<Vec<(Option<MessageId>, MessageId)>, DomainError> {
        let conversation = conversation.to_string();
        let roots = parents.iter().any(Option::is_none);
        let ids: Vec<String> = parents
            .iter()
            .flatten()
            .map(|p| p.as_str().to_owned())
            .collect();
        // Over the index on (conversation_id, parent_id).
        let rows: Vec<(Option<String>, String)> = self
            .db
            .read(move |conn| {
                on_backend!(conn, |c| {
                    let of_parents = messages::parent_id.eq_any(&ids);
                    let query = messages::table
                        .filter(messages::conversation_id.eq(&conversation))
                        .into_boxed();
                    let query = if roots {
                        query.filter(of_parents.or(messages::parent_id.is_null()))
                    } else {
                        query.filter(of_parents)
                    };
                    query
                        .select((messages::parent_id, messages::id))
                        .order(messages::position)
                        .load(c)
                })
            })
            .await?;
        let parse = |id: String| MessageId::parse(id).map_err(DomainError::internal);
        rows.into_iter()
            .map(|(parent, id)| Ok((parent.map(parse).transpose()?, parse(id)?)))
            .collect()
    }

    async fn find(
        &self,
        conversation: ConversationId,
        id: &MessageId,
    ) -> Result<Option<Message>, DomainError> {
        let (conversation, id) = (conversation.to_string(), id.as_str().to_owned());
        let row: Option<MessageRow> = self
            .db
            .read(move |conn| {
                on_backend!(conn, |c| messages::table
                    .filter(messages::conversation_id.eq(&conversation))
                    .filter(messages::id.eq(&id))
                    .select(MessageRow::as_select())
                    .first(c)
                    .optional())
            })
            .await?;
        row.map(MessageRow::into_message).transpose()
    }

    async fn in_progress(
        &self,
        limit: usize,
    ) -> Result<Vec<(ConversationId, MessageId)>, DomainError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String)> = self
            .db
            .read(move |conn| {
                messages::table
                    .filter(messages::status.eq(MessageStatus::InProgress.as_str()))
                    .order(messages::updated_at.asc())
                    .limit(limit)
                    .select((messages::conversation_id, messages::id))
                    .load(conn)
            })
            .await?;
        rows.into_iter()
            .map(|(conversation, id)| {
                let conversation = conversation
                    .parse()
                    .map_err(|_| DomainError::internal("a stored conversation id is malformed"))?;
                let id = MessageId::parse(&id)
                    .map_err(|_| DomainError::internal("a stored message id is malformed"))?;
                Ok((conversation, id))
            })
            .collect()
    }

    async fn fail_if_in_progress(
        &self,
        conversation: ConversationId,
        message: &MessageId,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let at = micros(at);
        let conversation = conversation.to_string();
        let message = message.as_str().to_owned();
        let closed = self
            .db
            .write(move |conn| {
                diesel::update(
                    messages::table
                        .filter(messages::conversation_id.eq(&conversation))
                        .filter(messages::id.eq(&message))
                        .filter(messages::status.eq(MessageStatus::InProgress.as_str())),
                )
                .set((
                    messages::status.eq(MessageStatus::Failed.as_str()),
                    messages::updated_at.eq(at),
                ))
                .execute(conn)
            })
            .await?;
        Ok(closed > 0)
    }
}
