//! Rows as diesel reads and writes them, and their translation to and from
//! domain types. Rows hold owned data so they can move to the store's threads.

use confab_domain::{
    Content, Conversation, ConversationId, ConversationSettings, ConversationSummary, DomainError,
    Email, Message, MessageId, MessageRole, MessageStatus, ModelSlug, NewConversation,
    OffsetDateTime, PasswordHash, Role, SystemPrompt, Title, User, UserId, Username,
};
use diesel::prelude::*;

use crate::connection::Bind;
use crate::schema::{conversations, messages, users};

/// Unix microseconds: both backends store timestamps as BIGINT.
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(m: i64) -> Result<OffsetDateTime, DomainError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(m) * 1_000).map_err(DomainError::internal)
}

fn uuid(raw: &str) -> Result<uuid::Uuid, DomainError> {
    uuid::Uuid::parse_str(raw).map_err(DomainError::internal)
}

/// Characters of a message kept as the conversation list's preview.
const PREVIEW_CHARS: usize = 200;

/// The list preview of a content: its first characters, or `None` while
/// it is still empty (an answer that has not started).
pub(crate) fn preview(content: &Content) -> Option<String> {
    let text: String = content.joined().chars().take(PREVIEW_CHARS).collect();
    (!text.trim().is_empty()).then_some(text)
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub(crate) struct UserRow {
    pub(crate) id: String,
    pub(crate) username: String,
    pub(crate) email: String,
    pub(crate) password_hash: String,
    pub(crate) role: String,
    pub(crate) disabled: bool,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl UserRow {
    pub(crate) fn into_user(self) -> Result<User, DomainError> {
        Ok(User {
            id: UserId::from_uuid(uuid(&self.id)?),
            username: Username::from_trusted(self.username),
            email: Email::from_trusted(self.email),
            role: Role::parse(&self.role).map_err(DomainError::internal)?,
            disabled: self.disabled,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
        })
    }

    pub(crate) fn into_credentials(mut self) -> Result<(User, PasswordHash), DomainError> {
        let hash = PasswordHash::new(std::mem::take(&mut self.password_hash));
        Ok((self.into_user()?, hash))
    }
}

#[derive(Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = conversations)]
// `None` is written as NULL rather than left to the column's default (they
// are the same here): an insert whose SQL does not depend on which fields
// are `None` is prepared once and cached.
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct ConversationRow {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) title: String,
    pub(crate) last_message: Option<String>,
    pub(crate) is_archived: bool,
    pub(crate) deleted_at: Option<i64>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) current_node: Option<String>,
    pub(crate) system_prompt: Option<String>,
    pub(crate) model: Option<String>,
}

impl ConversationRow {
    /// The row of a new conversation, without messages yet (`last_message`
    /// and `current_node` are the caller's to set).
    pub(crate) fn new(conversation: &NewConversation, updated_at: i64) -> Self {
        Self {
            id: conversation.id.to_string(),
            user_id: conversation.owner.to_string(),
            title: conversation.title.as_str().to_owned(),
            last_message: None,
            is_archived: false,
            deleted_at: None,
            created_at: micros(conversation.created_at),
            updated_at,
            current_node: None,
            system_prompt: conversation
                .settings
                .system_prompt
                .as_ref()
                .map(|p| p.as_str().to_owned()),
            model: conversation
                .settings
                .model
                .as_ref()
                .map(|m| m.as_str().to_owned()),
        }
    }

    pub(crate) fn into_conversation(self) -> Result<Conversation, DomainError> {
        Ok(Conversation {
            id: ConversationId::from_uuid(uuid(&self.id)?),
            owner: UserId::from_uuid(uuid(&self.user_id)?),
            title: Title::from_trusted(self.title),
            is_archived: self.is_archived,
            current_node: self
                .current_node
                .map(|id| {
                    MessageId::parse(id)
                        .map_err(|_| DomainError::internal("a stored message id is malformed"))
                })
                .transpose()?,
            settings: ConversationSettings {
                system_prompt: self.system_prompt.map(SystemPrompt::from_trusted),
                model: self
                    .model
                    .map(|m| {
                        ModelSlug::parse(&m)
                            .map_err(|_| DomainError::internal("a stored model name is malformed"))
                    })
                    .transpose()?,
            },
            deleted_at: self.deleted_at.map(from_micros).transpose()?,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
        })
    }
}

