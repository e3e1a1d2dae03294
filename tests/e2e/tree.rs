//! Conversations as trees (issue 15): the current node, switching branch,
//! and a send continuing the branch it is switched to.

use confab_e2e::chat::{
    SseEvent, SseReader, cut_at_length, held_after, message_body, message_ids, replay, spawn_chat,
};
use confab_e2e::error_body;
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    a_branch_switch_moves_the_history_and_the_next_prompt,
    a_branch_switch_names_a_message_of_the_conversation,
    an_edit_is_a_new_question_under_the_edited_ones_parent,
    a_variant_is_a_new_answer_to_the_same_question,
    a_variant_or_a_continue_that_makes_no_sense_is_refused,
    a_continue_appends_to_an_answer_that_stopped,
    the_tree_holds_every_branch_and_the_backend_detail_maps_its_page,
    a_delete_mid_continue_stops_it_and_leaves_no_answer_in_progress,
    the_first_question_is_edited_at_the_root,
);

/// Sends `text` into conversation `id` and reads its stream to the end.
async fn send(
    app: &confab_e2e::TestApp,
    token: &str,
    id: &str,
    text: &str,
) -> Vec<confab_e2e::chat::SseEvent> {
    app.send_to(token, id, &message_body(text)).await
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
    let first = message_ids(&line);
    assert_eq!(first.len(), 4);
    assert_eq!(line["current_node"], json!(first[3]), "the newest answer");

    // Back to the first answer: the history ends there.
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": first[1]}))
        .await;
    assert_eq!(res.status(), 200);
    let meta: Value = res.json().await.unwrap();
    assert_eq!(meta["current_node"], json!(first[1]));
    let switched = app.conversation(&token, &id).await;
    assert_eq!(message_ids(&switched), first[..2]);
    assert_eq!(switched["current_node"], json!(first[1]));

    // A send goes on from there: its prompt is that branch alone.
    let forked_events = send(&app, &token, &id, "another second question").await;
    assert_eq!(
        last_prompt(&llm),
        ["first question", "another second question"],
        "never the other branch"
    );
    let fork = app.conversation(&token, &id).await;
    let forked = message_ids(&fork);
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
    assert_eq!(message_ids(&app.conversation(&token, &id).await), forked);
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
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": first[3]}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(message_ids(&app.conversation(&token, &id).await), first);
    // The backend-api detail is the same read.
    let res = app
        .get_auth(&format!("/backend-api/conversation/{id}"), &token)
        .await;
    let seed: Value = res.json().await.unwrap();
    assert_eq!(message_ids(&seed), first);
    assert_eq!(seed["current_node"], json!(first[3]));
}

async fn a_branch_switch_names_a_message_of_the_conversation(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("switcher").await;
    let (id, _) = app.chat(&token, "mine").await;
    let (other, _) = app.chat(&token, "my other one").await;
    let other_ids = message_ids(&app.conversation(&token, &other).await);
    let before = app.conversation(&token, &id).await;

    // A message of another conversation, or of none: 404 naming the field.
    for node in [other_ids[1].as_str(), "no_such_message"] {
        let res = app
            .patch_conversation(&token, &id, &json!({"current_node": node}))
            .await;
        let body = error_body(res, 404, "NOT_FOUND").await;
        assert_eq!(body["field"], "current_node", "{node}");
    }
    // Not a message id: 422; null: 400.
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": "not an id!"}))
        .await;
    let body = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["field"], "current_node");
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": null}))
        .await;
    assert_eq!(res.status(), 400);

    // Another user's conversation, with its own message: a plain 404.
    let mallory = app.user("mallory").await;
    let mine = message_ids(&before);
    let res = app
        .patch_conversation(&mallory, &id, &json!({"current_node": mine[0]}))
        .await;
    let body = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(body.get("field"), None, "nothing said about the message");

    let after = app.conversation(&token, &id).await;
    assert_eq!(message_ids(&after), mine, "nothing moved");
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
    let line = message_ids(&app.conversation(&token, &id).await);
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
    let branch = message_ids(&edited);
    assert_eq!(branch.len(), 4);
    assert_eq!(branch[..2], line[..2]);
    assert_ne!(branch[2], line[2]);
    assert_eq!(edited["current_node"], json!(branch[3]));
    assert_eq!(
        edited["siblings"],
        json!({branch[2].as_str(): {"ids": [line[2], branch[2]], "index": 1}}),
        "the edit and the question it edits"
    );
    // The edited question is still there, on its own branch.
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": line[3]}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(message_ids(&app.conversation(&token, &id).await), line);

    // A parent from another conversation, or none at all: 404 naming it;
    // on a new conversation too. Not an id: 422.
    let (other, _) = app.chat(&token, "elsewhere").await;
    let foreign = message_ids(&app.conversation(&token, &other).await);
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
        message_ids(&app.conversation(&token, &id).await),
        line,
        "nothing stored"
    );
}

