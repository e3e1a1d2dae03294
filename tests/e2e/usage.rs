//! Token usage (issue 16): every answer records its tokens, as the model
//! reported them or estimated when it did not; a user reads their own per
//! day and model, an admin any user's and everyone's; bad periods are 422
//! and another user's usage is no one else's to read.

use confab_e2e::chat::{PASSWORD, message_body, spawn_chat, spawn_chat_with_redis};
use confab_e2e::error_body;
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    each_answer_counts_and_a_user_reads_their_own_per_day_and_model,
    an_admin_reads_any_users_usage_and_everyones,
    a_send_past_the_allowance_is_refused_on_every_instance_before_the_model,
    an_allowance_given_after_sends_applies_at_the_next_send_on_every_instance,
    an_allowance_given_after_sends_applies_at_the_next_send_in_process,
);

async fn usage(app: &confab_e2e::TestApp, token: &str, query: &str) -> Value {
    let res = app
        .get_auth(&format!("/api/v1/users/me/usage{query}"), token)
        .await;
    assert_eq!(res.status(), 200, "usage{query}");
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.json().await.unwrap()
}

fn today() -> String {
    let now = confab_domain::OffsetDateTime::now_utc().date();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

async fn each_answer_counts_and_a_user_reads_their_own_per_day_and_model(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let ann = app.user("annika").await;
    let bob = app.user("bobby").await;
    // Nothing yet: an empty report of the last 30 days.
    let report = usage(&app, &ann, "").await;
    assert_eq!(report["days"], json!([]));
    assert_eq!(report["totals"]["answers"], 0);
    assert_eq!(report["to"], json!(today()));

    // Reported by the model (the fake's default answer: 5 and 3).
    let (id, _) = app.chat(&ann, "hello").await;
    // Not reported: estimated, one token per 4 characters.
    llm.push(Script::reply(&["twelve chars"]));
    let body = json!({
        "messages": [{"role": "user", "content": {"content_type": "text", "parts": ["again"]}}],
        "model": "other-model",
    });
    app.send_to(&ann, &id, &body).await;
    // Someone else's answer is theirs.
    app.chat(&bob, "mine").await;

    let report = usage(&app, &ann, "").await;
    let days = report["days"].as_array().unwrap();
    assert_eq!(days.len(), 2, "{report}");
    let line = |model: &str| days.iter().find(|d| d["model"] == model).unwrap().clone();
    let reported = line("fake-model");
    assert_eq!(reported["date"], json!(today()));
    assert_eq!(reported["answers"], 1);
    assert_eq!(reported["estimated_answers"], 0);
    assert_eq!(reported["prompt_tokens"], 5);
    assert_eq!(reported["completion_tokens"], 3);
    assert_eq!(reported["total_tokens"], 8);
    let estimated = line("other-model");
    assert_eq!(estimated["answers"], 1);
    assert_eq!(estimated["estimated_answers"], 1);
    assert_eq!(estimated["completion_tokens"], 3, "12 characters");
    assert!(estimated["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(report["totals"]["answers"], 2);
    assert_eq!(
        report["totals"]["total_tokens"],
        json!(8 + estimated["total_tokens"].as_u64().unwrap())
    );
    let theirs = usage(&app, &bob, "").await;
    assert_eq!(theirs["totals"]["answers"], 1, "{theirs}");

    // A period: one day, or none with usage.
    let day = today();
    let one = usage(&app, &ann, &format!("?from={day}&to={day}")).await;
    assert_eq!(one["totals"]["answers"], 2);
    let before = usage(&app, &ann, "?from=2020-01-01&to=2020-12-31").await;
    assert_eq!(before["days"], json!([]));
    for (query, field) in [
        ("?from=2026-13-01", "from"),
        ("?to=yesterday", "to"),
        ("?from=2026-1-1", "from"),
        ("?from=2026-W49-6", "from"),
        ("?from=2026-12-02&to=2026-12-01", "from"),
        ("?from=2020-01-01&to=2026-01-01", "from"),
    ] {
        let res = app
            .get_auth(&format!("/api/v1/users/me/usage{query}"), &ann)
            .await;
        let err = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], field, "{query}");
    }
    let res = app
        .get_auth("/api/v1/users/me/usage?user=bobby", &ann)
        .await;
    assert_eq!(res.status(), 400);
    // Not an admin: no one else's usage, and not everyone's.
    let bob_id = app.get_auth("/api/v1/users/me", &bob).await;
    let bob_id: Value = bob_id.json().await.unwrap();
    for path in [
        format!(
            "/api/v1/admin/users/{}/usage",
            bob_id["id"].as_str().unwrap()
        ),
        "/api/v1/admin/usage".to_owned(),
    ] {
        let res = app.call(Method::GET, &path, &ann, None).await;
        error_body(res, 403, "FORBIDDEN").await;
    }
}

async fn an_admin_reads_any_users_usage_and_everyones(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    app.create_admin("ingrid", PASSWORD).await;
    let admin = app.login("ingrid", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cid = app.user("cidney").await;
    let dan = app.user("daniel").await;
    for token in [&cid, &cid, &dan] {
        let res = app
            .send_message("/api/v1/conversations", token, &message_body("hi"))
            .await;
        assert_eq!(res.status(), 200);
        confab_e2e::chat::SseReader::new(res).rest().await;
    }
    let me: Value = app
        .get_auth("/api/v1/users/me", &cid)
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/api/v1/admin/users/{}/usage", me["id"].as_str().unwrap());
    let res = app.get_auth(&path, &admin).await;
    assert_eq!(res.status(), 200);
    let theirs: Value = res.json().await.unwrap();
    assert_eq!(theirs["totals"]["answers"], 2, "{theirs}");
    assert_eq!(theirs["totals"]["prompt_tokens"], 10);
    let res = app.get_auth("/api/v1/admin/usage", &admin).await;
    assert_eq!(res.status(), 200);
    let all: Value = res.json().await.unwrap();
    assert_eq!(all["days"].as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all["totals"]["answers"], 3);
    assert_eq!(all["totals"]["total_tokens"], 24);
    // An unknown or malformed user is 404.
    for id in ["0190f5a2-0000-7000-8000-000000000000", "nope"] {
        let res = app
            .get_auth(&format!("/api/v1/admin/users/{id}/usage"), &admin)
            .await;
        error_body(res, 404, "NOT_FOUND").await;
    }
    // A deleted account's usage goes with it.
    let res = app
        .call(Method::DELETE, &path.replace("/usage", ""), &admin, None)
        .await;
    assert_eq!(res.status(), 204);
    let all: Value = app
        .get_auth("/api/v1/admin/usage", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["totals"]["answers"], 1, "{all}");
}

async fn allowance(app: &confab_e2e::TestApp, token: &str) -> Value {
    let res = app.get_auth("/api/v1/users/me/allowance", token).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// The fake's default answer counts 5 + 3 tokens; the allowance is 20 a
/// day.
async fn a_send_past_the_allowance_is_refused_on_every_instance_before_the_model(backend: Backend) {
    let llm = FakeLlm::start();
    let a = spawn_chat_with_redis(backend, &llm, &[("CONFAB__QUOTA__DAILY_TOKENS", "20")]);
    let b = a.sibling(&[]);
    let token = a.user("quinn").await;
    let other = a.user("rosalind").await;
    let view = allowance(&b, &token).await;
    assert_eq!(view["daily"]["limit"], 20, "{view}");
    assert_eq!(view["daily"]["used"], 0);
    assert_eq!(view["daily"]["remaining"], 20);
    assert_eq!(view["monthly"]["limit"], Value::Null);
    assert_eq!(view["own"]["daily_tokens"], Value::Null);

    // 8, 16, then 24: the third answer crosses the allowance and finishes
    // whole, on whichever instance.
    for app in [&a, &b, &a] {
        let (_, events) = app.chat(&token, "hello").await;
        assert!(
            events
                .iter()
                .any(|e| e.data.contains("message_stream_complete")),
            "{events:?}"
        );
    }
    let view = allowance(&b, &token).await;
    assert_eq!(view["daily"]["used"], 24, "{view}");
    assert_eq!(view["daily"]["remaining"], 0);

    // The next is refused on either instance, the model never asked.
    let asked = llm.requests().len();
    for app in [&a, &b] {
        let res = app
            .send_message("/api/v1/conversations", &token, &message_body("more"))
            .await;
        let headers = res.headers().clone();
        let err = error_body(res, 429, "QUOTA_EXCEEDED").await;
        assert!(
            err["message"].as_str().unwrap().contains("resets at"),
            "{err}"
        );
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&retry), "{retry}");
        assert_eq!(
            headers["ratelimit-policy"].to_str().unwrap(),
            "\"tokens-day\";q=20;w=86400"
        );
        let state = headers["ratelimit"].to_str().unwrap();
        assert!(state.starts_with("\"tokens-day\";r=0;t="), "{state}");
    }
    assert_eq!(
        llm.requests().len(),
        asked,
        "no model call for a refused send"
    );
    // Someone else's allowance is their own.
    a.chat(&other, "hello").await;

    // An admin gives the user their own allowance; only an admin can.
    let (admin, path) = admin_and_allowance_path(&a, &token).await;
    let raise = json!({"daily_tokens": 1000, "monthly_tokens": null});
    let res = a.call(Method::PUT, &path, &other, Some(&raise)).await;
    error_body(res, 403, "FORBIDDEN").await;
    let res = a
        .call(
            Method::PUT,
            "/api/v1/admin/users/0190f5a2-0000-7000-8000-000000000000/allowance",
            &admin,
            Some(&raise),
        )
        .await;
    error_body(res, 404, "NOT_FOUND").await;
    let res = a.call(Method::PUT, &path, &admin, Some(&raise)).await;
    assert_eq!(res.status(), 200);
    let view: Value = res.json().await.unwrap();
    assert_eq!(view["daily"]["limit"], 1000, "{view}");
    assert_eq!(view["own"]["daily_tokens"], 1000);
    let (_, events) = b.chat(&token, "again").await;
    assert!(
        events
            .iter()
            .any(|e| e.data.contains("message_stream_complete"))
    );

    // 0 is no limit for them, whatever the default; a number the
    // database can't hold, or a negative one, is refused.
    let exempt = json!({"daily_tokens": 0, "monthly_tokens": null});
    let res = a.call(Method::PUT, &path, &admin, Some(&exempt)).await;
    let view: Value = res.json().await.unwrap();
    assert_eq!(view["daily"]["limit"], Value::Null, "{view}");
    assert_eq!(view["own"]["daily_tokens"], 0);
    for bad in [
        json!({"daily_tokens": 9_223_372_036_854_775_808_u64}),
        json!({"monthly_tokens": -1}),
    ] {
        let res = a.call(Method::PUT, &path, &admin, Some(&bad)).await;
        error_body(res, 422, "VALIDATION_ERROR").await;
    }
    // Back to the default: refused again, also by an instance started
    // after (the database is the record).
    let default = json!({"daily_tokens": null, "monthly_tokens": null});
    let res = a.call(Method::PUT, &path, &admin, Some(&default)).await;
    assert_eq!(res.status(), 200);
    let c = a.sibling(&[]);
    let res = c
        .send_message("/api/v1/conversations", &token, &message_body("more"))
        .await;
    error_body(res, 429, "QUOTA_EXCEEDED").await;
}

/// An admin's token and the path of `token`'s user's allowance, on `app`.
async fn admin_and_allowance_path(app: &confab_e2e::TestApp, token: &str) -> (String, String) {
    app.create_admin("ingrid", PASSWORD).await;
    let admin = app.login("ingrid", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: Value = app
        .get_auth("/api/v1/users/me", token)
        .await
        .json()
        .await
        .unwrap();
    let path = format!(
        "/api/v1/admin/users/{}/allowance",
        me["id"].as_str().unwrap()
    );
    (admin, path)
}

/// Sends on each of `apps` are refused (429) without asking the model.
async fn refused_on(apps: &[&confab_e2e::TestApp], llm: &FakeLlm, token: &str) {
    let asked = llm.requests().len();
    for app in apps {
        let res = app
            .send_message("/api/v1/conversations", token, &message_body("more"))
            .await;
        error_body(res, 429, "QUOTA_EXCEEDED").await;
    }
    assert_eq!(
        llm.requests().len(),
        asked,
        "no model call for a refused send"
    );
}

/// No default allowance: a user's sends need no read of their usage once
/// an instance knows they have no allowance of their own. An allowance an
/// admin gives them on one instance then applies at their next send on
/// every instance, not after that memory expires.
async fn an_allowance_given_after_sends_applies_at_the_next_send_on_every_instance(
    backend: Backend,
) {
    let llm = FakeLlm::start();
    let a = spawn_chat_with_redis(backend, &llm, &[]);
    let b = a.sibling(&[]);
    let token = a.user("quinn").await;
    // Each instance reads, then remembers, that no allowance applies.
    for app in [&a, &b, &a, &b] {
        app.chat(&token, "hello").await;
    }
    let (admin, path) = admin_and_allowance_path(&a, &token).await;
    let tight = json!({"daily_tokens": 1, "monthly_tokens": null});
    let res = a.call(Method::PUT, &path, &admin, Some(&tight)).await;
    assert_eq!(res.status(), 200);
    refused_on(&[&b, &a], &llm, &token).await;
    // Lifted again (0: no limit for them): both send again at once.
    let exempt = json!({"daily_tokens": 0, "monthly_tokens": null});
    let res = b.call(Method::PUT, &path, &admin, Some(&exempt)).await;
    assert_eq!(res.status(), 200);
    for app in [&a, &b] {
        let (_, events) = app.chat(&token, "again").await;
        assert!(
            events
                .iter()
                .any(|e| e.data.contains("message_stream_complete")),
            "{events:?}"
        );
    }
}

/// As above, on one instance with its state in process.
async fn an_allowance_given_after_sends_applies_at_the_next_send_in_process(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(backend, &llm, &[]);
    let token = app.user("quinn").await;
    app.chat(&token, "hello").await;
    app.chat(&token, "hello").await;
    let (admin, path) = admin_and_allowance_path(&app, &token).await;
    let tight = json!({"daily_tokens": 1, "monthly_tokens": null});
    let res = app.call(Method::PUT, &path, &admin, Some(&tight)).await;
    assert_eq!(res.status(), 200);
    refused_on(&[&app], &llm, &token).await;
}
