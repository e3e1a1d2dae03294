//! The connections every Redis adapter shares, and their health check.
//!
//! Commands go over a few **multiplexed** connections (redis-rs's
//! [`ConnectionManager`]), handed out in turn: a command never waits for a
//! connection of its own, it is written to a shared socket behind the
//! others in flight and its reply is matched in order. A thousand commands
//! at once are a thousand pipelined requests on a few sockets, not a
//! thousand sockets or a queue for 32 of them.
//!
//! Two failures are told apart:
//!
//! - **Redis is down**: the connection can't be made (refused, or not made
//!   within [`RedisSettings::connect_timeout`]). Every command fails at once
//!   as [`DomainError::Unavailable`], and the manager reconnects in the
//!   background: the next command after Redis is back succeeds.
//! - **Redis is busy** (or the instance is): a reply is slow. A command
//!   waits for its reply up to [`RedisSettings::command_timeout`]; only then
//!   does it fail. Back-pressure is the socket's: commands queue behind it.
//!
//! Blocking reads (`XREAD BLOCK`) and pub/sub never share these sockets:
//! they get dedicated connections from [`RedisPool::dedicated`] and
//! [`RedisPool::pubsub`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::HealthCheck;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub,
};
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use secrecy::{ExposeSecret, SecretString};

/// Where Redis is and how the connections behave.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…`. Secret:
    /// it may hold a password.
    pub url: SecretString,
    /// Multiplexed connections the commands share (at least one). Each
    /// carries any number of commands at once; more than one only spreads
    /// the reading of replies over more tasks.
    pub connections: usize,
    /// How long making a connection may take before Redis counts as down.
    pub connect_timeout: Duration,
    /// How long a command waits for its reply before it fails: how long
    /// "Redis is busy" is waited out.
    pub command_timeout: Duration,
    /// Prefix of every key this deployment writes (`confab:`): two
    /// deployments (or two test runs) on one Redis use different ones.
    pub key_prefix: String,
}

/// Why the connections could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL or the settings are unusable.
    #[error("redis: {0}")]
    Config(String),
}

/// One command connection: cheap to clone, shared by every clone.
///
/// Its commands are polled in the context of the runtime the pool was made
/// on (the server's main one), so that what redis-rs starts while polling
/// them runs there: the connection's socket and the task that writes the
/// commands and reads every reply, made when it connects or reconnects.
/// Made in a request worker's context instead, that task shared the worker
/// with its HTTP connections and ended with the worker's runtime.
#[derive(Clone)]
pub(crate) struct Conn {
    manager: ConnectionManager,
    runtime: Option<tokio::runtime::Handle>,
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let reply = self.manager.req_packed_command(cmd);
        Box::pin(InContext {
            runtime: self.runtime.clone(),
            inner: reply,
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let replies = self.manager.req_packed_commands(pipeline, offset, count);
        Box::pin(InContext {
            runtime: self.runtime.clone(),
            inner: replies,
        })
    }

    fn get_db(&self) -> i64 {
        self.manager.get_db()
    }
}

/// `inner`, polled in `runtime`'s context (the current one when `None`).
struct InContext<F> {
    runtime: Option<tokio::runtime::Handle>,
    inner: F,
}

impl<F: Future + Unpin> Future for InContext<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.runtime.as_ref().map(tokio::runtime::Handle::enter);
        Pin::new(&mut this.inner).poll(cx)
    }
}

struct Shared {
    client: Client,
    /// The runtime the pool was made on (the server's main one), where the
    /// adapters' background tasks run rather than on whichever request's
    /// worker first needed them.
    runtime: Option<tokio::runtime::Handle>,
    settings: RedisSettings,
    /// Made on first use (they need the runtime), never replaced: each
    /// reconnects by itself.
    managers: OnceLock<Vec<ConnectionManager>>,
    next: AtomicUsize,
}

/// The shared connections, and the prefix every adapter's keys start with.
#[derive(Clone)]
pub struct RedisPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("RedisPool")
            .field("prefix", &self.shared.settings.key_prefix)
            .field("connections", &self.shared.settings.connections)
            .finish()
    }
}

