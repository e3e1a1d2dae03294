//! The connection pool every Redis adapter shares, and its health check.

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::HealthCheck;
use deadpool_redis::redis;
use deadpool_redis::{Config, Connection, Pool, PoolConfig, Runtime, Timeouts};
use secrecy::{ExposeSecret, SecretString};

/// Where Redis is and how the pool behaves.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…`. Secret:
    /// it may hold a password.
    pub url: SecretString,
    /// Connections kept at most.
    pub max_connections: usize,
    /// How long a request waits for a free connection, and for a new one
    /// to be made, before the call fails as unavailable.
    pub connect_timeout: Duration,
    /// Prefix of every key this deployment writes (`confab:`): two
    /// deployments (or two test runs) on one Redis use different ones.
    pub key_prefix: String,
}

/// Why the pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL or the pool settings are unusable.
    #[error("redis: {0}")]
    Config(String),
}

/// The shared pool, and the prefix every adapter's keys start with.
#[derive(Clone)]
pub struct RedisPool {
    pool: Pool,
    prefix: String,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("RedisPool")
            .field("prefix", &self.prefix)
            .field("status", &self.pool.status())
            .finish()
    }
}

impl RedisPool {
    /// Builds the pool. No connection is made yet: the first call (or the
    /// health check) makes one, so an instance starts while Redis is down
    /// and recovers without a restart when it comes back.
    ///
    /// # Errors
    /// [`RedisError::Config`] for an unusable URL or pool size.
    pub fn new(settings: &RedisSettings) -> Result<Self, RedisError> {
        // Parsed here so a bad URL is a start-up error, not a runtime one.
        redis::parse_redis_url(settings.url.expose_secret())
            .ok_or_else(|| RedisError::Config("the URL is not a redis:// URL".to_owned()))?;
        let mut config = Config::from_url(settings.url.expose_secret());
        config.pool = Some(PoolConfig {
            max_size: settings.max_connections.max(1),
            timeouts: Timeouts {
                wait: Some(settings.connect_timeout),
                create: Some(settings.connect_timeout),
                recycle: Some(settings.connect_timeout),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            // The error names the URL's parts; say only what went wrong.
            .map_err(|_| RedisError::Config("cannot build the connection pool".to_owned()))?;
        Ok(Self {
            pool,
            prefix: settings.key_prefix.clone(),
        })
    }

    /// `prefix` + `key`.
    pub(crate) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A connection from the pool.
    pub(crate) async fn connection(&self) -> Result<Connection, DomainError> {
        self.pool.get().await.map_err(|e| {
            DomainError::unavailable(format!("redis: no connection: {}", redacted(&e)))
        })
    }
}

/// A Redis failure as the ports report it: unavailable, with the reason
/// (never a URL or a value).
pub(crate) fn unavailable(e: &redis::RedisError) -> DomainError {
    DomainError::unavailable(format!("redis: {:?}: {}", e.kind(), e.category()))
}

/// A pool error without anything the URL held.
fn redacted(e: &deadpool_redis::PoolError) -> String {
    match e {
        deadpool_redis::PoolError::Timeout(kind) => format!("timed out ({kind:?})"),
        deadpool_redis::PoolError::Backend(e) => format!("{:?}: {}", e.kind(), e.category()),
        deadpool_redis::PoolError::Closed => "the pool is closed".to_owned(),
        deadpool_redis::PoolError::NoRuntimeSpecified => "no runtime".to_owned(),
        deadpool_redis::PoolError::PostCreateHook(_) => "a connection hook failed".to_owned(),
    }
}

#[async_trait]
impl HealthCheck for RedisPool {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), DomainError> {
        let mut conn = self.connection().await?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(DomainError::unavailable(format!(
                "redis answered PING with {pong:?}"
            )))
        }
    }
}
