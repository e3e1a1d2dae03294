//! The only place that names concrete adapters: builds the use cases from
//! the configuration.

use std::io::Write;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use confab_app::{
    AccountPorts, AccountRules, Accounts, FallbackLimiter, LoginFailures, SeparateAdmission,
};
use confab_jwt::{JwtCodec, JwtSettings, MIN_SECRET_BYTES};
use confab_memory::{
    GovernorLimiter, IdempotencyLimits, InMemoryBlocklist, InMemoryFailures, InMemoryIdempotency,
    MemoryCache, MemoryStreamLog, StreamLogOptions,
};
use confab_password::{HasherOptions, Pbkdf2Hasher};
use confab_ports::{
    Admission, Cache, Erasure, FailureCounter, IdempotencyStore, RateLimiter, RatePolicy,
    StreamLog, TokenBlocklist,
};
use confab_redis::{
    RedisAdmission, RedisBlocklist, RedisCache, RedisErasure, RedisFailures, RedisIdempotency,
    RedisLimiter, RedisPool, RedisSettings, RedisStreamLog, RedisStreamLogOptions,
};
use confab_sql::SqlStore;
use secrecy::{ExposeSecret, SecretString};

use crate::application::StartupError;
use crate::settings::Settings;

/// Most accounts and account-address pairs whose failed logins one
/// instance counts at once without Redis (about 100 bytes each).
const FAILURE_KEYS: usize = 1_000_000;

mod chat;

pub(crate) use chat::{ChatWiring, conversations};

/// The wired use cases and the ports the HTTP layer also needs.
pub(crate) struct Wired {
    pub(crate) store: Arc<SqlStore>,
    pub(crate) accounts: Accounts,
    pub(crate) codec: Arc<JwtCodec>,
    pub(crate) limiter: Arc<dyn RateLimiter>,
    /// Redis, when `REDIS_URL` is set.
    pub(crate) redis: Option<RedisPools>,
    /// Where `Idempotency-Key`s are kept.
    pub(crate) idempotency: Arc<dyn IdempotencyStore>,
    /// The logs of running answers.
    pub(crate) log: Arc<dyn StreamLog>,
    /// The read cache.
    pub(crate) cache: Arc<dyn Cache>,
    /// The token blocklist, which keeps the account-state versions.
    pub(crate) blocklist: Arc<dyn TokenBlocklist>,
}

/// The connections to the Redis `REDIS_URL` names: every command shares
/// a few multiplexed ones; the stream log opens its own blocking and
/// pub/sub connections (one each).
pub(crate) struct RedisPools {
    /// The command connections.
    pub(crate) shared: RedisPool,
}

