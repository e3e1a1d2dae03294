//! The shared-state ports, called directly in the bench process (no HTTP):
//! what a rate-limit check, a cache hit and a cache-version lookup cost
//! in-process (`confab-memory`) and on Redis (`confab-redis`).
//!
//! Each operation runs [`OPS`] times one after the other, then [`OPS`]
//! times in all from [`CONCURRENCY`] tasks sharing the adapter, each run
//! after an unmeasured warm-up of [`WARM_UP`] at the same concurrency and
//! capped at [`RUN_CAP`]. Redis is the one `REDIS_URL` names (else the
//! local one) and is required: the bench fails when it doesn't answer.
//! Everything is written under a fresh key prefix and left to expire: the
//! buckets a second after the section, the history after [`CACHE_TTL`], its
//! version counter after the adapter's day.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use confab_domain::{
    Content, Conversation, ConversationId, Message, MessageId, MessageMetadata, MessagePage,
    MessageRole, MessageStatus, ModelSlug, OffsetDateTime, Title, UserId,
};
use confab_memory::{GovernorLimiter, MemoryCache};
use confab_ports::{Cache, CachedValue, HealthCheck, RateLimiter, RatePolicy};
use confab_redis::{RedisCache, RedisLimiter, RedisPool, RedisSettings};
use secrecy::SecretString;

use super::percentile;

/// Operations measured per run.
const OPS: usize = 20_000;
/// Unmeasured operations before each run.
const WARM_UP: usize = 1_000;
/// Tasks sharing the adapter in the concurrent runs.
const CONCURRENCY: usize = 16;
/// The longest a run lasts; the operations done by then are the sample.
const RUN_CAP: Duration = Duration::from_secs(4);
/// Distinct callers the rate-limit checks are spread over.
const CALLERS: usize = 1_000;
/// Messages in the cached history.
const MESSAGES: usize = 20;
/// The Redis pool's size and connect timeout: the defaults of
/// `config/default.toml` (`redis.connections`, `connect_timeout_ms`,
/// `command_timeout_ms`).
const POOL_SIZE: usize = 2;

/// How long a command waits for its reply, as the default.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// The in-process cache's bound (`cache.max_entries`'s default).
const MEMORY_CACHE_ENTRIES: usize = 10_000;
/// The cached history's TTL: beyond the section's length (the TTL costs
/// nothing per get), and short, as nothing deletes the bench's keys.
const CACHE_TTL: Duration = Duration::from_secs(120);

/// A policy that never refuses here: a bucket of a million per minute. The
/// Redis limiter counts in whole microseconds, so the period (window /
/// quota) must be at least 1 µs: a billion per minute would be refused as
/// a zero period. The cost of a check does not depend on the quota.
fn policy() -> RatePolicy {
    RatePolicy {
        name: "bench".to_owned(),
        quota: 1_000_000,
        window: Duration::from_secs(60),
    }
}

/// One operation on one adapter.
#[derive(Clone)]
enum Op {
    /// `RateLimiter::check`, caller `i % CALLERS` at the `i`-th call.
    Check(Arc<dyn RateLimiter>, Arc<RatePolicy>, Arc<[String]>),
    /// `Cache::get` of a key that holds a value.
    Get(Arc<dyn Cache>, Arc<str>),
    /// `Cache::version` of a key whose counter exists.
    Version(Arc<dyn Cache>, Arc<str>),
}

impl Op {
    /// Runs the operation once (the `i`-th); panics on an error, a refusal
    /// or a miss, which would mean the bench measured something else.
    async fn once(&self, i: usize, backend: &str) {
        match self {
            Self::Check(limiter, policy, callers) => {
                let decision = limiter
                    .check(policy, &callers[i % callers.len()])
                    .await
                    .unwrap_or_else(|e| panic!("{backend} RateLimiter::check failed: {e}"));
                assert!(
                    decision.allowed,
                    "{backend} refused a check under the bench's policy: {decision:?}"
                );
            }
            Self::Get(cache, key) => {
                let hit = cache
                    .get(key)
                    .await
                    .unwrap_or_else(|e| panic!("{backend} Cache::get failed: {e}"));
                assert!(
                    hit.is_some(),
                    "{backend} Cache::get missed the stored value"
                );
            }
            Self::Version(cache, key) => {
                let _ = cache
                    .version(key)
                    .await
                    .unwrap_or_else(|e| panic!("{backend} Cache::version failed: {e}"));
            }
        }
    }
}

