//! A long conversation read and continued a page at a time: the history
//! route pages backwards with a cursor (on both surfaces, in the cache
//! too), refuses bad page requests clearly, bounds a page by bytes, and a
//! send loads only the newest pages its prompt needs.

use confab_domain::{Content, ConversationId, MessageRole};
use confab_e2e::chat::{message_body, spawn_chat};
use confab_e2e::fake_llm::FakeLlm;
use confab_e2e::{TestApp, append, error_body, finished_message, spawn_app_with_redis};
use confab_sql::Backend;
use serde_json::{Value, json};

on_both_backends!(
    a_long_conversation_is_read_a_page_at_a_time,
    bad_page_requests_are_refused_with_the_field_named,
    a_page_holds_at_most_a_mebibyte_of_text,
    a_send_in_a_long_conversation_loads_only_what_its_prompt_needs,
    pages_are_cached_and_invalidated_together_with_redis,
);

/// Messages stored directly after the first exchange.
const STORED: usize = 248;

/// The id of the `n`th stored message.
fn stored_id(n: usize) -> String {
    format!("h{n:03}")
}

/// Stores `count` messages, alternating user and assistant, in
/// `conversation` (as a long life of sends would have), each `text(n)`.
async fn store_messages(
    app: &TestApp,
    conversation: &str,
    count: usize,
    text: impl Fn(usize) -> String,
) {
    let store = app.db.store().await;
    let conversation: ConversationId = conversation.parse().unwrap();
    for n in 0..count {
        let role = if n % 2 == 0 {
            MessageRole::User
        } else {
            MessageRole::Assistant
        };
        let message = finished_message(conversation, &stored_id(n), role, text(n));
        append(&store, message).await;
    }
}

/// A conversation of 250 messages (one exchange sent, 248 stored); its id.
async fn long_conversation(app: &TestApp, token: &str) -> String {
    let (id, _) = app.chat(token, "the very first question").await;
    store_messages(app, &id, STORED, |n| format!("stored message {n}")).await;
    id
}

/// `GET path` as JSON, expecting 200.
async fn page(app: &TestApp, token: &str, path: &str) -> Value {
    let res = app.get_auth(path, token).await;
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.unwrap()
}

/// The ids of a page's messages, in order.
fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads the whole history of `id` on `base` (a surface's path) a page of
/// `limit` at a time, following the cursors; the pages' sizes and the ids
/// in order.
async fn read_back(
    app: &TestApp,
    token: &str,
    base: &str,
    limit: Option<u32>,
) -> (Vec<usize>, Vec<String>) {
    let mut sizes = Vec::new();
    let mut all: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut query = Vec::new();
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        if let Some(before) = &before {
            query.push(format!("before={before}"));
        }
        let path = if query.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", query.join("&"))
        };
        let body = page(app, token, &path).await;
        let mut got = ids(&body);
        sizes.push(got.len());
        got.extend(all);
        all = got;
        if body["has_more"] == true {
            assert_eq!(
                body["cursor"],
                json!(all[0]),
                "the cursor is the page's first id"
            );
            before = Some(all[0].clone());
        } else {
            assert_eq!(body["cursor"], Value::Null, "no cursor on the last page");
            return (sizes, all);
        }
        assert!(sizes.len() < 20, "the cursors never reached the start");
    }
}

async fn a_long_conversation_is_read_a_page_at_a_time(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("pager").await;
    let id = long_conversation(&app, &token).await;
    let path = format!("/api/v1/conversations/{id}");

    // The default page: the newest 100, oldest first.
    let newest = page(&app, &token, &path).await;
    let newest_ids = ids(&newest);
    assert_eq!(newest_ids.len(), 100);
    assert_eq!(newest_ids[99], stored_id(STORED - 1), "the newest last");
    assert_eq!(newest_ids[0], stored_id(STORED - 100));
    assert_eq!(newest["has_more"], true);
    assert_eq!(newest["title"].as_str().map(str::is_empty), Some(false));

    // Following the cursors gives every message once, in order.
    let (sizes, all) = read_back(&app, &token, &path, None).await;
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(all.len(), 250);
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 250, "no message twice");
    assert_eq!(&all[2..], (0..STORED).map(stored_id).collect::<Vec<_>>());
    let first = page(&app, &token, &format!("{path}?limit=2&before={}", all[2])).await;
    assert_eq!(
        first["messages"][0]["content"]["parts"][0],
        "the very first question"
    );
    assert_eq!(first["has_more"], false);

    // Any page size up to the maximum; the seed's surface pages the same.
    let whole = page(&app, &token, &format!("{path}?limit=500")).await;
    assert_eq!(ids(&whole), all);
    assert_eq!(whole["has_more"], false);
    let backend_path = format!("/backend-api/conversation/{id}");
    let (sizes, seed_all) = read_back(&app, &token, &backend_path, Some(120)).await;
    assert_eq!(sizes, [120, 120, 10]);
    assert_eq!(seed_all, all);
}

