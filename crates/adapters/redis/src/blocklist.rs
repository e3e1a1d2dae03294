//! [`TokenBlocklist`] on Redis, shared by every instance: one key per
//! blocked token (`{prefix}bl:jti:{jti}`) and per blocked login session
//! (`{prefix}bl:fam:{family}`), each expiring on its own (`PXAT`) when the
//! tokens it refuses have expired anyway, so the blocklist never needs
//! pruning. A changed user's account-state version is `{prefix}uv:{user}`,
//! moved by a script to `max(version + 1, now)` in µs of Redis's clock, so
//! a flushed or evicted counter never gives a version out again; a request
//! reads it and the blocking keys in one round trip (a pipeline).
//!
//! On a Redis Cluster the three carry the user's hash tag
//! (`bl:jti:{<user>}:{jti}`, `bl:fam:{<user>}:{family}`, `uv:{<user>}`), so
//! they and the user's rate buckets share a slot, and one pipeline or
//! script reads them all (see `admission.rs`); on a single Redis the names
//! are as above, as they were before clusters were supported.

use async_trait::async_trait;
use confab_domain::{DomainError, FamilyId, OffsetDateTime, TokenId, UserId};
use confab_ports::{AccessClaims, Standing, TokenBlocklist};

use crate::pool::{RedisPool, unavailable};

/// Moves `KEYS[1]` to `max(version + 1, now)` (µs of Redis's clock).
const USER_CHANGED_SCRIPT: &str = r"-- confab user version v1
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local current = tonumber(redis.call('GET', KEYS[1]))
local next = now
if current and current + 1 > now then
  next = current + 1
end
redis.call('SET', KEYS[1], string.format('%d', next))
return next
";

/// The key that blocks `user`'s token `jti`.
pub(crate) fn token_key(pool: &RedisPool, user: UserId, jti: TokenId) -> String {
    blocking_key(pool, "jti", user, jti)
}

/// The key that blocks every token of `user`'s login session `family`.
pub(crate) fn family_key(pool: &RedisPool, user: UserId, family: FamilyId) -> String {
    blocking_key(pool, "fam", user, family)
}

/// `bl:{kind}:{id}`, or on a cluster `bl:{kind}:{<user>}:{id}`.
fn blocking_key(pool: &RedisPool, kind: &str, user: UserId, id: impl std::fmt::Display) -> String {
    if pool.is_cluster() {
        pool.key(&format!("bl:{kind}:{}:{id}", pool.tag(&user)))
    } else {
        pool.key(&format!("bl:{kind}:{id}"))
    }
}

/// The key of `user`'s account-state version.
pub(crate) fn user_key(pool: &RedisPool, user: UserId) -> String {
    pool.key(&format!("uv:{}", pool.tag(&user)))
}

/// Blocked token ids and login sessions in Redis.
#[derive(Debug, Clone)]
pub struct RedisBlocklist {
    pool: RedisPool,
}

impl RedisBlocklist {
    /// A blocklist on `pool`.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self { pool }
    }

    fn user_key(&self, user: UserId) -> String {
        user_key(&self.pool, user)
    }

    /// Stores `key` until `until` (as Unix ms: Redis expires it by its own
    /// clock). An `until` already past stores nothing: what it would refuse
    /// has expired.
    async fn block(&self, key: String, until: OffsetDateTime) -> Result<(), DomainError> {
        if until <= OffsetDateTime::now_utc() {
            return Ok(());
        }
        // Rounded up to the next whole millisecond: never a moment early.
        let until_ms =
            i64::try_from((until.unix_timestamp_nanos() + 999_999).div_euclid(1_000_000))
                .map_err(|_| DomainError::internal("a blocklist expiry out of range"))?;
        let mut conn = self.pool.connection()?;
        redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("PXAT")
            .arg(until_ms)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }
}

#[async_trait]
impl TokenBlocklist for RedisBlocklist {
    async fn block_token(
        &self,
        user: UserId,
        jti: TokenId,
        until: OffsetDateTime,
    ) -> Result<(), DomainError> {
        self.block(token_key(&self.pool, user, jti), until).await
    }

    async fn block_family(
        &self,
        user: UserId,
        family: FamilyId,
        until: OffsetDateTime,
    ) -> Result<(), DomainError> {
        self.block(family_key(&self.pool, user, family), until)
            .await
    }

    async fn standing(&self, claims: &AccessClaims) -> Result<Standing, DomainError> {
        let mut conn = self.pool.connection()?;
        // One round trip for all three: how many of the two blocking keys
        // exist, and the user's version.
        let (found, version): (u64, Option<u64>) = redis::pipe()
            .cmd("EXISTS")
            .arg(token_key(&self.pool, claims.user_id, claims.jti))
            .arg(family_key(&self.pool, claims.user_id, claims.family))
            .cmd("GET")
            .arg(self.user_key(claims.user_id))
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Standing {
            blocked: found > 0,
            user_version: version.unwrap_or(0),
        })
    }

    async fn user_changed(&self, user: UserId) -> Result<(), DomainError> {
        let mut conn = self.pool.connection()?;
        redis::Script::new(USER_CHANGED_SCRIPT)
            .key(self.user_key(user))
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }
}
