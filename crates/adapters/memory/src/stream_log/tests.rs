use std::time::Duration;

use tokio::time::timeout;

use super::*;
use confab_domain::EventName;

const BRIEF: Duration = Duration::from_millis(50);

fn options() -> StreamLogOptions {
    StreamLogOptions {
        retention: Duration::from_secs(60),
        max_events_per_log: 1000,
        max_logs: 100,
    }
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

/// Reads until the end, failing the test if the feed stalls.
async fn drain(feed: &mut Box<dyn EventFeed>) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Some(e) = timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("the feed stalled")
        .unwrap()
    {
        seen.push((e.id, e.event.data));
    }
    seen
}

fn expected(range: std::ops::RangeInclusive<usize>) -> Vec<(String, String)> {
    range.map(|i| (i.to_string(), format!("e{i}"))).collect()
}

#[tokio::test]
async fn events_come_in_order_with_sequence_ids() {
    let log = MemoryStreamLog::new(options());
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    for i in 1..=3 {
        let id = log.append(conv, event(&format!("e{i}"))).await.unwrap();
        assert_eq!(id, i.to_string());
    }
    log.close(conv).await.unwrap();
    let mut feed = log.read(conv, ReadFrom::Start).await.unwrap();
    let first = feed.next().await.unwrap().unwrap();
    assert_eq!(first.event.name, Some(EventName::Delta));
    assert_eq!(drain(&mut feed).await, expected(2..=3));
    assert_eq!(feed.next().await.unwrap(), None, "the end stays the end");
    assert_eq!(log.current(conv).await.unwrap(), head("m1", false));
}

#[tokio::test]
async fn a_resumed_reader_gets_exactly_the_rest_then_live_events() {
    let log = Arc::new(MemoryStreamLog::new(options()));
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    for i in 1..=5 {
        log.append(conv, event(&format!("e{i}"))).await.unwrap();
    }
    let mut feed = log.read(conv, ReadFrom::After("3".into())).await.unwrap();
    let reader = tokio::spawn(async move { drain(&mut feed).await });
    for i in 6..=8 {
        tokio::task::yield_now().await;
        log.append(conv, event(&format!("e{i}"))).await.unwrap();
    }
    log.close(conv).await.unwrap();
    assert_eq!(reader.await.unwrap(), expected(4..=8));
    let mut at_end = log.read(conv, ReadFrom::After("8".into())).await.unwrap();
    assert_eq!(drain(&mut at_end).await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_readers_each_see_everything() {
    let log = Arc::new(MemoryStreamLog::new(options()));
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut feed = log.read(conv, ReadFrom::Start).await.unwrap();
                drain(&mut feed).await
            })
        })
        .collect();
    for i in 1..=500 {
        log.append(conv, event(&format!("e{i}"))).await.unwrap();
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    log.close(conv).await.unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected(1..=500));
    }
}

#[tokio::test]
async fn close_ends_waiting_readers() {
    let log = Arc::new(MemoryStreamLog::new(options()));
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    let mut feed = log.read(conv, ReadFrom::Start).await.unwrap();
    assert!(
        timeout(BRIEF, feed.next()).await.is_err(),
        "waits while the log is open and empty"
    );
    let closer = Arc::clone(&log);
    tokio::spawn(async move { closer.close(conv).await.unwrap() });
    assert_eq!(
        timeout(Duration::from_secs(5), feed.next())
            .await
            .unwrap()
            .unwrap(),
        None
    );
    assert!(matches!(
        log.append(conv, event("late")).await,
        Err(DomainError::NotFound)
    ));
}

#[tokio::test]
async fn closed_logs_expire_after_the_retention() {
    let log = MemoryStreamLog::new(StreamLogOptions {
        retention: BRIEF,
        ..options()
    });
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    log.append(conv, event("e1")).await.unwrap();
    log.close(conv).await.unwrap();
    assert!(log.read(conv, ReadFrom::Start).await.is_ok());
    tokio::time::sleep(BRIEF * 2).await;
    assert!(matches!(
        log.read(conv, ReadFrom::Start).await,
        Err(DomainError::NotFound)
    ));
    assert!(matches!(
        log.current(conv).await,
        Err(DomainError::NotFound)
    ));
    assert!(log.is_empty());
}

#[tokio::test]
async fn open_logs_never_expire() {
    let log = MemoryStreamLog::new(StreamLogOptions {
        retention: Duration::ZERO,
        ..options()
    });
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    assert_eq!(log.current(conv).await.unwrap(), head("m1", true));
}

#[tokio::test]
async fn opening_an_open_conversation_is_a_duplicate() {
    let log = MemoryStreamLog::new(options());
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    assert!(matches!(
        log.open(conv, &message("m2")).await,
        Err(DomainError::Duplicate { field }) if field == confab_domain::Field::ConversationId
    ));
    log.close(conv).await.unwrap();
    let _stop = log.open(conv, &message("m2")).await.unwrap();
    assert_eq!(log.current(conv).await.unwrap(), head("m2", true));
}

