//! [`RefreshTokenStore`] over SQL.

use async_trait::async_trait;
use confab_domain::{DomainError, FamilyId, OffsetDateTime, TokenId, UserId};
use confab_ports::{NewRefreshToken, Redemption, RefreshTokenStore};
use diesel::prelude::*;

use super::SqlStore;
use crate::connection::run;
use crate::rows::micros;
use crate::schema::refresh_tokens as rt;

fn uuid(raw: &str) -> Result<uuid::Uuid, DomainError> {
    uuid::Uuid::parse_str(raw).map_err(DomainError::internal)
}

#[async_trait]
impl RefreshTokenStore for SqlStore {
    async fn insert(&self, token: NewRefreshToken) -> Result<(), DomainError> {
        run(&self.pool, move |conn| {
            diesel::insert_into(rt::table)
                .values((
                    rt::jti.eq(token.jti.to_string()),
                    rt::family_id.eq(token.family.to_string()),
                    rt::user_id.eq(token.user_id.to_string()),
                    rt::issued_at.eq(micros(token.issued_at)),
                    rt::expires_at.eq(micros(token.expires_at)),
                ))
                .execute(conn)
        })
        .await?;
        Ok(())
    }

    async fn redeem(&self, jti: TokenId, now: OffsetDateTime) -> Result<Redemption, DomainError> {
        let (jti, now) = (jti.to_string(), micros(now));
        let found = run(&self.pool, move |conn| {
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
            Some(Some((family, user, Some(_used)))) => Ok(Redemption::Reused {
                family: FamilyId::from_uuid(uuid(&family)?),
                user_id: UserId::from_uuid(uuid(&user)?),
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
        run(&self.pool, move |conn| {
            diesel::update(
                rt::table
                    .filter(rt::family_id.eq(family))
                    .filter(rt::revoked_at.is_null()),
            )
            .set(rt::revoked_at.eq(Some(now)))
            .execute(conn)
        })
        .await?;
        Ok(())
    }

    async fn revoke_user(&self, user: UserId, now: OffsetDateTime) -> Result<(), DomainError> {
        let (user, now) = (user.to_string(), micros(now));
        run(&self.pool, move |conn| {
            diesel::update(
                rt::table
                    .filter(rt::user_id.eq(user))
                    .filter(rt::revoked_at.is_null()),
            )
            .set(rt::revoked_at.eq(Some(now)))
            .execute(conn)
        })
        .await?;
        Ok(())
    }
}