/// The `input_message` event of a stream.
fn input_message(events: &[SseEvent]) -> Value {
    events
        .iter()
        .map(SseEvent::json)
        .find(|e| e["type"] == "input_message")
        .map(|e| e["input_message"].clone())
        .expect("an input_message event")
}

/// The prompt of the last chat request that was no title call, as
/// `(role, text)` pairs.
fn last_answer_prompt(llm: &FakeLlm) -> Vec<(String, String)> {
    let requests = llm.requests();
    let last = requests
        .iter()
        .rev()
        .find(|r| !r.to_string().contains("a title for this conversation"))
        .expect("a chat request");
    last["messages"]
        .as_array()
        .expect("prompt messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn a_variant_is_a_new_answer_to_the_same_question(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("regenerator").await;
    let (id, _) = app.chat(&token, "first question").await;
    let line = message_ids(&app.conversation(&token, &id).await);

    // Unnamed: the question the current node answers, answered again.
    llm.push(Script::reply(&["another ", "answer"]));
    let events = app
        .send_to(&token, &id, &json!({"action": "variant"}))
        .await;
    assert_eq!(input_message(&events)["id"], json!(line[0]), "the question");
    let answer = replay(&events)["message"].clone();
    let variant = answer["id"].as_str().expect("the answer's id").to_owned();
    assert_ne!(variant, line[1]);
    assert_eq!(answer["metadata"]["parent_id"], json!(line[0]));
    assert_eq!(answer["content"]["parts"], json!(["another answer"]));
    assert_eq!(answer["status"], "finished_successfully");
    let prompt = last_answer_prompt(&llm);
    let users: Vec<&str> = prompt
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, text)| text.as_str())
        .collect();
    assert_eq!(users, ["first question"]);
    assert_ne!(
        prompt.last().map(|(role, _)| role.as_str()),
        Some("assistant")
    );
    let read = app.conversation(&token, &id).await;
    assert_eq!(message_ids(&read), [line[0].clone(), variant.clone()]);
    assert_eq!(read["current_node"], json!(variant));
    assert_eq!(
        read["messages"][1], answer,
        "the stream built what is stored"
    );
    // The answer has a sibling ("< 2/2 >"); the question has none.
    assert_eq!(
        read["siblings"],
        json!({variant.as_str(): {"ids": [line[1], variant], "index": 1}})
    );

    // Named, in JSON mode: a third answer to the same question.
    let res = app
        .client
        .post(app.url(&format!("/api/v1/conversations/{id}/messages")))
        .bearer_auth(&token)
        .header("accept", "application/json")
        .json(&json!({"action": "variant", "parent_message_id": line[0]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let sent: Value = res.json().await.unwrap();
    assert_eq!(sent["input_message"]["id"], json!(line[0]));
    assert_eq!(sent["message"]["metadata"]["parent_id"], json!(line[0]));
    let third = sent["message"]["id"].as_str().unwrap().to_owned();
    let read = app.conversation(&token, &id).await;
    assert_eq!(message_ids(&read), [line[0].clone(), third.clone()]);
    assert_eq!(
        read["siblings"][&third],
        json!({"ids": [line[1], variant, third], "index": 2})
    );

    // Every answer is kept: the first is a branch switch away.
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": line[1]}))
        .await;
    assert_eq!(res.status(), 200);
    let read = app.conversation(&token, &id).await;
    assert_eq!(message_ids(&read), line);
    assert_eq!(read["siblings"][&line[1]]["index"], 0);

    // A variant of a question deeper down: the branch above it is the
    // prompt, and the answers below it are left on their branch.
    send(&app, &token, &id, "second question").await;
    let deeper = message_ids(&app.conversation(&token, &id).await);
    let events = app
        .send_to(
            &token,
            &id,
            &json!({"action": "variant", "parent_message_id": deeper[2]}),
        )
        .await;
    assert_eq!(input_message(&events)["id"], json!(deeper[2]));
    let users: Vec<String> = last_answer_prompt(&llm)
        .into_iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, text)| text)
        .collect();
    assert_eq!(users, ["first question", "second question"]);
    let now = message_ids(&app.conversation(&token, &id).await);
    assert_eq!(now[..3], deeper[..3]);
    assert_ne!(now[3], deeper[3]);
}