async fn bad_page_requests_are_refused_with_the_field_named(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("strict").await;
    let (id, _) = app.chat(&token, "one").await;
    let (other, _) = app.chat(&token, "two").await;
    let elsewhere = ids(&app.conversation(&token, &other).await)[0].clone();
    let path = format!("/api/v1/conversations/{id}");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("before=not%20an%20id", "before"),
        ("before=", "before"),
    ] {
        let res = app.get_auth(&format!("{path}?{query}"), &token).await;
        let body = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(body["field"], field, "{query}");
    }
    // A well-formed id that is not one of this conversation's messages
    // names nothing: 404, naming the parameter (the conversation exists).
    for query in ["before=no-such-message", &*format!("before={elsewhere}")] {
        let res = app.get_auth(&format!("{path}?{query}"), &token).await;
        let body = error_body(res, 404, "NOT_FOUND").await;
        assert_eq!(body["field"], "before", "{query}");
    }
    for query in ["limit=ten", "limit=-1", "page=2"] {
        let res = app.get_auth(&format!("{path}?{query}"), &token).await;
        error_body(res, 400, "VALIDATION_ERROR").await;
    }
    // A page request never reveals another user's conversation, nor
    // which of its message ids exist.
    let intruder = app.user("intruder").await;
    let first = ids(&app.conversation(&token, &id).await)[0].clone();
    for before in [first.as_str(), "no-such-message"] {
        let res = app
            .get_auth(&format!("{path}?limit=1&before={before}"), &intruder)
            .await;
        let body = error_body(res, 404, "NOT_FOUND").await;
        assert_eq!(body.get("field"), None, "{before}");
    }
}

async fn a_page_holds_at_most_a_mebibyte_of_text(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("bulky").await;
    let (id, _) = app.chat(&token, "start").await;
    // Twelve messages of 100,000 bytes: ten fit in 1 MiB, eleven don't.
    let big = |n: usize| format!("{n:03}{}", "x".repeat(99_997));
    store_messages(&app, &id, 12, big).await;
    let path = format!("/api/v1/conversations/{id}");
    let newest = page(&app, &token, &path).await;
    assert_eq!(ids(&newest), (2..12).map(stored_id).collect::<Vec<_>>());
    assert_eq!(newest["has_more"], true, "the rest is a cursor away");
    let (sizes, all) = read_back(&app, &token, &path, None).await;
    assert_eq!(sizes, [10, 4], "two big ones and the first exchange");
    assert_eq!(all.len(), 14);

    // The bound counts bytes, not characters: three messages of 100,000
    // four-byte characters (400,000 bytes each), of which two fit.
    let (emoji, _) = app.chat(&token, "another").await;
    store_messages(&app, &emoji, 3, |_| "😀".repeat(Content::MAX_CHARS)).await;
    let newest = page(&app, &token, &format!("/api/v1/conversations/{emoji}")).await;
    assert_eq!(ids(&newest), [stored_id(1), stored_id(2)]);
    assert_eq!(
        newest["messages"][1]["content"]["parts"][0]
            .as_str()
            .map(|t| t.chars().count()),
        Some(Content::MAX_CHARS),
        "whole"
    );
    assert_eq!(newest["has_more"], true);
}

