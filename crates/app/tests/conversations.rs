//! Conversation rules — send, the generation task, stop, resume, the
//! orphan sweep and the read cache — on in-memory ports: the testkit's
//! store, scripted model and manual clock, and confab-memory's stream log,
//! cache and limiter. No database, no socket, no HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use confab_app::{
    AnswerEnd, AppError, Cached, ConversationPorts, ConversationRules, Conversations, Kept,
    NothingKept, Read, SendMessage, Started,
};
use confab_domain::{
    Content, Conversation, ConversationId, DomainError, ErrorCode, EventName, FamilyId, Field,
    HistoryRequest, Message, MessageId, MessageMetadata, MessagePage, MessageRole, MessageStatus,
    ModelSlug, NewConversation, OffsetDateTime, Role, Title, TokenId, UserId,
};
use confab_memory::{GovernorLimiter, MemoryCache, MemoryStreamLog, StreamLogOptions};
use confab_ports::{
    AccessClaims, Clock, ConversationQuery, ConversationStore, EventFeed, FinishReason, LlmError,
    LoggedEvent, MessageStore, RatePolicy, TitleIfUntitled,
};
use confab_testkit::model::{DEFAULT_ANSWER, is_title_request};
use confab_testkit::{ManualClock, MemoryStore, Reply, ScriptedModel};
use serde_json::Value;

/// The longest any one wait may take: a guard against hangs, never a
/// measurement.
const GUARD: Duration = Duration::from_secs(10);

struct Harness {
    conversations: Conversations,
    store: Arc<MemoryStore>,
    model: Arc<ScriptedModel>,
    clock: Arc<ManualClock>,
}

fn rules() -> ConversationRules {
    ConversationRules {
        default_model: ModelSlug::parse("scripted").unwrap(),
        allowed_models: vec![ModelSlug::parse("other").unwrap()],
        max_tokens: 256,
        system_prompt: "Be brief.".into(),
        prompt_budget_chars: 10_000,
        max_concurrent_per_user: 2,
        max_readers_per_user: 8,
        max_readers_per_answer: 4,
        generation_policy: RatePolicy {
            name: "generation".into(),
            quota: 100,
            window: Duration::from_secs(60),
        },
        flush_interval: Duration::from_millis(500),
        title_generation: false,
        title_timeout: Duration::from_secs(2),
        cache_ttl: Duration::from_secs(60),
        stop_wait: Duration::from_secs(5),
        allowance: confab_domain::Allowance::default(),
    }
}

fn harness() -> Harness {
    harness_with(rules())
}

fn harness_with(rules: ConversationRules) -> Harness {
    harness_on(rules, |store| store)
}

/// A harness whose message store is `messages(the memory store)`.
fn harness_on(
    rules: ConversationRules,
    messages: impl FnOnce(Arc<MemoryStore>) -> Arc<dyn MessageStore>,
) -> Harness {
    let store = Arc::new(MemoryStore::new());
    let model = Arc::new(ScriptedModel::new());
    // The JWT codec checks a resume token's expiry against the system
    // clock: the manual clock starts at the system's time.
    let clock = Arc::new(ManualClock::at(OffsetDateTime::now_utc()));
    let codec = support::jwt_codec();
    let ports = ConversationPorts {
        conversations: store.clone(),
        messages: messages(store.clone()),
        model: Some(model.clone()),
        log: Arc::new(MemoryStreamLog::new(StreamLogOptions {
            retention: Duration::from_secs(600),
            max_events_per_log: 10_000,
            max_logs: 1_000,
        })),
        cache: Arc::new(MemoryCache::new(1_000, 1 << 30)),
        resume_tokens: Arc::new(codec),
        limiter: Arc::new(GovernorLimiter::new()),
        clock: clock.clone(),
        usage: store.clone(),
        blocklist: Arc::new(confab_memory::InMemoryBlocklist::new()),
    };
    Harness {
        conversations: Conversations::new(ports, rules),
        store,
        model,
        clock,
    }
}

fn caller() -> AccessClaims {
    let now = OffsetDateTime::now_utc();
    AccessClaims {
        user_id: UserId::generate(),
        role: Role::User,
        jti: TokenId::generate(),
        family: FamilyId::generate(),
        issued_at: now,
        expires_at: now + Duration::from_secs(900),
        api_key: None,
    }
}

fn say(text: &str) -> SendMessage {
    SendMessage {
        parts: vec![text.to_owned()],
        ..SendMessage::default()
    }
}

fn say_in(conversation: ConversationId, text: &str) -> SendMessage {
    SendMessage {
        conversation_id: Some(conversation),
        ..say(text)
    }
}

/// `t` at millisecond precision, as the use cases store it.
fn millis(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(u32::from(t.millisecond()) * 1_000_000)
        .unwrap()
}

async fn guarded<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

/// Every event of a feed, to its end.
async fn drain(mut feed: Box<dyn EventFeed>) -> Vec<LoggedEvent> {
    guarded("reading the stream", async {
        let mut out = Vec::new();
        while let Some(event) = feed.next().await.unwrap() {
            out.push(event);
        }
        out
    })
    .await
}

/// Events of a feed until one of kind `until` (included).
async fn read_until(feed: &mut Box<dyn EventFeed>, until: &str) -> Vec<LoggedEvent> {
    guarded("reading the stream", async {
        let mut out = Vec::new();
        while let Some(event) = feed.next().await.unwrap() {
            let done = kind(&event) == until;
            out.push(event);
            if done {
                return out;
            }
        }
        panic!("the stream ended before {until}: {out:?}")
    })
    .await
}

/// A short name for an event: its type, `add`, `text:<piece>`,
/// `final:<status>`, `delta_encoding` or `[DONE]`.
fn kind(event: &LoggedEvent) -> String {
    let event = &event.event;
    if event.is_done() {
        return "[DONE]".into();
    }
    if event.name == Some(EventName::DeltaEncoding) {
        return "delta_encoding".into();
    }
    let data: Value = serde_json::from_str(&event.data).unwrap();
    if let Some(t) = data["type"].as_str() {
        return t.to_owned();
    }
    if data["o"] == "add" {
        return "add".into();
    }
    let op = &data["v"][0];
    if op["o"] == "append" {
        return format!("text:{}", op["v"].as_str().unwrap());
    }
    if op["p"] == "/message/status" {
        return format!("final:{}", op["v"].as_str().unwrap());
    }
    panic!("unknown event {event:?}")
}

fn kinds(events: &[LoggedEvent]) -> Vec<String> {
    events.iter().map(kind).collect()
}

