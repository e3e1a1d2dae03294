//! Typed configuration: the embedded defaults, then files, then the
//! environment (see `config/default.toml` for every key).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use confab_jwt::MIN_SECRET_BYTES;
use confab_password::MIN_ITERATIONS;
use confab_sql::{Backend, DatabaseTarget, PoolOptions};
use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod chat;
mod units;

pub use chat::{
    CacheSettings, GenerationSettings, IdempotencySettings, LlmProvider, LlmSettings,
    LocalModelSettings, QuotaSettings,
};

/// `CONFAB_ENV`: which `config/{name}.toml` is layered on the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnvironment {
    /// `development` (the default): the only one that may run without
    /// `CONFAB_JWT_SECRET` (a secret is generated and kept in a file).
    Development,
    /// Any other plain name (`production`, `staging`, …): its file must
    /// exist, and secrets must be given.
    Named(String),
}

impl RunEnvironment {
    /// The environment called `name`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an empty name or one with characters
    /// other than letters, digits, `-` and `_` (it names a file).
    fn parse(name: &str) -> Result<Self, ConfigError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "CONFAB_ENV must be a plain name such as development or production",
            ));
        }
        Ok(if name == "development" {
            Self::Development
        } else {
            Self::Named(name.to_owned())
        })
    }

    /// Its name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Development => "development",
            Self::Named(name) => name,
        }
    }
}

impl fmt::Display for RunEnvironment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, else pretty.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

impl units::Named for LogFormat {
    const WHAT: &'static str = "log.format";
    const NAMES: &'static [(Self, &'static str)] = &[
        (Self::Auto, "auto"),
        (Self::Json, "json"),
        (Self::Pretty, "pretty"),
    ];
}

units::named!(LogFormat);

const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// Short environment names and the keys they set (applied last).
const SHORT_NAMES: &[(&str, &str)] = &[
    ("CONFAB_LISTEN", "server.listen"),
    ("CONFAB_METRICS_LISTEN", "metrics.listen"),
    ("DATABASE_URL", "database.url"),
    ("DATABASE_MIGRATION_URL", "database.migration_url"),
    ("REDIS_URL", "redis.url"),
    ("REDIS_CLUSTER", "redis.cluster"),
    ("CONFAB_JWT_SECRET", "auth.jwt_secret"),
    ("CONFAB_LLM_PROVIDER", "llm.provider"),
    ("CONFAB_LLM_BASE_URL", "llm.base_url"),
    ("CONFAB_LLM_API_KEY", "llm.api_key"),
    ("CONFAB_LLM_MODEL", "llm.model"),
];

/// A configuration that can't be used; the message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or variable could not be read or has the wrong type.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value is unsafe or invalid.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

const fn development() -> RunEnvironment {
    RunEnvironment::Development
}

