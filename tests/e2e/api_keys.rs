//! API keys (issue 16): created with a name, scopes and an optional
//! expiry, their text shown once and never logged; listed without it; a
//! key calls only the routes its scopes reach (403 elsewhere, the account,
//! session, key and admin routes always), in a rate bucket of its own, and
//! reads only its owner's data; revoked, it is refused at once on every
//! instance (two servers sharing Redis); made-up keys are refused and,
//! past a bound per address, refused before any look-up.

use confab_e2e::chat::{PASSWORD, SseReader, message_body, spawn_chat_with_redis};
use confab_e2e::fake_llm::FakeLlm;
use confab_e2e::{TestApp, captured_logs, error_body};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    a_key_works_within_its_scopes_and_dies_everywhere_when_revoked,
    keys_are_validated_bounded_and_never_shown_twice,
);

const KEYS: &str = "/api/v1/users/me/api-keys";

/// Creates a key as `token`: its body (with `key`, the text).
async fn create_key(app: &TestApp, token: &str, body: &Value) -> Value {
    let res = app.call(Method::POST, KEYS, token, Some(body)).await;
    assert_eq!(res.status(), 201, "create {body}");
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.unwrap()
}

async fn list_keys(app: &TestApp, token: &str) -> (String, Vec<Value>) {
    let res = app.get_auth(KEYS, token).await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    (text, body["items"].as_array().unwrap().clone())
}

/// `method path` as `credential`, with `body`: the response.
async fn as_key(
    app: &TestApp,
    method: Method,
    path: &str,
    credential: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    app.call(method, path, credential, body).await
}

