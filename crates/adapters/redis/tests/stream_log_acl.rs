//! The stream log under a Redis ACL that grants the stop channel but not
//! the want channel (a deployment set up before the want channel existed):
//! stops are still heard at once, and a reader on another instance is not
//! refused (its want waits for the next lease renewal). On a private
//! `redis-server`, whose users this test sets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use confab_domain::{ConversationId, EventName, MessageId, WireEvent};
use confab_ports::{ReadFrom, StreamLog};
use confab_redis::{RedisPool, RedisSettings, RedisStreamLog, RedisStreamLogOptions};
use secrecy::SecretString;

/// A log as the ACL user `confab` (password `secret`) on `port`, whose
/// renewals come too late for the test: a stop heard in time came by
/// pub/sub.
fn log_as_confab(port: u16) -> RedisStreamLog {
    RedisStreamLog::new(
        RedisPool::new(&RedisSettings {
            url: SecretString::from(format!("redis://confab:secret@127.0.0.1:{port}")),
            cluster: false,
            connections: 1,
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_secs(5),
            key_prefix: "t:".to_owned(),
        })
        .unwrap(),
        RedisStreamLogOptions {
            retention: Duration::from_secs(60),
            max_events_per_log: 100,
            lease: Duration::from_secs(600),
            poll_interval: Duration::from_secs(300),
        },
    )
}

#[tokio::test]
async fn without_the_want_channel_stops_are_heard_and_readers_elsewhere_are_served() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let mut raw = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "confab",
            "on",
            ">secret",
            "~t:*",
            "+@all",
            "resetchannels",
            "&t:log:stop",
        ])
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let (a, b) = (log_as_confab(port), log_as_confab(port));
    let conv = ConversationId::generate();
    let mut stop = a
        .open(conv, &MessageId::parse("m1").unwrap())
        .await
        .unwrap();
    a.append_all(
        conv,
        vec![WireEvent {
            name: Some(EventName::Delta),
            data: "kept".to_owned(),
        }],
    )
    .await
    .unwrap();
    // The locate's publish is refused; the read is not.
    let feed = b.read(conv, ReadFrom::Start).await;
    assert!(feed.is_ok(), "a reader elsewhere is served");
    let wanted: Option<String> = redis::cmd("HGET")
        .arg(format!("t:log:{{{conv}}}:meta"))
        .arg("want")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(wanted.as_deref(), Some("1"), "left for the next renewal");
    // The stop channel was subscribed on its own: a stop arrives at once.
    assert!(b.request_stop(conv).await.unwrap());
    tokio::time::timeout(Duration::from_secs(5), stop.stopped())
        .await
        .expect("the stop was heard by pub/sub");
    a.close(conv).await.unwrap();
}
