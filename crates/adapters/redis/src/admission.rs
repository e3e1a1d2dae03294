//! [`Admission`] on Redis: the blocklist's standing and the limiter's
//! charge in one script, so an authenticated request makes one round trip
//! before its route instead of two. The keys are the blocklist's and the
//! limiter's own (`bl:jti:…`, `bl:fam:…`, `uv:…`, `rl:v1:…`), so this and
//! [`RedisBlocklist`](crate::RedisBlocklist) / [`RedisLimiter`](crate::RedisLimiter)
//! see one state. On a Redis Cluster they all carry the user's hash tag,
//! so they share a slot (the cache version too: it is the user's
//! conversation list's), as a script's keys must.

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{AccessClaims, Admission, Admitted, RatePolicy};

use crate::blocklist::{family_key, token_key, user_key};
use crate::cache::version_key as cache_version_key;
use crate::limiter::{TTL_MARGIN_MS, bucket_key, decision, gcra, period_micros};
use crate::pool::{RedisPool, unavailable};

/// `KEYS`: the token's and its session's blocking keys, the user's
/// version, the caller's bucket and, optionally, a cache version counter
/// to read. `ARGV`: the bucket's period (µs), quota and TTL margin (ms), as
/// the limiter's script takes them.
///
/// Returns `{1, version}` for a refused token, charging nothing, and
/// `{0, version, allowed, remaining, reset_after µs, retry_after µs,
/// cache version}` otherwise, the cache version −1 when not asked or
/// absent (it is never created here: [`RedisCache`](crate::RedisCache)'s
/// version script creates counters, on Redis's clock).
const SCRIPT: &str = concat!(
    "-- confab admission v2\n",
    "if redis.replicate_commands then redis.replicate_commands() end\n",
    gcra!(),
    r"local version = redis.call('GET', KEYS[3]) or '0'
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return {1, version}
end
local d = gcra(KEYS[4], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
local cached = -1
if KEYS[5] then
  cached = tonumber(redis.call('GET', KEYS[5]) or '-1') or -1
end
return {0, version, d[1], d[2], d[3], d[4], cached}
",
);

/// Standing and rate charge in one script.
#[derive(Debug)]
pub struct RedisAdmission {
    pool: RedisPool,
    script: redis::Script,
}

impl RedisAdmission {
    /// Admission on `pool`; the script is hashed here, once.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self {
            pool,
            script: redis::Script::new(SCRIPT),
        }
    }
}

#[async_trait]
impl Admission for RedisAdmission {
    async fn admit(
        &self,
        claims: &AccessClaims,
        policy: &RatePolicy,
        key: &str,
        cache_key: Option<&str>,
    ) -> Result<Option<Admitted>, DomainError> {
        let period = period_micros(policy)?;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(token_key(&self.pool, claims.user_id, claims.jti))
            .key(family_key(&self.pool, claims.user_id, claims.family))
            .key(user_key(&self.pool, claims.user_id))
            .key(bucket_key(&self.pool, policy, key));
        if let Some(cache_key) = cache_key {
            invocation.key(cache_version_key(&self.pool, cache_key));
        }
        let mut conn = self.pool.connection()?;
        let reply: Vec<i64> = invocation
            .arg(period)
            .arg(policy.quota)
            .arg(TTL_MARGIN_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        match reply[..] {
            [1, _] => Ok(None),
            [
                0,
                version,
                allowed,
                remaining,
                reset_after,
                retry_after,
                cached,
            ] => Ok(Some(Admitted {
                user_version: u64::try_from(version).unwrap_or(0),
                decision: decision(policy, (allowed, remaining, reset_after, retry_after)),
                cache_version: u64::try_from(cached).ok(),
            })),
            _ => Err(DomainError::internal(
                "the admission script answered an unexpected shape",
            )),
        }
    }
}
