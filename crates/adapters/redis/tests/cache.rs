//! `RedisCache` against the real Redis: values round-trip and expire,
//! versions grow and are shared by instances, and neither a lost counter,
//! a corrupt entry nor a Redis that is down breaks the port's promises.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use confab_domain::{
    Content, Conversation, ConversationId, ConversationSummary, DomainError, Message, MessageId,
    MessageMetadata, MessageRole, MessageStatus, ModelSlug, OffsetDateTime, Page, PageRequest,
    Title, UserId,
};
use confab_ports::{Cache, CachedValue, HealthCheck};
use confab_redis::{RedisCache, RedisPool, RedisSettings};
use secrecy::SecretString;

const MINUTE: Duration = Duration::from_secs(60);

/// A pool on the test Redis under a fresh prefix, and that prefix (to
/// reach the cache's keys with a raw connection).
async fn pool_and_prefix() -> (RedisPool, String) {
    let prefix = format!("confab-test:{}:", uuid::Uuid::new_v4());
    let pool = RedisPool::new(&RedisSettings {
        url: SecretString::from(support::url()),
        connections: 2,
        command_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        key_prefix: prefix.clone(),
    })
    .unwrap();
    pool.check()
        .await
        .expect("Redis is required for these tests");
    (pool, prefix)
}

/// A connection outside the adapter, to tamper with its keys.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(support::url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A time with nanoseconds, so a lossy encoding would show.
fn at(nanos: i128) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap()
}

fn list() -> CachedValue {
    let summary = |title: &str, last: Option<&str>, archived: bool, t: i128| ConversationSummary {
        id: ConversationId::generate(),
        title: Title::parse(title).unwrap(),
        last_message: last.map(str::to_owned),
        is_archived: archived,
        created_at: at(t),
        updated_at: at(t + 86_400_123_456_789),
    };
    CachedValue::ConversationList(Page {
        items: vec![
            summary(
                "Quarterly plan",
                Some("Let's go over the numbers"),
                false,
                1_732_000_000_123_456_789,
            ),
            summary(
                "Café ☕ — 日本語のメモ",
                Some("どうぞ 🎉"),
                true,
                1_731_000_000_000_000_001,
            ),
            summary("New chat", None, false, 1_730_000_000_999_999_999),
        ],
        total: 42,
        request: PageRequest::new(20, 3).unwrap(),
    })
}

fn history() -> CachedValue {
    let conversation = Conversation {
        id: ConversationId::generate(),
        owner: UserId::generate(),
        title: Title::parse("Redis caching 🚀 strategies").unwrap(),
        is_archived: true,
        deleted_at: None,
        created_at: at(1_732_000_000_000_000_007),
        updated_at: at(1_732_000_999_123_456_789),
    };
    let mut metadata = MessageMetadata::new();
    metadata.insert("finish_reason".into(), "length".into());
    metadata.insert("tokens".into(), 2048.into());
    metadata.insert(
        "nested".into(),
        serde_json::json!({"list": [1, "two", null, true], "ratio": 0.25}),
    );
    let message = |id: &str,
                   parent: Option<&str>,
                   role: MessageRole,
                   parts: &[&str],
                   status: MessageStatus,
                   model: Option<&str>,
                   metadata: MessageMetadata,
                   t: i128| Message {
        id: MessageId::parse(id).unwrap(),
        conversation_id: conversation.id,
        parent_id: parent.map(|p| MessageId::parse(p).unwrap()),
        role,
        content: Content::text(parts.iter().map(|p| (*p).to_owned()).collect()).unwrap(),
        status,
        model_slug: model.map(|m| ModelSlug::parse(m).unwrap()),
        metadata,
        created_at: at(t),
        updated_at: at(t + 1_500),
    };
    let messages = vec![
        message(
            "msg_001",
            None,
            MessageRole::System,
            &["You are a helpful assistant."],
            MessageStatus::FinishedSuccessfully,
            None,
            MessageMetadata::new(),
            1_732_000_000_000_000_100,
        ),
        message(
            "msg_002",
            Some("msg_001"),
            MessageRole::User,
            &["Explique-moi le cache Redis, s'il te plaît 🙏 «vite»"],
            MessageStatus::FinishedSuccessfully,
            None,
            MessageMetadata::new(),
            1_732_000_000_000_000_200,
        ),
        message(
            &MessageId::generate().to_string(),
            Some("msg_002"),
            MessageRole::Assistant,
            &[
                "Bien sûr ! Redis garde les données en mémoire…\n\n",
                "第二部分 👍",
            ],
            MessageStatus::FinishedPartialCompletion,
            Some("llama3.1:8b"),
            metadata,
            1_732_000_000_000_000_300,
        ),
        message(
            "tool-call_1",
            Some("msg_002"),
            MessageRole::Tool,
            &[
                "{\"error\": \"timeout\"}",
                "",
                "\"quoted\" \\ backslash \t tab",
            ],
            MessageStatus::Failed,
            None,
            MessageMetadata::new(),
            1_732_000_000_000_000_400,
        ),
        Message {
            content: Content::empty_text(),
            ..message(
                "msg_005",
                Some("tool-call_1"),
                MessageRole::Assistant,
                &["x"],
                MessageStatus::InProgress,
                Some("org/model-v2"),
                MessageMetadata::new(),
                1_732_000_000_000_000_500,
            )
        },
    ];
    CachedValue::History(Box::new(conversation), messages)
}