async fn a_variant_or_a_continue_that_makes_no_sense_is_refused(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("confused").await;
    let (id, _) = app.chat(&token, "a question").await;
    let line = message_ids(&app.conversation(&token, &id).await);
    let (other, _) = app.chat(&token, "elsewhere").await;
    let foreign = message_ids(&app.conversation(&token, &other).await);
    let path = format!("/api/v1/conversations/{id}/messages");
    let refused = [
        // A variant answers a question, not an answer.
        (
            json!({"action": "variant", "parent_message_id": line[1]}),
            422,
            "parent_message_id",
        ),
        // A variant or a continue sends no message.
        (
            json!({"action": "variant", "messages": [{"role": "user",
            "content": {"content_type": "text", "parts": ["q"]}}]}),
            422,
            "messages",
        ),
        // A continue names an answer that stopped early.
        (
            json!({"action": "continue", "parent_message_id": line[1]}),
            422,
            "parent_message_id",
        ),
        (
            json!({"action": "continue", "parent_message_id": line[0]}),
            422,
            "parent_message_id",
        ),
        (json!({"action": "continue"}), 422, "parent_message_id"),
        (json!({"action": "again"}), 422, "action"),
        // A next without its message.
        (json!({"action": "next"}), 422, "messages"),
        // Messages of another conversation, or of none.
        (
            json!({"action": "variant", "parent_message_id": foreign[0]}),
            404,
            "parent_message_id",
        ),
        (
            json!({"action": "continue", "parent_message_id": foreign[1]}),
            404,
            "parent_message_id",
        ),
        (
            json!({"action": "variant", "parent_message_id": "no_such_message"}),
            404,
            "parent_message_id",
        ),
    ];
    for (body, status, field) in refused {
        let res = app.send_message(&path, &token, &body).await;
        assert_eq!(res.status(), status, "{body}");
        let error: Value = res.json().await.unwrap();
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    // No conversation to answer in: 422 on the seed's route; the route
    // that starts one takes no action at all.
    let res = app
        .send_message(
            "/backend-api/f/conversation",
            &token,
            &json!({"action": "variant"}),
        )
        .await;
    let body = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["field"], "action");
    let res = app
        .send_message(
            "/api/v1/conversations",
            &token,
            &json!({"action": "variant"}),
        )
        .await;
    assert_eq!(res.status(), 400);
    // Another user's conversation: a plain 404.
    let mallory = app.user("mallory").await;
    let res = app
        .send_message(&path, &mallory, &json!({"action": "variant"}))
        .await;
    let body = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(body.get("field"), None);
    let read = app.conversation(&token, &id).await;
    assert_eq!(message_ids(&read), line, "nothing stored");
    assert_eq!(read["messages"][1]["status"], "finished_successfully");
}

