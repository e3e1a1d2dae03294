//! Rolling restarts (issue 18): three `confab serve` processes on one
//! PostgreSQL and one Redis behind a real HAProxy that health-checks
//! `/readyz`, under a steady load of sends and reads from several users.
//! Each instance in turn gets SIGTERM and is started again on its
//! address: `/readyz` turns 503 first, so the balancer drains it while it
//! still serves (`server.drain_secs`); answers running on it complete;
//! the load counts zero failed requests, and every conversation holds
//! each question once with its whole answer. An instance killed with
//! SIGKILL mid-answer: a resume through the balancer lands on another
//! instance and the answer ends closed with the text it had saved.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use confab_e2e::chat::{
    SseReader, assert_closed_as_saved, conversation_of, held_between, is_append, message_body,
    sign_up,
};
use confab_e2e::fake_llm::FakeLlm;
use confab_e2e::haproxy::HaProxy;
use confab_e2e::load::{BURST_LIMITS, DELTAS, answer_paced, full_answer, send_and_read};
use confab_e2e::{TestApp, three_behind_a_balancer};
use serde_json::Value;
use tokio::time::Instant;

/// How long an instance answers 503 on `/readyz` before it stops
/// listening: eight of HAProxy's 250 ms checks, two of which take it out.
const DRAIN: &str = "2";

/// An answer's 20 deltas, this far apart: about 3 s, so an answer that
/// starts before SIGTERM runs on past the drain.
const SPACING: Duration = Duration::from_millis(150);

/// Three instances of one service, and HAProxy in front of them.
struct Balanced {
    instances: Vec<TestApp>,
    lb: HaProxy,
}

async fn balanced(llm: &FakeLlm, extra: &[(&str, &str)]) -> Balanced {
    let mut vars = vec![
        ("CONFAB__SERVER__DRAIN_SECS", DRAIN),
        ("CONFAB__SERVER__SHUTDOWN_TIMEOUT_SECS", "20"),
        // Every user logs in from this one address.
        ("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "1000"),
    ];
    vars.extend(BURST_LIMITS);
    vars.extend_from_slice(extra);
    let instances = three_behind_a_balancer("confab-rolling", &llm.base_url(), &vars).await;
    let addresses: Vec<String> = instances.iter().map(|i| i.address.clone()).collect();
    let lb = HaProxy::start(&addresses).await;
    Balanced { instances, lb }
}

/// What one user of the load did.
#[derive(Default)]
struct Tally {
    /// Questions whose answer streamed complete, in order.
    asked: Vec<String>,
    /// The conversation they went to.
    conversation: Option<String>,
    /// Requests made.
    requests: usize,
    /// Every request that failed, and how.
    failures: Vec<String>,
}

/// One user pressing send, reading the whole answer, then reading the
/// list and the conversation, over and over until `stop`; a failure is
/// recorded, never retried.
async fn user(lb_url: String, token: String, name: String, stop: Arc<AtomicBool>) -> Tally {
    let client = reqwest::Client::new();
    let mut tally = Tally::default();
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        let question = format!("{name} question {n}");
        n += 1;
        let path = match &tally.conversation {
            None => "/api/v1/conversations".to_owned(),
            Some(id) => format!("/api/v1/conversations/{id}/messages"),
        };
        let request = client
            .post(format!("{lb_url}{path}"))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .json(&message_body(&question));
        tally.requests += 1;
        let sent = send_and_read(request, Instant::now() + Duration::from_secs(60)).await;
        if let Some(problem) = sent.problem() {
            tally.failures.push(format!("send {question:?}: {problem}"));
            // Whether it was stored is unknown: stop this user here.
            return tally;
        }
        if tally.conversation.is_none() {
            tally.conversation = sent.conversation().map(|c| c.to_string());
        }
        tally.asked.push(question);
        let id = tally.conversation.clone().unwrap_or_default();
        for path in [
            "/api/v1/conversations".to_owned(),
            format!("/api/v1/conversations/{id}"),
        ] {
            tally.requests += 1;
            match client
                .get(format!("{lb_url}{path}"))
                .bearer_auth(&token)
                .send()
                .await
            {
                Ok(res) if res.status() == 200 => {
                    if let Err(e) = res.bytes().await {
                        tally.failures.push(format!("GET {path}: body: {e}"));
                    }
                }
                Ok(res) => tally
                    .failures
                    .push(format!("GET {path}: HTTP {}", res.status())),
                Err(e) => tally.failures.push(format!("GET {path}: {e}")),
            }
        }
    }
    tally
}

