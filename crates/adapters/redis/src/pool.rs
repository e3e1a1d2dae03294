//! The connections every Redis adapter shares, and their health check.
//!
//! Commands go over a few **multiplexed** connections (redis-rs's
//! [`ConnectionManager`]): a command never waits for a connection of its
//! own, it is written to a socket behind the others in flight and its
//! reply is matched in order. A thousand commands at once are a thousand
//! pipelined requests on a few sockets, not a thousand sockets or a queue
//! for 32 of them. On a single Redis each request worker has one of its
//! own, which it polls itself, so a request's commands never cross
//! threads; the background tasks share the others, handed out in turn
//! ([`RedisPool::connection`]).
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
//!
//! # Redis Cluster
//!
//! With [`RedisSettings::cluster`], the URL names one or more nodes of a
//! Redis Cluster (comma-separated) and each connection is a cluster
//! connection (redis-rs's [`ClusterConnection`]): one multiplexed socket
//! per node, each command sent to the primary that serves its key's slot,
//! the slot map refreshed when a node answers `MOVED` or is gone. A command
//! whose node fails (a primary killed, before its replica takes over) is
//! tried again up to [`CLUSTER_RETRIES`] times, 100 ms apart and then a
//! few hundred (redis-rs's jittered backoff: about a second in all); one
//! that still fails fails as in a Redis outage. (The stream log's appends
//! retry for longer themselves: see `stream_log/append.rs`.)
//!
//! Keys that one script or pipeline touches together must be in one slot
//! there: [`RedisPool::tag`] and [`RedisPool::user_scoped`] give them a
//! common hash tag on a cluster (and leave names as they were on a single
//! Redis). There are no blocking reads on a cluster: the stream log's hub
//! polls instead (see `stream_log/hub.rs`).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::HealthCheck;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, Value,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::runtime::RuntimeFlavor;

/// How often a cluster command whose node failed is tried again (see the
/// module docs).
const CLUSTER_RETRIES: u32 = 7;

/// Where Redis is and how the connections behave.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…`; with
    /// [`cluster`](Self::cluster), one or more nodes of the cluster,
    /// comma-separated. Secret: it may hold a password.
    pub url: SecretString,
    /// The URL names nodes of a Redis Cluster.
    pub cluster: bool,
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

/// A command connection to a single Redis or to a cluster.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
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
    link: Link,
    runtime: Option<tokio::runtime::Handle>,
}

impl Conn {
    /// Runs `cmd` on the cluster node `node`, or on any one node for
    /// `None` (on a single Redis: on it).
    pub(crate) async fn on_node(&mut self, node: Option<&Node>, cmd: Cmd) -> RedisResult<Value> {
        match &mut self.link {
            Link::Cluster(cluster) => {
                let routing =
                    RoutingInfo::SingleNode(node.map_or(SingleNodeRoutingInfo::Random, |node| {
                        SingleNodeRoutingInfo::ByAddress {
                            host: node.host.clone(),
                            port: node.port,
                        }
                    }));
                InContext {
                    runtime: self.runtime.clone(),
                    inner: Box::pin(cluster.route_command(cmd, routing)),
                }
                .await
            }
            Link::Single(_) => cmd.query_async(self).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let reply = match &mut self.link {
            Link::Single(manager) => manager.req_packed_command(cmd),
            Link::Cluster(cluster) => cluster.req_packed_command(cmd),
        };
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
        let replies = match &mut self.link {
            Link::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Link::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        };
        Box::pin(InContext {
            runtime: self.runtime.clone(),
            inner: replies,
        })
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(manager) => manager.get_db(),
            Link::Cluster(cluster) => cluster.get_db(),
        }
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

/// How a single Redis's command connections behave.
fn manager_config(s: &RedisSettings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(s.connect_timeout))
        .set_response_timeout(Some(s.command_timeout))
        // Down is down: a failed connect fails the command at once; the
        // next command tries again.
        .set_number_of_retries(0)
}

thread_local! {
    /// The calling thread's own connections, by pool (see
    /// [`RedisPool::connection`]).
    static WORKER_LINKS: RefCell<Vec<(Weak<Shared>, ConnectionManager)>> =
        const { RefCell::new(Vec::new()) };
}

/// A node of a cluster, by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    host: String,
    port: u16,
}