/// Everything Confab can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The public listener.
    pub server: ServerSettings,
    /// The metrics listener.
    pub metrics: MetricsSettings,
    /// The database.
    pub database: DatabaseSettings,
    /// Redis (scale-out).
    pub redis: RedisSettings,
    /// Accounts and tokens.
    pub auth: AuthSettings,
    /// Rate limits.
    pub rate_limit: RateLimitSettings,
    /// The chat model.
    pub llm: LlmSettings,
    /// Generation and streaming.
    pub generation: GenerationSettings,
    /// The read cache.
    pub cache: CacheSettings,
    /// Token allowances.
    pub quota: QuotaSettings,
    /// `Idempotency-Key`.
    pub idempotency: IdempotencySettings,
    /// Cross-origin browser access.
    pub cors: CorsSettings,
    /// Security headers.
    pub security: SecuritySettings,
    /// `[api]`.
    pub api: ApiSettings,
    /// `[web]`: the chat page.
    pub web: WebSettings,
    /// Logging.
    pub log: LogSettings,
    /// `CONFAB_ENV`: `development` unless set.
    #[serde(skip, default = "development")]
    pub environment: RunEnvironment,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Public API address.
    pub listen: String,
    /// Worker threads (0 = cores).
    pub workers: usize,
    /// After the drain, how long running answers get to complete (and
    /// in-flight requests to finish) before the answers are stopped.
    #[serde(rename = "shutdown_timeout_secs", deserialize_with = "units::secs")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM/SIGINT, how long `/readyz` answers 503 while
    /// everything else is still served and accepted, so that a balancer
    /// takes the instance out of rotation before it stops listening.
    #[serde(rename = "drain_secs", deserialize_with = "units::secs")]
    pub drain: Duration,
    /// Time to receive a request head.
    #[serde(rename = "request_head_timeout_ms", deserialize_with = "units::millis")]
    pub request_head_timeout: Duration,
    /// Time to wait for a client to close.
    #[serde(rename = "disconnect_timeout_ms", deserialize_with = "units::millis")]
    pub disconnect_timeout: Duration,
    /// Idle keep-alive.
    #[serde(rename = "keep_alive_secs", deserialize_with = "units::secs")]
    pub keep_alive: Duration,
    /// Connections per worker.
    pub max_connections: NonZeroUsize,
    /// Largest JSON body.
    pub json_limit_bytes: usize,
    /// Largest body of a message send.
    pub send_limit_bytes: usize,
    /// Time for a request body to arrive.
    #[serde(rename = "body_read_timeout_ms", deserialize_with = "units::millis")]
    pub body_read_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Metrics listener address.
    pub listen: String,
    /// Serve metrics at all.
    pub enabled: bool,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The URL (may hold a password, so it is a secret).
    pub url: SecretString,
    /// Pool size.
    pub max_connections: NonZeroU32,
    /// Pool checkout timeout.
    #[serde(rename = "acquire_timeout_ms", deserialize_with = "units::millis")]
    pub acquire_timeout: Duration,
    /// SQLite busy timeout.
    #[serde(rename = "sqlite_busy_timeout_ms", deserialize_with = "units::millis")]
    pub sqlite_busy_timeout: Duration,
    /// Migrate when `serve` starts.
    pub migrate_on_start: bool,
    /// Where migrations run when not on `url` (a direct connection to
    /// PostgreSQL behind a pooler); empty: `url`. Secret like `url`.
    pub migration_url: SecretString,
    /// Keep statements prepared on PostgreSQL connections (off behind a
    /// pooler in transaction mode).
    pub prepared_statements: bool,
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// The URL; empty for in-process adapters. With `cluster`, the URLs of
    /// one or more of the cluster's nodes, comma-separated.
    pub url: SecretString,
    /// The URL names nodes of a Redis Cluster.
    pub cluster: bool,
    /// Multiplexed connections every command shares (each carries any
    /// number of commands at once).
    pub connections: NonZeroUsize,
    /// How long making a connection may take before Redis counts as down.
    #[serde(rename = "connect_timeout_ms", deserialize_with = "units::millis")]
    pub connect_timeout: Duration,
    /// How long a command waits for its reply (Redis busy) before it fails.
    #[serde(rename = "command_timeout_ms", deserialize_with = "units::millis")]
    pub command_timeout: Duration,
    /// Prefix of every key Confab writes: deployments sharing one Redis
    /// use different ones.
    pub key_prefix: String,
    /// Milliseconds a running answer's stream stays claimed after its
    /// instance last renewed it: how long after an instance dies its
    /// conversations can answer again and its answers are swept. Renewed
    /// three times per lease; each renewal also reads the stop flag.
    #[serde(rename = "stream_lease_ms", deserialize_with = "units::millis")]
    pub stream_lease: Duration,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret (environment only).
    pub jwt_secret: SecretString,
    /// Where development keeps a generated secret.
    pub secret_file: PathBuf,
    /// Token issuer.
    pub issuer: String,
    /// Token audience.
    pub audience: String,
    /// Access token lifetime.
    #[serde(rename = "access_ttl_secs", deserialize_with = "units::secs")]
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    #[serde(rename = "refresh_ttl_secs", deserialize_with = "units::secs")]
    pub refresh_ttl: Duration,
    /// Clock skew tolerated on `exp`/`nbf`.
    #[serde(rename = "leeway_secs", deserialize_with = "units::secs")]
    pub leeway: Duration,
    /// Duplicate-refresh window.
    #[serde(rename = "refresh_reuse_grace_ms", deserialize_with = "units::millis")]
    pub refresh_reuse_grace: Duration,
    /// PBKDF2 iterations.
    pub pbkdf2_iterations: u32,
    /// Concurrent hashes (0 = cores).
    pub max_concurrent_hashes: usize,
    /// Queued hashes before 503.
    pub max_waiting_hashes: usize,
}