fn data(event: &LoggedEvent) -> Value {
    serde_json::from_str(&event.event.data).unwrap()
}

fn code(code: ErrorCode) -> Value {
    serde_json::to_value(code).unwrap()
}

/// The `error` event's code, if the stream has one.
fn error_code(events: &[LoggedEvent]) -> Option<Value> {
    events
        .iter()
        .find(|e| kind(e) == "error")
        .map(|e| data(e)["error"]["code"].clone())
}

async fn send(h: &Harness, who: &AccessClaims, input: SendMessage) -> (Started, Vec<LoggedEvent>) {
    let started = h.conversations.send(who, input).await.unwrap();
    let events = drain(
        h.conversations
            .follow(who, started.conversation.id)
            .await
            .unwrap(),
    )
    .await;
    (started, events)
}

async fn messages(h: &Harness, conversation: ConversationId) -> Vec<Message> {
    MessageStore::page(h.store.as_ref(), conversation, None, usize::MAX)
        .await
        .unwrap()
        .messages
}

async fn ended(started: &Started) -> AnswerEnd {
    guarded("the generation", started.ended()).await
}

#[tokio::test]
async fn a_send_streams_its_answer_and_saves_it() {
    let h = harness();
    let alice = caller();
    h.model
        .answer(Reply::text(&["Redis ", "keeps data ", "in memory."]));
    let (started, events) = send(&h, &alice, say("What is Redis?")).await;

    assert!(started.created);
    assert_eq!(started.conversation.owner, alice.user_id);
    assert_eq!(started.user_message.content.parts(), ["What is Redis?"]);
    assert_eq!(started.assistant_message.status, MessageStatus::InProgress);
    assert_eq!(
        started.assistant_message.parent_id.as_ref(),
        Some(&started.user_message.id)
    );
    // Times come from the clock port, at millisecond precision.
    let now = millis(h.clock.now());
    assert_eq!(started.user_message.created_at, now);
    assert_eq!(started.conversation.created_at, now);

    assert_eq!(
        kinds(&events),
        [
            "delta_encoding",
            "resume_conversation_token",
            "input_message",
            "add",
            "message_marker",
            "text:Redis ",
            "text:keeps data ",
            "text:in memory.",
            "final:finished_successfully",
            "title_generation",
            "message_stream_complete",
            "[DONE]",
        ]
    );
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "every event has an id of its own");
    assert_eq!(ended(&started).await, AnswerEnd::Finished);

    let stored = messages(&h, started.conversation.id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].role, MessageRole::User);
    assert_eq!(stored[0].content.parts(), ["What is Redis?"]);
    assert_eq!(stored[1].id, started.assistant_message.id);
    assert_eq!(stored[1].status, MessageStatus::FinishedSuccessfully);
    assert_eq!(stored[1].content.parts(), ["Redis keeps data in memory."]);

    // The model was asked with the system prompt and the question.
    let asked = h.model.answer_requests();
    assert_eq!(asked.len(), 1);
    let texts: Vec<&str> = asked[0].turns.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["Be brief.", "What is Redis?"]);
    assert_eq!(asked[0].max_tokens, 256);
}

#[tokio::test]
async fn a_follow_up_is_answered_with_the_history() {
    let h = harness();
    let bob = caller();
    let (first, _) = send(&h, &bob, say("first question")).await;
    ended(&first).await;
    let id = first.conversation.id;
    let (second, events) = send(&h, &bob, say_in(id, "second question")).await;
    assert!(!second.created);
    assert!(!kinds(&events).contains(&"title_generation".to_owned()));
    assert_eq!(
        second.user_message.parent_id.as_ref(),
        Some(&first.assistant_message.id)
    );
    let asked = h.model.answer_requests();
    let texts: Vec<&str> = asked[1].turns.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "Be brief.",
            "first question",
            &DEFAULT_ANSWER.concat(),
            "second question"
        ]
    );
    assert_eq!(messages(&h, id).await.len(), 4);
}

#[tokio::test]
async fn each_model_behaviour_ends_the_answer_its_own_way() {
    let timeout = LlmError::Timeout("first token");
    let cases = [
        (
            Reply::text(&["all"]),
            AnswerEnd::Finished,
            MessageStatus::FinishedSuccessfully,
            None,
        ),
        (
            Reply::finished(&["cut"], FinishReason::Length),
            AnswerEnd::Length,
            MessageStatus::FinishedPartialCompletion,
            None,
        ),
        (
            Reply::failing(&["half"], timeout.clone()),
            AnswerEnd::Failed(ErrorCode::UpstreamTimeout),
            MessageStatus::Failed,
            Some(ErrorCode::UpstreamTimeout),
        ),
        (
            Reply::Refuse(LlmError::Upstream { status: 502 }),
            AnswerEnd::Failed(ErrorCode::UpstreamError),
            MessageStatus::Failed,
            Some(ErrorCode::UpstreamError),
        ),
        (
            Reply::failing(&["bro"], LlmError::Protocol("no [DONE]".into())),
            AnswerEnd::Failed(ErrorCode::UpstreamError),
            MessageStatus::Failed,
            Some(ErrorCode::UpstreamError),
        ),
        (
            Reply::Refuse(LlmError::Unavailable("refused".into())),
            AnswerEnd::Failed(ErrorCode::Unavailable),
            MessageStatus::Failed,
            Some(ErrorCode::Unavailable),
        ),
    ];
    for (reply, end, status, error) in cases {
        let h = harness();
        let who = caller();
        let text = match &reply {
            Reply::Steps(steps) => steps
                .iter()
                .filter_map(|s| match s {
                    confab_testkit::Step::Text(t) => Some(t.clone()),
                    _ => None,
                })
                .collect::<String>(),
            Reply::Refuse(_) | Reply::Panic => String::new(),
        };
        h.model.answer(reply);
        let (started, events) = send(&h, &who, say("go")).await;
        assert_eq!(ended(&started).await, end);
        let answer = &messages(&h, started.conversation.id).await[1];
        assert_eq!(answer.status, status, "{end:?}");
        assert_eq!(
            answer.content.joined(),
            text,
            "{end:?}: the text it had is kept"
        );
        let names = kinds(&events);
        assert_eq!(names.last().map(String::as_str), Some("[DONE]"));
        assert!(
            names.contains(&format!("final:{}", status.as_str())),
            "{names:?}"
        );
        match error {
            Some(expected) => {
                assert_eq!(error_code(&events), Some(code(expected)));
                assert!(!names.contains(&"message_stream_complete".to_owned()));
            }
            None => {
                assert_eq!(error_code(&events), None);
                assert!(names.contains(&"message_stream_complete".to_owned()));
            }
        }
    }
}

