//! `REDIS_URL` set: two instances of the service (two servers on one
//! database, one Redis and one key prefix) share rate limits, logouts, the
//! read cache and answer streams (resume and stop from either); a Redis
//! that is down or restarts follows the policy of docs/operations.md.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confab_domain::{MessageId, MessageStatus};
use confab_e2e::chat::{
    SseReader, conversation_of, is_append, message_body, replay, spawn_chat, spawn_chat_with_redis,
};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_e2e::{TestApp, error_body, redis_url, spawn_app_with, spawn_app_with_redis};
use confab_ports::StreamLog;
use confab_redis::{RedisPool, RedisSettings, RedisStreamLog, RedisStreamLogOptions};
use confab_sql::Backend;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::json;

on_both_backends!(
    a_logout_on_one_instance_is_refused_by_the_other,
    a_disable_on_one_instance_locks_out_on_the_other_at_once,
    the_rate_limit_bucket_is_shared_by_the_instances,
    a_hundred_requests_at_once_are_charged_one_by_one_to_the_shared_bucket,
    a_rename_on_one_instance_is_seen_at_once_on_the_other,
    a_stream_started_on_one_instance_resumes_on_the_other,
    a_stop_sent_to_one_instance_stops_the_generation_on_the_other,
    a_send_over_the_shared_generation_limit_is_refused_and_leaves_the_last_stream,
    the_next_send_after_done_is_never_busy_on_either_instance,
);

async fn me(app: &TestApp, token: &str) -> u16 {
    app.get_auth("/api/v1/users/me", token)
        .await
        .status()
        .as_u16()
}

async fn a_logout_on_one_instance_is_refused_by_the_other(backend: Backend) {
    let a = spawn_app_with_redis(backend, &[]);
    let b = a.sibling(&[]);
    let token = a.user("ada").await;
    assert_eq!(me(&b, &token).await, 200);
    let res = a
        .call(Method::POST, "/api/v1/auth/logout", &token, None)
        .await;
    assert_eq!(res.status(), 204);
    error_body(
        b.get_auth("/api/v1/users/me", &token).await,
        401,
        "AUTH_REQUIRED",
    )
    .await;
    assert_eq!(me(&a, &token).await, 401);
}