/// Waits until `app`, sent SIGTERM, has handled it: its `/readyz` is 503.
/// Returns that response.
pub(crate) async fn not_ready(app: &TestApp) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = app.client.get(app.url("/readyz")).send().await.unwrap();
        if res.status() == 503 {
            return res;
        }
        assert!(
            Instant::now() < deadline,
            "{} still ready after SIGTERM",
            app.address
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `app` answers `/readyz` 200 itself, then for HAProxy's
/// two good checks that put it back in rotation.
async fn back_in_rotation(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = app.client.get(app.url("/readyz")).send().await
            && res.status() == 200
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became ready",
            app.address
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

#[tokio::test]
async fn rolling_restarts_under_load_fail_no_request_and_lose_no_message() {
    let llm = FakeLlm::start();
    llm.set_default(answer_paced(SPACING));
    let mut b = balanced(&llm, &[]).await;
    let signup = reqwest::Client::new();
    let mut users = Vec::new();
    for k in 0..8 {
        let name = format!("roller{k}");
        users.push((sign_up(&signup, &b.lb.address, &name).await, name));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = users
        .iter()
        .map(|(token, name)| {
            tokio::spawn(user(
                b.lb.address.clone(),
                token.clone(),
                name.clone(),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let (watcher_token, _) = users[0].clone();
    tokio::time::sleep(Duration::from_secs(2)).await;

    for i in 0..b.instances.len() {
        let app = &mut b.instances[i];
        // An answer started on this instance just before its SIGTERM: it
        // must run to its end, past the drain.
        let direct = app
            .client
            .post(app.url("/api/v1/conversations"))
            .bearer_auth(&watcher_token)
            .header("accept", "text/event-stream")
            .json(&message_body(&format!("straddling restart {i}")));
        let res = direct.send().await.unwrap();
        assert_eq!(res.status(), 200);
        let mut straddling = SseReader::new(res);
        let mut seen = straddling.until(is_append).await;

        app.terminate();
        // Draining (once the signal is handled): not ready, still alive
        // and serving.
        let ready = not_ready(app).await;
        let body: Value = ready.json().await.unwrap();
        assert_eq!(body["error"]["message"], "not ready: shutting down");
        let alive = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(alive.status(), 200);
        assert_eq!(
            alive.headers()["connection"],
            "close",
            "a draining instance closes the connections it answers on"
        );

        seen.extend(straddling.rest().await);
        assert_eq!(
            seen.iter().filter(|e| is_append(e)).count(),
            DELTAS,
            "the straddling answer on {i} streamed every delta"
        );
        assert_eq!(seen.last().unwrap().data, "[DONE]");
        assert_eq!(
            seen[seen.len() - 2].kind().as_deref(),
            Some("message_stream_complete"),
            "the straddling answer on {i} completed"
        );
        let status = app.exited().await;
        assert!(status.success(), "instance {i} exited {status}");
        app.restart().await;
        back_in_rotation(&b.instances[i]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);

    let mut failures = Vec::new();
    let mut requests = 0;
    let mut tallies = Vec::new();
    for task in load {
        let tally = task.await.unwrap();
        requests += tally.requests;
        failures.extend(tally.failures.iter().cloned());
        tallies.push(tally);
    }
    assert!(
        failures.is_empty(),
        "{} of {requests} requests failed: {failures:#?}",
        failures.len()
    );
    // Nothing lost, nothing twice: each conversation holds each question
    // once, in order, each with the whole answer.
    let reader = &b.instances[0];
    for ((token, name), tally) in users.iter().zip(&tallies) {
        assert!(
            tally.asked.len() >= 3,
            "{name} kept sending through the restarts: {}",
            tally.asked.len()
        );
        let id = tally.conversation.as_deref().unwrap();
        let page = reader.conversation(token, id).await;
        let messages = page["messages"].as_array().unwrap();
        let questions: Vec<&str> = messages
            .iter()
            .filter(|m| m["author"]["role"] == "user")
            .map(|m| m["content"]["parts"][0].as_str().unwrap())
            .collect();
        assert_eq!(questions, tally.asked, "{name}'s questions, once each");
        let answers: Vec<&Value> = messages
            .iter()
            .filter(|m| m["author"]["role"] == "assistant")
            .collect();
        assert_eq!(answers.len(), tally.asked.len(), "{name}: one answer each");
        for answer in answers {
            assert_eq!(answer["status"], "finished_successfully", "{answer}");
            assert_eq!(answer["content"]["parts"][0], full_answer());
        }
    }
}

#[tokio::test]
async fn an_instance_killed_mid_answer_is_resumed_through_the_balancer_to_its_saved_text() {
    let llm = FakeLlm::start();
    // A short lease; sweeps so rare that only the resumed stream can close
    // the answer in this test.
    let mut b = balanced(
        &llm,
        &[
            ("CONFAB__REDIS__STREAM_LEASE_MS", "1500"),
            ("CONFAB__GENERATION__ORPHAN_SWEEP_SECS", "3600"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let token = sign_up(&client, &b.lb.address, "killed").await;
    // The answer runs on instance 0 (sent to it directly).
    llm.push(held_between("partial", " answer"));
    let doomed = &b.instances[0];
    let res = doomed
        .send_message("/api/v1/conversations", &token, &message_body("hello"))
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let first = reader.until(is_append).await;
    let id = conversation_of(&first);
    let resume_token = first[1].json()["token"].as_str().unwrap().to_owned();
    let last_id = first.last().unwrap().id.clone().unwrap();
    // Its text is saved (every 50 ms) before the kill.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = b.instances[1].conversation(&token, &id).await;
        if page["messages"][1]["content"]["parts"][0] == "partial" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the partial text was never saved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.instances[0].kill();
    drop(reader);

    // The client resumes through the balancer: it lands on a live
    // instance, and the stream ends, closed.
    let res = client
        .get(b.lb.url(&format!("/api/v1/conversations/{id}/stream")))
        .bearer_auth(&token)
        .header("x-resume-token", &resume_token)
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rest = SseReader::new(res).rest().await;
    assert!(
        !rest
            .iter()
            .any(|e| e.data.contains("\"partial\"") && is_append(e)),
        "nothing before the Last-Event-ID again: {rest:?}"
    );
    // Once the dead instance's lease ran out, the stream ends with the
    // answer as the instance had saved it, closed.
    assert_closed_as_saved(&first, &rest, "partial");
    // The conversation says the same at once, on every instance.
    let page = client
        .get(b.lb.url(&format!("/api/v1/conversations/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page: Value = page.json().await.unwrap();
    let answer = &page["messages"][1];
    assert_eq!(answer["status"], "failed", "{answer}");
    assert_eq!(answer["content"]["parts"][0], "partial");
}
