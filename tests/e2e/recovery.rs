//! What a crash leaves behind is closed when the service starts again.

use confab_domain::{
    Content, ConversationId, Email, Message, MessageId, MessageMetadata, MessageRole,
    MessageStatus, NewConversation, NewUser, OffsetDateTime, PasswordHash, Role, Title, UserId,
    Username,
};
use confab_e2e::chat::{PASSWORD, SseReader, conversation_of, is_append, message_body, spawn_chat};
use confab_e2e::fake_llm::{FakeLlm, Script, Step};
use confab_e2e::{spawn_app_on, spawn_app_with};
use confab_ports::{ConversationStore, MessageStore, UserStore};
use confab_sql::Backend;
use confab_sql::testing::TestDatabase;

on_both_backends!(
    answers_a_crash_left_in_progress_are_closed_at_start_up,
    answers_no_generation_holds_are_closed_while_serving,
);

/// Stores, as a killed process would leave it, an answer `in_progress`
/// with the text of its last save; returns its conversation.
pub(crate) async fn orphan(store: &confab_sql::SqlStore) -> ConversationId {
    let now = OffsetDateTime::now_utc();
    let owner = UserId::generate();
    UserStore::create(
        store,
        NewUser {
            id: owner,
            username: Username::parse("ada").unwrap(),
            email: Email::parse("ada@example.com").unwrap(),
            role: Role::User,
            password_hash: PasswordHash::new(format!("$pbkdf2-sha256$i=1$salt${PASSWORD}")),
            created_at: now,
        },
    )
    .await
    .unwrap();
    let conversation = ConversationId::generate();
    ConversationStore::create(
        store,
        NewConversation {
            id: conversation,
            owner,
            title: Title::parse("interrupted").unwrap(),
            settings: Default::default(),
            created_at: now,
        },
    )
    .await
    .unwrap();
    let answer = Message {
        id: MessageId::parse("a1").unwrap(),
        conversation_id: conversation,
        parent_id: None,
        role: MessageRole::Assistant,
        content: Content::text(vec!["saved before the crash".into()]).unwrap(),
        status: MessageStatus::InProgress,
        model_slug: None,
        metadata: MessageMetadata::new(),
        created_at: now,
        updated_at: now,
    };
    MessageStore::insert(store, &answer).await.unwrap();
    conversation
}

async fn answers_a_crash_left_in_progress_are_closed_at_start_up(backend: Backend) {
    let db = TestDatabase::new(backend);
    let store = db.store().await;
    let conversation = orphan(&store).await;
    drop(store);

    let app = spawn_app_on(db, &[]);
    let store = app.db.store().await;
    let messages = confab_e2e::all_messages(&store, conversation).await;
    assert_eq!(messages[0].status, MessageStatus::Failed);
    assert_eq!(messages[0].content.parts(), ["saved before the crash"]);
}

async fn answers_no_generation_holds_are_closed_while_serving(backend: Backend) {
    // An instance that died mid-answer, seen from one that keeps serving:
    // the periodic sweep closes it (here every second).
    let app = spawn_app_with(backend, &[("CONFAB__GENERATION__ORPHAN_SWEEP_SECS", "1")]);
    let store = app.db.store().await;
    let conversation = orphan(&store).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let messages = loop {
        let messages = confab_e2e::all_messages(&store, conversation).await;
        if messages[0].status != MessageStatus::InProgress {
            break messages;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan was never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(messages[0].status, MessageStatus::Failed);
    assert_eq!(messages[0].content.parts(), ["saved before the crash"]);
}

#[tokio::test]
async fn the_sweep_leaves_running_answers_alone() {
    // A generation held mid-answer across several sweeps stays in progress
    // (it holds its log: it is no orphan), then finishes as it would have.
    let llm = FakeLlm::start();
    llm.push(Script::Stream(vec![
        Step::Text("Hel".into()),
        Step::Hold,
        Step::Text("lo".into()),
        Step::Finish("stop"),
        Step::Done,
    ]));
    let app = spawn_chat(
        Backend::Sqlite,
        &llm,
        &[
            ("CONFAB__GENERATION__ORPHAN_SWEEP_SECS", "1"),
            ("CONFAB__LLM__IDLE_TIMEOUT_MS", "20000"),
        ],
    );
    let token = app.user("ada").await;
    let res = app
        .send_message("/api/v1/conversations", &token, &message_body("Hi"))
        .await;
    assert_eq!(res.status(), 200);
    let mut reader = SseReader::new(res);
    let seen = reader.until(is_append).await;
    let id = conversation_of(&seen);
    // Long enough for two sweeps: nothing may close the running answer.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let answer = &app.conversation(&token, &id).await["messages"][1];
    assert_eq!(answer["status"], "in_progress", "{answer}");
    llm.release();
    reader.rest().await;
    let answer = &app.conversation(&token, &id).await["messages"][1];
    assert_eq!(answer["status"], "finished_successfully", "{answer}");
    assert_eq!(answer["content"]["parts"][0], "Hello");
}
