//! [`Erasure`] on Redis: one pass of `SCAN` over the key prefix, unlinking
//! every key that names the deleted user or one of their conversations
//! (rate-limit buckets, failed-login counts, the account version, cache
//! entries and version counters, idempotency records, answer streams).
//! A deletion is rare and the pass reads the keyspace in batches, so it
//! never blocks Redis; the keys are matched by their parts
//! ([`ErasureTargets::names`]), not by a glob per conversation. The
//! account version is given an expiry instead when the targets keep it a
//! while ([`ErasureTargets::keeping_version_for`]). On a Redis Cluster the
//! pass is made on every primary in turn. The blocklist's keys stay, until
//! the tokens they refuse expire, even on a cluster where they carry the
//! user's id as hash tag: without them the deleted account's tokens would
//! be refused only after their requests had been charged to rate buckets
//! (which would name the user again).

use async_trait::async_trait;
use confab_domain::DomainError;
use confab_ports::{Erasure, ErasureTargets};

use crate::pool::{Node, RedisPool, unavailable};

/// Keys asked for per `SCAN` call.
const SCAN_BATCH: usize = 1_000;

/// Forgets a deleted user's keys in Redis.
#[derive(Debug, Clone)]
pub struct RedisErasure {
    pool: RedisPool,
}

impl RedisErasure {
    /// An erasure over `pool`'s key prefix.
    #[must_use]
    pub fn new(pool: RedisPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl Erasure for RedisErasure {
    async fn erase(&self, targets: &ErasureTargets) -> Result<u64, DomainError> {
        let mut erased = 0;
        match self.pool.primaries().await? {
            // A cluster's keys are spread over its primaries: each is
            // scanned in turn.
            Some(primaries) => {
                for primary in &primaries {
                    erased += self.erase_on(Some(primary), targets).await?;
                }
            }
            None => erased = self.erase_on(None, targets).await?,
        }
        Ok(erased)
    }
}

impl RedisErasure {
    /// One `SCAN` pass over `node`'s keys (the single Redis's for `None`).
    async fn erase_on(
        &self,
        node: Option<&Node>,
        targets: &ErasureTargets,
    ) -> Result<u64, DomainError> {
        let prefix = self.pool.key("");
        let version = crate::blocklist::user_key(&self.pool, targets.user());
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut conn = self.pool.connection()?;
        let mut cursor: u64 = 0;
        let mut erased = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH);
            let reply = conn
                .on_node(node, scan)
                .await
                .map_err(|e| unavailable(&e))?;
            let (next, keys): (u64, Vec<String>) =
                redis::from_redis_value(reply).map_err(|e| unavailable(&e.into()))?;
            let mut doomed: Vec<&String> = keys
                .iter()
                .filter(|key| {
                    key.strip_prefix(&prefix)
                        // Blocked sessions stay refused until their tokens
                        // expire (on a cluster their keys name the user).
                        .is_some_and(|k| !k.starts_with("bl:") && targets.names(k))
                })
                .collect();
            if let Some(grace) = targets.version_grace()
                && doomed.iter().any(|key| **key == version)
            {
                // Kept a while longer (it refuses the account everywhere),
                // then gone on its own.
                doomed.retain(|key| **key != version);
                let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX).max(1);
                let _: bool = redis::cmd("PEXPIRE")
                    .arg(&version)
                    .arg(ms)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            if !doomed.is_empty() {
                let unlinked: u64 = redis::cmd("UNLINK")
                    .arg(&doomed)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| unavailable(&e))?;
                erased += unlinked;
            }
            if next == 0 {
                return Ok(erased);
            }
            cursor = next;
        }
    }
}

/// `text` with the characters `SCAN MATCH` treats specially escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::glob_escape;

    #[test]
    fn a_prefix_is_matched_literally() {
        assert_eq!(glob_escape("confab:"), "confab:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
