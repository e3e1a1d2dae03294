//! What only [`RedisStreamLog`] does, against the real Redis: its keys and
//! ids, instances sharing one Redis and key prefix, the lease and the
//! retention on Redis's clock. What every stream log promises is the
//! contract suite's (`tests/contract.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use confab_domain::{ConversationId, DomainError, EventName, Field, MessageId, WireEvent};
use confab_ports::{EventFeed, HealthCheck, LogHead, ReadFrom, StreamLog};
use confab_redis::{RedisPool, RedisSettings, RedisStreamLog, RedisStreamLogOptions};
use confab_testkit::contract::stream_log::{append_each, drain};
use secrecy::SecretString;
use tokio::time::timeout;

const BRIEF: Duration = Duration::from_millis(50);
const PATIENCE: Duration = Duration::from_secs(5);

fn options() -> RedisStreamLogOptions {
    RedisStreamLogOptions {
        retention: Duration::from_secs(60),
        max_events_per_log: 1000,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
    }
}

/// A short lease, for the tests of the lease.
fn short_lease() -> RedisStreamLogOptions {
    RedisStreamLogOptions {
        lease: Duration::from_millis(300),
        ..options()
    }
}

fn fresh_prefix() -> String {
    format!("confab-test:{}:", uuid::Uuid::new_v4())
}

fn pool(prefix: &str) -> RedisPool {
    RedisPool::new(&RedisSettings {
        url: SecretString::from(support::url()),
        cluster: support::cluster(),
        connections: 2,
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_secs(5),
        key_prefix: prefix.to_owned(),
    })
    .expect("a pool")
}

async fn instance(prefix: &str, options: RedisStreamLogOptions) -> RedisStreamLog {
    let shared = pool(prefix);
    shared
        .check()
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required: {e}", support::url()));
    RedisStreamLog::new(shared, options)
}

/// Two instances on one fresh prefix: one deployment of two.
async fn two_instances(options: RedisStreamLogOptions) -> (RedisStreamLog, RedisStreamLog) {
    let prefix = fresh_prefix();
    (
        instance(&prefix, options).await,
        instance(&prefix, options).await,
    )
}

async fn raw_connection() -> support::Raw {
    support::raw_connection().await
}

fn event(data: &str) -> WireEvent {
    WireEvent {
        name: Some(EventName::Delta),
        data: data.to_owned(),
    }
}

fn head(id: &str, open: bool) -> LogHead {
    LogHead {
        message: message(id),
        open,
    }
}

fn message(id: &str) -> MessageId {
    MessageId::parse(id).unwrap()
}

/// The next event's (id, data), failing the test if it doesn't come.
async fn drain_one(feed: &mut Box<dyn EventFeed>) -> (String, String) {
    let e = timeout(PATIENCE, feed.next())
        .await
        .expect("the feed stalled")
        .unwrap()
        .expect("an event");
    (e.id, e.event.data)
}

/// The generation and the entry id of an event id.
fn split_id(id: &str) -> (u64, &str) {
    let (generation, entry) = id.split_once('-').unwrap();
    (generation.parse().unwrap(), entry)
}

fn is_invalid_id<T>(result: &Result<T, DomainError>) -> bool {
    matches!(result, Err(DomainError::Invalid { field, .. }) if *field == Field::LastEventId)
}

/// Waits until `done` holds, polling; panics after `PATIENCE`.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut done: F) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// What only the Redis log does with one instance.