/// What connections are made from (one per pool: its size is no concern).
#[allow(clippy::large_enum_variant)]
enum Backend {
    Single(Client),
    Cluster {
        client: ClusterClient,
        /// The nodes the URL names (for pub/sub when the cluster can't
        /// say which nodes it has).
        seeds: Vec<ConnectionInfo>,
    },
}

struct Shared {
    backend: Backend,
    /// The runtime the pool was made on (the server's main one), where the
    /// adapters' background tasks run rather than on whichever request's
    /// worker first needed them.
    runtime: Option<tokio::runtime::Handle>,
    settings: RedisSettings,
    /// Made on first use (they need the runtime), never replaced: each
    /// reconnects by itself.
    links: OnceLock<Vec<Link>>,
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
        let tcp = tcp_settings(settings.command_timeout);
        let backend = if settings.cluster {
            if settings.key_prefix.contains(['{', '}']) {
                return Err(RedisError::Config(
                    "on a cluster the key prefix must not hold { or }: they would be every key's hash tag"
                        .to_owned(),
                ));
            }
            let seeds = settings
                .url
                .expose_secret()
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(|url| {
                    url.into_connection_info()
                        .map(|info| info.set_tcp_settings(tcp.clone()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(unusable)?;
            if seeds.is_empty() {
                return Err(RedisError::Config(
                    "a cluster needs at least one node's URL".to_owned(),
                ));
            }
            let client = ClusterClientBuilder::new(seeds.clone())
                .tcp_settings(tcp)
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.command_timeout)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(100)
                .max_retry_wait(1_000)
                .build()
                .map_err(unusable)?;
            Backend::Cluster { client, seeds }
        } else {
            let info = settings
                .url
                .expose_secret()
                .into_connection_info()
                .map_err(unusable)?
                .set_tcp_settings(tcp);
            Backend::Single(Client::open(info).map_err(unusable)?)
        };
        let mut settings = settings.clone();
        settings.connections = settings.connections.max(1);
        Ok(Self {
            shared: Arc::new(Shared {
                backend,
                runtime: tokio::runtime::Handle::try_current().ok(),
                settings,
                links: OnceLock::new(),
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// Whether the connections go to a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.shared.backend, Backend::Cluster { .. })
    }

    /// `id` as the hash tag of keys that must share its slot: `{id}` on a
    /// cluster, `id` itself on a single Redis (whose key names stay as
    /// they were before clusters were supported).
    pub(crate) fn tag(&self, id: &impl std::fmt::Display) -> String {
        if self.is_cluster() {
            format!("{{{id}}}")
        } else {
            id.to_string()
        }
    }

    /// `key` with the user id it starts with (`user:<id>…`) made its hash
    /// tag on a cluster (`user:{<id>}…`), so that a user's rate buckets and
    /// cache versions share the slot of the user's other keys (see
    /// [`tag`](Self::tag)); `key` itself on a single Redis, or when it
    /// names no user first.
    pub(crate) fn user_scoped<'a>(&self, key: &'a str) -> std::borrow::Cow<'a, str> {
        if let Some(rest) = key.strip_prefix("user:")
            && self.is_cluster()
            && !key.contains(['{', '}'])
        {
            let (id, after) = rest.split_at(rest.find(':').unwrap_or(rest.len()));
            if !id.is_empty() {
                return format!("user:{{{id}}}{after}").into();
            }
        }
        key.into()
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

    /// A shared command connection, the next in turn.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if none could be set up (only settings
    /// this crate never uses make that fail).
    pub(crate) fn shared_connection(&self) -> Result<Conn, DomainError> {
        let links = self.shared.links.get_or_init(|| {
            // The connections start tasks: on the pool's runtime too.
            let _entered = self
                .shared
                .runtime
                .as_ref()
                .map(tokio::runtime::Handle::enter);
            let s = &self.shared.settings;
            (0..s.connections)
                .filter_map(|_| match &self.shared.backend {
                    Backend::Single(client) => {
                        ConnectionManager::new_lazy_with_config(client.clone(), manager_config(s))
                            .ok()
                            .map(Link::Single)
                    }
                    Backend::Cluster { client, .. } => {
                        // Connected in the background; a command fails
                        // while no node answers, and the next tries again.
                        let config = ClusterConfig::new()
                            .set_connection_timeout(s.connect_timeout)
                            .set_response_timeout(s.command_timeout);
                        Some(Link::Cluster(
                            client.get_pending_async_connection_with_config(config),
                        ))
                    }
                })
                .collect()
        });
        let turn = self.shared.next.fetch_add(1, Ordering::Relaxed);
        links
            .get(turn % links.len().max(1))
            .map(|link| Conn {
                link: link.clone(),
                runtime: self.shared.runtime.clone(),
            })
            .ok_or_else(|| DomainError::internal("redis: no connection could be set up"))
    }

    /// A command connection for a command made now, on this thread.
    ///
    /// On a request worker (a single-threaded runtime) with a single
    /// Redis: the worker's own connection (one per worker and pool, made
    /// on first use on the worker's runtime), whose socket the worker
    /// polls itself, beside its HTTP connections. A shared connection's
    /// replies are read by a task on the pool's runtime, which then wakes
    /// the worker: two threads and a wake-up per command, about as much
    /// as a cached read costs beside the command itself. A worker's
    /// connection ends with the worker, as the requests and tasks that
    /// use it do. Elsewhere (the pool's multi-threaded runtime, where the
    /// background tasks run, and on a cluster) a shared connection
    /// ([`shared_connection`](Self::shared_connection)).
    ///
    /// # Errors
    /// As [`shared_connection`](Self::shared_connection), and
    /// [`DomainError::Unavailable`] if a worker's connection can't be set
    /// up.
    pub(crate) fn connection(&self) -> Result<Conn, DomainError> {
        let Backend::Single(client) = &self.shared.backend else {
            return self.shared_connection();
        };
        if !self.on_worker() {
            return self.shared_connection();
        }
        WORKER_LINKS.with(|links| {
            let mut links = links.borrow_mut();
            let mine = links
                .iter()
                .find(|(pool, _)| std::ptr::eq(pool.as_ptr(), Arc::as_ptr(&self.shared)))
                .map(|(_, manager)| manager.clone());
            let manager = match mine {
                Some(manager) => manager,
                None => {
                    let manager = ConnectionManager::new_lazy_with_config(
                        client.clone(),
                        manager_config(&self.shared.settings),
                    )
                    .map_err(|e| unavailable(&e))?;
                    // The connections of pools that are gone go with them.
                    links.retain(|(pool, _)| pool.strong_count() > 0);
                    links.push((Arc::downgrade(&self.shared), manager.clone()));
                    manager
                }
            };
            Ok(Conn {
                link: Link::Single(manager),
                runtime: None,
            })
        })
    }

    /// Whether a command made now, on this thread, goes over a worker's own
    /// connection ([`connection`](Self::connection)): on a single Redis,
    /// from a current-thread runtime (a request worker).
    pub(crate) fn on_worker(&self) -> bool {
        matches!(self.shared.backend, Backend::Single(_))
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
    }

    /// The cluster's primaries that serve slots, as the cluster sees them
    /// now; `None` on a single Redis.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the cluster can't be asked.
    pub(crate) async fn primaries(&self) -> Result<Option<Vec<Node>>, DomainError> {
        if !self.is_cluster() {
            return Ok(None);
        }
        let nodes = self.cluster_nodes().await?;
        Ok(Some(
            nodes
                .into_iter()
                .filter(|n| n.primary && n.serving)
                .map(|n| n.node)
                .collect(),
        ))
    }

    /// `CLUSTER NODES`, read from any node.
    async fn cluster_nodes(&self) -> Result<Vec<ClusterNode>, DomainError> {
        let mut conn = self.connection()?;
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(parse_cluster_nodes(&text))
    }

    /// A connection of its own, for commands that block it (`XREAD
    /// BLOCK`): its replies may take `reply_timeout`.
    pub(crate) async fn dedicated(
        &self,
        reply_timeout: Duration,
    ) -> Result<MultiplexedConnection, DomainError> {
        let Backend::Single(client) = &self.shared.backend else {
            return Err(DomainError::internal(
                "redis: no blocking connections on a cluster",
            ));
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.shared.settings.connect_timeout))
            .set_response_timeout(Some(reply_timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// A pub/sub connection. On a cluster, to any node that answers (a
    /// message published on one node reaches the subscribers of every
    /// node): the nodes the cluster lists, live ones first, then the ones
    /// the URL names.
    pub(crate) async fn pubsub(&self) -> Result<PubSub, DomainError> {
        let timeout = self.shared.settings.connect_timeout;
        let connect = |client: Client| async move {
            tokio::time::timeout(timeout, client.get_async_pubsub())
                .await
                .map_err(|_| DomainError::unavailable("redis: pub/sub connection timed out"))?
                .map_err(|e| unavailable(&e))
        };
        match &self.shared.backend {
            Backend::Single(client) => connect(client.clone()).await,
            Backend::Cluster { seeds, .. } => {
                let mut candidates: Vec<ConnectionInfo> = Vec::new();
                if let Ok(mut nodes) = self.cluster_nodes().await {
                    nodes.sort_by_key(|n| !n.serving);
                    for node in nodes {
                        if let Some(seed) = seeds.first() {
                            candidates.push(seed.clone().set_addr(redis::ConnectionAddr::Tcp(
                                node.node.host.clone(),
                                node.node.port,
                            )));
                        }
                    }
                }
                candidates.extend(seeds.iter().cloned());
                let mut failure = DomainError::unavailable("redis: no cluster node to listen on");
                for info in candidates {
                    match Client::open(info) {
                        Ok(client) => match connect(client).await {
                            Ok(pubsub) => return Ok(pubsub),
                            Err(e) => failure = e,
                        },
                        Err(e) => failure = unavailable(&e),
                    }
                }
                Err(failure)
            }
        }
    }
}

/// A line of `CLUSTER NODES`.
#[derive(Debug, PartialEq, Eq)]
struct ClusterNode {
    node: Node,
    primary: bool,
    /// A primary with slots, or a replica, neither marked failed.
    serving: bool,
}

/// The nodes `CLUSTER NODES` lists (`<id> <ip:port@cport[,hostname]>
/// <flags> <primary> <ping> <pong> <epoch> <link> [slot …]`), without
/// those it has no address for.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let flags: Vec<&str> = fields.get(2)?.split(',').collect();
            let primary = flags.contains(&"master");
            let failed = flags
                .iter()
                .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"));
            let has_slots = fields.len() > 8;
            Some(ClusterNode {
                node: Node {
                    host: host.to_owned(),
                    port: port.parse().ok()?,
                },
                primary,
                serving: !failed && (has_slots || !primary),
            })
        })
        .filter(|n| !n.node.host.is_empty())
        .collect()
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
/// The failure of a call made for several callers (a group of admissions,
/// of logs' appends), as each of them reports it: of the same kind, with
/// the same cause.
pub(crate) fn for_each(e: &DomainError) -> DomainError {
    match e {
        DomainError::Internal(cause) => DomainError::internal(cause.to_string()),
        other => DomainError::unavailable(
            std::error::Error::source(other).map_or_else(|| other.to_string(), ToString::to_string),
        ),
    }
}

pub(crate) fn unavailable(e: &redis::RedisError) -> DomainError {
    DomainError::unavailable(format!("redis: {:?}: {}", e.kind(), e.category()))
}

#[async_trait]
impl HealthCheck for RedisPool {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<(), DomainError> {
        // The connections the background tasks use, wherever it is asked.
        let mut conn = self.shared_connection()?;
        // On a cluster, one node (any) must answer: a primary failing over
        // fails the commands for its slots by the failure policy; it does
        // not take every instance out of its balancer at once.
        let pong = conn
            .on_node(None, redis::cmd("PING"))
            .await
            .and_then(|reply| redis::from_redis_value::<String>(reply).map_err(Into::into))
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

/// A pool on the local Redis (`REDIS_URL`, else the default port), for
/// the unit tests of this crate; made on the current runtime.
#[cfg(test)]
pub(crate) fn local_pool() -> RedisPool {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    RedisPool::new(&RedisSettings {
        url: SecretString::from(url),
        cluster: false,
        connections: 1,
        connect_timeout: Duration::from_secs(1),
        command_timeout: Duration::from_secs(5),
        key_prefix: "confab-test:".to_owned(),
    })
    .expect("a pool on the local Redis")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cluster: bool, prefix: &str) -> Result<RedisPool, RedisError> {
        RedisPool::new(&RedisSettings {
            url: SecretString::from("redis://127.0.0.1:1,redis://127.0.0.1:2".to_owned()),
            cluster,
            connections: 1,
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(100),
            key_prefix: prefix.to_owned(),
        })
    }

    #[test]
    fn a_users_keys_share_a_hash_tag_on_a_cluster_only() {
        let cluster = pool(true, "confab:").unwrap();
        let id = "0b7e3c4e-0000-4000-8000-000000000001";
        assert_eq!(cluster.tag(&id), format!("{{{id}}}"));
        assert_eq!(
            cluster.user_scoped(&format!("user:{id}:key:k1")),
            format!("user:{{{id}}}:key:k1")
        );
        assert_eq!(
            cluster.user_scoped(&format!("user:{id}")),
            format!("user:{{{id}}}")
        );
        // Keys of no user, or already tagged, stay as they are.
        for key in ["ip:10.0.0.1", "user:", "user:{x}:y", "conv:c:history"] {
            assert_eq!(cluster.user_scoped(key), key);
        }
        // A single Redis keeps the names it always had.
        let single = RedisPool::new(&RedisSettings {
            url: SecretString::from("redis://127.0.0.1:1".to_owned()),
            cluster: false,
            connections: 1,
            connect_timeout: Duration::from_millis(100),
            command_timeout: Duration::from_millis(100),
            key_prefix: "confab:".to_owned(),
        })
        .unwrap();
        assert_eq!(single.tag(&id), id);
        assert_eq!(
            single.user_scoped(&format!("user:{id}")),
            format!("user:{id}")
        );
    }

    #[test]
    fn a_clusters_prefix_holds_no_braces() {
        assert!(pool(true, "{confab}:").is_err());
        assert!(pool(true, " , ").is_ok(), "a prefix of no brace");
    }

    #[test]
    fn cluster_nodes_are_read_with_their_roles() {
        let text = "\
a1 127.0.0.1:7100@17100 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7101@17101,host-b master - 0 0 2 connected 5461-10922
a3 127.0.0.1:7102@17102 master,fail - 0 0 3 connected 10923-16383
a4 127.0.0.1:7103@17103 slave a1 0 0 1 connected
a5 :0@0 master,noaddr - 0 0 4 disconnected
";
        let nodes = parse_cluster_nodes(text);
        let ports: Vec<(u16, bool, bool)> = nodes
            .iter()
            .map(|n| (n.node.port, n.primary, n.serving))
            .collect();
        assert_eq!(
            ports,
            [
                (7100, true, true),
                (7101, true, true),
                (7102, true, false),
                (7103, false, true)
            ]
        );
    }

    /// `CLIENT ID` of the connection `conn` sends its commands over.
    async fn client_id(mut conn: Conn) -> i64 {
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .expect("the local Redis (REDIS_URL) answers")
    }

    /// A request worker (a single-threaded runtime) sends its commands
    /// over a connection of its own, the same one each time; two workers
    /// have two; elsewhere the shared connection is used, and it outlives
    /// the workers.
    #[test]
    fn each_worker_has_a_connection_of_its_own() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let pool = main.block_on(async { local_pool() });
        let shared = main.block_on(client_id(pool.shared_connection().unwrap()));
        assert_eq!(
            main.block_on(async { client_id(pool.connection().unwrap()).await }),
            shared,
            "off a worker, the shared connection"
        );
        let workers: Vec<i64> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let worker = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let id = || async { client_id(pool.connection().unwrap()).await };
                    let (first, again) = (worker.block_on(id()), worker.block_on(id()));
                    assert_eq!(first, again, "a worker keeps its connection");
                    first
                })
                .join()
                .unwrap()
            })
            .collect();
        assert_ne!(workers[0], workers[1]);
        assert!(!workers.contains(&shared));
        // The workers and their runtimes are gone; the shared one serves.
        assert_eq!(
            main.block_on(client_id(pool.shared_connection().unwrap())),
            shared
        );
    }
}
