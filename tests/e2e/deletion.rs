//! Account deletion (issue 16): by its owner with their password, or by an
//! admin; every session ends at once on every instance, a running answer
//! stops, and no row of any table, no Redis key and no cache entry of the
//! account or its conversations is left; deleting again is no error.

use std::time::{Duration, Instant};

use confab_e2e::chat::{
    PASSWORD, SseReader, held_after, is_append, message_body, spawn_chat, spawn_chat_with_redis,
};
use confab_e2e::fake_llm::FakeLlm;
use confab_e2e::{TestApp, error_body};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    a_deleted_account_leaves_no_row_key_or_entry_on_any_instance,
    an_admin_deletes_any_account_and_deleting_again_is_no_error,
);

/// A word no other test data holds: what the deleted user wrote.
const SECRET: &str = "zanzibarquux";

async fn user_id(app: &TestApp, token: &str) -> String {
    let res = app.get_auth("/api/v1/users/me", token).await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    me["id"].as_str().unwrap().to_owned()
}

async fn delete_me(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.call(
        Method::DELETE,
        "/api/v1/users/me",
        token,
        Some(&json!({"password": password})),
    )
    .await
}

/// A login as `user` with a wrong password: refused.
async fn fail_login(app: &TestApp, user: &str) {
    let body = json!({"username": user, "password": "not her password"});
    let res = app.post_json("/api/v1/auth/login", &body).await;
    assert_eq!(res.status(), 401);
}

/// The conversation id a send's stream names.
fn conversation_in(events: &[confab_e2e::chat::SseEvent]) -> String {
    events
        .iter()
        .find_map(|e| e.json()["conversation_id"].as_str().map(str::to_owned))
        .expect("a conversation id in the stream")
}

