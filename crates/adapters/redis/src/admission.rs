//! [`Admission`] on Redis: the blocklist's standing and the limiter's
//! charge in one script, so an authenticated request makes one round trip
//! before its route instead of two. The keys are the blocklist's and the
//! limiter's own (`bl:jti:…`, `bl:fam:…`, `uv:…`, `rl:v1:…`), so this and
//! [`RedisBlocklist`](crate::RedisBlocklist) / [`RedisLimiter`](crate::RedisLimiter)
//! see one state. On a Redis Cluster they all carry the user's hash tag,
//! so they share a slot (the cache version too: it is the user's
//! conversation list's), as a script's keys must.
//!
//! **Grouped on a worker.** The script admits any number of requests at
//! once: on a request worker with a single Redis, the admissions its
//! requests ask for while one group is on its way to Redis wait, and go
//! together as the next group (group commit: one request alone goes at
//! once, as before). A group shares one command, one reading of the clock,
//! one read of all its keys and one reply, and writes each bucket it
//! charged once (ADR 0005, seventh and fifteenth passes).
//! Each admission in a group is its own, in order, on one reading of
//! Redis's clock. Elsewhere (a cluster, whose keys of different users lie
//! in different slots; the main runtime) each admission is a group of one.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{AccessClaims, Admission, Admitted, RatePolicy};
use tokio::sync::{mpsc, oneshot};

use crate::blocklist::{family_key, token_key, user_key};
use crate::cache::version_key as cache_version_key;
use crate::limiter::{TTL_MARGIN_MS, bucket_key, decision, gcra_next, gcra_ttl, period_micros};
use crate::pool::{RedisPool, unavailable};

/// Admits a group of requests. `KEYS`: five per admission: the token's and
/// its session's blocking keys, the user's version, the caller's bucket
/// and the cache version counter to read (any key, say the bucket again,
/// when none is asked). `ARGV`: the TTL margin (ms) of the buckets, then
/// three per admission: its bucket's period (µs) and quota, as the
/// limiter's script takes them, and whether the cache version is asked
/// (`1`) or not (`0`).
///
/// Returns seven numbers per admission, in order: `1, version` and five
/// zeros for a refused token, charging nothing; `0, version, allowed,
/// remaining, reset_after µs, retry_after µs, cache version` otherwise,
/// the cache version −1 when not asked or absent (it is never created
/// here: [`RedisCache`](crate::RedisCache)'s version script creates
/// counters, on Redis's clock).
///
/// Every key of the group is read with one `MGET` (a `redis.call` costs
/// Redis more than the command it runs: ADR 0005, fifteenth pass); every
/// key here is a string (the blocking keys are `SET … PXAT`), so a
/// blocking key's value, not nil, is a block, as `EXISTS` would say. The
/// admissions are still taken in order, each on the buckets as the ones
/// before it left them: a bucket charged earlier in the group is read
/// from the script's own copy, and each bucket charged is written once,
/// at the end, with its last TAT.
const SCRIPT: &str = concat!(
    "-- confab admission v4\n",
    "if redis.replicate_commands then redis.replicate_commands() end\n",
    gcra_next!(),
    gcra_ttl!(),
    r"local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local margin = tonumber(ARGV[1])
local read = redis.call('MGET', unpack(KEYS))
local charged, order = {}, {}
local out = {}
for i = 0, #KEYS / 5 - 1 do
  local k = i * 5
  local a = 1 + i * 3
  local version = read[k + 3] or '0'
  local o = i * 7
  if read[k + 1] or read[k + 2] then
    out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 1, version, 0, 0
    out[o + 5], out[o + 6], out[o + 7] = 0, 0, -1
  else
    local bucket = KEYS[k + 4]
    local tat = charged[bucket]
    if tat == nil and read[k + 4] then
      tat = tonumber(read[k + 4])
    end
    local new_tat, d = gcra_next(tat, now, tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]))
    if new_tat then
      if charged[bucket] == nil then
        order[#order + 1] = bucket
      end
      charged[bucket] = new_tat
    end
    local cached = -1
    if ARGV[a + 3] == '1' and read[k + 5] then
      cached = tonumber(read[k + 5]) or -1
    end
    out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 0, version, d[1], d[2]
    out[o + 5], out[o + 6], out[o + 7] = d[3], d[4], cached
  end
end
for _, bucket in ipairs(order) do
  local tat = charged[bucket]
  redis.call('SET', bucket, string.format('%d', tat), 'PX', gcra_ttl(tat, now, margin))
end
return out
",
);

