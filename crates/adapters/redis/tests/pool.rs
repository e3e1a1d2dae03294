//! The shared connections against the real Redis at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::time::Duration;

use confab_ports::HealthCheck;
use confab_redis::{RedisPool, RedisSettings};
use secrecy::SecretString;

fn runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(1);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().unwrap()
}

/// A connection first used from a request worker's runtime is made on
/// the runtime the pool was made on (the server's main one): its socket and
/// the task that reads its replies live there, so a busy worker never holds
/// back the replies of the whole instance, and they outlive that worker.
#[test]
fn a_connection_first_used_by_a_worker_lives_on_the_pools_runtime() {
    let main = runtime(true);
    let pool = main.block_on(async {
        RedisPool::new(&RedisSettings {
            url: SecretString::from(support::url()),
            cluster: support::cluster(),
            connections: 1,
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_secs(5),
            key_prefix: format!("confab-test:{}:", uuid::Uuid::new_v4()),
        })
        .unwrap()
    });
    let worker = runtime(false);
    worker
        .block_on(pool.check())
        .unwrap_or_else(|e| panic!("Redis at {} is required: {e}", support::url()));
    // Had the worker's runtime made the connection, its task and socket
    // would end with it, and the next command would fail.
    drop(worker);
    for _ in 0..3 {
        main.block_on(pool.check()).unwrap();
    }
}