async fn a_continue_appends_to_an_answer_that_stopped(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("continuer").await;
    llm.push(cut_at_length("Once upon"));
    let (id, _) = app.chat(&token, "tell me a story").await;
    let read = app.conversation(&token, &id).await;
    let line = message_ids(&read);
    assert_eq!(read["messages"][1]["status"], "finished_partial_completion");

    llm.push(Script::reply(&[" a time", " it ended."]));
    let body = json!({"action": "continue", "parent_message_id": line[1]});
    let events = app.send_to(&token, &id, &body).await;
    assert_eq!(input_message(&events)["id"], json!(line[0]));
    let answer = replay(&events)["message"].clone();
    assert_eq!(answer["id"], json!(line[1]), "the same answer, appended to");
    assert_eq!(answer["metadata"]["parent_id"], json!(line[0]));
    assert_eq!(
        answer["content"]["parts"],
        json!(["Once upon a time it ended."])
    );
    assert_eq!(answer["status"], "finished_successfully");
    // The model went on from the answer's end.
    let prompt = last_answer_prompt(&llm);
    assert_eq!(
        prompt.last(),
        Some(&("assistant".to_owned(), "Once upon".to_owned()))
    );
    let read = app.conversation(&token, &id).await;
    assert_eq!(message_ids(&read), line);
    assert_eq!(read["current_node"], json!(line[1]));
    assert_eq!(
        read["messages"][1], answer,
        "the stream built what is stored"
    );

    // Finished now: no more to continue.
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &body,
        )
        .await;
    let error = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(error["field"], "parent_message_id");

    // A continue can be stopped, resumed and continued again like any
    // answer: stopped, it keeps all its text so far.
    llm.push(cut_at_length("Once"));
    send(&app, &token, &id, "another story").await;
    let stopped = message_ids(&app.conversation(&token, &id).await);
    llm.push(held_after(" more"));
    let body = json!({"action": "continue", "parent_message_id": stopped[3]});
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &body,
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let seen = reader.until(confab_e2e::chat::is_append).await;
    let resume_token = seen[1].json()["token"].as_str().unwrap().to_owned();
    let stream = format!("/api/v1/conversations/{id}/stream");
    let res = app
        .resume_stream(&stream, &token, &resume_token, None)
        .await;
    assert_eq!(res.status(), 200);
    let mut resumed = SseReader::new(res);
    let res = app.call(Method::DELETE, &stream, &token, None).await;
    assert_eq!(res.status(), 204);
    let replayed = replay(&resumed.rest().await)["message"].clone();
    let read = app.conversation(&token, &id).await;
    assert_eq!(read["messages"][3]["status"], "finished_partial_completion");
    assert_eq!(
        read["messages"][3]["content"]["parts"],
        json!(["Once more"])
    );
    assert_eq!(read["messages"][3], replayed, "the resumed stream built it");
    llm.release();
    llm.push(Script::reply(&[" and again."]));
    app.send_to(&token, &id, &body).await;
    let read = app.conversation(&token, &id).await;
    assert_eq!(
        read["messages"][3]["content"]["parts"],
        json!(["Once more and again."])
    );
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": line[1]}))
        .await;
    assert_eq!(res.status(), 200);

    // A continue from another branch moves the current node to it.
    send(&app, &token, &id, "next question").await;
    llm.push(cut_at_length("Half"));
    send(&app, &token, &id, "one more").await;
    let longer = message_ids(&app.conversation(&token, &id).await);
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": line[1]}))
        .await;
    assert_eq!(res.status(), 200);
    let events = app
        .send_to(
            &token,
            &id,
            &json!({"action": "continue", "parent_message_id": longer[5]}),
        )
        .await;
    assert_eq!(replay(&events)["message"]["id"], json!(longer[5]));
    let read = app.conversation(&token, &id).await;
    assert_eq!(message_ids(&read), longer);
    assert_eq!(read["current_node"], json!(longer[5]));
}

