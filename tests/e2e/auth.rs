//! Accounts, tokens and limits, attacked over real HTTP.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use confab_e2e::{
    JWT_SECRET, TestApp, captured_logs, error_body, spawn_app, spawn_app_with, spawn_app_with_redis,
};
use confab_sql::Backend;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";

on_both_backends!(
    login_answers_a_token_pair_and_a_strict_cookie,
    login_by_email_and_me,
    unknown_user_and_wrong_password_look_the_same,
    forged_and_broken_access_tokens_are_401_never_500,
    expired_token_is_told_apart_with_a_challenge,
    an_access_token_used_before_still_expires,
    refresh_token_is_not_an_access_token_and_the_reverse,
    refresh_rotates_from_body_and_from_cookie,
    refresh_token_reuse_revokes_family,
    racing_refreshes_have_exactly_one_winner,
    logout_kills_both_tokens,
    disabled_user_is_locked_out_at_once,
    admin_route_is_403_for_a_user_and_200_for_an_admin,
    sixth_login_in_a_minute_is_429,
    spoofed_forwarded_for_does_not_change_the_limiter_key,
    forwarded_for_is_believed_from_a_trusted_proxy,
    general_limit_per_client_address_with_headers,
    no_password_or_token_in_the_logs,
    a_login_flood_past_the_hashing_bound_is_a_fast_503,
    percent_encoded_paths_are_limited_and_not_cached,
    nul_byte_in_the_login_name_is_422_not_500,
    refresh_from_a_browser_with_an_empty_json_body_uses_the_cookie,
    user_data_is_not_cacheable,
    someone_elses_guesses_never_lock_the_owner_out,
);

async fn percent_encoded_paths_are_limited_and_not_cached(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[("CONFAB__RATE_LIMIT__ANONYMOUS_PER_MINUTE", "3")],
    );
    app.register("pia").await;
    let res = app
        .post_json(
            "/%61pi/v1/auth/login",
            &json!({"username": "pia", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert!(res.headers().contains_key("ratelimit-policy"));
    for _ in 0..3 {
        app.get("/%61pi/v1/openapi.json").await;
    }
    error_body(app.get("/%61pi/v1/openapi.json").await, 429, "RATE_LIMITED").await;
}

async fn nul_byte_in_the_login_name_is_422_not_500(backend: Backend) {
    let app = spawn_app(backend);
    let res = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "a\u{0}b", "password": PASSWORD}),
        )
        .await;
    let err = error_body(res, 422, "VALIDATION_ERROR").await;
    assert_eq!(err["field"], "username");
    let long = "x".repeat(300);
    let res = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": long, "password": PASSWORD}),
        )
        .await;
    error_body(res, 422, "VALIDATION_ERROR").await;
}

async fn refresh_from_a_browser_with_an_empty_json_body_uses_the_cookie(backend: Backend) {
    let app = spawn_app(backend);
    let tokens = user_with_tokens(&app, "quin").await;
    let res = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .header("content-type", "application/json")
        .header(
            "cookie",
            format!("confab_refresh={}", token(&tokens, "refresh_token")),
        )
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

async fn user_data_is_not_cacheable(backend: Backend) {
    let app = spawn_app(backend);
    let tokens = user_with_tokens(&app, "rae").await;
    let res = app
        .get_auth("/api/v1/users/me", &token(&tokens, "access_token"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
}

async fn a_login_flood_past_the_hashing_bound_is_a_fast_503(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("CONFAB__AUTH__MAX_CONCURRENT_HASHES", "1"),
            ("CONFAB__AUTH__MAX_WAITING_HASHES", "0"),
            ("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "1000"),
        ],
    );
    app.register("ola").await;
    let names: Vec<String> = (0..6).map(|i| format!("flood{i}")).collect();
    let attempts = names.iter().map(|name| login_attempt(&app, name, None));
    let responses = futures_util::future::join_all(attempts).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&401), "one hash ran: {statuses:?}");
    let refused = responses
        .into_iter()
        .find(|r| r.status() == 503)
        .expect("the flood is turned away");
    assert_eq!(refused.headers()["retry-after"], "1");
    error_body(refused, 503, "UNAVAILABLE").await;
    // Other routes are served meanwhile.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

async fn user_with_tokens(app: &TestApp, name: &str) -> Value {
    assert_eq!(app.register(name).await.status(), 201);
    app.login(name, PASSWORD).await
}

fn token(body: &Value, key: &str) -> String {
    body[key].as_str().unwrap().to_owned()
}

/// `PATCH /api/v1/admin/users/{id}` `{"disabled": true}` as `admin`.
async fn disable(app: &TestApp, admin: &str, id: &str) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/api/v1/admin/users/{id}")))
        .bearer_auth(admin)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap()
}

