//! `Idempotency-Key` on POST, PATCH and DELETE, in both modes: in process,
//! and shared through Redis by two instances (a retry sent to the other
//! instance).

use confab_e2e::chat::{SseReader, conversation_of, is_append, message_body, replay, spawn_chat};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_e2e::{TestApp, error_body, redis_url};
use confab_sql::Backend;
use reqwest::Method;
use serde_json::{Value, json};

on_both_backends!(
    a_retried_rename_gets_the_first_response_replayed,
    a_retried_message_send_reattaches_and_asks_the_model_once,
    a_retry_on_another_instance_reattaches_to_the_same_answer,
    one_user_cannot_fill_the_key_store,
    a_json_mode_send_retried_gets_the_json_it_asked_for,
    a_retried_continue_or_regeneration_of_the_first_answer_is_replayed_as_it_was,
);

/// Where the keys live.
#[derive(Clone, Copy)]
enum Mode {
    InProcess,
    Redis,
}

/// One instance (in process), or two sharing a database and Redis (the
/// second is where retries go); answers come from `llm`, without title
/// calls.
fn instances(backend: Backend, llm: &FakeLlm, mode: Mode) -> (TestApp, Option<TestApp>) {
    instances_with(backend, llm, mode, &[])
}

/// As [`instances`], with `extra` variables on both.
fn instances_with(
    backend: Backend,
    llm: &FakeLlm,
    mode: Mode,
    extra: &[(&str, &str)],
) -> (TestApp, Option<TestApp>) {
    let prefix = format!("confab-e2e:{}:", uuid::Uuid::new_v4());
    let url = redis_url();
    let mut vars = vec![("CONFAB__LLM__TITLE_GENERATION", "false")];
    vars.extend_from_slice(extra);
    if let Mode::Redis = mode {
        vars.push(("REDIS_URL", url.as_str()));
        vars.push(("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()));
    }
    let a = spawn_chat(backend, llm, &vars);
    let b = match mode {
        Mode::Redis => Some(a.sibling(&[])),
        Mode::InProcess => None,
    };
    (a, b)
}

/// Waits (with a deadline) until `llm` has been asked for an answer.
async fn until_the_model_is_asked(llm: &FakeLlm) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while llm.requests().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the model was never asked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn with_key(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn a_retried_rename_gets_the_first_response_replayed(backend: Backend) {
    for mode in [Mode::InProcess, Mode::Redis] {
        let llm = FakeLlm::start();
        llm.push(Script::reply(&["hello"]));
        let (a, b) = instances(backend, &llm, mode);
        let b = b.as_ref().unwrap_or(&a);
        let token = a.user("ada").await;
        let (id, _) = a.chat(&token, "hi").await;
        let path = format!("/api/v1/conversations/{id}");
        let rename = json!({"title": "First"});
        let first = with_key(&a, Method::PATCH, &path, &token, "rename-1", &rename).await;
        assert_eq!(first.status(), 200);
        assert!(!first.headers().contains_key("idempotent-replayed"));
        let first_body = first.text().await.unwrap();
        // A rename in between; the retry must not apply "First" again.
        let other = json!({"title": "Second"});
        assert_eq!(
            a.call(Method::PATCH, &path, &token, Some(&other))
                .await
                .status(),
            200
        );
        let retry = with_key(b, Method::PATCH, &path, &token, "rename-1", &rename).await;
        assert_eq!(retry.status(), 200);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(retry.headers()["content-type"], "application/json");
        assert_eq!(retry.text().await.unwrap(), first_body);
        assert_eq!(a.conversation(&token, &id).await["title"], "Second");

        // The same key on another request is refused.
        let different = json!({"title": "Third"});
        let reused = with_key(b, Method::PATCH, &path, &token, "rename-1", &different).await;
        error_body(reused, 422, "IDEMPOTENCY_KEY_REUSED").await;
        // Another caller's key of the same spelling is another key.
        let eve = a.user("eve").await;
        let (eve_id, _) = {
            llm.push(Script::reply(&["hey"]));
            a.chat(&eve, "yo").await
        };
        let eve_path = format!("/api/v1/conversations/{eve_id}");
        let res = with_key(&a, Method::PATCH, &eve_path, &eve, "rename-1", &rename).await;
        assert_eq!(res.status(), 200);
        assert!(!res.headers().contains_key("idempotent-replayed"));
        // Keys are 1 to 255 printable ASCII characters.
        for bad in [String::new(), "k".repeat(256)] {
            let res = with_key(&a, Method::PATCH, &path, &token, &bad, &rename).await;
            error_body(res, 400, "VALIDATION_ERROR").await;
        }
    }
}

async fn a_retried_message_send_reattaches_and_asks_the_model_once(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("one".into()),
        Step::Hold,
        Step::Text(" two".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let (a, _) = instances(backend, &llm, Mode::InProcess);
    let token = a.user("ada").await;
    let body = message_body("count");
    let path = "/api/v1/conversations";
    let first = with_key(&a, Method::POST, path, &token, "send-1", &body).await;
    assert_eq!(first.status(), 200);
    let mut first = SseReader::new(first);
    let seen = first.until(is_append).await;
    let last_id = seen.last().unwrap().id.clone().unwrap();
    // The client lost the connection and retries: the same answer again,
    // from the start...
    let retry = with_key(&a, Method::POST, path, &token, "send-1", &body).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let mut retry = SseReader::new(retry);
    // ...or after the last event it had.
    let resumed = a
        .client
        .post(a.url(path))
        .bearer_auth(&token)
        .header("idempotency-key", "send-1")
        .header("last-event-id", &last_id)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let mut resumed = SseReader::new(resumed);
    llm.release();
    let mut whole = seen.clone();
    whole.extend(first.rest().await);
    let again = retry.rest().await;
    let rest = resumed.rest().await;
    assert_eq!(replay(&again)["message"], replay(&whole)["message"]);
    let mut stitched = seen.clone();
    stitched.extend(rest);
    assert_eq!(replay(&stitched)["message"], replay(&whole)["message"]);
    // One message sent, one answer, one call to the model.
    let id = conversation_of(&whole);
    let c = a.conversation(&token, &id).await;
    assert_eq!(c["messages"].as_array().unwrap().len(), 2, "{c}");
    assert_eq!(c["messages"][1]["content"]["parts"][0], "one two");
    assert_eq!(llm.requests().len(), 1);
    let list = a.get_auth("/api/v1/conversations", &token).await;
    assert_eq!(list.json::<Value>().await.unwrap()["total"], 1);
}

async fn a_retry_on_another_instance_reattaches_to_the_same_answer(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("only".into()),
        Step::Hold,
        Step::Text(" once".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let (a, b) = instances(backend, &llm, Mode::Redis);
    let b = b.expect("a second instance");
    let token = a.user("ada").await;
    let body = message_body("hello");
    let path = "/api/v1/conversations";
    let first = with_key(&a, Method::POST, path, &token, "send-2", &body).await;
    let mut first = SseReader::new(first);
    first.until(is_append).await;
    let retry = with_key(&b, Method::POST, path, &token, "send-2", &body).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let mut retry = SseReader::new(retry);
    llm.release();
    let whole = first.rest().await;
    let again = retry.rest().await;
    assert_eq!(again.last().unwrap().data, "[DONE]");
    assert_eq!(
        replay(&again)["message"]["content"]["parts"][0],
        "only once"
    );
    assert_eq!(whole.last().unwrap().data, "[DONE]");
    assert_eq!(llm.requests().len(), 1, "one upstream call");
    let list = b.get_auth("/api/v1/conversations", &token).await;
    assert_eq!(
        list.json::<Value>().await.unwrap()["total"],
        1,
        "one conversation"
    );
}

#[tokio::test]
async fn a_json_mode_send_retried_while_it_runs_reattaches_and_asks_once() {
    // In JSON mode the response waits for the finished answer; the send is
    // recorded as soon as its message is stored, so a retry meanwhile (the
    // client timed out) re-attaches to the answer's stream.
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("slow".into()),
        Step::Hold,
        Step::Finish("stop"),
        Step::Done,
    ]));
    let (a, _) = instances(Backend::Sqlite, &llm, Mode::InProcess);
    let token = a.user("ada").await;
    let body = message_body("hi");
    let send = |accept: &'static str| {
        a.client
            .post(a.url("/api/v1/conversations"))
            .bearer_auth(&token)
            .header("accept", accept)
            .header("idempotency-key", "json-1")
            .json(&body)
            .send()
    };
    let first = tokio::spawn(send("application/json"));
    // Wait until the model has been asked: the first request is running.
    until_the_model_is_asked(&llm).await;
    let retry = send("text/event-stream").await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let mut retry = SseReader::new(retry);
    llm.release();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = retry.rest().await;
    assert_eq!(replay(&again)["message"], first["message"]);
    assert_eq!(llm.requests().len(), 1);
}

#[tokio::test]
async fn auth_routes_are_never_recorded_even_spelled_percent_encoded() {
    // A logout's response must not be replayed to a retry: the retry runs
    // (and the token, now revoked, is refused).
    let llm = FakeLlm::start();
    let (a, _) = instances(Backend::Sqlite, &llm, Mode::InProcess);
    for path in ["/api/v1/auth/logout", "/api/v1/%61uth/logout"] {
        let token = a.user(&format!("u{}", path.len())).await;
        let logout = || {
            a.client
                .post(a.url(path))
                .bearer_auth(&token)
                .header("idempotency-key", "logout-1")
                .send()
        };
        assert_eq!(logout().await.unwrap().status(), 204, "{path}");
        let retry = logout().await.unwrap();
        assert!(
            !retry.headers().contains_key("idempotent-replayed"),
            "{path}"
        );
        assert_eq!(retry.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn a_refused_send_is_not_recorded_so_its_retry_can_succeed() {
    // A send refused because an answer is still running (409) frees its
    // key: once that answer is done, the same retry is sent for real.
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("busy".into()),
        Step::Hold,
        Step::Finish("stop"),
        Step::Done,
    ]));
    let (a, _) = instances(Backend::Sqlite, &llm, Mode::InProcess);
    let token = a.user("ada").await;
    let res = a
        .send_message("/api/v1/conversations", &token, &message_body("first"))
        .await;
    let mut running = SseReader::new(res);
    let seen = running.until(is_append).await;
    let id = conversation_of(&seen);
    let path = format!("/api/v1/conversations/{id}/messages");
    let body = message_body("second");
    let refused = with_key(&a, Method::POST, &path, &token, "next-1", &body).await;
    error_body(refused, 409, "CONFLICT").await;
    llm.release();
    running.rest().await;
    llm.push(Script::reply(&["now"]));
    let retry = with_key(&a, Method::POST, &path, &token, "next-1", &body).await;
    assert_eq!(retry.status(), 200);
    assert!(!retry.headers().contains_key("idempotent-replayed"));
    let events = SseReader::new(retry).rest().await;
    assert_eq!(replay(&events)["message"]["content"]["parts"][0], "now");
    assert_eq!(llm.requests().len(), 2);
}

/// Denial of service by one user: keys are bounded per user (in process
/// and in Redis, across instances), so one user filling their share is
/// refused 429 with the time their first key expires, while their held
/// keys still replay, their unkeyed requests run, and other users' keys
/// are taken.
async fn one_user_cannot_fill_the_key_store(backend: Backend) {
    for mode in [Mode::InProcess, Mode::Redis] {
        let llm = FakeLlm::start();
        let (a, b) = instances_with(
            backend,
            &llm,
            mode,
            &[("CONFAB__IDEMPOTENCY__MAX_PER_USER", "3")],
        );
        let b = b.as_ref().unwrap_or(&a);
        let ada = a.user("ada").await;
        let bob = a.user("bob").await;
        let (id, _) = a.chat(&ada, "hi").await;
        let path = format!("/api/v1/conversations/{id}");
        let title = |n: usize| json!({ "title": format!("t{n}") });
        for n in 0..3 {
            let app = if n % 2 == 0 { &a } else { b };
            let res = with_key(app, Method::PATCH, &path, &ada, &format!("k{n}"), &title(n)).await;
            assert_eq!(res.status(), 200, "key {n} of 3");
        }
        let refused = with_key(b, Method::PATCH, &path, &ada, "k3", &title(3)).await;
        let retry: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=86_400).contains(&retry), "Retry-After {retry}");
        let body = error_body(refused, 429, "RATE_LIMITED").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{body}"
        );
        assert_eq!(
            a.conversation(&ada, &id).await["title"],
            "t2",
            "the refused request did not run"
        );
        // A held key still replays, and a request without a key runs.
        let replayed = with_key(&a, Method::PATCH, &path, &ada, "k0", &title(0)).await;
        assert_eq!(replayed.status(), 200);
        assert_eq!(replayed.headers()["idempotent-replayed"], "true");
        let unkeyed = a.call(Method::PATCH, &path, &ada, Some(&title(4))).await;
        assert_eq!(unkeyed.status(), 200);
        // Bob's keys are his own budget, even spelled as Ada's.
        let (bobs, _) = a.chat(&bob, "mine").await;
        let bobs_path = format!("/api/v1/conversations/{bobs}");
        for key in ["k3", "k0"] {
            let res = with_key(b, Method::PATCH, &bobs_path, &bob, key, &title(5)).await;
            assert_eq!(res.status(), 200, "Bob's {key}");
            assert!(!res.headers().contains_key("idempotent-replayed"));
        }
    }
}

