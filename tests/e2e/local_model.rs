//! The built-in model answering through the HTTP API (the real
//! SmolLM2-135M-Instruct file that `make model` fetches).

use confab_e2e::chat::{SseReader, message_body, replay};
use confab_e2e::{TestApp, error_body, spawn_app_with};
use confab_sql::Backend;
use reqwest::Method;

on_both_backends!(
    the_built_in_model_answers_through_the_api,
    stop_works_mid_generation_on_the_built_in_model,
);

const MODEL_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

fn spawn_local(backend: Backend, max_tokens: &str) -> TestApp {
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
        ],
    )
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
    let seen = reader
        .until(|e| e.event.as_deref() == Some("delta") && e.json()["v"][0]["o"] == "append")
        .await;
    let id = seen
        .iter()
        .find_map(|e| e.json()["conversation_id"].as_str().map(str::to_owned))
        .unwrap();
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
