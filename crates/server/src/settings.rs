//! Typed configuration: the embedded defaults, then files, then the
//! environment (see `config/default.toml` for every key).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use confab_password::MIN_ITERATIONS;
use confab_sql::DatabaseTarget;
use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod chat;

pub use chat::{
    CacheSettings, GenerationSettings, IdempotencySettings, LlmSettings, LocalModelSettings,
};

const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// Short environment names and the keys they set (applied last).
const SHORT_NAMES: &[(&str, &str)] = &[
    ("CONFAB_LISTEN", "server.listen"),
    ("CONFAB_METRICS_LISTEN", "metrics.listen"),
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
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
    /// `Idempotency-Key`.
    pub idempotency: IdempotencySettings,
    /// Cross-origin browser access.
    pub cors: CorsSettings,
    /// Security headers.
    pub security: SecuritySettings,
    /// Logging.
    pub log: LogSettings,
    /// `CONFAB_ENV`: `development` unless set.
    #[serde(skip)]
    pub environment: String,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Public API address.
    pub listen: String,
    /// Worker threads (0 = cores).
    pub workers: usize,
    /// Graceful-shutdown budget.
    pub shutdown_timeout_secs: u64,
    /// Time to receive a request head.
    pub request_head_timeout_ms: u64,
    /// Time to wait for a client to close.
    pub disconnect_timeout_ms: u64,
    /// Idle keep-alive.
    pub keep_alive_secs: u64,
    /// Connections per worker.
    pub max_connections: usize,
    /// Largest JSON body.
    pub json_limit_bytes: usize,
    /// Time for a request body to arrive.
    pub body_read_timeout_ms: u64,
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
    pub max_connections: u32,
    /// Pool checkout timeout.
    pub acquire_timeout_ms: u64,
    /// SQLite busy timeout.
    pub sqlite_busy_timeout_ms: u64,
    /// Migrate when `serve` starts.
    pub migrate_on_start: bool,
}

/// `[redis]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// The URL; empty for in-process adapters.
    pub url: SecretString,
    /// Multiplexed connections every command shares (each carries any
    /// number of commands at once).
    pub connections: usize,
    /// How long making a connection may take before Redis counts as down.
    pub connect_timeout_ms: u64,
    /// How long a command waits for its reply (Redis busy) before it fails.
    pub command_timeout_ms: u64,
    /// Prefix of every key Confab writes: deployments sharing one Redis
    /// use different ones.
    pub key_prefix: String,
    /// Milliseconds a running answer's stream stays claimed after its
    /// instance last renewed it: how long after an instance dies its
    /// conversations can answer again and its answers are swept. Renewed
    /// three times per lease; each renewal also reads the stop flag.
    pub stream_lease_ms: u64,
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
    pub access_ttl_secs: u64,
    /// Refresh token lifetime.
    pub refresh_ttl_secs: u64,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway_secs: u64,
    /// Duplicate-refresh window.
    pub refresh_reuse_grace_ms: u64,
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
    pub anonymous_per_minute: u32,
    /// Per user.
    pub user_per_minute: u32,
    /// Per admin.
    pub admin_per_minute: u32,
    /// Login attempts per address and per account.
    pub login_per_minute: u32,
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

/// `[security]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// HSTS max-age.
    pub hsts_max_age_secs: u64,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `auto`, `json` or `pretty`.
    pub format: String,
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
        let environment = vars
            .get("CONFAB_ENV")
            .cloned()
            .unwrap_or_else(|| "development".to_owned());
        if environment.is_empty()
            || !environment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "CONFAB_ENV must be a plain name such as development or production",
            ));
        }
        let dir = PathBuf::from(
            vars.get("CONFAB_CONFIG_DIR")
                .map_or("config", String::as_str),
        );
        let env_file = dir.join(format!("{environment}.toml"));
        if vars.contains_key("CONFAB_ENV") && environment != "development" && !env_file.exists() {
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
        self.environment == "development"
    }

    /// The parsed database URL.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an unsupported URL.
    pub fn database_target(&self) -> Result<DatabaseTarget, ConfigError> {
        DatabaseTarget::parse(self.database.url.expose_secret()).map_err(|e| invalid(e.to_string()))
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
        let s = &self.server;
        if s.workers > 1024 {
            return Err(invalid("server.workers must be at most 1024"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&s.json_limit_bytes) {
            return Err(invalid(
                "server.json_limit_bytes must be between 1024 and 16777216",
            ));
        }
        let db = &self.database;
        let rl = &self.rate_limit;
        let positive = [
            ("auth.access_ttl_secs", self.auth.access_ttl_secs),
            ("auth.refresh_ttl_secs", self.auth.refresh_ttl_secs),
            (
                "rate_limit.anonymous_per_minute",
                u64::from(rl.anonymous_per_minute),
            ),
            ("rate_limit.user_per_minute", u64::from(rl.user_per_minute)),
            (
                "rate_limit.admin_per_minute",
                u64::from(rl.admin_per_minute),
            ),
            (
                "rate_limit.login_per_minute",
                u64::from(rl.login_per_minute),
            ),
            ("server.request_head_timeout_ms", s.request_head_timeout_ms),
            ("server.body_read_timeout_ms", s.body_read_timeout_ms),
            ("server.shutdown_timeout_secs", s.shutdown_timeout_secs),
            ("server.max_connections", s.max_connections as u64),
            ("database.max_connections", u64::from(db.max_connections)),
            ("database.acquire_timeout_ms", db.acquire_timeout_ms),
            ("database.sqlite_busy_timeout_ms", db.sqlite_busy_timeout_ms),
            ("redis.connections", self.redis.connections as u64),
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.command_timeout_ms", self.redis.command_timeout_ms),
            ("redis.stream_lease_ms", self.redis.stream_lease_ms),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(format!("{key} must be greater than 0")));
        }
        // Port 0 asks the OS for a fresh port each, so equal ":0" addresses differ.
        let public = parse_addr("server.listen (CONFAB_LISTEN)", &s.listen)?;
        if self.metrics.enabled && self.metrics.listen == s.listen && public.port() != 0 {
            return Err(invalid(
                "metrics.listen must differ from server.listen: /metrics is never served on the public address",
            ));
        }
        let redis = self.redis.url.expose_secret();
        if !(redis.is_empty() || redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            return Err(invalid("REDIS_URL must start with redis:// or rediss://"));
        }
        if self.auth.leeway_secs > 60 {
            return Err(invalid("auth.leeway_secs must be at most 60"));
        }
        self.trusted_proxies()?;
        self.validate_auth()?;
        self.validate_chat()?;
        for origin in &self.cors.allowed_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin != "*";
            if !ok {
                return Err(invalid(format!(
                    "cors.allowed_origins: '{origin}' must be an origin like https://chat.example.com"
                )));
            }
        }
        if !matches!(self.log.format.as_str(), "auto" | "json" | "pretty") {
            return Err(invalid("log.format must be auto, json or pretty"));
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

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if self.auth.pbkdf2_iterations < MIN_ITERATIONS {
            return Err(invalid(format!(
                "auth.pbkdf2_iterations must be at least {MIN_ITERATIONS}"
            )));
        }
        let secret = self.auth.jwt_secret.expose_secret();
        if !secret.is_empty() && secret.len() < 32 {
            return Err(invalid("CONFAB_JWT_SECRET must be at least 32 bytes"));
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
        assert_eq!(s.llm.provider, "local");
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
        ] {
            let err = load(pairs).unwrap_err().to_string();
            assert!(err.contains(needle), "{pairs:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
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
        ])
        .unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("SECRET"), "{text}");
    }
}