/// What one run measured.
pub(super) struct Row {
    /// The port's method.
    operation: &'static str,
    /// `in-process` or `Redis`.
    backend: &'static str,
    /// Tasks sharing the adapter.
    concurrency: usize,
    /// Operations measured.
    ops: usize,
    /// Wall time of the run.
    seconds: f64,
    /// Per-operation latency, µs.
    p50_us: f64,
    p99_us: f64,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

/// Everything the section measured.
pub(super) struct SharedState {
    rows: Vec<Row>,
    /// Where Redis was (host and port only: the URL may hold a password).
    redis_at: String,
    /// Characters of message text in the cached history.
    history_chars: usize,
}

/// `op` run `total` times by `concurrency` tasks (each capped at
/// [`RUN_CAP`]): per-operation latencies in µs, and the wall time.
async fn run(op: &Op, backend: &'static str, concurrency: usize, total: usize) -> (Vec<f64>, f64) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + RUN_CAP;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next) = (op.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(total / concurrency + 1);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || Instant::now() > deadline {
                        break;
                    }
                    let t = Instant::now();
                    op.once(i, backend).await;
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(total);
    for task in tasks {
        samples.extend(task.await.expect("a bench task panicked"));
    }
    (samples, start.elapsed().as_secs_f64())
}

/// Warms up, then measures `op` at `concurrency`, and prints the row.
async fn measure_one(
    operation: &'static str,
    backend: &'static str,
    op: &Op,
    concurrency: usize,
) -> Row {
    let _ = run(op, backend, concurrency, WARM_UP).await;
    let (mut samples, seconds) = run(op, backend, concurrency, OPS).await;
    samples.sort_by(f64::total_cmp);
    let row = Row {
        operation,
        backend,
        concurrency,
        ops: samples.len(),
        seconds,
        p50_us: percentile(&samples, 0.50),
        p99_us: percentile(&samples, 0.99),
    };
    println!(
        "{:<22} {:<10} c={:<3} {:>6} ops {:>9.0} ops/s  p50 {:>8.2} µs  p99 {:>8.2} µs",
        row.operation,
        row.backend,
        row.concurrency,
        row.ops,
        row.per_second(),
        row.p50_us,
        row.p99_us
    );
    row
}

/// The Redis URL: `REDIS_URL`, else the local Redis.
fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `host:port` of a Redis URL, without the credentials it may hold.
fn redis_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
        .to_owned()
}

/// Some text of `chars` characters.
fn text(seed: usize, chars: usize) -> String {
    const WORDS: &str = "A cache keeps the rendered history of a conversation so that \
        the next read skips the database: the reader takes the version, reads, and \
        stores its result under a key that includes the version, while a writer \
        changes the database and then bumps the version. Redis shares that cache \
        between instances, at the price of a round trip and a decode per hit; the \
        in-process cache clones the value instead. ";
    WORDS
        .chars()
        .cycle()
        .skip(seed * 37 % WORDS.len())
        .take(chars)
        .collect()
}

