//! Conversations as a user sees them: ownership (BOLA) on every route,
//! deletion, mass assignment, NUL bytes, pagination and search, cache
//! invalidation, `ETag` revalidation, JSON mode on both surfaces, the
//! model allowlist and content negotiation.

use confab_e2e::TestApp;
use confab_e2e::chat::{MODEL, SseReader, message_body, spawn_chat};
use confab_e2e::error_body;
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    two_tabs_cannot_overwrite_each_other_with_if_match,
    other_users_conversation_is_not_found_on_every_route,
    deleted_conversation_is_gone_everywhere,
    mass_assignment_fields_are_refused,
    nul_bytes_are_422_not_500,
    pagination_bounds_and_totals,
    list_and_history_caches_are_invalidated_by_writes,
    etag_revalidation_gives_304_until_the_conversation_changes,
    a_cached_read_is_rendered_once_until_it_changes,
    json_mode_and_both_surfaces,
    unknown_model_is_refused_and_allowed_ones_reach_upstream,
    accept_header_that_is_neither_sse_nor_json_is_406,
);

/// A well-formed id that names no conversation.
const MISSING: &str = "0190a0b0-c0d0-7e0f-8a1b-2c3d4e5f6a7b";

/// `POST path` with `body`, in JSON mode (`Accept: application/json`).
async fn send_json(app: &TestApp, path: &str, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .header("accept", "application/json")
        .json(body)
        .send()
        .await
        .expect("POST")
}

/// Starts a conversation in JSON mode; returns the 201 body.
async fn new_conversation(app: &TestApp, token: &str, text: &str) -> Value {
    let res = send_json(app, "/api/v1/conversations", token, &message_body(text)).await;
    assert_eq!(res.status(), 201, "a new conversation in JSON mode");
    res.json().await.expect("a JSON answer")
}

/// The id of a conversation answer (JSON mode).
fn id_of(sent: &Value) -> String {
    sent["conversation_id"]
        .as_str()
        .expect("a conversation id")
        .to_owned()
}

/// `GET path` (with a bearer token) as JSON, expecting 200.
async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    let res = app.get_auth(path, token).await;
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.expect("a JSON body")
}

/// The caller's user id, as `GET /api/v1/users/me` shows it.
async fn my_id(app: &TestApp, token: &str) -> String {
    get_json(app, "/api/v1/users/me", token).await["id"]
        .as_str()
        .expect("a user id")
        .to_owned()
}

/// The ids of a list page's items, in order.
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_str().expect("an item id").to_owned())
        .collect()
}

/// The titles of a list page's items, in order.
fn titles(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["title"].as_str().expect("a title").to_owned())
        .collect()
}

/// A request with a bearer token and an `If-None-Match` header.
async fn get_if_none_match(app: &TestApp, path: &str, token: &str, tag: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .header("if-none-match", tag)
        .send()
        .await
        .expect("GET")
}

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("a {name} header"))
        .to_str()
        .expect("a visible header")
        .to_owned()
}

