//! [`FailureCounter`] on Redis, shared by every instance: one counter per
//! key, `{prefix}lf:v1:{key}`, incremented with `INCR` and given its
//! window with `PEXPIRE … NX` (only when it has none: the window opens at
//! the first failure) in one `MULTI`; it expires on its own when the
//! window ends. Counts and the times left are read for every key in one
//! pipeline (`GET` and `PTTL` each).

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{FailureCount, FailureCounter};

use crate::pool::{RedisPool, unavailable};

/// The longest window honoured.
const MAX_WINDOW: Duration = Duration::from_secs(365 * 86_400);

/// Failure counts in Redis.
#[derive(Debug, Clone)]
pub struct RedisFailures {
    pool: RedisPool,
}

impl RedisFailures {
    /// A counter on `pool`.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self { pool }
    }

    fn key(&self, key: &str) -> String {
        self.pool.key(&format!("lf:v1:{key}"))
    }
}

#[async_trait]
impl FailureCounter for RedisFailures {
    async fn counts(&self, keys: &[String]) -> Result<Vec<FailureCount>, DomainError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            let key = self.key(key);
            pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        }
        let mut conn = self.pool.connection()?;
        let read: Vec<(Option<u32>, i64)> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
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
        if keys.is_empty() {
            return Ok(());
        }
        let ms = u64::try_from(window.min(MAX_WINDOW).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in keys {
            let key = self.key(key);
            pipe.cmd("INCR")
                .arg(&key)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ms)
                .arg("NX")
                .ignore();
        }
        let mut conn = self.pool.connection()?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| unavailable(&e))
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
