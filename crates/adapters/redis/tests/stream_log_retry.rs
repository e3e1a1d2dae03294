//! Appends that meet a slow or vanished Redis: a batch whose reply was lost
//! is retried without being appended twice, and after an append that
//! failed for good the next ones still land in order. On a private
//! `redis-server` (blocked with `DEBUG SLEEP`, or killed and restarted with
//! its data), never the shared one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use confab_domain::{ConversationId, DomainError, EventName, MessageId, WireEvent};
use confab_ports::{EventFeed, ReadFrom, StreamLog};
use confab_redis::{RedisPool, RedisSettings, RedisStreamLog, RedisStreamLogOptions};
use secrecy::SecretString;

fn log_on(url: &str, command_timeout: Duration) -> RedisStreamLog {
    RedisStreamLog::new(
        RedisPool::new(&RedisSettings {
            url: SecretString::from(url.to_owned()),
            connections: 1,
            connect_timeout: Duration::from_millis(300),
            command_timeout,
            key_prefix: "t:".to_owned(),
        })
        .unwrap(),
        RedisStreamLogOptions {
            retention: Duration::from_secs(60),
            max_events_per_log: 100,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(10),
        },
    )
}

fn events(names: &[&str]) -> Vec<WireEvent> {
    names
        .iter()
        .map(|data| WireEvent {
            name: Some(EventName::Delta),
            data: (*data).to_owned(),
        })
        .collect()
}

/// Every event's data, read from Redis by another instance.
async fn stored(url: &str, conv: ConversationId) -> Vec<String> {
    let other = log_on(url, Duration::from_secs(5));
    let mut feed: Box<dyn EventFeed> = other.read(conv, ReadFrom::Start).await.unwrap();
    let mut data = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the closed log reads to its end")
        .unwrap()
    {
        data.push(event.event.data);
    }
    data
}

#[tokio::test]
async fn a_batch_whose_reply_was_lost_is_retried_without_a_duplicate() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let log = log_on(&url, Duration::from_millis(150));
    let conv = ConversationId::generate();
    let _stop = log
        .open(conv, &MessageId::parse("m1").unwrap())
        .await
        .unwrap();
    log.append_all(conv, events(&["a"])).await.unwrap();
    // Redis stops answering for 0.4 s: the batch's first attempts time out
    // while they wait in its queue, then all of them run.
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let sleeping = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("0.4")
            .query_async::<()>(&mut raw)
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.append_all(conv, events(&["b", "c"])).await.unwrap();
    sleeping.await.unwrap().unwrap();
    log.append_all(conv, events(&["d"])).await.unwrap();
    log.close(conv).await.unwrap();
    assert_eq!(stored(&url, conv).await, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn after_an_append_that_failed_for_good_the_next_ones_land_in_order() {
    let mut redis = support::PrivateRedis::start();
    let url = redis.url();
    let log = log_on(&url, Duration::from_secs(2));
    let conv = ConversationId::generate();
    let _stop = log
        .open(conv, &MessageId::parse("m1").unwrap())
        .await
        .unwrap();
    let mut local = log.read(conv, ReadFrom::Start).await.unwrap();
    log.append_all(conv, events(&["a"])).await.unwrap();
    redis.kill();
    assert!(matches!(
        log.append_all(conv, events(&["lost"])).await,
        Err(DomainError::Unavailable(_))
    ));
    redis.restart();
    log.append_all(conv, events(&["b"])).await.unwrap();
    log.close(conv).await.unwrap();
    assert_eq!(stored(&url, conv).await, ["a", "b"]);
    // The local reader got what was stored before the failure, then an
    // error: its client resumes from Redis.
    assert_eq!(local.next().await.unwrap().unwrap().event.data, "a");
    assert!(matches!(
        local.next().await,
        Err(DomainError::Unavailable(_))
    ));
}
