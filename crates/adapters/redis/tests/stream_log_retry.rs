//! Appends that meet a slow or vanished Redis: a batch whose reply was lost
//! is retried without being appended twice, and after an append that
//! failed for good the next ones still land in order. And appends of many
//! generations handed over together: few calls, each generation's batch
//! judged on its own. On a private `redis-server` (blocked with `DEBUG
//! SLEEP`, killed and restarted with its data, or counted with `INFO
//! commandstats`), never the shared one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use confab_domain::{ConversationId, DomainError, EventName, MessageId, WireEvent};
use confab_ports::{EventFeed, ReadFrom, StopSignal, StreamLog};
use confab_redis::{RedisPool, RedisSettings, RedisStreamLog, RedisStreamLogOptions};
use secrecy::SecretString;

fn log_on(url: &str, command_timeout: Duration) -> RedisStreamLog {
    log_holding(url, command_timeout, 100)
}

/// A log on `url` (see [`log_on`]) with a new conversation's generation
/// open, and its stop signal.
async fn opened(
    url: &str,
    command_timeout: Duration,
) -> (RedisStreamLog, ConversationId, Box<dyn StopSignal>) {
    let log = log_on(url, command_timeout);
    let conv = ConversationId::generate();
    let stop = log
        .open(conv, &MessageId::parse("m1").unwrap())
        .await
        .unwrap();
    (log, conv, stop)
}