async fn refresh_with(app: &TestApp, refresh: &str) -> reqwest::Response {
    app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": refresh}))
        .await
}

/// A token with these claims, HS256-signed with `key`.
fn forge(claims: &Value, key: &[u8], alg: Algorithm) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key)).unwrap()
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

async fn login_answers_a_token_pair_and_a_strict_cookie(backend: Backend) {
    let app = spawn_app(backend);
    app.register("amy").await;
    let res = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "amy", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in [
        "confab_refresh=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/api/v1/auth",
        "Max-Age=604800",
    ] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let access = claims_of(body["access_token"].as_str().unwrap());
    for claim in [
        "sub", "iat", "nbf", "exp", "jti", "iss", "aud", "typ", "role",
    ] {
        assert!(
            access.get(claim).is_some(),
            "claim {claim} missing: {access}"
        );
    }
    assert_eq!(access["typ"], "access");
    assert_eq!(access["role"], "user");
    assert_eq!(
        access["exp"].as_i64().unwrap() - access["iat"].as_i64().unwrap(),
        900
    );
    let refresh = claims_of(body["refresh_token"].as_str().unwrap());
    assert_eq!(refresh["typ"], "refresh");
    assert_eq!(
        refresh["exp"].as_i64().unwrap() - refresh["iat"].as_i64().unwrap(),
        7 * 86_400
    );
}

async fn login_by_email_and_me(backend: Backend) {
    let app = spawn_app(backend);
    app.register("ben").await;
    let res = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "BEN@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let res = app
        .get_auth("/api/v1/users/me", &token(&body, "access_token"))
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("ratelimit-policy"));
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["username"], "ben");
    // Both fields at once, or neither, is a validation error.
    let both = json!({"username": "ben", "email": "ben@example.com", "password": PASSWORD});
    error_body(
        app.post_json("/api/v1/auth/login", &both).await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    // No token at all.
    let res = app.get("/api/v1/users/me").await;
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer realm="confab""#
    );
    error_body(res, 401, "AUTH_REQUIRED").await;
}