/// `[rate_limit]`: requests per minute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Per client address, without a valid token.
    pub anonymous_per_minute: NonZeroU32,
    /// Per user.
    pub user_per_minute: NonZeroU32,
    /// Per admin.
    pub admin_per_minute: NonZeroU32,
    /// Per API key.
    pub api_key_per_minute: NonZeroU32,
    /// Look-ups of API keys an instance does not know, per client address.
    pub api_key_lookups_per_minute: NonZeroU32,
    /// Login attempts per address.
    pub login_per_minute: NonZeroU32,
    /// Failed logins one address may have on one account in a window.
    pub login_failures_per_address: NonZeroU32,
    /// Failed logins on one account past which only addresses without
    /// failures on it may try.
    pub login_failures_per_account: NonZeroU32,
    /// Seconds a count of failed logins lasts from its first failure.
    #[serde(rename = "login_failure_window_secs", deserialize_with = "units::secs")]
    pub login_failure_window: std::time::Duration,
    /// Registrations per address.
    pub register_per_minute: NonZeroU32,
    /// Registrations from all addresses together.
    pub register_overall_per_minute: NonZeroU32,
}

/// `[cors]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    /// Exact allowed origins.
    pub allowed_origins: Vec<String>,
    /// Preflight cache time.
    pub max_age_secs: u32,
}

/// `[web]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSettings {
    /// Serve the chat page at `/` (off: an API-only deployment, where `/`
    /// and `/assets/…` answer 404).
    pub enabled: bool,
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Route prefixes marked deprecated (seed `004`).
    pub deprecations: Vec<DeprecationSettings>,
}

/// One `[[api.deprecations]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeprecationSettings {
    /// The path prefix (`/backend-api`).
    pub prefix: String,
    /// When it was deprecated (RFC 3339).
    pub since: String,
    /// When it stops being served (RFC 3339).
    #[serde(default)]
    pub sunset: Option<String>,
    /// What replaces it.
    #[serde(default)]
    pub successor: Option<String>,
    /// Where the deprecation is explained.
    #[serde(default)]
    pub policy: Option<String>,
}

impl ApiSettings {
    /// The deprecation notices, checked.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the entry that does not parse.
    pub fn deprecated_routes(&self) -> Result<confab_http::DeprecatedRoutes, ConfigError> {
        let notices: Vec<_> = self
            .deprecations
            .iter()
            .map(|d| confab_http::DeprecationNotice {
                prefix: d.prefix.clone(),
                since: d.since.clone(),
                sunset: d.sunset.clone(),
                successor: d.successor.clone(),
                policy: d.policy.clone(),
            })
            .collect();
        confab_http::DeprecatedRoutes::new(&notices)
            .map_err(|e| invalid(format!("api.deprecations: {e}")))
    }
}

/// `[security]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// HSTS max-age.
    #[serde(rename = "hsts_max_age_secs", deserialize_with = "units::secs")]
    pub hsts_max_age: Duration,
    /// Host names the service answers for (`chat.example.com`, or
    /// `*.example.com` for its subdomains); empty: any.
    pub allowed_hosts: Vec<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `auto`, `json` or `pretty`.
    pub format: LogFormat,
    /// Default filter.
    pub filter: String,
}

