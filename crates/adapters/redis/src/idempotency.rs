//! [`IdempotencyStore`] on Redis, shared by every instance: a retry that
//! lands on another instance still finds the first request's claim or
//! outcome.
//!
//! A key is one hash, `{prefix}idem:v2:{owner}:k:{key}` (the owner in
//! braces: a Redis Cluster hash tag, so an owner's keys share one slot):
//!
//! - `fp`: the fingerprint of the request that claimed it;
//! - `state`: `running` while that request runs, `done` once it completed;
//! - `outcome` (once `done`): the [`StoredOutcome`] as JSON (a private,
//!   versioned-by-key format: the status, the headers as `[name, value]`
//!   pairs, the body in standard base64; or the conversation and message
//!   ids as strings, read back with the domain's parsers).
//!
//! Beside them, each owner has one sorted set, `{prefix}idem:v2:{owner}:keys`:
//! their keys, each scored with the millisecond (Redis's clock) its hash
//! expires at. A claim of a new key first drops the members that expired,
//! then refuses the key when as many remain as one owner may hold
//! ([`Claim::OwnerFull`], with the time until the first lapses). The set
//! itself expires with its longest-lived member.
//!
//! The hash expires on its own (`PEXPIRE`): after the claim's
//! `in_flight_ttl` while running (its instance died: the key is free
//! again), after the outcome's `ttl` once done. Each operation is one Lua
//! script over the key's hash and its owner's set, run atomically by Redis
//! with `EVALSHA` (loaded again by the client when Redis answers
//! `NOSCRIPT`), so two instances claiming one key at once never both win,
//! and a completion or a release only ever touches the claim it belongs
//! to: the same fingerprint, still `running`.
//!
//! # What a key costs in Redis
//!
//! Measured with `MEMORY USAGE` on Redis 7 (this crate's
//! `tests/idempotency.rs` holds it to a bound): with a 36-character key, a
//! completed send (the answer's ids) takes about 600 bytes, a completed
//! `PATCH` of a conversation with a 400-byte body about 1.25 KB, and each
//! key adds about 50 bytes to its owner's set. With the default cap of
//! 1,000 keys per user, one user holds about 0.6 to 1.3 MB at most.
//!
//! A claim is identified by its fingerprint alone (the port has no claim
//! token): when a claim lapses and a retry of the *same* request claims
//! the key again, the first holder's late `complete` is taken as that
//! request's outcome (the retry's own `complete` then does nothing). That
//! is still the same request's outcome; a claim taken by another request
//! (another fingerprint) is never touched.
//!
//! An outcome that is stored but does not decode is
//! [`DomainError::Internal`], never a miss: a miss would let the retry run
//! the request a second time.
//!
//! The scripts and the keys are versioned (`v2`): a change to the stored
//! format gets a new version, so during a rolling deploy old and new
//! instances never misread each other's entries (a retry that crosses from
//! an old instance to a new one in that window is not recognised).

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use confab_domain::{ConversationId, DomainError, MessageId};
use confab_ports::{Claim, IdempotencyStore, StoredOutcome};
use serde::{Deserialize, Serialize};

use crate::pool::{RedisPool, unavailable};

/// Redis's clock in milliseconds, as `now`, then a helper that keeps an
/// owner's set alive at least `ms` more.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function at(ms)
  return string.format('%d', now + tonumber(ms))
end
local function keep_set(ms)
  if redis.call('PTTL', KEYS[2]) < tonumber(ms) then
    redis.call('PEXPIRE', KEYS[2], ms)
  end
end
";

/// Claims the key hash `KEYS[1]` (of the owner whose set is `KEYS[2]`, the
/// member `ARGV[4]`) for the fingerprint `ARGV[1]`, for `ARGV[2]` ms, if
/// the key is free and the owner holds fewer than `ARGV[3]` keys.
///
/// Returns `{tag, value}`: `claimed`, `mismatch`, `inflight` (with an
/// empty value), `done` with the stored outcome (empty if missing, which
/// then fails to decode), or `full` with the milliseconds until the
/// owner's first key lapses.
const CLAIM: &str = r"-- confab idempotency claim v2
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {'full', string.format('%d', tonumber(first[2]) - now)}
  end
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'running')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], at(ARGV[2]), ARGV[4])
  keep_set(ARGV[2])
  return {'claimed', ''}
