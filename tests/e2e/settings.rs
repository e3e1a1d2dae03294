//! A conversation's own system prompt and default model (issue 15): set
//! when it starts or by `PATCH`, shown on read, used by every send in it.

use confab_e2e::chat::{MODEL, SseReader, message_body, spawn_chat};
use confab_e2e::error_body;
use confab_e2e::fake_llm::FakeLlm;
use confab_sql::Backend;
use serde_json::{Value, json};

on_both_backends!(
    a_conversation_keeps_its_own_system_prompt_and_model,
    settings_that_break_the_rules_are_refused,
    the_models_list_names_what_a_send_may_name,
);

/// The last answer request the model got (no title call).
fn last_request(llm: &FakeLlm) -> Value {
    llm.requests()
        .into_iter()
        .rev()
        .find(|r| !r.to_string().contains("a title for this conversation"))
        .expect("a chat request")
}

/// The system turn of `request`, if any.
fn system_turn(request: &Value) -> Option<String> {
    request["messages"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "system")
        .and_then(|m| m["content"].as_str().map(str::to_owned))
}

/// Starts a conversation with `body`, reads its stream, returns its id.
async fn start(app: &confab_e2e::TestApp, token: &str, body: &Value) -> String {
    let res = app.send_message("/api/v1/conversations", token, body).await;
    assert_eq!(res.status(), 200, "{body}");
    let events = SseReader::new(res).rest().await;
    events
        .iter()
        .find_map(|e| e.json()["conversation_id"].as_str().map(str::to_owned))
        .expect("a conversation id")
}

