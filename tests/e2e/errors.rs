//! Every failure has the one error shape, actix's own included.

use confab_e2e::{error_body, spawn_app};
use confab_sql::Backend;

on_both_backends!(
    unknown_route_is_404_in_the_error_shape,
    wrong_method_is_405_with_allow,
    malformed_json_is_400_validation_error,
    text_plain_is_415,
    missing_content_type_is_415,
    body_over_the_limit_is_413_by_declared_length,
    body_over_the_limit_is_413_when_streamed,
    megabyte_password_is_refused_before_hashing,
    deeply_nested_json_is_400,
    invalid_utf8_is_400,
    wrong_field_type_names_the_field,
    unknown_fields_are_refused_so_role_cannot_be_set,
    sane_client_request_id_is_kept_and_insane_one_replaced,
    a_body_that_trickles_is_408,
    a_password_of_the_wrong_type_is_not_echoed,
);

async fn unknown_route_is_404_in_the_error_shape(backend: Backend) {
    let app = spawn_app(backend);
    let res = app.get("/api/v1/no/such/route?token=x").await;
    let err = error_body(res, 404, "NOT_FOUND").await;
    assert!(err.get("field").is_none());
}

async fn wrong_method_is_405_with_allow(backend: Backend) {
    let app = spawn_app(backend);
    let res = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.headers()["allow"], "GET, HEAD");
    error_body(res, 405, "METHOD_NOT_ALLOWED").await;
    let res = app.get("/api/v1/auth/register").await;
    assert_eq!(res.headers()["allow"], "POST");
    error_body(res, 405, "METHOD_NOT_ALLOWED").await;
}

async fn malformed_json_is_400_validation_error(backend: Backend) {
    let app = spawn_app(backend);
    for body in [
        r#"{"username": "#,
        r#"{"username": "a",}"#,
        "not json",
        r#"{"a":1} trailing"#,
    ] {
        let res = app
            .post_raw("/api/v1/auth/register", Some("application/json"), body)
            .await;
        error_body(res, 400, "VALIDATION_ERROR").await;
    }
}

async fn text_plain_is_415(backend: Backend) {
    let app = spawn_app(backend);
    let res = app
        .post_raw(
            "/api/v1/auth/register",
            Some("text/plain"),
            r#"{"username":"a"}"#,
        )
        .await;
    error_body(res, 415, "UNSUPPORTED_MEDIA_TYPE").await;
}

async fn missing_content_type_is_415(backend: Backend) {
    let app = spawn_app(backend);
    let res = app.post_raw("/api/v1/auth/register", None, "{}").await;
    error_body(res, 415, "UNSUPPORTED_MEDIA_TYPE").await;
}

async fn body_over_the_limit_is_413_by_declared_length(backend: Backend) {
    let app = spawn_app(backend);
    let big = format!(r#"{{"username":"{}"}}"#, "a".repeat(70 * 1024));
    let res = app
        .post_raw("/api/v1/auth/register", Some("application/json"), big)
        .await;
    error_body(res, 413, "PAYLOAD_TOO_LARGE").await;
}

async fn body_over_the_limit_is_413_when_streamed(backend: Backend) {
    let app = spawn_app(backend);
    // No Content-Length: the limit must hold while the body streams in.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = app
        .post_raw("/api/v1/auth/register", Some("application/json"), body)
        .await;
    error_body(res, 413, "PAYLOAD_TOO_LARGE").await;
}

async fn megabyte_password_is_refused_before_hashing(backend: Backend) {
    let app = spawn_app(backend);
    let body = serde_json::json!({
        "username": "mallory", "email": "m@example.com", "password": "p".repeat(1024 * 1024),
    });
    error_body(
        app.post_json("/api/v1/auth/register", &body).await,
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    // Just over the policy cap but inside the body limit: 422 on the field.
    let body = serde_json::json!({
        "username": "mallory", "email": "m@example.com", "password": "p".repeat(129),
    });
    let err = error_body(
        app.post_json("/api/v1/auth/register", &body).await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(err["field"], "password");
}

async fn deeply_nested_json_is_400(backend: Backend) {
    let app = spawn_app(backend);
    let deep = format!(
        r#"{{"username":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let res = app
        .post_raw("/api/v1/auth/register", Some("application/json"), deep)
        .await;
    error_body(res, 400, "VALIDATION_ERROR").await;
}

async fn invalid_utf8_is_400(backend: Backend) {
    let app = spawn_app(backend);
    let mut body = br#"{"username":"al"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#"ice","email":"a@example.com","password":"correct horse battery"}"#);
    let res = app
        .post_raw("/api/v1/auth/register", Some("application/json"), body)
        .await;
    error_body(res, 400, "VALIDATION_ERROR").await;
}

async fn wrong_field_type_names_the_field(backend: Backend) {
    let app = spawn_app(backend);
    let body = serde_json::json!({"username": 42, "email": "a@example.com", "password": "correct horse battery"});
    let err = error_body(
        app.post_json("/api/v1/auth/register", &body).await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(err["field"], "username");
    let body = serde_json::json!({"username": "alice", "password": "correct horse battery"});
    let err = error_body(
        app.post_json("/api/v1/auth/register", &body).await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(err["field"], "email");
}

async fn unknown_fields_are_refused_so_role_cannot_be_set(backend: Backend) {
    let app = spawn_app(backend);
    let body = serde_json::json!({
        "username": "eve", "email": "eve@example.com", "password": "correct horse battery", "role": "admin",
    });
    let err = error_body(
        app.post_json("/api/v1/auth/register", &body).await,
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(err["field"], "role");
}

async fn a_body_that_trickles_is_408(backend: Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app =
        confab_e2e::spawn_app_with(backend, &[("CONFAB__SERVER__BODY_READ_TIMEOUT_MS", "300")]);
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The head promises 100 bytes; the body never comes.
    stream
        .write_all(b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buf = [0_u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            response.extend_from_slice(&buf[..n]);
            if n == 0 || String::from_utf8_lossy(&response).contains("}}") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server held the connection open");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"REQUEST_TIMEOUT""#), "{text}");
    assert!(text.to_lowercase().contains("x-request-id: "), "{text}");
}

async fn a_password_of_the_wrong_type_is_not_echoed(backend: Backend) {
    let app = spawn_app(backend);
    let body = serde_json::json!({"username": "tom", "email": "t@example.com", "password": 31415926535_u64});
    let res = app.post_json("/api/v1/auth/register", &body).await;
    let err = error_body(res, 400, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "password");
    assert!(!err.to_string().contains("31415926535"), "{err}");
}

async fn sane_client_request_id_is_kept_and_insane_one_replaced(backend: Backend) {
    let app = spawn_app(backend);
    let res = app
        .client
        .get(app.url("/nope"))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc.123");
    let err = error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(err["request_id"], "trace-abc.123");
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "<script>")
        .send()
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.starts_with("req_") && id.len() == 36, "{id}");
}