async fn unknown_user_and_wrong_password_look_the_same(backend: Backend) {
    let app = spawn_app_with(backend, &[("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "20")]);
    app.register("cid").await;
    app.register("cal").await;
    app.create_admin("cboss", PASSWORD).await;
    let admin = token(&app.login("cboss", PASSWORD).await, "access_token");
    let cal: Value = app
        .get_auth(
            "/api/v1/users/me",
            &token(&app.login("cal", PASSWORD).await, "access_token"),
        )
        .await
        .json()
        .await
        .unwrap();
    let res = disable(&app, &admin, cal["id"].as_str().unwrap()).await;
    assert_eq!(res.status(), 200);
    let mut answers = Vec::new();
    for (user, password) in [
        ("cid", "wrong password here"),
        ("nobody-here", "wrong password here"),
        ("cal", PASSWORD), // disabled, right password
        ("cal", "wrong password here"),
    ] {
        let res = app
            .post_json(
                "/api/v1/auth/login",
                &json!({"username": user, "password": password}),
            )
            .await;
        assert_eq!(
            res.headers()["www-authenticate"],
            r#"Bearer realm="confab""#
        );
        let mut err = error_body(res, 401, "INVALID_CREDENTIALS").await;
        err.as_object_mut().unwrap().remove("request_id");
        answers.push(err);
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "the bodies must not tell them apart: {answers:?}"
    );
}
async fn forged_and_broken_access_tokens_are_401_never_500(backend: Backend) {
    let app = spawn_app(backend);
    let tokens = user_with_tokens(&app, "dee").await;
    let good = token(&tokens, "access_token");
    assert_eq!(app.get_auth("/api/v1/users/me", &good).await.status(), 200);
    let claims = claims_of(&good);
    let now = claims["iat"].as_i64().unwrap();
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let secret = JWT_SECRET.as_bytes();
    let (h, p, s) = {
        let parts: Vec<&str> = good.split('.').collect();
        (
            parts[0].to_owned(),
            parts[1].to_owned(),
            parts[2].to_owned(),
        )
    };
    // Control: the same claims, properly signed, are accepted; so each
    // refusal below is due to the one thing the attack changes.
    let resigned = forge(&claims, secret, Algorithm::HS256);
    let control = app.get_auth("/api/v1/users/me", &resigned).await;
    let status = control.status();
    assert_eq!(status, 200, "control: {}", control.text().await.unwrap());
    let none_header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let promoted = B64.encode(serde_json::to_vec(&with("role", json!("admin"))).unwrap());
    let attacks: Vec<(&str, String)> = vec![
        ("alg none", format!("{none_header}.{p}.")),
        ("alg none, no signature part", format!("{none_header}.{p}")),
        (
            "HS512 with the right key",
            forge(&claims, secret, Algorithm::HS512),
        ),
        (
            "HS384 with the right key",
            forge(&claims, secret, Algorithm::HS384),
        ),
        (
            "another key",
            forge(
                &claims,
                b"not-the-server-secret-not-the-server",
                Algorithm::HS256,
            ),
        ),
        (
            "tampered payload (role admin)",
            format!("{h}.{promoted}.{s}"),
        ),
        (
            "future nbf",
            forge(&with("nbf", json!(now + 3600)), secret, Algorithm::HS256),
        ),
        (
            "wrong iss",
            forge(&with("iss", json!("evil")), secret, Algorithm::HS256),
        ),
        (
            "wrong aud",
            forge(
                &with("aud", json!("someone-else")),
                secret,
                Algorithm::HS256,
            ),
        ),
        (
            "typ refresh",
            forge(&with("typ", json!("refresh")), secret, Algorithm::HS256),
        ),
        (
            "sub not a uuid",
            forge(&with("sub", json!("1 OR 1=1")), secret, Algorithm::HS256),
        ),
        ("truncated", good[..good.len() - 5].to_owned()),
        ("garbage", "garbage".to_owned()),
        ("three dots", "...".to_owned()),
        ("huge", "a".repeat(8000)),
    ];
    for (name, token) in attacks {
        let res = app.get_auth("/api/v1/users/me", &token).await;
        assert_eq!(res.status(), 401, "{name}");
        let challenge = res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{name}: {challenge}"
        );
        error_body(res, 401, "AUTH_REQUIRED").await;
    }
    // Not the Bearer scheme at all.
    let res = app
        .client
        .get(app.url("/api/v1/users/me"))
        .header("authorization", format!("Basic {good}"))
        .send()
        .await
        .unwrap();
    error_body(res, 401, "AUTH_REQUIRED").await;
}

async fn expired_token_is_told_apart_with_a_challenge(backend: Backend) {
    let app = spawn_app(backend);
    let tokens = user_with_tokens(&app, "eli").await;
    let mut claims = claims_of(&token(&tokens, "access_token"));
    let now = claims["iat"].as_i64().unwrap();
    claims["iat"] = json!(now - 7200);
    claims["nbf"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    let expired = forge(&claims, JWT_SECRET.as_bytes(), Algorithm::HS256);
    let res = app.get_auth("/api/v1/users/me", &expired).await;
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains(r#"error="invalid_token""#) && challenge.contains("expired"),
        "{challenge}"
    );
    error_body(res, 401, "TOKEN_EXPIRED").await;
}

/// A worker keeps an access token it verified (its exact text), and checks
/// only its times again: a token accepted before is still refused once it
/// has expired, on every worker that accepted it.
async fn an_access_token_used_before_still_expires(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("CONFAB__AUTH__ACCESS_TTL_SECS", "2"),
            ("CONFAB__AUTH__LEEWAY_SECS", "0"),
        ],
    );
    let tokens = user_with_tokens(&app, "evi").await;
    let access = token(&tokens, "access_token");
    // Several requests, so that more than one worker has seen it.
    for _ in 0..6 {
        assert_eq!(
            app.get_auth("/api/v1/users/me", &access).await.status(),
            200
        );
    }
    // `exp` is whole seconds: three seconds on, it is past.
    tokio::time::sleep(std::time::Duration::from_millis(3_100)).await;
    for _ in 0..6 {
        error_body(
            app.get_auth("/api/v1/users/me", &access).await,
            401,
            "TOKEN_EXPIRED",
        )
        .await;
    }
}

async fn refresh_token_is_not_an_access_token_and_the_reverse(backend: Backend) {
    let app = spawn_app(backend);
    let tokens = user_with_tokens(&app, "fay").await;
    let res = app
        .get_auth("/api/v1/users/me", &token(&tokens, "refresh_token"))
        .await;
    error_body(res, 401, "AUTH_REQUIRED").await;
    let res = refresh_with(&app, &token(&tokens, "access_token")).await;
    error_body(res, 401, "AUTH_REQUIRED").await;
    // The refresh token still works: the failed attempts did not use it.
    assert_eq!(
        refresh_with(&app, &token(&tokens, "refresh_token"))
            .await
            .status(),
        200
    );
}

async fn refresh_rotates_from_body_and_from_cookie(backend: Backend) {
    let app = spawn_app(backend);
    let first = user_with_tokens(&app, "gus").await;
    let res = refresh_with(&app, &token(&first, "refresh_token")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let second: Value = res.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(
        app.get_auth("/api/v1/users/me", &token(&second, "access_token"))
            .await
            .status(),
        200
    );
    // A browser: no body, the cookie only.
    let res = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .header(
            "cookie",
            format!("confab_refresh={}", token(&second, "refresh_token")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Neither: 401.
    let res = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .send()
        .await
        .unwrap();
    error_body(res, 401, "AUTH_REQUIRED").await;
}

async fn refresh_token_reuse_revokes_family(backend: Backend) {
    // No duplicate window: any repeat is a reuse.
    let app = spawn_app_with(backend, &[("CONFAB__AUTH__REFRESH_REUSE_GRACE_MS", "0")]);
    let first = user_with_tokens(&app, "hal").await;
    let second: Value = refresh_with(&app, &token(&first, "refresh_token"))
        .await
        .json()
        .await
        .unwrap();
    // The stolen, already used token comes back.
    error_body(
        refresh_with(&app, &token(&first, "refresh_token")).await,
        401,
        "AUTH_REQUIRED",
    )
    .await;
    // The whole family is revoked: the legitimate latest token is dead too.
    error_body(
        refresh_with(&app, &token(&second, "refresh_token")).await,
        401,
        "AUTH_REQUIRED",
    )
    .await;
    // Another session of the same user is untouched.
    let other = app.login("hal", PASSWORD).await;
    assert_eq!(
        refresh_with(&app, &token(&other, "refresh_token"))
            .await
            .status(),
        200
    );
    assert!(
        captured_logs().contains("refresh_token_reuse"),
        "the reuse is logged as a security event"
    );
}

async fn racing_refreshes_have_exactly_one_winner(backend: Backend) {
    let app = spawn_app(backend);
    let tokens = user_with_tokens(&app, "ian").await;
    let refresh = token(&tokens, "refresh_token");
    let (a, b) = tokio::join!(refresh_with(&app, &refresh), refresh_with(&app, &refresh));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "exactly one wins");
    let winner: Value = if a.status() == 200 {
        a.json().await.unwrap()
    } else {
        b.json().await.unwrap()
    };
    // The loser was a duplicate within the grace window, not a theft: the
    // winner's session lives on.
    assert_eq!(
        app.get_auth("/api/v1/users/me", &token(&winner, "access_token"))
            .await
            .status(),
        200
    );
    assert_eq!(
        refresh_with(&app, &token(&winner, "refresh_token"))
            .await
            .status(),
        200
    );
}
async fn logout_kills_both_tokens(backend: Backend) {
    let app = spawn_app(backend);
    let first = user_with_tokens(&app, "jan").await;
    let rotated: Value = refresh_with(&app, &token(&first, "refresh_token"))
        .await
        .json()
        .await
        .unwrap();
    let access = token(&rotated, "access_token");
    let res = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    error_body(
        app.get_auth("/api/v1/users/me", &access).await,
        401,
        "AUTH_REQUIRED",
    )
    .await;
    error_body(
        refresh_with(&app, &token(&rotated, "refresh_token")).await,
        401,
        "AUTH_REQUIRED",
    )
    .await;
    // An earlier access token of the same session dies too.
    error_body(
        app.get_auth("/api/v1/users/me", &token(&first, "access_token"))
            .await,
        401,
        "AUTH_REQUIRED",
    )
    .await;
    // Another session of the same user lives on.
    let other = app.login("jan", PASSWORD).await;
    assert_eq!(
        app.get_auth("/api/v1/users/me", &token(&other, "access_token"))
            .await
            .status(),
        200
    );
    // Logging out needs a token.
    let res = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .send()
        .await
        .unwrap();
    error_body(res, 401, "AUTH_REQUIRED").await;
}
/// Both tokens of the session `tokens` are refused.
async fn session_is_refused(app: &TestApp, tokens: &Value) {
    error_body(
        app.get_auth("/api/v1/users/me", &token(tokens, "access_token"))
            .await,
        401,
        "AUTH_REQUIRED",
    )
    .await;
    error_body(
        refresh_with(app, &token(tokens, "refresh_token")).await,
        401,
        "AUTH_REQUIRED",
    )
    .await;
}

async fn disabled_user_is_locked_out_at_once(backend: Backend) {
    let app = spawn_app(backend);
    app.create_admin("boss", PASSWORD).await;
    let admin = token(&app.login("boss", PASSWORD).await, "access_token");
    let tokens = user_with_tokens(&app, "kim").await;
    let me: Value = app
        .get_auth("/api/v1/users/me", &token(&tokens, "access_token"))
        .await
        .json()
        .await
        .unwrap();
    let id = me["id"].as_str().unwrap();
    let res = disable(&app, &admin, id).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["disabled"], true);
    session_is_refused(&app, &tokens).await;
    let res = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"username": "kim", "password": PASSWORD}),
        )
        .await;
    error_body(res, 401, "INVALID_CREDENTIALS").await;
    // Enabled again: the sessions the disable ended stay ended (their
    // access tokens are not revived); a new login works.
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"disabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    session_is_refused(&app, &tokens).await;
    let fresh = token(&app.login("kim", PASSWORD).await, "access_token");
    assert_eq!(app.get_auth("/api/v1/users/me", &fresh).await.status(), 200);
    // A malformed or unknown id is a 404.
    for bad in ["not-a-uuid", "00000000-0000-7000-8000-000000000000"] {
        let res = disable(&app, &admin, bad).await;
        error_body(res, 404, "NOT_FOUND").await;
    }
}

