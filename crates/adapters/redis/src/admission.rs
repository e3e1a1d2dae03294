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
//! charged once (ADR 0005, seventh and fifteenth passes). Admissions of a
//! group that ask exactly the same (one token's concurrent requests, the
//! common shape of a script or an app behind one API key) go as one entry
//! with a count: their keys are sent and read once, and the script charges
//! the entry's bucket once per admission, in turn (ADR 0005, twenty-second
//! pass). Each admission in a group is its own, on one reading of Redis's
//! clock: the entries in the order their first admission came, an entry's
//! admissions one after another. Elsewhere (a cluster, whose keys of
//! different users lie in different slots; the main runtime) each
//! admission is a group of one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{AccessClaims, Admission, Admitted, RatePolicy};
use tokio::sync::{mpsc, oneshot};

use crate::blocklist::{family_key, token_key, user_key};
use crate::cache::version_key as cache_version_key;
use crate::limiter::{TTL_MARGIN_MS, bucket_key, decision, gcra_next, gcra_ttl, period_micros};
use crate::pool::{RedisPool, unavailable};

/// Admits a group of requests, given as entries: admissions that ask the
/// same thing. `KEYS`: five per entry: the token's and its session's
/// blocking keys, the user's version, the caller's bucket and the cache
/// version counter to read (any key, say the bucket again, when none is
/// asked). `ARGV`: the TTL margin (ms) of the buckets, then four per entry:
/// its bucket's period (µs) and quota, as the limiter's script takes them,
/// whether the cache version is asked (`1`) or not (`0`), and how many
/// admissions the entry holds.
///
/// Returns seven numbers per admission, entry by entry and within an
/// entry in turn: `1, version` and five zeros for a refused token, charging
/// nothing; `0, version, allowed, remaining, reset_after µs, retry_after
/// µs, cache version` otherwise, the cache version −1 when not asked or
/// absent (it is never created here: [`RedisCache`](crate::RedisCache)'s
/// version script creates counters, on Redis's clock).
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
    "-- confab admission v5\n",
    "if redis.replicate_commands then redis.replicate_commands() end\n",
    gcra_next!(),
    gcra_ttl!(),
    r"local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local margin = tonumber(ARGV[1])
local read = redis.call('MGET', unpack(KEYS))
local charged, order = {}, {}
local out = {}
local o = 0
for i = 0, #KEYS / 5 - 1 do
  local k = i * 5
  local a = 1 + i * 4
  local version = read[k + 3] or '0'
  local count = tonumber(ARGV[a + 4])
  if read[k + 1] or read[k + 2] then
    for _ = 1, count do
      out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 1, version, 0, 0
      out[o + 5], out[o + 6], out[o + 7] = 0, 0, -1
      o = o + 7
    end
  else
    local bucket = KEYS[k + 4]
    local period, quota = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    local cached = -1
    if ARGV[a + 3] == '1' and read[k + 5] then
      cached = tonumber(read[k + 5]) or -1
    end
    local tat = charged[bucket]
    if tat == nil and read[k + 4] then
      tat = tonumber(read[k + 4])
    end
    for _ = 1, count do
      local new_tat, d = gcra_next(tat, now, period, quota)
      if new_tat then
        if charged[bucket] == nil then
          order[#order + 1] = bucket
        end
        charged[bucket] = new_tat
        tat = new_tat
      end
      out[o + 1], out[o + 2], out[o + 3], out[o + 4] = 0, version, d[1], d[2]
      out[o + 5], out[o + 6], out[o + 7] = d[3], d[4], cached
      o = o + 7
    end
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

/// What an admission asks the script: two that are equal go as one
/// entry of a group.
#[derive(PartialEq, Eq, Hash)]
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
    /// How many entries the script calls carried, in all.
    #[cfg(test)]
    entries: std::sync::atomic::AtomicUsize,
}