/// The numbers the script answers per admission.
const REPLY_LEN: usize = 7;

/// The most admissions one script call carries: a worker under load asks
/// for far fewer at once; this bounds one call's keys and its time in
/// Redis.
const MAX_GROUP: usize = 64;

/// What an admission asks the script.
struct Request {
    /// Token, session, user version, bucket, cache version counter.
    keys: [String; 5],
    period: u64,
    quota: u32,
    cache_asked: bool,
}

/// An admission waiting for its worker's next group.
struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<[i64; REPLY_LEN], DomainError>>,
}

struct Inner {
    pool: RedisPool,
    script: redis::Script,
    /// How many groups this adapter's makers sent.
    #[cfg(test)]
    groups: std::sync::atomic::AtomicUsize,
}

impl Inner {
    /// Runs the script once for `requests` (at least one), on this
    /// thread's connection: `REPLY_LEN` numbers each, in order.
    async fn run<'r>(
        &self,
        requests: impl ExactSizeIterator<Item = &'r Request>,
    ) -> Result<Vec<i64>, DomainError> {
        let expected = requests.len() * REPLY_LEN;
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(TTL_MARGIN_MS);
        for request in requests {
            for key in &request.keys {
                invocation.key(key);
            }
            invocation
                .arg(request.period)
                .arg(request.quota)
                .arg(u8::from(request.cache_asked));
        }
        let mut conn = self.pool.connection()?;
        let reply: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        if reply.len() == expected {
            Ok(reply)
        } else {
            Err(DomainError::internal(
                "the admission script answered an unexpected shape",
            ))
        }
    }
}

thread_local! {
    /// The calling worker's admission groups, by adapter: where an
    /// admission made on this thread waits for the next group.
    static GROUPS: RefCell<Vec<(Weak<Inner>, mpsc::UnboundedSender<Pending>)>> =
        const { RefCell::new(Vec::new()) };
}

/// A worker's group maker: sends what has gathered as one group, waits
/// for its answer, and again, until the worker or the adapter is gone.
async fn gather(inner: Weak<Inner>, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        let Some(adapter) = inner.upgrade() else {
            return;
        };
        #[cfg(test)]
        adapter
            .groups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A request that went away before its group left is not charged.
        group.retain(|p| !p.reply.is_closed());
        if group.is_empty() {
            continue;
        }
        let result = adapter.run(group.iter().map(|p| &p.request)).await;
        drop(adapter);
        match result {
            Ok(reply) => {
                for (pending, numbers) in group.drain(..).zip(reply.chunks_exact(REPLY_LEN)) {
                    if let Ok(numbers) = <[i64; REPLY_LEN]>::try_from(numbers) {
                        // A request that went away meanwhile takes nothing.
                        let _ = pending.reply.send(Ok(numbers));
                    }
                }
            }
            Err(e) => {
                for pending in group.drain(..) {
                    let _ = pending.reply.send(Err(crate::pool::for_each(&e)));
                }
            }
        }
    }
}

/// Standing and rate charge in one script.
pub struct RedisAdmission {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdmission")
            .field("pool", &self.inner.pool)
            .finish_non_exhaustive()
    }
}

