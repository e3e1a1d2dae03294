//! Sending messages and reading the answer's stream: the event sequence of
//! seed `000`, replay, both surfaces, JSON mode, resume, stop, failures.

use std::time::Duration;

use confab_e2e::chat::{
    MODEL, SseReader, conversation_of, is_append, message_body, replay, spawn_chat,
};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_e2e::{captured_logs, error_body};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    stream_has_the_seed_event_sequence_with_ids,
    replaying_the_deltas_gives_the_stored_message_byte_for_byte,
    a_client_that_disconnects_does_not_stop_the_generation,
    resume_from_last_event_id_has_no_gap_and_no_duplicate,
    resume_needs_the_owner_and_the_streams_resume_token,
    stop_ends_the_answer_as_partial_and_drops_the_upstream,
    upstream_500_fails_the_answer_without_leaking_its_body,
    malformed_chunk_fails_the_answer,
    stalled_upstream_times_out,
    upstream_closing_without_done_fails_the_answer,
    upstream_breaking_its_chunked_framing_fails_the_answer,
    json_mode_maps_an_upstream_failure_to_502,
    concurrent_generation_cap_is_429,
    a_busy_conversation_refuses_another_message,
    keep_alive_comments_flow_while_the_model_is_silent,
    title_falls_back_to_the_first_words_when_the_title_call_fails,
    token_cap_ends_the_answer_as_partial,
    second_message_sends_the_history_with_the_system_prompt,
    no_upstream_key_or_token_in_the_logs,
    shutdown_saves_the_partial_answer_and_ends_the_stream,
    a_rename_during_the_first_answer_is_kept,
    stream_readers_are_capped_per_answer_and_per_user,
    every_event_of_real_streams_matches_the_documents_schemas,
    answers_read_to_their_end_leave_their_connection_for_the_next,
);