async fn a_key_works_within_its_scopes_and_dies_everywhere_when_revoked(backend: Backend) {
    let llm = FakeLlm::start();
    let a = spawn_chat_with_redis(backend, &llm, &[]);
    let b = a.sibling(&[]);
    let token = a.user("kira").await;
    let mallory = a.user("mallory").await;
    let created = create_key(
        &a,
        &token,
        &json!({"name": "deploy bot", "scopes": ["conversations:write", "conversations:read"]}),
    )
    .await;
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("cfk_"), "{created}");
    assert_eq!(
        created["scopes"],
        json!(["conversations:read", "conversations:write"])
    );
    assert_eq!(created["expires_at"], Value::Null);
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));

    // Listed on the other instance, never with its text.
    let secret = key.rsplit('_').next().unwrap().to_owned();
    let (text, items) = list_keys(&b, &token).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], json!(id));
    assert_eq!(items[0]["name"], "deploy bot");
    assert!(items[0].get("key").is_none());
    assert!(!text.contains(&secret), "the secret is never shown again");

    // The key sends and reads as its owner, on either instance, in a rate
    // bucket of its own.
    let res = b
        .send_message(
            "/api/v1/conversations",
            &key,
            &message_body("hello from a key"),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("api-key"),
        "{:?}",
        res.headers()
    );
    let events = SseReader::new(res).rest().await;
    assert!(events.iter().any(|e| e.data == "[DONE]"), "{events:?}");
    let conversation = confab_e2e::chat::conversation_of(&events);
    let path = format!("/api/v1/conversations/{conversation}");
    for app in [&a, &b] {
        let res = as_key(app, Method::GET, &path, &key, None).await;
        assert_eq!(res.status(), 200);
        let res = as_key(app, Method::GET, "/api/v1/conversations", &key, None).await;
        let list: Value = res.json().await.unwrap();
        assert_eq!(list["total"], 1);
    }
    // Its owner sees what the key wrote.
    let read = a.conversation(&token, &conversation).await;
    assert_eq!(
        read["messages"][0]["content"]["parts"][0],
        "hello from a key"
    );
    // Another user can't read it with their token, and the key can't read
    // theirs.
    let res = a.get_auth(&path, &mallory).await;
    assert_eq!(res.status(), 404);
    let (theirs, _) = a.chat(&mallory, "mallory's own").await;
    let res = as_key(
        &a,
        Method::GET,
        &format!("/api/v1/conversations/{theirs}"),
        &key,
        None,
    )
    .await;
    assert_eq!(res.status(), 404);

    // Beyond its scopes, and on the routes no key may call: 403 with
    // RFC 6750's challenge, and nothing done.
    let refused: [(Method, &str, Option<Value>); 10] = [
        (Method::GET, "/api/v1/models", None),
        (Method::GET, "/api/v1/users/me/usage", None),
        (Method::GET, "/api/v1/users/me", None),
        (Method::GET, KEYS, None),
        (
            Method::POST,
            KEYS,
            Some(json!({"name": "escalate", "scopes": ["usage:read"]})),
        ),
        (Method::DELETE, &format!("{KEYS}/{id}"), None),
        (Method::GET, "/api/v1/auth/sessions", None),
        (Method::POST, "/api/v1/auth/logout", None),
        (
            Method::POST,
            "/api/v1/users/me/password",
            Some(json!({"current_password": PASSWORD, "new_password": "an entirely new secret"})),
        ),
        (Method::GET, "/api/v1/admin/users", None),
    ];
    for (method, path, body) in &refused {
        let res = as_key(&b, method.clone(), path, &key, body.as_ref()).await;
        let www = res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(www.contains("insufficient_scope"), "{method} {path}: {www}");
        error_body(res, 403, "FORBIDDEN").await;
    }
    assert_eq!(list_keys(&a, &token).await.1.len(), 1, "no key was made");
    assert_eq!(a.get_auth("/api/v1/users/me", &token).await.status(), 200);
    // A read-only key can read but not write.
    let reader = create_key(
        &a,
        &token,
        &json!({"name": "reader", "scopes": ["conversations:read"]}),
    )
    .await;
    let reader = reader["key"].as_str().unwrap();
    assert_eq!(
        as_key(&b, Method::GET, &path, reader, None).await.status(),
        200
    );
    let res = as_key(&b, Method::DELETE, &path, reader, None).await;
    error_body(res, 403, "FORBIDDEN").await;
    let res = b
        .send_message(&format!("{path}/messages"), reader, &message_body("no"))
        .await;
    error_body(res, 403, "FORBIDDEN").await;

    // Someone else can't revoke it (404, as for a key that doesn't exist).
    let res = a
        .call(Method::DELETE, &format!("{KEYS}/{id}"), &mallory, None)
        .await;
    error_body(res, 404, "NOT_FOUND").await;
    let res = a
        .call(Method::DELETE, &format!("{KEYS}/not-a-key"), &token, None)
        .await;
    error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(
        as_key(&b, Method::GET, &path, &key, None).await.status(),
        200
    );

    // Revoked on A: refused at once on B, which had it in memory.
    let res = a
        .call(Method::DELETE, &format!("{KEYS}/{id}"), &token, None)
        .await;
    assert_eq!(res.status(), 204);
    for app in [&b, &a] {
        let res = as_key(app, Method::GET, &path, &key, None).await;
        error_body(res, 401, "AUTH_REQUIRED").await;
    }
    let res = a
        .call(Method::DELETE, &format!("{KEYS}/{id}"), &token, None)
        .await;
    error_body(res, 404, "NOT_FOUND").await;
    let (_, items) = list_keys(&a, &token).await;
    assert_eq!(items.len(), 1, "only the reader is left");
    assert!(items[0]["last_used_at"].is_string(), "{items:?}");

    // No key's text, and no secret of one, was ever logged.
    let logs = captured_logs();
    assert!(!logs.contains(&secret), "a key's secret was logged");
    assert!(
        logs.contains("api_key_revoked"),
        "the revocation is a security event"
    );
}

