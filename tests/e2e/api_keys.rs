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
    assert_eq!(
        a.get_auth("/api/v1/models", &token).await.status(),
        200,
        "a login session reaches every route"
    );
    let mallory = a.user("mallory").await;
    let created = create_key(
        &a,
        &token,
        &json!({"name": "deploy bot", "scopes": ["conversations:write", "conversations:read"], "password": PASSWORD}),
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
    // `cfk_<id>_<secret>`; the secret's base64url alphabet has `_` in it.
    let (_, secret) = key["cfk_".len()..].split_once('_').unwrap();
    let secret = secret.to_owned();
    assert_eq!(secret.len(), 43);
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
        &json!({"name": "reader", "scopes": ["conversations:read"], "password": PASSWORD}),
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

/// A creation body for `name` and `scopes`, with the password and `extra`.
fn key_body(name: &str, scopes: &Value, extra: &Value) -> Value {
    let mut body = json!({"name": name, "scopes": scopes, "password": PASSWORD});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn keys_are_validated_bounded_and_never_shown_twice(backend: Backend) {
    let llm = FakeLlm::start();
    let a = spawn_chat_with_redis(
        backend,
        &llm,
        &[
            ("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "1000"),
            ("CONFAB__RATE_LIMIT__API_KEY_LOOKUPS_PER_MINUTE", "10"),
        ],
    );
    let token = a.user("quinn").await;
    let usage = json!(["usage:read"]);
    let none = json!({});
    for (body, field) in [
        (key_body("", &usage, &none), "name"),
        (key_body("   ", &usage, &none), "name"),
        (key_body("x\u{7}", &usage, &none), "name"),
        (key_body(&"n".repeat(101), &usage, &none), "name"),
        (key_body("x", &json!([]), &none), "scopes"),
        (key_body("x", &json!(["admin"]), &none), "scopes"),
        (
            key_body("x", &usage, &json!({"expires_in_days": 0})),
            "expires_in_days",
        ),
        (
            key_body("x", &usage, &json!({"expires_in_days": 3651})),
            "expires_in_days",
        ),
        (
            key_body("x", &usage, &json!({"expires_in_days": 1e300})),
            "expires_in_days",
        ),
    ] {
        let res = a.call(Method::POST, KEYS, &token, Some(&body)).await;
        let err = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], field, "{body}");
    }
    for body in [
        json!({"name": "x", "password": PASSWORD}),
        json!({"name": "x", "scopes": ["usage:read"]}),
        key_body("x", &json!("usage:read"), &none),
        key_body("x", &usage, &json!({"owner": "someone"})),
        key_body("x", &usage, &json!({"expires_in_days": 1.5})),
        key_body("x", &usage, &json!({"expires_in_days": "7"})),
    ] {
        let res = a.call(Method::POST, KEYS, &token, Some(&body)).await;
        error_body(res, 400, "VALIDATION_ERROR").await;
    }
    let res = a
        .client
        .post(a.url(KEYS))
        .json(&key_body("x", &usage, &none))
        .send()
        .await
        .unwrap();
    error_body(res, 401, "AUTH_REQUIRED").await;
    // A stolen access token alone makes no key: the password is asked for.
    let res = a
        .call(
            Method::POST,
            KEYS,
            &token,
            Some(&json!({"name": "x", "scopes": ["usage:read"], "password": "not the password"})),
        )
        .await;
    error_body(res, 401, "INVALID_CREDENTIALS").await;

    // An expiry; a taken name; the bound.
    let first = create_key(
        &a,
        &token,
        &key_body(
            "usage",
            &json!(["usage:read", "models:read"]),
            &json!({"expires_in_days": 7}),
        ),
    )
    .await;
    assert!(first["expires_at"].is_string(), "{first}");
    let key = first["key"].as_str().unwrap();
    for path in [
        "/api/v1/models",
        "/api/v1/users/me/usage",
        "/api/v1/users/me/allowance",
    ] {
        assert_eq!(
            as_key(&a, Method::GET, path, key, None).await.status(),
            200,
            "{path}"
        );
    }
    // HEAD is its GET's: within the scopes it answers, beyond them it is
    // refused like the GET.
    assert_eq!(
        as_key(&a, Method::HEAD, "/api/v1/models", key, None)
            .await
            .status(),
        200
    );
    for path in [
        "/api/v1/users/me",
        KEYS,
        "/api/v1/auth/sessions",
        "/api/v1/conversations",
    ] {
        let res = as_key(&a, Method::HEAD, path, key, None).await;
        assert_eq!(res.status(), 403, "HEAD {path}");
    }
    // A path or method no route serves: refused too (fail closed).
    let res = as_key(&a, Method::GET, "/api/v1/nowhere", key, None).await;
    assert_eq!(res.status(), 403);
    let res = as_key(&a, Method::PUT, "/api/v1/models", key, None).await;
    assert_eq!(res.status(), 403);

    let res = a
        .call(
            Method::POST,
            KEYS,
            &token,
            Some(&key_body(" usage ", &usage, &none)),
        )
        .await;
    let err = error_body(res, 409, "CONFLICT").await;
    assert_eq!(err["field"], "name");
    for n in 1..25 {
        create_key(
            &a,
            &token,
            &key_body(&format!("k{n}"), &json!(["models:read"]), &none),
        )
        .await;
    }
    let res = a
        .call(
            Method::POST,
            KEYS,
            &token,
            Some(&key_body("one too many", &usage, &none)),
        )
        .await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "name");

    // Made-up keys: 401 at once; each one this instance has not seen costs
    // the address a look-up (10 a minute here; the real key's first use
    // took one), past which it is 429 before any database read, while a
    // key it knows still works. The budget refills a look-up every 6 s, so
    // a slow run may see a few more 401s first: the 429 must come, and
    // hold for the next made-up key, not at an exact count.
    let made_up = |n: usize| {
        format!(
            "cfk_{}_{}{n:03}",
            uuid::Uuid::new_v4().simple(),
            "x".repeat(40)
        )
    };
    let mut refused = None;
    for n in 0..30 {
        let res = as_key(&a, Method::GET, "/api/v1/models", &made_up(n), None).await;
        if res.status() == 429 {
            refused = Some((n, error_body(res, 429, "RATE_LIMITED").await));
            break;
        }
        error_body(res, 401, "AUTH_REQUIRED").await;
    }
    let (n, err) = refused.expect("made-up keys are refused 429 past the look-up budget");
    // Nine made-up keys fit the budget (ten, less the real key's look-up);
    // a refill only adds to it.
    assert!((9..=20).contains(&n), "the 429 came after {n} look-ups");
    assert!(err["message"].is_string());
    let res = as_key(&a, Method::GET, "/api/v1/models", &made_up(99), None).await;
    error_body(res, 429, "RATE_LIMITED").await;
    assert_eq!(
        as_key(&a, Method::GET, "/api/v1/models", key, None)
            .await
            .status(),
        200
    );
    assert_eq!(a.get_auth("/api/v1/models", &token).await.status(), 200);
}
