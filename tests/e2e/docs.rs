//! The OpenAPI document and the interactive docs.

use std::collections::BTreeSet;

use confab_e2e::spawn_app;
use confab_sql::Backend;

on_both_backends!(
    openapi_document_lists_every_served_route,
    docs_page_renders_from_the_binary
);

async fn openapi_document_lists_every_served_route(backend: Backend) {
    let app = spawn_app(backend);
    let res = app.get("/api/v1/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc: serde_json::Value = res.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    // The served document is the committed one with the configured model
    // names (no model here: `default` alone) as a send's `model` enum.
    let mut bare = doc.clone();
    for body in ["SendBody", "MessageBody", "NewConversationBody"] {
        let model = &mut bare["components"]["schemas"][body]["properties"]["model"];
        assert_eq!(
            model["enum"],
            serde_json::json!(["default", null]),
            "{body}"
        );
        model.as_object_mut().unwrap().remove("enum");
    }
    let model = &mut bare["components"]["schemas"]["ConversationPatchBody"]["properties"]["model"];
    assert_eq!(model["enum"], serde_json::json!(["default"]));
    model.as_object_mut().unwrap().remove("enum");
    assert_eq!(
        bare,
        serde_json::from_str::<serde_json::Value>(&confab_http::openapi_json().unwrap()).unwrap()
    );
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = confab_http::served_routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_owned()))
        .collect();
    assert_eq!(
        served, documented,
        "served routes and the OpenAPI document differ"
    );
    // Every operation documents its responses, each with a description.
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{method} {path}");
        assert!(
            responses.values().all(|r| r["description"].is_string()),
            "{method} {path}"
        );
    }
}

async fn docs_page_renders_from_the_binary(backend: Backend) {
    let app = spawn_app(backend);
    let res = app.get("/docs").await;
    assert_eq!(res.status(), 308);
    assert_eq!(res.headers()["location"], "/docs/");
    let res = app.get("/docs/").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let init = app
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("/api/v1/openapi.json"), "{init}");
    // A missing file under the UI is a 404 in the error shape, not a panic.
    confab_e2e::error_body(app.get("/docs/no-such-file.js").await, 404, "NOT_FOUND").await;
}