/// The ids of a list of tree nodes, or of a node's children.
fn node_ids(nodes: &Value) -> Vec<String> {
    nodes
        .as_array()
        .expect("an array")
        .iter()
        .map(|n| n.as_str().or(n["id"].as_str()).expect("an id").to_owned())
        .collect()
}

async fn the_tree_holds_every_branch_and_the_backend_detail_maps_its_page(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("gardener").await;
    let (id, _) = app.chat(&token, "first question").await;
    let line = message_ids(&app.conversation(&token, &id).await);
    let (q1, a1) = (line[0].clone(), line[1].clone());
    let events = app
        .send_to(&token, &id, &json!({"action": "variant"}))
        .await;
    let a1b = replay(&events)["message"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": a1}))
        .await;
    assert_eq!(res.status(), 200);
    send(&app, &token, &id, "second question").await;
    let branch = message_ids(&app.conversation(&token, &id).await);
    let (q2, a2) = (branch[2].clone(), branch[3].clone());

    // The whole tree, two at a time, in the order it was stored.
    let mut nodes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/conversations/{id}/tree?limit=2&after={a}"),
            None => format!("/api/v1/conversations/{id}/tree?limit=2"),
        };
        let res = app.get_auth(&path, &token).await;
        assert_eq!(res.status(), 200);
        let page: Value = res.json().await.unwrap();
        assert_eq!(page["current_node"], json!(a2));
        nodes.extend(page["nodes"].as_array().unwrap().iter().cloned());
        if page["has_more"] == json!(false) {
            assert_eq!(page["cursor"], Value::Null);
            break;
        }
        after = Some(page["cursor"].as_str().unwrap().to_owned());
    }
    let all = node_ids(&Value::Array(nodes.clone()));
    assert_eq!(all, [q1.as_str(), &a1, &a1b, &q2, &a2]);
    let node = |id: &str| nodes.iter().find(|n| n["id"] == id).unwrap().clone();
    assert_eq!(node(&q1)["parent"], Value::Null);
    assert_eq!(node_ids(&node(&q1)["children"]), [a1.as_str(), &a1b]);
    assert_eq!(node_ids(&node(&a1)["children"]), [q2.as_str()]);
    assert_eq!(node(&a1b)["children"], json!([]));
    assert_eq!(node(&a2)["parent"], json!(q2));
    // Each node's message is the message the history shows.
    let read = app.conversation(&token, &id).await;
    for message in read["messages"].as_array().unwrap() {
        assert_eq!(&node(message["id"].as_str().unwrap())["message"], message);
    }

    // The backend-api detail: the page, and ChatGPT's mapping of it.
    let res = app
        .get_auth(&format!("/backend-api/conversation/{id}"), &token)
        .await;
    assert_eq!(res.status(), 200);
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let detail: Value = res.json().await.unwrap();
    assert_eq!(message_ids(&detail), branch);
    assert_eq!(detail["current_node"], json!(a2));
    let mapping = detail["mapping"].as_object().unwrap();
    let mut keys: Vec<&String> = mapping.keys().collect();
    keys.sort();
    let mut expected: Vec<&String> = branch.iter().collect();
    expected.sort();
    assert_eq!(keys, expected, "the page's messages");
    assert_eq!(node_ids(&mapping[&q1]["children"]), [a1.as_str(), &a1b]);
    assert_eq!(mapping[&a2]["parent"], json!(q2));
    assert_eq!(mapping[&a2]["message"], detail["messages"][3]);
    // Walking up from the current node gives the branch.
    let mut walked = Vec::new();
    let mut at = detail["current_node"].clone();
    while let Some(step) = at.as_str() {
        walked.insert(0, step.to_owned());
        at = mapping[step]["parent"].clone();
    }
    assert_eq!(walked, branch);
    // Its ETag is the one a PATCH on that surface checks.
    let res = app
        .client
        .patch(app.url(&format!("/backend-api/conversation/{id}")))
        .bearer_auth(&token)
        .header("if-match", &etag)
        .json(&json!({"title": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Bad cursors, and another user's tree.
    let res = app
        .get_auth(
            &format!("/api/v1/conversations/{id}/tree?after=no_such"),
            &token,
        )
        .await;
    let body = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(body["field"], "after");
    let res = app
        .get_auth(
            &format!("/api/v1/conversations/{id}/tree?after=not%20an%20id"),
            &token,
        )
        .await;
    let body = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["field"], "after");
    let mallory = app.user("mallory").await;
    let res = app
        .get_auth(&format!("/api/v1/conversations/{id}/tree"), &mallory)
        .await;
    let body = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(body.get("field"), None);
}

async fn a_delete_mid_continue_stops_it_and_leaves_no_answer_in_progress(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("deleter").await;
    llm.push(cut_at_length("Once"));
    let (id, _) = app.chat(&token, "a story").await;
    let line = message_ids(&app.conversation(&token, &id).await);
    llm.push(held_after(" more"));
    let body = json!({"action": "continue", "parent_message_id": line[1]});
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &body,
        )
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    reader.until(confab_e2e::chat::is_append).await;
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/conversations/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    let rest = reader.rest().await;
    assert_eq!(rest.last().map(|e| e.data.as_str()), Some("[DONE]"));
    llm.release();
    // Gone for its owner; in the database, the answer is closed with the
    // text it had, not left in progress for the sweep.
    let res = app
        .get_auth(&format!("/api/v1/conversations/{id}"), &token)
        .await;
    assert_eq!(res.status(), 404);
    let store = app.db.store().await;
    let conversation: confab_domain::ConversationId = id.parse().unwrap();
    let answer = confab_domain::MessageId::parse(line[1].as_str()).unwrap();
    let stored = confab_ports::MessageStore::find(&store, conversation, &answer)
        .await
        .unwrap()
        .expect("the answer is kept");
    assert_eq!(
        stored.status,
        confab_domain::MessageStatus::FinishedPartialCompletion
    );
    assert_eq!(stored.content.parts(), ["Once more"]);
    assert!(
        confab_ports::MessageStore::in_progress(&store, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn the_first_question_is_edited_at_the_root(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("rooter").await;
    // ChatGPT's clients name the root when they start a conversation.
    let mut body = message_body("first question");
    body["parent_message_id"] = json!("client-created-root");
    let res = app
        .send_message("/api/v1/conversations", &token, &body)
        .await;
    assert_eq!(res.status(), 200);
    let events = SseReader::new(res).rest().await;
    let id = confab_e2e::chat::conversation_of(&events);
    app.send_to(&token, &id, &message_body("second question"))
        .await;
    let line = message_ids(&app.conversation(&token, &id).await);

    // Editing the first question: a new first question, its own branch.
    let mut edit = message_body("first question, edited");
    edit["parent_message_id"] = json!("client-created-root");
    let events = app.send_to(&token, &id, &edit).await;
    assert_eq!(
        input_message(&events)["metadata"].get("parent_id"),
        None,
        "a first message has no parent"
    );
    assert_eq!(
        last_answer_prompt(&llm)
            .into_iter()
            .filter(|(role, _)| role == "user")
            .map(|(_, text)| text)
            .collect::<Vec<_>>(),
        ["first question, edited"],
        "nothing of the old branch"
    );
    let read = app.conversation(&token, &id).await;
    let branch = message_ids(&read);
    assert_eq!(branch.len(), 2);
    assert_ne!(branch[0], line[0]);
    assert_eq!(
        read["siblings"][&branch[0]],
        json!({"ids": [line[0], branch[0]], "index": 1})
    );
    // The old branch is whole, a switch away.
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": line[3]}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(message_ids(&app.conversation(&token, &id).await), line);
    // The root is no message: not an id to take, nor a node to switch to.
    let mut taken = message_body("q");
    taken["messages"][0]["id"] = json!("client-created-root");
    let res = app
        .send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &taken,
        )
        .await;
    let error = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(error["field"], "messages[0].id");
    let res = app
        .patch_conversation(&token, &id, &json!({"current_node": "client-created-root"}))
        .await;
    let error = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(error["field"], "current_node");
}
