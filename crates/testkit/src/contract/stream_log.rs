//! What every [`StreamLog`] promises: one log per conversation, the latest
//! generation's; its events come to every reader in order under the ids
//! `append` gave, from the start or after an id, live while it is open,
//! then the end; closed logs are kept for the retention; a stop reaches
//! the generation it was asked of and no other.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use confab_domain::{ConversationId, DomainError, EventName, Field, MessageId, WireEvent};
use confab_ports::{EventFeed, LogHead, ReadFrom, StreamLog};
use tokio::time::timeout;

use super::{PATIENCE, eventually};

/// The adapter under test, shared with the tasks a test spawns.
pub type Adapter = Arc<dyn StreamLog>;

/// The limits an adapter under test is made with: the factory given to
/// [`stream_log_contract!`](crate::stream_log_contract) must honour them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a closed log is kept.
    pub retention: Duration,
    /// The most events one log holds.
    pub max_events_per_log: usize,
}

impl Limits {
    /// Limits no test reaches unless it means to: a minute's retention, a
    /// thousand events a log.
    pub const STANDARD: Self = Self {
        retention: Duration::from_secs(60),
        max_events_per_log: 1000,
    };
}

/// How long a wait must last for the test to take it as "still waiting".
const BRIEF: Duration = Duration::from_millis(50);

fn event(data: &str) -> WireEvent {
    WireEvent {
        name: Some(EventName::Delta),
        data: data.to_owned(),
    }
}

fn message(id: &str) -> MessageId {
    MessageId::parse(id).expect("a valid message id")
}

fn head(id: &str, open: bool) -> LogHead {
    LogHead {
        message: message(id),
        open,
    }
}

/// Appends a delta `e{i}` for each `i` of `range`, one call each, and
/// returns each event's (id, data).
pub async fn append_each(
    log: &dyn StreamLog,
    conv: ConversationId,
    range: std::ops::RangeInclusive<usize>,
) -> Vec<(String, String)> {
    let mut appended = Vec::new();
    for i in range {
        let data = format!("e{i}");
        let id = log.append(conv, event(&data)).await.expect("append");
        appended.push((id, data));
    }
    appended
}

/// Reads until the end and returns each event's (id, data), failing the
/// test if the feed stalls or fails.
pub async fn drain(feed: &mut Box<dyn EventFeed>) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while let Some(e) = timeout(PATIENCE, feed.next())
        .await
        .expect("the feed stalled")
        .expect("the feed failed")
    {
        seen.push((e.id, e.event.data));
    }
    seen
}

async fn read(log: &dyn StreamLog, conv: ConversationId, from: ReadFrom) -> Box<dyn EventFeed> {
    log.read(conv, from).await.expect("read")
}

fn is_invalid_id<T>(result: &Result<T, DomainError>) -> bool {
    matches!(result, Err(DomainError::Invalid { field, .. }) if *field == Field::LastEventId)
}

/// A conversation never opened has no log: `current` and `read` are not
/// found, there is nothing to stop, and closing it does nothing.
pub async fn a_conversation_without_a_log_has_none(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let current = log.current(conv).await;
    assert!(matches!(current, Err(DomainError::NotFound)), "{current:?}");
    let feed = log.read(conv, ReadFrom::Start).await.map(drop);
    assert!(matches!(feed, Err(DomainError::NotFound)), "{feed:?}");
    assert!(!log.request_stop(conv).await.expect("request_stop"));
    log.close(conv).await.expect("close");
}

/// Events come back in order, with their names and data, under the ids
/// `append` returned (all different); the end stays the end; the head says
/// whose generation it was and that it is closed.
pub async fn events_come_in_order_with_the_ids_append_gave(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    assert_eq!(log.current(conv).await.expect("current"), head("m1", true));
    let appended = append_each(log, conv, 1..=3).await;
    let ids: HashSet<_> = appended.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 3, "{appended:?}");
    log.close(conv).await.expect("close");
    let mut feed = read(log, conv, ReadFrom::Start).await;
    let first = feed.next().await.expect("next").expect("an event");
    assert_eq!(first.event.name, Some(EventName::Delta));
    assert_eq!((first.id, first.event.data), appended[0]);
    assert_eq!(drain(&mut feed).await, appended[1..]);
    assert_eq!(
        feed.next().await.expect("next"),
        None,
        "the end stays the end"
    );
    assert_eq!(log.current(conv).await.expect("current"), head("m1", false));
}