async fn admin_route_is_403_for_a_user_and_200_for_an_admin(backend: Backend) {
    let app = spawn_app(backend);
    let user = token(&user_with_tokens(&app, "lou").await, "access_token");
    error_body(
        app.get_auth("/api/v1/admin/users", &user).await,
        403,
        "FORBIDDEN",
    )
    .await;
    error_body(app.get("/api/v1/admin/users").await, 401, "AUTH_REQUIRED").await;
    app.create_admin("chief", PASSWORD).await;
    let admin = token(&app.login("chief", PASSWORD).await, "access_token");
    let res = app
        .get_auth("/api/v1/admin/users?limit=1&offset=1", &admin)
        .await;
    assert_eq!(res.status(), 200);
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["total"], 2);
    assert_eq!(page["limit"], 1);
    assert_eq!(page["items"][0]["username"], "chief");
    assert!(page["items"][0].get("password_hash").is_none());
    error_body(
        app.get_auth("/api/v1/admin/users?limit=101", &admin).await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
}

async fn login_attempt(app: &TestApp, user: &str, forwarded: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": user, "password": "wrong password!"}));
    if let Some(f) = forwarded {
        req = req.header("x-forwarded-for", f);
    }
    req.send().await.unwrap()
}

async fn sixth_login_in_a_minute_is_429(backend: Backend) {
    let app = spawn_app(backend);
    for _ in 0..5 {
        assert_eq!(login_attempt(&app, "mia", None).await.status(), 401);
    }
    let res = login_attempt(&app, "mia", None).await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    let policy = res.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.starts_with(r#""login"#) && policy.contains(";q=5;w=60"),
        "{policy}"
    );
    assert!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .contains(";r=0;")
    );
    error_body(res, 429, "RATE_LIMITED").await;
}