/// A realistic cached history: a conversation of [`MESSAGES`] messages,
/// user and assistant in turn, of a few hundred characters each; and how
/// many characters of text it holds, and its conversation's id.
fn history() -> (CachedValue, usize, ConversationId) {
    let now = OffsetDateTime::now_utc();
    let conversation = Conversation {
        id: ConversationId::generate(),
        owner: UserId::generate(),
        title: Title::parse("Caching conversation histories").expect("title"),
        is_archived: false,
        current_node: None,
        settings: Default::default(),
        deleted_at: None,
        created_at: now,
        updated_at: now,
    };
    let mut messages: Vec<Message> = Vec::with_capacity(MESSAGES);
    let mut chars = 0;
    for i in 0..MESSAGES {
        let assistant = i % 2 == 1;
        let body = text(i, if assistant { 600 } else { 200 } + i * 7);
        chars += body.chars().count();
        let mut metadata = MessageMetadata::new();
        if assistant {
            metadata.insert("finish_reason".into(), "stop".into());
            metadata.insert("completion_tokens".into(), (150 + i).into());
        }
        let at = now + Duration::from_secs(i as u64 * 30);
        messages.push(Message {
            id: MessageId::generate(),
            conversation_id: conversation.id,
            parent_id: messages.last().map(|m| m.id.clone()),
            role: if assistant {
                MessageRole::Assistant
            } else {
                MessageRole::User
            },
            content: Content::text(vec![body]).expect("content"),
            status: MessageStatus::FinishedSuccessfully,
            model_slug: assistant.then(|| ModelSlug::parse("llama3.1:8b").expect("model slug")),
            metadata,
            created_at: at,
            updated_at: at,
        });
    }
    let id = conversation.id;
    (
        CachedValue::History(
            Box::new(conversation),
            MessagePage {
                messages,
                has_more: false,
                children: Vec::new(),
            },
        ),
        chars,
        id,
    )
}