/// Each event's name (or none) and data come back exactly as appended.
pub async fn event_names_come_back_as_appended(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let names = [Some(EventName::DeltaEncoding), None, Some(EventName::Delta)];
    for name in names {
        log.append(
            conv,
            WireEvent {
                name,
                data: "{\"a\":\"\\n\"}".to_owned(),
            },
        )
        .await
        .expect("append");
    }
    log.close(conv).await.expect("close");
    let mut feed = read(log, conv, ReadFrom::Start).await;
    let mut seen = Vec::new();
    while let Some(e) = feed.next().await.expect("next") {
        assert_eq!(e.event.data, "{\"a\":\"\\n\"}");
        seen.push(e.event.name);
    }
    assert_eq!(seen, names);
}

/// `append_all` appends its events in order, between what was appended
/// before and after it; an empty batch appends nothing.
pub async fn append_all_appends_in_order(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let first = append_each(log, conv, 1..=1).await;
    log.append_all(conv, vec![event("e2"), event("e3"), event("e4")])
        .await
        .expect("append_all");
    log.append_all(conv, Vec::new())
        .await
        .expect("an empty append_all");
    let last = append_each(log, conv, 5..=5).await;
    log.close(conv).await.expect("close");
    let seen = drain(&mut read(log, conv, ReadFrom::Start).await).await;
    let data: Vec<_> = seen.iter().map(|(_, data)| data.as_str()).collect();
    assert_eq!(data, ["e1", "e2", "e3", "e4", "e5"]);
    assert_eq!(seen[0], first[0]);
    assert_eq!(seen[4], last[0]);
}

/// Appending to a conversation whose log is not open (never opened, or
/// closed) is not found, one event or a batch.
pub async fn appending_needs_an_open_log(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let never = log.append(conv, event("e1")).await;
    assert!(matches!(never, Err(DomainError::NotFound)), "{never:?}");
    let batch = log.append_all(conv, vec![event("e1"), event("e2")]).await;
    assert!(matches!(batch, Err(DomainError::NotFound)), "{batch:?}");
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    log.close(conv).await.expect("close");
    let closed = log.append(conv, event("late")).await;
    assert!(matches!(closed, Err(DomainError::NotFound)), "{closed:?}");
}

/// A reader resuming after an id gets exactly the events after it, then
/// the live ones, then the end; resuming after the last id gets just the
/// end.
pub async fn a_resumed_reader_gets_exactly_the_rest_then_live_events(log: &Adapter) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let mut appended = append_each(&**log, conv, 1..=5).await;
    let mut feed = read(&**log, conv, ReadFrom::After(appended[2].0.clone())).await;
    let reader = tokio::spawn(async move { drain(&mut feed).await });
    for i in 6..=8 {
        tokio::task::yield_now().await;
        appended.extend(append_each(&**log, conv, i..=i).await);
    }
    log.close(conv).await.expect("close");
    assert_eq!(reader.await.expect("the reader ran"), appended[3..]);
    let mut at_end = read(&**log, conv, ReadFrom::After(appended[7].0.clone())).await;
    assert_eq!(drain(&mut at_end).await, vec![]);
}

/// Many readers following one log at once each see every event, in order.
pub async fn many_concurrent_readers_each_see_everything(log: &Adapter) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let log = Arc::clone(log);
            tokio::spawn(async move { drain(&mut read(&*log, conv, ReadFrom::Start).await).await })
        })
        .collect();
    let mut appended = Vec::new();
    for i in 1..=500 {
        appended.extend(append_each(&**log, conv, i..=i).await);
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    log.close(conv).await.expect("close");
    for reader in readers {
        assert_eq!(reader.await.expect("the reader ran"), appended);
    }
}

/// A reader waiting on an open, empty log keeps waiting (a wait dropped
/// mid-way loses nothing) until the close ends it.
pub async fn close_ends_waiting_readers(log: &Adapter) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let mut feed = read(&**log, conv, ReadFrom::Start).await;
    assert!(
        timeout(BRIEF, feed.next()).await.is_err(),
        "waits while the log is open and empty"
    );
    let closer = Arc::clone(log);
    tokio::spawn(async move { closer.close(conv).await.expect("close") });
    assert_eq!(
        timeout(PATIENCE, feed.next())
            .await
            .expect("the close ended the wait")
            .expect("next"),
        None
    );
}