#[tokio::test]
async fn a_conversation_list_round_trips() {
    let cache = RedisCache::new(support::pool().await);
    let value = list();
    cache
        .put("list:u1:p1", value.clone(), MINUTE)
        .await
        .unwrap();
    assert_eq!(cache.get("list:u1:p1").await.unwrap(), Some(value));

    let empty = CachedValue::ConversationList(Page {
        items: Vec::new(),
        total: 0,
        request: PageRequest::default(),
    });
    cache
        .put("list:u1:p1", empty.clone(), MINUTE)
        .await
        .unwrap();
    assert_eq!(
        cache.get("list:u1:p1").await.unwrap(),
        Some(empty),
        "a second put replaces the value"
    );
}

#[tokio::test]
async fn a_history_round_trips() {
    let cache = RedisCache::new(support::pool().await);
    let value = history();
    cache
        .put("history:c1", value.clone(), MINUTE)
        .await
        .unwrap();
    assert_eq!(cache.get("history:c1").await.unwrap(), Some(value));

    // A soft-deleted conversation with no messages.
    let CachedValue::History(mut conversation, _) = history() else {
        unreachable!()
    };
    conversation.deleted_at = Some(at(1_732_100_000_000_000_001));
    let deleted = CachedValue::History(conversation, Vec::new());
    cache
        .put("history:c2", deleted.clone(), MINUTE)
        .await
        .unwrap();
    assert_eq!(cache.get("history:c2").await.unwrap(), Some(deleted));
}

#[tokio::test]
async fn a_missing_key_is_none() {
    let cache = RedisCache::new(support::pool().await);
    assert_eq!(cache.get("never-stored").await.unwrap(), None);
    // A key that is a version counter's name in another namespace.
    cache.version("k").await.unwrap();
    assert_eq!(cache.get("k").await.unwrap(), None);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let cache = RedisCache::new(support::pool().await);
    cache
        .put("short", list(), Duration::from_millis(200))
        .await
        .unwrap();
    cache.put("long", list(), MINUTE).await.unwrap();
    assert!(cache.get("short").await.unwrap().is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get("short").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "a 200 ms entry outlived 5 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(cache.get("long").await.unwrap().is_some());
}

#[tokio::test]
async fn a_zero_ttl_stores_nothing_and_a_huge_one_is_capped() {
    let (pool, prefix) = pool_and_prefix().await;
    let cache = RedisCache::new(pool);
    let mut raw = raw().await;
    cache.put("zero", list(), Duration::ZERO).await.unwrap();
    assert_eq!(cache.get("zero").await.unwrap(), None);
    let value = list();
    cache
        .put("huge", value.clone(), Duration::MAX)
        .await
        .unwrap();
    assert_eq!(cache.get("huge").await.unwrap(), Some(value));
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
    // Less than a millisecond is rounded up, not sent as an invalid `PX 0`.
    cache
        .put("tiny", list(), Duration::from_micros(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn versions_are_stable_until_bumped_then_grow() {
    let cache = RedisCache::new(support::pool().await);
    let v1 = cache.version("k").await.unwrap();
    assert!(v1 > 0);
    assert_eq!(cache.version("k").await.unwrap(), v1, "stable");
    let mut last = v1;
    for _ in 0..50 {
        cache.bump("k").await.unwrap();
        let v = cache.version("k").await.unwrap();
        assert!(v > last, "{v} after {last}");
        last = v;
    }
    assert_eq!(cache.version("k").await.unwrap(), last);
    // A bump of a counter that was never read creates it.
    cache.bump("fresh").await.unwrap();
    assert!(cache.version("fresh").await.unwrap() > 0);
    // Counters are independent.
    let other = cache.version("other").await.unwrap();
    cache.bump("k").await.unwrap();
    assert_eq!(cache.version("other").await.unwrap(), other);
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
    a.put("history:c1", history(), MINUTE).await.unwrap();
    assert!(b.get("history:c1").await.unwrap().is_some());
}

#[tokio::test]
async fn versions_never_go_back_after_the_counter_is_lost() {
    let (pool, prefix) = pool_and_prefix().await;
    let cache = RedisCache::new(pool);
    let mut raw = raw().await;
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
    let (pool, prefix) = pool_and_prefix().await;
    let cache = RedisCache::new(pool);
    let mut raw = raw().await;
    let key = format!("{prefix}cache:k");

    // Not JSON, not even UTF-8.
    set_raw(&mut raw, &key, b"\xff\x00garbage".to_vec()).await;
    assert_eq!(cache.get("k").await.unwrap(), None);
    set_raw(&mut raw, &key, b"{\"v\":1,\"value\":".to_vec()).await;
    assert_eq!(cache.get("k").await.unwrap(), None);

    // A real entry, altered.
    let good = history();
    cache.put("good", good.clone(), MINUTE).await.unwrap();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(format!("{prefix}cache:good"))
        .query_async(&mut raw)
        .await
        .unwrap();
    let stored = String::from_utf8(stored).unwrap();
    let json: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(json["v"], 1, "entries carry their format version");

    // Another format version (a newer instance during a deploy).
    let mut newer = json.clone();
    newer["v"] = 2.into();
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
async fn set_raw(raw: &mut redis::aio::MultiplexedConnection, key: &str, bytes: Vec<u8>) {
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
    let started = Instant::now();
    let limit = Duration::from_secs(5);
    let unavailable = |what: &str, r: Result<(), DomainError>| {
        assert!(
            matches!(r, Err(DomainError::Unavailable(_))),
            "{what}: {r:?}"
        );
    };
    let get = tokio::time::timeout(limit, cache.get("k")).await.unwrap();
    unavailable("get", get.map(drop));
    let put = tokio::time::timeout(limit, cache.put("k", list(), MINUTE))
        .await
        .unwrap();
    unavailable("put", put);
    let version = tokio::time::timeout(limit, cache.version("k"))
        .await
        .unwrap();
    unavailable("version", version.map(drop));
    let bump = tokio::time::timeout(limit, cache.bump("k")).await.unwrap();
    unavailable("bump", bump);
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
}