end
local fields = redis.call('HMGET', KEYS[1], 'fp', 'state', 'outcome')
if fields[1] ~= ARGV[1] then
  return {'mismatch', ''}
end
if fields[2] == 'done' then
  return {'done', fields[3] or ''}
end
return {'inflight', ''}
";

/// Stores the outcome `ARGV[2]` in `KEYS[1]`, kept for `ARGV[3]` ms (and
/// the member `ARGV[4]` of the owner's set `KEYS[2]` with it), if the
/// fingerprint `ARGV[1]`'s claim still holds it, running.
///
/// Returns 1 if stored, 0 if the claim is gone.
const COMPLETE: &str = r"-- confab idempotency complete v2
local fields = redis.call('HMGET', KEYS[1], 'fp', 'state')
if fields[1] == ARGV[1] and fields[2] == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], at(ARGV[3]), ARGV[4])
  keep_set(ARGV[3])
  return 1
end
return 0
";

/// Deletes `KEYS[1]` (and the member `ARGV[2]` of its owner's set
/// `KEYS[2]`) if the fingerprint `ARGV[1]`'s claim still holds it,
/// running.
///
/// Returns 1 if deleted, 0 if the claim is gone or completed.
const RELEASE: &str = r"-- confab idempotency release v2
local fields = redis.call('HMGET', KEYS[1], 'fp', 'state')
if fields[1] == ARGV[1] and fields[2] == 'running' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// The longest TTL honoured; longer ones are cut to it.
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);

/// A TTL in whole milliseconds for `PEXPIRE`: rounded up, and at least one
/// (`PEXPIRE 0` would delete the key at once).
fn millis(ttl: Duration) -> u64 {
    let ms = ttl.min(MAX_TTL).as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// A [`StoredOutcome`] as stored (JSON).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum OutcomeDto {
    Response {
        status: u16,
        /// `[name, value]` pairs, in order.
        headers: Vec<(String, String)>,
        /// Standard base64 (with padding).
        body: String,
    },
    Stream {
        conversation: String,
        message: String,
    },
}

/// `outcome` as stored.
fn encode(outcome: &StoredOutcome) -> Result<String, DomainError> {
    let dto = match outcome {
        StoredOutcome::Response {
            status,
            headers,
            body,
        } => OutcomeDto::Response {
            status: *status,
            headers: headers.clone(),
            body: BASE64.encode(body),
        },
        StoredOutcome::Stream {
            conversation,
            message,
        } => OutcomeDto::Stream {
            conversation: conversation.to_string(),
            message: message.as_str().to_owned(),
        },
    };
    serde_json::to_string(&dto)
        .map_err(|e| DomainError::internal(format!("idempotency: cannot encode an outcome: {e}")))
}

