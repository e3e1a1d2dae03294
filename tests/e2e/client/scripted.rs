//! `confab-client` against a scripted HTTP server (`confab_e2e::scripted`):
//! the answers a real server, or a proxy before it, gives only by accident
//! of timing — a stream its log could not deliver to the end on the
//! instance a client reads from, a retry that meets its first attempt
//! still running, a cap of readers on a resume, a connection gone silent,
//! a proxy's HTML error page, a refresh slower than its caller's patience.
//! The client is the real one, over real HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use confab_client::{Client, Error, Event, Send};
use confab_domain::{ConversationId, ErrorCode, MessageStatus};
use confab_e2e::scripted::{Reply, Request, ScriptedServer, sse_event};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The resume token the scripted streams hand out.
const RESUME_TOKEN: &str = "scripted-resume-token";

/// An assistant message of `conversation` with `status` and no text.
fn answer(status: &str) -> Value {
    json!({
        "id": "a1", "author": {"role": "assistant"}, "role": "assistant",
        "create_time": 1_762_484_547.338, "update_time": 1_762_484_547.338,
        "created_at": "2025-11-07T02:49:07.338Z",
        "content": {"content_type": "text", "parts": [""]},
        "status": status,
        "metadata": {"model_slug": "fake-model", "parent_id": "q1"}
    })
}

/// Events 1 to 5 of an answer in `conversation`: the encoding, the resume
/// token, the `add`, the first-token marker, and "partial".
fn opening(conversation: ConversationId) -> Vec<String> {
    let c = conversation.to_string();
    vec![
        sse_event(1, Some("delta_encoding"), "\"v1\""),
        sse_event(
            2,
            None,
            &json!({"type": "resume_conversation_token", "token": RESUME_TOKEN,
                    "conversation_id": c})
            .to_string(),
        ),
        sse_event(
            3,
            Some("delta"),
            &json!({"p": "", "o": "add",
                    "v": {"message": answer("in_progress"), "conversation_id": c}})
            .to_string(),
        ),
        sse_event(
            4,
            None,
            &json!({"type": "message_marker", "conversation_id": c, "message_id": "a1",
                    "marker": "user_visible_token", "event": "first"})
            .to_string(),
        ),
        text(5, "partial"),
    ]
}

/// A text delta.
fn text(id: u32, text: &str) -> String {
    sse_event(
        id,
        Some("delta"),
        &json!({"v": [{"p": "/message/content/parts/0", "o": "append", "v": text}]}).to_string(),
    )
}

/// The final delta: the answer ends `status`.
fn ended(id: u32, status: &str) -> String {
    sse_event(
        id,
        Some("delta"),
        &json!({"v": [
            {"p": "/message/status", "o": "replace", "v": status},
            {"p": "/message/end_turn", "o": "replace", "v": status == "finished_successfully"},
            {"p": "/message/metadata", "o": "append", "v": {"is_complete": true}}
        ]})
        .to_string(),
    )
}

/// An `error` event of `code`.
fn error_event(id: u32, conversation: ConversationId, code: &str, message: &str) -> String {
    sse_event(
        id,
        None,
        &json!({"type": "error", "error": {"code": code, "message": message},
                "conversation_id": conversation.to_string()})
        .to_string(),
    )
}

fn complete(id: u32, conversation: ConversationId) -> String {
    sse_event(
        id,
        None,
        &json!({"type": "message_stream_complete", "conversation_id": conversation.to_string()})
            .to_string(),
    )
}

fn done(id: u32) -> String {
    sse_event(id, None, "[DONE]")
}

/// The rest of the answer after event 5: " answer", the end, the
/// completion and `[DONE]`.
fn rest(conversation: ConversationId) -> Vec<String> {
    vec![
        text(6, " answer"),
        ended(7, "finished_successfully"),
        complete(8, conversation),
        done(9),
    ]
}

/// A client of `server` carrying an API key (the scripted server takes any).
fn client_of(server: &ScriptedServer) -> Client {
    Client::with_api_key(&server.address, "cfk_scripted").unwrap()
}

/// Every item of the stream to its end, errors included, in order.
async fn drain(answer: &mut confab_client::AnswerStream) -> Vec<Result<Event, Error>> {
    let mut all = Vec::new();
    loop {
        let item = tokio::time::timeout(Duration::from_secs(20), answer.next())
            .await
            .expect("the stream goes on or ends in time");
        match item {
            Some(item) => all.push(item),
            None => return all,
        }
    }
}