/// An instance that has authenticated a user remembers the account; a
/// disable (or enable) on another instance bumps the account's version in
/// Redis, so the first instance's next request reads the account again.
/// The sessions a disable ended stay ended after the enable, everywhere.
async fn a_disable_on_one_instance_locks_out_on_the_other_at_once(backend: Backend) {
    let a = spawn_app_with_redis(backend, &[]);
    let b = a.sibling(&[]);
    a.create_admin("boss", confab_e2e::chat::PASSWORD).await;
    let admin = a.login("boss", confab_e2e::chat::PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = a.user("kim").await;
    // b reads and remembers the account.
    let me_on_b: serde_json::Value = b
        .get_auth("/api/v1/users/me", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me(&b, &token).await, 200);
    let id = me_on_b["id"].as_str().unwrap();
    for disabled in [true, false] {
        let res = a
            .call(
                Method::PATCH,
                &format!("/api/v1/admin/users/{id}"),
                &admin,
                Some(&json!({ "disabled": disabled })),
            )
            .await;
        assert_eq!(res.status(), 200);
        // Enabled again, the sessions the disable ended stay ended.
        assert_eq!(me(&b, &token).await, 401, "disabled: {disabled}");
        assert_eq!(me(&a, &token).await, 401, "disabled: {disabled}");
    }
    // The enable reached b at once too: a new session works on both.
    let fresh = a.login("kim", confab_e2e::chat::PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(&b, &fresh).await, 200);
    assert_eq!(me(&a, &fresh).await, 200);
}

async fn the_rate_limit_bucket_is_shared_by_the_instances(backend: Backend) {
    let a = spawn_app_with_redis(backend, &[("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "6")]);
    let b = a.sibling(&[]);
    let token = a.user("ada").await;
    // Six requests in all, alternating: the bucket holds six.
    for i in 0..6 {
        let app = if i % 2 == 0 { &a } else { &b };
        let res = app.get_auth("/api/v1/users/me", &token).await;
        assert_eq!(res.status(), 200, "request {i}");
        let remaining = res.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            remaining.contains(&format!("r={}", 5 - i)),
            "request {i}: {remaining}"
        );
    }
    for app in [&a, &b] {
        let res = app.get_auth("/api/v1/users/me", &token).await;
        assert!(res.headers().contains_key("retry-after"));
        error_body(res, 429, "RATE_LIMITED").await;
    }
}

/// 100 requests of one user at once, half on each instance, against a
/// bucket of 60 a minute: each worker's admissions go to Redis in groups,
/// and each in a group is charged on the bucket as the ones before it
/// left it, so no more are let through than the bucket holds plus what it
/// refilled (one a second) while the burst lasted; every other one is a
/// 429.
async fn a_hundred_requests_at_once_are_charged_one_by_one_to_the_shared_bucket(backend: Backend) {
    let a = spawn_app_with_redis(backend, &[("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "60")]);
    let b = a.sibling(&[]);
    let token = a.user("ada").await;
    let began = Instant::now();
    let statuses = futures_util::future::join_all((0..100).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        me(app, &token)
    }))
    .await;
    let refill = began.elapsed().as_secs() + 1;
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(allowed + refused, 100, "{statuses:?}");
    assert!(
        allowed >= 60 && u64::try_from(allowed).unwrap() <= 60 + refill,
        "{allowed} allowed in {refill} s"
    );
}

async fn a_rename_on_one_instance_is_seen_at_once_on_the_other(backend: Backend) {
    let llm = FakeLlm::start();
    let prefix = format!("confab-e2e:{}:", uuid::Uuid::new_v4());
    let url = redis_url();
    let a = spawn_chat(
        backend,
        &llm,
        &[
            ("REDIS_URL", url.as_str()),
            ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
        ],
    );
    let b = a.sibling(&[]);
    let token = a.user("ada").await;
    let (id, _) = a.chat(&token, "Hello there").await;
    // B reads both, so both are cached (under the current versions).
    let path = format!("/api/v1/conversations/{id}");
    let list = |app: &TestApp| {
        let token = token.clone();
        let app_url = app.url("/api/v1/conversations");
        let client = app.client.clone();
        async move {
            let res = client.get(app_url).bearer_auth(token).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<serde_json::Value>().await.unwrap()
        }
    };
    let before = list(&b).await;
    let title_before = before["items"][0]["title"].clone();
    assert_eq!(b.conversation(&token, &id).await["title"], title_before);

    let renamed = a
        .call(
            Method::PATCH,
            &path,
            &token,
            Some(&json!({"title": "Renamed on A"})),
        )
        .await;
    assert_eq!(renamed.status(), 200);
    assert_eq!(b.conversation(&token, &id).await["title"], "Renamed on A");
    assert_eq!(list(&b).await["items"][0]["title"], "Renamed on A");
}

#[tokio::test]
async fn with_redis_down_limits_hold_per_instance_tokens_are_refused_and_readiness_says_so() {
    // Nothing listens on port 1: every Redis call fails at once.
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("CONFAB__REDIS__CONNECT_TIMEOUT_MS", "200"),
            ("CONFAB__RATE_LIMIT__ANONYMOUS_PER_MINUTE", "3"),
        ],
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    let body = error_body(ready, 503, "UNAVAILABLE").await;
    assert!(
        body["message"].as_str().unwrap().contains("redis"),
        "{body}"
    );
    // A token can't be checked against the blocklist: refused as
    // unavailable, never accepted unchecked. (It counts as anonymous for
    // the limits: it could not be verified.)
    let other = spawn_app_with(Backend::Sqlite, &[]);
    let token = other.user("ada").await;
    drop(other);
    let res = app.get_auth("/api/v1/users/me", &token).await;
    error_body(res, 503, "UNAVAILABLE").await;
    // The limits fall back to this instance's own buckets: two more
    // requests fill the anonymous bucket of three.
    for _ in 0..2 {
        let res = app
            .client
            .get(app.url("/api/v1/nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }
    let res = app
        .client
        .get(app.url("/api/v1/nope"))
        .send()
        .await
        .unwrap();
    error_body(res, 429, "RATE_LIMITED").await;
}

/// A Redis of the test's own, on a free port, that it can stop and start.
pub(crate) struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub(crate) fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (the Redis the machine runs) is needed for this test");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `/readyz` until it answers `status`, or fails after a deadline.
pub(crate) async fn readiness_becomes(app: &TestApp, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let res = app.client.get(app.url("/readyz")).send().await.unwrap();
        if res.status().as_u16() == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {} (wanted {status})",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl PrivateRedis {
    /// `redis-cli` on this Redis: its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (beside redis-server) is needed for this test");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// How many script calls it has run since its statistics were reset.
    fn script_calls(&self) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }
}

/// A cached list costs one Redis round trip: the admission script, which
/// also reads the list's cache version (no script of the cache's own).
#[tokio::test]
async fn a_cached_list_makes_one_redis_round_trip() {
    let redis = PrivateRedis::start();
    let url = redis.url();
    let llm = FakeLlm::start();
    let app = spawn_chat(Backend::Sqlite, &llm, &[("REDIS_URL", url.as_str())]);
    let token = app.user("ada").await;
    app.chat(&token, "Hello there").await;
    let list = || async {
        let res = app.get_auth("/api/v1/conversations", &token).await;
        assert_eq!(res.status(), 200);
        res.json::<serde_json::Value>().await.unwrap()
    };
    // Filled: the cache and this worker's rendered body.
    for _ in 0..3 {
        assert_eq!(list().await["items"].as_array().unwrap().len(), 1);
    }
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..5 {
        assert_eq!(list().await["items"].as_array().unwrap().len(), 1);
    }
    assert_eq!(redis.script_calls(), 5, "one script per list");
}

#[tokio::test]
async fn a_redis_restart_is_recovered_without_restarting_the_service() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let app = spawn_app_with(
        Backend::Sqlite,
        &[
            ("REDIS_URL", url.as_str()),
            ("CONFAB__REDIS__CONNECT_TIMEOUT_MS", "200"),
        ],
    );
    let token = app.user("ada").await;
    readiness_becomes(&app, 200).await;
    assert_eq!(me(&app, &token).await, 200);

    redis.stop();
    readiness_becomes(&app, 503).await;
    error_body(
        app.get_auth("/api/v1/users/me", &token).await,
        503,
        "UNAVAILABLE",
    )
    .await;

    redis.restart();
    readiness_becomes(&app, 200).await;
    assert_eq!(me(&app, &token).await, 200);
    // The blocklist works again: a logout now holds.
    let res = app
        .call(Method::POST, "/api/v1/auth/logout", &token, None)
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(me(&app, &token).await, 401);
}

/// Two instances with a fake model, sharing one database, Redis and key
/// prefix; and the model.
fn chat_pair(backend: Backend, llm: &FakeLlm) -> (TestApp, TestApp) {
    let prefix = format!("confab-e2e:{}:", uuid::Uuid::new_v4());
    let url = redis_url();
    let a = spawn_chat(
        backend,
        llm,
        &[
            ("REDIS_URL", url.as_str()),
            ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
        ],
    );
    let b = a.sibling(&[]);
    (a, b)
}

async fn a_stream_started_on_one_instance_resumes_on_the_other(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("one".into()),
        Step::Text(" two".into()),
        Step::Hold,
        Step::Text(" three".into()),
        Step::Text(" four".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let (a, b) = chat_pair(backend, &llm);
    let token = a.user("ada").await;
    let res = a
        .send_message("/api/v1/conversations", &token, &message_body("count"))
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let mut first_part = reader.until(is_append).await;
    first_part.extend(reader.until(is_append).await);
    let id = conversation_of(&first_part);
    let resume_token = first_part[1].json()["token"].as_str().unwrap().to_owned();
    let last_id = first_part.last().unwrap().id.clone().unwrap();
    // The connection to A drops; the client reconnects, through the load
    // balancer, to B.
    drop(reader);
    let res = b
        .client
        .get(b.url(&format!("/api/v1/conversations/{id}/stream")))
        .bearer_auth(&token)
        .header("x-resume-token", &resume_token)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut resumed = SseReader::new(res);
    llm.release();
    let rest = resumed.rest().await;
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    let mut all = first_part.clone();
    all.extend(rest);
    let ids: Vec<String> = all.iter().map(|e| e.id.clone().unwrap()).collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no duplicate: {ids:?}");
    let rebuilt = replay(&all);
    assert_eq!(
        rebuilt["message"]["content"]["parts"][0], "one two three four",
        "no gap"
    );
    let c = b.conversation(&token, &id).await;
    assert_eq!(rebuilt["message"], c["messages"][1]);
}

/// A client that has an answer's `[DONE]` may send its next message at
/// once, to either instance: the answer's generation is closed in Redis
/// before `[DONE]` reaches any reader. The close has work to wait for
/// before its own call: in even rounds the answer, read only where it
/// runs, kept more events than one call carries, which go to Redis through
/// the senders first; in odd rounds the other instance follows it, so its
/// events go to Redis as they come. A close that let its readers have
/// `[DONE]` before that left the next send's log open, to refuse it (409).
async fn the_next_send_after_done_is_never_busy_on_either_instance(backend: Backend) {
    const ROUNDS: usize = 12;
    let llm = FakeLlm::start();
    let (a, b) = chat_pair(backend, &llm);
    let token = a.user("ada").await;
    let mut id: Option<String> = None;
    // Each round's send goes to the instance whose reader has just had
    // the answer before's `[DONE]`.
    let mut next_on = &a;
    for round in 0..ROUNDS {
        let followed = round % 2 == 1;
        let mut steps = vec![Step::Text("one".into()), Step::Hold];
        let pieces = if followed { 20 } else { 1500 };
        steps.extend((0..pieces).map(|_| Step::Text(" x".into())));
        steps.extend([Step::Finish("stop"), Step::Done]);
        llm.push(Script::Stream(steps));
        let (runner, other) = if std::ptr::eq(next_on, &a) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let path = id.as_ref().map_or_else(
            || "/api/v1/conversations".to_owned(),
            |id| format!("/api/v1/conversations/{id}/messages"),
        );
        let res = runner
            .send_message(&path, &token, &message_body(&format!("round {round}")))
            .await;
        assert_eq!(
            res.status(),
            200,
            "round {round}: the send right after [DONE] was refused: {}",
            res.text().await.unwrap_or_default()
        );
        let mut own = SseReader::new(res);
        let head = own.until(is_append).await;
        let conversation = conversation_of(&head);
        id.get_or_insert(conversation.clone());
        let is_done = |e: &confab_e2e::chat::SseEvent| e.data == "[DONE]";
        if followed {
            // The other instance follows the answer: once it has the
            // first delta, Redis has it, so the runner shares the rest.
            let resume_token = head[1].json()["token"].as_str().unwrap().to_owned();
            let res = other
                .resume_stream(
                    &format!("/api/v1/conversations/{conversation}/stream"),
                    &token,
                    &resume_token,
                    None,
                )
                .await;
            assert_eq!(res.status(), 200, "round {round}");
            let mut follower = SseReader::new(res);
            follower.until(is_append).await;
            llm.release();
            follower.until(is_done).await;
            next_on = other;
        } else {
            llm.release();
            own.until(is_done).await;
            next_on = runner;
        }
        // The next round's send goes out now, before the readers' end.
    }
    let c = a.conversation(&token, id.as_ref().unwrap()).await;
    assert_eq!(
        c["messages"].as_array().unwrap().len(),
        2 * ROUNDS,
        "every round stored its question and its answer: {c}"
    );
}

/// The generation limit is shared by the instances, and is taken while a
/// send opens its log: a refused new conversation is not stored, and a
/// refused send in an existing one leaves the stream of the answer before
/// it readable from either instance.
async fn a_send_over_the_shared_generation_limit_is_refused_and_leaves_the_last_stream(
    backend: Backend,
) {
    let llm = FakeLlm::start();
    let a = spawn_chat_with_redis(backend, &llm, &[("CONFAB__GENERATION__PER_MINUTE", "1")]);
    let b = a.sibling(&[]);
    let token = a.user("ada").await;
    let res = a
        .send_message("/api/v1/conversations", &token, &message_body("count"))
        .await;
    assert_eq!(res.status(), 200);
    let first = SseReader::new(res).rest().await;
    assert_eq!(first.last().unwrap().data, "[DONE]");
    let id = conversation_of(&first);
    let resume_token = first[1].json()["token"].as_str().unwrap().to_owned();
    // The one generation of the minute is spent, on every instance.
    for app in [&a, &b] {
        let res = app
            .send_message("/api/v1/conversations", &token, &message_body("again"))
            .await;
        error_body(res, 429, "RATE_LIMITED").await;
        let res = app
            .send_message(
                &format!("/api/v1/conversations/{id}/messages"),
                &token,
                &message_body("more"),
            )
            .await;
        error_body(res, 429, "RATE_LIMITED").await;
    }
    let list: serde_json::Value = b
        .get_auth("/api/v1/conversations", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "{list}");
    // The answer before the refusals still streams, whole, from either.
    for app in [&a, &b] {
        let res = app
            .resume_stream(
                &format!("/api/v1/conversations/{id}/stream"),
                &token,
                &resume_token,
                None,
            )
            .await;
        assert_eq!(res.status(), 200);
        let again = SseReader::new(res).rest().await;
        assert_eq!(replay(&again), replay(&first));
        assert_eq!(again.last().unwrap().data, "[DONE]");
    }
    assert_eq!(
        b.conversation(&token, &id).await["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

async fn a_stop_sent_to_one_instance_stops_the_generation_on_the_other(backend: Backend) {
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("partial".into()),
        Step::Hold,
        Step::Text(" never".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let (a, b) = chat_pair(backend, &llm);
    let token = a.user("ada").await;
    let res = a
        .send_message("/api/v1/conversations", &token, &message_body("go"))
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let seen = reader.until(is_append).await;
    let id = conversation_of(&seen);
    let path = format!("/api/v1/conversations/{id}/stream");
    assert_eq!(
        b.call(Method::DELETE, &path, &token, None).await.status(),
        204
    );
    // A's stream ends, and the answer is saved as stopped.
    let rest = reader.rest().await;
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    let answer = &b.conversation(&token, &id).await["messages"][1];
    assert_eq!(answer["status"], "finished_partial_completion", "{answer}");
    assert_eq!(answer["content"]["parts"][0], "partial");
}

/// The shared stream log as another instance holds it, on `app`'s Redis
/// and key prefix.
fn log_of_another_instance(app: &TestApp, lease: Duration) -> RedisStreamLog {
    let pool = RedisPool::new(&RedisSettings {
        url: SecretString::from(redis_url()),
        cluster: confab_e2e::redis_cluster(),
        connections: 2,
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_secs(5),
        key_prefix: app.redis_key_prefix().expect("a Redis key prefix"),
    })
    .unwrap();
    RedisStreamLog::new(
        pool,
        RedisStreamLogOptions {
            retention: Duration::from_secs(60),
            max_events_per_log: 100,
            lease,
            poll_interval: Duration::from_millis(50),
        },
    )
}

#[tokio::test]
async fn an_answer_whose_instance_died_is_closed_once_its_lease_runs_out() {
    let app = spawn_app_with_redis(
        Backend::Postgres,
        &[("CONFAB__GENERATION__ORPHAN_SWEEP_SECS", "1")],
    );
    // Another instance runs an answer: it holds the conversation's log
    // (renewing the lease while it awaits its stop signal)...
    let store = app.db.store().await;
    let conversation = crate::recovery::orphan(&store).await;
    let other = log_of_another_instance(&app, Duration::from_millis(1500));
    let message = MessageId::parse("a1").unwrap();
    let mut signal = other.open(conversation, &message).await.unwrap();
    let alive = tokio::spawn(async move { signal.stopped().await });
    // ...so sweeps leave it alone, however many run.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let status = |store: confab_sql::SqlStore| async move {
        confab_e2e::all_messages(&store, conversation).await[0].clone()
    };
    assert_eq!(
        status(store.clone()).await.status,
        MessageStatus::InProgress
    );
    // The instance dies (no close, no more renewals): once the lease has
    // run out, a sweep closes the answer as failed with its saved text.
    alive.abort();
    drop(other);
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        let answer = status(store.clone()).await;
        if answer.status != MessageStatus::InProgress {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the dead instance's answer stayed in progress"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.status, MessageStatus::Failed);
    assert_eq!(answer.content.parts(), ["saved before the crash"]);
}