#[tokio::test]
async fn an_expired_log_leaves_no_keys() {
    let prefix = fresh_prefix();
    let log = instance(
        &prefix,
        RedisStreamLogOptions {
            retention: Duration::from_millis(200),
            ..options()
        },
    )
    .await;
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    log.append(conv, event("e1")).await.unwrap();
    log.close(conv).await.unwrap();
    eventually("the closed log expires", async || {
        matches!(log.current(conv).await, Err(DomainError::NotFound))
    })
    .await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut raw_connection().await)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn made_up_ids_and_the_end_entrys_are_refused() {
    let prefix = fresh_prefix();
    let log = instance(&prefix, options()).await;
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    let appended = append_each(&log, conv, 1..=2).await;
    let (generation, entry) = split_id(&appended[1].0);
    let (ms, seq) = entry.split_once('-').unwrap();
    let seq: u64 = seq.parse().unwrap();
    let made_up = [
        format!("{generation}-0-0"),
        format!("{generation}-{ms}-{}", seq + 1),
        format!("{}-{entry}", generation + 1),
        format!("{}-{entry}", generation - 1),
        format!("0{generation}-{entry}"),
        format!("{generation}-0{entry}"),
        format!("{generation}-{entry}-0"),
        format!("{generation}-{ms}"),
        entry.to_owned(),
    ];
    for bad in &made_up {
        assert!(
            is_invalid_id(&log.read(conv, ReadFrom::After(bad.clone())).await),
            "{bad:?}"
        );
    }
    // Nor the end entry's id, which readers never see.
    log.close(conv).await.unwrap();
    let last: Vec<(String, Vec<String>)> = redis::cmd("XREVRANGE")
        .arg(format!("{prefix}log:{{{conv}}}:{generation}"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut raw_connection().await)
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    let end = format!("{generation}-{}", last[0].0);
    assert!(is_invalid_id(&log.read(conv, ReadFrom::After(end)).await));
}

// Across instances.

/// Whether Redis holds `key`.
async fn exists(key: &str) -> bool {
    let mut raw = raw_connection().await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut raw)
        .await
        .unwrap()
        == 1
}

/// Options whose renewals come too late for any test: what reaches the
/// instance running a generation in time came by pub/sub.
fn slow_renewals() -> RedisStreamLogOptions {
    RedisStreamLogOptions {
        lease: Duration::from_secs(300),
        poll_interval: Duration::from_secs(100),
        ..options()
    }
}

#[tokio::test]
async fn a_generation_no_other_instance_reads_reaches_redis_only_when_it_closes() {
    let prefix = fresh_prefix();
    let (a, b) = (
        instance(&prefix, options()).await,
        instance(&prefix, options()).await,
    );
    let (kept, followed) = (ConversationId::generate(), ConversationId::generate());
    let _kept_stop = a.open(kept, &message("m1")).await.unwrap();
    let appended = append_each(&a, kept, 1..=20).await;
    let mut local = a.read(kept, ReadFrom::Start).await.unwrap();
    for expected in &appended {
        assert_eq!(&drain_one(&mut local).await, expected);
    }
    // Another generation, followed from B: once its event is in Redis, so
    // would be any batch of `kept` queued before it.
    let _followed_stop = a.open(followed, &message("m1")).await.unwrap();
    let mut follower = b.read(followed, ReadFrom::Start).await.unwrap();
    let shown = append_each(&a, followed, 1..=1).await;
    assert_eq!(drain_one(&mut follower).await, shown[0]);
    let stream = format!("{prefix}log:{{{kept}}}:{}", split_id(&appended[0].0).0);
    assert!(!exists(&stream).await, "no event of it went to Redis");
    // Closed, it is whole in Redis for the retention: a resume anywhere.
    a.close(kept).await.unwrap();
    let mut resumed = b
        .read(kept, ReadFrom::After(appended[9].0.clone()))
        .await
        .unwrap();
    assert_eq!(drain(&mut resumed).await, appended[10..]);
    a.close(followed).await.unwrap();
}

#[tokio::test]
async fn kept_events_that_no_longer_follow_the_stream_are_left_out_at_the_close() {
    let (a, b) = two_instances(options()).await;
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let kept = a.append(conv, event("kept")).await.unwrap();
    // An instance that did not open the log appends to it: Redis numbers
    // it after what the stream holds, so it takes the number A gave.
    let from_b = b.append(conv, event("from b")).await.unwrap();
    assert_eq!(kept, from_b);
    // A's close finds its kept event no longer follows the stream: the log
    // closes after what it holds, whole and without a duplicate id.
    a.close(conv).await.unwrap();
    let mut feed = b.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(drain(&mut feed).await, [(from_b, "from b".to_owned())]);
}

#[tokio::test]
async fn a_reader_on_another_instance_gets_what_was_kept_then_the_rest_live() {
    let prefix = fresh_prefix();
    let (a, b) = (
        instance(&prefix, slow_renewals()).await,
        instance(&prefix, slow_renewals()).await,
    );
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let mut appended = append_each(&a, conv, 1..=3).await;
    // Its locate publishes the want, which A hears at once.
    let mut feed = b.read(conv, ReadFrom::Start).await.unwrap();
    for expected in &appended {
        assert_eq!(&drain_one(&mut feed).await, expected);
    }
    for i in 4..=6 {
        appended.extend(append_each(&a, conv, i..=i).await);
        assert_eq!(drain_one(&mut feed).await, appended[i - 1]);
    }
    a.close(conv).await.unwrap();
    assert_eq!(timeout(PATIENCE, feed.next()).await.unwrap().unwrap(), None);
}

