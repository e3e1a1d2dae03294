//! Search in message text (issue 15): `GET /api/v1/conversations?q=`
//! finds words of titles and of finished messages, best first, each result
//! with the message that matched and a plain-text snippet with its
//! highlights; never another user's conversation; and a finished answer is
//! found at once, through the list cache (in process and in Redis).

use confab_e2e::chat::{message_body, replay, spawn_chat};
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_e2e::{TestApp, error_body, redis_url};
use confab_sql::Backend;
use serde_json::{Value, json};

on_both_backends!(
    a_search_finds_message_text_with_its_snippet_and_never_anothers,
    a_search_through_the_redis_cache_sees_every_finished_answer,
);

/// `GET path` as JSON, which must be a 200.
async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    let res = app.get_auth(path, token).await;
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.unwrap()
}

/// The results of `q` (already URL-encoded).
async fn search(app: &TestApp, token: &str, q: &str) -> Value {
    get_json(app, &format!("/api/v1/conversations?q={q}"), token).await
}

/// The highlighted parts of a result's snippet, as text.
fn marked(item: &Value) -> Vec<String> {
    let found = &item["match"];
    let chars: Vec<char> = found["snippet"].as_str().unwrap().chars().collect();
    found["highlights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|range| {
            let (start, end) = (
                usize::try_from(range[0].as_u64().unwrap()).unwrap(),
                usize::try_from(range[1].as_u64().unwrap()).unwrap(),
            );
            chars[start..end].iter().collect()
        })
        .collect()
}

/// The id of a stream's answer.
fn answer_id(events: &[confab_e2e::chat::SseEvent]) -> String {
    replay(events)["message"]["id"].as_str().unwrap().to_owned()
}

async fn a_search_finds_message_text_with_its_snippet_and_never_anothers(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    llm.push(Script::reply(&[
        "Quokkas live on ",
        "Rottnest Island, near Perth.",
    ]));
    let (island, events) = app.chat(&ann, "Where do quokkas live?").await;
    let answer = answer_id(&events);
    llm.push(Script::reply(&["Wombats dig."]));
    let (titled, _) = app.chat(&ann, "Something else entirely").await;
    let rename = app
        .patch_conversation(&ann, &titled, &json!({"title": "Quokka facts"}))
        .await;
    assert_eq!(rename.status(), 200);
    llm.push(Script::reply(&["Rottnest is Bob's too."]));
    let (bobs, _) = app.chat(&bob, "quokka rottnest <b>bold</b>").await;

    // A word of an answer: the conversation, the answer and its snippet.
    let page = search(&app, &ann, "ROTTN").await;
    assert_eq!(page["total"], 1, "{page}");
    let item = &page["items"][0];
    assert_eq!(item["id"], json!(island));
    assert_eq!(item["match"]["message_id"], json!(answer));
    assert_eq!(
        item["match"]["snippet"],
        "Quokkas live on Rottnest Island, near Perth."
    );
    assert_eq!(marked(item), ["Rottnest"]);

    // A title match first, then the message match; each user only sees
    // their own.
    let page = search(&app, &ann, "quokka").await;
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["items"][0]["id"], json!(titled));
    assert_eq!(page["items"][0]["match"]["message_id"], Value::Null);
    assert_eq!(page["items"][0]["match"]["snippet"], "Quokka facts");
    assert_eq!(page["items"][1]["id"], json!(island));
    // The question and the answer both hold the word once: either is the
    // best match, by the database's rank.
    let best = marked(&page["items"][1]);
    assert_eq!(best.len(), 1, "{page}");
    assert_eq!(best[0].to_lowercase(), "quokkas");
    let theirs = search(&app, &bob, "quokka").await;
    assert_eq!(theirs["total"], 1);
    assert_eq!(theirs["items"][0]["id"], json!(bobs));
    assert!(!theirs.to_string().contains(&answer), "none of ann's ids");

    // Markup is text in a snippet; syntax is text in a query.
    let page = search(&app, &bob, "%3Cb%3Ebold").await;
    assert_eq!(
        page["items"][0]["match"]["snippet"],
        "quokka rottnest <b>bold</b>"
    );
    assert_eq!(marked(&page["items"][0]), ["b", "bold", "b"]);
    for q in ["quokka%20OR%20wombat", "%22quokka%22%20NOT%20x", "*"] {
        assert_eq!(search(&app, &ann, q).await["total"], 0, "q={q}");
    }
    for q in ["rottnest*", "rottnest%20-island", "(rottnest)"] {
        assert_eq!(search(&app, &ann, q).await["total"], 1, "q={q}");
    }

    // A list without `q` has no `match`; a blank one is no search.
    let list = get_json(&app, "/api/v1/conversations", &ann).await;
    assert!(list["items"][0].get("match").is_none(), "{list}");
    assert_eq!(search(&app, &ann, "%20%20").await["total"], 2);
    let res = app.get_auth("/api/v1/conversations?q=a%00b", &ann).await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "q");

    // A deleted conversation is no longer found.
    let res = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/conversations/{island}"),
            &ann,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(search(&app, &ann, "rottnest").await["total"], 0);
}

async fn a_search_through_the_redis_cache_sees_every_finished_answer(backend: Backend) {
    let llm = FakeLlm::start();
    let url = redis_url();
    let prefix = format!("confab-e2e:{}:", uuid::Uuid::new_v4());
    let vars = [
        ("REDIS_URL", url.as_str()),
        ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
    ];
    let app = spawn_chat(backend, &llm, &vars);
    let other = app.sibling(&[]);
    let token = app.user("cai").await;
    llm.push(Script::reply(&["First: a platypus."]));
    let (id, _) = app.chat(&token, "An animal, please").await;
    // Cached on both instances, and the same from either.
    let first = search(&app, &token, "platypus").await;
    assert_eq!(first["total"], 1);
    assert_eq!(search(&other, &token, "platypus").await, first);
    assert_eq!(search(&other, &token, "echidna").await["total"], 0);
    // A new answer in the same conversation is found at once on the other
    // instance: the cached results were dropped.
    llm.push(Script::reply(&["Then an echidna."]));
    let events = app.send_to(&token, &id, &message_body("Another")).await;
    let page = search(&other, &token, "echidna").await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(
        page["items"][0]["match"]["message_id"],
        json!(answer_id(&events))
    );
    assert_eq!(marked(&page["items"][0]), ["echidna"]);
}
