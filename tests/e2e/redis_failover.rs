//! Two `confab serve` processes on PostgreSQL and a Redis Cluster of their
//! own (three primaries, a replica each: scripts/redis-cluster.sh on ports
//! 7200–7205). Under a steady load of sends on both, the primary that
//! holds the first user's keys is killed with SIGKILL; its replica takes
//! over. The load costs at most what docs/operations.md ("Redis Cluster")
//! promises while a primary fails over: a request refused with 503
//! `UNAVAILABLE`, an answer ended `failed` with the text it had saved (an
//! `UNAVAILABLE` error event, then `[DONE]`), or a stream interrupted that
//! the client resumes from its last event id. Never a wrong answer: no
//! other status, no stream that just stops, no stored message that differs
//! from its stream, no message twice. Once the cluster serves every slot
//! again, every send on both instances succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use confab_e2e::chat::{SseEvent, SseReader, conversation_of, message_body, replay};
use confab_e2e::fake_llm::{FakeLlm, Script};
use confab_e2e::redis_cluster::RedisCluster;
use confab_e2e::{TestApp, spawn_process};
use confab_sql::testing::TestDatabase;

/// The answer every send gets.
const PIECES: [&str; 5] = ["one ", "two ", "three ", "four ", "five"];
const USERS: usize = 6;

/// Streams interrupted and resumed, in all.
static RESUMED: AtomicUsize = AtomicUsize::new(0);

/// How one send ended.
#[derive(Debug)]
enum Outcome {
    /// The whole answer, in a conversation of its own.
    Complete(String),
    /// Ended `failed` with its saved text and an `UNAVAILABLE` error.
    Failed(String, String),
    /// Refused with 503 `UNAVAILABLE`.
    Refused,
}

/// One send on `app`, classified; panics on anything the failure policy
/// does not allow. A stream interrupted (an `UNAVAILABLE` error event that
/// says to resume) is resumed from its last event id, as a client does,
/// until it ends otherwise.
async fn send(app: &TestApp, token: &str, text: &str) -> Outcome {
    let res = app
        .send_message("/api/v1/conversations", token, &message_body(text))
        .await;
    let status = res.status().as_u16();
    if status == 503 {
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
        return Outcome::Refused;
    }
    if status != 200 {
        let body = res.text().await.unwrap_or_default();
        panic!("a send is answered or refused with 503, not {status}: {body}");
    }
    let mut events: Vec<SseEvent> = SseReader::new(res).rest().await;
    let id = conversation_of(&events);
    let resume_token = events
        .iter()
        .find(|e| e.kind().as_deref() == Some("resume_conversation_token"))
        .map(|e| e.json()["token"].as_str().unwrap().to_owned())
        .expect("a resume token");
    let error = loop {
        assert_eq!(
            events.last().map(|e| e.data.as_str()),
            Some("[DONE]"),
            "a stream ends with [DONE], never just stops: {events:?}"
        );
        let error = events
            .iter()
            .find(|e| e.kind().as_deref() == Some("error"))
            .map(SseEvent::json);
        let interrupted = error.as_ref().is_some_and(|e| {
            e["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Resume it from the last event id"))
        });
        if !interrupted {
            break error;
        }
        RESUMED.fetch_add(1, Ordering::Relaxed);
        let last = events.last().and_then(|e| e.id.clone());
        events.truncate(events.len() - 2);
        events.extend(resume(app, token, &id, &resume_token, last.as_deref()).await);
    };
    let rebuilt = replay(&events);
    let message = &rebuilt["message"];
    match error {
        None => {
            assert_eq!(message["status"], "finished_successfully", "{rebuilt}");
            assert_eq!(message["content"]["parts"][0], PIECES.concat());
            Outcome::Complete(id)
        }
        Some(error) => {
            assert_eq!(error["error"]["code"], "UNAVAILABLE", "{error}");
            assert_eq!(message["status"], "failed", "{rebuilt}");
            let saved = message["content"]["parts"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(PIECES.concat().starts_with(&saved), "{saved:?}");
            Outcome::Failed(id, saved)
        }
    }
}

