//! Export and delete-all (issue 15): a conversation's whole tree as JSON,
//! its current branch as Markdown, all of a user's conversations as JSON
//! Lines, and a clean slate.

use confab_e2e::chat::{message_body, message_ids, replay, spawn_chat};
use confab_e2e::error_body;
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    an_export_holds_every_branch_and_the_markdown_the_current_one,
    all_conversations_export_as_json_lines_and_go_at_once,
);

async fn an_export_holds_every_branch_and_the_markdown_the_current_one(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("archivist").await;
    llm.push(Script::reply(&["The first answer."]));
    let (id, _) = app.chat(&token, "The first question?").await;
    let line = message_ids(&app.conversation(&token, &id).await);
    llm.push(Script::reply(&["Another answer."]));
    let events = app
        .send_to(&token, &id, &json!({"action": "variant"}))
        .await;
    let variant = replay(&events)["message"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    llm.push(Script::reply(&["The second answer."]));
    app.send_to(&token, &id, &message_body("The second question?"))
        .await;
    let branch = message_ids(&app.conversation(&token, &id).await);
    assert_eq!(branch[1], variant);

    // JSON: the whole tree, as the tree route gives it.
    let res = app
        .get_auth(&format!("/api/v1/conversations/{id}/export"), &token)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let export: Value = res.json().await.unwrap();
    let tree: Value = app
        .get_auth(
            &format!("/api/v1/conversations/{id}/tree?limit=500"),
            &token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(export["nodes"], tree["nodes"]);
    assert_eq!(export["conversation_id"], json!(id));
    assert_eq!(export["current_node"], json!(branch[3]));
    let all: Vec<&str> = export["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(all.len(), 5, "both answers to the first question");
    assert!(all.contains(&line[1].as_str()) && all.contains(&variant.as_str()));
    // The same with format=json.
    let again: Value = app
        .get_auth(
            &format!("/api/v1/conversations/{id}/export?format=json"),
            &token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, export);

    // Markdown: the current branch, in order, readable.
    let res = app
        .get_auth(
            &format!("/api/v1/conversations/{id}/export?format=markdown"),
            &token,
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/markdown")
    );
    let text = res.text().await.unwrap();
    let title = app.conversation(&token, &id).await["title"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        text,
        format!(
            "# {title}\n\n## You\n\nThe first question?\n\n## Assistant\n\nAnother answer.\n\n\
             ## You\n\nThe second question?\n\n## Assistant\n\nThe second answer.\n\n"
        )
    );
    assert!(!text.contains("The first answer."), "another branch");

    // Bad formats, and another user's conversation.
    let res = app
        .get_auth(
            &format!("/api/v1/conversations/{id}/export?format=pdf"),
            &token,
        )
        .await;
    let body = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["field"], "format");
    let mallory = app.user("mallory").await;
    for format in ["json", "markdown"] {
        let res = app
            .get_auth(
                &format!("/api/v1/conversations/{id}/export?format={format}"),
                &mallory,
            )
            .await;
        let body = error_body(res, 404, "NOT_FOUND").await;
        assert_eq!(body.get("field"), None);
    }
}

async fn all_conversations_export_as_json_lines_and_go_at_once(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("minimalist").await;
    let mut mine = Vec::new();
    for n in 0..3 {
        let (id, _) = app.chat(&token, &format!("question {n}")).await;
        mine.push(id);
    }
    // An archived one is exported too.
    let res = app
        .patch_conversation(&token, &mine[0], &json!({"is_archived": true}))
        .await;
    assert_eq!(res.status(), 200);
    let other = app.user("bystander").await;
    let (theirs, _) = app.chat(&other, "not yours").await;

    let res = app.get_auth("/api/v1/conversations/export", &token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let text = res.text().await.unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    let exported: Vec<&str> = lines
        .iter()
        .map(|l| l["conversation_id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = mine.iter().rev().map(String::as_str).collect();
    assert_eq!(exported, newest_first, "all of mine, none of theirs");
    for line in &lines {
        let id = line["conversation_id"].as_str().unwrap();
        let single: Value = app
            .get_auth(&format!("/api/v1/conversations/{id}/export"), &token)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(line, &single);
    }

    // A clean slate needs its confirmation.
    let res = app
        .call(Method::DELETE, "/api/v1/conversations", &token, None)
        .await;
    assert_eq!(res.status(), 400);
    let res = app
        .call(
            Method::DELETE,
            "/api/v1/conversations?confirm=yes",
            &token,
            None,
        )
        .await;
    let body = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(body["field"], "confirm");
    assert_eq!(
        app.get_auth("/api/v1/conversations", &token)
            .await
            .json::<Value>()
            .await
            .unwrap()["total"],
        2
    );
    let res = app
        .call(
            Method::DELETE,
            "/api/v1/conversations?confirm=all",
            &token,
            None,
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"deleted": 3}));
    for id in &mine {
        let res = app
            .get_auth(&format!("/api/v1/conversations/{id}"), &token)
            .await;
        assert_eq!(res.status(), 404, "gone everywhere");
    }
    for archived in ["false", "true"] {
        let list: Value = app
            .get_auth(
                &format!("/api/v1/conversations?archived={archived}"),
                &token,
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list["total"], 0);
    }
    let res = app.get_auth("/api/v1/conversations/export", &token).await;
    assert_eq!(res.text().await.unwrap(), "");
    // Nobody else's went.
    let res = app
        .get_auth(&format!("/api/v1/conversations/{theirs}"), &other)
        .await;
    assert_eq!(res.status(), 200);
}