/// The Redis connections `REDIS_URL` names, if any. No connection is made
/// here: an instance starts while Redis is down (readiness says so) and
/// uses it as soon as it answers.
fn redis_pools(settings: &Settings) -> Result<Option<RedisPools>, StartupError> {
    let r = &settings.redis;
    if r.url.expose_secret().is_empty() {
        return Ok(None);
    }
    let shared = RedisPool::new(&RedisSettings {
        url: r.url.clone(),
        cluster: r.cluster,
        connections: r.connections.get(),
        connect_timeout: r.connect_timeout,
        command_timeout: r.command_timeout,
        key_prefix: r.key_prefix.clone(),
    })
    .map_err(|e| StartupError::Setup(e.to_string()))?;
    tracing::info!(key_prefix = %r.key_prefix, "redis: cache, rate limits, token blocklist and answer streams shared through Redis");
    Ok(Some(RedisPools { shared }))
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Opens the configured store and applies migrations when configured.
pub(crate) async fn open_store(settings: &Settings) -> Result<SqlStore, StartupError> {
    let target = settings.database_target()?;
    let redacted = target.redacted();
    let db = &settings.database;
    let options = settings.pool_options()?;
    let store = SqlStore::open(target, options).await?;
    tracing::info!(database = %redacted, backend = ?store.backend(), "database opened");
    if db.migrate_on_start {
        let applied = store.migrate().await?;
        tracing::info!(applied, "migrations up to date");
    }
    Ok(store)
}

/// A per-minute policy.
pub(crate) fn per_minute(name: &str, quota: NonZeroU32) -> RatePolicy {
    RatePolicy {
        name: name.to_owned(),
        quota: quota.get(),
        window: Duration::from_secs(60),
    }
}

/// The signing secret: `CONFAB_JWT_SECRET`, or in development a secret
/// generated once and kept in `auth.secret_file` (validation has already
/// refused a missing secret anywhere else).
fn jwt_secret(settings: &Settings) -> Result<SecretString, StartupError> {
    let configured = settings.auth.jwt_secret.expose_secret();
    if !configured.is_empty() {
        return Ok(SecretString::from(configured.to_owned()));
    }
    let path = &settings.auth.secret_file;
    let setup = |what: &str, e: &dyn std::fmt::Display| {
        StartupError::Setup(format!("{what} {}: {e}", path.display()))
    };
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim();
        if existing.len() >= MIN_SECRET_BYTES {
            tracing::warn!(file = %path.display(), "CONFAB_JWT_SECRET is not set: using the development secret kept in the data directory");
            return Ok(SecretString::from(existing.to_owned()));
        }
    }
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| setup("cannot draw a secret for", &e))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| setup("cannot create the directory of", &e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| setup("cannot write", &e))?;
    file.write_all(secret.as_bytes())
        .map_err(|e| setup("cannot write", &e))?;
    tracing::warn!(file = %path.display(), "CONFAB_JWT_SECRET is not set: generated a development secret and kept it in the data directory");
    Ok(SecretString::from(secret))
}

/// The state an instance shares with the others through Redis, or keeps
/// in process without it.
struct SharedState {
    limiter: Arc<dyn RateLimiter>,
    blocklist: Arc<dyn TokenBlocklist>,
    admission: Arc<dyn Admission>,
    idempotency: Arc<dyn IdempotencyStore>,
    failures: Arc<dyn FailureCounter>,
    log: Arc<dyn StreamLog>,
    cache: Arc<dyn Cache>,
    /// What forgets a deleted account's entries in all of the above.
    erasures: Vec<Arc<dyn Erasure>>,
}

/// The stream log's bound on one answer's events: every event but the
/// text deltas is one of a handful, and the model adapters send at most
/// one delta per token.
fn max_events_per_log(settings: &Settings) -> usize {
    usize::try_from(settings.llm.max_tokens.get())
        .unwrap_or(usize::MAX)
        .saturating_add(64)
}

/// Shared state on Redis; the rate limits fall back to this process's
/// limiter while Redis is down.
fn on_redis(settings: &Settings, pool: &RedisPool) -> SharedState {
    let local: Arc<dyn RateLimiter> = Arc::new(GovernorLimiter::new());
    let lease = settings.redis.stream_lease;
    SharedState {
        limiter: Arc::new(FallbackLimiter::new(
            Arc::new(RedisLimiter::new(pool.clone())),
            local,
        )),
        blocklist: Arc::new(RedisBlocklist::new(pool.clone())),
        // One script for both (one round trip). With Redis down the
        // standing can't be read either: the request is then treated as
        // unauthenticated, as before.
        admission: Arc::new(RedisAdmission::new(pool.clone())),
        idempotency: Arc::new(RedisIdempotency::new(
            pool.clone(),
            settings.idempotency.max_per_user.get(),
        )),
        failures: Arc::new(RedisFailures::new(pool.clone())),
        log: Arc::new(RedisStreamLog::new(
            pool.clone(),
            RedisStreamLogOptions {
                retention: settings.generation.stream_retention,
                max_events_per_log: max_events_per_log(settings),
                lease,
                poll_interval: lease / 3,
            },
        )),
        cache: Arc::new(RedisCache::new(pool.clone())),
        erasures: vec![Arc::new(RedisErasure::new(pool.clone()))],
    }
}