#[tokio::test]
async fn a_want_whose_message_was_missed_is_seen_at_the_next_renewal() {
    let prefix = fresh_prefix();
    let (a, b) = two_instances_on(&prefix).await;
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let appended = append_each(&a, conv, 1..=3).await;
    // The flag set as a locate sets it, but never published: B's locate
    // finds it set and publishes nothing either.
    let mut raw = raw_connection().await;
    redis::cmd("HSET")
        .arg(format!("{prefix}log:{{{conv}}}:meta"))
        .arg("want")
        .arg("1")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let mut feed = b.read(conv, ReadFrom::Start).await.unwrap();
    for expected in &appended {
        assert_eq!(&drain_one(&mut feed).await, expected);
    }
    a.close(conv).await.unwrap();
}

/// Two instances on `prefix` with the tests' options (renewals every 20 ms).
async fn two_instances_on(prefix: &str) -> (RedisStreamLog, RedisStreamLog) {
    (
        instance(prefix, options()).await,
        instance(prefix, options()).await,
    )
}

#[tokio::test]
async fn events_appended_on_one_instance_are_read_live_on_another() {
    let (a, b) = two_instances(options()).await;
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    assert_eq!(b.current(conv).await.unwrap(), head("m1", true));
    assert!(matches!(
        b.open(conv, &message("m2")).await,
        Err(DomainError::Duplicate { .. })
    ));
    let mut feed = b.read(conv, ReadFrom::Start).await.unwrap();
    assert!(timeout(BRIEF, feed.next()).await.is_err(), "nothing yet");
    let mut appended = Vec::new();
    for i in 1..=5 {
        appended.extend(append_each(&a, conv, i..=i).await);
        let live = timeout(PATIENCE, feed.next()).await.unwrap().unwrap();
        assert_eq!(
            live.map(|e| (e.id, e.event.data)),
            Some(appended[i - 1].clone())
        );
    }
    // An instance that did not open the log appends to it too.
    let from_b = b.append(conv, event("from b")).await.unwrap();
    assert_eq!(drain_one(&mut feed).await, (from_b, "from b".to_owned()));
    a.close(conv).await.unwrap();
    assert_eq!(timeout(PATIENCE, feed.next()).await.unwrap().unwrap(), None);
    assert_eq!(b.current(conv).await.unwrap(), head("m1", false));
}

#[tokio::test]
async fn a_reader_resumes_on_another_instance_without_gap_or_duplicate() {
    let (a, b) = two_instances(options()).await;
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let mut appended = append_each(&a, conv, 1..=5).await;
    // A reader on A sees three events, then its client goes away.
    let mut first = a.read(conv, ReadFrom::Start).await.unwrap();
    let mut last_seen = String::new();
    for expected in &appended[..3] {
        let e = first.next().await.unwrap().unwrap();
        assert_eq!(&(e.id.clone(), e.event.data), expected);
        last_seen = e.id;
    }
    drop(first);
    // It comes back on B.
    let mut resumed = b.read(conv, ReadFrom::After(last_seen)).await.unwrap();
    let reader = tokio::spawn(async move { drain(&mut resumed).await });
    for i in 6..=8 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        appended.extend(append_each(&a, conv, i..=i).await);
    }
    a.close(conv).await.unwrap();
    assert_eq!(reader.await.unwrap(), appended[3..]);
}

