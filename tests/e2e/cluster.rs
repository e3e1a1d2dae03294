//! Two `confab serve` processes on one PostgreSQL and one Redis (their own
//! key prefix), driven over HTTP as a load balancer would spread one
//! client's requests: the service behaves as one, and an instance killed
//! with SIGKILL mid-answer loses nothing it had saved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_domain::ConversationId;
use confab_e2e::chat::{
    SseReader, assert_closed_as_saved, conversation_of, held_between, is_append, message_body,
    replay,
};
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_e2e::{TestApp, error_body, redis_url, spawn_process};
use confab_sql::testing::TestDatabase;
use reqwest::Method;
use serde_json::json;

/// Instances A and B of one service, and the model they both call.
struct Cluster {
    a: TestApp,
    b: TestApp,
}

async fn cluster(llm: &FakeLlm, extra: &[(&str, &str)]) -> Cluster {
    cluster_on(&redis_url(), llm, extra).await
}

async fn cluster_on(url: &str, llm: &FakeLlm, extra: &[(&str, &str)]) -> Cluster {
    let db = Arc::new(TestDatabase::postgres());
    let prefix = format!("confab-cluster:{}:", uuid::Uuid::new_v4());
    let base = llm.base_url();
    let mut vars = vec![
        ("REDIS_URL", url),
        ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
        ("CONFAB_LLM_PROVIDER", "openai"),
        ("CONFAB_LLM_BASE_URL", base.as_str()),
        ("CONFAB_LLM_MODEL", "fake-model"),
        ("CONFAB__LLM__TITLE_GENERATION", "false"),
        ("CONFAB__LLM__IDLE_TIMEOUT_MS", "20000"),
        ("CONFAB__GENERATION__FLUSH_INTERVAL_MS", "50"),
        ("CONFAB__GENERATION__PER_MINUTE", "100000"),
    ];
    vars.extend_from_slice(extra);
    // A migrates first; B then finds the schema in place.
    let a = spawn_process(Arc::clone(&db), &vars).await;
    let b = spawn_process(db, &vars).await;
    Cluster { a, b }
}