/// Shared state kept in this process (one instance).
fn in_process(settings: &Settings) -> SharedState {
    let limiter: Arc<dyn RateLimiter> = Arc::new(GovernorLimiter::new());
    let blocklist = Arc::new(InMemoryBlocklist::new());
    let idem = &settings.idempotency;
    let idempotency = Arc::new(InMemoryIdempotency::new(IdempotencyLimits {
        max_entries: idem.max_entries.get(),
        max_bytes: idem.max_bytes.get(),
        max_per_owner: idem.max_per_user.get(),
    }));
    let failures = Arc::new(InMemoryFailures::new(FAILURE_KEYS));
    let log = Arc::new(MemoryStreamLog::new(StreamLogOptions {
        retention: settings.generation.stream_retention,
        max_events_per_log: max_events_per_log(settings),
        max_logs: settings.generation.max_streams.get(),
    }));
    let cache = Arc::new(MemoryCache::new(
        settings.cache.max_entries.get(),
        settings.cache.max_bytes.get(),
    ));
    SharedState {
        admission: Arc::new(SeparateAdmission::new(blocklist.clone(), limiter.clone())),
        limiter,
        erasures: vec![
            blocklist.clone(),
            idempotency.clone(),
            failures.clone(),
            log.clone(),
            cache.clone(),
        ],
        blocklist,
        idempotency,
        failures,
        log,
        cache,
    }
}

/// Builds every adapter and the use cases over them.
pub(crate) async fn wire(settings: &Settings) -> Result<Wired, StartupError> {
    let store = Arc::new(open_store(settings).await?);
    let auth = &settings.auth;
    let hasher = Pbkdf2Hasher::new(HasherOptions {
        iterations: auth.pbkdf2_iterations,
        max_concurrent: if auth.max_concurrent_hashes == 0 {
            cores()
        } else {
            auth.max_concurrent_hashes
        },
        max_waiting: auth.max_waiting_hashes,
    })
    .map_err(|e| StartupError::Setup(e.to_string()))?;
    let secret = jwt_secret(settings)?;
    let codec = JwtCodec::new(
        secret.expose_secret().as_bytes(),
        JwtSettings {
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            access_ttl: auth.access_ttl,
            refresh_ttl: auth.refresh_ttl,
            resume_ttl: settings.generation.resume_ttl,
            leeway: auth.leeway,
        },
    )
    .map_err(|e| StartupError::Setup(e.to_string()))?;
    let codec = Arc::new(codec);
    let redis = redis_pools(settings)?;
    let SharedState {
        limiter,
        blocklist,
        admission,
        idempotency,
        failures,
        log,
        cache,
        erasures,
    } = match &redis {
        Some(pools) => on_redis(settings, &pools.shared),
        None => in_process(settings),
    };
    let rl = &settings.rate_limit;
    let login = rl.login_per_minute;
    let accounts = Accounts::new(
        AccountPorts {
            users: store.clone(),
            hasher: Arc::new(hasher),
            tokens: codec.clone(),
            refresh_tokens: store.clone(),
            blocklist: blocklist.clone(),
            admission,
            limiter: limiter.clone(),
            failures,
            erasures,
            usage: store.clone(),
            api_keys: store.clone(),
            key_secrets: Arc::new(confab_password::KeySecrets),
        },
        AccountRules {
            per_ip: per_minute("login", login),
            login_failures: LoginFailures {
                per_address: rl.login_failures_per_address.get(),
                per_account: rl.login_failures_per_account.get(),
                window: rl.login_failure_window,
            },
            register_per_ip: per_minute("register", settings.rate_limit.register_per_minute),
            key_lookups: per_minute("api-key-lookups", rl.api_key_lookups_per_minute),
            register_overall: per_minute(
                "register-all",
                settings.rate_limit.register_overall_per_minute,
            ),
            refresh_reuse_grace: auth.refresh_reuse_grace,
        },
    );
    Ok(Wired {
        store,
        accounts,
        codec,
        limiter,
        redis,
        idempotency,
        log,
        cache,
        blocklist,
    })
}
