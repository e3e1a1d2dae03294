//! The real Redis the adapter tests run against: `REDIS_URL`, else the
//! local one; or, when `CONFAB_TEST_REDIS_CLUSTER` names a node of one, a
//! Redis Cluster (`make test-redis-cluster` starts one with
//! scripts/redis-cluster.sh and runs them again on it). A Redis that can't
//! be reached fails the test (never a skip).
//! Each test writes under a prefix of its own, so tests run in parallel
//! and runs never see each other's keys.

#![allow(
    dead_code,
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used,
    unreachable_pub
)]

use std::time::Duration;

use confab_ports::HealthCheck;
use confab_redis::{RedisPool, RedisSettings};
use secrecy::SecretString;

/// The Redis URL under test (a node's, on a cluster).
pub fn url() -> String {
    std::env::var("CONFAB_TEST_REDIS_CLUSTER")
        .or_else(|_| std::env::var("REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether the Redis under test is a cluster.
pub fn cluster() -> bool {
    std::env::var_os("CONFAB_TEST_REDIS_CLUSTER").is_some()
}

/// `id` as the adapters tag it in key names: `{id}` on a cluster.
pub fn tag(id: &impl std::fmt::Display) -> String {
    if cluster() {
        format!("{{{id}}}")
    } else {
        id.to_string()
    }
}

/// A pool on the test Redis whose keys start with a fresh prefix;
/// panics when Redis doesn't answer.
pub async fn pool() -> RedisPool {
    pool_at(&url()).await
}

/// A pool on `url` with a fresh prefix, checked with a PING.
pub async fn pool_at(url: &str) -> RedisPool {
    let pool = unchecked_pool(url);
    pool.check()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required for these tests: {e}"));
    pool
}

/// A pool on `url` with a fresh prefix, not checked (for a Redis that is
/// down on purpose).
pub fn unchecked_pool(url: &str) -> RedisPool {
    unchecked_pool_with_prefix(url, &format!("confab-test:{}:", uuid::Uuid::new_v4()))
}

fn unchecked_pool_with_prefix(url: &str, prefix: &str) -> RedisPool {
    RedisPool::new(&RedisSettings {
        url: SecretString::from(url.to_owned()),
        cluster: cluster() && url == self::url(),
        connections: 2,
        command_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        key_prefix: prefix.to_owned(),
    })
    .expect("a pool")
}

/// A checked pool on the test Redis under a fresh prefix, and the prefix
/// (to read its keys through [`raw_connection`]).
pub async fn pool_with_prefix() -> (RedisPool, String) {
    let prefix = format!("confab-test:{}:", uuid::Uuid::new_v4());
    let pool = unchecked_pool_with_prefix(&url(), &prefix);
    pool.check()
        .await
        .unwrap_or_else(|e| panic!("Redis is required for these tests: {e}"));
    (pool, prefix)
}

/// A connection to the test Redis outside the adapter, to read or tamper
/// with its keys (a cluster connection on a cluster).
pub async fn raw_connection() -> Raw {
    if cluster() {
        Raw::Cluster(
            redis::cluster::ClusterClient::new(vec![url()])
                .expect("the cluster's URL")
                .get_async_connection()
                .await
                .expect("a raw cluster connection"),
        )
    } else {
        Raw::Single(
            redis::Client::open(url())
                .expect("the Redis URL")
                .get_multiplexed_async_connection()
                .await
                .expect("a raw connection"),
        )
    }
}

/// A raw connection to a single Redis or a cluster.
#[derive(Clone)]
pub enum Raw {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Raw {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A `redis-server` of the test's own on a free port, that keeps every
/// write (append-only file, fsync on every write) in a temporary
/// directory, so it comes back from a kill with its data; its `DEBUG`
/// command is on.
pub struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts one; panics when `redis-server` can't run.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        redis.restart();
        redis
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again), on its port and data, and waits until it listens.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (the Redis the machine runs) is needed for this test");
        self.child = Some(child);
        // Listening is not enough: Redis accepts connections while it
        // still loads its append-only file, and answers `LOADING` until it
        // has (a test's first command after a restart then failed now and
        // then). Ready is a `PONG`.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it answers `PING` with `PONG` now.
    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0_u8; 7];
        socket.write_all(b"PING\r\n").is_ok()
            && socket.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