async fn spoofed_forwarded_for_does_not_change_the_limiter_key(backend: Backend) {
    let app = spawn_app(backend);
    // Five accounts (so the per-account limit stays out of it), five
    // made-up client addresses from an untrusted peer.
    for i in 0..5 {
        let res = login_attempt(&app, &format!("acct{i}"), Some(&format!("203.0.113.{i}"))).await;
        assert_eq!(res.status(), 401);
    }
    let res = login_attempt(&app, "acct9", Some("198.51.100.77")).await;
    error_body(res, 429, "RATE_LIMITED").await;
}

async fn forwarded_for_is_believed_from_a_trusted_proxy(backend: Backend) {
    let app = spawn_app_with(backend, &[("CONFAB__SERVER__TRUSTED_PROXIES", "127.0.0.1")]);
    // The proxy appends the real client; the left-most entry is the
    // client's own (spoofable) claim and must not be the key.
    for i in 0..8 {
        let res = login_attempt(
            &app,
            &format!("acct{i}"),
            Some(&format!("6.6.6.6, 203.0.113.{i}")),
        )
        .await;
        assert_eq!(res.status(), 401, "each real client has its own bucket");
    }
    for i in 0..5 {
        let res = login_attempt(
            &app,
            &format!("other{i}"),
            Some(&format!("7.7.7.{i}, 198.51.100.50")),
        )
        .await;
        assert_eq!(res.status(), 401);
    }
    let res = login_attempt(&app, "other9", Some("8.8.8.8, 198.51.100.50")).await;
    error_body(res, 429, "RATE_LIMITED").await;
}
async fn general_limit_per_client_address_with_headers(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[("CONFAB__RATE_LIMIT__ANONYMOUS_PER_MINUTE", "3")],
    );
    for remaining in [2, 1, 0] {
        let res = app.get("/api/v1/openapi.json").await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["ratelimit-policy"], r#""anonymous";q=3;w=60"#);
        let state = res.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            state.starts_with(&format!(r#""anonymous";r={remaining};t="#)),
            "{state}"
        );
    }
    let res = app.get("/api/v1/openapi.json").await;
    assert!(res.headers().contains_key("retry-after"));
    error_body(res, 429, "RATE_LIMITED").await;
    // Operations endpoints are not limited.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

async fn no_password_or_token_in_the_logs(backend: Backend) {
    let app = spawn_app_with(backend, &[("CONFAB__AUTH__REFRESH_REUSE_GRACE_MS", "0")]);
    let secret_password = "Zebra-Quartz-Lantern-91";
    let body = json!({"username": "nia", "email": "nia@example.com", "password": secret_password});
    assert_eq!(
        app.post_json("/api/v1/auth/register", &body).await.status(),
        201
    );
    let tokens = app.login("nia", secret_password).await;
    let wrong = json!({"username": "nia", "password": "Wrong-Quartz-Lantern-77"});
    app.post_json("/api/v1/auth/login", &wrong).await;
    let rotated: Value = refresh_with(&app, &token(&tokens, "refresh_token"))
        .await
        .json()
        .await
        .unwrap();
    refresh_with(&app, &token(&tokens, "refresh_token")).await; // reuse: logged as an event
    app.get_auth("/api/v1/users/me", &token(&rotated, "access_token"))
        .await;
    app.get_auth("/api/v1/users/me", "garbage.token.value")
        .await;
    // A password change, wrong then right, and the sessions list (in a
    // new session: the reuse above ended the first one).
    let fresh = app.login("nia", secret_password).await;
    let access = token(&fresh, "access_token");
    for current in ["Wrong-Quartz-Lantern-78", secret_password] {
        let change =
            json!({"current_password": current, "new_password": "Newer-Quartz-Lantern-55"});
        app.call(
            Method::POST,
            "/api/v1/users/me/password",
            &access,
            Some(&change),
        )
        .await;
    }
    app.get_auth("/api/v1/auth/sessions", &access).await;
    let logs = captured_logs();
    assert!(logs.contains("logged in"), "the capture works");
    assert!(logs.contains("password_changed"), "the change is an event");
    for secret in [
        secret_password,
        "Wrong-Quartz-Lantern-77",
        "Wrong-Quartz-Lantern-78",
        "Newer-Quartz-Lantern-55",
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
        rotated["access_token"].as_str().unwrap(),
        rotated["refresh_token"].as_str().unwrap(),
        fresh["access_token"].as_str().unwrap(),
        fresh["refresh_token"].as_str().unwrap(),
        JWT_SECRET,
    ] {
        assert!(!logs.contains(secret), "a secret reached the logs");
        // Nor a recognisable piece of a token (its signature).
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(!logs.contains(sig), "a token signature reached the logs");
        }
    }
}