/// Every route that names conversation `id`, as `token` would call it,
/// answers 404 `NOT_FOUND`; `resume` is sent as the resume token.
async fn every_route_is_not_found(app: &TestApp, token: &str, id: &str, resume: &str) {
    let send = message_body("let me in");
    let patch = json!({"title": "pwned", "is_archived": true});
    let mut with_id = message_body("let me in");
    with_id["conversation_id"] = json!(id);
    let regenerate = json!({"action": "variant"});
    let calls: Vec<(Method, String, Option<&Value>)> = vec![
        (Method::GET, format!("/api/v1/conversations/{id}"), None),
        (
            Method::GET,
            format!("/api/v1/conversations/{id}/tree"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/conversations/{id}/messages"),
            Some(&regenerate),
        ),
        (
            Method::PATCH,
            format!("/api/v1/conversations/{id}"),
            Some(&patch),
        ),
        (Method::DELETE, format!("/api/v1/conversations/{id}"), None),
        (
            Method::POST,
            format!("/api/v1/conversations/{id}/messages"),
            Some(&send),
        ),
        (
            Method::DELETE,
            format!("/api/v1/conversations/{id}/stream"),
            None,
        ),
        (Method::GET, format!("/backend-api/conversation/{id}"), None),
        (
            Method::PATCH,
            format!("/backend-api/conversation/{id}"),
            Some(&patch),
        ),
        (
            Method::DELETE,
            format!("/backend-api/conversation/{id}"),
            None,
        ),
        (
            Method::DELETE,
            format!("/backend-api/conversation/{id}/stream"),
            None,
        ),
        (
            Method::POST,
            "/backend-api/f/conversation".to_owned(),
            Some(&with_id),
        ),
    ];
    for (method, path, body) in calls {
        let res = app.call(method.clone(), &path, token, body).await;
        let err = error_body(res, 404, "NOT_FOUND").await;
        assert!(err.get("field").is_none(), "{method} {path}: {err}");
    }
    // JSON mode says the same.
    for (path, body) in [
        (format!("/api/v1/conversations/{id}/messages"), &send),
        ("/backend-api/f/conversation".to_owned(), &with_id),
    ] {
        let res = send_json(app, &path, token, body).await;
        error_body(res, 404, "NOT_FOUND").await;
    }
    for path in [
        format!("/api/v1/conversations/{id}/stream"),
        format!("/backend-api/conversation/{id}/stream"),
    ] {
        let res = app
            .client
            .get(app.url(&path))
            .bearer_auth(token)
            .header("x-resume-token", resume)
            .header("last-event-id", "1")
            .send()
            .await
            .expect("GET stream");
        error_body(res, 404, "NOT_FOUND").await;
        // Without a token too: the ownership check comes first.
        let res = app.get_auth(&path, token).await;
        error_body(res, 404, "NOT_FOUND").await;
    }
}

async fn other_users_conversation_is_not_found_on_every_route(backend: Backend) {
    let llm = FakeLlm::start();
    // A's answer waits at `Hold`, so stop and resume have a generation to
    // act on while B tries them.
    llm.push(Script::Stream(vec![
        Step::Text("Hello".to_owned()),
        Step::Hold,
        Step::Text(" there".to_owned()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(backend, &llm, &[]);
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let res = app
        .send_message("/api/v1/conversations", &alice, &message_body("secret"))
        .await;
    assert_eq!(res.status(), 200);
    let mut stream = SseReader::new(res);
    let mut events = stream
        .until(|e| e.event.as_deref() == Some("delta") && e.json()["v"][0]["o"] == "append")
        .await;
    let id = events[1].json()["conversation_id"]
        .as_str()
        .expect("a conversation id")
        .to_owned();
    let resume = events[1].json()["token"]
        .as_str()
        .expect("a resume token")
        .to_owned();

    // While A's answer is being generated.
    every_route_is_not_found(&app, &bob, &id, &resume).await;

    llm.release();
    events.extend(stream.rest().await);
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    assert!(
        events
            .iter()
            .any(|e| e.kind().as_deref() == Some("message_stream_complete"))
    );

    // And after it ended, with A's history and list read, so cached and
    // rendered on every worker: a body kept for A's read never answers B.
    for path in [
        format!("/api/v1/conversations/{id}"),
        format!("/backend-api/conversation/{id}"),
        "/api/v1/conversations".to_owned(),
    ] {
        for _ in 0..4 {
            let body = get_json(&app, &path, &alice).await;
            assert!(body.to_string().contains(&id), "{path}: {body}");
        }
    }
    every_route_is_not_found(&app, &bob, &id, &resume).await;

    // Exactly as a conversation that does not exist.
    let foreign = app
        .get_auth(&format!("/api/v1/conversations/{id}"), &bob)
        .await;
    let missing = app
        .get_auth(&format!("/api/v1/conversations/{MISSING}"), &bob)
        .await;
    let foreign = error_body(foreign, 404, "NOT_FOUND").await;
    let missing = error_body(missing, 404, "NOT_FOUND").await;
    assert_eq!(foreign["message"], missing["message"]);
    assert_eq!(foreign.get("field"), missing.get("field"));

    // B sees nothing in either list, archived or not.
    for path in [
        "/api/v1/conversations",
        "/api/v1/conversations?archived=true",
        "/backend-api/conversations",
    ] {
        let page = get_json(&app, path, &bob).await;
        assert_eq!(page["total"], 0, "{path}: {page}");
        assert_eq!(page["items"], json!([]), "{path}");
    }
    // B's attempts started nothing upstream.
    assert_eq!(llm.requests().len(), 1);

    // A's conversation is untouched: not renamed, not archived, not
    // stopped, no message added.
    let mine = app.conversation(&alice, &id).await;
    assert_eq!(mine["title"], "Fake Title");
    assert_eq!(mine["is_archived"], false);
    let messages = mine["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2, "{mine}");
    assert_eq!(messages[0]["content"]["parts"], json!(["secret"]));
    assert_eq!(messages[1]["content"]["parts"], json!(["Hello there"]));
    assert_eq!(messages[1]["status"], "finished_successfully");
    let page = get_json(&app, "/api/v1/conversations", &alice).await;
    assert_eq!(ids(&page), [id.as_str()]);

    // A can still delete it.
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/conversations/{id}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    let res = app
        .get_auth(&format!("/api/v1/conversations/{id}"), &alice)
        .await;
    error_body(res, 404, "NOT_FOUND").await;
}

async fn deleted_conversation_is_gone_everywhere(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let (id, events) = app.chat(&token, "forget me").await;
    let resume = events[1].json()["token"]
        .as_str()
        .expect("a resume token")
        .to_owned();
    let kept = id_of(&new_conversation(&app, &token, "keep me").await);
    // Fill the caches first, so a stale entry would show.
    assert_eq!(
        get_json(&app, "/api/v1/conversations", &token).await["total"],
        2
    );
    app.conversation(&token, &id).await;
    get_json(&app, &format!("/backend-api/conversation/{id}"), &token).await;

    let res = app
        .call(
            Method::DELETE,
            &format!("/backend-api/conversation/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    assert!(res.text().await.expect("a body").is_empty());

    // The owner gets 404 on every route, as for anyone else's.
    every_route_is_not_found(&app, &token, &id, &resume).await;

    for path in [
        "/api/v1/conversations",
        "/api/v1/conversations?archived=true",
        "/backend-api/conversations",
        "/api/v1/conversations?q=fake",
    ] {
        let page = get_json(&app, path, &token).await;
        assert!(!ids(&page).contains(&id), "{path}: {page}");
    }
    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(page["total"], 1);
    assert_eq!(ids(&page), [kept.as_str()]);
    // The other conversation is untouched.
    let other = app.conversation(&token, &kept).await;
    assert_eq!(other["messages"].as_array().map(Vec::len), Some(2));
}

async fn mass_assignment_fields_are_refused(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let other = app.user("eve").await;
    let me = my_id(&app, &token).await;
    let eve = my_id(&app, &other).await;
    assert_ne!(me, eve);
    let existing = id_of(&new_conversation(&app, &token, "first").await);
    let upstream = llm.requests().len();

    let paths = [
        "/api/v1/conversations".to_owned(),
        format!("/api/v1/conversations/{existing}/messages"),
        "/backend-api/f/conversation".to_owned(),
    ];
    let text = json!({"content_type": "text", "parts": ["hi"]});
    // Unknown fields are the body's form (400); a role other than `user`
    // is a well-formed body breaking a rule (422).
    let mut refused: Vec<(Value, &str, u16)> = Vec::new();
    for field in ["role", "status", "created_at", "owner"] {
        let mut body = message_body("hi");
        body[field] = json!("admin");
        refused.push((body, field, 400));
    }
    for (field, value) in [
        ("status", json!("finished_successfully")),
        ("created_at", json!("2000-01-01T00:00:00Z")),
        ("author", json!({"role": "system"})),
    ] {
        let mut message = json!({"role": "user", "content": text});
        message[field] = value;
        refused.push((json!({"messages": [message]}), field, 400));
    }
    for role in ["assistant", "system"] {
        refused.push((
            json!({"messages": [{"role": role, "content": text}]}),
            "role",
            422,
        ));
    }
    refused.push((
        json!({"messages": [{"role": "user", "content": {"content_type": "text", "parts": ["hi"], "status": "x"}}]}),
        "status",
        400,
    ));
    refused.push((
        json!({"messages": [{"role": "user", "content": text}], "metadata": {"user_id": me}}),
        "user_id",
        400,
    ));
    for path in &paths {
        for (body, field, status) in &refused {
            let res = app.send_message(path, &token, body).await;
            let err = error_body(res, *status, "VALIDATION_ERROR").await;
            let named = err["field"].as_str().unwrap_or_default();
            assert!(
                named.ends_with(field),
                "{path} {body}: field {named:?}, wanted …{field}: {err}"
            );
        }
        // Someone else's user id: authenticated, not allowed.
        let mut body = message_body("hi");
        body["user_id"] = json!(eve);
        let res = app.send_message(path, &token, &body).await;
        error_body(res, 403, "FORBIDDEN").await;
        // A user id that is no user at all.
        body["user_id"] = json!("not-a-user");
        let res = app.send_message(path, &token, &body).await;
        error_body(res, 403, "FORBIDDEN").await;
    }
    // Unknown fields: 400; nothing to change: 422.
    for (patch, status) in [
        (json!({"user_id": eve}), 400),
        (json!({"created_at": "2000-01-01T00:00:00Z"}), 400),
        (json!({"title": "x", "owner": eve}), 400),
        (json!({"updated_at": "2000-01-01T00:00:00Z"}), 400),
        (json!({"is_deleted": true}), 400),
        (json!({}), 422),
    ] {
        for surface in ["/api/v1/conversations", "/backend-api/conversation"] {
            let res = app
                .call(
                    Method::PATCH,
                    &format!("{surface}/{existing}"),
                    &token,
                    Some(&patch),
                )
                .await;
            error_body(res, status, "VALIDATION_ERROR").await;
        }
    }

    // Nothing was stored, and nothing reached the model.
    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(page["total"], 1, "{page}");
    let stored = app.conversation(&token, &existing).await;
    assert_eq!(stored["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(stored["title"], "Fake Title");
    assert_eq!(llm.requests().len(), upstream);
    assert_eq!(
        get_json(&app, "/api/v1/conversations", &other).await["total"],
        0
    );

    // The caller's own id is accepted.
    let mut body = message_body("it is me");
    body["user_id"] = json!(me);
    let res = app
        .send_message("/api/v1/conversations", &token, &body)
        .await;
    assert_eq!(res.status(), 200);
    let events = SseReader::new(res).rest().await;
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let res = send_json(
        &app,
        &format!("/api/v1/conversations/{existing}/messages"),
        &token,
        &body,
    )
    .await;
    assert_eq!(res.status(), 200);
    let sent: Value = res.json().await.expect("a JSON answer");
    assert_eq!(sent["input_message"]["author"]["role"], "user");
    assert_eq!(sent["message"]["author"]["role"], "assistant");
    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(page["total"], 2, "{page}");
}

async fn nul_bytes_are_422_not_500(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let existing = id_of(&new_conversation(&app, &token, "first").await);
    let upstream = llm.requests().len();
    let paths = [
        "/api/v1/conversations".to_owned(),
        format!("/api/v1/conversations/{existing}/messages"),
        "/backend-api/f/conversation".to_owned(),
    ];
    let bad_bodies = [
        message_body("nul \u{0000} byte"),
        json!({"messages": [{"role": "user", "content": {"content_type": "text", "parts": ["fine", "\u{0000}"]}}]}),
        json!({"messages": [{"id": "msg\u{0000}1", "role": "user", "content": {"content_type": "text", "parts": ["hi"]}}]}),
        json!({"messages": [{"id": "../../etc/passwd", "role": "user", "content": {"content_type": "text", "parts": ["hi"]}}]}),
        json!({"messages": [{"id": "msg 1", "role": "user", "content": {"content_type": "text", "parts": ["hi"]}}]}),
        json!({"messages": [{"id": "", "role": "user", "content": {"content_type": "text", "parts": ["hi"]}}]}),
        json!({"messages": [{"id": "é", "role": "user", "content": {"content_type": "text", "parts": ["hi"]}}]}),
        json!({"messages": [{"id": "a".repeat(65), "role": "user", "content": {"content_type": "text", "parts": ["hi"]}}]}),
        json!({"messages": [{"role": "user\u{0000}", "content": {"content_type": "text", "parts": ["hi"]}}]}),
        json!({"messages": [{"role": "user", "content": {"content_type": "text\u{0000}", "parts": ["hi"]}}]}),
        json!({"model": "fake\u{0000}model", "messages": [{"role": "user", "content": {"content_type": "text", "parts": ["hi"]}}]}),
    ];
    // Well-formed JSON whose values break the rules: 422.
    for path in &paths {
        for body in &bad_bodies {
            let res = send_json(&app, path, &token, body).await;
            let err = error_body(res, 422, "VALIDATION_ERROR").await;
            assert!(err["field"].is_string(), "{path} {body}: {err}");
        }
        // A bad message id is named by its path in the body.
        let res = send_json(&app, path, &token, &bad_bodies[3]).await;
        let err = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], "messages[0].id", "{path}");
    }
    // A NUL in a conversation id of the body.
    let mut body = message_body("hi");
    body["conversation_id"] = json!(format!("{existing}\u{0000}"));
    let res = send_json(&app, "/backend-api/f/conversation", &token, &body).await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "conversation_id");
    // A NUL escaped in raw JSON text.
    let raw =
        r#"{"messages":[{"role":"user","content":{"content_type":"text","parts":["a\u0000b"]}}]}"#;
    let res = app
        .client
        .post(app.url("/api/v1/conversations"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("POST");
    error_body(res, 422, "VALIDATION_ERROR").await;

    for surface in ["/api/v1/conversations", "/backend-api/conversation"] {
        for title in ["bad\u{0000}title", "\u{0000}", "tab\u{0009}title"] {
            let res = app
                .call(
                    Method::PATCH,
                    &format!("{surface}/{existing}"),
                    &token,
                    Some(&json!({"title": title})),
                )
                .await;
            let err = error_body(res, 422, "VALIDATION_ERROR").await;
            assert_eq!(err["field"], "title", "{err}");
        }
    }
    // NUL in a search, and in a path id.
    let res = app.get_auth("/api/v1/conversations?q=a%00b", &token).await;
    error_body(res, 422, "VALIDATION_ERROR").await;
    let res = app
        .get_auth(&format!("/api/v1/conversations/{existing}%00"), &token)
        .await;
    error_body(res, 404, "NOT_FOUND").await;

    // Nothing stored, nothing sent upstream.
    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(page["total"], 1);
    let stored = app.conversation(&token, &existing).await;
    assert_eq!(stored["title"], "Fake Title");
    assert_eq!(stored["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(llm.requests().len(), upstream);
}

async fn pagination_bounds_and_totals(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let first = id_of(&new_conversation(&app, &token, "one").await);
    let second = id_of(&new_conversation(&app, &token, "two").await);
    let third = id_of(&new_conversation(&app, &token, "three").await);

    // Out of range or not an allowed value: 422. Not a number, not a
    // boolean or not a parameter at all: the query's form, 400.
    for (query, status) in [
        ("limit=0", 422),
        ("limit=101", 422),
        ("limit=-1", 400),
        ("limit=abc", 400),
        ("offset=100001", 422),
        ("offset=-1", 400),
        ("order=sideways", 422),
        ("order=", 422),
        ("archived=maybe", 400),
        ("page=2", 400),
        ("sort=title", 400),
        ("user_id=someone", 400),
    ] {
        let res = app
            .get_auth(&format!("/api/v1/conversations?{query}"), &token)
            .await;
        error_body(res, status, "VALIDATION_ERROR").await;
        let res = app
            .get_auth(&format!("/backend-api/conversations?{query}"), &token)
            .await;
        error_body(res, status, "VALIDATION_ERROR").await;
    }
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("offset=100001", "offset"),
        ("order=sideways", "order"),
    ] {
        let res = app
            .get_auth(&format!("/api/v1/conversations?{query}"), &token)
            .await;
        let err = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], field, "{query}: {err}");
    }

    // The edges that are allowed.
    let page = get_json(&app, "/api/v1/conversations?limit=100", &token).await;
    assert_eq!(page["limit"], 100);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3));
    let page = get_json(&app, "/api/v1/conversations?offset=100000", &token).await;
    assert_eq!(page["offset"], 100_000);
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["total"], 3);

    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(page["limit"], 20);
    assert_eq!(page["offset"], 0);
    assert_eq!(page["total"], 3);
    let item = &page["items"][0];
    for field in [
        "id",
        "title",
        "last_message",
        "updated_at",
        "created_at",
        "is_archived",
    ] {
        assert!(item.get(field).is_some(), "{field} in {item}");
    }
    assert_eq!(item["is_archived"], false);
    assert_eq!(item["last_message"], "Hello there!");

    let page = get_json(&app, "/api/v1/conversations?limit=2", &token).await;
    assert_eq!(ids(&page), [third.clone(), second.clone()]);
    assert_eq!(page["total"], 3);
    assert_eq!(page["limit"], 2);
    let page = get_json(&app, "/api/v1/conversations?limit=2&offset=2", &token).await;
    assert_eq!(ids(&page), [first.as_str()]);
    assert_eq!(page["total"], 3);
    assert_eq!(page["offset"], 2);
    let page = get_json(&app, "/api/v1/conversations?offset=3", &token).await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["total"], 3);

    // Renaming the oldest makes it the most recently updated, not the
    // most recently created.
    let res = app
        .call(
            Method::PATCH,
            &format!("/api/v1/conversations/{first}"),
            &token,
            Some(&json!({"title": "100% literal_title"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .call(
            Method::PATCH,
            &format!("/api/v1/conversations/{second}"),
            &token,
            Some(&json!({"title": "1000 literalXtitle"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated = get_json(&app, "/api/v1/conversations?order=updated", &token).await;
    assert_eq!(
        ids(&updated),
        [second.clone(), first.clone(), third.clone()]
    );
    let default = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(ids(&default), ids(&updated));
    let created = get_json(&app, "/api/v1/conversations?order=created", &token).await;
    assert_eq!(
        ids(&created),
        [third.clone(), second.clone(), first.clone()]
    );
    let backend_created = get_json(&app, "/backend-api/conversations?order=created", &token).await;
    assert_eq!(ids(&backend_created), ids(&created));

    // Search is a literal, case-insensitive substring: `%` and `_` are
    // not wildcards.
    for (q, expected) in [
        ("%25", vec![first.clone()]),
        ("_", vec![first.clone()]),
        ("0%25%20l", vec![first.clone()]),
        ("l_t", vec![first.clone()]),
        ("%25%25", vec![]),
        ("__", vec![]),
        ("LITERAL", vec![second.clone(), first.clone()]),
        ("fake%20title", vec![third.clone()]),
        ("%5C", vec![]),
    ] {
        let page = get_json(&app, &format!("/api/v1/conversations?q={q}"), &token).await;
        assert_eq!(ids(&page), expected, "q={q}: {page}");
        assert_eq!(page["total"], expected.len(), "q={q}");
    }
    let page = get_json(&app, "/api/v1/conversations?q=%25&limit=1", &token).await;
    assert_eq!(titles(&page), ["100% literal_title"]);
    // An empty search is no search.
    let page = get_json(&app, "/api/v1/conversations?q=", &token).await;
    assert_eq!(page["total"], 3);
    let res = app
        .get_auth(
            &format!("/api/v1/conversations?q={}", "a".repeat(101)),
            &token,
        )
        .await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "q");
}

async fn list_and_history_caches_are_invalidated_by_writes(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let id = id_of(&new_conversation(&app, &token, "cache me").await);
    let canonical = format!("/api/v1/conversations/{id}");
    let compatible = format!("/backend-api/conversation/{id}");
    let fill = || async {
        get_json(&app, "/api/v1/conversations", &token).await;
        get_json(&app, "/backend-api/conversations", &token).await;
        get_json(&app, &canonical, &token).await;
        get_json(&app, &compatible, &token).await;
    };
    fill().await;

    // A rename, on either surface, shows at once everywhere.
    for (surface, title) in [(&canonical, "Renamed"), (&compatible, "Renamed again")] {
        let res = app
            .call(
                Method::PATCH,
                surface,
                &token,
                Some(&json!({"title": format!("  {title}  ")})),
            )
            .await;
        assert_eq!(res.status(), 200);
        let changed: Value = res.json().await.expect("a JSON body");
        assert_eq!(changed["title"], title);
        assert_eq!(changed["conversation_id"], id.as_str());
        assert_eq!(changed["is_archived"], false);
        for list in ["/api/v1/conversations", "/backend-api/conversations"] {
            let page = get_json(&app, list, &token).await;
            assert_eq!(titles(&page), [title], "{list}");
        }
        for path in [&canonical, &compatible] {
            assert_eq!(get_json(&app, path, &token).await["title"], title);
        }
        fill().await;
    }

    // Archiving moves it out of the default list and into the archived one.
    let res = app
        .call(
            Method::PATCH,
            &canonical,
            &token,
            Some(&json!({"is_archived": true})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await.expect("a JSON body");
    assert_eq!(changed["is_archived"], true);
    assert_eq!(changed["title"], "Renamed again");
    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(page["total"], 0);
    assert_eq!(page["items"], json!([]));
    let page = get_json(&app, "/backend-api/conversations", &token).await;
    assert_eq!(page["total"], 0);
    let page = get_json(&app, "/api/v1/conversations?archived=true", &token).await;
    assert_eq!(ids(&page), [id.as_str()]);
    assert_eq!(page["items"][0]["is_archived"], true);
    assert_eq!(
        get_json(&app, &canonical, &token).await["is_archived"],
        true
    );
    assert_eq!(
        get_json(&app, &compatible, &token).await["is_archived"],
        true
    );
    // Restoring brings it back.
    let res = app
        .call(
            Method::PATCH,
            &compatible,
            &token,
            Some(&json!({"is_archived": false})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(ids(&page), [id.as_str()]);
    let page = get_json(&app, "/api/v1/conversations?archived=true", &token).await;
    assert_eq!(page["total"], 0);
    fill().await;

    // A new message shows in the history and as the list's last message.
    llm.push(Script::reply(&["Fresh", " answer"]));
    let res = send_json(
        &app,
        &format!("{canonical}/messages"),
        &token,
        &message_body("one more"),
    )
    .await;
    assert_eq!(res.status(), 200);
    let sent: Value = res.json().await.expect("a JSON answer");
    assert_eq!(sent["message"]["content"]["parts"], json!(["Fresh answer"]));
    for path in [&canonical, &compatible] {
        let history = get_json(&app, path, &token).await;
        let messages = history["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 4, "{path}: {history}");
        assert_eq!(messages[2]["content"]["parts"], json!(["one more"]));
        assert_eq!(messages[3]["content"]["parts"], json!(["Fresh answer"]));
        assert_eq!(messages[3]["status"], "finished_successfully");
        // The title of a continued conversation is the user's.
        assert_eq!(history["title"], "Renamed again");
    }
    for list in ["/api/v1/conversations", "/backend-api/conversations"] {
        let page = get_json(&app, list, &token).await;
        assert_eq!(page["items"][0]["last_message"], "Fresh answer", "{list}");
    }
    fill().await;

    // Deleting it makes it 404 and gone from every list.
    let res = app.call(Method::DELETE, &canonical, &token, None).await;
    assert_eq!(res.status(), 204);
    for path in [&canonical, &compatible] {
        let res = app.get_auth(path, &token).await;
        error_body(res, 404, "NOT_FOUND").await;
    }
    for list in [
        "/api/v1/conversations",
        "/backend-api/conversations",
        "/api/v1/conversations?archived=true",
    ] {
        let page = get_json(&app, list, &token).await;
        assert_eq!(page["total"], 0, "{list}");
        assert_eq!(page["items"], json!([]), "{list}");
    }
}

/// `confab_cached_read_bodies_total` of `shape` with `outcome`, 0 when absent.
async fn bodies(app: &TestApp, shape: &str, outcome: &str) -> u64 {
    let text = app.metrics().await;
    let (shape, outcome) = (
        format!("shape=\"{shape}\""),
        format!("outcome=\"{outcome}\""),
    );
    text.lines()
        .find(|l| {
            l.starts_with("confab_cached_read_bodies_total{")
                && l.contains(&shape)
                && l.contains(&outcome)
        })
        .map_or(0, |l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a counter value")
        })
}

async fn a_cached_read_is_rendered_once_until_it_changes(backend: Backend) {
    let llm = FakeLlm::start();
    // One worker (the test servers have one): every read after the first
    // is answered by the body it kept.
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("rita").await;
    let id = id_of(&new_conversation(&app, &token, "render me").await);
    let history = format!("/api/v1/conversations/{id}");
    let read_all = || async {
        let mut seen = Vec::new();
        for _ in 0..5 {
            for path in ["/api/v1/conversations", history.as_str()] {
                let res = app.get_auth(path, &token).await;
                assert_eq!(res.status(), 200, "{path}");
                let tag = header(&res, "etag");
                let body: Value = res.json().await.expect("a JSON body");
                seen.push((tag, body));
            }
        }
        seen
    };
    let first = read_all().await;
    for shape in ["list", "history"] {
        assert_eq!(bodies(&app, shape, "rendered").await, 1, "{shape}");
        assert_eq!(bodies(&app, shape, "kept").await, 4, "{shape}");
    }
    // Kept bodies are the bodies: the same as the one rendered.
    assert!(first.chunks(2).all(|pair| pair == &first[..2]));
    assert_eq!(first[0].1["items"][0]["id"], id.as_str());

    // A change renders both again, once, with the change in them.
    let res = app
        .call(
            Method::PATCH,
            &history,
            &token,
            Some(&json!({"title": "Re-rendered"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let second = read_all().await;
    for shape in ["list", "history"] {
        assert_eq!(bodies(&app, shape, "rendered").await, 2, "{shape}");
        assert_eq!(bodies(&app, shape, "kept").await, 8, "{shape}");
    }
    assert!(second.chunks(2).all(|pair| pair == &second[..2]));
    assert_eq!(second[0].1["items"][0]["title"], "Re-rendered");
    assert_eq!(second[1].1["title"], "Re-rendered");
    assert_ne!(second[0].0, first[0].0, "a new ETag for the list");
    assert_ne!(second[1].0, first[1].0, "a new ETag for the history");
}

async fn etag_revalidation_gives_304_until_the_conversation_changes(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let other = app.user("eve").await;
    let id = id_of(&new_conversation(&app, &token, "tag me").await);

    for (path, rename_via) in [
        (
            format!("/api/v1/conversations/{id}"),
            format!("/api/v1/conversations/{id}"),
        ),
        (
            format!("/backend-api/conversation/{id}"),
            format!("/backend-api/conversation/{id}"),
        ),
        (
            "/api/v1/conversations".to_owned(),
            format!("/api/v1/conversations/{id}"),
        ),
        (
            "/backend-api/conversations".to_owned(),
            format!("/backend-api/conversation/{id}"),
        ),
    ] {
        let res = app.get_auth(&path, &token).await;
        assert_eq!(res.status(), 200);
        let tag = header(&res, "etag");
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && tag.len() > 2,
            "{tag}"
        );
        let cache_control = header(&res, "cache-control");
        assert!(cache_control.contains("private"), "{cache_control}");
        assert!(
            cache_control.contains("no-store"),
            "private text is never kept in a browser's cache: {cache_control}"
        );
        let body = res.text().await.expect("a body");
        // The same representation gives the same tag.
        let again = app.get_auth(&path, &token).await;
        assert_eq!(header(&again, "etag"), tag);
        assert_eq!(again.text().await.expect("a body"), body);

        for candidate in [
            tag.clone(),
            format!("W/{tag}"),
            format!("\"x\", {tag}"),
            format!("\"x\",{tag}, \"y\""),
        ] {
            let res = get_if_none_match(&app, &path, &token, &candidate).await;
            assert_eq!(res.status(), 304, "{path} with {candidate}");
            assert_eq!(header(&res, "etag"), tag);
            assert!(header(&res, "cache-control").contains("private"));
            assert!(res.text().await.expect("a body").is_empty());
        }
        // Another tag, or a tag that is only a prefix, is no match.
        for candidate in [
            "\"x\"".to_owned(),
            tag[..tag.len() - 2].to_owned() + "\"",
            format!("{tag}x"),
        ] {
            let res = get_if_none_match(&app, &path, &token, &candidate).await;
            assert_eq!(res.status(), 200, "{path} with {candidate}");
            assert_eq!(res.text().await.expect("a body"), body);
        }
        // Someone else presenting the tag still gets 404 (a conversation)
        // or their own list, never a 304 confirming it.
        let res = get_if_none_match(&app, &path, &other, &tag).await;
        if path.ends_with("conversations") {
            assert_eq!(res.status(), 200, "{path}");
            assert_ne!(header(&res, "etag"), tag);
        } else {
            error_body(res, 404, "NOT_FOUND").await;
        }

        // A change makes the old tag stale.
        let title = format!("Title for {}", path.len());
        let res = app
            .call(
                Method::PATCH,
                &rename_via,
                &token,
                Some(&json!({"title": title})),
            )
            .await;
        assert_eq!(res.status(), 200);
        let res = get_if_none_match(&app, &path, &token, &tag).await;
        assert_eq!(res.status(), 200, "{path} after a rename");
        let fresh = header(&res, "etag");
        assert_ne!(fresh, tag);
        let body: Value = res.json().await.expect("a JSON body");
        let shown = body
            .get("title")
            .cloned()
            .unwrap_or_else(|| body["items"][0]["title"].clone());
        assert_eq!(shown, title.as_str());
        let res = get_if_none_match(&app, &path, &token, &fresh).await;
        assert_eq!(res.status(), 304);
    }

    // A new message changes the history's tag too.
    let path = format!("/api/v1/conversations/{id}");
    let tag = header(&app.get_auth(&path, &token).await, "etag");
    let list_tag = header(&app.get_auth("/api/v1/conversations", &token).await, "etag");
    let res = send_json(
        &app,
        &format!("{path}/messages"),
        &token,
        &message_body("more"),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = get_if_none_match(&app, &path, &token, &tag).await;
    assert_eq!(res.status(), 200);
    let res = get_if_none_match(&app, "/api/v1/conversations", &token, &list_tag).await;
    assert_eq!(res.status(), 200);
}

async fn json_mode_and_both_surfaces(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::reply(&["First", " answer"]));
    llm.push(Script::reply(&["Second", " answer"]));
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;

    let first = json!({
        "messages": [{"id": "msg_001", "role": "user",
                      "content": {"content_type": "text", "parts": ["Hello! Can you explain Redis caching?"]}}],
        "model": "default",
        "metadata": {"temperature": 0.7},
    });
    let res = send_json(&app, "/backend-api/f/conversation", &token, &first).await;
    assert_eq!(res.status(), 201);
    assert!(
        header(&res, "content-type").starts_with("application/json"),
        "JSON mode answers JSON"
    );
    let created: Value = res.json().await.expect("a JSON answer");
    let id = id_of(&created);
    assert_eq!(created["title"], "Fake Title");
    assert_eq!(created["input_message"]["id"], "msg_001");
    assert_eq!(created["input_message"]["status"], "finished_successfully");
    assert_eq!(
        created["input_message"]["content"]["parts"],
        json!(["Hello! Can you explain Redis caching?"])
    );
    assert_eq!(created["message"]["author"]["role"], "assistant");
    assert_eq!(
        created["message"]["content"]["parts"],
        json!(["First answer"])
    );
    assert_eq!(created["message"]["status"], "finished_successfully");
    assert_eq!(created["message"]["metadata"]["model_slug"], MODEL);
    assert_eq!(created["message"]["metadata"]["parent_id"], "msg_001");

    let second = json!({
        "conversation_id": id,
        "messages": [{"id": "msg_002", "role": "user",
                      "content": {"content_type": "text", "parts": ["And ", "memcached?"]}}],
    });
    let res = send_json(&app, "/backend-api/f/conversation", &token, &second).await;
    assert_eq!(res.status(), 200);
    let continued: Value = res.json().await.expect("a JSON answer");
    assert_eq!(continued["conversation_id"], id.as_str());
    assert_eq!(continued["title"], "Fake Title");
    assert_eq!(continued["input_message"]["id"], "msg_002");
    assert_eq!(
        continued["input_message"]["metadata"]["parent_id"],
        created["message"]["id"]
    );
    assert_eq!(
        continued["message"]["content"]["parts"],
        json!(["Second answer"])
    );

    // The same message id again in this conversation is a conflict.
    let res = send_json(&app, "/backend-api/f/conversation", &token, &second).await;
    error_body(res, 409, "CONFLICT").await;

    let res = app
        .get_auth(&format!("/backend-api/conversation/{id}"), &token)
        .await;
    assert_eq!(res.status(), 200);
    let compatible_text = res.text().await.expect("a body");
    let compatible: Value = serde_json::from_str(&compatible_text).expect("JSON");
    assert_eq!(compatible["conversation_id"], id.as_str());
    assert_eq!(compatible["title"], "Fake Title");
    let messages = compatible["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 4, "{compatible}");
    for (i, message) in messages.iter().enumerate() {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        assert_eq!(message["author"]["role"], role, "{message}");
        assert_eq!(message["status"], "finished_successfully", "{message}");
    }
    assert_eq!(messages[0], created["input_message"]);
    assert_eq!(messages[1], created["message"]);
    assert_eq!(messages[2], continued["input_message"]);
    assert_eq!(messages[3], continued["message"]);
    // Each message's parent is the one before it.
    for pair in messages.windows(2) {
        assert_eq!(pair[1]["metadata"]["parent_id"], pair[0]["id"]);
    }

    // The canonical body is the compatible one without ChatGPT's
    // `mapping`, in the same order.
    let res = app
        .get_auth(&format!("/api/v1/conversations/{id}"), &token)
        .await;
    assert_eq!(res.status(), 200);
    let canonical_text = res.text().await.expect("a body");
    let (head, _) = compatible_text
        .split_once(",\"mapping\":")
        .expect("a mapping last");
    assert_eq!(canonical_text, format!("{head}}}"));
    assert_eq!(
        compatible["mapping"].as_object().map(serde_json::Map::len),
        Some(4)
    );

    // Both lists show the one conversation, identically.
    let canonical = app.get_auth("/api/v1/conversations", &token).await;
    let compatible = app.get_auth("/backend-api/conversations", &token).await;
    assert_eq!(canonical.status(), 200);
    assert_eq!(compatible.status(), 200);
    let canonical = canonical.text().await.expect("a body");
    assert_eq!(canonical, compatible.text().await.expect("a body"));
    let page: Value = serde_json::from_str(&canonical).expect("JSON");
    assert_eq!(ids(&page), [id.as_str()]);
    assert_eq!(page["items"][0]["last_message"], "Second answer");

    // The canonical create refuses a conversation id: it only creates.
    let res = send_json(&app, "/api/v1/conversations", &token, &second).await;
    let err = error_body(res, 400, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "conversation_id");
    // A body id that differs from the path's is refused.
    let mut mismatched = message_body("hi");
    mismatched["conversation_id"] = json!(MISSING);
    let res = send_json(
        &app,
        &format!("/api/v1/conversations/{id}/messages"),
        &token,
        &mismatched,
    )
    .await;
    let err = error_body(res, 400, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "conversation_id");
    // A missing conversation id continues nothing.
    let res = send_json(&app, "/backend-api/f/conversation", &token, &mismatched).await;
    error_body(res, 404, "NOT_FOUND").await;
    // Malformed ids: in a path 404, in a body 400.
    for bad in [
        "not-a-uuid",
        "1",
        "..%2F..",
        "00000000-0000-0000-0000-00000000000g",
    ] {
        let res = app
            .get_auth(&format!("/api/v1/conversations/{bad}"), &token)
            .await;
        error_body(res, 404, "NOT_FOUND").await;
        let res = app
            .get_auth(&format!("/backend-api/conversation/{bad}"), &token)
            .await;
        error_body(res, 404, "NOT_FOUND").await;
        let res = send_json(
            &app,
            &format!("/api/v1/conversations/{bad}/messages"),
            &token,
            &message_body("hi"),
        )
        .await;
        error_body(res, 404, "NOT_FOUND").await;
    }
    let mut bad = message_body("hi");
    bad["conversation_id"] = json!("not-a-uuid");
    let res = send_json(&app, "/backend-api/f/conversation", &token, &bad).await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "conversation_id");

    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(page["total"], 1);
    assert_eq!(llm.requests().len(), 2);
}

async fn unknown_model_is_refused_and_allowed_ones_reach_upstream(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let id = id_of(&new_conversation(&app, &token, "models").await);
    let path = format!("/api/v1/conversations/{id}/messages");
    let with = |model: Option<&str>, temperature: Option<Value>| {
        let mut body = message_body("hi");
        if let Some(model) = model {
            body["model"] = json!(model);
        }
        if let Some(t) = temperature {
            body["metadata"] = json!({"temperature": t});
        }
        body
    };
    let upstream = llm.requests().len();

    for model in ["gpt-nope", "gpt-4o", "FAKE-MODEL", "other-model ", ""] {
        let res = send_json(&app, &path, &token, &with(Some(model), None)).await;
        let err = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], "model", "{model:?}: {err}");
        // The refusal does not echo what was asked for.
        assert!(
            model.trim().is_empty() || !err["message"].as_str().unwrap_or("").contains(model),
            "{err}"
        );
    }
    let res = send_json(
        &app,
        "/api/v1/conversations",
        &token,
        &with(Some("gpt-nope"), None),
    )
    .await;
    error_body(res, 422, "VALIDATION_ERROR").await;
    for t in [
        json!(2.5),
        json!(-0.1),
        json!(1e9),
        json!("hot"),
        json!(null),
    ] {
        let res = send_json(&app, &path, &token, &with(None, Some(t.clone()))).await;
        if t.is_null() {
            // An explicit null is no temperature.
            assert_eq!(res.status(), 200, "temperature null");
            continue;
        }
        // A number out of range breaks a rule; a string is the wrong type.
        let status = if t.is_string() { 400 } else { 422 };
        let err = error_body(res, status, "VALIDATION_ERROR").await;
        let field = err["field"].as_str().unwrap_or_default();
        assert!(field.ends_with("temperature"), "{t}: {err}");
    }
    let res = send_json(
        &app,
        &path,
        &token,
        &json!({"messages": message_body("hi")["messages"], "metadata": {"top_p": 1}}),
    )
    .await;
    let err = error_body(res, 400, "VALIDATION_ERROR").await;
    assert!(err["field"].as_str().is_some_and(|f| f.ends_with("top_p")));
    // Only the explicit-null send reached the model.
    assert_eq!(llm.requests().len(), upstream + 1);

    let last = |llm: &FakeLlm| llm.requests().last().cloned().expect("an upstream request");
    let res = send_json(&app, &path, &token, &with(Some("other-model"), None)).await;
    assert_eq!(res.status(), 200);
    let sent: Value = res.json().await.expect("a JSON answer");
    assert_eq!(sent["message"]["metadata"]["model_slug"], "other-model");
    assert_eq!(last(&llm)["model"], "other-model");

    let res = send_json(&app, &path, &token, &with(Some("default"), None)).await;
    assert_eq!(res.status(), 200);
    let sent: Value = res.json().await.expect("a JSON answer");
    assert_eq!(sent["message"]["metadata"]["model_slug"], MODEL);
    assert_eq!(last(&llm)["model"], MODEL);

    let res = send_json(&app, &path, &token, &with(Some(MODEL), Some(json!(0.5)))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(last(&llm)["model"], MODEL);
    assert_eq!(last(&llm)["temperature"], 0.5);

    for t in [0, 2] {
        let res = send_json(&app, &path, &token, &with(None, Some(json!(t)))).await;
        assert_eq!(res.status(), 200, "temperature {t}");
        assert_eq!(last(&llm)["temperature"].as_f64(), Some(f64::from(t)));
    }

    // The new-conversation routes take the model too.
    let res = send_json(
        &app,
        "/backend-api/f/conversation",
        &token,
        &with(Some("other-model"), Some(json!(1.5))),
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(last(&llm)["model"], "other-model");
    assert_eq!(last(&llm)["temperature"], 1.5);
}

async fn accept_header_that_is_neither_sse_nor_json_is_406(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let id = id_of(&new_conversation(&app, &token, "negotiate").await);
    let upstream = llm.requests().len();
    let paths = [
        "/api/v1/conversations".to_owned(),
        format!("/api/v1/conversations/{id}/messages"),
        "/backend-api/f/conversation".to_owned(),
    ];
    let post = |path: &str, accept: &str| {
        app.client
            .post(app.url(path))
            .bearer_auth(&token)
            .header("accept", accept)
            .json(&message_body("hi"))
            .send()
    };
    for path in &paths {
        for accept in ["text/html", "application/xml", "image/png, text/plain"] {
            let res = post(path, accept).await.expect("POST");
            error_body(res, 406, "NOT_ACCEPTABLE").await;
        }
    }
    // Nothing was stored and nothing reached the model.
    assert_eq!(llm.requests().len(), upstream);
    let page = get_json(&app, "/api/v1/conversations", &token).await;
    assert_eq!(page["total"], 1);
    let history = app.conversation(&token, &id).await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(2));

    // What a browser or a JSON client sends is accepted.
    let res = post(&paths[1], "text/event-stream").await.expect("POST");
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-type"), "text/event-stream");
    SseReader::new(res).rest().await;
    let res = post(&paths[1], "*/*").await.expect("POST");
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-type"), "text/event-stream");
    SseReader::new(res).rest().await;
    let res = post(&paths[1], "text/html, application/json;q=0.9")
        .await
        .expect("POST");
    assert_eq!(res.status(), 200);
    assert!(header(&res, "content-type").starts_with("application/json"));
    let sent: Value = res.json().await.expect("a JSON answer");
    assert_eq!(sent["conversation_id"], id.as_str());
}

/// `If-Match` on a change: the version a tab read (its `ETag`) must still
/// be current, else 412 and nothing changes; `*` is any version; a weak
/// tag never matches (strong comparison); without the header, changes go
/// ahead as before.
async fn two_tabs_cannot_overwrite_each_other_with_if_match(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[("CONFAB__LLM__TITLE_GENERATION", "false")]);
    let token = app.user("ada").await;
    let (id, _) = app.chat(&token, "hi").await;
    let path = format!("/api/v1/conversations/{id}");
    let tag = |res: &reqwest::Response| res.headers()["etag"].to_str().unwrap().to_owned();
    let change = |method: Method, if_match: String, body: Option<Value>| {
        let mut req = app
            .client
            .request(method, app.url(&path))
            .bearer_auth(&token)
            .header("if-match", if_match);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let read = tag(&app.get_auth(&path, &token).await);
    // Tab one renames with the version it read.
    let res = change(Method::PATCH, read.clone(), Some(json!({"title": "One"})))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Tab two still holds the old version: refused, nothing changed.
    let res = change(Method::PATCH, read.clone(), Some(json!({"title": "Two"})))
        .await
        .unwrap();
    let body = error_body(res, 412, "PRECONDITION_FAILED").await;
    assert!(body["message"].as_str().unwrap().contains("read it again"));
    assert_eq!(app.conversation(&token, &id).await["title"], "One");
    let current = tag(&app.get_auth(&path, &token).await);
    assert_ne!(current, read);
    for stale in [read.clone(), format!("W/{current}"), "\"nope\"".to_owned()] {
        let res = change(Method::DELETE, stale.clone(), None).await.unwrap();
        error_body(res, 412, "PRECONDITION_FAILED").await;
    }
    let res = change(
        Method::PATCH,
        format!("\"x\", {current}"),
        Some(json!({"title": "Three"})),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200, "one of the listed tags is current");
    let res = change(Method::DELETE, "*".to_owned(), None).await.unwrap();
    assert_eq!(res.status(), 204);
    // `*` names no version of a conversation that is gone.
    let res = change(Method::DELETE, "*".to_owned(), None).await.unwrap();
    error_body(res, 404, "NOT_FOUND").await;
}