/// The instance running a generation shows its events before Redis has
/// them, so a client may resume on another instance after an id Redis
/// does not hold yet: the reader waits for what follows it. An id the
/// generation never reaches ends that reader with an error at the close;
/// one beyond the most events a log holds, or below what Redis holds, is
/// refused at once.
#[tokio::test]
async fn a_resume_ahead_of_redis_waits_for_what_follows() {
    let (a, b) = two_instances(options()).await;
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let appended = append_each(&a, conv, 1..=2).await;
    let (generation, _) = split_id(&appended[1].0);
    // Redis holds both once B can read them.
    let mut all = b.read(conv, ReadFrom::Start).await.unwrap();
    for expected in &appended {
        let e = timeout(PATIENCE, all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&(e.id, e.event.data), expected);
    }
    let ahead = format!("{generation}-0-3");
    let mut waiting = b.read(conv, ReadFrom::After(ahead)).await.unwrap();
    let mut never = b
        .read(conv, ReadFrom::After(format!("{generation}-0-9")))
        .await
        .unwrap();
    for bad in [
        format!("{generation}-0-1001"),
        format!("{generation}-0-0"),
        format!("{generation}-1-3"),
    ] {
        assert!(
            is_invalid_id(&b.read(conv, ReadFrom::After(bad.clone())).await),
            "{bad:?}"
        );
    }
    let later = append_each(&a, conv, 3..=4).await;
    let next = timeout(PATIENCE, waiting.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((next.id, next.event.data), later[1]);
    a.close(conv).await.unwrap();
    assert_eq!(
        timeout(PATIENCE, waiting.next()).await.unwrap().unwrap(),
        None
    );
    assert!(is_invalid_id(
        &timeout(PATIENCE, never.next()).await.unwrap().map(|_| ())
    ));
    // Closed: nothing is ahead any more.
    assert!(is_invalid_id(
        &b.read(conv, ReadFrom::After(format!("{generation}-0-5")))
            .await
    ));
}

#[tokio::test]
async fn a_stop_requested_on_another_instance_reaches_the_generation() {
    let (a, b) = two_instances(options()).await;
    let conv = ConversationId::generate();
    let mut stop = a.open(conv, &message("m1")).await.unwrap();
    let waiting = tokio::spawn(async move { stop.stopped().await });
    tokio::time::sleep(BRIEF).await;
    assert!(!waiting.is_finished(), "no stop asked yet");
    assert!(b.request_stop(conv).await.unwrap());
    timeout(PATIENCE, waiting)
        .await
        .expect("the stop reached instance A")
        .unwrap();
    a.close(conv).await.unwrap();
    assert!(!b.request_stop(conv).await.unwrap(), "closed");
}

#[tokio::test]
async fn a_stop_is_delivered_by_pub_sub_without_waiting_for_a_renewal() {
    // Renewals (which also read the stop flag) every 20 s: only the
    // published stop can arrive within the patience.
    let slow = RedisStreamLogOptions {
        lease: Duration::from_secs(60),
        poll_interval: Duration::from_secs(60),
        ..options()
    };
    let (a, b) = two_instances(slow).await;
    let conv = ConversationId::generate();
    let mut stop = a.open(conv, &message("m1")).await.unwrap();
    assert!(b.request_stop(conv).await.unwrap());
    timeout(PATIENCE, stop.stopped())
        .await
        .expect("the published stop reached instance A");
}

#[tokio::test]
async fn a_stop_whose_message_was_missed_is_seen_at_the_next_renewal() {
    let prefix = fresh_prefix();
    let a = instance(&prefix, options()).await;
    let conv = ConversationId::generate();
    let mut stop = a.open(conv, &message("m1")).await.unwrap();
    // The flag set as a stop request sets it, but no message published
    // (as when the listener was reconnecting).
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}log:{{{conv}}}:meta"))
        .arg("stop")
        .arg("1")
        .query_async(&mut raw_connection().await)
        .await
        .unwrap();
    timeout(PATIENCE, stop.stopped())
        .await
        .expect("the renewal saw the stop flag");
}

#[tokio::test]
async fn a_stop_for_one_generation_never_reaches_the_next() {
    let (a, b) = two_instances(options()).await;
    let conv = ConversationId::generate();
    let _first = a.open(conv, &message("m1")).await.unwrap();
    // Asked of the first generation, which ends at once.
    assert!(b.request_stop(conv).await.unwrap());
    a.close(conv).await.unwrap();
    let mut second = b.open(conv, &message("m2")).await.unwrap();
    assert!(
        timeout(Duration::from_millis(200), second.stopped())
            .await
            .is_err(),
        "the first generation's stop stays with it"
    );
    assert!(a.request_stop(conv).await.unwrap());
    timeout(PATIENCE, second.stopped())
        .await
        .expect("the stop reached the second generation");
}

// The lease.