#[tokio::test]
async fn a_full_log_refuses_more() {
    let log = MemoryStreamLog::new(StreamLogOptions {
        max_events_per_log: 2,
        ..options()
    });
    let conv = ConversationId::generate();
    assert!(matches!(
        log.append(conv, event("e1")).await,
        Err(DomainError::NotFound)
    ));
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    log.append(conv, event("e1")).await.unwrap();
    log.append(conv, event("e2")).await.unwrap();
    assert!(matches!(
        log.append(conv, event("e3")).await,
        Err(DomainError::Unavailable(_))
    ));
}

#[tokio::test]
async fn the_log_count_is_bounded_and_open_logs_are_kept() {
    let log = MemoryStreamLog::new(StreamLogOptions {
        max_logs: 2,
        ..options()
    });
    let (a, b, c) = (
        ConversationId::generate(),
        ConversationId::generate(),
        ConversationId::generate(),
    );
    let _a = log.open(a, &message("m1")).await.unwrap();
    let _b = log.open(b, &message("m1")).await.unwrap();
    assert!(matches!(
        log.open(c, &message("m1")).await,
        Err(DomainError::Unavailable(_))
    ));
    log.close(a).await.unwrap();
    let _c = log.open(c, &message("m1")).await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(matches!(log.current(a).await, Err(DomainError::NotFound)));
    assert!(log.current(b).await.unwrap().open);
}

#[tokio::test]
async fn ids_this_log_never_gave_are_refused() {
    let log = MemoryStreamLog::new(options());
    let conv = ConversationId::generate();
    assert!(matches!(
        log.read(conv, ReadFrom::Start).await,
        Err(DomainError::NotFound)
    ));
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    log.append(conv, event("e1")).await.unwrap();
    log.append(conv, event("e2")).await.unwrap();
    for bad in ["3", "0", "-1", "abc", "", "+1", "01", "1.0"] {
        assert!(
            matches!(
                log.read(conv, ReadFrom::After(bad.into())).await,
                Err(DomainError::Invalid { field, .. }) if field == confab_domain::Field::LastEventId
            ),
            "{bad:?}"
        );
    }
    assert!(log.read(conv, ReadFrom::After("2".into())).await.is_ok());
}

#[tokio::test]
async fn a_stop_reaches_only_its_own_log() {
    let log = MemoryStreamLog::new(options());
    let conv = ConversationId::generate();
    assert!(!log.request_stop(conv).await.unwrap(), "nothing open");
    let mut first = log.open(conv, &message("m1")).await.unwrap();
    log.close(conv).await.unwrap();
    assert!(!log.request_stop(conv).await.unwrap(), "closed");
    let mut second = log.open(conv, &message("m2")).await.unwrap();
    assert!(
        timeout(BRIEF, second.stopped()).await.is_err(),
        "no stop asked yet"
    );
    // Asked before anyone awaits: the signal still fires.
    assert!(log.request_stop(conv).await.unwrap());
    timeout(Duration::from_secs(5), second.stopped())
        .await
        .expect("the stop reached the open log");
    assert!(
        timeout(BRIEF, first.stopped()).await.is_err(),
        "an earlier generation's signal stays quiet"
    );
}

#[tokio::test]
async fn a_reader_of_a_replaced_log_finishes_with_its_events() {
    let log = MemoryStreamLog::new(options());
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    log.append(conv, event("e1")).await.unwrap();
    log.append(conv, event("e2")).await.unwrap();
    let mut old = log.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(old.next().await.unwrap().unwrap().id, "1");
    log.close(conv).await.unwrap();
    let _stop = log.open(conv, &message("m2")).await.unwrap();
    log.append(conv, event("new")).await.unwrap();
    assert_eq!(drain(&mut old).await, expected(2..=2));
    let mut new = log.read(conv, ReadFrom::Start).await.unwrap();
    assert_eq!(
        new.next().await.unwrap().map(|e| e.event.data),
        Some("new".to_owned())
    );
}

#[tokio::test]
async fn a_reader_of_a_dropped_store_is_told_it_is_unavailable() {
    let log = MemoryStreamLog::new(options());
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    log.append(conv, event("e1")).await.unwrap();
    let mut feed = log.read(conv, ReadFrom::Start).await.unwrap();
    drop(log);
    assert_eq!(feed.next().await.unwrap().unwrap().id, "1");
    assert!(matches!(
        feed.next().await,
        Err(DomainError::Unavailable(_))
    ));
}

#[tokio::test]
async fn many_closes_keep_the_close_queue_bounded() {
    let log = MemoryStreamLog::new(options());
    let conv = ConversationId::generate();
    for _ in 0..1000 {
        let _stop = log.open(conv, &message("m1")).await.unwrap();
        log.close(conv).await.unwrap();
    }
    let logs = log.lock();
    assert!(logs.closed.len() <= 2 * logs.by_conversation.len() + 17);
}