#[tokio::test]
async fn a_stop_saves_the_text_so_far() {
    let h = harness();
    let carol = caller();
    h.model.answer(Reply::hanging(&["partial ", "text"]));
    let started = h.conversations.send(&carol, say("tell me")).await.unwrap();
    let id = started.conversation.id;
    let mut feed = h.conversations.follow(&carol, id).await.unwrap();
    let mut events = read_until(&mut feed, "text:text").await;

    // While it runs, the question and an in-progress answer are stored.
    let stored = messages(&h, id).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].content.parts(), ["tell me"]);
    assert_eq!(stored[1].status, MessageStatus::InProgress);
    assert_eq!(h.model.open_streams(), 1);

    guarded("stop", h.conversations.stop(&carol, id))
        .await
        .unwrap();
    // The stop has waited for the end: the read that follows sees it.
    let answer = &messages(&h, id).await[1];
    assert_eq!(answer.status, MessageStatus::FinishedPartialCompletion);
    assert_eq!(answer.content.parts(), ["partial text"]);
    assert_eq!(ended(&started).await, AnswerEnd::Stopped);
    assert_eq!(h.model.open_streams(), 0, "the model's stream is dropped");

    events.extend(drain(feed).await);
    let names = kinds(&events);
    assert_eq!(
        names[names.len() - 4..],
        [
            "final:finished_partial_completion",
            "title_generation",
            "message_stream_complete",
            "[DONE]"
        ]
    );
    // Nothing runs any more: another stop finds nothing.
    assert!(matches!(
        h.conversations.stop(&carol, id).await,
        Err(AppError::NotFound)
    ));
}

#[tokio::test]
async fn only_the_owner_can_stop() {
    let h = harness();
    let (owner, other) = (caller(), caller());
    h.model.answer(Reply::hanging(&["x"]));
    let started = h.conversations.send(&owner, say("hi")).await.unwrap();
    let id = started.conversation.id;
    assert!(matches!(
        h.conversations.stop(&other, id).await,
        Err(AppError::NotFound)
    ));
    h.conversations.stop(&owner, id).await.unwrap();
    assert_eq!(ended(&started).await, AnswerEnd::Stopped);
}