impl Inner {
    /// Runs the script once for `requests` (at least one), on this
    /// thread's connection: `REPLY_LEN` numbers for each, in order.
    /// Equal requests go as one entry (see [`SCRIPT`]).
    async fn run(&self, requests: &[&Request]) -> Result<Vec<[i64; REPLY_LEN]>, DomainError> {
        // Each distinct request with its count, in order of first sight,
        // and the entry of each request.
        let mut entries: Vec<(&Request, usize)> = Vec::with_capacity(requests.len());
        let mut entry_of = Vec::with_capacity(requests.len());
        let mut seen: HashMap<&Request, usize> = HashMap::with_capacity(requests.len());
        for &request in requests {
            let at = *seen.entry(request).or_insert_with(|| {
                entries.push((request, 0));
                entries.len() - 1
            });
            entries[at].1 += 1;
            entry_of.push(at);
        }
        #[cfg(test)]
        self.entries
            .fetch_add(entries.len(), std::sync::atomic::Ordering::Relaxed);
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(TTL_MARGIN_MS);
        for (request, count) in &entries {
            for key in &request.keys {
                invocation.key(key);
            }
            invocation
                .arg(request.period)
                .arg(request.quota)
                .arg(u8::from(request.cache_asked))
                .arg(*count);
        }
        let mut conn = self.pool.connection()?;
        let reply: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        let shape = || DomainError::internal("the admission script answered an unexpected shape");
        if reply.len() != requests.len() * REPLY_LEN {
            return Err(shape());
        }
        // Where each entry's next answer starts in the reply.
        let mut next = Vec::with_capacity(entries.len());
        let mut start = 0;
        for (_, count) in &entries {
            next.push(start);
            start += count * REPLY_LEN;
        }
        entry_of
            .into_iter()
            .map(|at| {
                let from = next[at];
                next[at] += REPLY_LEN;
                reply
                    .get(from..from + REPLY_LEN)
                    .and_then(|numbers| <[i64; REPLY_LEN]>::try_from(numbers).ok())
                    .ok_or_else(shape)
            })
            .collect()
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
        let requests: Vec<&Request> = group.iter().map(|p| &p.request).collect();
        let result = adapter.run(&requests).await;
        drop(requests);
        drop(adapter);
        match result {
            Ok(replies) => {
                for (pending, numbers) in group.drain(..).zip(replies) {
                    // A request that went away meanwhile takes nothing.
                    let _ = pending.reply.send(Ok(numbers));
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
                #[cfg(test)]
                entries: std::sync::atomic::AtomicUsize::new(0),
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
            let mut replies = self.inner.run(&[&request]).await?;
            replies.pop().ok_or_else(|| {
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

    /// An admission on the local Redis, a user whose conversation list
    /// has a cache version, a session of that user's that is blocked, and
    /// a fresh policy of `quota` an hour with the user's bucket.
    struct Setting {
        admission: RedisAdmission,
        user: UserId,
        lists: String,
        version: u64,
        revoked: FamilyId,
        policy: RatePolicy,
        bucket: String,
    }

    impl Setting {
        /// Nothing was charged for the refused: the bucket is exactly
        /// empty, and the next admission is refused.
        async fn assert_empty(&self, c: &AccessClaims) {
            let next = self
                .admission
                .admit(c, &self.policy, &self.bucket, None)
                .await
                .unwrap()
                .expect("admitted");
            assert!(!next.decision.allowed);
        }
    }

    async fn setting(quota: u32) -> Setting {
        let pool = crate::pool::local_pool();
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
        Setting {
            admission: RedisAdmission::new(pool),
            user,
            lists,
            version,
            revoked,
            policy: RatePolicy {
                name: format!("grouped-{}", UserId::generate()),
                quota,
                window: Duration::from_secs(3600),
            },
            bucket: format!("user:{user}"),
        }
    }

    /// Admissions a worker asks for at once go to Redis together (at most
    /// `MAX_GROUP` a call), and each is its own: every good token charged
    /// once, in turn, until the bucket is empty; every blocked one refused
    /// and charged nothing; the cache version read where asked.
    #[tokio::test]
    async fn admissions_asked_at_once_on_a_worker_go_in_groups_each_its_own() {
        let t = setting(80).await;
        let good: Vec<AccessClaims> = (0..100)
            .map(|_| claims(t.user, FamilyId::generate()))
            .collect();
        let blocked: Vec<AccessClaims> = (0..5).map(|_| claims(t.user, t.revoked)).collect();
        let asks = good.iter().chain(&blocked).enumerate().map(|(i, c)| {
            let cache_key = (i % 2 == 0).then_some(t.lists.as_str());
            let t = &t;
            async move {
                let admitted = t.admission.admit(c, &t.policy, &t.bucket, cache_key);
                (i, admitted.await.unwrap())
            }
        });
        let answers = join_all(asks).await;
        // 105 asked before the group maker first ran: 64, then 41.
        assert_eq!(t.admission.inner.groups.load(Ordering::Relaxed), 2);
        let mut remaining = Vec::new();
        for (i, answer) in answers {
            if i >= good.len() {
                assert!(answer.is_none(), "blocked token {i} admitted");
                continue;
            }
            let admitted = answer.expect("a good token is admitted");
            assert_eq!(
                admitted.cache_version,
                (i % 2 == 0).then_some(t.version),
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
        t.assert_empty(&good[0]).await;
        assert_eq!(t.admission.inner.groups.load(Ordering::Relaxed), 3);
    }

    /// Admissions of a group that ask the same (one token's requests at
    /// once) go as one entry, and each is still its own: the bucket is
    /// charged once per admission, in turn, the cache version read for
    /// each, and an entry of a blocked token refuses all of its admissions.
    #[tokio::test]
    async fn equal_admissions_in_a_group_go_as_one_entry_each_charged() {
        let t = setting(30).await;
        let one = claims(t.user, FamilyId::generate());
        let other = claims(t.user, FamilyId::generate());
        let blocked = claims(t.user, t.revoked);
        // 40 of one token, 10 of another (same bucket), 5 blocked: mixed.
        let asked: Vec<&AccessClaims> = (0..55)
            .map(|i| match i % 11 {
                0 => &blocked,
                1 | 2 => &other,
                _ => &one,
            })
            .collect();
        assert_eq!(asked.iter().filter(|c| c.jti == one.jti).count(), 40);
        let answers = join_all(asked.iter().map(|c| {
            let t = &t;
            async move {
                t.admission
                    .admit(c, &t.policy, &t.bucket, Some(&t.lists))
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(t.admission.inner.groups.load(Ordering::Relaxed), 1);
        assert_eq!(t.admission.inner.entries.load(Ordering::Relaxed), 3);
        // The entries in the order of their first admission (the blocked
        // token, the other, the one), each entry's admissions in turn, in
        // the order they were asked.
        let mut seen: Vec<(u128, Option<u32>)> = Vec::new();
        for (c, answer) in asked.iter().zip(answers) {
            if c.jti == blocked.jti {
                assert!(answer.is_none(), "a blocked token was admitted");
                continue;
            }
            let admitted = answer.expect("a good token is admitted");
            assert_eq!(admitted.cache_version, Some(t.version));
            if !admitted.decision.allowed {
                assert!(admitted.decision.retry_after > Duration::ZERO);
            }
            let token = c.jti.as_uuid().as_u128();
            seen.push((
                token,
                admitted
                    .decision
                    .allowed
                    .then_some(admitted.decision.remaining),
            ));
        }
        let of = |token: &AccessClaims| -> Vec<Option<u32>> {
            let token = token.jti.as_uuid().as_u128();
            seen.iter()
                .filter(|(t, _)| *t == token)
                .map(|(_, r)| *r)
                .collect()
        };
        assert_eq!(of(&other), (20..30).rev().map(Some).collect::<Vec<_>>());
        let expected: Vec<Option<u32>> = (0..20)
            .rev()
            .map(Some)
            .chain(std::iter::repeat_n(None, 20))
            .collect();
        assert_eq!(of(&one), expected);
        t.assert_empty(&one).await;
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
