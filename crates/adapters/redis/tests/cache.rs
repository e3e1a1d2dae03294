//! What only `RedisCache` does, against the real Redis: TTLs as Redis
//! holds them, versions shared by instances, and neither a lost counter, a
//! corrupt entry nor a Redis that is down breaks the port's promises. What
//! every cache promises is the contract suite's (`tests/contract.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use confab_domain::DomainError;
use confab_ports::Cache;
use confab_redis::RedisCache;
use confab_testkit::contract::cache::{sample_history, sample_list};

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_huge_ttl_is_cut_to_a_year() {
    let (pool, prefix) = support::pool_with_prefix().await;
    let cache = RedisCache::new(pool);
    let mut raw = support::raw_connection().await;
    cache
        .put("huge", sample_list(), Duration::MAX)
        .await
        .unwrap();
    let huge = format!("{prefix}cache:huge");
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&huge)
        .query_async(&mut raw)
        .await
        .unwrap();
    let year_ms = 365 * 86_400 * 1_000;
    assert!(
        (year_ms - 60_000..=year_ms).contains(&ttl_ms),
        "cut to a year: {ttl_ms} ms"
    );
    // Not left on the test Redis for a year.
    let _: u64 = redis::cmd("DEL")
        .arg(&huge)
        .query_async(&mut raw)
        .await
        .unwrap();
}

#[tokio::test]
async fn two_instances_see_each_others_bumps_at_once() {
    let pool = support::pool().await;
    let a = RedisCache::new(pool.clone());
    let b = RedisCache::new(pool);
    let v = a.version("list:u1").await.unwrap();
    assert_eq!(b.version("list:u1").await.unwrap(), v);
    a.bump("list:u1").await.unwrap();
    let after_a = b.version("list:u1").await.unwrap();
    assert!(after_a > v, "{after_a} after {v}");
    assert_eq!(a.version("list:u1").await.unwrap(), after_a);
    b.bump("list:u1").await.unwrap();
    let after_b = a.version("list:u1").await.unwrap();
    assert!(after_b > after_a, "{after_b} after {after_a}");

    // What one stores, the other finds.
    a.put("history:c1", sample_history(), MINUTE).await.unwrap();
    assert!(b.get("history:c1").await.unwrap().is_some());
}

#[tokio::test]
async fn versions_never_go_back_after_the_counter_is_lost() {
    let (pool, prefix) = support::pool_with_prefix().await;
    let cache = RedisCache::new(pool);
    let mut raw = support::raw_connection().await;
    let counter = format!("{prefix}ver:k");

    cache.version("k").await.unwrap();
    for _ in 0..200 {
        cache.bump("k").await.unwrap();
    }
    let before = cache.version("k").await.unwrap();
    let removed: u64 = redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(removed, 1, "the counter lives at {counter}");
    let after = cache.version("k").await.unwrap();
    assert!(after > before, "{after} after {before}");

    // The same when the counter is recreated by a bump.
    let _: u64 = redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .unwrap();
    cache.bump("k").await.unwrap();
    let bumped = cache.version("k").await.unwrap();
    assert!(bumped > after, "{bumped} after {after}");

    // Counters expire (bounded), but far beyond any cache TTL.
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl_ms > 3_600_000, "the counter expires in {ttl_ms} ms");
}

#[tokio::test]
async fn a_corrupt_entry_is_a_miss() {
    let (pool, prefix) = support::pool_with_prefix().await;
    let cache = RedisCache::new(pool);
    let mut raw = support::raw_connection().await;
    let key = format!("{prefix}cache:k");

    // Not JSON, not even UTF-8.
    set_raw(&mut raw, &key, b"\xff\x00garbage".to_vec()).await;
    assert_eq!(cache.get("k").await.unwrap(), None);
    set_raw(&mut raw, &key, b"{\"v\":1,\"value\":".to_vec()).await;
    assert_eq!(cache.get("k").await.unwrap(), None);

    // A real entry, altered.
    let good = sample_history();
    cache.put("good", good.clone(), MINUTE).await.unwrap();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(format!("{prefix}cache:good"))
        .query_async(&mut raw)
        .await
        .unwrap();
    let stored = String::from_utf8(stored).unwrap();
    let json: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(json["v"], 5, "entries carry their format version");

    // Another format version (a newer instance during a deploy).
    let mut newer = json.clone();
    newer["v"] = 6.into();
    set_raw(&mut raw, &key, serde_json::to_vec(&newer).unwrap()).await;
    assert_eq!(cache.get("k").await.unwrap(), None);
    newer["value"] = serde_json::json!({"something": "else"});
    set_raw(&mut raw, &key, serde_json::to_vec(&newer).unwrap()).await;
    assert_eq!(cache.get("k").await.unwrap(), None);

    // Well-formed, but values the domain refuses.
    for (from, to) in [
        ("Redis caching 🚀 strategies", "Redis\\u0000caching"),
        ("Redis caching 🚀 strategies", " padded "),
        ("\"msg_001\"", "\"msg 001\""),
        ("llama3.1:8b", "bad model"),
        ("\"failed\"", "\"exploded\""),
        ("\"tool\"", "\"robot\""),
        ("\"text\"", "\"image\""),
    ] {
        assert!(stored.contains(from), "{from} not in the entry");
        set_raw(&mut raw, &key, stored.replacen(from, to, 1).into_bytes()).await;
        assert_eq!(cache.get("k").await.unwrap(), None, "{from} → {to}");
    }

    // The untouched entry is still found.
    assert_eq!(cache.get("good").await.unwrap(), Some(good));
}

/// Stores `bytes` at `key` as they are.
async fn set_raw(raw: &mut support::Raw, key: &str, bytes: Vec<u8>) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(bytes)
        .query_async(raw)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_redis_that_is_down_is_unavailable_fast() {
    let cache = RedisCache::new(support::unchecked_pool("redis://127.0.0.1:1"));
    // Each call is bounded by `limit` only so that a hang fails the test.
    let limit = Duration::from_secs(5);
    let unavailable = |what: &str, r: Result<(), DomainError>| {
        assert!(
            matches!(r, Err(DomainError::Unavailable(_))),
            "{what}: {r:?}"
        );
    };
    let get = tokio::time::timeout(limit, cache.get("k")).await.unwrap();
    unavailable("get", get.map(drop));
    let put = tokio::time::timeout(limit, cache.put("k", sample_list(), MINUTE))
        .await
        .unwrap();
    unavailable("put", put);
    let version = tokio::time::timeout(limit, cache.version("k"))
        .await
        .unwrap();
    unavailable("version", version.map(drop));
    let bump = tokio::time::timeout(limit, cache.bump("k")).await.unwrap();
    unavailable("bump", bump);
}
