//! [`RefreshTokenStore`] over SQL.
//!
//! A family's row is the lock of its session: an insert first touches it
//! (and gives up if it is revoked), and a revocation first marks it. On
//! PostgreSQL the second of two such transactions waits for the first to
//! commit and then sees its rows; SQLite runs writers one at a time. So a
//! refresh racing a revocation either lands before it (and is revoked with
//! the family) or sees the revocation and is refused.

use async_trait::async_trait;
use confab_domain::{DomainError, FamilyId, OffsetDateTime, TokenId, UserId};
use confab_ports::{NewRefreshToken, Redemption, RefreshTokenStore, SessionOrigin, SessionRecord};
use diesel::prelude::*;

use super::SqlStore;
use crate::connection::AnyConnection;
use crate::rows::{from_micros, micros};
use crate::schema::{refresh_families as rf, refresh_tokens as rt};

fn uuid(raw: &str) -> Result<uuid::Uuid, DomainError> {
    uuid::Uuid::parse_str(raw).map_err(DomainError::internal)
}

/// Marks the families selected by `filter` revoked, then their tokens.
fn revoke(
    conn: &mut AnyConnection,
    families: Vec<String>,
    now: i64,
) -> Result<(), diesel::result::Error> {
    diesel::update(
        rf::table
            .filter(rf::id.eq_any(&families))
            .filter(rf::revoked_at.is_null()),
    )
    .set(rf::revoked_at.eq(Some(now)))
    .execute(conn)?;
    diesel::update(
        rt::table
            .filter(rt::family_id.eq_any(&families))
            .filter(rt::revoked_at.is_null()),
    )
    .set(rt::revoked_at.eq(Some(now)))
    .execute(conn)?;
    Ok(())
}

#[async_trait]
impl RefreshTokenStore for SqlStore {
    async fn open_family(
        &self,
        family: FamilyId,
        user: UserId,
        at: OffsetDateTime,
        origin: SessionOrigin,
    ) -> Result<(), DomainError> {
        let at = micros(at);
        self.db
            .write(move |conn| {
                diesel::insert_into(rf::table)
                    .values((
                        rf::id.eq(family.to_string()),
                        rf::user_id.eq(user.to_string()),
                        rf::created_at.eq(at),
                        rf::user_agent.eq(origin.user_agent.as_deref()),
                        rf::client_addr.eq(origin.client.as_deref()),
                        rf::last_used_at.eq(Some(at)),
                        // Until its first token is recorded.
                        rf::expires_at.eq(Some(at)),
                    ))
                    .execute(conn)
            })
            .await?;
        Ok(())
    }

