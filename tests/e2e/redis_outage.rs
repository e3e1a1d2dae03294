//! What a reader of a running answer sees when Redis goes away under it:
//! never a stream that just stops.

use confab_e2e::chat::{SseReader, conversation_of, is_append, message_body, spawn_chat};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_sql::Backend;

use crate::redis::{PrivateRedis, readiness_becomes};

#[tokio::test]
async fn a_stream_whose_redis_goes_away_mid_answer_ends_with_an_error_then_done() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("partial".into()),
        Step::Hold,
        Step::Text(" more".into()),
        Step::Hold,
        Step::Text(" after".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
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
    let last_id = first.last().unwrap().id.clone();

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

    // The answer is saved with the text it had, as failed.
    redis.restart();
    readiness_becomes(&app, 200).await;
    let conversation = app.conversation(&token, &id).await;
    let answer = conversation["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["author"]["role"] == "assistant")
        .unwrap_or_else(|| panic!("no answer in {conversation}"))
        .clone();
    assert_eq!(answer["status"], "failed", "{answer}");
    assert!(
        answer["content"]["parts"][0]
            .as_str()
            .unwrap()
            .starts_with("partial"),
        "{answer}"
    );
}