#[tokio::test]
async fn a_generation_this_instance_lost_is_no_longer_read_from_its_copy() {
    let prefix = fresh_prefix();
    let a = instance(&prefix, options()).await;
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let _ = append_each(&a, conv, 1..=2).await;
    // The generation's keys vanish (as when its lease ran out while this
    // instance could not reach Redis): at its next renewal, the instance
    // stops serving its copy, and readers see what Redis holds: nothing.
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}log:{{{conv}}}:meta"))
        .query_async(&mut raw_connection().await)
        .await
        .unwrap();
    eventually("readers go to Redis", async || {
        matches!(
            a.read(conv, ReadFrom::Start).await.map(drop),
            Err(DomainError::NotFound)
        )
    })
    .await;
}

/// Lease and retention TTLs (ms) of `conv`'s meta hash and of its stream
/// `generation`, on `prefix`.
async fn ttls(prefix: &str, conv: ConversationId, generation: u64) -> [i64; 2] {
    let mut raw = raw_connection().await;
    let mut ttls = [0; 2];
    for (ttl, key) in ttls
        .iter_mut()
        .zip(["meta".to_owned(), generation.to_string()])
    {
        *ttl = redis::cmd("PTTL")
            .arg(format!("{prefix}log:{{{conv}}}:{key}"))
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    ttls
}

#[tokio::test]
async fn the_lease_is_renewed_from_open_to_close_without_awaiting_the_signal() {
    let prefix = fresh_prefix();
    let (a, b) = (
        instance(&prefix, short_lease()).await,
        instance(&prefix, short_lease()).await,
    );
    let conv = ConversationId::generate();
    // As the app does between events (saves, the title): nobody awaits the
    // signal, for four leases.
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let first = a.append(conv, event("e1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(b.current(conv).await.unwrap(), head("m1", true));
    let second = a.append(conv, event("e2")).await.unwrap();
    assert!(matches!(
        b.open(conv, &message("m2")).await,
        Err(DomainError::Duplicate { .. })
    ));
    let mut feed = b.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(drain_one(&mut feed).await, (first, "e1".to_owned()));
    assert_eq!(
        drain_one(&mut feed).await,
        (second.clone(), "e2".to_owned())
    );
    for ttl in ttls(&prefix, conv, split_id(&second).0).await {
        assert!(ttl > 0 && ttl <= 300, "{ttl}");
    }
    // Closed, the log ends and is kept for the retention, as ever.
    a.close(conv).await.unwrap();
    assert_eq!(timeout(PATIENCE, feed.next()).await.unwrap().unwrap(), None);
    assert_eq!(b.current(conv).await.unwrap(), head("m1", false));
    for ttl in ttls(&prefix, conv, split_id(&second).0).await {
        assert!(ttl > 59_000 && ttl <= 60_000, "{ttl}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(b.current(conv).await.unwrap(), head("m1", false));
}

#[tokio::test]
async fn a_closed_generation_stops_renewing() {
    let prefix = fresh_prefix();
    let log = instance(
        &prefix,
        RedisStreamLogOptions {
            retention: Duration::from_millis(200),
            ..short_lease()
        },
    )
    .await;
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    log.append(conv, event("e1")).await.unwrap();
    log.close(conv).await.unwrap();
    // A renewal still running would renew a hash that says its generation
    // is open (and its stream) for good: make it say so.
    let _: i64 = redis::cmd("HSET")
        .arg(format!("{prefix}log:{{{conv}}}:meta"))
        .arg("open")
        .arg("1")
        .query_async(&mut raw_connection().await)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(
        log.current(conv).await,
        Err(DomainError::NotFound)
    ));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut raw_connection().await)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn the_lease_of_a_dead_instance_runs_out() {
    let prefix = fresh_prefix();
    let (a, b) = (
        instance(&prefix, short_lease()).await,
        instance(&prefix, short_lease()).await,
    );
    let conv = ConversationId::generate();
    let stop = a.open(conv, &message("m1")).await.unwrap();
    a.append(conv, event("e1")).await.unwrap();
    let mut follower = b.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(follower.next().await.unwrap().unwrap().event.data, "e1");
    // Alive, A holds its generation past its lease.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        b.open(conv, &message("m2")).await,
        Err(DomainError::Duplicate { .. })
    ));
    // A dies without closing: everything it held goes, its renewal with it.
    drop((stop, a));
    let died = Instant::now();
    eventually("the lease runs out", async || {
        matches!(b.current(conv).await, Err(DomainError::NotFound))
    })
    .await;
    assert!(
        died.elapsed() >= Duration::from_millis(200),
        "{:?}",
        died.elapsed()
    );
    // The reader that followed it is told, within a block (1 s).
    assert!(matches!(
        timeout(PATIENCE, follower.next()).await.unwrap(),
        Err(DomainError::NotFound)
    ));
    // B takes over, and holds it for as long as it runs it.
    let _stop = b.open(conv, &message("m2")).await.unwrap();
    let id = b.append(conv, event("e1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A, restarted, sees B's generation.
    let a = instance(&prefix, short_lease()).await;
    assert_eq!(a.current(conv).await.unwrap(), head("m2", true));
    let mut feed = a.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(feed.next().await.unwrap().unwrap().id, id);
}

#[tokio::test]
async fn a_live_instance_that_lost_its_lease_leaves_the_next_generation_alone() {
    let prefix = fresh_prefix();
    let (a, b) = (
        instance(&prefix, short_lease()).await,
        instance(&prefix, short_lease()).await,
    );
    let conv = ConversationId::generate();
    let mut stop = a.open(conv, &message("m1")).await.unwrap();
    let id = a.append(conv, event("e1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // As if A had been cut off from Redis for longer than a lease: its
    // generation's keys expired.
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}log:{{{conv}}}:meta"))
        .arg(format!("{prefix}log:{{{conv}}}:{}", split_id(&id).0))
        .query_async(&mut raw_connection().await)
        .await
        .unwrap();
    assert!(matches!(b.current(conv).await, Err(DomainError::NotFound)));
    let _stop = b.open(conv, &message("m2")).await.unwrap();
    // What A still does for its generation never reaches B's. A shows
    // its events before Redis has them, so the refusal comes back with a
    // later append (the one after the refused batch, at the latest).
    a.append(conv, event("late")).await.ok();
    eventually("A hears that its generation is gone", async || {
        matches!(
            a.append(conv, event("later")).await,
            Err(DomainError::NotFound)
        )
    })
    .await;
    assert!(b.request_stop(conv).await.unwrap());
    assert!(
        timeout(Duration::from_millis(200), stop.stopped())
            .await
            .is_err(),
        "B's stop is not A's"
    );
    a.close(conv).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.current(conv).await.unwrap(), head("m2", true));
    let id = b.append(conv, event("e1")).await.unwrap();
    let mut feed = a.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(feed.next().await.unwrap().unwrap().id, id);
}

#[tokio::test]
async fn a_signal_awaited_in_a_select_sees_its_stop() {
    let (a, b) = two_instances(short_lease()).await;
    let conv = ConversationId::generate();
    let mut stop = a.open(conv, &message("m1")).await.unwrap();
    // As the app does: the signal in a `select!` that another branch wins
    // every few ms, for several leases.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::select! {
            () = stop.stopped() => panic!("no stop was asked"),
            () = tokio::time::sleep(Duration::from_millis(3)) => {}
        }
    }
    assert_eq!(b.current(conv).await.unwrap(), head("m1", true));
    let id = a.append(conv, event("e1")).await.unwrap();
    let mut feed = b.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(feed.next().await.unwrap().unwrap().id, id);
    // Polls dropped mid-flight carry on: a stop still gets through.
    assert!(b.request_stop(conv).await.unwrap());
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "the stop never came");
        tokio::select! {
            () = stop.stopped() => break,
            () = tokio::time::sleep(Duration::from_millis(3)) => {}
        }
    }
}