async fn a_conversation_keeps_its_own_system_prompt_and_model(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("pirate").await;
    let service_prompt = {
        start(&app, &token, &message_body("plain")).await;
        system_turn(&last_request(&llm))
    };

    // Started with its own prompt and model: both are used, and kept.
    let mut body = message_body("Ahoy?");
    body["system_prompt"] = json!("Answer as a pirate.");
    body["model"] = json!("other-model");
    let id = start(&app, &token, &body).await;
    let asked = last_request(&llm);
    assert_eq!(system_turn(&asked).as_deref(), Some("Answer as a pirate."));
    assert_eq!(asked["model"], "other-model");
    let read = app.conversation(&token, &id).await;
    assert_eq!(read["system_prompt"], "Answer as a pirate.");
    assert_eq!(read["model"], "other-model");
    app.send_to(&token, &id, &message_body("And then?")).await;
    let asked = last_request(&llm);
    assert_eq!(system_turn(&asked).as_deref(), Some("Answer as a pirate."));
    assert_eq!(asked["model"], "other-model", "the conversation's default");
    // A send naming a model uses it, and leaves the default alone.
    let mut named = message_body("Once with the default?");
    named["model"] = json!(MODEL);
    app.send_to(&token, &id, &named).await;
    assert_eq!(last_request(&llm)["model"], MODEL);
    // A regeneration goes by the conversation's settings too.
    app.send_to(&token, &id, &json!({"action": "variant"}))
        .await;
    let asked = last_request(&llm);
    assert_eq!(asked["model"], "other-model");
    assert_eq!(system_turn(&asked).as_deref(), Some("Answer as a pirate."));

    // PATCH changes them; "" and "default" go back to the service's.
    let res = app
        .patch_conversation(&token, &id, &json!({"system_prompt": "Answer in haiku."}))
        .await;
    assert_eq!(res.status(), 200);
    let meta: Value = res.json().await.unwrap();
    assert_eq!(meta["system_prompt"], "Answer in haiku.");
    assert_eq!(meta["model"], "other-model");
    app.send_to(&token, &id, &message_body("Autumn?")).await;
    assert_eq!(
        system_turn(&last_request(&llm)).as_deref(),
        Some("Answer in haiku.")
    );
    let res = app
        .patch_conversation(
            &token,
            &id,
            &json!({"system_prompt": "", "model": "default"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let meta: Value = res.json().await.unwrap();
    assert_eq!(meta["system_prompt"], Value::Null);
    assert_eq!(meta["model"], Value::Null);
    app.send_to(&token, &id, &message_body("Plainly?")).await;
    let asked = last_request(&llm);
    assert_eq!(system_turn(&asked), service_prompt);
    assert_eq!(asked["model"], MODEL);
    let read = app.conversation(&token, &id).await;
    assert_eq!(read["system_prompt"], Value::Null);
    assert_eq!(read["model"], Value::Null);
    // The backend-api detail shows them too.
    let res = app
        .patch_conversation(&token, &id, &json!({"model": "other-model"}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .get_auth(&format!("/backend-api/conversation/{id}"), &token)
        .await;
    let detail: Value = res.json().await.unwrap();
    assert_eq!(detail["model"], "other-model");
}

async fn settings_that_break_the_rules_are_refused(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("rulebreaker").await;
    let asked_before = llm.requests().len();
    for (prompt, status) in [
        (json!("   "), 422),
        (json!("x".repeat(20_001)), 422),
        (json!("nul\u{0}byte"), 422),
        (json!(""), 422),
        (json!(7), 400),
    ] {
        let mut body = message_body("hi");
        body["system_prompt"] = prompt.clone();
        let res = app
            .send_message("/api/v1/conversations", &token, &body)
            .await;
        assert_eq!(res.status(), status, "{prompt}");
        if status == 422 {
            let error = error_body(res, 422, "VALIDATION_ERROR").await;
            assert_eq!(error["field"], "system_prompt", "{prompt}");
        }
    }
    assert_eq!(
        llm.requests().len(),
        asked_before,
        "nothing reached the model"
    );
    let id = start(&app, &token, &message_body("fine")).await;
    // Only a new conversation takes a prompt in its send.
    let mut body = message_body("hi");
    body["system_prompt"] = json!("sneaky");
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &body,
        )
        .await;
    assert_eq!(res.status(), 400);
    for (patched, field) in [
        (json!({"model": "gpt-unknown"}), "model"),
        (json!({"model": "bad model!"}), "model"),
        (json!({"system_prompt": "  "}), "system_prompt"),
    ] {
        let res = app.patch_conversation(&token, &id, &patched).await;
        let error = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(error["field"], field, "{patched}");
    }
    for patched in [json!({"model": null}), json!({"system_prompt": null})] {
        let res = app.patch_conversation(&token, &id, &patched).await;
        assert_eq!(res.status(), 400, "{patched}");
    }
    let read = app.conversation(&token, &id).await;
    assert_eq!(read["system_prompt"], Value::Null);
    assert_eq!(read["model"], Value::Null);
    // Another user's conversation: a plain 404.
    let mallory = app.user("mallory").await;
    let res = app
        .patch_conversation(&mallory, &id, &json!({"system_prompt": "obey me"}))
        .await;
    let error = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(error.get("field"), None);
}

/// `GET /api/v1/models` (issue 16): the configured models, the default
/// first; each one it lists a send may name, and one it does not list is
/// refused. Without a model the list is empty.
async fn the_models_list_names_what_a_send_may_name(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let res = app.get("/api/v1/models").await;
    error_body(res, 401, "AUTH_REQUIRED").await;
    let token = app.user("modelle").await;
    let res = app.get_auth("/api/v1/models", &token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let list: Value = res.json().await.unwrap();
    assert_eq!(
        list,
        json!({"items": [
            {"id": MODEL, "provider": "openai", "state": "ready", "context_length": null, "default": true},
            {"id": "other-model", "provider": "openai", "state": "ready", "context_length": null, "default": false},
        ]})
    );
    for model in list["items"].as_array().unwrap() {
        let mut body = message_body("Which model?");
        body["model"] = model["id"].clone();
        start(&app, &token, &body).await;
        assert_eq!(last_request(&llm)["model"], model["id"]);
    }
    let mut body = message_body("And this one?");
    body["model"] = json!("unlisted-model");
    let res = app
        .send_message("/api/v1/conversations", &token, &body)
        .await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "model");

    let none = confab_e2e::spawn_app_with(backend, &[("CONFAB_LLM_PROVIDER", "none")]);
    let token = none.user("modelle").await;
    let list: Value = none
        .get_auth("/api/v1/models", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!({"items": []}));
}
