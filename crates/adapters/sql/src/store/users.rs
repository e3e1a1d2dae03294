//! [`UserStore`] over SQL.

use async_trait::async_trait;
use confab_domain::{
    ConversationId, DomainError, NewUser, OffsetDateTime, Page, PageRequest, PasswordHash, User,
    UserId,
};
use confab_ports::UserStore;
use diesel::prelude::*;

use super::SqlStore;
use crate::connection::{AnyConnection, on_backend};
use crate::rows::{UserRow, micros};
use crate::schema::{conversations, users};

#[async_trait]
impl UserStore for SqlStore {
    async fn create(&self, user: NewUser) -> Result<User, DomainError> {
        let at = micros(user.created_at);
        let row = UserRow {
            id: user.id.to_string(),
            username: user.username.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            password_hash: user.password_hash.as_str().to_owned(),
            role: user.role.as_str().to_owned(),
            disabled: false,
            created_at: at,
            updated_at: at,
        };
        let id = row.id.clone();
        self.db
            .write(move |conn| {
                diesel::insert_into(users::table)
                    .values(&row)
                    .execute(conn)?;
                users::table
                    .filter(users::id.eq(&id))
                    .select(UserRow::as_select())
                    .first(conn)
            })
            .await?
            .into_user()
    }

    async fn get(&self, id: UserId) -> Result<User, DomainError> {
        let id = id.to_string();
        self.db
            .read(move |conn| {
                users::table
                    .filter(users::id.eq(&id))
                    .select(UserRow::as_select())
                    .first(conn)
            })
            .await?
            .into_user()
    }

    async fn find_credentials(
        &self,
        login: &str,
    ) -> Result<Option<(User, PasswordHash)>, DomainError> {
        let login = login.to_lowercase();
        self.db
            .read(move |conn| {
                users::table
                    .filter(users::username.eq(&login).or(users::email.eq(&login)))
                    .select(UserRow::as_select())
                    .first(conn)
                    .optional()
            })
            .await?
            .map(UserRow::into_credentials)
            .transpose()
    }

    async fn list(&self, page: PageRequest) -> Result<Page<User>, DomainError> {
        let (total, rows) = self
            .db
            .read(move |conn| {
                let total: i64 = users::table.count().get_result(conn)?;
                let rows: Vec<UserRow> = users::table
                    .order((users::created_at.asc(), users::id.asc()))
                    .limit(i64::from(page.limit()))
                    .offset(i64::from(page.offset()))
                    .select(UserRow::as_select())
                    .load(conn)?;
                Ok((total, rows))
            })
            .await?;
        Ok(Page {
            items: rows
                .into_iter()
                .map(UserRow::into_user)
                .collect::<Result<_, _>>()?,
            total: u64::try_from(total).unwrap_or(0),
            request: page,
        })
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        current: &PasswordHash,
        new: PasswordHash,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let (id, current, new, at) = (
            id.to_string(),
            current.as_str().to_owned(),
            new.as_str().to_owned(),
            micros(at),
        );
        let changed = self
            .db
            .write(move |conn| {
                diesel::update(
                    users::table
                        .filter(users::id.eq(&id))
                        .filter(users::password_hash.eq(&current)),
                )
                .set((users::password_hash.eq(&new), users::updated_at.eq(at)))
                .execute(conn)
            })
            .await?;
        Ok(changed == 1)
    }

    async fn delete(&self, id: UserId) -> Result<Option<Vec<ConversationId>>, DomainError> {
        let id = id.to_string();
        let deleted: Option<Vec<String>> = self
            .db
            .write(move |conn| {
                // A conversation created meanwhile must be among the ids
                // (its cache entries and stream are forgotten by them):
                // its insert checks the account's row, which this lock
                // holds until the deletion commits. SQLite has one writer.
                if let AnyConnection::Postgres(c) = conn {
                    users::table
                        .filter(users::id.eq(&id))
                        .select(users::id)
                        .for_update()
                        .first::<String>(c)
                        .optional()?;
                }
                let owned = conversations::table.filter(conversations::user_id.eq(&id));
                let ids = on_backend!(conn, |c| owned.select(conversations::id).load(c))?;
                // The rest goes by `ON DELETE CASCADE`: conversations, then
                // their messages (and, on SQLite, the search rows their
                // triggers keep), login sessions and refresh tokens.
                let gone = diesel::delete(users::table.filter(users::id.eq(&id))).execute(conn)?;
                Ok((gone == 1).then_some(ids))
            })
            .await?;
        deleted
            .map(|ids| {
                ids.iter()
                    .map(|id| id.parse().map_err(DomainError::internal))
                    .collect()
            })
            .transpose()
    }

    async fn set_disabled(
        &self,
        id: UserId,
        disabled: bool,
        at: OffsetDateTime,
    ) -> Result<User, DomainError> {
        let id = id.to_string();
        let at = micros(at);
        self.db
            .write(move |conn| {
                let changed = diesel::update(users::table.filter(users::id.eq(&id)))
                    .set((users::disabled.eq(disabled), users::updated_at.eq(at)))
                    .execute(conn)?;
                if changed == 0 {
                    return Err(diesel::result::Error::NotFound);
                }
                users::table
                    .filter(users::id.eq(&id))
                    .select(UserRow::as_select())
                    .first(conn)
            })
            .await?
            .into_user()
    }
}