impl Settings {
    /// Loads from the process environment and `./config` (or
    /// `CONFAB_CONFIG_DIR`), then validates.
    ///
    /// # Errors
    /// [`ConfigError`] with a one-line reason.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(&std::env::vars().collect())
    }

    /// Loads from the given variables (instead of the process environment)
    /// and validates.
    ///
    /// # Errors
    /// [`ConfigError`] with a one-line reason.
    pub fn load(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let environment =
            RunEnvironment::parse(vars.get("CONFAB_ENV").map_or("development", String::as_str))?;
        let dir = PathBuf::from(
            vars.get("CONFAB_CONFIG_DIR")
                .map_or("config", String::as_str),
        );
        let env_file = dir.join(format!("{environment}.toml"));
        if environment != RunEnvironment::Development && !env_file.exists() {
            return Err(invalid(format!(
                "CONFAB_ENV={environment} but {} does not exist",
                env_file.display()
            )));
        }
        let files = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(dir.join("default.toml")).required(false))
            .add_source(File::from(env_file).required(false));
        // Secrets never live in files: refuse before the environment is layered on.
        let from_files = files.clone().build()?;
        for key in ["auth.jwt_secret", "llm.api_key"] {
            if from_files.get_string(key).is_ok_and(|v| !v.is_empty()) {
                return Err(invalid(format!(
                    "{key} is set in a config file; secrets come only from the environment"
                )));
            }
        }
        let mut builder = files.add_source(
            Environment::with_prefix("CONFAB")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("cors.allowed_origins")
                .with_list_parse_key("security.allowed_hosts")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("llm.models")
                .source(Some(vars.clone().into_iter().collect())),
        );
        for (name, key) in SHORT_NAMES {
            builder = builder.set_override_option(*key, vars.get(*name).cloned())?;
        }
        let mut settings: Self = builder.build()?.try_deserialize()?;
        settings.environment = environment;
        settings.validate()?;
        Ok(settings)
    }

    /// True under `CONFAB_ENV=development` (the default): the only
    /// environment that may run without `CONFAB_JWT_SECRET`.
    #[must_use]
    pub fn is_development(&self) -> bool {
        self.environment == RunEnvironment::Development
    }

    /// The parsed database URL.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an unsupported URL.
    pub fn database_target(&self) -> Result<DatabaseTarget, ConfigError> {
        DatabaseTarget::parse(self.database.url.expose_secret()).map_err(|e| invalid(e.to_string()))
    }

    /// How the store's connections are set up: the pool, the statement
    /// handling and where migrations run.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an unusable migration URL.
    pub fn pool_options(&self) -> Result<PoolOptions, ConfigError> {
        let db = &self.database;
        let migration = db.migration_url.expose_secret().trim();
        let migration_target = if migration.is_empty() {
            None
        } else {
            let target = DatabaseTarget::parse(migration).map_err(|e| {
                invalid(format!(
                    "database.migration_url (DATABASE_MIGRATION_URL): {e}"
                ))
            })?;
            if target.backend() != Backend::Postgres
                || self.database_target()?.backend() != Backend::Postgres
            {
                return Err(invalid(
                    "database.migration_url (DATABASE_MIGRATION_URL) is for PostgreSQL: \
                     both it and database.url must be postgres:// URLs",
                ));
            }
            Some(target)
        };
        Ok(PoolOptions {
            max_size: db.max_connections.get(),
            acquire_timeout: db.acquire_timeout,
            sqlite_busy_timeout: db.sqlite_busy_timeout,
            prepared_statements: db.prepared_statements,
            migration_target,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen (CONFAB_LISTEN)", &self.server.listen)?;
        if self.metrics.enabled {
            parse_addr(
                "metrics.listen (CONFAB_METRICS_LISTEN)",
                &self.metrics.listen,
            )?;
        }
        self.database_target()?;
        self.pool_options()?;
        let s = &self.server;
        if s.workers > 1024 {
            return Err(invalid("server.workers must be at most 1024"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&s.json_limit_bytes) {
            return Err(invalid(
                "server.json_limit_bytes must be between 1024 and 16777216",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&s.send_limit_bytes) {
            return Err(invalid(
                "server.send_limit_bytes must be between 1024 and 16777216",
            ));
        }
        let db = &self.database;
        let positive = [
            ("auth.access_ttl_secs", self.auth.access_ttl),
            ("auth.refresh_ttl_secs", self.auth.refresh_ttl),
            ("server.request_head_timeout_ms", s.request_head_timeout),
            ("server.body_read_timeout_ms", s.body_read_timeout),
            ("server.shutdown_timeout_secs", s.shutdown_timeout),
            ("database.acquire_timeout_ms", db.acquire_timeout),
            ("database.sqlite_busy_timeout_ms", db.sqlite_busy_timeout),
            ("redis.connect_timeout_ms", self.redis.connect_timeout),
            ("redis.command_timeout_ms", self.redis.command_timeout),
            ("redis.stream_lease_ms", self.redis.stream_lease),
        ];
        must_be_positive(&positive)?;
        // Port 0 asks the OS for a fresh port each, so equal ":0" addresses differ.
        let public = parse_addr("server.listen (CONFAB_LISTEN)", &s.listen)?;
        if self.metrics.enabled && self.metrics.listen == s.listen && public.port() != 0 {
            return Err(invalid(
                "metrics.listen must differ from server.listen: /metrics is never served on the public address",
            ));
        }
        self.validate_redis()?;
        if self.auth.leeway > Duration::from_secs(60) {
            return Err(invalid("auth.leeway_secs must be at most 60"));
        }
        self.trusted_proxies()?;
        self.api.deprecated_routes()?;
        self.validate_auth()?;
        self.validate_chat()?;
        for host in &self.security.allowed_hosts {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
            if !ok {
                return Err(invalid(format!(
                    "security.allowed_hosts: '{host}' must be a host name like chat.example.com or *.example.com (no scheme, no port)"
                )));
            }
        }
        for origin in &self.cors.allowed_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin != "*";
            if !ok {
                return Err(invalid(format!(
                    "cors.allowed_origins: '{origin}' must be an origin like https://chat.example.com"
                )));
            }
            if origin.starts_with("http://") && !self.is_development() && !is_loopback(origin) {
                return Err(invalid(format!(
                    "cors.allowed_origins: '{origin}' is plain http: only https origins (or http://localhost) outside development, where a page on it could be changed in transit"
                )));
            }
        }
        Ok(())
    }

    /// The parsed trusted proxies.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an entry that is not an address or network.
    pub fn trusted_proxies(&self) -> Result<confab_http::TrustedProxies, ConfigError> {
        self.server
            .trusted_proxies
            .join(",")
            .parse()
            .map_err(|e| invalid(format!("server.trusted_proxies: {e}")))
    }

    /// `redis.url` names Redis (or the nodes of a cluster) by `redis://`
    /// or `rediss://` URLs; a cluster's key prefix holds no braces (they
    /// would make it every key's hash tag, all in one slot).
    fn validate_redis(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        let url = r.url.expose_secret();
        if url.is_empty() {
            return Ok(());
        }
        let urls: Vec<&str> = if r.cluster {
            url.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .collect()
        } else {
            vec![url]
        };
        if urls.is_empty()
            || !urls
                .iter()
                .all(|u| u.starts_with("redis://") || u.starts_with("rediss://"))
        {
            return Err(invalid(if r.cluster {
                "REDIS_URL must list the cluster's nodes as redis:// or rediss:// URLs, comma-separated"
            } else {
                "REDIS_URL must start with redis:// or rediss://"
            }));
        }
        if !r.cluster && url.contains(',') {
            return Err(invalid(
                "REDIS_URL names one Redis: a comma-separated list of a cluster's nodes needs REDIS_CLUSTER=true",
            ));
        }
        if r.cluster && r.key_prefix.contains(['{', '}']) {
            return Err(invalid(
                "redis.key_prefix must not hold { or } on a cluster (REDIS_CLUSTER)",
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if self.auth.pbkdf2_iterations < MIN_ITERATIONS {
            return Err(invalid(format!(
                "auth.pbkdf2_iterations must be at least {MIN_ITERATIONS}"
            )));
        }
        let secret = self.auth.jwt_secret.expose_secret();
        if !secret.is_empty() && secret.len() < MIN_SECRET_BYTES {
            return Err(invalid(format!(
                "CONFAB_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes"
            )));
        }
        if secret.is_empty() && !self.redis.url.expose_secret().is_empty() {
            return Err(invalid(
                "CONFAB_JWT_SECRET is required with REDIS_URL: instances sharing Redis must sign with one secret, and a generated one is each instance's own",
            ));
        }
        if secret.is_empty() && !self.is_development() {
            return Err(invalid(format!(
                "CONFAB_JWT_SECRET is required when CONFAB_ENV={} (only development may run without one)",
                self.environment
            )));
        }
        Ok(())
    }
}

/// Whether an `http://` origin is this machine's (`localhost`, `127.0.0.1`
/// or `[::1]`, any port).
fn is_loopback(origin: &str) -> bool {
    let host = origin.trim_start_matches("http://");
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.split(':').next().unwrap_or(host)
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// The first of `durations` (named by their keys) that is zero, as an error.
fn must_be_positive(durations: &[(&str, Duration)]) -> Result<(), ConfigError> {
    match durations.iter().find(|(_, d)| d.is_zero()) {
        Some((key, _)) => Err(invalid(format!("{key} must be greater than 0"))),
        None => Ok(()),
    }
}

fn parse_addr(what: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(format!(
            "{what} must be an address like 127.0.0.1:8080, not '{value}'"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // Never read the developer's ./config during unit tests.
        vars.entry("CONFAB_CONFIG_DIR".into())
            .or_insert_with(|| "/nonexistent".into());
        Settings::load(&vars)
    }

    #[test]
    fn jwt_secret_short_name_is_kept_verbatim() {
        let secret = "e2e-test-secret-0123456789abcdef-0123456789";
        let s = load(&[("CONFAB_JWT_SECRET", secret)]).unwrap();
        assert_eq!(s.auth.jwt_secret.expose_secret(), secret);
    }

    #[test]
    fn embedded_defaults_load() {
        let s = load(&[]).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.metrics.listen, "127.0.0.1:9090");
        assert_eq!(s.database.url.expose_secret(), "sqlite://data/confab.db");
        assert_eq!(s.auth.pbkdf2_iterations, 600_000);
        assert_eq!(s.llm.provider, LlmProvider::Local);
        assert!(s.is_development());
    }

    #[test]
    fn environment_overrides_in_order() {
        let s = load(&[
            ("CONFAB__SERVER__WORKERS", "3"),
            ("CONFAB__SERVER__LISTEN", "127.0.0.1:1"),
            ("CONFAB_LISTEN", "127.0.0.1:2"),
            ("DATABASE_URL", "postgres://u@h/db"),
            (
                "CONFAB__CORS__ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            ),
        ])
        .unwrap();
        assert_eq!(s.server.workers, 3);
        assert_eq!(s.server.listen, "127.0.0.1:2", "short names win");
        assert_eq!(
            s.cors.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(s.database.url.expose_secret(), "postgres://u@h/db");
    }

    #[test]
    fn unsafe_values_are_refused_with_one_line() {
        for (pairs, needle) in [
            (&[("CONFAB_JWT_SECRET", "short")][..], "at least 32 bytes"),
            (
                &[("CONFAB__AUTH__PBKDF2_ITERATIONS", "1000")][..],
                "pbkdf2_iterations",
            ),
            (
                &[("DATABASE_URL", "mysql://x")][..],
                "unsupported database URL scheme",
            ),
            (&[("CONFAB_LISTEN", "not-an-addr")][..], "CONFAB_LISTEN"),
            (
                &[("DATABASE_MIGRATION_URL", "postgres://u@h/db")][..],
                "both it and database.url must be postgres:// URLs",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://u@pooler/db"),
                    ("DATABASE_MIGRATION_URL", "sqlite://data/x.db"),
                ][..],
                "both it and database.url must be postgres:// URLs",
            ),
            (
                &[
                    ("DATABASE_URL", "postgres://u@pooler/db"),
                    ("DATABASE_MIGRATION_URL", "mysql://x"),
                ][..],
                "DATABASE_MIGRATION_URL",
            ),
            (
                &[("CONFAB_LLM_PROVIDER", "magic")][..],
                "CONFAB_LLM_PROVIDER",
            ),
            (
                &[("CONFAB_LLM_PROVIDER", "openai")][..],
                "CONFAB_LLM_BASE_URL",
            ),
            (&[("REDIS_URL", "http://x")][..], "REDIS_URL"),
            (
                &[("CONFAB__CORS__ALLOWED_ORIGINS", "*")][..],
                "cors.allowed_origins",
            ),
            (&[("CONFAB__SERVER__NO_SUCH_KEY", "1")][..], "no_such_key"),
            (&[("CONFAB_ENV", "../etc")][..], "CONFAB_ENV"),
            (
                &[("CONFAB__DATABASE__ACQUIRE_TIMEOUT_MS", "0")][..],
                "database.acquire_timeout_ms must be greater than 0",
            ),
            (
                &[("CONFAB__SERVER__BODY_READ_TIMEOUT_MS", "0")][..],
                "server.body_read_timeout_ms",
            ),
            (
                &[("CONFAB_METRICS_LISTEN", "127.0.0.1:8080")][..],
                "metrics.listen must differ",
            ),
            (
                &[("CONFAB_LLM_PROVIDER", "magic")][..],
                "must be one of local, openai, none, not 'magic'",
            ),
            (&[("CONFAB__LOG__FORMAT", "xml")][..], "log.format"),
            (
                &[("CONFAB__GENERATION__PER_MINUTE", "0")][..],
                "generation.per_minute",
            ),
            (
                &[("CONFAB__REDIS__CONNECTIONS", "0")][..],
                "redis.connections",
            ),
            (
                &[("CONFAB__GENERATION__FLUSH_INTERVAL_MS", "0")][..],
                "generation.flush_interval_ms must be greater than 0",
            ),
        ] {
            let err = load(pairs).unwrap_err().to_string();
            assert!(err.contains(needle), "{pairs:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_shared_redis_requires_a_secret_in_any_environment() {
        let err = load(&[("REDIS_URL", "redis://127.0.0.1:6379")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CONFAB_JWT_SECRET is required with REDIS_URL"),
            "{err}"
        );
        let with = load(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            (
                "CONFAB_JWT_SECRET",
                "e2e-test-secret-0123456789abcdef-0123456789",
            ),
        ]);
        assert!(with.is_ok());
    }

    #[test]
    fn a_cluster_is_named_by_its_nodes_and_its_prefix_has_no_hash_tag() {
        let secret = (
            "CONFAB_JWT_SECRET",
            "e2e-test-secret-0123456789abcdef-0123456789",
        );
        let nodes = "redis://10.0.0.1:6379, redis://10.0.0.2:6379";
        let ok = load(&[secret, ("REDIS_URL", nodes), ("REDIS_CLUSTER", "true")]).unwrap();
        assert!(ok.redis.cluster);
        for (vars, expected) in [
            (&[("REDIS_URL", nodes)][..], "needs REDIS_CLUSTER=true"),
            (
                &[
                    ("REDIS_URL", "redis://a:1,http://b:2"),
                    ("REDIS_CLUSTER", "true"),
                ][..],
                "comma-separated",
            ),
            (
                &[("REDIS_URL", " , "), ("REDIS_CLUSTER", "true")][..],
                "comma-separated",
            ),
            (
                &[
                    ("REDIS_URL", nodes),
                    ("REDIS_CLUSTER", "true"),
                    ("CONFAB__REDIS__KEY_PREFIX", "{confab}:"),
                ][..],
                "must not hold { or }",
            ),
        ] {
            let mut all = vec![secret];
            all.extend_from_slice(vars);
            let err = load(&all).unwrap_err().to_string();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn plain_http_origins_only_for_this_machine_outside_development() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("production.toml"), "").unwrap();
        let d = dir.path().to_str().unwrap();
        let secret = "e2e-test-secret-0123456789abcdef-0123456789";
        let production = |origins: &str| {
            load(&[
                ("CONFAB_CONFIG_DIR", d),
                ("CONFAB_ENV", "production"),
                ("CONFAB_JWT_SECRET", secret),
                ("CONFAB__CORS__ALLOWED_ORIGINS", origins),
            ])
        };
        let err = production("https://chat.example.com,http://chat.example.com")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'http://chat.example.com' is plain http"),
            "{err}"
        );
        for ok in [
            "https://chat.example.com",
            "http://localhost:5173",
            "http://127.0.0.1",
            "http://[::1]:3000",
        ] {
            assert!(production(ok).is_ok(), "{ok}");
        }
        let err = production("http://localhost.evil.example")
            .unwrap_err()
            .to_string();
        assert!(err.contains("plain http"), "{err}");
        // Development takes any http origin.
        assert!(load(&[("CONFAB__CORS__ALLOWED_ORIGINS", "http://chat.example.com")]).is_ok());
    }

    #[test]
    fn production_requires_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("production.toml"), "").unwrap();
        let d = dir.path().to_str().unwrap();
        let err = load(&[("CONFAB_ENV", "production"), ("CONFAB_CONFIG_DIR", d)]).unwrap_err();
        assert!(
            err.to_string().contains("CONFAB_JWT_SECRET is required"),
            "{err}"
        );
        std::fs::write(dir.path().join("staging.toml"), "").unwrap();
        let err = load(&[("CONFAB_ENV", "staging"), ("CONFAB_CONFIG_DIR", d)]).unwrap_err();
        assert!(
            err.to_string().contains("required when CONFAB_ENV=staging"),
            "{err}"
        );
        let ok = load(&[
            ("CONFAB_ENV", "production"),
            ("CONFAB_CONFIG_DIR", d),
            ("CONFAB_JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap();
        assert!(!ok.is_development());
    }

    #[test]
    fn secrets_in_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let err = load(&[("CONFAB_CONFIG_DIR", dir.path().to_str().unwrap())]).unwrap_err();
        assert!(
            err.to_string()
                .contains("secrets come only from the environment"),
            "{err}"
        );
    }

    #[test]
    fn missing_environment_file_is_an_error() {
        let err = load(&[("CONFAB_ENV", "staging")]).unwrap_err();
        assert!(
            err.to_string().contains("staging.toml does not exist"),
            "{err}"
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = load(&[
            (
                "CONFAB_JWT_SECRET",
                "0123456789abcdef0123456789abcdef-SECRET",
            ),
            ("CONFAB_LLM_API_KEY", "sk-live-SECRET"),
            ("DATABASE_URL", "postgres://u:pw-SECRET@h/db"),
            (
                "DATABASE_MIGRATION_URL",
                "postgres://u:direct-SECRET@h:5432/db",
            ),
        ])
        .unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[test]
    fn behind_a_pooler_statements_are_unprepared_and_migrations_go_direct() {
        let s = load(&[
            ("DATABASE_URL", "postgres://u@pooler:6432/db"),
            ("DATABASE_MIGRATION_URL", "postgres://u@server:5432/db"),
            ("CONFAB__DATABASE__PREPARED_STATEMENTS", "false"),
        ])
        .unwrap();
        let options = s.pool_options().unwrap();
        assert!(!options.prepared_statements);
        assert_eq!(
            options.migration_target,
            Some(DatabaseTarget::parse("postgres://u@server:5432/db").unwrap())
        );
        let plain = load(&[]).unwrap().pool_options().unwrap();
        assert!(plain.prepared_statements, "prepared by default");
        assert_eq!(plain.migration_target, None, "migrations on database.url");
    }

    #[test]
    fn durations_and_choices_are_read_once_into_types() {
        let s = load(&[
            ("CONFAB__GENERATION__FLUSH_INTERVAL_MS", "250"),
            ("CONFAB__AUTH__ACCESS_TTL_SECS", "90"),
            ("CONFAB__LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(s.generation.flush_interval, Duration::from_millis(250));
        assert_eq!(s.auth.access_ttl, Duration::from_secs(90));
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.environment, RunEnvironment::Development);
        assert_eq!(s.llm.provider.to_string(), "local");
    }
}