impl RedisAdmission {
    /// Admission on `pool`; the script is hashed here, once.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                script: redis::Script::new(SCRIPT),
                #[cfg(test)]
                groups: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// `request` in this worker's next group: a group maker is started
    /// on the worker for this adapter when it has none (or its last one
    /// ended with an earlier runtime of the thread).
    async fn grouped(&self, request: Request) -> Result<[i64; REPLY_LEN], DomainError> {
        let (reply, answer) = oneshot::channel();
        GROUPS.with(|groups| {
            let mut groups = groups.borrow_mut();
            let mut pending = Pending { request, reply };
            let mine = groups
                .iter()
                .position(|(inner, _)| std::ptr::eq(inner.as_ptr(), Arc::as_ptr(&self.inner)));
            if let Some(at) = mine {
                match groups[at].1.send(pending) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(back)) => {
                        pending = back;
                        groups.swap_remove(at);
                    }
                }
            }
            let (sender, waiting) = mpsc::unbounded_channel();
            tokio::spawn(gather(Arc::downgrade(&self.inner), waiting));
            // The group maker holds the receiver: this send is taken.
            let _ = sender.send(pending);
            // The groups of adapters that are gone go with them (their
            // makers end when their sender is dropped).
            groups.retain(|(inner, _)| inner.strong_count() > 0);
            groups.push((Arc::downgrade(&self.inner), sender));
        });
        answer
            .await
            .map_err(|_| DomainError::unavailable("redis: the admission group ended"))?
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
        let pool = &self.inner.pool;
        let period = period_micros(policy)?;
        let bucket = bucket_key(pool, policy, key);
        let cache = cache_key.map_or_else(|| bucket.clone(), |k| cache_version_key(pool, k));
        let request = Request {
            keys: [
                token_key(pool, claims.user_id, claims.jti),
                family_key(pool, claims.user_id, claims.family),
                user_key(pool, claims.user_id),
                bucket,
                cache,
            ],
            period,
            quota: policy.quota,
            cache_asked: cache_key.is_some(),
        };
        let reply = if pool.on_worker() {
            self.grouped(request).await?
        } else {
            let numbers = self.inner.run(std::iter::once(&request)).await?;
            <[i64; REPLY_LEN]>::try_from(numbers.as_slice()).map_err(|_| {
                DomainError::internal("the admission script answered an unexpected shape")
            })?
        };
        match reply {
            [1, ..] => Ok(None),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use confab_domain::{FamilyId, OffsetDateTime, Role, TokenId, UserId};
    use confab_ports::TokenBlocklist;
    use futures_util::future::join_all;
    use secrecy::SecretString;

    use super::*;
    use crate::{RedisBlocklist, RedisCache, RedisSettings};

    fn claims(user: UserId, family: FamilyId) -> AccessClaims {
        let now = OffsetDateTime::now_utc();
        AccessClaims {
            user_id: user,
            role: Role::User,
            jti: TokenId::generate(),
            family,
            issued_at: now,
            expires_at: now + Duration::from_secs(900),
            api_key: None,
        }
    }

    /// Admissions a worker asks for at once go to Redis together (at most
    /// `MAX_GROUP` a call), and each is its own: every good token charged
    /// once, in turn, until the bucket is empty; every blocked one refused
    /// and charged nothing; the cache version read where asked.
    #[tokio::test]
    async fn admissions_asked_at_once_on_a_worker_go_in_groups_each_its_own() {
        let pool = crate::pool::local_pool();
        let admission = RedisAdmission::new(pool.clone());
        let blocklist = RedisBlocklist::new(pool.clone());
        let cache = RedisCache::new(pool.clone());
        let user = UserId::generate();
        let lists = format!("user:{user}:lists");
        let version = confab_ports::Cache::version(&cache, &lists).await.unwrap();
        let revoked = FamilyId::generate();
        blocklist
            .block_family(
                user,
                revoked,
                OffsetDateTime::now_utc() + Duration::from_secs(900),
            )
            .await
            .unwrap();
        let policy = RatePolicy {
            name: format!("grouped-{}", UserId::generate()),
            quota: 80,
            window: Duration::from_secs(3600),
        };
        let bucket = format!("user:{user}");
        let good: Vec<AccessClaims> = (0..100)
            .map(|_| claims(user, FamilyId::generate()))
            .collect();
        let blocked: Vec<AccessClaims> = (0..5).map(|_| claims(user, revoked)).collect();
        let asks = good.iter().chain(&blocked).enumerate().map(|(i, c)| {
            let cache_key = (i % 2 == 0).then_some(lists.as_str());
            let (admission, policy, bucket) = (&admission, &policy, &bucket);
            async move {
                (
                    i,
                    admission.admit(c, policy, bucket, cache_key).await.unwrap(),
                )
            }
        });
        let answers = join_all(asks).await;
        // 105 asked before the group maker first ran: 64, then 41.
        assert_eq!(admission.inner.groups.load(Ordering::Relaxed), 2);
        let mut remaining = Vec::new();
        for (i, answer) in answers {
            if i >= good.len() {
                assert!(answer.is_none(), "blocked token {i} admitted");
                continue;
            }
            let admitted = answer.expect("a good token is admitted");
            assert_eq!(
                admitted.cache_version,
                (i % 2 == 0).then_some(version),
                "cache version of {i}"
            );
            if admitted.decision.allowed {
                remaining.push(admitted.decision.remaining);
            } else {
                assert!(admitted.decision.retry_after > Duration::ZERO);
            }
        }
        remaining.sort_unstable();
        assert_eq!(remaining, (0..80).collect::<Vec<u32>>());
        // Nothing was charged for the refused: the bucket is exactly empty.
        let next = admission
            .admit(&good[0], &policy, &bucket, None)
            .await
            .unwrap()
            .expect("admitted");
        assert!(!next.decision.allowed);
        assert_eq!(admission.inner.groups.load(Ordering::Relaxed), 3);
    }

    /// A group whose call fails fails each of its admissions, as
    /// unavailable with Redis's reason: none waits on.
    #[tokio::test]
    async fn a_failed_group_fails_each_of_its_admissions_with_the_cause() {
        let admission = RedisAdmission::new(
            RedisPool::new(&RedisSettings {
                url: SecretString::from("redis://127.0.0.1:1".to_owned()),
                cluster: false,
                connections: 1,
                connect_timeout: Duration::from_millis(200),
                command_timeout: Duration::from_millis(200),
                key_prefix: "confab-test:".to_owned(),
            })
            .unwrap(),
        );
        let user = UserId::generate();
        let policy = RatePolicy {
            name: "down".to_owned(),
            quota: 3,
            window: Duration::from_secs(60),
        };
        let bucket = format!("user:{user}");
        let good: Vec<AccessClaims> = (0..3).map(|_| claims(user, FamilyId::generate())).collect();
        let answers = join_all(
            good.iter()
                .map(|c| admission.admit(c, &policy, &bucket, None)),
        )
        .await;
        assert_eq!(answers.len(), 3);
        for answer in answers {
            match answer {
                Err(DomainError::Unavailable(cause)) => {
                    assert!(cause.to_string().starts_with("redis:"), "{cause}");
                }
                other => panic!("expected unavailable, got {other:?}"),
            }
        }
    }

    /// Off a worker (a multi-threaded runtime), each admission is a group
    /// of one, sent at once: no group maker is involved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn off_a_worker_each_admission_goes_alone() {
        let admission = RedisAdmission::new(crate::pool::local_pool());
        let user = UserId::generate();
        let policy = RatePolicy {
            name: format!("alone-{}", UserId::generate()),
            quota: 3,
            window: Duration::from_secs(3600),
        };
        let c = claims(user, FamilyId::generate());
        let bucket = format!("user:{user}");
        let mut remaining = Vec::new();
        for _ in 0..4 {
            let admitted = admission
                .admit(&c, &policy, &bucket, None)
                .await
                .unwrap()
                .expect("admitted");
            remaining.push((admitted.decision.allowed, admitted.decision.remaining));
        }
        assert_eq!(remaining, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        assert_eq!(admission.inner.groups.load(Ordering::Relaxed), 0);
    }
}
