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
//!   in-process cache does; any number of keys in one call (a write bumps
//!   the owner's list and the conversation's history in one round trip;
//!   on a Redis Cluster, one call per key, sent at once).
//!
//! A counter therefore never runs ahead of Redis's clock by more than the
//! bumps made within one microsecond (none in practice: each is a round
//! trip), so a counter created again after a loss starts above every number
//! its predecessor handed out. Counters expire [`VERSION_TTL`] after they
//! were created or last bumped, which bounds the memory they take;
//! correctness doesn't depend on that TTL, only on Redis's clock not
//! stepping back.
//!
//! # A bump that fails
//!
//! A bump that fails (Redis down or too slow) would leave entries of the
//! old version readable until their TTL once Redis answers again. So a
//! failed bump is kept and made good: a background task tries it again
//! every [`BUMP_RETRY`] until it succeeds, and this instance's next
//! version read of that key makes it first and uses its result. Other
//! instances can read the stale entry only while Redis is unreachable from
//! this one and reachable from them, and at most [`BUMP_RETRY`] after.

mod encoding;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{Cache, CachedValue};

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

/// Moves each of `KEYS` to `max(counter + 1, now)`, or to `now + 1` when
/// absent (µs of Redis's clock), and returns the last. `ARGV[1]`: the
/// counters' TTL in ms, restarted.
const BUMP_SCRIPT: &str = r"-- confab cache bump v2
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local bumped = '0'
for _, key in ipairs(KEYS) do
  local current = tonumber(redis.call('GET', key))
  local next = now + 1
  if current then
    next = math.max(current + 1, now)
  end
  bumped = string.format('%d', next)
  redis.call('SET', key, bumped, 'PX', ARGV[1])
end
return bumped
";

/// How often failed bumps are tried again.
const BUMP_RETRY: Duration = Duration::from_millis(500);

/// The cache on Redis.
#[derive(Debug)]
pub struct RedisCache {
    pool: RedisPool,
    version: redis::Script,
    bumps: Arc<Bumps>,
}

/// Bumps, and the version keys whose bump failed: tried again in the
/// background until they succeed, and before the next version read of the
/// key on this instance (see the module docs).
#[derive(Debug)]
struct Bumps {
    pool: RedisPool,
    script: redis::Script,
    /// Each key whose bump failed, with the failure's number: a bump that
    /// succeeds clears only the failures numbered before it started (a
    /// failure after that may be of a write made after it).
    pending: Mutex<HashMap<String, u64>>,
    /// Numbers the failures.
    failures: AtomicU64,
    retrying: AtomicBool,
}

impl Bumps {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bumps `keys` (version keys) in one script (on a cluster, one per
    /// key, all at once: a script's keys must share a slot, and these are
    /// different owners'); the last new version.
    async fn run(&self, keys: &[String]) -> Result<u64, DomainError> {
        let started = self.failures.load(Ordering::Acquire);
        let bumped = if self.pool.is_cluster() && keys.len() > 1 {
            let each = keys
                .iter()
                .map(|key| self.invoke(std::slice::from_ref(key)));
            futures_util::future::try_join_all(each)
                .await
                .map(|versions| versions.last().copied().unwrap_or(0))
        } else {
            self.invoke(keys).await
        };
        if bumped.is_ok() {
            let mut pending = self.pending();
            for key in keys {
                if pending.get(key).is_some_and(|failure| *failure < started) {
                    pending.remove(key);
                }
            }
        }
        bumped
    }

    /// The bump script over `keys`.
    async fn invoke(&self, keys: &[String]) -> Result<u64, DomainError> {
        let mut invocation = self.script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(millis(VERSION_TTL));
        let mut conn = self.pool.connection()?;
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// Bumps `keys`; on failure keeps them for the retry task.
    async fn bump(self: &Arc<Self>, keys: &[String]) -> Result<(), DomainError> {
        let bumped = self.run(keys).await;
        if bumped.is_err() {
            let failure = self.failures.fetch_add(1, Ordering::AcqRel);
            self.pending()
                .extend(keys.iter().map(|key| (key.clone(), failure)));
            if !self.retrying.swap(true, Ordering::AcqRel) {
                self.pool.spawn(Self::retry(Arc::downgrade(self)));
            }
        }
        bumped.map(drop)
    }

    /// Tries the pending bumps again until none is left (or the cache is
    /// gone).
    async fn retry(bumps: Weak<Self>) {
        loop {
            tokio::time::sleep(BUMP_RETRY).await;
            let Some(bumps) = bumps.upgrade() else {
                return;
            };
            let keys: Vec<String> = bumps.pending().keys().cloned().collect();
            if !keys.is_empty() && bumps.run(&keys).await.is_ok() {
                tracing::info!(keys = keys.len(), "failed cache invalidations made good");
            }
            let pending = bumps.pending();
            if pending.is_empty() {
                // Under the lock: a failure that adds a key after this sees
                // `retrying` false and starts a new task.
                bumps.retrying.store(false, Ordering::Release);
                return;
            }
        }
    }
}

impl RedisCache {
    /// A cache on `pool`; the scripts are hashed here, once.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self {
            bumps: Arc::new(Bumps {
                pool: pool.clone(),
                script: redis::Script::new(BUMP_SCRIPT),
                pending: Mutex::new(HashMap::new()),
                failures: AtomicU64::new(1),
                retrying: AtomicBool::new(false),
            }),
            pool,
            version: redis::Script::new(VERSION_SCRIPT),
        }
    }

    fn value_key(&self, key: &str) -> String {
        self.pool.key(&format!("cache:{key}"))
    }

    fn version_key(&self, key: &str) -> String {
        version_key(&self.pool, key)
    }
}

/// The version counter of the cache key `key` on `pool`.
pub(crate) fn version_key(pool: &RedisPool, key: &str) -> String {
    pool.key(&format!("ver:{}", pool.user_scoped(key)))
}

/// `duration` in whole milliseconds, rounded up.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<CachedValue>, DomainError> {
        let mut conn = self.pool.connection()?;
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
        let mut conn = self.pool.connection()?;
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
        let key = self.version_key(key);
        // A bump that failed here is made before the key is read again: its
        // result is the version to use.
        if self.bumps.pending().contains_key(&key) {
            return self.bumps.run(std::slice::from_ref(&key)).await;
        }
        let mut conn = self.pool.connection()?;
        self.version
            .key(key)
            .arg(millis(VERSION_TTL))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }

    async fn version_seen(&self, key: &str, seen: u64) -> Result<u64, DomainError> {
        if self.bumps.pending().contains_key(&self.version_key(key)) {
            return self.version(key).await;
        }
        Ok(seen)
    }

    async fn bump(&self, key: &str) -> Result<(), DomainError> {
        self.bumps.bump(&[self.version_key(key)]).await
    }

    async fn bump_all(&self, keys: &[String]) -> Result<(), DomainError> {
        let keys: Vec<String> = keys.iter().map(|key| self.version_key(key)).collect();
        self.bumps.bump(&keys).await
    }
}