/// The columns of a conversation list's row: not its settings (a system
/// prompt may be long, and a list never shows it).
#[derive(Queryable, Selectable)]
#[diesel(table_name = conversations)]
pub(crate) struct SummaryRow {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) last_message: Option<String>,
    pub(crate) is_archived: bool,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl SummaryRow {
    pub(crate) fn into_summary(self) -> Result<ConversationSummary, DomainError> {
        Ok(ConversationSummary {
            id: ConversationId::from_uuid(uuid(&self.id)?),
            title: Title::from_trusted(self.title),
            last_message: self.last_message,
            is_archived: self.is_archived,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
            hit: None,
        })
    }
}

#[derive(Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = messages)]
// `None` is written as NULL rather than left to the column's default (they
// are the same here): an insert whose SQL does not depend on which fields
// are `None` is prepared once and cached.
#[diesel(treat_none_as_default_value = false)]
pub(crate) struct MessageRow {
    pub(crate) conversation_id: String,
    pub(crate) id: String,
    pub(crate) position: i64,
    pub(crate) parent_id: Option<String>,
    pub(crate) role: String,
    pub(crate) content: String,
    pub(crate) status: String,
    pub(crate) model_slug: Option<String>,
    pub(crate) metadata: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
}

impl MessageRow {
    /// A row for `message`; its position is filled in by the insert.
    pub(crate) fn from_message(message: &Message) -> Result<Self, DomainError> {
        Ok(Self {
            conversation_id: message.conversation_id.to_string(),
            id: message.id.as_str().to_owned(),
            position: 0,
            parent_id: message.parent_id.as_ref().map(|p| p.as_str().to_owned()),
            role: message.role.as_str().to_owned(),
            content: serde_json::to_string(&message.content).map_err(DomainError::internal)?,
            status: message.status.as_str().to_owned(),
            model_slug: message.model_slug.as_ref().map(|m| m.as_str().to_owned()),
            metadata: serde_json::to_string(&message.metadata).map_err(DomainError::internal)?,
            created_at: micros(message.created_at),
            updated_at: micros(message.updated_at),
        })
    }

    pub(crate) fn into_message(self) -> Result<Message, DomainError> {
        let internal = |e: DomainError| DomainError::internal(e);
        let json = |e: serde_json::Error| DomainError::internal(e);
        Ok(Message {
            id: MessageId::parse(self.id).map_err(internal)?,
            conversation_id: ConversationId::from_uuid(uuid(&self.conversation_id)?),
            parent_id: self
                .parent_id
                .map(MessageId::parse)
                .transpose()
                .map_err(internal)?,
            role: MessageRole::parse(&self.role).map_err(internal)?,
            content: serde_json::from_str(&self.content).map_err(json)?,
            status: MessageStatus::parse(&self.status).map_err(internal)?,
            model_slug: self
                .model_slug
                .as_deref()
                .map(ModelSlug::parse)
                .transpose()
                .map_err(internal)?,
            metadata: serde_json::from_str(&self.metadata).map_err(json)?,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
        })
    }
}

/// The columns [`ConversationRow::binds`] gives, in its order.
macro_rules! conversation_columns {
    () => {
        "id, user_id, title, last_message, is_archived, deleted_at, created_at, \
         updated_at, current_node, system_prompt, model"
    };
}

/// The columns [`MessageRow::binds`] gives, in its order.
macro_rules! message_columns {
    () => {
        "conversation_id, id, position, parent_id, role, content, status, model_slug, \
         metadata, created_at, updated_at"
    };
}

/// New conversations and their first exchanges in one statement on
/// PostgreSQL: the conversations' rows, then their messages' rows. One
/// statement is atomic without a transaction around it, and one round
/// trip: a lone exchange is one statement, not `BEGIN`, three inserts and
/// `COMMIT`. The messages are inserted only once every conversation is
/// (the count reads the whole insert first), so a conversation id that is
/// taken fails as the conversation's, as it did inserted first on its
/// own; the messages' foreign key is checked at the end of the statement.
const INSERT_EXCHANGES_POSTGRES: &[&str] = &[
    concat!(
        "WITH c AS (INSERT INTO conversations (",
        conversation_columns!(),
        ") VALUES "
    ),
    concat!(
        " RETURNING 1) INSERT INTO messages (",
        message_columns!(),
        ") SELECT * FROM (VALUES "
    ),
    ") AS v WHERE (SELECT count(*) FROM c) > 0",
];

impl ConversationRow {
    /// The row's values, in the order of `conversation_columns!`.
    fn binds(&self) -> Vec<Bind<'_>> {
        vec![
            Bind::Text(&self.id),
            Bind::Text(&self.user_id),
            Bind::Text(&self.title),
            Bind::MaybeText(self.last_message.as_deref()),
            Bind::Bool(self.is_archived),
            Bind::MaybeBigInt(self.deleted_at),
            Bind::BigInt(self.created_at),
            Bind::BigInt(self.updated_at),
            Bind::MaybeText(self.current_node.as_deref()),
            Bind::MaybeText(self.system_prompt.as_deref()),
            Bind::MaybeText(self.model.as_deref()),
        ]
    }
}