/// The events of `items`, failing on an error.
fn events(items: Vec<Result<Event, Error>>) -> Vec<Event> {
    items
        .into_iter()
        .map(|item| item.unwrap_or_else(|e| panic!("the stream failed: {e}")))
        .collect()
}

fn joined_text(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// Whether `request` resumes `conversation`'s stream after event `after`.
fn is_resume(request: &Request, conversation: ConversationId, after: &str) -> bool {
    request.method == "GET"
        && request.path == format!("/api/v1/conversations/{conversation}/stream")
        && request.header("last-event-id") == Some(after)
        && request.header("x-resume-token") == Some(RESUME_TOKEN)
}

#[tokio::test]
async fn an_interruption_before_the_final_delta_is_resumed_not_reported() {
    // docs/api.md, "A stream never just stops": the error and `[DONE]`
    // repeat the id of the last event delivered.
    let id = ConversationId::generate();
    let server = ScriptedServer::start(move |_, n| match n {
        0 => {
            let mut first = opening(id);
            first.push(error_event(
                5,
                id,
                "UNAVAILABLE",
                "The stream was interrupted. Resume it from the last event id.",
            ));
            first.push(done(5));
            Reply::events(&first)
        }
        _ => Reply::events(&rest(id)),
    })
    .await;
    let client = client_of(&server);
    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    let events = events(drain(&mut answer).await);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Failed { .. })),
        "the interruption was reported: {events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Done | Event::Reconnected))
            .collect::<Vec<_>>(),
        [&Event::Reconnected, &Event::Done],
        "{events:?}"
    );
    assert_eq!(joined_text(&events), "partial answer");
    assert_eq!(
        answer.message().unwrap().status,
        MessageStatus::FinishedSuccessfully
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(is_resume(&requests[1], id, "5"), "{:?}", requests[1]);
}

#[tokio::test]
async fn an_unavailable_after_the_final_delta_is_the_answers_failure() {
    // A shutdown ends the answer (`failed`), then says why.
    let id = ConversationId::generate();
    let server = ScriptedServer::start(move |_, _| {
        let mut all = opening(id);
        all.push(ended(6, "failed"));
        all.push(error_event(
            7,
            id,
            "UNAVAILABLE",
            "The server is shutting down.",
        ));
        all.push(done(8));
        Reply::events(&all)
    })
    .await;
    let client = client_of(&server);
    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    let events = events(drain(&mut answer).await);
    let tail: Vec<&Event> = events.iter().rev().take(3).collect();
    assert_eq!(
        tail,
        [
            &Event::Done,
            &Event::Failed {
                code: Some(ErrorCode::Unavailable),
                message: "The server is shutting down.".into()
            },
            &Event::Ended(MessageStatus::Failed),
        ]
    );
    assert_eq!(server.requests().len(), 1, "nothing was resumed");
}

#[tokio::test]
async fn a_retry_that_meets_the_first_attempt_still_running_waits_and_goes_on() {
    let id = ConversationId::generate();
    let server = ScriptedServer::start(move |_, n| match n {
        // The send's connection breaks after it went up: the client can't
        // tell whether it arrived, and sends it again with its key.
        0 => Reply::broken(),
        // It did, and still runs (its message not stored yet).
        1 => Reply::error(
            409,
            "CONFLICT",
            "a request with this Idempotency-Key is still being processed: retry later",
            &[],
        ),
        _ => {
            let mut all = opening(id);
            all.extend(rest(id));
            Reply::events(&all)
        }
    })
    .await;
    let client = client_of(&server);
    let send = Send::new_conversation("Hi");
    let started = Instant::now();
    let mut answer = client.send(&send).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the retry after the 409 waited"
    );
    let events = events(drain(&mut answer).await);
    assert_eq!(joined_text(&events), "partial answer");
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.header("idempotency-key"), Some(send.key()));
    }
}

