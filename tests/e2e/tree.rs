//! Conversations as trees (issue 15): the current node, switching branch,
//! and a send continuing the branch it is switched to.

use confab_e2e::chat::{SseReader, message_body, spawn_chat};
use confab_e2e::error_body;
use confab_e2e::fake_llm::FakeLlm;
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    a_branch_switch_moves_the_history_and_the_next_prompt,
    a_branch_switch_names_a_message_of_the_conversation,
    an_edit_is_a_new_question_under_the_edited_ones_parent,
);

/// The ids of a history page's messages, in order.
fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Sends `text` into conversation `id` and reads its stream to the end.
async fn send(
    app: &confab_e2e::TestApp,
    token: &str,
    id: &str,
    text: &str,
) -> Vec<confab_e2e::chat::SseEvent> {
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            token,
            &message_body(text),
        )
        .await;
    assert_eq!(res.status(), 200, "send {text}");
    let events = SseReader::new(res).rest().await;
    assert!(
        events
            .iter()
            .any(|e| e.data.contains("message_stream_complete")),
        "{text}: the answer completed"
    );
    events
}

/// `PATCH` the conversation with `body`.
async fn patch(
    app: &confab_e2e::TestApp,
    token: &str,
    id: &str,
    body: &Value,
) -> reqwest::Response {
    app.call(
        Method::PATCH,
        &format!("/api/v1/conversations/{id}"),
        token,
        Some(body),
    )
    .await
}

/// The user texts of the last prompt the model was sent.
fn last_prompt(llm: &FakeLlm) -> Vec<String> {
    let requests = llm.requests();
    let last = requests.last().expect("a chat request");
    last["messages"]
        .as_array()
        .expect("prompt messages")
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn a_branch_switch_moves_the_history_and_the_next_prompt(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("brancher").await;
    let (id, _) = app.chat(&token, "first question").await;
    send(&app, &token, &id, "second question").await;
    let line = app.conversation(&token, &id).await;
    let first = ids(&line);
    assert_eq!(first.len(), 4);
    assert_eq!(line["current_node"], json!(first[3]), "the newest answer");

    // Back to the first answer: the history ends there.
    let res = patch(&app, &token, &id, &json!({"current_node": first[1]})).await;
    assert_eq!(res.status(), 200);
    let meta: Value = res.json().await.unwrap();
    assert_eq!(meta["current_node"], json!(first[1]));
    let switched = app.conversation(&token, &id).await;
    assert_eq!(ids(&switched), first[..2]);
    assert_eq!(switched["current_node"], json!(first[1]));

    // A send goes on from there: its prompt is that branch alone.
    let forked_events = send(&app, &token, &id, "another second question").await;
    assert_eq!(
        last_prompt(&llm),
        ["first question", "another second question"],
        "never the other branch"
    );
    let fork = app.conversation(&token, &id).await;
    let forked = ids(&fork);
    assert_eq!(forked.len(), 4);
    assert_eq!(forked[..2], first[..2]);
    assert!(!forked.contains(&first[2]) && !forked.contains(&first[3]));
    assert_eq!(fork["current_node"], json!(forked[3]));

    // An id from the branch left behind is still taken (409), before the
    // newest answer's stream is touched: it still replays whole.
    let reused = json!({"messages": [{"id": first[2], "role": "user",
        "content": {"content_type": "text", "parts": ["again?"]}}]});
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &reused,
        )
        .await;
    let body = error_body(res, 409, "CONFLICT").await;
    assert_eq!(body["field"], "messages[0].id");
    assert_eq!(ids(&app.conversation(&token, &id).await), forked);
    let resume_token = forked_events[1].json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .resume_stream(
            &format!("/api/v1/conversations/{id}/stream"),
            &token,
            &resume_token,
            None,
        )
        .await;
    assert_eq!(
        res.status(),
        200,
        "the newest answer's stream is still there"
    );
    let replayed = SseReader::new(res).rest().await;
    assert_eq!(replayed.last().map(|e| e.data.as_str()), Some("[DONE]"));

    // And back to the older branch, which is whole.
    let res = patch(&app, &token, &id, &json!({"current_node": first[3]})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ids(&app.conversation(&token, &id).await), first);
    // The backend-api detail is the same read.
    let res = app
        .get_auth(&format!("/backend-api/conversation/{id}"), &token)
        .await;
    let seed: Value = res.json().await.unwrap();
    assert_eq!(ids(&seed), first);
    assert_eq!(seed["current_node"], json!(first[3]));
}

