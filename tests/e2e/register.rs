//! `POST /api/v1/auth/register`: the first JSON route.

use confab_e2e::{error_body, spawn_app};
use confab_sql::Backend;

on_both_backends!(
    register_creates_a_user_without_secrets,
    taken_username_or_email_is_409,
    each_rule_is_422_naming_its_field,
    nul_byte_in_a_field_is_422_not_500,
);

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