/// A login from the client address `from` (through the trusted proxy).
async fn login_from(app: &TestApp, user: &str, password: &str, from: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", from)
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
}

/// The policy a 429 names, after checking it has a wait.
async fn refused_by(res: reqwest::Response) -> String {
    let policy = res.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "Retry-After {retry}");
    error_body(res, 429, "RATE_LIMITED").await;
    policy
}

/// Login lockout as an attack: whoever guesses at an account is stopped,
/// per address and, once the account has many failures, every address
/// that failed on it; but the owner, from an address with no failures,
/// still logs in. In process and with the counts in Redis.
async fn someone_elses_guesses_never_lock_the_owner_out(backend: Backend) {
    let wrong = "wrong password!";
    for redis in [false, true] {
        let vars = [
            ("CONFAB__SERVER__TRUSTED_PROXIES", "127.0.0.1"),
            ("CONFAB__RATE_LIMIT__LOGIN_FAILURES_PER_ADDRESS", "3"),
            ("CONFAB__RATE_LIMIT__LOGIN_FAILURES_PER_ACCOUNT", "5"),
        ];
        let app = if redis {
            spawn_app_with_redis(backend, &vars)
        } else {
            spawn_app_with(backend, &vars)
        };
        app.register("mia").await;
        for _ in 0..3 {
            let res = login_from(&app, "mia", wrong, "203.0.113.1").await;
            assert_eq!(res.status(), 401);
        }
        // That address is done with this account, right password or not.
        let policy = refused_by(login_from(&app, "mia", PASSWORD, "203.0.113.1").await).await;
        assert!(
            policy.starts_with(r#""login-failures";q=3;w=900"#),
            "{policy}"
        );
        // More addresses guess: the account's failures pass 5.
        for i in 10..13 {
            let res = login_from(&app, "mia", wrong, &format!("203.0.113.{i}")).await;
            assert_eq!(res.status(), 401);
        }
        let policy = refused_by(login_from(&app, "mia", PASSWORD, "203.0.113.10").await).await;
        assert!(
            policy.starts_with(r#""login-account";q=5;w=900"#),
            "{policy}"
        );
        // The owner, from their own address, is not locked out.
        let res = login_from(&app, "mia", PASSWORD, "198.51.100.7").await;
        assert_eq!(res.status(), 200, "redis: {redis}");
        // Another account is untouched by all this.
        app.register("ned").await;
        let res = login_from(&app, "ned", PASSWORD, "203.0.113.1").await;
        assert_eq!(res.status(), 200);
    }
}
