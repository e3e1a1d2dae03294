//! What only the in-process log does: its bounds, dropping expired logs,
//! and readers outliving the store. What every stream log promises is the
//! contract suite's (`tests/contract.rs`).

use std::time::Duration;

use super::*;
use confab_domain::EventName;

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

fn message(id: &str) -> MessageId {
    MessageId::parse(id).unwrap()
}

#[tokio::test]
async fn an_expired_log_is_dropped() {
    let retention = Duration::from_millis(20);
    let log = MemoryStreamLog::new(StreamLogOptions {
        retention,
        ..options()
    });
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.unwrap();
    log.close(conv).await.unwrap();
    assert_eq!(log.len(), 1, "kept for the retention");
    tokio::time::sleep(retention * 2).await;
    assert!(matches!(
        log.current(conv).await,
        Err(DomainError::NotFound)
    ));
    assert!(log.is_empty());
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