impl RedisPool {
    /// Sets the connections up. No connection is made yet: the first
    /// command (or the health check) makes them, so an instance starts
    /// while Redis is down and recovers without a restart when it comes
    /// back.
    ///
    /// # Errors
    /// [`RedisError::Config`] for an unusable URL.
    pub fn new(settings: &RedisSettings) -> Result<Self, RedisError> {
        // The error would name the URL's parts: say only what went wrong.
        let unusable = |_| RedisError::Config("the URL is not a usable redis:// URL".to_owned());
        let info = settings
            .url
            .expose_secret()
            .into_connection_info()
            .map_err(unusable)?
            .set_tcp_settings(tcp_settings(settings.command_timeout));
        let client = Client::open(info).map_err(unusable)?;
        let mut settings = settings.clone();
        settings.connections = settings.connections.max(1);
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                runtime: tokio::runtime::Handle::try_current().ok(),
                settings,
                managers: OnceLock::new(),
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// `prefix` + `key`.
    pub(crate) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.shared.settings.key_prefix)
    }

    /// Runs a background task on the runtime the pool was made on (the
    /// current one when it was made outside any).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match &self.shared.runtime {
            Some(runtime) => drop(runtime.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    /// The settings the pool was made with.
    pub(crate) fn settings(&self) -> &RedisSettings {
        &self.shared.settings
    }

    /// A command connection, the next in turn.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if none could be set up (only settings
    /// this crate never uses make that fail).
    pub(crate) fn connection(&self) -> Result<Conn, DomainError> {
        let managers = self.shared.managers.get_or_init(|| {
            // The managers start a task each: on the pool's runtime too.
            let _entered = self
                .shared
                .runtime
                .as_ref()
                .map(tokio::runtime::Handle::enter);
            let s = &self.shared.settings;
            (0..s.connections)
                .filter_map(|_| {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(s.connect_timeout))
                        .set_response_timeout(Some(s.command_timeout))
                        // Down is down: a failed connect fails the command
                        // at once; the next command tries again.
                        .set_number_of_retries(0);
                    ConnectionManager::new_lazy_with_config(self.shared.client.clone(), config).ok()
                })
                .collect()
        });
        let turn = self.shared.next.fetch_add(1, Ordering::Relaxed);
        managers
            .get(turn % managers.len().max(1))
            .map(|manager| Conn {
                manager: manager.clone(),
                runtime: self.shared.runtime.clone(),
            })
            .ok_or_else(|| DomainError::internal("redis: no connection could be set up"))
    }

    /// A connection of its own, for commands that block it (`XREAD
    /// BLOCK`): its replies may take `reply_timeout`.
    pub(crate) async fn dedicated(
        &self,
        reply_timeout: Duration,
    ) -> Result<MultiplexedConnection, DomainError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.shared.settings.connect_timeout))
            .set_response_timeout(Some(reply_timeout));
        self.shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// A pub/sub connection.
    pub(crate) async fn pubsub(&self) -> Result<PubSub, DomainError> {
        tokio::time::timeout(
            self.shared.settings.connect_timeout,
            self.shared.client.get_async_pubsub(),
        )
        .await
        .map_err(|_| DomainError::unavailable("redis: pub/sub connection timed out"))?
        .map_err(|e| unavailable(&e))
    }
}

/// The sockets' settings: no Nagle delay (commands are small and pipelined:
/// a write must not wait for the previous one's ACK), and, on Linux, a
/// connection whose sent commands go unacknowledged for longer than a
/// command may take is closed (a Redis host that vanished without a reset):
/// its commands fail as a dropped connection and the manager reconnects,
/// instead of every command on it timing out until the kernel gives up.
fn tcp_settings(command_timeout: Duration) -> TcpSettings {
    let settings = TcpSettings::default().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(command_timeout.max(Duration::from_secs(1)));
    #[cfg(not(target_os = "linux"))]
    let _ = command_timeout;
    settings
}

/// A Redis failure as the ports report it: unavailable, with the reason
/// (never a URL or a value).
pub(crate) fn unavailable(e: &redis::RedisError) -> DomainError {
    DomainError::unavailable(format!("redis: {:?}: {}", e.kind(), e.category()))
}

#[async_trait]
impl HealthCheck for RedisPool {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), DomainError> {
        let mut conn = self.connection()?;
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
