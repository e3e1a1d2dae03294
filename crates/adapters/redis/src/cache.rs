//! [`Cache`] on Redis, shared by every instance on one Redis and key
//! prefix: what one instance stores, another finds, and a bump on one makes
//! the older entries unreachable on all of them at once.
//!
//! Keys (under the pool's prefix):
//!
//! - `cache:{key}`: a value, as versioned JSON (see [`encoding`]), stored
//!   with `SET … PX` for its TTL. An entry that does not decode (another
//!   format version during a rolling deploy, or garbage) is a miss, logged
//!   at debug, never an error; it is left to expire, so an older and a
//!   newer instance never fight over it.
//! - `ver:{key}`: a version counter, a decimal number of microseconds.
//!
//! # Versions
//!
//! A reader takes the version, reads the database and stores its result
//! under a key that includes the version; a writer changes the database and
//! then bumps. So a version number must never be handed out twice, even
//! after its counter is gone (expired, evicted under `maxmemory`, deleted
//! by hand): otherwise an entry stored before a bump could be found again.
//!
//! Counters live on Redis's clock, in one atomic script each (`EVALSHA`;
//! loaded again by the client on `NOSCRIPT`), never on the instances'
//! clocks, which may disagree:
//!
//! - `version`: the counter if present; else it is created as Redis's time
//!   (`TIME`) in µs.
//! - `bump`: `max(counter + 1, now)` if present, else `now + 1`, as the
//!   in-process cache does.
//!
//! A counter therefore never runs ahead of Redis's clock by more than the
//! bumps made within one microsecond (none in practice: each is a round
//! trip), so a counter created again after a loss starts above every number
//! its predecessor handed out. Counters expire [`VERSION_TTL`] after they
//! were created or last bumped, which bounds the memory they take;
//! correctness doesn't depend on that TTL, only on Redis's clock not
//! stepping back.

mod encoding;

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{Cache, CachedValue};
use deadpool_redis::redis;

use crate::pool::{RedisPool, unavailable};

/// The longest TTL honoured, as in the in-process cache; longer ones are
/// cut to it.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// How long a version counter outlives its creation or its last bump: far
/// beyond any cache TTL the service uses.
const VERSION_TTL: Duration = Duration::from_secs(86_400);

/// The current version of `KEYS[1]`, created as Redis's time in µs when
/// absent. `ARGV[1]`: the counter's TTL in ms.
///
/// Numbers are formatted with `%d`: Lua's `tostring` would print a 16-digit
/// microsecond time in exponent form. Lua numbers are doubles, exact far
/// beyond these (2^53 µs is the year 2255).
const VERSION_SCRIPT: &str = r"-- confab cache version v1
if redis.replicate_commands then redis.replicate_commands() end
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
local time = redis.call('TIME')
local now = string.format('%d', tonumber(time[1]) * 1000000 + tonumber(time[2]))
redis.call('SET', KEYS[1], now, 'PX', ARGV[1])
return now
";

/// Moves `KEYS[1]` to `max(counter + 1, now)`, or to `now + 1` when absent
/// (µs of Redis's clock), and returns it. `ARGV[1]`: the counter's TTL in
/// ms, restarted.
const BUMP_SCRIPT: &str = r"-- confab cache bump v1
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local current = tonumber(redis.call('GET', KEYS[1]))
local bumped = now + 1
if current then
  bumped = math.max(current + 1, now)
end
bumped = string.format('%d', bumped)
redis.call('SET', KEYS[1], bumped, 'PX', ARGV[1])
return bumped
";

/// The cache on Redis.
#[derive(Debug)]
pub struct RedisCache {
    pool: RedisPool,
    version: redis::Script,
    bump: redis::Script,
}

impl RedisCache {
    /// A cache on `pool`; the scripts are hashed here, once.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self {
            pool,
            version: redis::Script::new(VERSION_SCRIPT),
            bump: redis::Script::new(BUMP_SCRIPT),
        }
    }

    fn value_key(&self, key: &str) -> String {
        self.pool.key(&format!("cache:{key}"))
    }

    fn version_key(&self, key: &str) -> String {
        self.pool.key(&format!("ver:{key}"))
    }
}

/// `duration` in whole milliseconds, rounded up.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<CachedValue>, DomainError> {
        let mut conn = self.pool.connection().await?;
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.value_key(key))
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        match encoding::decode(&bytes) {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                tracing::debug!(key, %error, "unreadable cache entry, treated as a miss");
                Ok(None)
            }
        }
    }

    async fn put(&self, key: &str, value: CachedValue, ttl: Duration) -> Result<(), DomainError> {
        let ttl = ttl.min(MAX_TTL);
        if ttl.is_zero() {
            // The value would never be found.
            return Ok(());
        }
        let bytes = encoding::encode(&value).map_err(DomainError::internal)?;
        let mut conn = self.pool.connection().await?;
        redis::cmd("SET")
            .arg(self.value_key(key))
            .arg(bytes)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }

    async fn version(&self, key: &str) -> Result<u64, DomainError> {
        let mut conn = self.pool.connection().await?;
        self.version
            .key(self.version_key(key))
            .arg(millis(VERSION_TTL))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }

    async fn bump(&self, key: &str) -> Result<(), DomainError> {
        let mut conn = self.pool.connection().await?;
        self.bump
            .key(self.version_key(key))
            .arg(millis(VERSION_TTL))
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }
}
