//! [`FailureCounter`] on Redis, shared by every instance: one counter per
//! key, `{prefix}lf:v1:{key}`, incremented with `INCR` and given its
//! window with `PEXPIRE … NX` (only when it has none: the window opens at
//! the first failure) in one script; it expires on its own when the
//! window ends. Counts and the times left are read with a pipeline per
//! key (`GET` and `PTTL`). The keys of one call may be in different slots
//! of a Redis Cluster, so each key is its own call, all sent at once.

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{FailureCount, FailureCounter};

use crate::pool::{RedisPool, unavailable};

/// The longest window honoured.
const MAX_WINDOW: Duration = Duration::from_secs(365 * 86_400);

/// Counts a failure of `KEYS[1]`, opening its window of `ARGV[1]` ms at
/// the first.
const RECORD_SCRIPT: &str = r"-- confab failure count v1
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1], 'NX')
";

/// Failure counts in Redis.
#[derive(Debug, Clone)]
pub struct RedisFailures {
    pool: RedisPool,
    record: redis::Script,
}

impl RedisFailures {
    /// A counter on `pool`; the script is hashed here, once.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self {
            pool,
            record: redis::Script::new(RECORD_SCRIPT),
        }
    }

    fn key(&self, key: &str) -> String {
        self.pool.key(&format!("lf:v1:{key}"))
    }
}

#[async_trait]
impl FailureCounter for RedisFailures {
    async fn counts(&self, keys: &[String]) -> Result<Vec<FailureCount>, DomainError> {
        // One pipeline per key (`GET` and `PTTL`), all sent at once: the
        // keys may be in different slots of a cluster.
        let reads = keys.iter().map(|key| async move {
            let key = self.key(key);
            let mut conn = self.pool.connection()?;
            let read: (Option<u32>, i64) = redis::pipe()
                .cmd("GET")
                .arg(&key)
                .cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable(&e))?;
            Ok::<_, DomainError>(read)
        });
        let read = futures_util::future::try_join_all(reads).await?;
        Ok(read
            .into_iter()
            .map(|(failures, pttl)| match (failures, u64::try_from(pttl)) {
                (Some(failures), Ok(ms)) => FailureCount {
                    failures,
                    resets_in: Duration::from_millis(ms),
                },
                _ => FailureCount::default(),
            })
            .collect())
    }

    async fn record(&self, keys: &[String], window: Duration) -> Result<(), DomainError> {
        let ms = u64::try_from(window.min(MAX_WINDOW).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // One script per key (the keys may be in different slots of a
        // cluster), all sent at once.
        let records = keys.iter().map(|key| async move {
            let mut conn = self.pool.connection()?;
            self.record
                .key(self.key(key))
                .arg(ms)
                .invoke_async::<()>(&mut conn)
                .await
                .map_err(|e| unavailable(&e))
        });
        futures_util::future::try_join_all(records).await.map(drop)
    }

    async fn clear(&self, key: &str) -> Result<(), DomainError> {
        let mut conn = self.pool.connection()?;
        redis::cmd("DEL")
            .arg(self.key(key))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
    }
}
