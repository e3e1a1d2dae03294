//! Health, readiness and metrics.

use confab_e2e::spawn_app;
use confab_sql::Backend;

on_both_backends!(
    healthz_answers_ok,
    readyz_checks_the_database,
    metrics_are_on_their_own_listener_by_route_template,
    made_up_methods_share_one_metric_label,
);

#[tokio::test]
async fn readyz_is_503_while_the_database_is_gone_and_recovers_when_it_is_back() {
    let app = confab_e2e::spawn_app_with(
        Backend::Postgres,
        &[("CONFAB__DATABASE__ACQUIRE_TIMEOUT_MS", "300")],
    );
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert!(app.db.cut_off());
    let res = app.get("/readyz").await;
    assert_eq!(res.headers()["retry-after"], "5");
    let err = confab_e2e::error_body(res, 503, "UNAVAILABLE").await;
    assert!(
        err["message"].as_str().unwrap().contains("database"),
        "{err}"
    );
    // Liveness does not depend on the database.
    assert_eq!(app.get("/healthz").await.status(), 200);
    // A request that needs the database is a 503 too, never a 500.
    let res = app.register("orphan").await;
    confab_e2e::error_body(res, 503, "UNAVAILABLE").await;
    // The database comes back (a restart): the service recovers by itself.
    assert!(app.db.reconnect());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while app.get("/readyz").await.status() != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Readiness proves one connection; each other pooled connection finds
    // out it broke on its next job (and a thread whose reconnect failed
    // while the database was down waits out its pause). Until every one
    // has reconnected a request may be a 503 to retry, never a 500.
    loop {
        let res = app.register("back").await;
        if res.status() == 201 {
            break;
        }
        confab_e2e::error_body(res, 503, "UNAVAILABLE").await;
        assert!(
            std::time::Instant::now() < deadline,
            "requests never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn made_up_methods_share_one_metric_label(backend: Backend) {
    let app = spawn_app(backend);
    for m in ["FOO1", "FOO2", "BREW"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        let res = app
            .client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405);
    }
    let text = app.metrics().await;
    assert!(
        text.contains(
            r#"confab_http_requests_total{method="OTHER",route="/healthz",status="405"} 3"#
        ),
        "{text}"
    );
    assert!(!text.contains("FOO1") && !text.contains("BREW"), "{text}");
}

async fn healthz_answers_ok(backend: Backend) {
    let app = spawn_app(backend);
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ok"})
    );
}

async fn readyz_checks_the_database(backend: Backend) {
    let app = spawn_app(backend);
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"status": "ready", "checks": {"database": "ok"}})
    );
}

async fn metrics_are_on_their_own_listener_by_route_template(backend: Backend) {
    let app = spawn_app(backend);
    app.get("/healthz").await;
    app.get("/no/such/1").await;
    app.get("/no/such/2").await;
    // Never on the public listener.
    assert_eq!(app.get("/metrics").await.status(), 404);
    let text = app.metrics().await;
    assert!(
        text.contains(
            r#"confab_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "{text}"
    );
    // Unmatched paths (the two above and /metrics on the public listener)
    // share one label: raw paths never become label values.
    assert!(
        text.contains(
            r#"confab_http_requests_total{method="GET",route="unmatched",status="404"} 3"#
        ),
        "{text}"
    );
    assert!(!text.contains("/no/such"), "{text}");
    assert!(text.contains("confab_http_request_duration_seconds_bucket"));
}