#[tokio::test]
async fn the_keys_carry_the_lease_then_the_retention() {
    let prefix = fresh_prefix();
    let log = instance(&prefix, options()).await;
    let conv = ConversationId::generate();
    let meta = format!("{prefix}log:{{{conv}}}:meta");
    let mut raw = raw_connection().await;
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    let id = log.append(conv, event("e1")).await.unwrap();
    let stream = format!("{prefix}log:{{{conv}}}:{}", split_id(&id).0);
    let mut pttl = async |key: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap()
    };
    // Its events wait on this instance until a reader elsewhere wants them.
    let ttl = pttl(meta.as_str()).await;
    assert!(ttl > 4_000 && ttl <= 5_000, "{meta}: {ttl}");
    let other = instance(&prefix, options()).await;
    let mut feed = other.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(drain_one(&mut feed).await, (id, "e1".to_owned()));
    for key in [&meta, &stream] {
        let ttl = pttl(key.as_str()).await;
        assert!(ttl > 4_000 && ttl <= 5_000, "{key}: {ttl}");
    }
    log.close(conv).await.unwrap();
    for key in [&meta, &stream] {
        let ttl = pttl(key.as_str()).await;
        assert!(ttl > 59_000 && ttl <= 60_000, "{key}: {ttl}");
    }
}