#[tokio::test]
async fn a_first_attempts_conflict_is_the_callers() {
    // 409 on a first attempt: the conversation is still generating.
    let server = ScriptedServer::start(|_, _| {
        Reply::error(409, "CONFLICT", "the conversation is still generating", &[])
    })
    .await;
    let client = client_of(&server);
    let error = client
        .send(&Send::message(ConversationId::generate(), "Hi"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Conflict));
    assert_eq!(server.requests().len(), 1, "not retried");
    // Nor a first attempt's 429.
    let server = ScriptedServer::start(|_, _| {
        Reply::error(429, "RATE_LIMITED", "slow down", &[("retry-after", "1")])
    })
    .await;
    let error = client_of(&server)
        .send(&Send::new_conversation("Hi"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::RateLimited));
    assert_eq!(server.requests().len(), 1, "not retried");
}

#[tokio::test]
async fn a_resume_refused_by_a_cap_of_readers_waits_its_retry_after_and_goes_on() {
    let id = ConversationId::generate();
    let server = ScriptedServer::start(move |_, n| match n {
        // The connection drops after event 5.
        0 => Reply::events(&opening(id)),
        1 => Reply::error(
            429,
            "RATE_LIMITED",
            "at most 8 streams of one answer at once",
            &[("retry-after", "1")],
        ),
        _ => Reply::events(&rest(id)),
    })
    .await;
    let client = client_of(&server);
    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    let events = events(drain(&mut answer).await);
    assert_eq!(joined_text(&events), "partial answer");
    assert_eq!(events.last(), Some(&Event::Done));
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(is_resume(&requests[1], id, "5"));
    assert!(is_resume(&requests[2], id, "5"));
}