async fn a_branch_switch_names_a_message_of_the_conversation(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("switcher").await;
    let (id, _) = app.chat(&token, "mine").await;
    let (other, _) = app.chat(&token, "my other one").await;
    let other_ids = ids(&app.conversation(&token, &other).await);
    let before = app.conversation(&token, &id).await;

    // A message of another conversation, or of none: 404 naming the field.
    for node in [other_ids[1].as_str(), "no_such_message"] {
        let res = patch(&app, &token, &id, &json!({"current_node": node})).await;
        let body = error_body(res, 404, "NOT_FOUND").await;
        assert_eq!(body["field"], "current_node", "{node}");
    }
    // Not a message id: 422; null: 400.
    let res = patch(&app, &token, &id, &json!({"current_node": "not an id!"})).await;
    let body = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["field"], "current_node");
    let res = patch(&app, &token, &id, &json!({"current_node": null})).await;
    assert_eq!(res.status(), 400);

    // Another user's conversation, with its own message: a plain 404.
    let mallory = app.user("mallory").await;
    let mine = ids(&before);
    let res = patch(&app, &mallory, &id, &json!({"current_node": mine[0]})).await;
    let body = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(body.get("field"), None, "nothing said about the message");

    let after = app.conversation(&token, &id).await;
    assert_eq!(ids(&after), mine, "nothing moved");
    assert_eq!(after["current_node"], before["current_node"]);
}

/// A message with `text` following `parent`.
fn under(parent: &str, text: &str) -> Value {
    json!({"parent_message_id": parent, "messages": [{"role": "user",
        "content": {"content_type": "text", "parts": [text]}}]})
}

async fn an_edit_is_a_new_question_under_the_edited_ones_parent(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("editor").await;
    let (id, _) = app.chat(&token, "first question").await;
    send(&app, &token, &id, "second question").await;
    let line = ids(&app.conversation(&token, &id).await);
    let path = format!("/api/v1/conversations/{id}/messages");

    // Editing the second question: a new one under the first answer.
    let res = app
        .send_message(&path, &token, &under(&line[1], "second question, edited"))
        .await;
    assert_eq!(res.status(), 200);
    let events = SseReader::new(res).rest().await;
    let input = events
        .iter()
        .map(confab_e2e::chat::SseEvent::json)
        .find(|e| e["type"] == "input_message")
        .expect("an input_message event");
    assert_eq!(
        input["input_message"]["metadata"]["parent_id"],
        json!(line[1]),
        "the stream names the new parent"
    );
    assert_eq!(
        last_prompt(&llm),
        ["first question", "second question, edited"]
    );
    let edited = app.conversation(&token, &id).await;
    let branch = ids(&edited);
    assert_eq!(branch.len(), 4);
    assert_eq!(branch[..2], line[..2]);
    assert_ne!(branch[2], line[2]);
    assert_eq!(edited["current_node"], json!(branch[3]));
    // The edited question is still there, on its own branch.
    let res = patch(&app, &token, &id, &json!({"current_node": line[3]})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(ids(&app.conversation(&token, &id).await), line);

    // A parent from another conversation, or none at all: 404 naming it;
    // on a new conversation too. Not an id: 422.
    let (other, _) = app.chat(&token, "elsewhere").await;
    let foreign = ids(&app.conversation(&token, &other).await);
    for parent in [foreign[1].as_str(), "no_such_message"] {
        let res = app.send_message(&path, &token, &under(parent, "q")).await;
        let body = error_body(res, 404, "NOT_FOUND").await;
        assert_eq!(body["field"], "parent_message_id", "{parent}");
    }
    let res = app
        .send_message("/api/v1/conversations", &token, &under(&line[1], "q"))
        .await;
    let body = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(body["field"], "parent_message_id");
    let res = app
        .send_message(&path, &token, &under("not an id!", "q"))
        .await;
    let body = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["field"], "parent_message_id");
    // Another user's conversation: a plain 404, whatever the parent.
    let mallory = app.user("mallory").await;
    let res = app
        .send_message(&path, &mallory, &under(&line[1], "q"))
        .await;
    let body = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(body.get("field"), None);
    assert_eq!(
        ids(&app.conversation(&token, &id).await),
        line,
        "nothing stored"
    );
}