/// Waits (polling with a deadline) until the conversation's last message
/// has `status`; returns the conversation.
async fn wait_for_status(app: &confab_e2e::TestApp, token: &str, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let c = app.conversation(token, id).await;
        let last = c["messages"].as_array().and_then(|m| m.last()).cloned();
        if last.is_some_and(|m| m["status"] == status) {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {status} in time: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a new conversation and returns its stream reader (unread).
async fn start(app: &confab_e2e::TestApp, token: &str, text: &str) -> SseReader {
    let res = app
        .send_message("/api/v1/conversations", token, &message_body(text))
        .await;
    assert_eq!(res.status(), 200, "send");
    SseReader::new(res)
}

async fn stream_has_the_seed_event_sequence_with_ids(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::reply(&["Redis", " caching", " stores"]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let res = app
        .send_message(
            "/api/v1/conversations",
            &token,
            &message_body("Explain Redis caching"),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let events = SseReader::new(res).rest().await;
    let ids: Vec<String> = events
        .iter()
        .map(|e| e.id.clone().expect("an id on every event"))
        .collect();
    let expected_ids: Vec<String> = (1..=events.len()).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected_ids);
    let shape: Vec<String> = events
        .iter()
        .map(|e| match (e.event.as_deref(), e.kind()) {
            (Some("delta_encoding"), _) => format!("delta_encoding {}", e.data),
            (Some("delta"), _) => {
                let v = e.json();
                if v["o"] == "add" {
                    "add".to_owned()
                } else if v["v"][0]["o"] == "append" {
                    format!("append {}", v["v"][0]["v"])
                } else {
                    "finish".to_owned()
                }
            }
            (None, Some(kind)) => kind,
            (None, None) => e.data.clone(),
            (Some(other), _) => other.to_owned(),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "delta_encoding \"v1\"",
            "resume_conversation_token",
            "input_message",
            "add",
            "message_marker",
            "append \"Redis\"",
            "append \" caching\"",
            "append \" stores\"",
            "finish",
            "title_generation",
            "message_stream_complete",
            "[DONE]",
        ]
    );
    let conversation = events[1].json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for e in &events {
        if let Some(id) = e.json()["conversation_id"].as_str() {
            assert_eq!(id, conversation);
        }
    }
    assert!(
        events[1].json()["token"]
            .as_str()
            .is_some_and(|t| t.split('.').count() == 3)
    );
    let input = &events[2].json()["input_message"];
    assert_eq!(input["status"], "finished_successfully");
    assert_eq!(input["author"]["role"], "user");
    assert_eq!(input["content"]["parts"][0], "Explain Redis caching");
    let added = &events[3].json()["v"]["message"];
    assert_eq!(added["status"], "in_progress");
    assert_eq!(added["content"]["parts"], json!([""]));
    assert_eq!(added["metadata"]["model_slug"], MODEL);
    assert_eq!(added["metadata"]["parent_id"], input["id"]);
    let marker = events[4].json();
    assert_eq!(marker["marker"], "user_visible_token");
    assert_eq!(marker["event"], "first");
    assert_eq!(marker["message_id"], added["id"]);
    // The final delta says when the answer was last updated: a time the
    // add delta's creation does not follow.
    let mut finish = events[8].json();
    let updated = finish["v"][1].clone();
    assert_eq!(updated["p"], "/message/update_time");
    assert_eq!(updated["o"], "replace");
    assert!(updated["v"].as_f64().unwrap() >= added["create_time"].as_f64().unwrap());
    assert_eq!(added["update_time"], added["create_time"]);
    finish["v"].as_array_mut().unwrap().remove(1);
    assert_eq!(
        finish,
        json!({"v": [
            {"p": "/message/status", "o": "replace", "v": "finished_successfully"},
            {"p": "/message/end_turn", "o": "replace", "v": true},
            {"p": "/message/metadata", "o": "append", "v": {"is_complete": true}},
        ]})
    );
    assert_eq!(events[9].json()["title"], "Fake Title");
    let stored = app.conversation(&token, &conversation).await;
    assert_eq!(stored["title"], "Fake Title");
}

async fn replaying_the_deltas_gives_the_stored_message_byte_for_byte(backend: Backend) {
    let llm = FakeLlm::start();
    let text =
        "Line one\n\ndata: [DONE]\n\nevent: delta\ndata: {\"o\":\"add\"} \"quoted\" é 日本 🎉";
    let pieces: Vec<&str> = vec![&text[..10], &text[10..30], &text[30..]];
    llm.push(Script::reply(&pieces));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let (id, events) = app.chat(&token, "hi").await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let rebuilt = replay(&events);
    assert_eq!(rebuilt["conversation_id"], id.as_str());
    let res = app
        .get_auth(&format!("/api/v1/conversations/{id}"), &token)
        .await;
    let raw = res.text().await.unwrap();
    let stored: Value = serde_json::from_str(&raw).unwrap();
    let answer = &stored["messages"][1];
    assert_eq!(answer["content"]["parts"][0], text);
    assert_eq!(&rebuilt["message"], answer);
    // Byte for byte: the stored message's JSON text is the replayed one's.
    let replayed_text = serde_json::to_string(&rebuilt["message"]).unwrap();
    assert_eq!(replayed_text, serde_json::to_string(answer).unwrap());
    let user = &stored["messages"][0];
    assert_eq!(user, &events[2].json()["input_message"]);
}

async fn a_client_that_disconnects_does_not_stop_the_generation(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("first".into()),
        Step::Hold,
        Step::Text(" second".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let mut reader = start(&app, &token, "hi").await;
    let seen = reader.until(is_append).await;
    let id = conversation_of(&seen);
    drop(reader);
    llm.release();
    let c = wait_for_status(&app, &token, &id, "finished_successfully").await;
    assert_eq!(c["messages"][1]["content"]["parts"][0], "first second");
    // The title is chosen after the answer is saved.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while app.conversation(&token, &id).await["title"] != "Fake Title" {
        assert!(tokio::time::Instant::now() < deadline, "no title in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn resume_from_last_event_id_has_no_gap_and_no_duplicate(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("one".into()),
        Step::Text(" two".into()),
        Step::Hold,
        Step::Text(" three".into()),
        Step::Text(" four".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let mut reader = start(&app, &token, "count").await;
    let mut first_part = reader.until(is_append).await;
    first_part.extend(reader.until(is_append).await);
    let id = conversation_of(&first_part);
    let resume_token = first_part[1].json()["token"].as_str().unwrap().to_owned();
    let last_id = first_part.last().unwrap().id.clone().unwrap();
    // The connection drops here; the client reconnects after the last id.
    drop(reader);
    let res = app
        .resume_stream(
            &format!("/api/v1/conversations/{id}/stream"),
            &token,
            &resume_token,
            Some(&last_id),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut resumed = SseReader::new(res);
    llm.release();
    let rest = resumed.rest().await;
    let mut all = first_part.clone();
    all.extend(rest.clone());
    let ids: Vec<usize> = all
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=all.len()).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    let rebuilt = replay(&all);
    assert_eq!(
        rebuilt["message"]["content"]["parts"][0],
        "one two three four"
    );
    let c = app.conversation(&token, &id).await;
    assert_eq!(rebuilt["message"], c["messages"][1]);
    // After the end, within the retention time, the whole stream replays.
    let again = app
        .resume_stream(
            &format!("/backend-api/conversation/{id}/stream"),
            &token,
            &resume_token,
            None,
        )
        .await;
    assert_eq!(again.status(), 200);
    let replayed = SseReader::new(again).rest().await;
    assert_eq!(replayed, all);
}

async fn resume_needs_the_owner_and_the_streams_resume_token(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let (id, events) = app.chat(&ada, "hi").await;
    let token = events[1].json()["token"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/conversations/{id}/stream");
    let resume = |bearer: String, resume_token: Option<String>, last: Option<&'static str>| {
        let mut req = app.client.get(app.url(&path)).bearer_auth(bearer);
        if let Some(t) = resume_token {
            req = req.header("x-resume-token", t);
        }
        if let Some(l) = last {
            req = req.header("last-event-id", l);
        }
        req.send()
    };
    // Another user, even holding the token, finds nothing.
    error_body(
        resume(bob.clone(), Some(token.clone()), None)
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    // Bob's own conversation does not take Ada's token.
    let (bobs, _) = app.chat(&bob, "mine").await;
    let res = app
        .client
        .get(app.url(&format!("/api/v1/conversations/{bobs}/stream")))
        .bearer_auth(&bob)
        .header("x-resume-token", &token)
        .send()
        .await
        .unwrap();
    error_body(res, 403, "FORBIDDEN").await;
    // The owner needs the token, a real one, and an id the stream gave.
    let missing = error_body(
        resume(ada.clone(), None, None).await.unwrap(),
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(missing["field"], "X-Resume-Token");
    error_body(
        resume(ada.clone(), Some(ada.clone()), None).await.unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    // One character of the signature changed (never a no-op).
    let at = token.len() - 10;
    let swap = if &token[at..=at] == "x" { "y" } else { "x" };
    let tampered = format!("{}{swap}{}", &token[..at], &token[at + 1..]);
    error_body(
        resume(ada.clone(), Some(tampered), None).await.unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    error_body(
        resume(ada.clone(), Some(token.clone()), Some("9999"))
            .await
            .unwrap(),
        422,
        "VALIDATION_ERROR",
    )
    .await;
    error_body(
        resume(ada.clone(), Some(token.clone()), Some("abc"))
            .await
            .unwrap(),
        422,
        "VALIDATION_ERROR",
    )
    .await;
    // No access token at all.
    let res = app
        .client
        .get(app.url(&path))
        .header("x-resume-token", &token)
        .send()
        .await
        .unwrap();
    error_body(res, 401, "AUTH_REQUIRED").await;
    // The last event id of the stream gives an empty, finished stream.
    let last = events.last().unwrap().id.clone().unwrap();
    let res = app
        .client
        .get(app.url(&path))
        .bearer_auth(&ada)
        .header("x-resume-token", &token)
        .header("last-event-id", last)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(SseReader::new(res).rest().await.is_empty());
}

async fn stop_ends_the_answer_as_partial_and_drops_the_upstream(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("partial answer".into()),
        Step::Stall,
    ]));
    let app = spawn_chat(backend, &llm, &[("CONFAB__LLM__IDLE_TIMEOUT_MS", "60000")]);
    let token = app.user("ada").await;
    let mut reader = start(&app, &token, "go on").await;
    let seen = reader.until(is_append).await;
    let id = conversation_of(&seen);
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/conversations/{id}/stream"),
            &token,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    assert!(
        llm.wait_for_disconnect(Duration::from_secs(5)).await,
        "the upstream request was dropped"
    );
    // The stop answered after the answer was saved.
    let c = app.conversation(&token, &id).await;
    let answer = &c["messages"][1];
    assert_eq!(answer["status"], "finished_partial_completion");
    assert_eq!(answer["content"]["parts"][0], "partial answer");
    assert_eq!(answer["end_turn"], false);
    let rest = reader.rest().await;
    let kinds: Vec<Option<String>> = rest.iter().map(confab_e2e::chat::SseEvent::kind).collect();
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    assert!(kinds.contains(&Some("message_stream_complete".into())));
    let mut all = seen;
    all.extend(rest);
    assert_eq!(replay(&all)["message"], *answer);
    // Nothing runs any more.
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/conversations/{id}/stream"),
            &token,
            None,
        )
        .await;
    error_body(res, 404, "NOT_FOUND").await;
}

/// The model's server keeps its connections (as the fake does): an answer
/// read to its end leaves its connection to the next answer on the same
/// worker, so six answers one after the other take at most one connection
/// per worker, not six.
async fn answers_read_to_their_end_leave_their_connection_for_the_next(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(
        backend,
        &llm,
        &[
            ("CONFAB__LLM__TITLE_GENERATION", "false"),
            ("CONFAB__SERVER__WORKERS", "2"),
        ],
    );
    let token = app.user("ada").await;
    for i in 0..6 {
        let mut reader = start(&app, &token, &format!("question {i}")).await;
        let rest = reader.rest().await;
        assert_eq!(rest.last().unwrap().data, "[DONE]");
    }
    assert_eq!(llm.requests().len(), 6);
    assert!(
        (1..=2).contains(&llm.connections()),
        "{} connections for 6 answers",
        llm.connections()
    );
    assert_eq!(llm.disconnects(), 0);
}

/// Runs one answer against a failing upstream: it ends `failed` with the
/// text saved so far, an `error` event with `code`, then `[DONE]`, and no
/// upstream text anywhere.
async fn fails_with(
    backend: Backend,
    script: Script,
    code: &str,
    saved: &str,
    extra: &[(&str, &str)],
) {
    let llm = FakeLlm::start();
    llm.push(script);
    let app = spawn_chat(backend, &llm, extra);
    let token = app.user("ada").await;
    let (id, events) = app.chat(&token, "hello").await;
    let n = events.len();
    assert_eq!(events[n - 1].data, "[DONE]");
    let error = events[n - 2].json();
    assert_eq!(error["type"], "error", "{events:?}");
    assert_eq!(error["error"]["code"], code);
    assert_eq!(error["conversation_id"], id.as_str());
    assert!(
        !events
            .iter()
            .any(|e| e.kind().as_deref() == Some("message_stream_complete"))
    );
    let c = app.conversation(&token, &id).await;
    let answer = &c["messages"][1];
    assert_eq!(answer["status"], "failed");
    assert_eq!(answer["content"]["parts"][0], saved);
    assert_eq!(replay(&events)["message"], *answer);
    let everything = format!("{events:?}{c}");
    assert!(
        !everything.contains("UPSTREAM-SECRET"),
        "upstream text leaked"
    );
    // A failed answer frees the conversation for the next message.
    let res = app
        .client
        .post(app.url(&format!("/api/v1/conversations/{id}/messages")))
        .bearer_auth(&token)
        .header("accept", "application/json")
        .json(&message_body("again"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn upstream_500_fails_the_answer_without_leaking_its_body(backend: Backend) {
    let script = Script::Status(
        500,
        r#"{"error":{"message":"UPSTREAM-SECRET internal trace"}}"#.into(),
    );
    fails_with(backend, script, "UPSTREAM_ERROR", "", &[]).await;
    assert!(
        captured_logs().contains("UPSTREAM-SECRET"),
        "the upstream body is logged for operators"
    );
}

async fn malformed_chunk_fails_the_answer(backend: Backend) {
    let script = Script::Stream(vec![
        Step::Text("saved".into()),
        Step::Raw("data: {\"choices\": UPSTREAM-SECRET\n\n".into()),
        Step::Done,
    ]);
    fails_with(backend, script, "UPSTREAM_ERROR", "saved", &[]).await;
}

async fn stalled_upstream_times_out(backend: Backend) {
    let script = Script::Stream(vec![Step::Text("before the stall".into()), Step::Stall]);
    fails_with(
        backend,
        script,
        "UPSTREAM_TIMEOUT",
        "before the stall",
        &[("CONFAB__LLM__IDLE_TIMEOUT_MS", "300")],
    )
    .await;
}

async fn upstream_closing_without_done_fails_the_answer(backend: Backend) {
    let script = Script::Stream(vec![Step::Text("cut".into()), Step::Close]);
    fails_with(backend, script, "UPSTREAM_ERROR", "cut", &[]).await;
}

/// A model server that breaks HTTP's chunked framing after a delta (a
/// chunk size that is no number, a chunk longer than its size): the
/// answer fails with what came before, and none of the upstream's bytes
/// after the break reach the client.
async fn upstream_breaking_its_chunked_framing_fails_the_answer(backend: Backend) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let event = format!(
        "data: {}\n\n",
        json!({"choices": [{"delta": {"content": "cut"}}]})
    );
    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
    for broken in [
        "zz\r\ndata: UPSTREAM-SECRET\r\n".to_owned(),
        format!("2\r\n{event}\r\n"),
    ] {
        let script = Script::Raw(vec![
            Step::Raw(head.to_owned()),
            Step::Raw(chunk.clone()),
            Step::Raw(broken),
        ]);
        fails_with(backend, script, "UPSTREAM_ERROR", "cut", &[]).await;
    }
}

async fn json_mode_maps_an_upstream_failure_to_502(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Status(503, "UPSTREAM-SECRET overloaded".into()));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let res = app
        .client
        .post(app.url("/api/v1/conversations"))
        .bearer_auth(&token)
        .header("accept", "application/json")
        .json(&message_body("hello"))
        .send()
        .await
        .unwrap();
    let error = error_body(res, 502, "UPSTREAM_ERROR").await;
    assert!(!error.to_string().contains("UPSTREAM-SECRET"));
}

async fn concurrent_generation_cap_is_429(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("slow".into()),
        Step::Hold,
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(
        backend,
        &llm,
        &[("CONFAB__GENERATION__MAX_CONCURRENT_PER_USER", "1")],
    );
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    let mut first = start(&app, &ada, "one").await;
    first.until(is_append).await;
    let res = app
        .send_message("/api/v1/conversations", &ada, &message_body("two"))
        .await;
    let retry = res.headers().get("retry-after").cloned();
    error_body(res, 429, "RATE_LIMITED").await;
    assert!(retry.is_some(), "Retry-After on the 429");
    // Another user is not affected.
    let (_, events) = app.chat(&bob, "mine").await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    // The refused send stored nothing.
    let list: Value = app
        .get_auth("/api/v1/conversations", &ada)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    llm.release();
    first.rest().await;
    let (_, events) = app.chat(&ada, "three").await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

async fn a_busy_conversation_refuses_another_message(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("busy".into()),
        Step::Hold,
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let mut reader = start(&app, &token, "one").await;
    let id = conversation_of(&reader.until(is_append).await);
    let path = format!("/api/v1/conversations/{id}/messages");
    error_body(
        app.send_message(&path, &token, &message_body("two")).await,
        409,
        "CONFLICT",
    )
    .await;
    llm.release();
    reader.rest().await;
    let c = app.conversation(&token, &id).await;
    assert_eq!(
        c["messages"].as_array().unwrap().len(),
        2,
        "the refused message was not stored"
    );
}

async fn keep_alive_comments_flow_while_the_model_is_silent(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Delay(Duration::from_millis(2500)),
        Step::Text("finally".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let mut reader = start(&app, &token, "think").await;
    let events = reader.rest().await;
    assert!(
        reader.comments >= 1,
        "a keep-alive comment during the silence"
    );
    assert_eq!(replay(&events)["message"]["content"]["parts"][0], "finally");
}

async fn title_falls_back_to_the_first_words_when_the_title_call_fails(backend: Backend) {
    let llm = FakeLlm::start();
    llm.set_title(None);
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let (id, events) = app
        .chat(&token, "How do   I cache\nsessions in Redis?")
        .await;
    let title = events
        .iter()
        .find(|e| e.kind().as_deref() == Some("title_generation"))
        .unwrap()
        .json();
    assert_eq!(title["title"], "How do I cache");
    assert_eq!(
        app.conversation(&token, &id).await["title"],
        "How do I cache"
    );
    assert_eq!(llm.title_requests(), 1);
    // A follow-up message in the same conversation is not retitled.
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &message_body("more"),
        )
        .await;
    let events = SseReader::new(res).rest().await;
    assert!(
        !events
            .iter()
            .any(|e| e.kind().as_deref() == Some("title_generation"))
    );
    assert_eq!(llm.title_requests(), 1);
}

async fn token_cap_ends_the_answer_as_partial(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::reply(&["a", "b", "c", "d", "e"]));
    let app = spawn_chat(backend, &llm, &[("CONFAB__LLM__MAX_TOKENS", "3")]);
    let token = app.user("ada").await;
    let (id, events) = app.chat(&token, "letters").await;
    let c = app.conversation(&token, &id).await;
    assert_eq!(c["messages"][1]["status"], "finished_partial_completion");
    assert_eq!(c["messages"][1]["content"]["parts"][0], "abc");
    assert_eq!(replay(&events)["message"], c["messages"][1]);
    assert_eq!(llm.requests()[0]["max_tokens"], 3);
}

async fn second_message_sends_the_history_with_the_system_prompt(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::reply(&["Paris."]));
    llm.push(Script::reply(&["About 2 million."]));
    let app = spawn_chat(
        backend,
        &llm,
        &[("CONFAB__LLM__SYSTEM_PROMPT", "Be brief.")],
    );
    let token = app.user("ada").await;
    let (id, _) = app.chat(&token, "Capital of France?").await;
    let body = json!({
        "conversation_id": id,
        "messages": [{"id": "msg_2", "role": "user", "content": {"content_type": "text", "parts": ["Population?"]}}],
        "metadata": {"temperature": 0.3},
    });
    let res = app
        .send_message("/backend-api/f/conversation", &token, &body)
        .await;
    assert_eq!(res.status(), 200);
    let events = SseReader::new(res).rest().await;
    assert_eq!(events[2].json()["input_message"]["id"], "msg_2");
    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    let sent = &requests[1];
    assert_eq!(sent["model"], MODEL);
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["temperature"], 0.3);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "Population?"},
        ])
    );
    let auth = llm
        .headers_of_last()
        .into_iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v);
    assert_eq!(
        auth.as_deref(),
        Some("Bearer sk-test-upstream-key-0123456789")
    );
    let c = app.conversation(&token, &id).await;
    let m = c["messages"].as_array().unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(m[2]["metadata"]["parent_id"], m[1]["id"]);
    assert_eq!(m[3]["metadata"]["parent_id"], "msg_2");
    // The same message id again is a conflict, not a second message.
    error_body(
        app.send_message("/backend-api/f/conversation", &token, &body)
            .await,
        409,
        "CONFLICT",
    )
    .await;
}