#[tokio::test]
async fn an_id_from_an_older_generation_is_invalid() {
    let (a, b) = two_instances(RedisStreamLogOptions {
        retention: Duration::from_millis(100),
        ..options()
    })
    .await;
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let first = a.append(conv, event("e1")).await.unwrap();
    a.close(conv).await.unwrap();
    // Replaced within the retention.
    let _stop = a.open(conv, &message("m2")).await.unwrap();
    let second = a.append(conv, event("e1")).await.unwrap();
    assert!(split_id(&second).0 > split_id(&first).0);
    assert!(is_invalid_id(
        &b.read(conv, ReadFrom::After(first.clone())).await
    ));
    assert!(b.read(conv, ReadFrom::After(second.clone())).await.is_ok());
    // Replaced after the older logs expired: generations still never
    // come back.
    a.close(conv).await.unwrap();
    eventually("the logs expire", async || {
        matches!(b.current(conv).await, Err(DomainError::NotFound))
    })
    .await;
    let _stop = b.open(conv, &message("m3")).await.unwrap();
    let third = b.append(conv, event("e1")).await.unwrap();
    assert!(split_id(&third).0 > split_id(&second).0);
    for old in [first, second] {
        assert!(is_invalid_id(&a.read(conv, ReadFrom::After(old)).await));
    }
}

/// The meta hash's `tail` field of `conv`'s log, if any.
async fn tail(prefix: &str, conv: ConversationId) -> Option<String> {
    let mut raw = raw_connection().await;
    redis::cmd("HGET")
        .arg(format!("{prefix}log:{{{conv}}}:meta"))
        .arg("tail")
        .query_async(&mut raw)
        .await
        .unwrap()
}

/// Reads `conv`'s log from its start on `reader` until `n` events came.
async fn first_events(
    reader: &RedisStreamLog,
    conv: ConversationId,
    n: usize,
) -> Vec<(String, String)> {
    let mut feed = reader.read(conv, ReadFrom::Start).await.unwrap();
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(drain_one(&mut feed).await);
    }
    seen
}

/// The appends keep the number of a generation's last event in its meta
/// hash (`tail`, with the generation), and take it from there rather than
/// from the stream; a generation whose hash lacks it (as one an instance
/// with older scripts appended to would) is appended to after its
/// stream's last entry, as before.
#[tokio::test]
async fn the_last_number_is_kept_beside_the_log_and_read_from_the_stream_without_it() {
    let prefix = fresh_prefix();
    let (a, b) = (
        instance(&prefix, options()).await,
        instance(&prefix, options()).await,
    );
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let mut appended = append_each(&a, conv, 1..=3).await;
    // On B, from Redis: the three have landed.
    assert_eq!(first_events(&b, conv, 3).await, appended);
    let generation = split_id(&appended[0].0).0;
    assert_eq!(tail(&prefix, conv).await, Some(format!("{generation}:3")));
    let mut raw = raw_connection().await;
    let _: i64 = redis::cmd("HDEL")
        .arg(format!("{prefix}log:{{{conv}}}:meta"))
        .arg("tail")
        .query_async(&mut raw)
        .await
        .unwrap();
    appended.extend(append_each(&a, conv, 4..=5).await);
    a.close(conv).await.unwrap();
    let mut feed = b.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(drain(&mut feed).await, appended);
    let numbers: Vec<&str> = appended.iter().map(|(id, _)| split_id(id).1).collect();
    assert_eq!(numbers, ["0-1", "0-2", "0-3", "0-4", "0-5"]);
}

/// A `tail` left in the meta hash by an earlier generation is not taken
/// for the next one's: its events are numbered from 1 and land.
#[tokio::test]
async fn the_last_number_of_an_earlier_generation_is_not_the_next_ones() {
    let prefix = fresh_prefix();
    let (a, b) = (
        instance(&prefix, options()).await,
        instance(&prefix, options()).await,
    );
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let first = append_each(&a, conv, 1..=5).await;
    assert_eq!(first_events(&b, conv, 5).await, first);
    a.close(conv).await.unwrap();
    let _stop = a.open(conv, &message("m2")).await.unwrap();
    let second = append_each(&a, conv, 1..=2).await;
    assert!(split_id(&second[0].0).0 > split_id(&first[0].0).0);
    a.close(conv).await.unwrap();
    let mut feed = b.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(drain(&mut feed).await, second);
    let numbers: Vec<&str> = second.iter().map(|(id, _)| split_id(id).1).collect();
    assert_eq!(numbers, ["0-1", "0-2"]);
}