impl MessageRow {
    /// The row's values, in the order of `message_columns!`.
    fn binds(&self) -> Vec<Bind<'_>> {
        vec![
            Bind::Text(&self.conversation_id),
            Bind::Text(&self.id),
            Bind::BigInt(self.position),
            Bind::MaybeText(self.parent_id.as_deref()),
            Bind::Text(&self.role),
            Bind::Text(&self.content),
            Bind::Text(&self.status),
            Bind::MaybeText(self.model_slug.as_deref()),
            Bind::Text(&self.metadata),
            Bind::BigInt(self.created_at),
            Bind::BigInt(self.updated_at),
        ]
    }
}

/// A new conversation and its first exchange (the question, then the
/// answer): three rows known whole, inserted with no reads. On PostgreSQL
/// they go in one statement ([`INSERT_EXCHANGES_POSTGRES`]), a group's
/// exchanges all in one; on SQLite, a write inserts its own three rows
/// ([`insert`](Self::insert)) and a group its conversations' and its
/// messages' in one statement each ([`insert_all`](Self::insert_all)).
pub(crate) struct NewExchange {
    pub(crate) conversation: ConversationRow,
    pub(crate) messages: [MessageRow; 2],
}

impl NewExchange {
    /// Inserts the three rows: on PostgreSQL in one statement, which needs
    /// no transaction around it; on SQLite one statement each. Each text is prepared once per
    /// connection and kept.
    pub(crate) fn insert(&self, conn: &mut crate::connection::AnyConnection) -> QueryResult<()> {
        use crate::connection::{AnyConnection, SqlRows, on_backend};
        if let AnyConnection::Postgres(c) = conn {
            // One conversation and two messages: always the same text.
            return SqlRows::new(
                INSERT_EXCHANGES_POSTGRES,
                vec![
                    vec![self.conversation.binds()],
                    self.messages.iter().map(MessageRow::binds).collect(),
                ],
            )
            .kept()
            .execute(c)
            .map(drop);
        }
        on_backend!(conn, |c| diesel::insert_into(conversations::table)
            .values(&self.conversation)
            .execute(c))?;
        for message in &self.messages {
            on_backend!(conn, |c| diesel::insert_into(messages::table)
                .values(message)
                .execute(c))?;
        }
        Ok(())
    }

    /// Inserts every row of `exchanges`: on PostgreSQL in one statement, on
    /// SQLite in two, the conversations', then the messages'. Their SQL
    /// depends on the number of rows, so it is parsed and planned (SQLite:
    /// compiled) each time, which a group of two already repays. On
    /// SQLite, FTS5 writes its pending terms out at every statement that
    /// changes the search index (each question's row does, by trigger):
    /// one flush for the group instead of one per question.
    pub(crate) fn insert_all(
        conn: &mut crate::connection::AnyConnection,
        exchanges: &[&Self],
    ) -> QueryResult<()> {
        use crate::connection::{AnyConnection, SqlRows, on_backend};
        if let AnyConnection::Postgres(c) = conn {
            return SqlRows::new(
                INSERT_EXCHANGES_POSTGRES,
                vec![
                    exchanges.iter().map(|e| e.conversation.binds()).collect(),
                    exchanges
                        .iter()
                        .flat_map(|e| e.messages.iter().map(MessageRow::binds))
                        .collect(),
                ],
            )
            .execute(c)
            .map(drop);
        }
        let conversations: Vec<&ConversationRow> =
            exchanges.iter().map(|e| &e.conversation).collect();
        on_backend!(conn, |c| diesel::insert_into(conversations::table)
            .values(conversations)
            .execute(c))?;
        let messages: Vec<&MessageRow> = exchanges.iter().flat_map(|e| &e.messages).collect();
        on_backend!(conn, |c| diesel::insert_into(messages::table)
            .values(messages)
            .execute(c))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_drops_only_sub_microseconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_762_484_546_479_123_456).unwrap();
        let back = from_micros(micros(t)).unwrap();
        assert_eq!(back.unix_timestamp_nanos(), 1_762_484_546_479_123_000);
    }

    #[test]
    fn preview_is_bounded_and_skips_empty() {
        assert_eq!(preview(&Content::empty_text()), None);
        let long = Content::text(vec!["é".repeat(300)]).unwrap();
        assert_eq!(preview(&long).unwrap().chars().count(), 200);
    }
}