/// A log on `url` whose logs hold at most `most` events.
fn log_holding(url: &str, command_timeout: Duration, most: usize) -> RedisStreamLog {
    RedisStreamLog::new(
        RedisPool::new(&RedisSettings {
            url: SecretString::from(url.to_owned()),
            cluster: false,
            connections: 1,
            connect_timeout: Duration::from_millis(300),
            command_timeout,
            key_prefix: "t:".to_owned(),
        })
        .unwrap(),
        RedisStreamLogOptions {
            retention: Duration::from_secs(60),
            max_events_per_log: most,
            // No renewal (a script call) within any test: the tests count
            // the calls.
            lease: Duration::from_secs(600),
            poll_interval: Duration::from_secs(300),
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

/// The data of every event Redis holds of the conversation's current
/// generation, read directly.
async fn held(url: &str, conv: ConversationId) -> Vec<String> {
    let mut raw = raw(url).await;
    let generation: String = redis::cmd("HGET")
        .arg(format!("t:log:{{{conv}}}:meta"))
        .arg("gen")
        .query_async(&mut raw)
        .await
        .unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("t:log:{{{conv}}}:{generation}"))
        .arg("-")
        .arg("+")
        .query_async(&mut raw)
        .await
        .unwrap();
    entries
        .into_iter()
        .filter_map(|(_, fields)| (fields[0] == "e").then(|| fields[3].clone()))
        .collect()
}

/// Makes the generation open on `conv` wanted by a reader on another
/// instance, as a resume there does: the instance running it hands its
/// events to Redis from then on (once it hears of it).
async fn wanted(url: &str, conv: ConversationId) {
    let other = log_on(url, Duration::from_secs(5));
    drop(other.read(conv, ReadFrom::Start).await.unwrap());
}

/// Makes `conv`'s generation wanted elsewhere and waits until `log` hands
/// its events to Redis: its first event, `0`, is there.
async fn shared(log: &RedisStreamLog, url: &str, conv: ConversationId) {
    wanted(url, conv).await;
    log.append_all(conv, events(&["0"])).await.unwrap();
    until_held(url, conv, &["0".to_owned()]).await;
}

/// A log on `url` with a generation open on a new conversation and wanted
/// by a reader on another instance, its signal, and a local reader that
/// has read the event `a`, which Redis holds.
async fn opened_with_a(
    url: &str,
) -> (
    RedisStreamLog,
    ConversationId,
    Box<dyn StopSignal>,
    Box<dyn EventFeed>,
) {
    let (log, conv, stop) = opened(url, Duration::from_secs(2)).await;
    let mut local = log.read(conv, ReadFrom::Start).await.unwrap();
    wanted(url, conv).await;
    log.append_all(conv, events(&["a"])).await.unwrap();
    assert_eq!(local.next().await.unwrap().unwrap().event.data, "a");
    // Appends reach Redis behind the local readers.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held(url, conv).await != ["a"] {
        assert!(
            std::time::Instant::now() < deadline,
            "a never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (log, conv, stop, local)
}

#[tokio::test]
async fn a_batch_whose_reply_was_lost_is_retried_without_a_duplicate() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let (log, conv, _stop) = opened(&url, Duration::from_millis(150)).await;
    shared(&log, &url, conv).await;
    log.append_all(conv, events(&["a"])).await.unwrap();
    // Redis stops answering for 0.4 s: the batch's first attempts time out
    // while they wait in its queue, then all of them run.
    let sleeping = stalled(&url, "0.4").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.append_all(conv, events(&["b", "c"])).await.unwrap();
    sleeping.await.unwrap();
    log.append_all(conv, events(&["d"])).await.unwrap();
    log.close(conv).await.unwrap();
    assert_eq!(stored(&url, conv).await, ["0", "a", "b", "c", "d"]);
}

/// The close carries the answer's last events; a close whose reply was
/// lost is tried again, finds the generation closed, and the answer is
/// whole in Redis, `[DONE]` included.
#[tokio::test]
async fn a_close_whose_reply_was_lost_is_retried() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let (log, conv, _stop) = opened(&url, Duration::from_millis(150)).await;
    log.append_all(conv, events(&["a"])).await.unwrap();
    // Redis stops answering for 0.4 s: the close's first attempts time
    // out while they wait in its queue, then all of them run.
    let sleeping = stalled(&url, "0.4").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.finish(conv, events(&["b", "done"])).await.unwrap();
    sleeping.await.unwrap();
    assert_eq!(stored(&url, conv).await, ["a", "b", "done"]);
    let other = log_on(&url, Duration::from_secs(5));
    assert!(!other.current(conv).await.unwrap().open);
}

#[tokio::test]
async fn after_an_append_that_failed_for_good_the_next_ones_land_in_order() {
    let mut redis = support::PrivateRedis::start();
    let url = redis.url();
    let (log, conv, _stop, mut local) = opened_with_a(&url).await;
    redis.kill();
    // The local reader has the batch at once; Redis never gets it, and
    // the local reader then ends with an error: its client resumes from
    // Redis.
    log.append_all(conv, events(&["lost"])).await.unwrap();
    let lost = local.next().await.unwrap().unwrap();
    assert_eq!(lost.event.data, "lost");
    assert!(matches!(
        local.next().await,
        Err(DomainError::Unavailable(_))
    ));
    redis.restart();
    // The app hears of the failure at its next append, which is not made;
    // the ones after it are, numbered by Redis after what it holds.
    assert!(matches!(
        log.append_all(conv, events(&["b"])).await,
        Err(DomainError::Unavailable(_))
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = log.append_all(conv, events(&["c"])).await {
        // The first command after a restart may meet the connection the
        // kill broke.
        assert!(std::time::Instant::now() < deadline, "never appended: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.close(conv).await.unwrap();
    assert_eq!(stored(&url, conv).await, ["a", "c"]);
    // A client that saw the lost event resumes after it, on any instance,
    // at what came after the failure: its number was never given again.
    let other = log_on(&url, Duration::from_secs(5));
    let mut resumed = other.read(conv, ReadFrom::After(lost.id)).await.unwrap();
    assert_eq!(resumed.next().await.unwrap().unwrap().event.data, "c");
    assert_eq!(resumed.next().await.unwrap(), None);
}

#[tokio::test]
async fn local_readers_have_an_event_before_redis_does() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let (log, conv, _stop, mut local) = opened_with_a(&url).await;
    // Redis takes no writes until told: the append is queued, and the
    // local reader has it meanwhile.
    let mut raw = raw(&url).await;
    admin(&mut raw, &["CLIENT", "PAUSE", "60000", "WRITE"]).await;
    log.append_all(conv, events(&["b"])).await.unwrap();
    let shown = tokio::time::timeout(Duration::from_secs(5), local.next())
        .await
        .expect("the local reader is not kept waiting for Redis")
        .unwrap()
        .unwrap();
    assert_eq!(shown.event.data, "b");
    assert_eq!(held(&url, conv).await, ["a"], "Redis has not stored it yet");
    admin(&mut raw, &["CLIENT", "UNPAUSE"]).await;
    log.close(conv).await.unwrap();
    assert_eq!(stored(&url, conv).await, ["a", "b"]);
}

/// `finish`: while Redis has not closed the generation, no reader has its
/// last events, neither the local one nor one on another instance; they
/// come with the end once the close landed, and the conversation is
/// closed for any instance by then.
#[tokio::test]
async fn the_last_events_reach_no_reader_before_the_generation_is_closed() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let (log, conv, _stop, mut local) = opened_with_a(&url).await;
    let other = log_on(&url, Duration::from_secs(5));
    let mut elsewhere = other.read(conv, ReadFrom::Start).await.unwrap();
    let patience = Duration::from_secs(5);
    let data = |event: Option<confab_ports::LoggedEvent>| event.map(|e| e.event.data);
    let next = async |feed: &mut Box<dyn EventFeed>| {
        data(
            tokio::time::timeout(patience, feed.next())
                .await
                .expect("the feed stalled")
                .unwrap(),
        )
    };
    assert_eq!(next(&mut elsewhere).await.as_deref(), Some("a"));
    let mut raw = raw(&url).await;
    admin(&mut raw, &["CLIENT", "PAUSE", "60000", "WRITE"]).await;
    let finishing = {
        let log = log.clone();
        tokio::spawn(async move { log.finish(conv, events(&["b", "done"])).await })
    };
    for (feed, which) in [(&mut local, "local"), (&mut elsewhere, "other instance's")] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), feed.next())
                .await
                .is_err(),
            "the {which} reader had a last event while the generation was open"
        );
    }
    assert!(other.current(conv).await.unwrap().open);
    admin(&mut raw, &["CLIENT", "UNPAUSE"]).await;
    assert_eq!(next(&mut local).await.as_deref(), Some("b"));
    assert_eq!(next(&mut local).await.as_deref(), Some("done"));
    assert!(!other.current(conv).await.unwrap().open);
    assert_eq!(next(&mut local).await, None);
    assert_eq!(next(&mut elsewhere).await.as_deref(), Some("b"));
    assert_eq!(next(&mut elsewhere).await.as_deref(), Some("done"));
    assert_eq!(next(&mut elsewhere).await, None);
    finishing.await.unwrap().unwrap();
    assert_eq!(stored(&url, conv).await, ["a", "b", "done"]);
    other
        .open(conv, &MessageId::parse("m2").unwrap())
        .await
        .unwrap();
}

