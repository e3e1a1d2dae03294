//! What a reader of a running answer sees when Redis goes away under it:
//! never a stream that just stops. An answer no other instance follows
//! keeps its events on its own instance until it ends, so it outlives the
//! outage whole; one followed from another instance hands each event to
//! Redis, and its readers hear of the failure.

use confab_e2e::TestApp;
use confab_e2e::chat::{SseEvent, SseReader, conversation_of, is_append, message_body, spawn_chat};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_sql::Backend;
use serde_json::Value;

use crate::redis::{PrivateRedis, readiness_becomes};

/// The model's answer: a part, a hold, a part, a hold, a part.
fn held_twice(llm: &FakeLlm) {
    llm.push(Script::Stream(vec![
        Step::Text("partial".into()),
        Step::Hold,
        Step::Text(" more".into()),
        Step::Hold,
        Step::Text(" after".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
}

/// The answer of conversation `id`, as `app` returns it.
async fn answer_of(app: &TestApp, token: &str, id: &str) -> Value {
    let conversation = app.conversation(token, id).await;
    conversation["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["author"]["role"] == "assistant")
        .unwrap_or_else(|| panic!("no answer in {conversation}"))
        .clone()
}

/// An answer running on an instance on a private Redis, held after its
/// first part, which its reader has read.
struct Running {
    redis: PrivateRedis,
    llm: FakeLlm,
    app: TestApp,
    token: String,
    reader: SseReader,
    /// The events up to the first part.
    first: Vec<SseEvent>,
    /// The conversation's id.
    id: String,
}

async fn running() -> Running {
    let redis = PrivateRedis::start();
    let url = redis.url();
    let llm = FakeLlm::start();
    held_twice(&llm);
    let app = spawn_chat(
        Backend::Sqlite,
        &llm,
        &[
            ("REDIS_URL", url.as_str()),
            ("CONFAB__REDIS__CONNECT_TIMEOUT_MS", "200"),
        ],
    );
    let token = app.user("ada").await;
    let res = app
        .send_message("/api/v1/conversations", &token, &message_body("hi"))
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let first = reader.until(is_append).await;
    let id = conversation_of(&first);
    Running {
        redis,
        llm,
        app,
        token,
        reader,
        first,
        id,
    }
}

#[tokio::test]
async fn an_answer_no_other_instance_follows_outlives_a_redis_outage_whole() {
    let Running {
        mut redis,
        llm,
        app,
        token,
        mut reader,
        first: _,
        id,
    } = running().await;

    // Its events wait on this instance: Redis going away costs its reader
    // nothing, and the answer ends as the model ended it.
    redis.stop();
    llm.release();
    llm.release();
    let rest = reader.rest().await;
    assert!(
        rest.iter()
            .all(|event| event.kind().as_deref() != Some("error")),
        "{rest:?}"
    );
    assert_eq!(rest.last().unwrap().data, "[DONE]");
    redis.restart();
    readiness_becomes(&app, 200).await;
    let answer = answer_of(&app, &token, &id).await;
    assert_eq!(answer["status"], "finished_successfully", "{answer}");
    assert_eq!(answer["content"]["parts"][0], "partial more after");
}

#[tokio::test]
async fn a_stream_followed_elsewhere_whose_redis_goes_away_ends_with_an_error_then_done() {
    let Running {
        mut redis,
        llm,
        app,
        token,
        mut reader,
        first,
        id,
    } = running().await;
    let last_id = first.last().unwrap().id.clone();
    // A client follows the answer from another instance: from then on its
    // instance hands each event to Redis.
    let other = app.sibling(&[]);
    let resume_token = first[1].json()["token"].as_str().unwrap().to_owned();
    let res = other
        .client
        .get(other.url(&format!("/api/v1/conversations/{id}/stream")))
        .bearer_auth(&token)
        .header("x-resume-token", &resume_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut follower = SseReader::new(res);
    assert_eq!(follower.until(is_append).await.len(), first.len());

    // The next text can't be stored in the log: its readers here have it
    // at once, then, once the log's failure is known, the stream ends with
    // an error event and [DONE], under the id of the last event delivered
    // (what a client resumes after), not with a closed connection. The
    // model is held meanwhile: the answer is still running when it ends.
    redis.stop();
    llm.release();
    let rest = reader.rest().await;
    llm.release();
    let [.., error, done] = rest.as_slice() else {
        panic!("the stream ended without an error event and [DONE]: {rest:?}");
    };
    assert_eq!(error.kind().as_deref(), Some("error"), "{rest:?}");
    assert_eq!(error.json()["error"]["code"], "UNAVAILABLE", "{error:?}");
    assert_eq!(error.json()["conversation_id"], id.as_str());
    assert_eq!(done.data, "[DONE]");
    let last_delivered = rest
        .iter()
        .rev()
        .nth(2)
        .map_or(last_id, |event| event.id.clone());
    assert_eq!(error.id, last_delivered);
    assert_eq!(done.id, last_delivered);

    drop(follower);
    // The answer is saved with the text it had, as failed.
    redis.restart();
    readiness_becomes(&app, 200).await;
    let answer = answer_of(&app, &token, &id).await;
    assert_eq!(answer["status"], "failed", "{answer}");
    assert!(
        answer["content"]["parts"][0]
            .as_str()
            .unwrap()
            .starts_with("partial"),
        "{answer}"
    );
}