async fn a_send_in_a_long_conversation_loads_only_what_its_prompt_needs(backend: Backend) {
    let llm = FakeLlm::start();
    // A budget of about ten stored messages.
    let app = spawn_chat(
        backend,
        &llm,
        &[("CONFAB__LLM__PROMPT_BUDGET_CHARS", "200")],
    );
    let token = app.user("continuer").await;
    let id = long_conversation(&app, &token).await;
    let path = format!("/api/v1/conversations/{id}/messages");

    let res = app
        .call(
            reqwest::Method::POST,
            &path,
            &token,
            Some(&message_body("and next?")),
        )
        .await;
    assert_eq!(res.status(), 200);
    let _ = res.text().await.unwrap();
    let asked = llm.requests();
    let turns = asked.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .clone();
    let texts: Vec<&str> = turns.iter().filter_map(|t| t["content"].as_str()).collect();
    assert_eq!(texts.last(), Some(&"and next?"), "{texts:?}");
    assert!(
        texts.contains(&format!("stored message {}", STORED - 1).as_str()),
        "the newest history goes: {texts:?}"
    );
    assert!(
        !texts.iter().any(|t| t.contains("the very first question")),
        "the oldest does not fit: {texts:?}"
    );

    // An id the conversation used long ago (outside every page the send
    // read) is still refused as taken.
    let mut reused = message_body("again");
    reused["messages"][0]["id"] = json!(stored_id(0));
    let res = app
        .call(reqwest::Method::POST, &path, &token, Some(&reused))
        .await;
    let body = error_body(res, 409, "CONFLICT").await;
    assert_eq!(body["field"], "messages[0].id");

    // The answer was stored after the 250: the newest page ends with it.
    let newest = app.conversation(&token, &id).await;
    let last = &newest["messages"][99];
    assert_eq!(last["author"]["role"], "assistant");
    assert_eq!(newest["messages"][98]["content"]["parts"][0], "and next?");
}

async fn pages_are_cached_and_invalidated_together_with_redis(backend: Backend) {
    let llm = FakeLlm::start();
    let base = llm.base_url();
    let app = spawn_app_with_redis(
        backend,
        &[
            ("CONFAB_LLM_PROVIDER", "openai"),
            ("CONFAB_LLM_BASE_URL", &base),
            ("CONFAB_LLM_MODEL", confab_e2e::chat::MODEL),
            ("CONFAB_LLM_API_KEY", "sk-test-upstream-key-0123456789"),
            ("CONFAB__GENERATION__PER_MINUTE", "100000"),
            ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000"),
        ],
    );
    let token = app.user("cached").await;
    let id = long_conversation(&app, &token).await;
    let path = format!("/api/v1/conversations/{id}");
    let older = format!("{path}?limit=5&before={}", stored_id(100));

    // Each page is its own entry, in Redis: read on one instance, then
    // changed in the database behind the service's back, it is what
    // another instance answers, until the service itself writes.
    let first = app.get_auth(&older, &token).await;
    let tag = first.headers()["etag"].to_str().unwrap().to_owned();
    let first: Value = first.json().await.unwrap();
    assert_eq!(ids(&first), (95..100).map(stored_id).collect::<Vec<_>>());
    let newest_path = format!("{path}?limit=5");
    let newest = page(&app, &token, &newest_path).await;
    assert_eq!(
        ids(&newest),
        (243..STORED).map(stored_id).collect::<Vec<_>>()
    );
    let store = app.db.store().await;
    let conversation: ConversationId = id.parse().unwrap();
    let unseen = finished_message(
        conversation,
        "behind0",
        MessageRole::User,
        "unseen".to_owned(),
    );
    append(&store, unseen.clone()).await;
    // A finished message rewritten in place (the store's own update only
    // touches answers in progress).
    app.db.execute(&format!(
        "UPDATE messages SET content = '{}' WHERE conversation_id = '{id}' AND id = '{}'",
        serde_json::to_string(&unseen.content).unwrap(),
        stored_id(97)
    ));
    let other = app.sibling(&[]);
    let again = other.get_auth(&older, &token).await;
    assert_eq!(
        again.headers()["etag"].to_str().unwrap(),
        tag,
        "the cached older page"
    );
    assert_eq!(
        ids(&page(&other, &token, &newest_path).await),
        ids(&newest),
        "the cached newest page"
    );

    // A rename moves every page of the conversation to a new entry.
    let res = app
        .call(
            reqwest::Method::PATCH,
            &path,
            &token,
            Some(&json!({"title": "Renamed"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    for read in [&older, &newest_path] {
        assert_eq!(
            page(&other, &token, read).await["title"],
            "Renamed",
            "{read}"
        );
    }
    let renamed = other.get_auth(&older, &token).await;
    assert_ne!(renamed.headers()["etag"].to_str().unwrap(), tag);
    let newest = page(&other, &token, &newest_path).await;
    assert_eq!(ids(&newest).last().map(String::as_str), Some("behind0"));
    let changed = page(&other, &token, &older).await;
    assert_eq!(changed["messages"][2]["content"]["parts"][0], "unseen");
}
