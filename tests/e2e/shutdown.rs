//! A graceful shutdown, seen from outside the process (`confab serve` and
//! SIGTERM): `/readyz` turns 503 while everything else is still served
//! for `server.drain_secs`; then the listener closes and running answers
//! complete; a second signal stops them at once, each saved with its text
//! and its stream closed.

use std::sync::Arc;
use std::time::Duration;

use confab_domain::MessageStatus;
use confab_e2e::chat::{SseReader, conversation_of, held_between, is_append, message_body};
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_e2e::{TestApp, all_messages, spawn_process};
use confab_sql::testing::TestDatabase;
use serde_json::Value;
use tokio::time::Instant;

async fn instance(llm: &FakeLlm, extra: &[(&str, &str)]) -> TestApp {
    let base = llm.base_url();
    let mut vars = vec![
        ("CONFAB_LLM_PROVIDER", "openai"),
        ("CONFAB_LLM_BASE_URL", base.as_str()),
        ("CONFAB_LLM_MODEL", "fake-model"),
        ("CONFAB__LLM__TITLE_GENERATION", "false"),
        ("CONFAB__LLM__IDLE_TIMEOUT_MS", "60000"),
        ("CONFAB__GENERATION__FLUSH_INTERVAL_MS", "50"),
    ];
    vars.extend_from_slice(extra);
    spawn_process(Arc::new(TestDatabase::sqlite()), &vars).await
}

/// Starts an answer the model holds after `partial`; returns its stream
/// (read to its first text) and its conversation.
async fn held_answer(
    app: &TestApp,
    llm: &FakeLlm,
    token: &str,
) -> (SseReader, Vec<confab_e2e::chat::SseEvent>, String) {
    llm.push(held_between("partial", " answer"));
    let res = app
        .send_message("/api/v1/conversations", token, &message_body("hello"))
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let seen = reader.until(is_append).await;
    let id = conversation_of(&seen);
    (reader, seen, id)
}

/// Whether a TCP connection to `app`'s address is refused.
async fn refused(app: &TestApp) -> bool {
    let addr = app.address.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test]
async fn sigterm_drains_then_stops_listening_and_lets_running_answers_complete() {
    let llm = FakeLlm::start();
    let mut app = instance(
        &llm,
        &[
            // Long enough for the checks below on a loaded machine.
            ("CONFAB__SERVER__DRAIN_SECS", "6"),
            ("CONFAB__SERVER__SHUTDOWN_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let token = app.user("ada").await;
    let (mut reader, mut seen, id) = held_answer(&app, &llm, &token).await;
    app.terminate();

    // Draining (once the signal is handled): /readyz says so, every other
    // request is served, each on a connection that then closes.
    let ready = crate::rolling::not_ready(&app).await;
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    assert_eq!(body["error"]["message"], "not ready: shutting down");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["connection"], "close");
    // A send that arrives while draining is taken and answered whole.
    llm.push(Script::reply(&["late", " but whole"]));
    let (_, late) = app.chat(&token, "one more").await;
    assert_eq!(late.last().unwrap().data, "[DONE]");
    assert!(
        late.iter()
            .any(|e| e.data.contains("message_stream_complete")),
        "the send during the drain completed: {late:?}"
    );

    // After the drain the listener is closed...
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused(&app).await {
        assert!(Instant::now() < deadline, "still listening after the drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... while the running answer goes on, and completes.
    llm.release();
    seen.extend(reader.rest().await);
    assert_eq!(seen.last().unwrap().data, "[DONE]");
    assert_eq!(
        seen[seen.len() - 2].kind().as_deref(),
        Some("message_stream_complete")
    );
    assert!(!seen.iter().any(|e| e.kind().as_deref() == Some("error")));
    let status = app.exited().await;
    assert!(status.success(), "exit status {status}");
    let store = app.db.store().await;
    let messages = all_messages(&store, id.parse().unwrap()).await;
    assert_eq!(messages[1].status, MessageStatus::FinishedSuccessfully);
    assert_eq!(messages[1].content.parts(), ["partial answer"]);
}

#[tokio::test]
async fn a_second_signal_stops_running_answers_at_once_each_saved() {
    let llm = FakeLlm::start();
    let mut app = instance(&llm, &[("CONFAB__SERVER__SHUTDOWN_TIMEOUT_SECS", "600")]).await;
    let token = app.user("ada").await;
    let (mut reader, _, id) = held_answer(&app, &llm, &token).await;
    app.terminate();
    // No drain: the listener closes at once, the answer is waited for.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused(&app).await {
        assert!(Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The second signal: the answer is stopped, saved, and its stream
    // closed, long before the 600 s.
    app.terminate();
    let rest = reader.rest().await;
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    let error = rest[rest.len() - 2].json();
    assert_eq!(error["error"]["code"], "UNAVAILABLE");
    let status = app.exited().await;
    assert!(status.success(), "exit status {status}");
    let store = app.db.store().await;
    let messages = all_messages(&store, id.parse().unwrap()).await;
    assert_eq!(messages[1].status, MessageStatus::Failed);
    assert_eq!(messages[1].content.parts(), ["partial"]);
}
