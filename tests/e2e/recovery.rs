//! What a crash leaves behind is closed when the service starts again.

use confab_domain::{
    Content, ConversationId, Email, Message, MessageId, MessageMetadata, MessageRole,
    MessageStatus, NewConversation, NewUser, OffsetDateTime, PasswordHash, Role, Title, UserId,
    Username,
};
use confab_e2e::chat::PASSWORD;
use confab_e2e::spawn_app_on;
use confab_ports::{ConversationStore, MessageStore, UserStore};
use confab_sql::Backend;
use confab_sql::testing::TestDatabase;

on_both_backends!(answers_a_crash_left_in_progress_are_closed_at_start_up);

async fn answers_a_crash_left_in_progress_are_closed_at_start_up(backend: Backend) {
    // The state a killed process leaves: an answer `in_progress` with the
    // text of its last save.
    let db = TestDatabase::new(backend);
    let store = db.store().await;
    let now = OffsetDateTime::now_utc();
    let owner = UserId::generate();
    UserStore::create(
        &store,
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
        &store,
        NewConversation {
            id: conversation,
            owner,
            title: Title::parse("interrupted").unwrap(),
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
    MessageStore::insert(&store, &answer).await.unwrap();
    drop(store);

    let app = spawn_app_on(db, &[]);
    let store = app.db.store().await;
    let messages = MessageStore::list(&store, conversation).await.unwrap();
    assert_eq!(messages[0].status, MessageStatus::Failed);
    assert_eq!(messages[0].content.parts(), ["saved before the crash"]);
}