/// A JSON-mode send retried with its key gets what the first request
/// answered, in JSON (never the event stream): 201 with `Location` for the
/// send that created the conversation, 200 for a later one, the same body;
/// a retry while the answer runs waits for it; a failed answer's retry is
/// the same 502. The model is asked once per send. In process, and through
/// Redis with the retry on the other instance.
async fn a_json_mode_send_retried_gets_the_json_it_asked_for(backend: Backend) {
    for mode in [Mode::InProcess, Mode::Redis] {
        let llm = FakeLlm::start();
        let (a, b) = instances(backend, &llm, mode);
        let b = b.as_ref().unwrap_or(&a);
        let token = a.user("ada").await;
        let json_send = |app: &TestApp, path: String, key: &'static str, text: &'static str| {
            app.client
                .post(app.url(&path))
                .bearer_auth(&token)
                .header("accept", "application/json")
                .header("idempotency-key", key)
                .json(&message_body(text))
                .send()
        };
        // The first send holds until released: its retry arrives meanwhile.
        llm.push(Script::Stream(vec![
            Step::Text("first ".into()),
            Step::Hold,
            Step::Text("answer".into()),
            Step::Finish("stop"),
            Step::Done,
        ]));
        let first = tokio::spawn(json_send(&a, "/api/v1/conversations".into(), "j-1", "hi"));
        until_the_model_is_asked(&llm).await;
        // A retry while it runs: 409 until the first has stored its
        // message (from then the key names its answer), as a client retries.
        let retry_until_recorded = async {
            loop {
                let res = json_send(b, "/api/v1/conversations".into(), "j-1", "hi")
                    .await
                    .unwrap();
                if res.status() != 409 {
                    return res;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        let release_later = async {
            // Long enough for the retry to be waiting on the held answer.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            llm.release();
        };
        let (early, ()) = tokio::join!(retry_until_recorded, release_later);
        let first = first.await.unwrap().unwrap();
        assert_eq!(first.status(), 201);
        let location = first.headers()["location"].to_str().unwrap().to_owned();
        let first: Value = first.json().await.unwrap();
        assert_eq!(first["message"]["content"]["parts"][0], "first answer");
        for retry in [
            early,
            json_send(b, "/api/v1/conversations".into(), "j-1", "hi")
                .await
                .unwrap(),
        ] {
            assert_eq!(retry.status(), 201);
            assert_eq!(retry.headers()["content-type"], "application/json");
            assert_eq!(retry.headers()["location"], location.as_str());
            assert_eq!(retry.headers()["idempotent-replayed"], "true");
            assert_eq!(retry.json::<Value>().await.unwrap(), first);
        }
        assert_eq!(llm.requests().len(), 1, "asked once");
        // A later message of the conversation: 200, and its retry too.
        let id = first["conversation_id"].as_str().unwrap().to_owned();
        let path = format!("/api/v1/conversations/{id}/messages");
        llm.push(Script::reply(&["second"]));
        let second = json_send(&a, path.clone(), "j-2", "more").await.unwrap();
        assert_eq!(second.status(), 200);
        let second: Value = second.json().await.unwrap();
        let retry = json_send(b, path.clone(), "j-2", "more").await.unwrap();
        assert_eq!(retry.status(), 200);
        assert!(!retry.headers().contains_key("location"));
        assert_eq!(retry.json::<Value>().await.unwrap(), second);
        // A failed answer: the retry is the same 502, and asks nothing.
        llm.push(Script::Status(500, "down".into()));
        let failed = json_send(&a, path.clone(), "j-3", "again").await.unwrap();
        error_body(failed, 502, "UPSTREAM_ERROR").await;
        let asked = llm.requests().len();
        let retry = json_send(b, path, "j-3", "again").await.unwrap();
        error_body(retry, 502, "UPSTREAM_ERROR").await;
        assert_eq!(llm.requests().len(), asked);
    }
}

async fn a_retried_continue_or_regeneration_of_the_first_answer_is_replayed_as_it_was(
    backend: Backend,
) {
    for mode in [Mode::InProcess, Mode::Redis] {
        let llm = FakeLlm::start();
        let (a, b) = instances(backend, &llm, mode);
        let b = b.as_ref().unwrap_or(&a);
        let token = a.user("ada").await;
        // The first answer stops at the length cap: it can be continued.
        llm.push(Script::Stream(vec![
            Step::Text("cut".into()),
            Step::Finish("length"),
            Step::Done,
        ]));
        let (id, events) = a.chat(&token, "the first question").await;
        let first_answer = confab_e2e::chat::replay(&events)["message"]["id"].clone();
        let path = format!("/api/v1/conversations/{id}/messages");
        let json_send = |app: &TestApp, key: &'static str, body: Value| {
            app.client
                .post(app.url(&path))
                .bearer_auth(&token)
                .header("accept", "application/json")
                .header("idempotency-key", key)
                .json(&body)
                .send()
        };
        // A continue of the first answer, retried: 200 both times.
        llm.push(Script::reply(&[" and more"]));
        let body = serde_json::json!({"action": "continue", "parent_message_id": first_answer});
        let first = json_send(&a, "cont-1", body.clone()).await.unwrap();
        assert_eq!(first.status(), 200);
        let first: Value = first.json().await.unwrap();
        assert_eq!(first["message"]["content"]["parts"][0], "cut and more");
        let retry = json_send(b, "cont-1", body).await.unwrap();
        assert_eq!(retry.status(), 200);
        assert!(!retry.headers().contains_key("location"));
        assert_eq!(retry.json::<Value>().await.unwrap(), first);
        let regenerate =
            |app: &TestApp| json_send(app, "regen-1", serde_json::json!({"action": "variant"}));
        llm.push(Script::reply(&["a second answer"]));
        let first = regenerate(&a).await.unwrap();
        assert_eq!(first.status(), 200);
        let first: Value = first.json().await.unwrap();
        let asked = llm.requests().len();
        // Its question is the conversation's first, but the retry did not
        // start the conversation: the same 200, no Location.
        let retry = regenerate(b).await.unwrap();
        assert_eq!(retry.status(), 200);
        assert!(!retry.headers().contains_key("location"));
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(retry.json::<Value>().await.unwrap(), first);
        assert_eq!(llm.requests().len(), asked, "asked once");
    }
}