    async fn sessions(
        &self,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionRecord>, DomainError> {
        let (user, now) = (user.to_string(), micros(now));
        type Row = (
            String,
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Row> = self
            .db
            .read(move |conn| {
                // A family an older release opened (during a rolling
                // deploy) has no expiry yet: live until it is refreshed.
                rf::table
                    .filter(rf::user_id.eq(&user))
                    .filter(rf::revoked_at.is_null())
                    .filter(rf::expires_at.is_null().or(rf::expires_at.gt(now)))
                    .select((
                        rf::id,
                        rf::created_at,
                        rf::last_used_at,
                        rf::expires_at,
                        rf::user_agent,
                        rf::client_addr,
                    ))
                    .load(conn)
            })
            .await?;
        let mut sessions = rows
            .into_iter()
            .map(|(id, created, used, expires, user_agent, client)| {
                Ok(SessionRecord {
                    id: FamilyId::from_uuid(uuid(&id)?),
                    created_at: from_micros(created)?,
                    last_used_at: from_micros(used.unwrap_or(created))?,
                    expires_at: from_micros(expires.unwrap_or(created))?,
                    origin: SessionOrigin { user_agent, client },
                })
            })
            .collect::<Result<Vec<_>, DomainError>>()?;
        // Ordered here: the backends sort a missing last use differently.
        sessions.sort_by_key(|s| std::cmp::Reverse((s.last_used_at, s.id)));
        Ok(sessions)
    }

    async fn revoke_session(
        &self,
        user: UserId,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        let (user, family, now) = (user.to_string(), family.to_string(), micros(now));
        self.db
            .write(move |conn| {
                let live = rf::table
                    .filter(rf::id.eq(&family))
                    .filter(rf::user_id.eq(&user))
                    .filter(rf::revoked_at.is_null())
                    .filter(rf::expires_at.is_null().or(rf::expires_at.gt(now)))
                    .select(rf::id)
                    .first::<String>(conn)
                    .optional()?;
                if live.is_none() {
                    return Ok(false);
                }
                revoke(conn, vec![family.clone()], now)?;
                Ok(true)
            })
            .await
    }

    async fn sweep(&self, ended_before: OffsetDateTime) -> Result<u64, DomainError> {
        let cutoff = micros(ended_before);
        self.db
            .write(move |conn| {
                // The families first (their tokens go with them, by the
                // foreign key's cascade): the lock order of a revocation,
                // so a sweep and a revocation never wait on each other.
                let families = diesel::delete(
                    rf::table.filter(rf::revoked_at.lt(cutoff).or(rf::expires_at.lt(cutoff))),
                )
                .execute(conn)?;
                diesel::delete(rt::table.filter(rt::expires_at.lt(cutoff))).execute(conn)?;
                Ok(u64::try_from(families).unwrap_or(u64::MAX))
            })
            .await
    }

    async fn insert(&self, token: NewRefreshToken) -> Result<bool, DomainError> {
        self.db
            .write(move |conn| {
                let family = token.family.to_string();
                // Touching the row takes its lock (PostgreSQL) or the write
                // lock (SQLite) before the revocation check.
                // The session was used now, and lasts as long as this token.
                let live = diesel::update(
                    rf::table
                        .filter(rf::id.eq(&family))
                        .filter(rf::revoked_at.is_null()),
                )
                .set((
                    rf::last_used_at.eq(Some(micros(token.issued_at))),
                    rf::expires_at.eq(Some(micros(token.expires_at))),
                ))
                .execute(conn)?;
                if live == 0 {
                    return Ok(false);
                }
                diesel::insert_into(rt::table)
                    .values((
                        rt::jti.eq(token.jti.to_string()),
                        rt::family_id.eq(family),
                        rt::user_id.eq(token.user_id.to_string()),
                        rt::issued_at.eq(micros(token.issued_at)),
                        rt::expires_at.eq(micros(token.expires_at)),
                    ))
                    .execute(conn)?;
                Ok(true)
            })
            .await
    }

    async fn redeem(&self, jti: TokenId, now: OffsetDateTime) -> Result<Redemption, DomainError> {
        let (jti, now) = (jti.to_string(), micros(now));
        let found = self
            .db
            .write(move |conn| {
                // One conditional UPDATE: of two concurrent redemptions, the
                // database lets exactly one change the row.
                let redeemed = diesel::update(
                    rt::table
                        .filter(rt::jti.eq(&jti))
                        .filter(rt::used_at.is_null())
                        .filter(rt::revoked_at.is_null())
                        .filter(rt::expires_at.gt(now)),
                )
                .set(rt::used_at.eq(Some(now)))
                .execute(conn)?;
                if redeemed == 1 {
                    return Ok(None);
                }
                rt::table
                    .filter(rt::jti.eq(&jti))
                    .select((rt::family_id, rt::user_id, rt::used_at))
                    .first::<(String, String, Option<i64>)>(conn)
                    .optional()
                    .map(Some)
            })
            .await?;
        match found {
            None => Ok(Redemption::Redeemed),
            Some(Some((family, user, Some(used)))) => Ok(Redemption::Reused {
                family: FamilyId::from_uuid(uuid(&family)?),
                user_id: UserId::from_uuid(uuid(&user)?),
                used_at: from_micros(used)?,
            }),
            Some(_) => Ok(Redemption::Rejected),
        }
    }

    async fn revoke_family(
        &self,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<(), DomainError> {
        let (family, now) = (family.to_string(), micros(now));
        self.db
            .write(move |conn| revoke(conn, vec![family.clone()], now))
            .await
    }

    async fn revoke_user(
        &self,
        user: UserId,
        except: Option<FamilyId>,
        now: OffsetDateTime,
    ) -> Result<Vec<FamilyId>, DomainError> {
        let (user, now) = (user.to_string(), micros(now));
        // No session has the nil id: with no exception, every one goes.
        let kept = except.map_or_else(|| uuid::Uuid::nil().to_string(), |f| f.to_string());
        let live: Vec<String> = self
            .db
            .write(move |conn| {
                // By the user's id, never a list of ids bound one by one:
                // a user with tens of thousands of sessions would pass the
                // database's limit of bound parameters.
                // The families first, then their tokens: the lock order
                // (module docs). What this revoked is read back by its
                // revocation time, after the update: a family committed
                // meanwhile is either revoked and listed, or not revoked.
                diesel::update(
                    rf::table
                        .filter(rf::user_id.eq(&user))
                        .filter(rf::revoked_at.is_null())
                        .filter(rf::id.ne(&kept)),
                )
                .set(rf::revoked_at.eq(Some(now)))
                .execute(conn)?;
                let live: Vec<String> = rf::table
                    .filter(rf::user_id.eq(&user))
                    .filter(rf::revoked_at.eq(now))
                    .filter(rf::id.ne(&kept))
                    .select(rf::id)
                    .load(conn)?;
                let of_user = rf::table
                    .filter(rf::user_id.eq(&user))
                    .filter(rf::id.ne(&kept))
                    .select(rf::id);
                diesel::update(
                    rt::table
                        .filter(rt::family_id.eq_any(of_user))
                        .filter(rt::revoked_at.is_null()),
                )
                .set(rt::revoked_at.eq(Some(now)))
                .execute(conn)?;
                Ok(live)
            })
            .await?;
        live.iter()
            .map(|id| {
                id.parse::<FamilyId>()
                    .map_err(|_| DomainError::internal("a stored session id does not parse"))
            })
            .collect()
    }
}