/// Measures every operation on both backends.
pub(super) fn measure(runtime: &tokio::runtime::Runtime) -> SharedState {
    let url = redis_url();
    let redis_at = redis_host(&url);
    runtime.block_on(async {
        let pool = RedisPool::new(&RedisSettings {
            url: SecretString::from(url),
            cluster: false,
            connections: POOL_SIZE,
            connect_timeout: CONNECT_TIMEOUT,
            command_timeout: COMMAND_TIMEOUT,
            key_prefix: format!("confab-bench:{}:", uuid::Uuid::new_v4()),
        })
        .unwrap_or_else(|e| panic!("the Redis URL (REDIS_URL) is unusable: {e}"));
        if let Err(e) = pool.check().await {
            panic!(
                "the shared-state section needs Redis at {redis_at} (set REDIS_URL to use \
                 another): {e}"
            );
        }

        let policy = Arc::new(policy());
        let callers: Arc<[String]> = (0..CALLERS).map(|i| format!("user:{i}")).collect();
        let limiters: [(&'static str, Arc<dyn RateLimiter>); 2] = [
            ("in-process", Arc::new(GovernorLimiter::new())),
            ("Redis", Arc::new(RedisLimiter::new(pool.clone()))),
        ];
        let (value, history_chars, conversation) = history();
        // The keys the service uses for a history (`conv:{id}:history`,
        // and the value under its version).
        let version_key: Arc<str> = format!("conv:{conversation}:history").into();
        let caches: [(&'static str, Arc<dyn Cache>); 2] = [
            (
                "in-process",
                Arc::new(MemoryCache::new(MEMORY_CACHE_ENTRIES, 1 << 30)),
            ),
            ("Redis", Arc::new(RedisCache::new(pool))),
        ];
        let mut values = Vec::new();
        for (backend, cache) in &caches {
            let version = cache
                .version(&version_key)
                .await
                .unwrap_or_else(|e| panic!("{backend} Cache::version failed: {e}"));
            let key: Arc<str> = format!("{version_key}:{version}").into();
            cache
                .put(&key, value.clone(), CACHE_TTL)
                .await
                .unwrap_or_else(|e| panic!("{backend} Cache::put failed: {e}"));
            values.push(key);
        }

        let mut rows = Vec::new();
        for (backend, limiter) in &limiters {
            let op = Op::Check(
                Arc::clone(limiter),
                Arc::clone(&policy),
                Arc::clone(&callers),
            );
            for c in [1, CONCURRENCY] {
                rows.push(measure_one("RateLimiter::check", backend, &op, c).await);
            }
        }
        for ((backend, cache), key) in caches.iter().zip(&values) {
            let op = Op::Get(Arc::clone(cache), Arc::clone(key));
            for c in [1, CONCURRENCY] {
                rows.push(measure_one("Cache::get (hit)", backend, &op, c).await);
            }
        }
        for (backend, cache) in &caches {
            let op = Op::Version(Arc::clone(cache), Arc::clone(&version_key));
            for c in [1, CONCURRENCY] {
                rows.push(measure_one("Cache::version", backend, &op, c).await);
            }
        }
        SharedState {
            rows,
            redis_at,
            history_chars,
        }
    })
}

/// `n` with thousands separators (`20,000`).
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// Appends the section to `md`.
pub(super) fn write_markdown(md: &mut String, s: &SharedState, cores: usize) {
    let redis_at = &s.redis_at;
    let chars = grouped(s.history_chars as u64);
    let cap = RUN_CAP.as_secs();
    let policy = policy();
    let quota = grouped(u64::from(policy.quota));
    let window = policy.window.as_secs();
    let (ops, warm_up, callers) = (
        grouped(OPS as u64),
        grouped(WARM_UP as u64),
        grouped(CALLERS as u64),
    );
    let text = format!(
        "
## Shared state: in-process vs Redis

What one rate-limit check, one cache hit and one cache-version lookup cost with
the in-process adapters (`confab-memory`, the default) and with the Redis ones
(`confab-redis`, when `REDIS_URL` is set, for several instances), called directly
through the ports in the bench process: no HTTP, no server. Redis: the one at
`{redis_at}`, through {POOL_SIZE} multiplexed connections (the default
`redis.connections`), under a fresh key prefix.

- **`RateLimiter::check`**: a policy of {quota} per {window} s, which never
  refuses here; the checks go to {callers} callers in turn. Redis: one `EVALSHA`
  of the GCRA script per check.
- **`Cache::get (hit)`**: a conversation history ({MESSAGES} messages, user and
  assistant in turn, {chars} characters of text) stored once under the key a read
  uses; every get finds it. In-process: a clone of the value; Redis: a `GET` and
  the decode of its JSON.
- **`Cache::version`**: the version lookup every cached read makes first (so a
  history read served from the cache costs a version and a get). Redis: one
  `EVALSHA`.

Each operation runs {ops} times one after the other (concurrency 1), then
{ops} times in all from {CONCURRENCY} tasks sharing the adapter, on the bench's
tokio runtime ({cores} worker threads); each run follows an unmeasured warm-up of
{warm_up} at the same concurrency and is capped at {cap} s. Latency is per
operation, from the call to its result (two clock reads included, tens of ns).
At concurrency {CONCURRENCY} a Redis operation's latency includes its wait behind
the others in flight (about {CONCURRENCY} / throughput), not just its round trip;
an in-process operation completes without yielding, so there the row shows the
{cores} worker threads contending for the adapter. Redis, the bench and whatever
else runs share the {cores} cores, and the round trip is over loopback when Redis
is local: the figures are a floor for a Redis on another host.

| operation | backend | concurrency | ops | ops/s | p50 µs | p99 µs |
|---|---|---:|---:|---:|---:|---:|
"
    );
    md.push_str(&text);
    let mut rows = s.rows.iter().peekable();
    while let Some(r) = rows.next() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} |",
            r.operation,
            r.backend,
            r.concurrency,
            r.ops,
            r.per_second(),
            r.p50_us,
            r.p99_us
        );
        // After the Redis rows of an operation: what Redis adds.
        let last_of_operation = rows.peek().is_none_or(|n| n.operation != r.operation);
        if last_of_operation {
            for c in [1, CONCURRENCY] {
                let find = |backend: &str| {
                    s.rows.iter().find(|x| {
                        x.operation == r.operation && x.backend == backend && x.concurrency == c
                    })
                };
                if let (Some(memory), Some(redis)) = (find("in-process"), find("Redis")) {
                    let _ = writeln!(
                        md,
                        "| {} | **Redis − in-process** | {c} | | | **{:+.2}** | **{:+.2}** |",
                        r.operation,
                        redis.p50_us - memory.p50_us,
                        redis.p99_us - memory.p99_us
                    );
                }
            }
        }
    }
    let capped: Vec<String> = s
        .rows
        .iter()
        .filter(|r| r.ops < OPS)
        .map(|r| format!("{} {} at {}", r.operation, r.backend, r.concurrency))
        .collect();
    if !capped.is_empty() {
        let _ = writeln!(
            md,
            "\nStopped at the {cap} s cap before {ops} operations: {}.",
            capped.join("; ")
        );
    }
}