async fn no_upstream_key_or_token_in_the_logs(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let (_, events) = app.chat(&token, "secret-free logs please").await;
    let resume = events[1].json()["token"].as_str().unwrap().to_owned();
    let logs = captured_logs();
    assert!(!logs.contains("sk-test-upstream-key-0123456789"));
    assert!(!logs.contains(&resume));
    assert!(!logs.contains(&token));
    assert!(
        !logs.contains("secret-free logs please"),
        "message text is not logged"
    );
}

async fn shutdown_saves_the_partial_answer_and_ends_the_stream(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("half an answer".into()),
        Step::Stall,
    ]));
    let mut app = spawn_chat(
        backend,
        &llm,
        &[
            ("CONFAB__LLM__IDLE_TIMEOUT_MS", "60000"),
            ("CONFAB__SERVER__SHUTDOWN_TIMEOUT_SECS", "1"),
        ],
    );
    let token = app.user("ada").await;
    let mut reader = start(&app, &token, "long question").await;
    let seen = reader.until(is_append).await;
    let id = conversation_of(&seen);
    // Shutdown: the running answer gets server.shutdown_timeout_secs to
    // complete; the model stays silent, so it is then saved and its
    // stream ended.
    app.stop();
    let rest = reader.rest().await;
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    let error = rest[rest.len() - 2].json();
    assert_eq!(error["error"]["code"], "UNAVAILABLE");
    let store = app.db.store().await;
    let messages = confab_e2e::all_messages(&store, id.parse().unwrap()).await;
    assert_eq!(messages[1].status, confab_domain::MessageStatus::Failed);
    assert_eq!(messages[1].content.parts(), ["half an answer"]);
    assert!(llm.wait_for_disconnect(Duration::from_secs(5)).await);
}

