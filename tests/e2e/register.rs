//! `POST /api/v1/auth/register`: the first JSON route.

use confab_e2e::{error_body, spawn_app, spawn_app_with};
use confab_sql::Backend;

on_both_backends!(
    register_creates_a_user_without_secrets,
    taken_username_or_email_is_409,
    each_rule_is_422_naming_its_field,
    nul_byte_in_a_field_is_422_not_500,
    a_registration_flood_is_limited_and_logins_go_on,
);

/// A flood of registrations, from one address and from many: each limit
/// refuses with 429 before any hash, and a login meanwhile still works.
async fn a_registration_flood_is_limited_and_logins_go_on(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("CONFAB__RATE_LIMIT__REGISTER_PER_MINUTE", "3"),
            ("CONFAB__RATE_LIMIT__REGISTER_OVERALL_PER_MINUTE", "5"),
            ("CONFAB__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
        ],
    );
    let register = |name: String, from: &'static str| {
        let body = serde_json::json!({
            "username": name, "email": format!("{name}@example.com"),
            "password": "correct horse battery staple",
        });
        app.client
            .post(app.url("/api/v1/auth/register"))
            .header("x-forwarded-for", from)
            .json(&body)
            .send()
    };
    for n in 0..3 {
        let res = register(format!("first{n}"), "203.0.113.1").await.unwrap();
        assert_eq!(res.status(), 201);
    }
    // A fourth from the same address: its bucket is empty.
    let res = register("first3".into(), "203.0.113.1").await.unwrap();
    assert!(res.headers().contains_key("retry-after"));
    error_body(res, 429, "RATE_LIMITED").await;
    // From other addresses, until the overall bucket is empty too.
    for n in 0..2 {
        let res = register(format!("second{n}"), "203.0.113.2").await.unwrap();
        assert_eq!(res.status(), 201);
    }
    let res = register("third0".into(), "203.0.113.3").await.unwrap();
    error_body(res, 429, "RATE_LIMITED").await;
    // Logins are not registrations: they go on.
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "203.0.113.3")
        .json(
            &serde_json::json!({"username": "first0", "password": "correct horse battery staple"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn register_creates_a_user_without_secrets(backend: Backend) {
    let app = spawn_app(backend);
    let res = app
        .post_json(
            "/api/v1/auth/register",
            &serde_json::json!({"username": "Alice", "email": "Alice@Example.com", "password": "correct horse battery staple"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let user: serde_json::Value = res.json().await.unwrap();
    assert_eq!(user["username"], "alice");
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["role"], "user");
    assert_eq!(user["disabled"], false);
    assert!(user["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    let mut keys: Vec<&String> = user.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["created_at", "disabled", "email", "id", "role", "username"],
        "no hash or internal field"
    );
    assert!(!user.to_string().contains("pbkdf2"));
}

async fn taken_username_or_email_is_409(backend: Backend) {
    let app = spawn_app(backend);
    assert_eq!(app.register("bob").await.status(), 201);
    let body = serde_json::json!({"username": "BOB", "email": "other@example.com", "password": "correct horse battery"});
    let err = error_body(
        app.post_json("/api/v1/auth/register", &body).await,
        409,
        "CONFLICT",
    )
    .await;
    assert_eq!(err["field"], "username");
    let body = serde_json::json!({"username": "robert", "email": "BOB@example.com", "password": "correct horse battery"});
    let err = error_body(
        app.post_json("/api/v1/auth/register", &body).await,
        409,
        "CONFLICT",
    )
    .await;
    assert_eq!(err["field"], "email");
}

async fn each_rule_is_422_naming_its_field(backend: Backend) {
    let app = spawn_app(backend);
    for (username, email, password, field) in [
        ("ab", "a@example.com", "correct horse battery", "username"),
        ("root", "a@example.com", "correct horse battery", "username"),
        (
            "bad name",
            "a@example.com",
            "correct horse battery",
            "username",
        ),
        ("carol", "carol@", "correct horse battery", "email"),
        ("carol", "carol@example.com", "short", "password"),
        ("carol", "carol@example.com", "xxcarolxx-pass", "password"),
        ("carol", "carol@example.com", "password123", "password"),
    ] {
        let body = serde_json::json!({"username": username, "email": email, "password": password});
        let err = error_body(
            app.post_json("/api/v1/auth/register", &body).await,
            422,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(err["field"], field, "{username} {email} {password}");
    }
}

async fn nul_byte_in_a_field_is_422_not_500(backend: Backend) {
    let app = spawn_app(backend);
    for (body, field) in [
        (
            serde_json::json!({"username": "nul\u{0}name", "email": "n@example.com", "password": "correct horse battery"}),
            "username",
        ),
        (
            serde_json::json!({"username": "nulname", "email": "n\u{0}@example.com", "password": "correct horse battery"}),
            "email",
        ),
        (
            serde_json::json!({"username": "nulname", "email": "n@example.com", "password": "correct\u{0}horse battery"}),
            "password",
        ),
    ] {
        let res = app.post_json("/api/v1/auth/register", &body).await;
        let err = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], field, "{err}");
    }
}
