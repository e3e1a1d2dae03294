//! The only place that names concrete adapters: builds the use cases from
//! the configuration.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use confab_app::{
    AccountPorts, AccountRules, Accounts, ConversationPorts, ConversationRules, Conversations,
};
use confab_domain::ModelSlug;
use confab_jwt::{JwtCodec, JwtSettings, MIN_SECRET_BYTES};
use confab_llm::{OpenAiCompatible, OpenAiSettings};
use confab_memory::{
    GovernorLimiter, InMemoryBlocklist, MemoryCache, MemoryStreamLog, StreamLogOptions,
};
use confab_password::{HasherOptions, Pbkdf2Hasher};
use confab_ports::{ChatModel, RateLimiter, RatePolicy};
use confab_sql::{PoolOptions, SqlStore};
use secrecy::{ExposeSecret, SecretString};

use crate::application::StartupError;
use crate::settings::Settings;

/// The wired use cases and the ports the HTTP layer also needs.
pub(crate) struct Wired {
    pub(crate) store: Arc<SqlStore>,
    pub(crate) accounts: Accounts,
    pub(crate) conversations: Conversations,
    pub(crate) limiter: Arc<dyn RateLimiter>,
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Opens the configured store and applies migrations when configured.
pub(crate) async fn open_store(settings: &Settings) -> Result<SqlStore, StartupError> {
    let target = settings.database_target()?;
    let redacted = target.redacted();
    let db = &settings.database;
    let options = PoolOptions {
        max_size: db.max_connections,
        acquire_timeout: Duration::from_millis(db.acquire_timeout_ms),
        sqlite_busy_timeout: Duration::from_millis(db.sqlite_busy_timeout_ms),
    };
    let store = SqlStore::open(target, options).await?;
    tracing::info!(database = %redacted, backend = ?store.backend(), "database opened");
    if db.migrate_on_start {
        let applied = store.migrate().await?;
        tracing::info!(applied, "migrations up to date");
    }
    Ok(store)
}

/// A per-minute policy.
pub(crate) fn per_minute(name: &str, quota: u32) -> RatePolicy {
    RatePolicy {
        name: name.to_owned(),
        quota,
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
            access_ttl: Duration::from_secs(auth.access_ttl_secs),
            refresh_ttl: Duration::from_secs(auth.refresh_ttl_secs),
            resume_ttl: Duration::from_secs(settings.generation.resume_ttl_secs),
            leeway: Duration::from_secs(auth.leeway_secs),
        },
    )
    .map_err(|e| StartupError::Setup(e.to_string()))?;
    let codec = Arc::new(codec);
    let limiter: Arc<dyn RateLimiter> = Arc::new(GovernorLimiter::new());
    let login = settings.rate_limit.login_per_minute;
    let accounts = Accounts::new(
        AccountPorts {
            users: store.clone(),
            hasher: Arc::new(hasher),
            tokens: codec.clone(),
            refresh_tokens: store.clone(),
            blocklist: Arc::new(InMemoryBlocklist::new()),
            limiter: limiter.clone(),
        },
        AccountRules {
            per_ip: per_minute("login", login),
            per_account: per_minute("login-account", login),
            refresh_reuse_grace: Duration::from_millis(auth.refresh_reuse_grace_ms),
        },
    );
    let conversations = conversations(settings, &store, codec, limiter.clone())?;
    Ok(Wired {
        store,
        accounts,
        conversations,
        limiter,
    })
}

/// The chat model the configuration names: an OpenAI-compatible server, or
/// none yet for `local` (the built-in model is not part of this build).
fn chat_model(settings: &Settings) -> Result<Option<Arc<dyn ChatModel>>, StartupError> {
    let llm = &settings.llm;
    if llm.provider != "openai" {
        tracing::warn!(
            "CONFAB_LLM_PROVIDER=local: no built-in model in this build yet; sending a message answers 503 until CONFAB_LLM_PROVIDER=openai is configured"
        );
        return Ok(None);
    }
    let key = llm.api_key.expose_secret();
    let model = OpenAiCompatible::new(OpenAiSettings {
        base_url: llm.base_url.clone(),
        api_key: (!key.is_empty()).then(|| SecretString::from(key.to_owned())),
        connect_timeout: Duration::from_millis(llm.connect_timeout_ms),
        first_token_timeout: Duration::from_millis(llm.first_token_timeout_ms),
        idle_timeout: Duration::from_millis(llm.idle_timeout_ms),
        total_timeout: Duration::from_secs(llm.total_timeout_secs),
    })
    .map_err(|e| StartupError::Setup(format!("llm: {e}")))?;
    Ok(Some(Arc::new(model)))
}

fn slug(name: &str) -> Result<ModelSlug, StartupError> {
    ModelSlug::parse(name).map_err(|e| StartupError::Setup(format!("llm model '{name}': {e}")))
}

/// The conversation use cases over the store, the in-process stream log
/// and cache, and the configured model.
fn conversations(
    settings: &Settings,
    store: &Arc<SqlStore>,
    codec: Arc<JwtCodec>,
    limiter: Arc<dyn RateLimiter>,
) -> Result<Conversations, StartupError> {
    let llm = &settings.llm;
    let g = &settings.generation;
    let max_tokens = llm.max_tokens;
    let log = MemoryStreamLog::new(StreamLogOptions {
        retention: Duration::from_secs(g.stream_retention_secs),
        // Every event but the text deltas is one of a handful; the adapter
        // sends at most one delta per token.
        max_events_per_log: usize::try_from(max_tokens)
            .unwrap_or(usize::MAX)
            .saturating_add(64),
        max_logs: g.max_streams,
    });
    let default_model = if llm.model.is_empty() {
        slug("local")?
    } else {
        slug(&llm.model)?
    };
    Ok(Conversations::new(
        ConversationPorts {
            conversations: store.clone(),
            messages: store.clone(),
            model: chat_model(settings)?,
            log: Arc::new(log),
            cache: Arc::new(MemoryCache::new(settings.cache.max_entries)),
            resume_tokens: codec,
            limiter,
        },
        ConversationRules {
            default_model,
            allowed_models: llm
                .models
                .iter()
                .map(|m| slug(m))
                .collect::<Result<_, _>>()?,
            max_tokens,
            system_prompt: llm.system_prompt.clone(),
            prompt_budget_chars: llm.prompt_budget_chars,
            max_concurrent_per_user: g.max_concurrent_per_user,
            generation_policy: per_minute("generation", g.per_minute),
            flush_interval: Duration::from_millis(g.flush_interval_ms),
            title_generation: llm.title_generation,
            title_timeout: Duration::from_millis(llm.title_timeout_ms),
            cache_ttl: Duration::from_secs(settings.cache.ttl_secs),
            stop_wait: Duration::from_millis(g.stop_wait_ms),
        },
    ))
}
