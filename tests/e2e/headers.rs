//! Security headers and CORS, on successes and errors alike.

use confab_e2e::{ALLOWED_ORIGIN, error_body, spawn_app, spawn_app_with};
use confab_sql::Backend;

on_both_backends!(
    security_headers_on_success_and_error_responses,
    auth_responses_are_not_cached,
    allowed_origin_is_echoed_with_vary,
    unlisted_origin_gets_no_cors_headers,
    preflight_from_an_allowed_origin_is_answered,
    cors_applies_to_errors_and_ignores_origin_case,
    only_the_allowed_hosts_are_answered,
    a_deprecated_surface_says_so_and_names_its_successor,
);

async fn cors_applies_to_errors_and_ignores_origin_case(backend: Backend) {
    let app = spawn_app(backend);
    let res = app
        .client
        .get(app.url("/missing"))
        .header("origin", "HTTPS://Chat.Example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "HTTPS://Chat.Example.com"
    );
    // Without an Origin, the answer still says it varies by Origin.
    let res = app.get("/healthz").await;
    assert!(res.headers().get_all("vary").iter().any(|v| v == "Origin"));
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

fn assert_security_headers(res: &reqwest::Response) {
    let h = res.headers();
    assert_eq!(
        h["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(
        h["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
    assert!(h.contains_key("x-request-id"));
}

async fn security_headers_on_success_and_error_responses(backend: Backend) {
    let app = spawn_app(backend);
    for res in [
        app.get("/healthz").await,
        app.get("/readyz").await,
        app.get("/api/v1/openapi.json").await,
        app.get("/missing").await,
        app.client.put(app.url("/healthz")).send().await.unwrap(),
        app.post_raw("/api/v1/auth/register", None, "x").await,
    ] {
        assert_security_headers(&res);
    }
}

async fn auth_responses_are_not_cached(backend: Backend) {
    let app = spawn_app(backend);
    let res = app.register("cachey").await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let res = app
        .post_json("/api/v1/auth/register", &serde_json::json!({}))
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["cache-control"], "no-store");
}

async fn allowed_origin_is_echoed_with_vary(backend: Backend) {
    let app = spawn_app(backend);
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("origin", ALLOWED_ORIGIN)
        .send()
        .await
        .unwrap();
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED_ORIGIN);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"));
    assert!(
        h["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("X-Request-Id")
    );
}

async fn unlisted_origin_gets_no_cors_headers(backend: Backend) {
    let app = spawn_app(backend);
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert!(h.get("access-control-allow-origin").is_none());
    assert!(h.get("access-control-allow-credentials").is_none());
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/register"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert!(res.headers().get("access-control-allow-methods").is_none());
}

async fn preflight_from_an_allowed_origin_is_answered(backend: Backend) {
    let app = spawn_app(backend);
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/register"))
        .header("origin", ALLOWED_ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED_ORIGIN);
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("Content-Type")
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["x-frame-options"], "DENY");
}

/// Seed 003's trusted hosts: a request naming another host (a DNS
/// rebinding page, a poisoned link) is 400 with the security headers;
/// the probes answer any host, for load balancers calling by address.
async fn only_the_allowed_hosts_are_answered(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[(
            "CONFAB__SECURITY__ALLOWED_HOSTS",
            "chat.example.com,*.example.org",
        )],
    );
    let get = |path: &'static str, host: &'static str| {
        app.client.get(app.url(path)).header("host", host).send()
    };
    for host in [
        "chat.example.com",
        "Chat.Example.com:8443",
        "eu.example.org",
    ] {
        let res = get("/api/v1/openapi.json", host).await.unwrap();
        assert_eq!(res.status(), 200, "{host}");
    }
    for host in [
        "evil.example",
        "example.org",
        "chat.example.com.evil.example",
        "127.0.0.1",
    ] {
        let res = get("/api/v1/openapi.json", host).await.unwrap();
        assert_eq!(res.headers()["x-frame-options"], "DENY");
        let body = error_body(res, 400, "VALIDATION_ERROR").await;
        assert_eq!(body["field"], "Host", "{host}");
    }
    for probe in ["/healthz", "/readyz"] {
        let res = get(probe, "10.0.0.7:8080").await.unwrap();
        assert_eq!(res.status(), 200, "{probe}");
    }
}

/// Seed 004: a route prefix configured as deprecated answers as before,
/// with `Deprecation`, `Sunset` and `Link` (successor and policy) on every
/// response, errors included; other routes carry none; the served document
/// marks exactly those operations deprecated.
async fn a_deprecated_surface_says_so_and_names_its_successor(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("development.toml"),
        r#"
[[api.deprecations]]
prefix = "/backend-api"
since = "2026-12-01T00:00:00Z"
sunset = "2027-06-30T00:00:00Z"
successor = "/api/v1"
policy = "https://chat.example.com/docs/deprecations"
"#,
    )
    .unwrap();
    let app = spawn_app_with(
        backend,
        &[("CONFAB_CONFIG_DIR", dir.path().to_str().unwrap())],
    );
    let token = app.user("dee").await;
    let old = app.get_auth("/backend-api/conversations", &token).await;
    assert_eq!(old.status(), 200, "still served");
    assert_eq!(old.headers()["deprecation"], "@1796083200");
    assert_eq!(old.headers()["sunset"], "Wed, 30 Jun 2027 00:00:00 GMT");
    let links: Vec<&str> = old
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        links,
        [
            r#"</api/v1>; rel="successor-version""#,
            r#"<https://chat.example.com/docs/deprecations>; rel="deprecation""#
        ]
    );
    let missing = app.get_auth("/backend-api/conversation/nope", &token).await;
    assert_eq!(
        missing.headers()["deprecation"],
        "@1796083200",
        "errors too"
    );
    error_body(missing, 404, "NOT_FOUND").await;
    let new = app.get_auth("/api/v1/conversations", &token).await;
    assert_eq!(new.status(), 200);
    assert!(!new.headers().contains_key("deprecation"));
    assert!(!new.headers().contains_key("sunset"));
    let doc: serde_json::Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let deprecated = op["deprecated"] == true;
            assert_eq!(
                deprecated,
                path.starts_with("/backend-api/"),
                "{method} {path}"
            );
        }
    }
}