#[tokio::test]
async fn partial_text_is_saved_while_the_model_is_quiet() {
    let h = harness();
    let dan = caller();
    h.model.answer(Reply::hanging(&["so far"]));
    let started = h.conversations.send(&dan, say("slow")).await.unwrap();
    let id = started.conversation.id;
    // The flush interval passes (tokio's clock, paused, jumps to it).
    tokio::time::pause();
    let answer = guarded("the flush", async {
        loop {
            let answer = messages(&h, id).await.remove(1);
            if !answer.content.joined().is_empty() {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(answer.status, MessageStatus::InProgress);
    assert_eq!(answer.content.parts(), ["so far"]);
    tokio::time::resume();
    h.conversations.stop(&dan, id).await.unwrap();
}

fn resume_token(events: &[LoggedEvent]) -> String {
    let event = events
        .iter()
        .find(|e| kind(e) == "resume_conversation_token")
        .unwrap();
    data(event)["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn resume_gives_exactly_the_events_after_the_last_one_seen() {
    let h = harness();
    let erin = caller();
    h.model.answer(Reply::text(&["one ", "two ", "three"]));
    let (started, events) = send(&h, &erin, say("count")).await;
    ended(&started).await;
    let id = started.conversation.id;
    let token = resume_token(&events);

    for seen in [0, 3, 6, events.len() - 1] {
        let resumed = drain(
            h.conversations
                .resume(&erin, id, Some(&token), Some(events[seen].id.clone()))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(resumed, events[seen + 1..], "after event {seen}");
    }
    // Without a Last-Event-ID, from the start.
    let all = drain(
        h.conversations
            .resume(&erin, id, Some(&token), None)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(all, events);
}

#[tokio::test]
async fn resume_refuses_a_token_of_another_user_or_conversation() {
    let h = harness();
    let (fay, gus) = (caller(), caller());
    let (mine, my_events) = send(&h, &fay, say("mine")).await;
    let (other, other_events) = send(&h, &fay, say("other")).await;
    let (his, his_events) = send(&h, &gus, say("his")).await;
    for s in [&mine, &other, &his] {
        ended(s).await;
    }
    let token = resume_token(&my_events);

    // Another conversation of the same user.
    assert!(matches!(
        h.conversations
            .resume(&fay, other.conversation.id, Some(&token), None)
            .await,
        Err(AppError::Forbidden)
    ));
    // Another user, on his own conversation.
    assert!(matches!(
        h.conversations
            .resume(&gus, his.conversation.id, Some(&token), None)
            .await,
        Err(AppError::Forbidden)
    ));
    // Another user, on the token's conversation: not even found.
    assert!(matches!(
        h.conversations
            .resume(
                &gus,
                mine.conversation.id,
                Some(&resume_token(&his_events)),
                None
            )
            .await,
        Err(AppError::NotFound)
    ));
    // No token, and garbage.
    assert!(matches!(
        h.conversations
            .resume(&fay, mine.conversation.id, None, None)
            .await,
        Err(AppError::Validation {
            field: Field::ResumeToken,
            ..
        })
    ));
    assert!(matches!(
        h.conversations
            .resume(&fay, mine.conversation.id, Some("garbage"), None)
            .await,
        Err(AppError::Forbidden)
    ));
    // An id the stream never gave.
    assert!(matches!(
        h.conversations
            .resume(
                &fay,
                mine.conversation.id,
                Some(&token),
                Some("nope".into())
            )
            .await,
        Err(AppError::Validation { .. })
    ));
    // The rightful reader gets it.
    let resumed = drain(
        h.conversations
            .resume(
                &fay,
                other.conversation.id,
                Some(&resume_token(&other_events)),
                None,
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(resumed, other_events);
}

#[tokio::test]
async fn a_second_send_while_one_runs_is_busy() {
    let h = harness();
    let hal = caller();
    h.model.answer(Reply::hanging(&["thinking"]));
    let started = h.conversations.send(&hal, say("first")).await.unwrap();
    let id = started.conversation.id;
    assert!(matches!(
        h.conversations.send(&hal, say_in(id, "second")).await,
        Err(AppError::Busy)
    ));
    // Nothing of the refused send was stored.
    assert_eq!(messages(&h, id).await.len(), 2);
    h.conversations.stop(&hal, id).await.unwrap();
    let (next, _) = send(&h, &hal, say_in(id, "second")).await;
    assert_eq!(ended(&next).await, AnswerEnd::Finished);
}

#[tokio::test]
async fn a_user_runs_at_most_the_cap_at_once() {
    let h = harness(); // two at once
    let (ivy, jon) = (caller(), caller());
    h.model
        .answer(Reply::hanging(&["a"]))
        .answer(Reply::hanging(&["b"]))
        .answer(Reply::hanging(&["c"]));
    let first = h.conversations.send(&ivy, say("one")).await.unwrap();
    let _second = h.conversations.send(&ivy, say("two")).await.unwrap();
    assert!(matches!(
        h.conversations.send(&ivy, say("three")).await,
        Err(AppError::TooManyGenerations { limit: 2 })
    ));
    // Another user has slots of his own.
    let _his = h.conversations.send(&jon, say("his")).await.unwrap();
    // A slot frees when a generation ends.
    h.conversations
        .stop(&ivy, first.conversation.id)
        .await
        .unwrap();
    let (fourth, _) = send(&h, &ivy, say("four")).await;
    assert_eq!(ended(&fourth).await, AnswerEnd::Finished);
    h.conversations.shutdown(GUARD).await;
}

#[tokio::test]
async fn generations_per_minute_are_limited() {
    let h = harness_with(ConversationRules {
        generation_policy: RatePolicy {
            name: "generation".into(),
            quota: 2,
            window: Duration::from_secs(60),
        },
        ..rules()
    });
    let kim = caller();
    let mut last = None;
    for text in ["one", "two"] {
        let (started, _) = send(&h, &kim, say(text)).await;
        ended(&started).await;
        last = Some(started);
    }
    let last = last.unwrap();
    match h.conversations.send(&kim, say("three")).await {
        Err(AppError::RateLimited { policy, decision }) => {
            assert_eq!(policy.name, "generation");
            assert!(!decision.allowed);
            assert!(decision.retry_after > Duration::ZERO);
        }
        other => panic!("expected a rate limit, got {other:?}"),
    }
    // The refused new conversation was not stored, and its model never
    // asked.
    let page = h
        .conversations
        .list(&kim, &ConversationQuery::default(), &NothingKept, None)
        .await
        .unwrap();
    assert_eq!(fetched(page).value.total, 2);
    assert_eq!(h.model.answer_requests().len(), 2);
    // Refused in an existing conversation, a send leaves its last answer's
    // stream in place: a client can still re-attach to it.
    let id = last.conversation.id;
    assert!(matches!(
        h.conversations.send(&kim, say_in(id, "three")).await,
        Err(AppError::RateLimited { .. })
    ));
    let mut feed = h
        .conversations
        .reattach(&kim, id, &last.assistant_message.id, None)
        .await
        .unwrap();
    let mut names = Vec::new();
    while let Some(event) = feed.next().await.unwrap() {
        names.push(event.event.name);
    }
    assert!(names.len() > 4, "the whole answer: {names:?}");
    // Another user has a bucket of his own.
    let (started, _) = send(&h, &caller(), say("mine")).await;
    assert_eq!(ended(&started).await, AnswerEnd::Finished);
}

#[tokio::test]
async fn bad_input_names_its_field() {
    let h = harness();
    let lou = caller();
    let (existing, _) = send(&h, &lou, say("hello")).await;
    ended(&existing).await;
    let cases = [
        (SendMessage::default(), Field::ContentParts),
        (say(""), Field::ContentParts),
        (
            SendMessage {
                model: Some("unknown-model".into()),
                ..say("x")
            },
            Field::Model,
        ),
        (
            SendMessage {
                temperature: Some(2.5),
                ..say("x")
            },
            Field::Temperature,
        ),
        (
            SendMessage {
                must_be_new: true,
                ..say_in(existing.conversation.id, "x")
            },
            Field::ConversationId,
        ),
        (
            SendMessage {
                user_id: Some("a\0b".into()),
                ..say("x")
            },
            Field::UserId,
        ),
        (
            SendMessage {
                message_id: Some(String::new()),
                ..say("x")
            },
            Field::MessageId,
        ),
    ];
    for (input, field) in cases {
        match h.conversations.send(&lou, input.clone()).await {
            Err(AppError::Validation { field: got, .. }) => assert_eq!(got, field, "{input:?}"),
            other => panic!("{input:?}: expected a validation error, got {other:?}"),
        }
    }
    // Another user's id in the body is forbidden, not invalid.
    let someone = SendMessage {
        user_id: Some(UserId::generate().to_string()),
        ..say("x")
    };
    assert!(matches!(
        h.conversations.send(&lou, someone).await,
        Err(AppError::Forbidden)
    ));
    // A message id already in the conversation is a conflict.
    let again = SendMessage {
        message_id: Some(existing.user_message.id.as_str().to_owned()),
        ..say_in(existing.conversation.id, "again")
    };
    assert!(matches!(
        h.conversations.send(&lou, again).await,
        Err(AppError::Conflict {
            field: Field::MessageId
        })
    ));
    // Nothing was stored by any of them, and the model was asked once.
    let page = h
        .conversations
        .list(&lou, &ConversationQuery::default(), &NothingKept, None)
        .await
        .unwrap();
    assert_eq!(fetched(page).value.total, 1);
    assert_eq!(messages(&h, existing.conversation.id).await.len(), 2);
    assert_eq!(h.model.answer_requests().len(), 1);
}

#[tokio::test]
async fn a_saturated_model_or_another_users_conversation_is_refused() {
    let h = harness();
    let (max, ned) = (caller(), caller());
    let (his, _) = send(&h, &ned, say("private")).await;
    ended(&his).await;
    assert!(matches!(
        h.conversations
            .send(&max, say_in(his.conversation.id, "let me in"))
            .await,
        Err(AppError::NotFound)
    ));
    h.model.set_saturated(true);
    assert!(matches!(
        h.conversations.send(&max, say("anyone?")).await,
        Err(AppError::Unavailable(_))
    ));
    assert_eq!(h.model.answer_requests().len(), 1);
}

#[tokio::test]
async fn a_new_conversation_is_titled_by_the_model() {
    let h = harness_with(ConversationRules {
        title_generation: true,
        ..rules()
    });
    let olga = caller();
    h.model
        .title(Reply::text(&["\"Redis Caching ", "Explained.\""]));
    let (started, events) = send(&h, &olga, say("Explain Redis caching please")).await;
    ended(&started).await;
    let title = events
        .iter()
        .find(|e| kind(e) == "title_generation")
        .unwrap();
    assert_eq!(data(title)["title"], "Redis Caching Explained");
    let (conversation, _) = h
        .conversations
        .get(&olga, started.conversation.id, &HistoryRequest::default())
        .await
        .unwrap();
    assert_eq!(conversation.title.as_str(), "Redis Caching Explained");
    let asked: Vec<_> = h
        .model
        .requests()
        .into_iter()
        .filter(is_title_request)
        .collect();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].turns[1].text.contains("Explain Redis caching"));
}

#[tokio::test]
async fn a_failed_title_call_falls_back_to_the_first_words() {
    let h = harness_with(ConversationRules {
        title_generation: true,
        ..rules()
    });
    let pam = caller();
    h.model
        .title(Reply::Refuse(LlmError::Unavailable("down".into())));
    let (started, _) = send(&h, &pam, say("How do I bake bread?\nThanks!")).await;
    ended(&started).await;
    let (conversation, _) = h
        .conversations
        .get(&pam, started.conversation.id, &HistoryRequest::default())
        .await
        .unwrap();
    assert_eq!(conversation.title.as_str(), "How do I bake bread?");
}

#[tokio::test]
async fn a_rename_during_the_answer_wins_over_the_generated_title() {
    let h = harness_with(ConversationRules {
        title_generation: true,
        ..rules()
    });
    let quinn = caller();
    h.model.answer(Reply::hanging(&["..."]));
    let started = h.conversations.send(&quinn, say("topic")).await.unwrap();
    let id = started.conversation.id;
    let patch = confab_domain::ConversationPatch {
        title: Some(Title::parse("My name").unwrap()),
        ..Default::default()
    };
    h.conversations.update(&quinn, id, patch).await.unwrap();
    h.conversations.stop(&quinn, id).await.unwrap();
    let (conversation, _) = h
        .conversations
        .get(&quinn, id, &HistoryRequest::default())
        .await
        .unwrap();
    assert_eq!(conversation.title.as_str(), "My name");
}

/// A new conversation whose answer was closed by someone else while it
/// ran (the final save finds no answer in progress, so the title cannot
/// ride on it) is titled all the same, and the close stands.
#[tokio::test]
async fn a_new_conversation_whose_answer_was_closed_meanwhile_is_still_titled() {
    let h = harness();
    let uma = caller();
    h.model.answer(Reply::hanging(&["half"]));
    let started = h
        .conversations
        .send(&uma, say("Why is the sky blue?"))
        .await
        .unwrap();
    let id = started.conversation.id;
    let answer = messages(&h, id).await[1].id.clone();
    assert!(
        h.store
            .fail_if_in_progress(id, &answer, h.clock.now())
            .await
            .unwrap()
    );
    h.conversations.stop(&uma, id).await.unwrap();
    ended(&started).await;
    let (conversation, _) = h
        .conversations
        .get(&uma, id, &HistoryRequest::default())
        .await
        .unwrap();
    assert_eq!(conversation.title.as_str(), "Why is the sky blue?");
    assert_eq!(messages(&h, id).await[1].status, MessageStatus::Failed);
}

#[tokio::test]
async fn the_orphan_sweep_closes_answers_no_generation_holds() {
    let h = harness();
    let rob = caller();
    // An answer left in progress by a process that died: no log holds it.
    let id = ConversationId::generate();
    ConversationStore::create(
        h.store.as_ref(),
        NewConversation {
            id,
            owner: rob.user_id,
            title: Title::placeholder(),
            settings: Default::default(),
            created_at: h.clock.now(),
        },
    )
    .await
    .unwrap();
    let orphan = Message {
        id: MessageId::parse("orphan").unwrap(),
        conversation_id: id,
        parent_id: None,
        role: MessageRole::Assistant,
        content: Content::text(vec!["half an ans".into()]).unwrap(),
        status: MessageStatus::InProgress,
        model_slug: None,
        metadata: MessageMetadata::new(),
        created_at: h.clock.now(),
        updated_at: h.clock.now(),
    };
    MessageStore::insert(h.store.as_ref(), &orphan)
        .await
        .unwrap();
    // And one a running generation holds.
    h.model.answer(Reply::hanging(&["alive"]));
    let running = h.conversations.send(&rob, say("running")).await.unwrap();
    // The history is read (and cached) before the sweep.
    let before = h
        .conversations
        .get(&rob, id, &HistoryRequest::default())
        .await
        .unwrap()
        .1
        .messages;
    assert_eq!(before[0].status, MessageStatus::InProgress);

    h.clock.advance(Duration::from_secs(30));
    assert_eq!(h.conversations.close_orphans().await.unwrap(), 1);
    let after = h
        .conversations
        .get(&rob, id, &HistoryRequest::default())
        .await
        .unwrap()
        .1
        .messages;
    assert_eq!(after[0].status, MessageStatus::Failed);
    assert_eq!(after[0].content.parts(), ["half an ans"]);
    assert_eq!(after[0].updated_at, millis(h.clock.now()));
    let held = &messages(&h, running.conversation.id).await[1];
    assert_eq!(held.status, MessageStatus::InProgress);
    // A second sweep finds nothing more.
    assert_eq!(h.conversations.close_orphans().await.unwrap(), 0);
    h.conversations
        .stop(&rob, running.conversation.id)
        .await
        .unwrap();
}

/// A new conversation's list entry, cached while its answer runs, shows
/// the answer's text and the title made from the first message once the
/// answer has ended (both stored together, one invalidation after them).
#[tokio::test]
async fn a_cached_list_shows_a_new_conversations_answer_and_title_once_it_ends() {
    let h = harness();
    let sue = caller();
    h.model.answer(Reply::hanging(&["on its way"]));
    let started = h
        .conversations
        .send(&sue, say("How do I bake bread?"))
        .await
        .unwrap();
    let id = started.conversation.id;
    let during = h
        .conversations
        .list(&sue, &ConversationQuery::default(), &NothingKept, None)
        .await
        .unwrap();
    let item = &fetched(during).value.items[0];
    assert_eq!(item.title, Title::placeholder());
    assert_eq!(item.last_message.as_deref(), Some("How do I bake bread?"));

    h.conversations.stop(&sue, id).await.unwrap();
    assert_eq!(ended(&started).await, AnswerEnd::Stopped);
    let after = h
        .conversations
        .list(&sue, &ConversationQuery::default(), &NothingKept, None)
        .await
        .unwrap();
    let item = &fetched(after).value.items[0];
    assert_eq!(item.title.as_str(), "How do I bake bread?");
    assert_eq!(item.last_message.as_deref(), Some("on its way"));
}

#[tokio::test]
async fn reads_after_a_send_are_never_stale() {
    let h = harness();
    let sue = caller();
    let (first, _) = send(&h, &sue, say("first")).await;
    ended(&first).await;
    let id = first.conversation.id;
    // Cached now.
    let history = h
        .conversations
        .get(&sue, id, &HistoryRequest::default())
        .await
        .unwrap()
        .1
        .messages;
    assert_eq!(history.len(), 2);
    let listed = h
        .conversations
        .list(&sue, &ConversationQuery::default(), &NothingKept, None)
        .await
        .unwrap();
    assert_eq!(
        fetched(listed).value.items[0].last_message.as_deref(),
        Some(&*DEFAULT_ANSWER.concat())
    );

    h.model.answer(Reply::hanging(&["on its way"]));
    let started = h
        .conversations
        .send(&sue, say_in(id, "second"))
        .await
        .unwrap();
    let during = h
        .conversations
        .get(&sue, id, &HistoryRequest::default())
        .await
        .unwrap()
        .1
        .messages;
    assert_eq!(during.len(), 4);
    assert_eq!(during[2].content.parts(), ["second"]);
    assert_eq!(during[3].status, MessageStatus::InProgress);
    let listed = h
        .conversations
        .list(&sue, &ConversationQuery::default(), &NothingKept, None)
        .await
        .unwrap();
    assert_eq!(
        fetched(listed).value.items[0].last_message.as_deref(),
        Some("second")
    );

    h.conversations.stop(&sue, id).await.unwrap();
    assert_eq!(ended(&started).await, AnswerEnd::Stopped);
    let after = h
        .conversations
        .get(&sue, id, &HistoryRequest::default())
        .await
        .unwrap()
        .1
        .messages;
    assert_eq!(after[3].status, MessageStatus::FinishedPartialCompletion);
    assert_eq!(after[3].content.parts(), ["on its way"]);
    // Another user never reads it, cached or not.
    assert!(matches!(
        h.conversations
            .get(&caller(), id, &HistoryRequest::default())
            .await,
        Err(AppError::NotFound)
    ));
}

/// A read's fetched value; a test that keeps nothing never gets `Kept`.
fn fetched<T, K>(read: Read<T, K>) -> Cached<T> {
    match read {
        Read::Fetched(cached) => cached,
        Read::Kept(_) => panic!("nothing was kept, yet a read found it"),
    }
}

/// What a test keeps by entry name: an owner and a label.
#[derive(Default)]
struct Labels(std::sync::Mutex<HashMap<String, (UserId, &'static str)>>);

impl Labels {
    fn keep(&self, entry: &str, owner: UserId, label: &'static str) {
        self.0
            .lock()
            .unwrap()
            .insert(entry.to_owned(), (owner, label));
    }
}

impl Kept for Labels {
    type Item = &'static str;

    fn find(&self, entry: &str) -> Option<(UserId, &'static str)> {
        self.0.lock().unwrap().get(entry).copied()
    }
}

#[tokio::test]
async fn a_read_hands_back_what_is_kept_for_its_entry_and_only_to_the_owner() {
    let h = harness();
    let (ann, bob) = (caller(), caller());
    let (first, _) = send(&h, &ann, say("first")).await;
    ended(&first).await;
    let id = first.conversation.id;
    let query = ConversationQuery::default();
    let kept = Labels::default();
    let list = |who| {
        let (conversations, query, kept) = (&h.conversations, &query, &kept);
        async move { conversations.list(who, query, kept, None).await.unwrap() }
    };
    let read = |who| {
        let (conversations, kept) = (&h.conversations, &kept);
        async move {
            conversations
                .read(who, id, &HistoryRequest::default(), kept)
                .await
        }
    };

    // Nothing kept: fetched, with the entry's name; again, the same name.
    let listed = fetched(list(&ann).await);
    assert_eq!(listed.value.total, 1);
    let list_entry = listed.entry.expect("the cache is up: named");
    assert_eq!(
        fetched(list(&ann).await).entry.as_deref(),
        Some(&*list_entry)
    );
    let history = fetched(read(&ann).await.unwrap());
    assert_eq!(history.value.1.messages.len(), 2);
    let history_entry = history.entry.expect("named");
    // Another user's list has a name of its own; their read of the
    // history is refused, cached or not.
    let bobs = fetched(list(&bob).await);
    assert_eq!(bobs.value.total, 0);
    assert_ne!(bobs.entry.as_deref(), Some(&*list_entry));
    assert!(matches!(read(&bob).await, Err(AppError::NotFound)));

    // Kept: handed back without the value, to the owner only.
    kept.keep(&list_entry, ann.user_id, "ann's list");
    kept.keep(&history_entry, ann.user_id, "ann's history");
    assert!(matches!(list(&ann).await, Read::Kept("ann's list")));
    assert!(matches!(read(&ann).await, Ok(Read::Kept("ann's history"))));
    assert!(matches!(read(&bob).await, Err(AppError::NotFound)));
    // Something kept under a name by the wrong owner is never handed back.
    kept.keep(&list_entry, bob.user_id, "a mix-up");
    assert_eq!(fetched(list(&ann).await).value.total, 1);

    // A rename renames both entries: what was kept is not found again.
    let patch = confab_domain::ConversationPatch {
        title: Some(Title::parse("Renamed").unwrap()),
        ..Default::default()
    };
    h.conversations.update(&ann, id, patch).await.unwrap();
    let relisted = fetched(list(&ann).await);
    assert_eq!(relisted.value.items[0].title.as_str(), "Renamed");
    assert_ne!(relisted.entry.as_deref(), Some(&*list_entry));
    let reread = fetched(read(&ann).await.unwrap());
    assert_eq!(reread.value.0.title.as_str(), "Renamed");
    assert_ne!(reread.entry.as_deref(), Some(&*history_entry));
}

#[tokio::test]
async fn a_deleted_conversation_is_gone_and_its_answer_stopped() {
    let h = harness();
    let ted = caller();
    h.model.answer(Reply::hanging(&["never finished"]));
    let started = h.conversations.send(&ted, say("doomed")).await.unwrap();
    let id = started.conversation.id;
    h.conversations
        .get(&ted, id, &HistoryRequest::default())
        .await
        .unwrap();
    h.conversations.delete(&ted, id).await.unwrap();
    assert!(matches!(
        h.conversations
            .get(&ted, id, &HistoryRequest::default())
            .await,
        Err(AppError::NotFound)
    ));
    assert_eq!(ended(&started).await, AnswerEnd::Stopped);
    // The answer is still closed, with its text.
    let answer = &messages(&h, id).await[1];
    assert_eq!(answer.status, MessageStatus::FinishedPartialCompletion);
    assert_eq!(answer.content.parts(), ["never finished"]);
}

#[tokio::test]
async fn shutdown_interrupts_a_running_answer() {
    let h = harness();
    let uma = caller();
    h.model.answer(Reply::hanging(&["interrupted "]));
    let started = h.conversations.send(&uma, say("long one")).await.unwrap();
    let id = started.conversation.id;
    let mut feed = h.conversations.follow(&uma, id).await.unwrap();
    let mut events = read_until(&mut feed, "text:interrupted ").await;

    guarded("shutdown", h.conversations.shutdown(GUARD)).await;
    assert_eq!(
        ended(&started).await,
        AnswerEnd::Failed(ErrorCode::Unavailable)
    );
    let answer = &messages(&h, id).await[1];
    assert_eq!(answer.status, MessageStatus::Failed);
    assert_eq!(answer.content.parts(), ["interrupted "]);
    events.extend(drain(feed).await);
    assert_eq!(error_code(&events), Some(code(ErrorCode::Unavailable)));
    assert_eq!(kinds(&events).last().map(String::as_str), Some("[DONE]"));
    // No new generation starts once shutting down.
    assert!(matches!(
        h.conversations.send(&uma, say("more")).await,
        Err(AppError::Unavailable(_))
    ));
}

/// The memory store, but (with `release`) a new conversation's exchange is stored only
/// when the test says so, and then stored or refused as it says; and
/// that counts what its pages hand out.
struct HeldStore {
    store: Arc<MemoryStore>,
    /// Says whether each `create_with_exchange` stores; `None`: all do,
    /// at once.
    release: Option<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<bool>>>,
    /// The messages `page` has handed out.
    paged: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl MessageStore for HeldStore {
    async fn insert(&self, message: &Message) -> Result<(), DomainError> {
        self.store.insert(message).await
    }

    async fn insert_exchange(
        &self,
        user: &Message,
        assistant: &Message,
    ) -> Result<(), DomainError> {
        self.store.insert_exchange(user, assistant).await
    }

    async fn create_with_exchange(
        &self,
        conversation: NewConversation,
        user: &Message,
        assistant: &Message,
    ) -> Result<Conversation, DomainError> {
        let store = match &self.release {
            Some(release) => release.lock().await.recv().await.unwrap_or(false),
            None => true,
        };
        if !store {
            return Err(DomainError::unavailable("the test refused the write"));
        }
        self.store
            .create_with_exchange(conversation, user, assistant)
            .await
    }

    async fn update_content(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        content: &Content,
        status: MessageStatus,
        at: OffsetDateTime,
    ) -> Result<(), DomainError> {
        self.store
            .update_content(conversation, id, content, status, at)
            .await
    }

    async fn update_content_titled(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        content: &Content,
        status: MessageStatus,
        at: OffsetDateTime,
        title: TitleIfUntitled<'_>,
    ) -> Result<bool, DomainError> {
        self.store
            .update_content_titled(conversation, id, content, status, at, title)
            .await
    }

    async fn in_order(
        &self,
        conversation: ConversationId,
        after: Option<&MessageId>,
        limit: usize,
    ) -> Result<(Vec<Message>, bool), DomainError> {
        self.store.in_order(conversation, after, limit).await
    }

    async fn children(
        &self,
        conversation: ConversationId,
        parents: &[Option<MessageId>],
    ) -> Result<Vec<(Option<MessageId>, MessageId)>, DomainError> {
        self.store.children(conversation, parents).await
    }

    async fn reopen(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        self.store.reopen(conversation, id, at).await
    }

    async fn page(
        &self,
        conversation: ConversationId,
        before: Option<&MessageId>,
        limit: usize,
    ) -> Result<MessagePage, DomainError> {
        let page = self.store.page(conversation, before, limit).await?;
        self.paged
            .fetch_add(page.messages.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(page)
    }

    async fn find(
        &self,
        conversation: ConversationId,
        id: &MessageId,
    ) -> Result<Option<Message>, DomainError> {
        self.store.find(conversation, id).await
    }

    async fn in_progress(
        &self,
        limit: usize,
    ) -> Result<Vec<(ConversationId, MessageId)>, DomainError> {
        self.store.in_progress(limit).await
    }

    async fn fail_if_in_progress(
        &self,
        conversation: ConversationId,
        id: &MessageId,
        at: OffsetDateTime,
    ) -> Result<bool, DomainError> {
        self.store.fail_if_in_progress(conversation, id, at).await
    }
}

/// A harness on a [`HeldStore`], and the sender that releases its writes.
fn held_harness() -> (Harness, tokio::sync::mpsc::Sender<bool>) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let release = tokio::sync::Mutex::new(rx);
    let h = harness_on(rules(), move |store| {
        Arc::new(HeldStore {
            store,
            release: Some(release),
            paged: Arc::default(),
        })
    });
    (h, tx)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    guarded(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_model_is_asked_while_the_exchange_is_stored_and_speaks_after() {
    let (h, release) = held_harness();
    let alice = caller();
    h.model.answer(Reply::text(&["Hello", " there"]));
    let conversations = h.conversations.clone();
    let who = alice.clone();
    let sending = tokio::spawn(async move { conversations.send(&who, say("Hi?")).await });
    // The model is asked before the exchange is stored...
    eventually("the model is asked", || {
        h.model.answer_requests().len() == 1
    })
    .await;
    let page = ConversationStore::list(
        h.store.as_ref(),
        alice.user_id,
        &ConversationQuery::default(),
    )
    .await
    .unwrap();
    assert_eq!(page.total, 0, "nothing is stored yet");
    assert!(!sending.is_finished(), "the send waits for its store");
    // ...and what it says reaches the stream only after the store, behind
    // the opening events.
    release.send(true).await.unwrap();
    let started = guarded("the send", sending).await.unwrap().unwrap();
    let feed = h
        .conversations
        .follow(&alice, started.conversation.id)
        .await
        .unwrap();
    let events = drain(feed).await;
    assert_eq!(
        kinds(&events)[..7],
        [
            "delta_encoding",
            "resume_conversation_token",
            "input_message",
            "add",
            "message_marker",
            "text:Hello",
            "text: there",
        ]
    );
    assert_eq!(ended(&started).await, AnswerEnd::Finished);
    assert_eq!(messages(&h, started.conversation.id).await.len(), 2);
}

#[tokio::test]
async fn a_failed_store_cancels_the_model_request_and_frees_the_slot() {
    let (h, release) = held_harness();
    let alice = caller();
    // More failed sends than the user's cap of running answers.
    for _ in 0..3 {
        h.model.answer(Reply::hanging(&["never shown"]));
        let conversations = h.conversations.clone();
        let who = alice.clone();
        let sending = tokio::spawn(async move { conversations.send(&who, say("Hi?")).await });
        eventually("the model is asked", || h.model.open_streams() == 1).await;
        release.send(false).await.unwrap();
        let refused = guarded("the send", sending).await.unwrap();
        assert!(
            matches!(refused, Err(AppError::Unavailable(_))),
            "{refused:?}"
        );
        // The model's request is dropped with the start it belonged to.
        eventually("the model request is cancelled", || {
            h.model.open_streams() == 0
        })
        .await;
    }
    let page = ConversationStore::list(
        h.store.as_ref(),
        alice.user_id,
        &ConversationQuery::default(),
    )
    .await
    .unwrap();
    assert_eq!(page.total, 0, "no conversation is left behind");
    // The slots were given back: a send goes through.
    h.model.answer(Reply::text(&["ok"]));
    let conversations = h.conversations.clone();
    let who = alice.clone();
    let sending = tokio::spawn(async move { conversations.send(&who, say("Again?")).await });
    release.send(true).await.unwrap();
    let started = guarded("the send", sending).await.unwrap().unwrap();
    assert_eq!(ended(&started).await, AnswerEnd::Finished);
}

#[tokio::test]
async fn a_model_that_panics_while_the_exchange_is_stored_still_ends_the_answer() {
    let (h, release) = held_harness();
    let alice = caller();
    h.model.answer(Reply::Panic);
    let conversations = h.conversations.clone();
    let who = alice.clone();
    let sending = tokio::spawn(async move { conversations.send(&who, say("Hi?")).await });
    eventually("the model is asked", || {
        h.model.answer_requests().len() == 1
    })
    .await;
    release.send(true).await.unwrap();
    let started = guarded("the send", sending).await.unwrap().unwrap();
    let events = drain(
        h.conversations
            .follow(&alice, started.conversation.id)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(error_code(&events), Some(code(ErrorCode::InternalError)));
    assert_eq!(
        ended(&started).await,
        AnswerEnd::Failed(ErrorCode::InternalError)
    );
    let stored = messages(&h, started.conversation.id).await;
    assert_eq!(stored[1].status, MessageStatus::Failed);
}

#[tokio::test]
async fn a_send_reads_the_history_backwards_only_as_far_as_its_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for (budget, pages) in [(100, 1), (2_000, 3)] {
        let paged = Arc::new(AtomicUsize::new(0));
        let counter = paged.clone();
        let h = harness_on(
            ConversationRules {
                prompt_budget_chars: budget,
                ..rules()
            },
            move |store| {
                Arc::new(HeldStore {
                    store,
                    release: None,
                    paged: counter,
                })
            },
        );
        let ann = caller();
        let (first, _) = send(&h, &ann, say("the first question")).await;
        ended(&first).await;
        let id = first.conversation.id;
        // 1,000 more messages of about 20 characters each.
        let mut parent = first.assistant_message.id.clone();
        for n in 0..1_000 {
            let mut stored = first.user_message.clone();
            stored.id = MessageId::parse(format!("old{n}")).unwrap();
            stored.parent_id = Some(std::mem::replace(&mut parent, stored.id.clone()));
            stored.content = Content::text(vec![format!("stored message {n:04}")]).unwrap();
            MessageStore::insert(h.store.as_ref(), &stored)
                .await
                .unwrap();
        }
        paged.store(0, Ordering::Relaxed);

        let (next, _) = send(&h, &ann, say_in(id, "and now?")).await;
        ended(&next).await;
        assert_eq!(
            paged.load(Ordering::Relaxed),
            pages * 50,
            "budget {budget}: pages of 50 until the budget is passed"
        );
        let asked = h.model.answer_requests();
        let texts: Vec<&str> = asked[1].turns.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts.last(), Some(&"and now?"));
        assert_eq!(
            texts[texts.len() - 2],
            "stored message 0999",
            "budget {budget}"
        );
        // The budget counts the new message too.
        let sent: usize = texts[1..].iter().map(|t| t.len()).sum();
        assert!(sent <= budget, "budget {budget}: {sent} characters sent");
        assert!(sent + 20 > budget, "budget {budget}: the budget is filled");

        // A reused id from before every page read is still taken.
        let err = h
            .conversations
            .send(
                &ann,
                SendMessage {
                    message_id: Some("old3".to_owned()),
                    ..say_in(id, "again")
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AppError::Conflict {
                    field: Field::MessageId
                }
            ),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_history_page_of_huge_messages_stops_reading_at_its_byte_bound() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let paged = Arc::new(AtomicUsize::new(0));
    let counter = paged.clone();
    let h = harness_on(rules(), move |store| {
        Arc::new(HeldStore {
            store,
            release: None,
            paged: counter,
        })
    });
    let ann = caller();
    let (first, _) = send(&h, &ann, say("start")).await;
    ended(&first).await;
    let id = first.conversation.id;
    // 200 messages of 100,000 bytes: 20 MB, of which a page holds 1 MiB.
    let mut parent = first.assistant_message.id.clone();
    for n in 0..200 {
        let mut stored = first.user_message.clone();
        stored.id = MessageId::parse(format!("big{n}")).unwrap();
        stored.parent_id = Some(std::mem::replace(&mut parent, stored.id.clone()));
        stored.content = Content::text(vec!["x".repeat(100_000)]).unwrap();
        MessageStore::insert(h.store.as_ref(), &stored)
            .await
            .unwrap();
    }
    paged.store(0, Ordering::Relaxed);

    let (_, page) = h
        .conversations
        .get(&ann, id, &HistoryRequest::new(None, 500).unwrap())
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 10, "ten of 100,000 bytes fit in 1 MiB");
    assert_eq!(page.messages[9].id.as_str(), "big199");
    assert!(page.has_more);
    assert_eq!(
        paged.load(Ordering::Relaxed),
        50,
        "one store page read, not the 500 asked for"
    );
}