/// `finish` appends a generation's last events and closes its log in one
/// step: a reader has them, then the end, and by the time it has them the
/// log is closed, so the conversation's next generation opens at once
/// (what a client that has `[DONE]` does with its next message).
pub async fn finish_closes_the_log_before_a_reader_has_its_last_events(log: &Adapter) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let appended = append_each(&**log, conv, 1..=2).await;
    let mut feed = read(&**log, conv, ReadFrom::Start).await;
    let opener = Arc::clone(log);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let e = timeout(PATIENCE, feed.next())
                .await
                .expect("the feed stalled")
                .expect("next")
                .expect("the last event before the end");
            let last = e.event.data == "done";
            seen.push((e.id, e.event.data));
            if last {
                let next = opener.open(conv, &message("m2")).await.map(drop);
                return (seen, next);
            }
        }
    });
    tokio::task::yield_now().await;
    log.finish(conv, vec![event("closing"), event("done")])
        .await
        .expect("finish");
    let (seen, next) = reader.await.expect("the reader ran");
    assert!(
        next.is_ok(),
        "the log was still open when its last event was read: {next:?}"
    );
    assert_eq!(seen[..2], appended[..]);
    let data: Vec<&str> = seen[2..].iter().map(|(_, data)| data.as_str()).collect();
    assert_eq!(data, ["closing", "done"]);
    let ids: HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), seen.len(), "ids are distinct: {seen:?}");
    assert_eq!(log.current(conv).await.expect("current"), head("m2", true));
}

/// Closing a closed log does nothing: it stays closed, with its events.
pub async fn close_is_idempotent(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let appended = append_each(log, conv, 1..=2).await;
    log.close(conv).await.expect("close");
    log.close(conv).await.expect("a second close");
    assert_eq!(log.current(conv).await.expect("current"), head("m1", false));
    assert_eq!(
        drain(&mut read(log, conv, ReadFrom::Start).await).await,
        appended
    );
}

/// A conversation whose generation is open can't open another
/// ([`DomainError::Duplicate`] on its id); once closed, a new generation
/// replaces it.
pub async fn opening_an_open_conversation_is_a_duplicate(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let again = log.open(conv, &message("m2")).await.map(drop);
    assert!(
        matches!(again, Err(DomainError::Duplicate { field }) if field == Field::ConversationId),
        "{again:?}"
    );
    log.close(conv).await.expect("close");
    let _stop = log.open(conv, &message("m2")).await.expect("open");
    assert_eq!(log.current(conv).await.expect("current"), head("m2", true));
}

/// A `Last-Event-ID` this log never gave (malformed, or altered from one
/// it gave) is [`DomainError::Invalid`] on it, never a resume at the
/// wrong place; the ids it gave are accepted.
pub async fn ids_this_log_never_gave_are_refused(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let appended = append_each(log, conv, 1..=2).await;
    let altered = appended.iter().flat_map(|(id, _)| {
        [
            format!("0{id}"),
            format!("{id}0"),
            format!("{id}-0"),
            format!("+{id}"),
            format!(" {id}"),
            format!("{id}.0"),
        ]
    });
    let malformed = ["3", "0", "-1", "abc", "", "+1", "01", "1.0"].map(str::to_owned);
    for bad in altered.chain(malformed) {
        let result = log.read(conv, ReadFrom::After(bad.clone())).await;
        assert!(is_invalid_id(&result), "{bad:?}");
    }
    for (id, _) in &appended {
        assert!(log.read(conv, ReadFrom::After(id.clone())).await.is_ok());
    }
}

/// `request_stop` reaches the open generation's signal, even asked before
/// anyone awaits it, and never an earlier generation's; with nothing open
/// there is nothing to stop.
pub async fn a_stop_reaches_only_its_own_log(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let mut first = log.open(conv, &message("m1")).await.expect("open");
    log.close(conv).await.expect("close");
    assert!(
        !log.request_stop(conv).await.expect("request_stop"),
        "closed"
    );
    let mut second = log.open(conv, &message("m2")).await.expect("open");
    assert!(
        timeout(BRIEF, second.stopped()).await.is_err(),
        "no stop asked yet"
    );
    assert!(log.request_stop(conv).await.expect("request_stop"));
    timeout(PATIENCE, second.stopped())
        .await
        .expect("the stop reached the open log");
    assert!(
        timeout(BRIEF, first.stopped()).await.is_err(),
        "an earlier generation's signal stays quiet"
    );
}