async fn a_deleted_account_leaves_no_row_key_or_entry_on_any_instance(backend: Backend) {
    let llm = FakeLlm::start();
    let a = spawn_chat_with_redis(
        backend,
        &llm,
        &[("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "100")],
    );
    let prefix = a.redis_key_prefix().unwrap();
    let b = a.sibling(&[]);
    // Failed logins with the name before the account existed are counted
    // under the name.
    fail_login(&a, "delia").await;
    let token = a.user("delia").await;
    let oscar = a.user("oscar").await;
    let id = user_id(&a, &token).await;
    let on_b = b.login("delia", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // What a user leaves around: a finished conversation, read and listed
    // on both instances (cache entries) and searched; a send made with an
    // Idempotency-Key (its record); a failed login (its count); an answer
    // still running on the other instance (its stream).
    let (first, _) = a.chat(&token, &format!("{SECRET} facts, please")).await;
    a.conversation(&token, &first).await;
    b.conversation(&on_b, &first).await;
    for (app, t) in [(&a, &token), (&b, &on_b)] {
        let res = app.get_auth("/api/v1/conversations", t).await;
        assert_eq!(res.status(), 200);
        let res = app
            .get_auth(&format!("/api/v1/conversations?q={SECRET}"), t)
            .await;
        let found: Value = res.json().await.unwrap();
        assert_eq!(found["items"][0]["id"], json!(first));
    }
    let res = a
        .client
        .post(a.url("/api/v1/conversations"))
        .bearer_auth(&token)
        .header("idempotency-key", "delia-send-1")
        .json(&message_body("a second one"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let second = conversation_in(&SseReader::new(res).rest().await);
    fail_login(&a, "delia").await;
    // An API key, used once (its own rate bucket).
    let res = a
        .call(
            Method::POST,
            "/api/v1/users/me/api-keys",
            &token,
            Some(&json!({"name": "delia's bot", "scopes": ["conversations:read"], "password": PASSWORD})),
        )
        .await;
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let res = b.get_auth("/api/v1/conversations", &key).await;
    assert_eq!(res.status(), 200);
    let (oscars, _) = a.chat(&oscar, "oscar's own words").await;
    llm.push(held_after("Half an answer"));
    let res = b
        .send_message("/api/v1/conversations", &on_b, &message_body("a long one"))
        .await;
    assert_eq!(res.status(), 200);
    let mut running = SseReader::new(res);
    let seen = running.until(is_append).await;
    let third = conversation_in(&seen);
    let needles = [
        id.clone(),
        first.clone(),
        second.clone(),
        third.clone(),
        "name:delia".to_owned(),
    ];
    assert!(
        !a.redis_keys_containing(&needles).await.is_empty(),
        "the user has keys in Redis before"
    );
    let mut in_rows = needles[..4].to_vec();
    in_rows.extend(["delia".to_owned(), SECRET.to_owned()]);
    let before: Vec<String> =
        a.db.rows_containing(&in_rows)
            .into_iter()
            .map(|(table, _)| table)
            .collect();
    for table in [
        "users",
        "conversations",
        "messages",
        "refresh_families",
        "api_keys",
    ] {
        assert!(before.iter().any(|t| t == table), "{table} in {before:?}");
    }

    // A wrong password deletes nothing.
    let res = delete_me(&a, &token, "not her password").await;
    error_body(res, 401, "INVALID_CREDENTIALS").await;
    assert_eq!(a.get_auth("/api/v1/users/me", &token).await.status(), 200);

    let res = delete_me(&a, &token, PASSWORD).await;
    assert_eq!(res.status(), 204);
    // The running answer was stopped: its stream ends.
    let rest = tokio::time::timeout(Duration::from_secs(10), running.rest())
        .await
        .expect("the running answer's stream ends");
    assert!(
        rest.iter().any(|e| e.data == "[DONE]"),
        "the stream ends with [DONE]: {rest:?}"
    );
    llm.release();
    // Every token of every session is refused, on both instances.
    for app in [&a, &b] {
        let res = app.get_auth("/api/v1/conversations", &key).await;
        assert_eq!(res.status(), 401, "the account's API key is refused too");
    }
    for (app, t) in [(&a, &token), (&b, &token), (&a, &on_b), (&b, &on_b)] {
        let res = app.get_auth("/api/v1/users/me", t).await;
        assert_eq!(res.status(), 401);
        let res = app
            .get_auth(&format!("/api/v1/conversations/{first}"), t)
            .await;
        assert_eq!(res.status(), 401);
    }

    // No row of any table names the account, its conversations or what it
    // wrote.
    assert_eq!(a.db.rows_containing(&in_rows), Vec::<(String, i64)>::new());
    // No key in Redis names them: at once but the account version, which
    // refuses the account everywhere until no instance trusts what it read
    // of it before (12 s); a late write of the stopped answer is swept by
    // the second pass (15 s).
    // (Its user id is its hash tag on a Redis Cluster.)
    let version = if confab_e2e::redis_cluster() {
        format!("{prefix}uv:{{{id}}}")
    } else {
        format!("{prefix}uv:{id}")
    };
    // On a Redis Cluster the blocklist's entries carry the user's id as
    // hash tag: they stay until the tokens they refuse expire.
    let blocking = format!("{prefix}bl:");
    let named = async || -> Vec<String> {
        let mut left = a.redis_keys_containing(&needles).await;
        left.retain(|key| !key.starts_with(&blocking));
        left
    };
    let left = named().await;
    assert!(
        left.iter().all(|key| *key == version),
        "only the account version is left at once: {left:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = named().await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "keys left in Redis: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Another user's data is untouched, cached entries included.
    let kept = b.conversation(&oscar, &oscars).await;
    assert_eq!(
        kept["messages"][0]["content"]["parts"][0],
        "oscar's own words"
    );
    let res = b.get_auth("/api/v1/conversations", &oscar).await;
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["total"], 1);
    // The account is gone: it logs in nowhere, and its token deletes
    // nothing more.
    let res = b
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "delia", "password": PASSWORD}),
        )
        .await;
    error_body(res, 401, "INVALID_CREDENTIALS").await;
    assert_eq!(delete_me(&b, &token, PASSWORD).await.status(), 401);
    // The name is free again.
    assert_eq!(a.register("delia").await.status(), 201);
}

async fn an_admin_deletes_any_account_and_deleting_again_is_no_error(backend: Backend) {
    let llm = FakeLlm::start();
    let app = spawn_chat(
        backend,
        &llm,
        &[
            ("CONFAB__RATE_LIMIT__LOGIN_FAILURES_PER_ADDRESS", "2"),
            ("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "100"),
        ],
    );
    app.create_admin("ingrid", PASSWORD).await;
    let admin = app.login("ingrid", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin_id = user_id(&app, &admin).await;
    let victor = app.user("victor").await;
    let victor_id = user_id(&app, &victor).await;
    let (conversation, _) = app.chat(&victor, &format!("{SECRET} notes")).await;
    app.conversation(&victor, &conversation).await;
    let eve = app.user("evelyn").await;
    let path = format!("/api/v1/admin/users/{victor_id}");

    // Only an admin; an admin's own account only through /users/me.
    let res = app.call(Method::DELETE, &path, &eve, None).await;
    error_body(res, 403, "FORBIDDEN").await;
    let res = app
        .call(
            Method::DELETE,
            &format!("/api/v1/admin/users/{admin_id}"),
            &admin,
            None,
        )
        .await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "user_id");
    let res = app
        .call(Method::DELETE, "/api/v1/admin/users/nope", &admin, None)
        .await;
    error_body(res, 404, "NOT_FOUND").await;
    assert_eq!(
        app.get_auth("/api/v1/users/me", &victor).await.status(),
        200
    );

    // Deleted; deleting again, or an id that never was, is no error.
    for target in [
        path.clone(),
        path.clone(),
        "/api/v1/admin/users/0190f5a2-0000-7000-8000-000000000000".to_owned(),
    ] {
        let res = app.call(Method::DELETE, &target, &admin, None).await;
        assert_eq!(res.status(), 204, "{target}");
    }
    assert_eq!(
        app.get_auth("/api/v1/users/me", &victor).await.status(),
        401
    );
    let needles = [
        victor_id.clone(),
        conversation.clone(),
        "victor".to_owned(),
        SECRET.to_owned(),
    ];
    assert_eq!(
        app.db.rows_containing(&needles),
        Vec::<(String, i64)>::new()
    );
    let res = app.get_auth("/api/v1/admin/users", &admin).await;
    let users: Value = res.json().await.unwrap();
    assert_eq!(users["total"], 2, "{users}");

    // The owner's password is checked as a login's is: failures count,
    // and past the limit even the right one is refused.
    for _ in 0..2 {
        let res = delete_me(&app, &eve, "wrong password").await;
        error_body(res, 401, "INVALID_CREDENTIALS").await;
    }
    let res = delete_me(&app, &eve, PASSWORD).await;
    error_body(res, 429, "RATE_LIMITED").await;
    assert_eq!(app.get_auth("/api/v1/users/me", &eve).await.status(), 200);
}
