//! A user's login sessions (issue 16): listed with where they came from,
//! ended one by one or all at once (keeping the caller's, optionally), and
//! an ended session's tokens refused at once on every instance (two
//! servers sharing Redis); a password change, which ends every session
//! but the caller's and is limited as a login is.

use confab_e2e::{TestApp, error_body, spawn_app_with_redis};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    sessions_are_listed_and_ended_at_once_on_every_instance,
    a_password_change_keeps_the_callers_session_and_ends_the_others,
    a_password_change_is_no_way_around_the_login_limits,
);

const PASSWORD: &str = "correct horse battery staple";

/// Logs `user` in from a client calling itself `agent`; the token body.
async fn login_as(app: &TestApp, user: &str, agent: &str) -> Value {
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("user-agent", agent)
        .json(&json!({"username": user, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "login from {agent}");
    res.json().await.unwrap()
}

fn access(tokens: &Value) -> &str {
    tokens["access_token"].as_str().unwrap()
}

/// `method path` as `token`: the status.
async fn status(app: &TestApp, method: Method, path: &str, token: &str) -> u16 {
    app.client
        .request(method, app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn sessions(app: &TestApp, token: &str) -> Vec<Value> {
    let res = app.get_auth("/api/v1/auth/sessions", token).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

/// Whether `tokens`' refresh token still gets a new pair on `app`.
async fn refreshes(app: &TestApp, tokens: &Value) -> bool {
    let res = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    res.status() == 200
}

async fn sessions_are_listed_and_ended_at_once_on_every_instance(backend: Backend) {
    let a = spawn_app_with_redis(backend, &[]);
    let b = a.sibling(&[]);
    assert_eq!(a.register("sofia").await.status(), 201);
    assert_eq!(a.register("oscar").await.status(), 201);
    let phone = login_as(&a, "sofia", "Phone <b>7</b>").await;
    let laptop = login_as(&b, "sofia", "Laptop/2.0").await;
    let spare = login_as(&a, "sofia", "Spare").await;
    let oscar = login_as(&a, "oscar", "Oscar").await;

    // Listed on either instance, the most recently used first, the
    // caller's marked; what the client said is kept as text.
    let listed = sessions(&b, access(&phone)).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let agents: Vec<&str> = listed
        .iter()
        .map(|s| s["user_agent"].as_str().unwrap())
        .collect();
    assert_eq!(agents, ["Spare", "Laptop/2.0", "Phone <b>7</b>"]);
    let current: Vec<bool> = listed
        .iter()
        .map(|s| s["current"].as_bool().unwrap())
        .collect();
    assert_eq!(current, [false, false, true]);
    assert_eq!(listed[2]["client_address"], "127.0.0.1");
    for key in ["id", "created_at", "last_used_at", "expires_at"] {
        assert!(listed[0][key].is_string(), "{key}: {listed:?}");
    }
    let id_of = |agent: &str| {
        listed.iter().find(|s| s["user_agent"] == agent).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (laptop_id, spare_id) = (id_of("Laptop/2.0"), id_of("Spare"));
    // Another user's list holds only theirs; another user's session, an
    // unknown id and a malformed one are the same 404.
    assert_eq!(sessions(&a, access(&oscar)).await.len(), 1);
    let oscars = sessions(&a, access(&oscar)).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for id in [
        oscars.as_str(),
        "0190f5a2-0000-7000-8000-000000000000",
        "nope",
    ] {
        let res = b
            .call(
                Method::DELETE,
                &format!("/api/v1/auth/sessions/{id}"),
                access(&phone),
                None,
            )
            .await;
        error_body(res, 404, "NOT_FOUND").await;
    }
    assert_eq!(
        status(&a, Method::GET, "/api/v1/users/me", access(&oscar)).await,
        200
    );

    // Ended on B: refused at once on A, its refresh token too.
    let path = format!("/api/v1/auth/sessions/{laptop_id}");
    assert_eq!(status(&b, Method::DELETE, &path, access(&phone)).await, 204);
    assert_eq!(
        status(&a, Method::GET, "/api/v1/users/me", access(&laptop)).await,
        401
    );
    assert!(!refreshes(&a, &laptop).await);
    assert_eq!(
        status(&b, Method::DELETE, &path, access(&phone)).await,
        404,
        "ended once"
    );
    assert_eq!(
        status(&a, Method::GET, "/api/v1/users/me", access(&phone)).await,
        200
    );
    assert_eq!(sessions(&a, access(&phone)).await.len(), 2);

    // Every other one: the spare goes, the caller's stays.
    let res = b
        .call(
            Method::POST,
            "/api/v1/auth/logout-all?keep_current=true",
            access(&phone),
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    assert!(
        res.headers().get("set-cookie").is_none(),
        "the caller's cookie stays"
    );
    assert_eq!(
        status(&a, Method::GET, "/api/v1/users/me", access(&spare)).await,
        401
    );
    assert!(!refreshes(&b, &spare).await);
    let left = sessions(&a, access(&phone)).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0]["id"], json!(spare_id));
    assert_eq!(left[0]["current"], true);

    // Every one: the caller's too, and its cookie is cleared.
    let res = a
        .call(
            Method::POST,
            "/api/v1/auth/logout-all",
            access(&phone),
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
    assert_eq!(
        status(&b, Method::GET, "/api/v1/users/me", access(&phone)).await,
        401
    );
    assert!(!refreshes(&a, &phone).await);
    // Oscar never noticed.
    assert_eq!(
        status(&b, Method::GET, "/api/v1/users/me", access(&oscar)).await,
        200
    );
    let res = b
        .call(
            Method::POST,
            "/api/v1/auth/logout-all?keep=1",
            access(&oscar),
            None,
        )
        .await;
    assert_eq!(res.status(), 400, "an unknown parameter");
}

/// `POST /api/v1/users/me/password` as `token` with `current` and `new`.
async fn change(app: &TestApp, token: &str, current: &str, new: &str) -> reqwest::Response {
    let body = json!({"current_password": current, "new_password": new});
    app.call(
        Method::POST,
        "/api/v1/users/me/password",
        token,
        Some(&body),
    )
    .await
}

async fn a_password_change_keeps_the_callers_session_and_ends_the_others(backend: Backend) {
    let a = spawn_app_with_redis(backend, &[("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "1000")]);
    let b = a.sibling(&[]);
    assert_eq!(a.register("petra").await.status(), 201);
    let here = login_as(&a, "petra", "Here").await;
    let there = login_as(&b, "petra", "There").await;
    let new = "a brand new horse battery";

    // Refused, and nothing changes: a wrong current password, a new one
    // the policy refuses or the same as now, a current one too long.
    let res = change(&a, access(&here), "not my password", new).await;
    error_body(res, 401, "INVALID_CREDENTIALS").await;
    for bad in ["short", "petra-is-my-password", "password123", PASSWORD] {
        let res = change(&a, access(&here), PASSWORD, bad).await;
        let err = error_body(res, 422, "VALIDATION_ERROR").await;
        assert_eq!(err["field"], "new_password", "{bad}: {err}");
    }
    let res = change(&a, access(&here), &"x".repeat(129), new).await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "current_password");
    let res = a
        .call(
            Method::POST,
            "/api/v1/users/me/password",
            access(&here),
            Some(&json!({"password": new})),
        )
        .await;
    assert_eq!(res.status(), 400, "unknown fields");
    assert_eq!(
        status(&a, Method::GET, "/api/v1/users/me", access(&there)).await,
        200
    );

    let res = change(&b, access(&here), PASSWORD, new).await;
    assert_eq!(res.status(), 204);
    // The caller's session goes on; the other is over on every instance.
    assert_eq!(
        status(&a, Method::GET, "/api/v1/users/me", access(&here)).await,
        200
    );
    assert_eq!(
        status(&a, Method::GET, "/api/v1/users/me", access(&there)).await,
        401
    );
    assert!(!refreshes(&a, &there).await);
    assert!(refreshes(&b, &here).await);
    let left = sessions(&a, access(&here)).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["user_agent"], "Here");
    // The old password no longer logs in; the new one does.
    let res = a
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "petra", "password": PASSWORD}),
        )
        .await;
    error_body(res, 401, "INVALID_CREDENTIALS").await;
    let res = a
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "petra", "password": new}),
        )
        .await;
    assert_eq!(res.status(), 200);
}

async fn a_password_change_is_no_way_around_the_login_limits(backend: Backend) {
    // The default limits: 5 attempts a minute per address, 5 failures per
    // address and account.
    let app = confab_e2e::spawn_app_with(backend, &[]);
    assert_eq!(app.register("quinn").await.status(), 201);
    let tokens = login_as(&app, "quinn", "Q").await;
    let mut refused = 0;
    for guess in 0..6 {
        let res = change(
            &app,
            access(&tokens),
            &format!("guess number {guess}"),
            "a brand new horse battery",
        )
        .await;
        match res.status().as_u16() {
            401 => {}
            429 => {
                assert!(res.headers().contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("guess {guess}: {other}"),
        }
    }
    assert!(refused >= 1, "the guesses are limited");
    // Even the right password is refused now, and so is a login from here.
    let res = change(&app, access(&tokens), PASSWORD, "a brand new horse battery").await;
    assert_eq!(res.status(), 429);
    let res = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "quinn", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 429);
}