async fn a_rename_during_the_first_answer_is_kept(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("wait".into()),
        Step::Hold,
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let mut reader = start(&app, &token, "name me").await;
    let id = conversation_of(&reader.until(is_append).await);
    let res = app
        .call(
            Method::PATCH,
            &format!("/api/v1/conversations/{id}"),
            &token,
            Some(&json!({"title": "My own title"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    llm.release();
    let rest = reader.rest().await;
    assert!(
        !rest
            .iter()
            .any(|e| e.kind().as_deref() == Some("title_generation"))
    );
    assert_eq!(app.conversation(&token, &id).await["title"], "My own title");
}

/// Opens a resumed stream of conversation `id` for `bearer`.
async fn open_reader(
    app: &confab_e2e::TestApp,
    bearer: &str,
    id: &str,
    resume_token: &str,
) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/api/v1/conversations/{id}/stream")))
        .bearer_auth(bearer)
        .header("x-resume-token", resume_token)
        .send()
        .await
        .unwrap()
}

/// Starts an answer that holds after its first text, and returns the
/// conversation's id, the stream's resume token and the sender's reader.
async fn held_answer(
    app: &confab_e2e::TestApp,
    llm: &FakeLlm,
    bearer: &str,
) -> (String, String, SseReader) {
    llm.push(Script::Stream(vec![
        Step::Text("held".into()),
        Step::Hold,
        Step::Text(" then done".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let mut reader = start(app, bearer, "hold on").await;
    let first = reader.until(is_append).await;
    let id = conversation_of(&first);
    let token = first[1].json()["token"].as_str().unwrap().to_owned();
    (id, token, reader)
}

/// Denial of service by one user: hundreds of readers of their own answer
/// would take what every instance shares. Readers are capped per answer
/// and per user (per instance); the refusal is a clear 429 before any
/// stream starts, another user is unaffected, a closed reader frees its
/// place, and every admitted reader gets the whole answer.
async fn stream_readers_are_capped_per_answer_and_per_user(backend: Backend) {
    readers_capped(backend, false).await;
    readers_capped(backend, true).await;
}

/// The reader caps, with the stream log in process or in Redis.
async fn readers_capped(backend: Backend, redis: bool) {
    let llm = FakeLlm::start();
    let url = confab_e2e::redis_url();
    let prefix = format!("confab-e2e:{}:", uuid::Uuid::new_v4());
    let mut vars = vec![
        ("CONFAB__GENERATION__MAX_READERS_PER_ANSWER", "3"),
        ("CONFAB__GENERATION__MAX_READERS_PER_USER", "4"),
        ("CONFAB__LLM__TITLE_GENERATION", "false"),
        // The answers hold while the test opens readers.
        ("CONFAB__LLM__IDLE_TIMEOUT_MS", "30000"),
    ];
    if redis {
        vars.push(("REDIS_URL", &url));
        vars.push(("CONFAB__REDIS__KEY_PREFIX", &prefix));
    }
    let app = spawn_chat(backend, &llm, &vars);
    let ada = app.user("ada").await;
    let bob = app.user("bob").await;
    // The send's own stream counts: 1 of 3 for this answer, 1 of 4 for Ada.
    let (first, first_token, sender) = held_answer(&app, &llm, &ada).await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let res = open_reader(&app, &ada, &first, &first_token).await;
        assert_eq!(res.status(), 200, "within the cap");
        readers.push(SseReader::new(res));
    }
    let refused = open_reader(&app, &ada, &first, &first_token).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = error_body(refused, 429, "RATE_LIMITED").await;
    assert!(
        body["message"].as_str().unwrap().contains("one answer"),
        "{body}"
    );
    // A second answer's send always opens its stream (4 of 4 for Ada)...
    let (second, second_token, second_sender) = held_answer(&app, &llm, &ada).await;
    // ...but a reader of it is one more than Ada may hold.
    let refused = open_reader(&app, &ada, &second, &second_token).await;
    let body = error_body(refused, 429, "RATE_LIMITED").await;
    assert!(
        body["message"].as_str().unwrap().contains("one user"),
        "{body}"
    );
    // Bob's streams are his own: he reads his answer from three readers.
    let (bobs, bobs_token, bobs_sender) = held_answer(&app, &llm, &bob).await;
    let mut bobs_readers = Vec::new();
    for _ in 0..2 {
        let res = open_reader(&app, &bob, &bobs, &bobs_token).await;
        assert_eq!(res.status(), 200, "another user is not refused");
        bobs_readers.push(SseReader::new(res));
    }
    // A reader that goes away gives its place back.
    drop(readers.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        let res = open_reader(&app, &ada, &second, &second_token).await;
        if res.status() == 200 {
            break res;
        }
        error_body(res, 429, "RATE_LIMITED").await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed reader's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    readers.push(SseReader::new(again));
    readers.extend(bobs_readers);
    // Every admitted reader gets the whole answer, and the senders the
    // rest of theirs.
    llm.release();
    assert_eq!(readers.len(), 4);
    for mut reader in readers {
        let events = reader.rest().await;
        assert_eq!(events.last().unwrap().data, "[DONE]");
        let text = replay(&events)["message"]["content"]["parts"][0].clone();
        assert_eq!(text, "held then done");
    }
    for mut sender in [sender, second_sender, bobs_sender] {
        assert_eq!(sender.rest().await.last().unwrap().data, "[DONE]");
    }
}

/// The served document's stream schemas, compiled: each event component
/// (`StreamEvent`'s `anyOf`) with the schema of the JSON its data holds.
struct StreamSchemas {
    any: jsonschema::Validator,
    events: Vec<(String, jsonschema::Validator, Option<jsonschema::Validator>)>,
}

impl StreamSchemas {
    fn new(doc: &Value) -> Self {
        let components = doc["components"].clone();
        let compile = |pointer: String| {
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&json!({"$ref": pointer, "components": components}))
                .unwrap_or_else(|e| panic!("{pointer}: {e}"))
        };
        let schemas = &doc["components"]["schemas"];
        let events = schemas["StreamEvent"]["anyOf"]
            .as_array()
            .expect("StreamEvent is anyOf its events")
            .iter()
            .map(|r| {
                let pointer = r["$ref"].as_str().unwrap().to_owned();
                let name = pointer.rsplit('/').next().unwrap().to_owned();
                let content = schemas[&name]["properties"]["data"]
                    .get("contentSchema")
                    .map(|_| compile(format!("{pointer}/properties/data/contentSchema")));
                (name, compile(pointer), content)
            })
            .collect();
        Self {
            any: compile("#/components/schemas/StreamEvent".to_owned()),
            events,
        }
    }

    /// The one event component `e` is (its envelope and its data both
    /// valid); panics when none or several are.
    fn check(&self, e: &confab_e2e::chat::SseEvent) -> String {
        let mut envelope = json!({
            "event": e.event.as_deref().unwrap_or("message"),
            "data": e.data,
        });
        if let Some(id) = &e.id {
            envelope["id"] = json!(id);
        }
        if let Err(error) = self.any.validate(&envelope) {
            panic!("{envelope} is no StreamEvent: {error}");
        }
        let data: Option<Value> = serde_json::from_str(&e.data).ok();
        let matching: Vec<&str> = self
            .events
            .iter()
            .filter(|(_, shape, content)| {
                shape.is_valid(&envelope)
                    && content
                        .as_ref()
                        .is_none_or(|c| data.as_ref().is_some_and(|d| c.is_valid(d)))
            })
            .map(|(name, _, _)| name.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "{envelope} matches {matching:?}");
        matching[0].to_owned()
    }
}

async fn every_event_of_real_streams_matches_the_documents_schemas(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::reply(&["Schemas", " \"all\"\n the way é 🎉"]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let doc: Value = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = StreamSchemas::new(&doc);
    // A new conversation's stream: its title, and a complete answer.
    let (id, first) = app.chat(&token, "hi").await;
    // The first stream read again on the seed surface.
    let resume_token = first[1].json()["token"].as_str().unwrap().to_owned();
    let res = app
        .resume_stream(
            &format!("/backend-api/conversation/{id}/stream"),
            &token,
            &resume_token,
            None,
        )
        .await;
    assert_eq!(
        res.status(),
        200,
        "a finished stream replays within its retention"
    );
    let replayed = SseReader::new(res).rest().await;
    assert_eq!(replayed.len(), first.len());
    // A follow-up the model fails: the error event.
    llm.push(Script::Status(500, "{}".into()));
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &message_body("again"),
        )
        .await;
    assert_eq!(res.status(), 200);
    let failed = SseReader::new(res).rest().await;
    let mut seen = std::collections::BTreeSet::new();
    for e in first.iter().chain(&failed).chain(&replayed) {
        seen.insert(schemas.check(e));
    }
    let every: std::collections::BTreeSet<String> =
        schemas.events.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(seen, every, "every kind of event was seen and checked");
    // A document that says less is caught: an event with an undocumented
    // member matches no schema.
    let mut extra = first[2].clone();
    let mut data = extra.json();
    data["surprise"] = json!(1);
    extra.data = data.to_string();
    let envelope_ok = schemas.events.iter().any(|(_, shape, content)| {
        shape.is_valid(&json!({"event": "message", "data": extra.data}))
            && content.as_ref().is_some_and(|c| c.is_valid(&data))
    });
    assert!(!envelope_ok, "an undocumented member is refused");
}
