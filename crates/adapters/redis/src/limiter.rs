//! [`RateLimiter`] on Redis: the same GCRA token buckets as the in-process
//! limiter (governor with `Quota::with_period(window / quota)
//! .allow_burst(quota)`), shared by every instance on one Redis.
//!
//! Each check is one Lua script, run atomically by Redis with `EVALSHA`
//! (loaded again by the client when Redis answers `NOSCRIPT`, e.g. after a
//! restart or a `SCRIPT FLUSH`). The script reads the time from Redis
//! (`TIME`), never from the instance, so instances whose clocks disagree
//! still share one consistent bucket. Allowed, `remaining` and the refusal's
//! `retry_after` and `reset_after` are governor's; an allowed check's
//! `reset_after` is the exact time until the bucket is full (the in-process
//! limiter rounds it up to whole periods).
//!
//! A bucket is one key holding its *theoretical arrival time* (TAT, in
//! microseconds of Redis's clock): `{prefix}rl:v1:{policy}:{key}`. It
//! expires (a second after) when the bucket is full again, so idle keys
//! cost nothing. Under an eviction policy (`allkeys-*`, or `volatile-*`
//! since the keys carry a TTL) Redis may drop a key before that: that only
//! resets that one bucket to full, it never blocks anyone.
//!
//! The script and its keys are versioned (`-- confab rate limit v1`, the
//! `v1` in the key). A change to the stored format or the algorithm gets a
//! new version, so during a rolling deploy old and new instances each run
//! their own script on their own keys side by side, instead of misreading
//! each other's state.

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{RateDecision, RateLimiter, RatePolicy};

use crate::pool::{RedisPool, unavailable};

/// The GCRA step's arithmetic as a Lua function `gcra_next(tat, now,
/// period, quota)`: the charge of a bucket whose stored TAT is `tat`
/// (`nil` when it has none) at `now` (µs of Redis's clock). Returns the
/// TAT to store (`nil` when refused: nothing is stored) and the decision
/// `{allowed (1/0), remaining, reset_after µs, retry_after µs}`. It writes
/// nothing, for the admission's script, which reads many buckets at once
/// and writes each once.
macro_rules! gcra_next {
    () => {
        r"local function gcra_next(tat, now, period, quota)
  local capacity = period * quota
  if tat == nil or tat < now then
    tat = now
  end
  local new_tat = tat + period
  local ahead = new_tat - now
  if ahead > capacity then
    return nil, {0, 0, tat - now, ahead - capacity}
  end
  return new_tat, {1, math.floor((capacity - ahead) / period), ahead, 0}
end
"
    };
}
pub(crate) use gcra_next;

/// A Lua function `gcra_ttl(new_tat, now, margin_ms)`: the TTL (ms, as
/// text) of a bucket whose TAT is `new_tat`: it outlives the moment the
/// bucket is full again by the margin.
macro_rules! gcra_ttl {
    () => {
        r"local function gcra_ttl(new_tat, now, margin_ms)
  return string.format('%d', math.ceil((new_tat - now) / 1000) + margin_ms)
end
"
    };
}
pub(crate) use gcra_ttl;

/// The GCRA step as a Lua function `gcra(key, period, quota, margin_ms)`,
/// reading the bucket and Redis's clock itself and storing the new TAT.
macro_rules! gcra {
    () => {
        concat!(
            gcra_next!(),
            gcra_ttl!(),
            r"local function gcra(key, period, quota, margin_ms)
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  local new_tat, decision = gcra_next(tonumber(redis.call('GET', key)), now, period, quota)
  if new_tat then
    redis.call('SET', key, string.format('%d', new_tat), 'PX', gcra_ttl(new_tat, now, margin_ms))
  end
  return decision
end
"
        )
    };
}