#[tokio::test]
async fn a_failed_resume_after_the_answers_end_ends_the_stream_cleanly() {
    let id = ConversationId::generate();
    let server = ScriptedServer::start(move |_, n| match n {
        // Everything but `[DONE]`, then the connection drops.
        0 => {
            let mut all = opening(id);
            all.push(ended(6, "finished_successfully"));
            all.push(complete(7, id));
            Reply::events(&all)
        }
        // The stream is no longer kept.
        _ => Reply::error(404, "NOT_FOUND", "no such stream", &[]),
    })
    .await;
    let client = client_of(&server);
    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    let items = drain(&mut answer).await;
    assert!(
        items.iter().all(Result::is_ok),
        "the stream ended with an error: {items:?}"
    );
    let events = events(items);
    assert_eq!(events.last(), Some(&Event::Complete));
    assert_eq!(answer.text(), "partial");
    assert_eq!(server.requests().len(), 2, "one resume was tried");

    // Before the end, the same refusal is the stream's error.
    let server = ScriptedServer::start(move |_, n| match n {
        0 => Reply::events(&opening(id)),
        _ => Reply::error(404, "NOT_FOUND", "no such stream", &[]),
    })
    .await;
    let mut answer = client_of(&server)
        .send(&Send::new_conversation("Hi"))
        .await
        .unwrap();
    let items = drain(&mut answer).await;
    let last = items.last().unwrap();
    assert!(
        matches!(last, Err(e) if e.code() == Some(ErrorCode::NotFound)),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_connection_gone_silent_is_resumed_after_the_read_timeout() {
    let id = ConversationId::generate();
    let server = ScriptedServer::start(move |_, n| match n {
        // Half-open: no more bytes, no keep-alive, no close.
        0 => Reply::events(&opening(id)).hang(),
        _ => Reply::events(&rest(id)),
    })
    .await;
    let client = Client::builder(&server.address)
        .api_key("cfk_scripted")
        .read_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    let events = events(drain(&mut answer).await);
    assert!(events.contains(&Event::Reconnected), "{events:?}");
    assert_eq!(joined_text(&events), "partial answer");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "resumed after {:?}",
        started.elapsed()
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(is_resume(&requests[1], id, "5"));
}

#[tokio::test]
async fn an_error_without_the_apis_body_keeps_its_status_and_retry_after() {
    let server = ScriptedServer::start(|_, n| match n {
        0 => Reply::body(
            502,
            &[("content-type", "text/html"), ("x-request-id", "req_proxy")],
            "<html><body>502 Bad Gateway</body></html>",
        ),
        _ => Reply::body(
            503,
            &[("content-type", "text/plain"), ("retry-after", "7")],
            "upstream connect error",
        ),
    })
    .await;
    let client = Client::new(&server.address).unwrap();
    for (status, wait) in [(502, None), (503, Some(Duration::from_secs(7)))] {
        let Error::Api(e) = client
            .register("ada", "ada@example.com", "pw")
            .await
            .unwrap_err()
        else {
            panic!("an API error")
        };
        assert_eq!((e.status, e.code, e.retry_after), (status, None, wait));
        assert!(e.code_text.is_empty());
        if status == 502 {
            assert_eq!(e.message, "Bad Gateway");
            assert_eq!(e.request_id.as_deref(), Some("req_proxy"));
            assert_eq!(e.to_string(), "502: Bad Gateway [request req_proxy]");
        }
    }
}

#[tokio::test]
async fn events_before_a_malformed_one_come_first_then_the_error_and_nothing_after() {
    let id = ConversationId::generate();
    let server = ScriptedServer::start(move |_, _| {
        // One write: two events, a malformed one, and one more.
        let opening = opening(id);
        let chunk = format!(
            "{}{}id: 3\nevent: delta\ndata: {{not json\n\n{}",
            opening[0], opening[1], opening[2]
        );
        Reply::head(200, &[("content-type", "text/event-stream")]).send(&chunk)
    })
    .await;
    let client = client_of(&server);
    let mut answer = client.send(&Send::new_conversation("Hi")).await.unwrap();
    let items = drain(&mut answer).await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(matches!(items[0], Ok(Event::Encoding(_))), "{items:?}");
    assert!(matches!(items[1], Ok(Event::Started(_))), "{items:?}");
    assert!(matches!(items[2], Err(Error::Protocol(_))), "{items:?}");
}

#[tokio::test]
async fn a_refresh_whose_caller_gave_up_still_stores_the_new_pair() {
    // The server redeems a refresh token once: were the rotated pair lost
    // with the cancelled call, the next refresh would present a used
    // token, which is reuse (the session revoked). Here a reuse is 401.
    let release = Arc::new(Notify::new());
    let redeemed = Arc::new(AtomicUsize::new(0));
    let (held, count) = (Arc::clone(&release), Arc::clone(&redeemed));
    let tokens = |n: u32| {
        json!({"access_token": format!("access-{n}"), "token_type": "Bearer",
               "expires_in": 900, "refresh_token": format!("refresh-{n}")})
    };
    let server = ScriptedServer::start(move |request, _| {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/api/v1/auth/login") => Reply::json(200, &[], &tokens(1)),
            ("POST", "/api/v1/auth/refresh") => {
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                if first && request.json()["refresh_token"] == "refresh-1" {
                    // Slow: the caller gives up meanwhile.
                    let reply = Reply::json(200, &[], &tokens(2));
                    let mut steps = vec![confab_e2e::scripted::Step::Wait(Arc::clone(&held))];
                    steps.extend(reply.0);
                    Reply(steps)
                } else {
                    Reply::error(401, "AUTH_REQUIRED", "refresh token reused", &[])
                }
            }
            ("GET", "/api/v1/users/me") => match request.header("authorization") {
                Some("Bearer access-2") => Reply::json(
                    200,
                    &[],
                    &json!({"id": "0193b8a1-c2d3-7e5f-8a9b-0c1d2e3f4a5b", "username": "ada",
                            "email": "ada@example.com", "role": "user", "disabled": false,
                            "created_at": "2025-11-07T02:49:07.338Z"}),
                ),
                _ => Reply::error(401, "TOKEN_EXPIRED", "the access token expired", &[]),
            },
            _ => Reply::error(404, "NOT_FOUND", "no such route", &[]),
        }
    })
    .await;
    let client = Client::new(&server.address).unwrap();
    client.login("ada", "pw").await.unwrap();
    // The call finds its token expired and refreshes; it is dropped while
    // the refresh waits for its response.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), client.me()).await;
    assert!(gave_up.is_err(), "the call was cut while refreshing");
    assert_eq!(redeemed.load(Ordering::SeqCst), 1, "the refresh went up");
    release.notify_one();
    let me = client.me().await.unwrap();
    assert_eq!(me.username, "ada");
    assert_eq!(redeemed.load(Ordering::SeqCst), 1, "no second refresh");
    let authorizations: Vec<Option<String>> = server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/users/me")
        .map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert_eq!(
        authorizations.last().unwrap().as_deref(),
        Some("Bearer access-2")
    );
}