/// Stops the private Redis from answering for `seconds` (`DEBUG SLEEP`);
/// the task ends when it answers again.
async fn stalled(url: &str, seconds: &'static str) -> tokio::task::JoinHandle<()> {
    let mut raw = raw(url).await;
    tokio::spawn(async move {
        admin(&mut raw, &["DEBUG", "SLEEP", seconds]).await;
    })
}

/// A plain connection to the private Redis, for what the test does to it.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Runs `command` (a `CLIENT PAUSE`, a `CONFIG RESETSTAT`…) on `raw`.
async fn admin(raw: &mut redis::aio::MultiplexedConnection, command: &[&str]) {
    redis::cmd(command[0])
        .arg(&command[1..])
        .query_async::<()>(raw)
        .await
        .unwrap();
}

/// `EVALSHA` calls Redis ran since its counters were last reset.
async fn script_calls(raw: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(raw)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// Waits until Redis holds `expected` for `conv`.
async fn until_held(url: &str, conv: ConversationId, expected: &[String]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held(url, conv).await != expected {
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never held {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_appends_of_many_generations_go_to_redis_in_a_few_calls() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let log = log_on(&url, Duration::from_secs(5));
    let mut raw = raw(&url).await;
    // The scripts loaded, so that no call below is a NOSCRIPT retry.
    let _loaded = opened_with_a(&url).await;
    let mut conversations = Vec::new();
    let mut signals = Vec::new();
    for _ in 0..100 {
        let conv = ConversationId::generate();
        signals.push(
            log.open(conv, &MessageId::parse("m1").unwrap())
                .await
                .unwrap(),
        );
        conversations.push(conv);
    }
    for conv in &conversations {
        shared(&log, &url, *conv).await;
    }
    admin(&mut raw, &["CONFIG", "RESETSTAT"]).await;
    // Queued together, with no await in between: two senders take them,
    // 64 generations in one call and the other 36 in another.
    for (n, conv) in conversations.iter().enumerate() {
        let data = [format!("{n}-a"), format!("{n}-b")];
        log.append_all(*conv, events(&[&data[0], &data[1]]))
            .await
            .unwrap();
    }
    for (n, conv) in conversations.iter().enumerate() {
        until_held(
            &url,
            *conv,
            &["0".to_owned(), format!("{n}-a"), format!("{n}-b")],
        )
        .await;
    }
    assert_eq!(script_calls(&mut raw).await, 2);
    // Each generation goes on in order after its group.
    for (n, conv) in conversations.iter().enumerate() {
        log.append_all(*conv, events(&[&format!("{n}-c")]))
            .await
            .unwrap();
        log.close(*conv).await.unwrap();
    }
    for (n, conv) in conversations.iter().enumerate() {
        assert_eq!(
            stored(&url, *conv).await,
            [
                "0".to_owned(),
                format!("{n}-a"),
                format!("{n}-b"),
                format!("{n}-c")
            ]
        );
    }
}

#[tokio::test]
async fn a_generation_that_fails_in_a_group_fails_alone() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let (log, lost, _lost_stop, mut lost_local) = opened_with_a(&url).await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let conv = ConversationId::generate();
        let stop = log
            .open(conv, &MessageId::parse("m1").unwrap())
            .await
            .unwrap();
        shared(&log, &url, conv).await;
        kept.push((conv, stop));
    }
    // Another instance took over the lost conversation's log (its lease
    // ran out): this instance's generation is no longer the open one.
    let mut raw = raw(&url).await;
    redis::cmd("HSET")
        .arg(format!("t:log:{{{lost}}}:meta"))
        .arg("gen")
        .arg("1")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    admin(&mut raw, &["CONFIG", "RESETSTAT"]).await;
    // Queued together: one call carries the three batches.
    log.append_all(kept[0].0, events(&["x"])).await.unwrap();
    log.append_all(lost, events(&["b"])).await.unwrap();
    log.append_all(kept[1].0, events(&["y"])).await.unwrap();
    assert_eq!(lost_local.next().await.unwrap().unwrap().event.data, "b");
    // The lost one's local reader ends with an error; its next append
    // hears why. The others landed.
    assert!(lost_local.next().await.is_err());
    assert_eq!(script_calls(&mut raw).await, 1);
    assert!(matches!(
        log.append_all(lost, events(&["c"])).await,
        Err(DomainError::NotFound)
    ));
    for ((conv, _), data) in kept.iter().zip(["x", "y"]) {
        until_held(&url, *conv, &["0".to_owned(), data.to_owned()]).await;
        log.close(*conv).await.unwrap();
        assert_eq!(stored(&url, *conv).await, ["0", data]);
    }
}

#[tokio::test]
async fn events_appended_while_their_log_closes_fail_alone_in_their_group() {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let (log, closing, _stop, _local) = opened_with_a(&url).await;
    let (busy, other) = (ConversationId::generate(), ConversationId::generate());
    let mut signals = Vec::new();
    for conv in [busy, other] {
        signals.push(
            log.open(conv, &MessageId::parse("m1").unwrap())
                .await
                .unwrap(),
        );
        shared(&log, &url, conv).await;
    }
    let mut raw = raw(&url).await;
    admin(&mut raw, &["CLIENT", "PAUSE", "60000", "WRITE"]).await;
    // Both senders take a call that waits for Redis.
    log.append_all(closing, events(&["b"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    log.append_all(busy, events(&["q"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The close ends the local copy and waits for the sender; an event
    // appended meanwhile is numbered but not in the copy.
    let closer = tokio::spawn({
        let log = log.clone();
        async move { log.close(closing).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    log.append_all(closing, events(&["late"])).await.unwrap();
    // Waits for a sender, and goes in the same call as the closing log's
    // next batch.
    log.append_all(other, events(&["x", "y"])).await.unwrap();
    admin(&mut raw, &["CLIENT", "UNPAUSE"]).await;
    closer.await.unwrap().unwrap();
    assert_eq!(stored(&url, closing).await, ["a", "b"]);
    until_held(
        &url,
        other,
        &["0".to_owned(), "x".to_owned(), "y".to_owned()],
    )
    .await;
    log.append_all(other, events(&["z"])).await.unwrap();
    log.close(other).await.unwrap();
    assert_eq!(stored(&url, other).await, ["0", "x", "y", "z"]);
    log.close(busy).await.unwrap();
    assert_eq!(stored(&url, busy).await, ["0", "q"]);
}

/// Script calls a log's close of a generation no other instance read
/// makes when its answer is `count` events (appended four at a time),
/// after checking that none of them went to Redis before it; and that
/// Redis then holds them all, in order.
async fn calls_of_a_close_after(count: usize) -> u64 {
    let redis = support::PrivateRedis::start();
    let url = redis.url();
    let log = log_holding(&url, Duration::from_secs(5), 5_000);
    let mut raw = raw(&url).await;
    // The scripts loaded, the close's too, so that no call below is a
    // NOSCRIPT retry.
    let (loaded, loaded_conv, _, _) = opened_with_a(&url).await;
    loaded.close(loaded_conv).await.unwrap();
    let conv = ConversationId::generate();
    let _stop = log
        .open(conv, &MessageId::parse("m1").unwrap())
        .await
        .unwrap();
    let data: Vec<String> = (0..count).map(|n| n.to_string()).collect();
    for chunk in data.chunks(4) {
        let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
        log.append_all(conv, events(&names)).await.unwrap();
    }
    assert!(held(&url, conv).await.is_empty(), "nothing went to Redis");
    admin(&mut raw, &["CONFIG", "RESETSTAT"]).await;
    log.close(conv).await.unwrap();
    let calls = script_calls(&mut raw).await;
    assert_eq!(stored(&url, conv).await, data);
    calls
}

#[tokio::test]
async fn a_long_answer_kept_to_its_end_goes_to_redis_in_calls_of_bounded_size() {
    // Its close hands the 3,000 events over in three calls (1,024, 1,024
    // and 952), then adds the end entry.
    assert_eq!(calls_of_a_close_after(3_000).await, 4);
}

#[tokio::test]
async fn an_answer_kept_to_its_end_closes_in_one_call() {
    // The close's own call carries the events, then the end entry.
    assert_eq!(calls_of_a_close_after(24).await, 1);
}