/// The GCRA step, atomically on Redis's clock.
///
/// `KEYS[1]`: the bucket. `ARGV[1]`: the period (window / quota) in µs.
/// `ARGV[2]`: the quota (bucket size). `ARGV[3]`: how long (ms) a key
/// outlives the moment its bucket is full again.
///
/// Returns `{allowed (1/0), remaining, reset_after µs, retry_after µs}`.
///
/// Numbers are formatted with `%d` before they are stored or sent: Lua's
/// `tostring` would print a 16-digit microsecond time in exponent form and
/// lose precision.
const SCRIPT: &str = concat!(
    "-- confab rate limit v1\n",
    "if redis.replicate_commands then redis.replicate_commands() end\n",
    gcra!(),
    "return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))\n",
);

/// How long a bucket's key outlives the moment it is full again (ms): the
/// key must never expire while its state still matters.
pub(crate) const TTL_MARGIN_MS: u64 = 1_000;

/// Token buckets in Redis, one key per policy and caller key, shared by
/// every instance on the same Redis and key prefix.
#[derive(Debug)]
pub struct RedisLimiter {
    pool: RedisPool,
    script: redis::Script,
}

impl RedisLimiter {
    /// A limiter on `pool`; the script is hashed here, once.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self {
            pool,
            script: redis::Script::new(SCRIPT),
        }
    }

    /// The SHA1 of the script Redis runs (`EVALSHA`), e.g. to see whether
    /// Redis has it with `SCRIPT EXISTS`.
    #[must_use]
    pub fn script_hash(&self) -> &str {
        self.script.get_hash()
    }
}

/// The period (window / quota) in whole microseconds, at least one; a zero
/// quota or window is refused, as the in-process limiter refuses them.
pub(crate) fn period_micros(policy: &RatePolicy) -> Result<u64, DomainError> {
    if policy.quota == 0 {
        return Err(DomainError::internal(format!(
            "rate policy {} has a zero quota",
            policy.name
        )));
    }
    if policy.window.is_zero() {
        return Err(DomainError::internal(format!(
            "rate policy {} has a zero window",
            policy.name
        )));
    }
    // The script counts in whole microseconds: a quota above one a
    // microsecond (60,000,000 a minute) acts as one a microsecond, never as
    // an error on every request.
    let period = (policy.window.as_micros() / u128::from(policy.quota)).max(1);
    // Lua numbers are doubles: the bucket's capacity (period × quota, about
    // the window) must stay exact, far below 2^53 µs (285 years).
    if policy.window.as_micros() > 1 << 50 {
        return Err(DomainError::internal(format!(
            "rate policy {} has a window too long",
            policy.name
        )));
    }
    u64::try_from(period).map_err(|_| {
        DomainError::internal(format!("rate policy {} has a period too long", policy.name))
    })
}

/// The key of `key`'s bucket under `policy`.
pub(crate) fn bucket_key(pool: &RedisPool, policy: &RatePolicy, key: &str) -> String {
    pool.key(&format!("rl:v1:{}:{}", policy.name, pool.user_scoped(key)))
}

/// The decision of a `gcra` result, for `policy`.
pub(crate) fn decision(
    policy: &RatePolicy,
    (allowed, remaining, reset_after, retry_after): (i64, i64, i64, i64),
) -> RateDecision {
    RateDecision {
        allowed: allowed == 1,
        remaining: u32::try_from(remaining.max(0))
            .unwrap_or(policy.quota)
            .min(policy.quota),
        reset_after: micros(reset_after),
        retry_after: micros(retry_after),
    }
}

/// A duration the script returned in µs (never negative).
fn micros(value: i64) -> Duration {
    Duration::from_micros(u64::try_from(value).unwrap_or(0))
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, policy: &RatePolicy, key: &str) -> Result<RateDecision, DomainError> {
        let period = period_micros(policy)?;
        let bucket = bucket_key(&self.pool, policy, key);
        let mut conn = self.pool.connection()?;
        let result: (i64, i64, i64, i64) = self
            .script
            .key(bucket)
            .arg(period)
            .arg(policy.quota)
            .arg(TTL_MARGIN_MS)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(decision(policy, result))
    }
}
