//! 100 sends at once through one `confab-client`, each a new conversation
//! streamed to its end: every answer complete and stored whole, on SQLite
//! and on PostgreSQL with Redis. Completeness only, never timings.

use std::time::Duration;

use confab_client::{Client, Send};
use confab_domain::MessageStatus;
use confab_e2e::chat::PASSWORD;
use confab_e2e::load::{burst_vars, full_answer, paced_llm};
use confab_e2e::{TestApp, all_messages, spawn_app_with, spawn_app_with_redis};
use confab_sql::Backend;

/// The longest the burst may take, start to last answer's end.
const CAP: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_hundred_sends_at_once_through_the_client_all_complete_on_sqlite() {
    let llm = paced_llm();
    let base = llm.base_url();
    let app = spawn_app_with(Backend::Sqlite, &burst_vars(&base));
    hundred_sends(&app).await;
}

#[tokio::test]
async fn a_hundred_sends_at_once_through_the_client_all_complete_on_postgres_with_redis() {
    let llm = paced_llm();
    let base = llm.base_url();
    let app = spawn_app_with_redis(Backend::Postgres, &burst_vars(&base));
    hundred_sends(&app).await;
}

async fn hundred_sends(app: &TestApp) {
    let client = Client::new(&app.address).unwrap();
    client
        .register("ada", "ada@example.com", PASSWORD)
        .await
        .unwrap();
    client.login("ada", PASSWORD).await.unwrap();
    let sends = (0..100).map(|i| {
        let client = client.clone();
        async move {
            let mut answer = client
                .send(&Send::new_conversation(format!("question {i}")))
                .await?;
            let message = answer.finish().await?;
            Ok::<_, confab_client::Error>((answer.conversation_id(), message))
        }
    });
    let results = tokio::time::timeout(CAP, futures_util::future::join_all(sends))
        .await
        .expect("the burst ended by its deadline");
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 100 failed: {failed:?}",
        failed.len()
    );
    let store = app.db.store().await;
    for (id, message) in results.into_iter().map(Result::unwrap) {
        assert_eq!(message.text(), full_answer());
        assert_eq!(message.status, MessageStatus::FinishedSuccessfully);
        let stored = all_messages(&store, id.unwrap()).await;
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[1].content.joined(), full_answer());
        assert_eq!(stored[1].status, MessageStatus::FinishedSuccessfully);
    }
}
