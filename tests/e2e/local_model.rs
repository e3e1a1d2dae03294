//! The built-in model answering through the HTTP API (the real
//! SmolLM2-135M-Instruct file that `make model` fetches).

use confab_e2e::chat::{SseReader, conversation_of, is_append, message_body, replay};
use confab_e2e::{TestApp, error_body, spawn_app_with};
use confab_sql::Backend;
use reqwest::Method;

on_both_backends!(
    readiness_reports_the_built_in_model,
    the_built_in_model_answers_through_the_api,
    the_built_in_model_ends_its_turn_as_finished,
    the_built_in_model_cut_at_the_cap_is_partial,
    a_full_built_in_model_refuses_a_send_with_503_and_stores_nothing,
    stop_works_mid_generation_on_the_built_in_model,
);

const MODEL_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

fn spawn_local(backend: Backend, max_tokens: &str) -> TestApp {
    spawn_local_with(backend, max_tokens, &[])
}

fn spawn_local_with(backend: Backend, max_tokens: &str, extra: &[(&str, &str)]) -> TestApp {
    assert!(
        std::path::Path::new(MODEL_PATH).exists(),
        "the built-in model is missing: run `make model` (scripts/fetch-model.sh)"
    );
    spawn_app_with(
        backend,
        &[
            ("CONFAB_LLM_PROVIDER", "local"),
            ("CONFAB__LLM__LOCAL__MODEL_PATH", MODEL_PATH),
            ("CONFAB__LLM__MAX_TOKENS", max_tokens),
            ("CONFAB__LLM__TITLE_GENERATION", "false"),
            ("CONFAB__GENERATION__FLUSH_INTERVAL_MS", "50"),
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
    )
}

/// Sends `text` in a new conversation and reads the answer to its end;
/// the stored answer.
async fn answer(app: &TestApp, token: &str, text: &str) -> serde_json::Value {
    let (id, events) = app.chat(token, text).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let c = app.conversation(token, &id).await;
    let answer = c["messages"][1].clone();
    assert_eq!(replay(&events)["message"], answer);
    let text = answer["content"]["parts"][0].as_str().unwrap();
    assert!(!text.trim().is_empty(), "the model said something");
    assert!(!text.contains('\u{fffd}'), "no broken UTF-8: {text:?}");
    answer
}

async fn the_built_in_model_ends_its_turn_as_finished(backend: Backend) {
    // A short question with room to spare: the model ends its turn
    // (`<|im_end|>`) well before the cap.
    let app = spawn_local(backend, "96");
    let token = app.user("ada").await;
    let answer = answer(
        &app,
        &token,
        "What is the capital of France? Answer in one sentence.",
    )
    .await;
    assert_eq!(answer["status"], "finished_successfully", "{answer}");
    assert_eq!(answer["end_turn"], true, "{answer}");
}

async fn the_built_in_model_cut_at_the_cap_is_partial(backend: Backend) {
    let app = spawn_local(backend, "3");
    let token = app.user("ada").await;
    let answer = answer(
        &app,
        &token,
        "Write a long story about a dragon who learns to bake bread.",
    )
    .await;
    assert_eq!(answer["status"], "finished_partial_completion", "{answer}");
}

async fn a_full_built_in_model_refuses_a_send_with_503_and_stores_nothing(backend: Backend) {
    // One generation at a time and none waiting: while one runs, another
    // send is refused before anything is stored.
    let app = spawn_local_with(
        backend,
        "400",
        &[
            ("CONFAB__LLM__LOCAL__MAX_CONCURRENT", "1"),
            ("CONFAB__LLM__LOCAL__MAX_WAITING", "0"),
        ],
    );
    let ada = app.user("ada").await;
    let res = app
        .send_message(
            "/api/v1/conversations",
            &ada,
            &message_body("Write a long story about a lighthouse keeper."),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let seen = reader.until(is_append).await;
    let id = conversation_of(&seen);

    let bob = app.user("bob").await;
    let refused = app
        .send_message("/api/v1/conversations", &bob, &message_body("Hello?"))
        .await;
    assert!(refused.headers().contains_key("retry-after"), "{refused:?}");
    error_body(refused, 503, "UNAVAILABLE").await;
    let list = app.get_auth("/api/v1/conversations", &bob).await;
    let list: serde_json::Value = list.json().await.unwrap();
    assert_eq!(list["total"], 0, "nothing stored: {list}");

    // Once the first ends, the model takes sends again.
    let path = format!("/api/v1/conversations/{id}/stream");
    assert_eq!(
        app.call(Method::DELETE, &path, &ada, None).await.status(),
        204
    );
    reader.rest().await;
    let (_, events) = app.chat(&bob, "Hello?").await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
}

async fn readiness_reports_the_built_in_model(backend: Backend) {
    let app = spawn_local(backend, "4");
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["llm"], "ok", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    // The models list says the same, with what the loaded file tells.
    let token = app.user("ada").await;
    let res = app.get_auth("/api/v1/models", &token).await;
    assert_eq!(res.status(), 200);
    let models: serde_json::Value = res.json().await.unwrap();
    let first = &models["items"][0];
    assert_eq!(first["provider"], "local", "{models}");
    assert_eq!(first["state"], "ready", "{models}");
    assert_eq!(first["default"], true, "{models}");
    assert!(
        first["context_length"].as_u64().is_some_and(|n| n >= 2048),
        "the GGUF header's context length: {models}"
    );
}

async fn the_built_in_model_answers_through_the_api(backend: Backend) {
    let app = spawn_local(backend, "12");
    let token = app.user("ada").await;
    let (id, events) = app.chat(&token, "What is the capital of France?").await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(
        events
            .iter()
            .any(|e| e.kind().as_deref() == Some("message_stream_complete"))
    );
    let c = app.conversation(&token, &id).await;
    let answer = &c["messages"][1];
    let status = answer["status"].as_str().unwrap();
    assert!(
        ["finished_successfully", "finished_partial_completion"].contains(&status),
        "{status}"
    );
    let text = answer["content"]["parts"][0].as_str().unwrap();
    assert!(!text.trim().is_empty(), "the model said something");
    assert!(!text.contains('\u{fffd}'), "no broken UTF-8: {text:?}");
    assert_eq!(replay(&events)["message"], *answer);
    assert!(
        answer["metadata"]["model_slug"]
            .as_str()
            .is_some_and(|m| m.contains("SmolLM2")),
        "{answer}"
    );
}

async fn stop_works_mid_generation_on_the_built_in_model(backend: Backend) {
    let app = spawn_local(backend, "400");
    let token = app.user("ada").await;
    let res = app
        .send_message(
            "/api/v1/conversations",
            &token,
            &message_body("Write a long story about a lighthouse keeper."),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let seen = reader.until(is_append).await;
    let id = conversation_of(&seen);
    let path = format!("/api/v1/conversations/{id}/stream");
    let res = app.call(Method::DELETE, &path, &token, None).await;
    assert_eq!(res.status(), 204);
    let c = app.conversation(&token, &id).await;
    let answer = &c["messages"][1];
    assert_eq!(answer["status"], "finished_partial_completion");
    assert!(!answer["content"]["parts"][0].as_str().unwrap().is_empty());
    reader.rest().await;
    // Nothing runs any more.
    error_body(
        app.call(Method::DELETE, &path, &token, None).await,
        404,
        "NOT_FOUND",
    )
    .await;
}