/// The events after `last` of conversation `id`'s answer, resumed on
/// `app`: tried again while the service answers 503 (Redis failing over).
async fn resume(
    app: &TestApp,
    token: &str,
    id: &str,
    resume_token: &str,
    last: Option<&str>,
) -> Vec<SseEvent> {
    let path = format!("/api/v1/conversations/{id}/stream");
    for _ in 0..50 {
        let res = app.resume_stream(&path, token, resume_token, last).await;
        match res.status().as_u16() {
            200 => return SseReader::new(res).rest().await,
            503 => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("a resume is answered or refused with 503, not {other}"),
        }
    }
    panic!("the resume was refused for 10 s");
}

#[tokio::test]
async fn a_primary_killed_under_load_costs_at_most_the_failure_policy() {
    let redis = RedisCluster::start(7200);
    let llm = FakeLlm::start();
    llm.set_default(Script::paced(&PIECES, Duration::from_millis(20)));
    let db = Arc::new(TestDatabase::postgres());
    let prefix = format!("confab-failover:{}:", uuid::Uuid::new_v4());
    let (url, base) = (redis.url(), llm.base_url());
    let vars = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_CLUSTER", "true"),
        ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
        ("CONFAB_LLM_PROVIDER", "openai"),
        ("CONFAB_LLM_BASE_URL", base.as_str()),
        ("CONFAB_LLM_MODEL", "fake-model"),
        ("CONFAB__LLM__TITLE_GENERATION", "false"),
        ("CONFAB__GENERATION__FLUSH_INTERVAL_MS", "50"),
        ("CONFAB__GENERATION__PER_MINUTE", "100000"),
        ("CONFAB__RATE_LIMIT__USER_PER_MINUTE", "100000"),
        ("CONFAB__RATE_LIMIT__LOGIN_PER_MINUTE", "1000"),
    ];
    let a = Arc::new(spawn_process(Arc::clone(&db), &vars).await);
    let b = Arc::new(spawn_process(db, &vars).await);
    let mut tokens = Vec::new();
    for i in 0..USERS {
        tokens.push(a.user(&format!("failover{i}")).await);
    }
    let first_user = a.user_id(&tokens[0]).await;

    // The load: every user sends, one after the other, alternating
    // instances, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let (a, b, stop, token) = (
            Arc::clone(&a),
            Arc::clone(&b),
            Arc::clone(&stop),
            token.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let app = if (i + n) % 2 == 0 { &a } else { &b };
                outcomes.push(send(app, &token, &format!("send {n}")).await);
                n += 1;
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let port = redis.primary_of(&format!("{{{first_user}}}"));
    let killed = std::time::Instant::now();
    redis.kill(port);
    tokio::task::spawn_blocking({
        let redis = redis.clone();
        move || redis.wait_ok()
    })
    .await
    .unwrap();
    let failover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for task in load {
        outcomes.push(task.await.unwrap());
    }

    // Failed over: every send succeeds again, on both instances.
    for token in &tokens {
        for app in [&a, &b] {
            let after = send(app, token, "after the failover").await;
            assert!(matches!(after, Outcome::Complete(_)), "{after:?}");
        }
    }

    // What was stored is what was streamed, each exchange once.
    let (mut complete, mut failed, mut refused) = (0, 0, 0);
    for (token, outcomes) in tokens.iter().zip(&outcomes) {
        for outcome in outcomes {
            let (id, text, status) = match outcome {
                Outcome::Complete(id) => {
                    complete += 1;
                    (id, PIECES.concat(), "finished_successfully")
                }
                Outcome::Failed(id, saved) => {
                    failed += 1;
                    (id, saved.clone(), "failed")
                }
                Outcome::Refused => {
                    refused += 1;
                    continue;
                }
            };
            let stored = a.conversation(token, id).await;
            let messages = stored["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 2, "one exchange, once: {stored}");
            assert_eq!(messages[1]["status"], status, "{stored}");
            assert_eq!(messages[1]["content"]["parts"][0], text.as_str());
        }
    }
    eprintln!(
        "failed over in {failover:?}; sends meanwhile: {complete} complete, {failed} failed, \
         {refused} refused, {} streams resumed",
        RESUMED.load(Ordering::Relaxed)
    );
    assert!(complete > 0, "the load ran");

    redis.restart(port);
    redis.wait_ok();
}
