//! [`ApiKeyStore`] over SQL.

use async_trait::async_trait;
use confab_domain::{
    ApiKey, ApiKeyDigest, ApiKeyId, ApiKeyName, DomainError, OffsetDateTime, Scopes, UserId,
};
use confab_ports::{ApiKeyStore, KeyCreation, StoredKey};
use diesel::prelude::*;

use super::SqlStore;
use crate::connection::{AnyConnection, on_backend};
use crate::rows::{from_micros, micros};
use crate::schema::{api_keys as k, users};

/// A key's row.
#[derive(Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = k)]
struct KeyRow {
    id: String,
    user_id: String,
    name: String,
    scopes: String,
    secret_digest: String,
    created_at: i64,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl KeyRow {
    fn new(key: &ApiKey, digest: &ApiKeyDigest) -> Self {
        Self {
            id: key.id.to_string(),
            user_id: key.user_id.to_string(),
            name: key.name.as_str().to_owned(),
            scopes: key.scopes.stored(),
            secret_digest: digest.as_str().to_owned(),
            created_at: micros(key.created_at),
            expires_at: key.expires_at.map(micros),
            last_used_at: key.last_used_at.map(micros),
        }
    }

    fn into_stored(self) -> Result<StoredKey, DomainError> {
        Ok(StoredKey {
            key: ApiKey {
                id: self.id.parse().map_err(DomainError::internal)?,
                user_id: self.user_id.parse().map_err(DomainError::internal)?,
                name: ApiKeyName::from_trusted(self.name),
                scopes: Scopes::from_stored(&self.scopes)?,
                created_at: from_micros(self.created_at)?,
                expires_at: self.expires_at.map(from_micros).transpose()?,
                last_used_at: self.last_used_at.map(from_micros).transpose()?,
            },
            digest: ApiKeyDigest::from_trusted(self.secret_digest),
        })
    }
}

#[async_trait]
impl ApiKeyStore for SqlStore {
    async fn create_key(
        &self,
        key: &ApiKey,
        digest: ApiKeyDigest,
    ) -> Result<KeyCreation, DomainError> {
        let row = KeyRow::new(key, &digest);
        let user = row.user_id.clone();
        let name = key.name.as_str().to_owned();
        let max = i64::try_from(ApiKey::MAX_PER_USER).unwrap_or(i64::MAX);
        let created = self
            .db
            .write(move |conn| {
                // The owner's row is the lock of their keys: two creations
                // for one user run one after the other (SQLite has one
                // writer), so neither the name check nor the count can be
                // passed by a race.
                let owner = users::table.filter(users::id.eq(&user)).select(users::id);
                let exists = match conn {
                    AnyConnection::Postgres(c) => {
                        owner.for_update().first::<String>(c).optional()?
                    }
                    AnyConnection::Sqlite(c) => owner.first::<String>(c).optional()?,
                };
                if exists.is_none() {
                    return Ok(None);
                }
                let theirs = k::table.filter(k::user_id.eq(&user));
                let taken = on_backend!(conn, |c| theirs
                    .filter(k::name.eq(&name))
                    .count()
                    .get_result::<i64>(c))?;
                if taken > 0 {
                    return Ok(Some(KeyCreation::NameTaken));
                }
                let count = on_backend!(conn, |c| theirs.count().get_result::<i64>(c))?;
                if count >= max {
                    return Ok(Some(KeyCreation::TooMany));
                }
                diesel::insert_into(k::table)
                    .values(row.clone())
                    .execute(conn)?;
                Ok(Some(KeyCreation::Created))
            })
            .await?;
        created.ok_or(DomainError::NotFound)
    }

    async fn keys(&self, user: UserId) -> Result<Vec<ApiKey>, DomainError> {
        let user = user.to_string();
        let rows: Vec<KeyRow> = self
            .db
            .read(move |conn| {
                let theirs = k::table
                    .filter(k::user_id.eq(&user))
                    .select(KeyRow::as_select());
                theirs.load(conn)
            })
            .await?;
        let mut keys = rows
            .into_iter()
            .map(|row| row.into_stored().map(|s| s.key))
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by_key(|key| std::cmp::Reverse((key.created_at, key.id)));
        Ok(keys)
    }

    async fn find_key(&self, id: ApiKeyId) -> Result<Option<StoredKey>, DomainError> {
        let id = id.to_string();
        let row: Option<KeyRow> = self
            .db
            .read(move |conn| {
                let found = k::table.filter(k::id.eq(&id)).select(KeyRow::as_select());
                found.first(conn).optional()
            })
            .await?;
        row.map(KeyRow::into_stored).transpose()
    }

    async fn delete_key(&self, user: UserId, id: ApiKeyId) -> Result<bool, DomainError> {
        let (user, id) = (user.to_string(), id.to_string());
        let gone = self
            .db
            .write(move |conn| {
                diesel::delete(k::table.filter(k::id.eq(&id)).filter(k::user_id.eq(&user)))
                    .execute(conn)
            })
            .await?;
        Ok(gone == 1)
    }

    async fn touch_key(&self, id: ApiKeyId, at: OffsetDateTime) -> Result<(), DomainError> {
        let (id, at) = (id.to_string(), micros(at));
        self.db
            .write(move |conn| {
                diesel::update(
                    k::table
                        .filter(k::id.eq(&id))
                        .filter(k::last_used_at.is_null().or(k::last_used_at.lt(at))),
                )
                .set(k::last_used_at.eq(Some(at)))
                .execute(conn)
            })
            .await?;
        Ok(())
    }

    async fn sweep_keys(&self, expired_before: OffsetDateTime) -> Result<u64, DomainError> {
        let cutoff = micros(expired_before);
        let gone = self
            .db
            .write(move |conn| {
                diesel::delete(k::table.filter(k::expires_at.lt(cutoff))).execute(conn)
            })
            .await?;
        Ok(u64::try_from(gone).unwrap_or(u64::MAX))
    }
}