/// A reader of a log that a new generation replaced finishes with the old
/// log's events; a new reader reads the new log.
pub async fn a_reader_of_a_replaced_log_finishes_with_its_events(log: &dyn StreamLog) {
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let appended = append_each(log, conv, 1..=2).await;
    let mut old = read(log, conv, ReadFrom::Start).await;
    let first = old.next().await.expect("next").expect("an event");
    assert_eq!(first.id, appended[0].0);
    log.close(conv).await.expect("close");
    let _stop = log.open(conv, &message("m2")).await.expect("open");
    log.append(conv, event("new")).await.expect("append");
    assert_eq!(drain(&mut old).await, appended[1..]);
    let mut new = read(log, conv, ReadFrom::Start).await;
    assert_eq!(
        new.next().await.expect("next").map(|e| e.event.data),
        Some("new".to_owned())
    );
}

/// A closed log is kept for the retention, then dropped: `read` and
/// `current` are not found.
pub async fn closed_logs_expire_after_the_retention<L, F>(make: impl FnOnce(Limits) -> F)
where
    L: StreamLog,
    F: Future<Output = L>,
{
    let log = make(Limits {
        retention: Duration::from_millis(200),
        ..Limits::STANDARD
    })
    .await;
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    log.append(conv, event("e1")).await.expect("append");
    log.close(conv).await.expect("close");
    eventually("the closed log expires", async || {
        matches!(
            log.read(conv, ReadFrom::Start).await.map(drop),
            Err(DomainError::NotFound)
        )
    })
    .await;
    let current = log.current(conv).await;
    assert!(matches!(current, Err(DomainError::NotFound)), "{current:?}");
}

/// An open log never expires, whatever the retention (here none): it goes
/// once closed.
pub async fn open_logs_never_expire<L, F>(make: impl FnOnce(Limits) -> F)
where
    L: StreamLog,
    F: Future<Output = L>,
{
    let log = make(Limits {
        retention: Duration::ZERO,
        ..Limits::STANDARD
    })
    .await;
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    log.append(conv, event("e1")).await.expect("append");
    assert_eq!(log.current(conv).await.expect("current"), head("m1", true));
    log.close(conv).await.expect("close");
    eventually("the closed log goes", async || {
        matches!(log.current(conv).await, Err(DomainError::NotFound))
    })
    .await;
}

/// A log holding its most events refuses more as unavailable, one event
/// or a batch; a batch that does not fit is refused, whatever part of it
/// went in; closing the log still ends it for its readers, after what it
/// holds; and so does `finish`, whose last events do not fit.
pub async fn a_full_log_refuses_more<L, F>(make: impl FnOnce(Limits) -> F)
where
    L: StreamLog,
    F: Future<Output = L>,
{
    let log = make(Limits {
        max_events_per_log: 2,
        ..Limits::STANDARD
    })
    .await;
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let appended = append_each(&log, conv, 1..=2).await;
    let full = log.append(conv, event("e3")).await;
    assert!(matches!(full, Err(DomainError::Unavailable(_))), "{full:?}");
    let batch = log.append_all(conv, vec![event("e3"), event("e4")]).await;
    assert!(
        matches!(batch, Err(DomainError::Unavailable(_))),
        "{batch:?}"
    );
    log.close(conv).await.expect("close");
    assert_eq!(
        drain(&mut read(&log, conv, ReadFrom::Start).await).await,
        appended
    );
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let first = append_each(&log, conv, 1..=1).await;
    let over = log.append_all(conv, vec![event("e2"), event("e3")]).await;
    assert!(matches!(over, Err(DomainError::Unavailable(_))), "{over:?}");
    log.close(conv).await.expect("close");
    let held = drain(&mut read(&log, conv, ReadFrom::Start).await).await;
    assert!(held.len() <= 2 && held.first() == first.first(), "{held:?}");
    // Last events that do not fit are refused, and the log still closes.
    let conv = ConversationId::generate();
    let _stop = log.open(conv, &message("m1")).await.expect("open");
    let appended = append_each(&log, conv, 1..=2).await;
    let last = log.finish(conv, vec![event("done")]).await;
    assert!(matches!(last, Err(DomainError::Unavailable(_))), "{last:?}");
    assert_eq!(log.current(conv).await.expect("current"), head("m1", false));
    assert_eq!(
        drain(&mut read(&log, conv, ReadFrom::Start).await).await,
        appended
    );
}
