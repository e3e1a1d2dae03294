//! The contract's edges that schemathesis found the document and the code
//! disagreeing on, each pinned by name: the behaviour the document now
//! states.

use confab_e2e::chat::{message_body, spawn_chat};
use confab_e2e::error_body;
use confab_e2e::fake_llm::FakeLlm;
use confab_sql::Backend;
use serde_json::{Value, json};

on_both_backends!(
    a_method_a_path_does_not_serve_is_405_whatever_key_it_carries,
    a_conversation_change_takes_no_null_and_a_title_as_documented,
    a_refresh_body_of_null_is_no_body,
    the_longest_message_fits_a_send_however_its_json_escapes_it,
    the_canonical_sends_take_no_conversation_id,
    accept_decides_406_and_head_answers_every_get,
    a_created_resource_is_located,
);

async fn a_method_a_path_does_not_serve_is_405_whatever_key_it_carries(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let path = "/api/v1/admin/users/0193b8a1-c2d3-7e5f-8a9b-0c1d2e3f4a5b";
    for key in ["k1", "k1", "a\tb", ""] {
        let res = app
            .client
            .post(app.url(path))
            .bearer_auth(&token)
            .header("idempotency-key", key.as_bytes())
            .json(&json!({"disabled": true}))
            .send()
            .await
            .unwrap();
        let allow = res.headers().get("allow").cloned();
        error_body(res, 405, "METHOD_NOT_ALLOWED").await;
        assert_eq!(allow.unwrap(), "PATCH, DELETE");
    }
}

async fn a_conversation_change_takes_no_null_and_a_title_as_documented(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let (id, _) = app.chat(&token, "hello").await;
    let path = format!("/api/v1/conversations/{id}");
    let patch = |body: Value| {
        app.client
            .patch(app.url(&path))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    // `null` is a value of the wrong type (400); a title breaking its rule
    // is 422.
    for (body, field, status) in [
        (json!({"title": null}), "title", 400),
        (json!({"is_archived": null}), "is_archived", 400),
        (json!({"title": null, "is_archived": true}), "title", 400),
        (json!({"title": "\ttabbed"}), "title", 422),
        (json!({"title": "  \u{3000} "}), "title", 422),
        (json!({"title": "x".repeat(201)}), "title", 422),
    ] {
        let res = patch(body.clone()).await.unwrap();
        let err = error_body(res, status, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], field, "{body}");
    }
    // At the edges: 200 characters with white space around, trimmed.
    let title = format!(" {} ", "t".repeat(198));
    let res = patch(json!({"title": title})).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["title"], "t".repeat(198));
}

async fn a_refresh_body_of_null_is_no_body(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    // No cookie and a `null` body: the same answer as no body at all.
    for body in ["null", ""] {
        let res = app
            .client
            .post(app.url("/api/v1/auth/refresh"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        error_body(res, 401, "AUTH_REQUIRED").await;
    }
}

async fn the_longest_message_fits_a_send_however_its_json_escapes_it(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    // 100,000 characters outside the BMP, each escaped as a surrogate
    // pair: 1.2 MB of JSON for the longest message the domain takes.
    let text = "\u{1F600}".repeat(100_000);
    let escaped = text
        .encode_utf16()
        .map(|unit| format!("\\u{unit:04x}"))
        .collect::<String>();
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":{{"content_type":"text","parts":["{escaped}"]}}}}]}}"#
    );
    assert!(body.len() > 1_200_000);
    let send = |body: String| {
        app.client
            .post(app.url("/api/v1/conversations"))
            .bearer_auth(&token)
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = send(body).await.unwrap();
    assert_eq!(res.status(), 201);
    let sent: Value = res.json().await.unwrap();
    assert_eq!(sent["input_message"]["content"]["parts"][0], text);
    // One character more is the domain's 422, not the body limit's 413.
    let mut longer = message_body(&"a".repeat(100_001));
    let res = send(longer.to_string()).await.unwrap();
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "messages[0].content.parts");
    // Past the send limit (2 MiB) is 413.
    longer["messages"][0]["content"]["parts"][0] = json!("a".repeat(2 * 1024 * 1024));
    let res = send(longer.to_string()).await.unwrap();
    error_body(res, 413, "PAYLOAD_TOO_LARGE").await;
}

async fn the_canonical_sends_take_no_conversation_id(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let (id, _) = app.chat(&token, "hello").await;
    let mut body = message_body("again");
    body["conversation_id"] = json!(id);
    for path in [
        "/api/v1/conversations".to_owned(),
        format!("/api/v1/conversations/{id}/messages"),
    ] {
        let res = app.send_message(&path, &token, &body).await;
        let err = error_body(res, 400, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], "conversation_id", "{path}");
    }
    // The seed's route takes it.
    let res = app
        .send_message("/backend-api/f/conversation", &token, &body)
        .await;
    assert_eq!(res.status(), 200);
}

async fn accept_decides_406_and_head_answers_every_get(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("ada").await;
    let (id, _) = app.chat(&token, "hello").await;
    let get = |path: String, accept: &'static str| {
        app.client
            .get(app.url(&path))
            .bearer_auth(&token)
            .header("accept", accept)
            .send()
    };
    // A JSON route asked for XML only: 406, in the error shape.
    for path in [
        "/api/v1/users/me".to_owned(),
        "/api/v1/conversations".to_owned(),
        format!("/api/v1/conversations/{id}"),
        "/api/v1/openapi.json".to_owned(),
    ] {
        let res = get(path.clone(), "application/xml").await.unwrap();
        error_body(res, 406, "NOT_ACCEPTABLE").await;
        let res = get(path.clone(), "text/html, application/json;q=0.5")
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    // The probes answer whatever a load balancer accepts.
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // HEAD: GET's status and headers, no body.
    for path in [
        "/api/v1/users/me".to_owned(),
        "/api/v1/conversations".to_owned(),
        format!("/api/v1/conversations/{id}"),
        format!("/backend-api/conversation/{id}"),
    ] {
        let full = get(path.clone(), "application/json").await.unwrap();
        let head = app
            .client
            .head(app.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "{path}");
        assert_eq!(
            head.headers().get("etag"),
            full.headers().get("etag"),
            "{path}"
        );
        assert_eq!(head.headers()["content-type"], "application/json");
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    // HEAD is in `Allow` beside GET.
    let res = app
        .client
        .put(app.url("/api/v1/conversations"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["allow"], "GET, HEAD, DELETE, POST");
    error_body(res, 405, "METHOD_NOT_ALLOWED").await;
}

async fn a_created_resource_is_located(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let res = app.register("ada").await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["location"], "/api/v1/users/me");
    let token = app.user("bob").await;
    for path in ["/api/v1/conversations", "/backend-api/f/conversation"] {
        let res = app
            .client
            .post(app.url(path))
            .bearer_auth(&token)
            .header("accept", "application/json")
            .json(&message_body("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            location,
            format!(
                "/api/v1/conversations/{}",
                body["conversation_id"].as_str().unwrap()
            )
        );
        let res = app.get_auth(&location, &token).await;
        assert_eq!(res.status(), 200);
    }
}