async fn keys_are_validated_bounded_and_never_shown_twice(backend: Backend) {
    let llm = FakeLlm::start();
    let a = spawn_chat_with_redis(backend, &llm, &[]);
    let token = a.user("quinn").await;
    for (body, status, field) in [
        (json!({"name": "", "scopes": ["usage:read"]}), 422, "name"),
        (
            json!({"name": "   ", "scopes": ["usage:read"]}),
            422,
            "name",
        ),
        (
            json!({"name": "x\u{7}", "scopes": ["usage:read"]}),
            422,
            "name",
        ),
        (
            json!({"name": "n".repeat(101), "scopes": ["usage:read"]}),
            422,
            "name",
        ),
        (json!({"name": "x", "scopes": []}), 422, "scopes"),
        (json!({"name": "x", "scopes": ["admin"]}), 422, "scopes"),
        (
            json!({"name": "x", "scopes": ["usage:read"], "expires_in_days": 0}),
            422,
            "expires_in_days",
        ),
        (
            json!({"name": "x", "scopes": ["usage:read"], "expires_in_days": 3651}),
            422,
            "expires_in_days",
        ),
    ] {
        let res = a.call(Method::POST, KEYS, &token, Some(&body)).await;
        let err = error_body(res, status, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], field, "{body}");
    }
    for body in [
        json!({"name": "x"}),
        json!({"name": "x", "scopes": "usage:read"}),
        json!({"name": "x", "scopes": ["usage:read"], "owner": "someone"}),
    ] {
        let res = a.call(Method::POST, KEYS, &token, Some(&body)).await;
        error_body(res, 400, "VALIDATION_ERROR").await;
    }
    let res = a
        .client
        .post(a.url(KEYS))
        .json(&json!({"name": "x", "scopes": ["usage:read"]}))
        .send()
        .await
        .unwrap();
    error_body(res, 401, "AUTH_REQUIRED").await;

    // An expiry; a taken name; the bound.
    let first = create_key(
        &a,
        &token,
        &json!({"name": "usage", "scopes": ["usage:read", "models:read"], "expires_in_days": 7}),
    )
    .await;
    assert!(first["expires_at"].is_string(), "{first}");
    let key = first["key"].as_str().unwrap();
    assert_eq!(
        as_key(&a, Method::GET, "/api/v1/models", key, None)
            .await
            .status(),
        200
    );
    assert_eq!(
        as_key(&a, Method::GET, "/api/v1/users/me/usage", key, None)
            .await
            .status(),
        200
    );
    let res = a
        .call(
            Method::POST,
            KEYS,
            &token,
            Some(&json!({"name": " usage ", "scopes": ["usage:read"]})),
        )
        .await;
    let err = error_body(res, 409, "CONFLICT").await;
    assert_eq!(err["field"], "name");
    for n in 1..25 {
        create_key(
            &a,
            &token,
            &json!({"name": format!("k{n}"), "scopes": ["models:read"]}),
        )
        .await;
    }
    let res = a
        .call(
            Method::POST,
            KEYS,
            &token,
            Some(&json!({"name": "one too many", "scopes": ["models:read"]})),
        )
        .await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "name");

    // Made-up keys: 401 at once (they were meant as keys); past the bound
    // per address, 429 before any look-up, while a known key still works.
    let made_up = |n: usize| {
        format!(
            "cfk_{}_{}",
            uuid::Uuid::new_v4().simple(),
            "x".repeat(40) + &format!("{n:03}")
        )
    };
    for n in 0..20 {
        let res = as_key(&a, Method::GET, "/api/v1/models", &made_up(n), None).await;
        error_body(res, 401, "AUTH_REQUIRED").await;
    }
    let res = as_key(&a, Method::GET, "/api/v1/models", &made_up(99), None).await;
    let err = error_body(res, 429, "RATE_LIMITED").await;
    assert!(err["message"].is_string());
    assert_eq!(
        as_key(&a, Method::GET, "/api/v1/models", key, None)
            .await
            .status(),
        200
    );
    assert_eq!(a.get_auth("/api/v1/models", &token).await.status(), 200);
}