/// A stored outcome read back. The errors never quote the stored value.
fn decode(stored: &str) -> Result<StoredOutcome, DomainError> {
    let corrupt = |what: &str| {
        DomainError::internal(format!(
            "idempotency: a stored outcome does not decode: {what}"
        ))
    };
    let dto: OutcomeDto = serde_json::from_str(stored).map_err(|e| {
        corrupt(&format!(
            "{:?} JSON error at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    Ok(match dto {
        OutcomeDto::Response {
            status,
            headers,
            body,
        } => StoredOutcome::Response {
            status,
            headers,
            body: BASE64
                .decode(body)
                .map_err(|e| corrupt(&format!("the body is not base64 ({e})")))?,
        },
        OutcomeDto::Stream {
            conversation,
            message,
        } => StoredOutcome::Stream {
            conversation: conversation
                .parse::<ConversationId>()
                .map_err(|_| corrupt("the conversation id"))?,
            message: MessageId::parse(message).map_err(|_| corrupt("the message id"))?,
        },
    })
}

/// Idempotency keys in Redis, shared by every instance on the same Redis
/// and key prefix.
#[derive(Debug)]
pub struct RedisIdempotency {
    pool: RedisPool,
    max_per_owner: usize,
    claim: redis::Script,
    complete: redis::Script,
    release: redis::Script,
}

/// A script: the prelude, then `body` (its first line, a comment naming
/// it, stays first for `SCRIPT` listings).
fn script(body: &str) -> redis::Script {
    let (name, rest) = body.split_once('\n').unwrap_or((body, ""));
    redis::Script::new(&format!("{name}{PRELUDE}{rest}"))
}

impl RedisIdempotency {
    /// A store on `pool` where one owner holds at most `max_per_owner` live
    /// keys (at least one); the scripts are hashed here, once.
    #[must_use]
    pub fn new(pool: RedisPool, max_per_owner: usize) -> Self {
        Self {
            pool,
            max_per_owner: max_per_owner.max(1),
            claim: script(CLAIM),
            complete: script(COMPLETE),
            release: script(RELEASE),
        }
    }

    /// The key's hash and its owner's set.
    fn keys(&self, owner: &str, key: &str) -> [String; 2] {
        [
            self.pool.key(&format!("idem:v2:{{{owner}}}:k:{key}")),
            self.pool.key(&format!("idem:v2:{{{owner}}}:keys")),
        ]
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn claim(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        in_flight_ttl: Duration,
    ) -> Result<Claim, DomainError> {
        let [hash, set] = self.keys(owner, key);
        let mut conn = self.pool.connection()?;
        let (tag, value): (String, String) = self
            .claim
            .key(hash)
            .key(set)
            .arg(fingerprint)
            .arg(millis(in_flight_ttl))
            .arg(self.max_per_owner)
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        match tag.as_str() {
            "claimed" => Ok(Claim::Claimed),
            "mismatch" => Ok(Claim::Mismatch),
            "inflight" => Ok(Claim::InFlight),
            "done" => decode(&value).map(Claim::Completed),
            "full" => Ok(Claim::OwnerFull {
                retry_after: Duration::from_millis(value.parse::<u64>().unwrap_or(0)),
            }),
            other => Err(DomainError::internal(format!(
                "idempotency: the claim script answered {other:?}"
            ))),
        }
    }

    async fn complete(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        outcome: StoredOutcome,
        ttl: Duration,
    ) -> Result<(), DomainError> {
        let stored = encode(&outcome)?;
        let [hash, set] = self.keys(owner, key);
        let mut conn = self.pool.connection()?;
        let done: i64 = self
            .complete
            .key(hash)
            .key(set)
            .arg(fingerprint)
            .arg(stored)
            .arg(millis(ttl))
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        if done == 0 {
            tracing::debug!("idempotency: an outcome for a claim no longer held was dropped");
        }
        Ok(())
    }

    async fn release(&self, owner: &str, key: &str, fingerprint: &str) -> Result<(), DomainError> {
        let [hash, set] = self.keys(owner, key);
        let mut conn = self.pool.connection()?;
        let _released: i64 = self
            .release
            .key(hash)
            .key(set)
            .arg(fingerprint)
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        let response = StoredOutcome::Response {
            status: 200,
            headers: vec![("a".to_owned(), "b".to_owned())],
            body: vec![0, 159, 146, 150, 255],
        };
        assert_eq!(decode(&encode(&response).unwrap()).unwrap(), response);
        let stream = StoredOutcome::Stream {
            conversation: ConversationId::generate(),
            message: MessageId::parse("msg_001").unwrap(),
        };
        assert_eq!(decode(&encode(&stream).unwrap()).unwrap(), stream);
    }

    #[test]
    fn garbage_is_an_internal_error() {
        for stored in [
            "",
            "{",
            r#"{"kind":"response","status":200,"headers":[],"body":"***"}"#,
            r#"{"kind":"stream","conversation":"nope","message":"m"}"#,
            r#"{"kind":"stream","conversation":"0190c7c4-6a5e-7000-8000-000000000000","message":"a b"}"#,
        ] {
            assert!(
                matches!(decode(stored), Err(DomainError::Internal(_))),
                "{stored:?}"
            );
        }
    }

    #[test]
    fn ttls_in_milliseconds() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1_500)), 2);
        assert_eq!(millis(Duration::from_secs(60)), 60_000);
        assert_eq!(millis(Duration::MAX), 365 * 86_400_000);
    }
}