#[tokio::test]
async fn two_processes_behave_as_one_service() {
    let llm = FakeLlm::start();
    let c = cluster(&llm, &[("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "40")]).await;
    let token = c.a.user("ada").await;

    // A stream started on A resumes on B from Last-Event-ID.
    llm.push(held_between("partial", " answer"));
    let res =
        c.a.send_message("/api/v1/conversations", &token, &message_body("hi"))
            .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let first = reader.until(is_append).await;
    let id = conversation_of(&first);
    let resume_token = first[1].json()["token"].as_str().unwrap().to_owned();
    let last_id = first.last().unwrap().id.clone().unwrap();
    drop(reader);
    let res =
        c.b.client
            .get(c.b.url(&format!("/api/v1/conversations/{id}/stream")))
            .bearer_auth(&token)
            .header("x-resume-token", &resume_token)
            .header("last-event-id", &last_id)
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 200);
    let mut resumed = SseReader::new(res);
    llm.release();
    let mut all = first.clone();
    all.extend(resumed.rest().await);
    let ids: Vec<&String> = all.iter().map(|e| e.id.as_ref().unwrap()).collect();
    let unique: std::collections::HashSet<&&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no duplicate: {ids:?}");
    let rebuilt = replay(&all);
    assert_eq!(rebuilt["message"]["content"]["parts"][0], "partial answer");
    assert_eq!(
        rebuilt["message"],
        c.b.conversation(&token, &id).await["messages"][1]
    );

    // A stop sent to B stops the generation running on A.
    llm.push(held_between("partial", " answer"));
    let res =
        c.a.send_message("/api/v1/conversations", &token, &message_body("again"))
            .await;
    let mut reader = SseReader::new(res);
    let seen = reader.until(is_append).await;
    let stopped = conversation_of(&seen);
    let path = format!("/api/v1/conversations/{stopped}/stream");
    assert_eq!(
        c.b.call(Method::DELETE, &path, &token, None).await.status(),
        204
    );
    assert_eq!(reader.rest().await.last().unwrap().data, "[DONE]");
    let answer = &c.a.conversation(&token, &stopped).await["messages"][1];
    assert_eq!(answer["status"], "finished_partial_completion", "{answer}");
    assert_eq!(answer["content"]["parts"][0], "partial");

    // A rename on A is seen at once on B (B cached the history first).
    let path = format!("/api/v1/conversations/{id}");
    let title = c.b.conversation(&token, &id).await["title"].clone();
    assert_ne!(title, "Renamed");
    let res =
        c.a.call(
            Method::PATCH,
            &path,
            &token,
            Some(&json!({"title": "Renamed"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(c.b.conversation(&token, &id).await["title"], "Renamed");

    // An idempotent message send to A, retried on B: one message, one call
    // to the model; B re-attaches to A's answer.
    let calls = llm.requests().len();
    llm.push(held_between("partial", " answer"));
    let body = message_body("once");
    let keyed = |app: &TestApp| {
        app.client
            .post(app.url("/api/v1/conversations"))
            .bearer_auth(&token)
            .header("idempotency-key", "cluster-send")
            .json(&body)
            .send()
    };
    let mut first = SseReader::new(keyed(&c.a).await.unwrap());
    let once = conversation_of(&first.until(is_append).await);
    let retry = keyed(&c.b).await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let mut retry = SseReader::new(retry);
    llm.release();
    first.rest().await;
    let again = retry.rest().await;
    assert_eq!(
        replay(&again)["message"]["content"]["parts"][0],
        "partial answer"
    );
    assert_eq!(llm.requests().len(), calls + 1, "one call to the model");
    let messages = &c.b.conversation(&token, &once).await["messages"];
    assert_eq!(
        messages.as_array().unwrap().len(),
        2,
        "one message, one answer"
    );

    // One rate-limit bucket for the user across A and B: spend what is
    // left, alternating, then both refuse.
    let mut spent = 0;
    loop {
        let app = if spent % 2 == 0 { &c.a } else { &c.b };
        let res = app.get_auth("/api/v1/users/me", &token).await;
        if res.status() == 429 {
            break;
        }
        assert_eq!(res.status(), 200);
        spent += 1;
        assert!(spent <= 40, "the bucket never emptied");
    }
    for app in [&c.a, &c.b] {
        error_body(
            app.get_auth("/api/v1/users/me", &token).await,
            429,
            "RATE_LIMITED",
        )
        .await;
    }
}

#[tokio::test]
async fn an_instance_killed_mid_answer_leaves_it_failed_with_its_text_after_the_lease() {
    let llm = FakeLlm::start();
    let mut c = cluster(
        &llm,
        &[
            ("CONFAB__REDIS__STREAM_LEASE_MS", "1500"),
            ("CONFAB__GENERATION__ORPHAN_SWEEP_SECS", "1"),
        ],
    )
    .await;
    let token = c.a.user("ada").await;
    llm.push(held_between("partial", " answer"));
    let res =
        c.a.send_message("/api/v1/conversations", &token, &message_body("hi"))
            .await;
    let mut reader = SseReader::new(res);
    let id = conversation_of(&reader.until(is_append).await);
    // Wait for A to save the text it has (every 50 ms).
    let store = c.b.db.store().await;
    let conversation: ConversationId = id.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while confab_e2e::all_messages(&store, conversation).await[1]
        .content
        .parts()
        != ["partial"]
    {
        assert!(Instant::now() < deadline, "A never saved the partial text");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B's sweeps leave it alone while A holds its lease.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        c.b.conversation(&token, &id).await["messages"][1]["status"],
        "in_progress"
    );
    c.a.kill();
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = c.b.conversation(&token, &id).await["messages"][1].clone();
        if answer["status"] != "in_progress" {
            break answer;
        }
        assert!(Instant::now() < deadline, "the answer stayed in progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer["status"], "failed", "{answer}");
    assert_eq!(answer["content"]["parts"][0], "partial");
    // The conversation can answer again, on B.
    llm.push(Script::reply(&["fine"]));
    let res =
        c.b.send_message(
            &format!("/api/v1/conversations/{id}/messages"),
            &token,
            &message_body("still there?"),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        SseReader::new(res).rest().await.last().unwrap().data,
        "[DONE]"
    );
}

/// A resume that arrives after the dead instance's lease ran out (its
/// log is gone from Redis, the sweep has not run) still gets the answer
/// closed with its saved text, never a 404 that leaves it in progress.
#[tokio::test]
async fn a_resume_after_a_killed_instances_lease_ran_out_ends_the_answer_as_saved() {
    let llm = FakeLlm::start();
    let mut c = cluster(
        &llm,
        &[
            ("CONFAB__REDIS__STREAM_LEASE_MS", "1500"),
            ("CONFAB__GENERATION__ORPHAN_SWEEP_SECS", "3600"),
        ],
    )
    .await;
    let token = c.a.user("ada").await;
    llm.push(held_between("partial", " answer"));
    let res =
        c.a.send_message("/api/v1/conversations", &token, &message_body("hi"))
            .await;
    let mut reader = SseReader::new(res);
    let first = reader.until(is_append).await;
    let id = conversation_of(&first);
    let resume_token = first[1].json()["token"].as_str().unwrap().to_owned();
    let last_id = first.last().unwrap().id.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.b.conversation(&token, &id).await["messages"][1]["content"]["parts"][0] != "partial" {
        assert!(Instant::now() < deadline, "A never saved the partial text");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.a.kill();
    drop(reader);
    // The lease runs out: the answer's log leaves Redis.
    let meta = format!("{id}}}:meta");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c
        .b
        .redis_keys_containing(std::slice::from_ref(&meta))
        .await
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the dead instance's log stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.b.conversation(&token, &id).await["messages"][1]["status"],
        "in_progress",
        "no sweep has closed it"
    );
    let path = format!("/api/v1/conversations/{id}/stream");
    let res =
        c.b.resume_stream(&path, &token, &resume_token, Some(&last_id))
            .await;
    assert_eq!(res.status(), 200);
    let rest = SseReader::new(res).rest().await;
    assert_closed_as_saved(&first, &rest, "partial");
    let answer = c.b.conversation(&token, &id).await["messages"][1].clone();
    assert_eq!(answer["status"], "failed", "{answer}");
    assert_eq!(answer["content"]["parts"][0], "partial");
    // Closed now: a further resume finds no stream.
    let again =
        c.b.resume_stream(&path, &token, &resume_token, Some(&last_id))
            .await;
    assert_eq!(again.status(), 404);
}

#[tokio::test]
async fn redis_stopped_and_restarted_mid_test_follows_the_policy_on_both() {
    let mut redis = crate::redis::PrivateRedis::start();
    let llm = FakeLlm::start();
    let c = cluster_on(
        &redis.url(),
        &llm,
        &[("CONFAB__REDIS__CONNECT_TIMEOUT_MS", "200")],
    )
    .await;
    let token = c.a.user("ada").await;
    for app in [&c.a, &c.b] {
        crate::redis::readiness_becomes(app, 200).await;
    }
    redis.stop();
    for app in [&c.a, &c.b] {
        crate::redis::readiness_becomes(app, 503).await;
        // A token can't be checked against the shared blocklist: refused,
        // never accepted unchecked; a send can't claim its stream.
        error_body(
            app.get_auth("/api/v1/users/me", &token).await,
            503,
            "UNAVAILABLE",
        )
        .await;
    }
    redis.restart();
    for app in [&c.a, &c.b] {
        crate::redis::readiness_becomes(app, 200).await;
        assert_eq!(app.get_auth("/api/v1/users/me", &token).await.status(), 200);
    }
    // Chatting works again, started on B and read on A.
    llm.push(Script::reply(&["back"]));
    let (id, events) = c.b.chat(&token, "are you back?").await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(
        c.a.conversation(&token, &id).await["messages"][1]["content"]["parts"][0],
        "back"
    );
}