// Followers on another instance.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_followers_on_another_instance_all_see_every_event() {
    let prefix = fresh_prefix();
    // Renewals too rare to matter: each generation's events reach B live,
    // while it runs, only because B's locate asked for them by pub/sub.
    let (a, b) = (
        instance(&prefix, slow_renewals()).await,
        instance(&prefix, slow_renewals()).await,
    );
    let conversations: Vec<_> = (0..300).map(|_| ConversationId::generate()).collect();
    for conv in &conversations {
        let _stop = a.open(*conv, &message("m1")).await.unwrap();
    }
    // Each follows on B, which runs none of them: every one waits on
    // Redis, with no connection of its own.
    let mut readers = Vec::new();
    for conv in &conversations {
        let mut feed = b.read(*conv, ReadFrom::Start).await.unwrap();
        readers.push(tokio::spawn(async move {
            let mut live = Vec::new();
            for _ in 0..3 {
                live.push(drain_one(&mut feed).await);
            }
            (live, feed)
        }));
    }
    let mut appended = Vec::new();
    for conv in &conversations {
        appended.push(append_each(&a, *conv, 1..=3).await);
    }
    // Every reader has its three events before any generation closes.
    let mut feeds = Vec::new();
    for (reader, expected) in readers.into_iter().zip(appended) {
        let (live, feed) = timeout(PATIENCE, reader).await.unwrap().unwrap();
        assert_eq!(live, expected);
        feeds.push(feed);
    }
    for conv in &conversations {
        a.close(*conv).await.unwrap();
    }
    for mut feed in feeds {
        assert_eq!(timeout(PATIENCE, feed.next()).await.unwrap().unwrap(), None);
    }
}

#[tokio::test]
async fn a_follower_on_another_instance_wakes_for_each_event() {
    let prefix = fresh_prefix();
    let (a, b) = (
        instance(&prefix, options()).await,
        instance(&prefix, options()).await,
    );
    let conv = ConversationId::generate();
    let _stop = a.open(conv, &message("m1")).await.unwrap();
    let mut follower = b.read(conv, ReadFrom::Start).await.unwrap();
    assert!(timeout(BRIEF, follower.next()).await.is_err(), "following");
    for i in 1..=3 {
        let appended = append_each(&a, conv, i..=i).await;
        assert_eq!(drain_one(&mut follower).await, appended[0]);
    }
    // Dropped while it waits, it leaves the hub; another one follows.
    drop(follower);
    let mut next = b.read(conv, ReadFrom::Start).await.unwrap();
    let mut seen = 0;
    while seen < 3 {
        timeout(PATIENCE, next.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen += 1;
    }
    let appended = append_each(&a, conv, 4..=4).await;
    assert_eq!(drain_one(&mut next).await, appended[0]);
}

// A Redis that is down.

#[tokio::test]
async fn a_redis_that_is_down_is_unavailable() {
    let down = "redis://127.0.0.1:1";
    let log = RedisStreamLog::new(support::unchecked_pool(down), options());
    let conv = ConversationId::generate();
    // Each call is bounded by PATIENCE only so that a hang fails the test.
    let unavailable = |what: &str, r: Result<(), DomainError>| {
        assert!(
            matches!(r, Err(DomainError::Unavailable(_))),
            "{what}: {r:?}"
        );
    };
    let open = timeout(PATIENCE, log.open(conv, &message("m1")))
        .await
        .unwrap();
    unavailable("open", open.map(drop));
    let append = timeout(PATIENCE, log.append(conv, event("e1")))
        .await
        .unwrap();
    unavailable("append", append.map(drop));
    unavailable("close", timeout(PATIENCE, log.close(conv)).await.unwrap());
    let current = timeout(PATIENCE, log.current(conv)).await.unwrap();
    unavailable("current", current.map(drop));
    for from in [ReadFrom::Start, ReadFrom::After("1-2-3".into())] {
        let read = timeout(PATIENCE, log.read(conv, from)).await.unwrap();
        unavailable("read", read.map(drop));
    }
    let stop = timeout(PATIENCE, log.request_stop(conv)).await.unwrap();
    unavailable("request_stop", stop.map(drop));
}
