//! The store suite: every test runs once on SQLite and once on PostgreSQL,
//! each on its own database.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use confab_domain::{ApiKey, ApiKeyDigest, ApiKeyId, ApiKeyName, Scopes};
use confab_domain::{
    Content, ConversationId, ConversationPatch, DomainError, Email, Field, ListOrder, Message,
    MessageId, MessageRole, MessageStatus, ModelSlug, NewConversation, NewUser, OffsetDateTime,
    PageRequest, PasswordHash, Role, SearchQuery, Title, User, UserId, Username,
};
use confab_domain::{FamilyId, TokenId};
use confab_ports::{ApiKeyStore, KeyCreation, StoredKey};
use confab_ports::{
    ConversationQuery, ConversationStore, HealthCheck, MessageStore, NewRefreshToken, Redemption,
    RefreshTokenStore, SessionOrigin, TitleIfUntitled, UserStore,
};
use confab_sql::testing::TestDatabase;
use confab_sql::{Backend, DatabaseTarget, PoolOptions, SqlError, SqlStore};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(confab_sql::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(confab_sql::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    users_round_trip,
    duplicate_username_and_email_are_duplicates,
    credentials_found_by_username_or_email,
    users_list_pages_with_total,
    disabling_a_user,
    conversations_are_scoped_to_their_owner,
    conversation_list_orders_and_pages,
    conversation_search_is_literal_and_case_insensitive,
    search_finds_words_of_titles_and_finished_messages_best_first,
    search_treats_query_syntax_as_text,
    search_pages_and_counts_what_it_found,
    a_database_of_the_previous_release_is_searchable,
    sessions_of_the_previous_release_come_over_with_their_times,
    archived_conversations_are_listed_apart,
    patch_renames_and_archives,
    soft_deleted_conversation_is_gone_everywhere,
    messages_keep_order_and_content,
    a_history_is_paged_backwards_from_its_end,
    duplicate_message_id_in_one_conversation,
    message_into_missing_or_deleted_conversation_is_not_found,
    updating_content_refreshes_the_preview,
    concurrent_inserts_get_distinct_positions,
    migrations_are_idempotent_and_health_is_ok,
    refresh_token_redeems_once_then_is_reuse,
    racing_redemptions_have_exactly_one_winner,
    revoked_and_expired_refresh_tokens_are_rejected,
    sessions_are_listed_ended_one_by_one_or_all_but_one_and_swept,
    a_user_with_tens_of_thousands_of_sessions_can_be_revoked,
    password_hash_is_replaced,
    a_deleted_user_leaves_no_row_and_names_every_conversation,
    usage_is_summed_per_user_day_and_model,
    usage_recorded_at_once_by_many_answers_is_all_counted,
    no_token_joins_a_revoked_family,
    orphaned_generations_are_closed_as_failed_with_their_text,
    generated_title_never_overwrites_a_rename,
    an_answers_final_save_titles_its_conversation_unless_renamed,
    an_answer_in_a_deleted_conversation_can_still_be_closed,
    an_exchange_is_stored_whole_or_not_at_all,
    a_new_conversation_and_its_exchange_are_stored_together,
    concurrent_writes_commit_together_and_fail_alone,
    a_database_of_the_previous_release_comes_over_as_one_branch,
    a_history_is_the_branch_that_ends_at_the_current_node,
    only_an_answer_that_stopped_early_is_reopened,
    a_conversations_settings_are_stored_changed_and_cleared,
    all_of_an_owners_conversations_are_listed_by_id_and_deleted_at_once,
    api_keys_are_kept_per_owner_bounded_and_swept,
    racing_key_creations_never_pass_the_bound,
);

struct Fixture {
    db: TestDatabase,
    store: SqlStore,
}

async fn fixture(backend: Backend) -> Fixture {
    let db = TestDatabase::new(backend);
    let store = db.store().await;
    assert_eq!(store.backend(), backend);
    Fixture { db, store }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

async fn user(store: &SqlStore, name: &str) -> User {
    UserStore::create(
        store,
        NewUser {
            id: UserId::generate(),
            username: Username::parse(name).unwrap(),
            email: Email::parse(&format!("{name}@example.com")).unwrap(),
            role: Role::User,
            password_hash: PasswordHash::new(format!("$pbkdf2-sha256$i=1$salt${name}")),
            created_at: now(),
        },
    )
    .await
    .unwrap()
}

async fn conversation(
    store: &SqlStore,
    owner: UserId,
    title: &str,
    at: OffsetDateTime,
) -> ConversationId {
    let c = ConversationStore::create(
        store,
        NewConversation {
            id: ConversationId::generate(),
            owner,
            title: Title::parse(title).unwrap(),
            settings: Default::default(),
            created_at: at,
        },
    )
    .await
    .unwrap();
    c.id
}

fn message(conversation: ConversationId, id: &str, role: MessageRole, text: &str) -> Message {
    Message {
        id: MessageId::parse(id).unwrap(),
        conversation_id: conversation,
        parent_id: None,
        role,
        content: Content::text(vec![text.to_owned()]).unwrap(),
        status: MessageStatus::FinishedSuccessfully,
        model_slug: None,
        metadata: serde_json::Map::new(),
        created_at: now(),
        updated_at: now(),
    }
}

/// `message` as a child of `parent`.
fn under(mut message: Message, parent: &Message) -> Message {
    message.parent_id = Some(parent.id.clone());
    message
}

async fn all_messages(store: &SqlStore, id: ConversationId) -> Vec<Message> {
    MessageStore::page(store, id, None, usize::MAX)
        .await
        .unwrap()
        .messages
}

fn query() -> ConversationQuery {
    ConversationQuery::default()
}

async fn users_round_trip(backend: Backend) {
    let f = fixture(backend).await;
    let alice = user(&f.store, "Alice").await;
    assert_eq!(alice.username.as_str(), "alice");
    assert_eq!(alice.role, Role::User);
    assert!(!alice.disabled);
    let read = UserStore::get(&f.store, alice.id).await.unwrap();
    assert_eq!(read, alice);
    let missing = UserStore::get(&f.store, UserId::generate())
        .await
        .unwrap_err();
    assert!(matches!(missing, DomainError::NotFound));
}

async fn duplicate_username_and_email_are_duplicates(backend: Backend) {
    let f = fixture(backend).await;
    user(&f.store, "bob").await;
    let clash = |name: &str, email: &str| NewUser {
        id: UserId::generate(),
        username: Username::parse(name).unwrap(),
        email: Email::parse(email).unwrap(),
        role: Role::User,
        password_hash: PasswordHash::new("x".into()),
        created_at: now(),
    };
    let err = UserStore::create(&f.store, clash("BOB", "other@example.com"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DomainError::Duplicate { ref field } if *field == Field::Username),
        "{err:?}"
    );
    let err = UserStore::create(&f.store, clash("robert", "Bob@Example.com"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DomainError::Duplicate { ref field } if *field == Field::Email),
        "{err:?}"
    );
}

async fn credentials_found_by_username_or_email(backend: Backend) {
    let f = fixture(backend).await;
    let carol = user(&f.store, "carol").await;
    for login in ["carol", "CAROL", "carol@example.com", "Carol@Example.COM"] {
        let (found, hash) = f.store.find_credentials(login).await.unwrap().expect(login);
        assert_eq!(found.id, carol.id);
        assert_eq!(hash.as_str(), "$pbkdf2-sha256$i=1$salt$carol");
    }
    assert!(f.store.find_credentials("nobody").await.unwrap().is_none());
}

async fn users_list_pages_with_total(backend: Backend) {
    let f = fixture(backend).await;
    for name in ["u_one", "u_two", "u_three"] {
        user(&f.store, name).await;
    }
    let page = UserStore::list(&f.store, PageRequest::new(1, 1).unwrap())
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].username.as_str(), "u_two");
}

async fn disabling_a_user(backend: Backend) {
    let f = fixture(backend).await;
    let dan = user(&f.store, "dan").await;
    let later = now() + Duration::from_secs(1);
    let disabled = f.store.set_disabled(dan.id, true, later).await.unwrap();
    assert!(disabled.disabled);
    assert!(disabled.updated_at > dan.updated_at);
    let err = f
        .store
        .set_disabled(UserId::generate(), true, later)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound));
}

async fn conversations_are_scoped_to_their_owner(backend: Backend) {
    let f = fixture(backend).await;
    let (erin, frank) = (user(&f.store, "erin").await, user(&f.store, "frank").await);
    let id = conversation(&f.store, erin.id, "Erin's", now()).await;
    assert_eq!(
        ConversationStore::get(&f.store, erin.id, id)
            .await
            .unwrap()
            .title
            .as_str(),
        "Erin's"
    );
    let err = ConversationStore::get(&f.store, frank.id, id)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound));
    assert_eq!(
        ConversationStore::list(&f.store, frank.id, &query())
            .await
            .unwrap()
            .total,
        0
    );
    let patch = ConversationPatch {
        title: Some(Title::parse("mine now").unwrap()),
        ..Default::default()
    };
    assert!(matches!(
        f.store.update(frank.id, id, patch, now()).await,
        Err(DomainError::NotFound)
    ));
    assert!(matches!(
        f.store.soft_delete(frank.id, id, now()).await,
        Err(DomainError::NotFound)
    ));
    assert_eq!(
        ConversationStore::get(&f.store, erin.id, id)
            .await
            .unwrap()
            .title
            .as_str(),
        "Erin's"
    );
}

async fn conversation_list_orders_and_pages(backend: Backend) {
    let f = fixture(backend).await;
    let gina = user(&f.store, "gina").await;
    let t0 = now();
    let first = conversation(&f.store, gina.id, "first", t0).await;
    let second = conversation(&f.store, gina.id, "second", t0 + Duration::from_secs(1)).await;
    let third = conversation(&f.store, gina.id, "third", t0 + Duration::from_secs(2)).await;
    // A new message makes the oldest conversation the most recently updated.
    let mut m = message(first, "m1", MessageRole::User, "hello there");
    m.updated_at = t0 + Duration::from_secs(3);
    MessageStore::insert(&f.store, &m).await.unwrap();

    let by_updated = ConversationStore::list(&f.store, gina.id, &query())
        .await
        .unwrap();
    let ids: Vec<_> = by_updated.items.iter().map(|c| c.id).collect();
    assert_eq!(ids, [first, third, second]);
    assert_eq!(
        by_updated.items[0].last_message.as_deref(),
        Some("hello there")
    );
    assert_eq!(by_updated.total, 3);

    let q = ConversationQuery {
        order: ListOrder::Created,
        ..query()
    };
    let ids: Vec<_> = ConversationStore::list(&f.store, gina.id, &q)
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, [third, second, first]);

    let q = ConversationQuery {
        page: PageRequest::new(2, 2).unwrap(),
        order: ListOrder::Created,
        ..query()
    };
    let page = ConversationStore::list(&f.store, gina.id, &q)
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.items.iter().map(|c| c.id).collect::<Vec<_>>(), [first]);
}

async fn conversation_search_is_literal_and_case_insensitive(backend: Backend) {
    let f = fixture(backend).await;
    let hal = user(&f.store, "hal").await;
    for title in ["Redis caching", "100% uptime", "snake_case names", "plain"] {
        conversation(&f.store, hal.id, title, now()).await;
    }
    let search = |s: &str| ConversationQuery {
        search: Some(SearchQuery::parse(s).unwrap()),
        ..query()
    };
    let titles = |page: confab_domain::Page<confab_domain::ConversationSummary>| {
        page.items
            .into_iter()
            .map(|c| c.title.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        titles(
            ConversationStore::list(&f.store, hal.id, &search("REDIS"))
                .await
                .unwrap()
        ),
        ["Redis caching"]
    );
    assert_eq!(
        titles(
            ConversationStore::list(&f.store, hal.id, &search("%"))
                .await
                .unwrap()
        ),
        ["100% uptime"]
    );
    assert_eq!(
        titles(
            ConversationStore::list(&f.store, hal.id, &search("_"))
                .await
                .unwrap()
        ),
        ["snake_case names"]
    );
    assert_eq!(
        ConversationStore::list(&f.store, hal.id, &search("zzz"))
            .await
            .unwrap()
            .total,
        0
    );
}

async fn archive(store: &SqlStore, owner: UserId, id: ConversationId) {
    let patch = ConversationPatch {
        is_archived: Some(true),
        ..Default::default()
    };
    store.update(owner, id, patch, now()).await.unwrap();
}

fn search(text: &str) -> ConversationQuery {
    ConversationQuery {
        search: Some(SearchQuery::parse(text).unwrap()),
        ..query()
    }
}

/// Each result as `(title, matched message id, highlighted words)`.
async fn found(
    store: &SqlStore,
    owner: UserId,
    q: ConversationQuery,
) -> Vec<(String, Option<String>, Vec<String>)> {
    let page = ConversationStore::list(store, owner, &q).await.unwrap();
    page.items
        .into_iter()
        .map(|c| {
            let hit = c.hit.expect("every result of a search says why");
            let chars: Vec<char> = hit.snippet.text().chars().collect();
            (
                c.title.as_str().to_owned(),
                hit.message_id.map(|id| id.to_string()),
                hit.snippet
                    .highlights()
                    .iter()
                    .map(|&(s, e)| chars[s..e].iter().collect())
                    .collect(),
            )
        })
        .collect()
}

/// A search finds the start of a word in a title or in a finished message
/// (of any branch) of the caller's live conversations: title matches first,
/// then the best message match; each with its message and snippet.
async fn search_finds_words_of_titles_and_finished_messages_best_first(backend: Backend) {
    let f = fixture(backend).await;
    let (sam, eve) = (user(&f.store, "sam").await, user(&f.store, "eve").await);
    let (user_role, bot) = (MessageRole::User, MessageRole::Assistant);
    let trip = conversation(&f.store, sam.id, "Trip planning", now()).await;
    let q1 = message(trip, "q1", user_role, "Where should we go?");
    let a1 = under(
        message(
            trip,
            "a1",
            bot,
            "Lisbon has trams, and Lisbon has pastries.",
        ),
        &q1,
    );
    f.store.insert_exchange(&q1, &a1).await.unwrap();
    // A regenerated answer on another branch is searched too.
    let a1b = under(message(trip, "a1b", bot, "Porto, or maybe lisbon."), &q1);
    MessageStore::insert(&f.store, &a1b).await.unwrap();
    let notes = conversation(&f.store, sam.id, "Lisbon notes", now()).await;
    let n1 = message(notes, "n1", user_role, "Nothing about the city here.");
    MessageStore::insert(&f.store, &n1).await.unwrap();
    let db = conversation(&f.store, sam.id, "Dinner", now()).await;
    let d1 = message(db, "d1", user_role, "Try the PostgreSQL-backed\nrecipe app");
    MessageStore::insert(&f.store, &d1).await.unwrap();
    // Not the caller's, deleted, archived: never in the caller's results.
    let theirs = conversation(&f.store, eve.id, "Lisbon too", now()).await;
    MessageStore::insert(&f.store, &message(theirs, "e1", user_role, "lisbon"))
        .await
        .unwrap();
    let gone = conversation(&f.store, sam.id, "Gone", now()).await;
    MessageStore::insert(&f.store, &message(gone, "g1", user_role, "lisbon"))
        .await
        .unwrap();
    f.store.soft_delete(sam.id, gone, now()).await.unwrap();
    let shelved = conversation(&f.store, sam.id, "Shelved", now()).await;
    MessageStore::insert(&f.store, &message(shelved, "s1", user_role, "lisbon"))
        .await
        .unwrap();
    archive(&f.store, sam.id, shelved).await;

    let lisbon = found(&f.store, sam.id, search("LISB")).await;
    assert_eq!(lisbon.len(), 2, "{lisbon:?}");
    assert_eq!(lisbon[0].0, "Lisbon notes", "a title match comes first");
    assert_eq!(lisbon[0].1, None);
    assert_eq!(lisbon[0].2, ["Lisbon"]);
    assert_eq!(lisbon[1].0, "Trip planning");
    assert_eq!(
        lisbon[1].1.as_deref(),
        Some("a1"),
        "the message with the word twice ranks first"
    );
    assert_eq!(lisbon[1].2, ["Lisbon", "Lisbon"]);
    let archived = ConversationQuery {
        archived: true,
        ..search("lisbon")
    };
    assert_eq!(
        found(&f.store, sam.id, archived).await[0].1.as_deref(),
        Some("s1")
    );
    assert_eq!(found(&f.store, eve.id, search("lisbon")).await.len(), 1);

    let postgres = found(&f.store, sam.id, search("postg recipe")).await;
    assert_eq!(postgres.len(), 1);
    assert_eq!(postgres[0].1.as_deref(), Some("d1"));
    assert_eq!(postgres[0].2, ["PostgreSQL", "recipe"]);
    assert!(
        found(&f.store, sam.id, search("sql")).await.is_empty(),
        "a word's middle"
    );
    assert!(
        found(&f.store, sam.id, search("postg lisbon"))
            .await
            .is_empty(),
        "every term"
    );

    // An answer being written is found once it is finished.
    let q2 = under(message(db, "q2", user_role, "and dessert?"), &d1);
    let mut a2 = under(message(db, "a2", bot, "zabaglione"), &q2);
    a2.status = MessageStatus::InProgress;
    f.store.insert_exchange(&q2, &a2).await.unwrap();
    assert!(
        found(&f.store, sam.id, search("zabaglione"))
            .await
            .is_empty()
    );
    let more = Content::text(vec!["zabaglione, or tiramisu".into()]).unwrap();
    f.store
        .update_content(db, &a2.id, &more, MessageStatus::InProgress, now())
        .await
        .unwrap();
    assert!(found(&f.store, sam.id, search("tiramisu")).await.is_empty());
    f.store
        .update_content(
            db,
            &a2.id,
            &more,
            MessageStatus::FinishedPartialCompletion,
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        found(&f.store, sam.id, search("tiramisu")).await[0]
            .1
            .as_deref(),
        Some("a2")
    );
    // Reopened to be continued, it is in progress again: its old text is
    // not found until it ends; then its new text is.
    assert!(f.store.reopen(db, &a2.id, now()).await.unwrap());
    assert!(found(&f.store, sam.id, search("tiramisu")).await.is_empty());
    let done = Content::text(vec!["zabaglione, or tiramisu, or gelato".into()]).unwrap();
    f.store
        .update_content(
            db,
            &a2.id,
            &done,
            MessageStatus::FinishedSuccessfully,
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        found(&f.store, sam.id, search("gelato tiramisu"))
            .await
            .len(),
        1
    );
    // Content of several parts: the words of each are found.
    let mut parts = message(db, "q3", user_role, "");
    parts.content = Content::text(vec![
        "first part: affogato".into(),
        "second: cannoli".into(),
    ])
    .unwrap();
    MessageStore::insert(&f.store, &under(parts, &a2))
        .await
        .unwrap();
    for word in ["affogato", "cannoli", "affogato cannoli"] {
        let hits = found(&f.store, sam.id, search(word)).await;
        assert_eq!(hits.len(), 1, "{word}: {hits:?}");
        assert_eq!(hits[0].1.as_deref(), Some("q3"), "{word}");
    }
}

/// Quotes, wildcards, operators and markup a user types are characters: no
/// query errs, none changes what is found, and `OR` or `-` are words.
async fn search_treats_query_syntax_as_text(backend: Backend) {
    let f = fixture(backend).await;
    let uma = user(&f.store, "uma").await;
    let c = conversation(&f.store, uma.id, "Untitled", now()).await;
    let m = message(
        c,
        "m1",
        MessageRole::User,
        "Lisbon's trams: <b>fast</b> & \"cheap\"",
    );
    MessageStore::insert(&f.store, &m).await.unwrap();
    for text in [
        "lisbon*",
        "-lisbon",
        "(lisbon)",
        "lisbon:*",
        "'lisbon'",
        "\"lisbon\"",
        "lisbon's",
        "!lisbon",
        "lisbon\\",
        "<b>fast",
        "{lisbon}",
        "lisbon%",
    ] {
        let hits = found(&f.store, uma.id, search(text)).await;
        assert_eq!(hits.len(), 1, "{text}: {hits:?}");
        assert_eq!(hits[0].1.as_deref(), Some("m1"), "{text}");
    }
    for text in [
        "lisbon OR paris",
        "NEAR(lisbon)",
        "lisbon^2",
        "paris | lisbon",
        "lisbon -trams x",
        "\" OR \"",
        "*",
        "'",
        "&",
        "|",
        "lisbon AND NOT trams",
        "!!",
        "\\",
        "NEAR",
        ":*",
    ] {
        let hits = found(&f.store, uma.id, search(text)).await;
        assert!(hits.is_empty(), "{text}: {hits:?}");
    }
}

/// A search's count is of everything it found; a page past the end is
/// empty and still counts.
async fn search_pages_and_counts_what_it_found(backend: Backend) {
    let f = fixture(backend).await;
    let vic = user(&f.store, "vic").await;
    for n in 0..5 {
        let c = conversation(&f.store, vic.id, &format!("chat {n}"), now()).await;
        let text = format!("kiwi number {n}");
        MessageStore::insert(&f.store, &message(c, "m", MessageRole::User, &text))
            .await
            .unwrap();
    }
    conversation(&f.store, vic.id, "no fruit", now()).await;
    let window = |offset, limit| ConversationQuery {
        page: PageRequest::new(offset, limit).unwrap(),
        ..search("kiwi")
    };
    let first = ConversationStore::list(&f.store, vic.id, &window(0, 2))
        .await
        .unwrap();
    assert_eq!((first.items.len(), first.total), (2, 5));
    let last = ConversationStore::list(&f.store, vic.id, &window(4, 2))
        .await
        .unwrap();
    assert_eq!((last.items.len(), last.total), (1, 5));
    let past = ConversationStore::list(&f.store, vic.id, &window(10, 2))
        .await
        .unwrap();
    assert_eq!((past.items.len(), past.total), (0, 5));
    let mut seen: Vec<ConversationId> = Vec::new();
    for offset in 0..5 {
        let page = ConversationStore::list(&f.store, vic.id, &window(offset, 1))
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|c| c.id));
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "pages are disjoint and cover every result");
}

/// The search migration indexes what the release before it stored (not an
/// answer still in progress), and the index outlives a `VACUUM`.
/// The session migration on sessions the release before it stored: each
/// is last used when its newest token was issued and ends when that token
/// expires; one without tokens, at its creation; a revoked one stays ended.
async fn sessions_of_the_previous_release_come_over_with_their_times(backend: Backend) {
    let db = TestDatabase::new(backend);
    assert_eq!(
        db.before_migration("20261204000007"),
        migrations_down_to(backend, "20261204000007")
    );
    let owner = UserId::generate();
    let (used, bare, revoked) = (
        FamilyId::generate(),
        FamilyId::generate(),
        FamilyId::generate(),
    );
    let hour: i64 = 3_600_000_000;
    let base = micros_now();
    db.execute(&format!(
        "INSERT INTO users VALUES ('{owner}', 'old', 'old@example.com', 'x', 'user', FALSE, 0, 0); \
         INSERT INTO refresh_families VALUES ('{used}', '{owner}', {base}, NULL), \
         ('{bare}', '{owner}', {base}, NULL), ('{revoked}', '{owner}', {base}, {base}); \
         INSERT INTO refresh_tokens VALUES \
         ('{}', '{used}', '{owner}', {}, {}, {}, NULL), \
         ('{}', '{used}', '{owner}', {}, {}, NULL, NULL), \
         ('{}', '{revoked}', '{owner}', {base}, {}, NULL, {base});",
        TokenId::generate(),
        base + 1,
        base + 1 + 24 * hour,
        base + 2,
        TokenId::generate(),
        base + 2,
        base + 2 + 24 * hour,
        TokenId::generate(),
        base + 24 * hour,
    ));
    let store = db.store().await;
    let listed = store.sessions(owner, now()).await.unwrap();
    assert_eq!(listed.len(), 1, "the one with a live token: {listed:?}");
    let session = &listed[0];
    assert_eq!(session.id, used);
    let at = |m: i64| OffsetDateTime::from_unix_timestamp_nanos(i128::from(m) * 1_000).unwrap();
    assert_eq!(session.last_used_at, at(base + 2));
    assert_eq!(session.expires_at, at(base + 2 + 24 * hour));
    assert_eq!(session.origin, SessionOrigin::default());
    // The one without tokens ended at its creation: swept with the rest.
    assert!(!store.revoke_session(owner, bare, now()).await.unwrap());
    assert_eq!(
        store
            .sweep(now() + Duration::from_secs(25 * 3600))
            .await
            .unwrap(),
        3
    );
}

/// The migrations of `backend` from the newest down to `version`, newest
/// first: what reverting to the release before `version` undoes.
fn migrations_down_to(backend: Backend, version: &str) -> Vec<&'static str> {
    // Newest first; PostgreSQL's own migrations marked.
    const ALL: [(&str, bool); 8] = [
        ("20261206000011", true),
        ("20261205000010", true),
        ("20261205000009", false),
        ("20261205000008", false),
        ("20261204000007", false),
        ("20261204000006", false),
        ("20261204000005", false),
        ("20261204000004", false),
    ];
    let all: Vec<&'static str> = ALL
        .iter()
        .filter(|(_, postgres_only)| backend == Backend::Postgres || !postgres_only)
        .map(|(v, _)| *v)
        .collect();
    let newer = all.iter().take_while(|v| **v != version).count();
    assert!(
        newer < all.len(),
        "{version} is no migration of {backend:?}"
    );
    all[..=newer].to_vec()
}

fn micros_now() -> i64 {
    i64::try_from(now().unix_timestamp_nanos() / 1_000).unwrap()
}

async fn a_database_of_the_previous_release_is_searchable(backend: Backend) {
    let db = TestDatabase::new(backend);
    assert_eq!(
        db.before_migration("20261204000006"),
        migrations_down_to(backend, "20261204000006")
    );
    let owner = UserId::generate();
    let id = ConversationId::generate();
    let part = |t: &str| format!(r#"{{"content_type":"text","parts":["{t}"]}}"#);
    db.execute(&format!(
        "INSERT INTO users VALUES ('{owner}', 'old', 'old@example.com', 'x', 'user', FALSE, 0, 0); \
         INSERT INTO conversations (id, user_id, title, last_message, is_archived, deleted_at, \
         created_at, updated_at) VALUES ('{id}', '{owner}', 'Old', NULL, FALSE, NULL, 1, 9); \
         INSERT INTO messages VALUES ('{id}', 'm1', 1, NULL, 'user', '{}', \
         'finished_successfully', NULL, '{{}}', 1, 1), \
         ('{id}', 'm2', 2, 'm1', 'assistant', '{}', 'in_progress', NULL, '{{}}', 2, 2);",
        part("an old quokka"),
        part("a wombat being written"),
    ));
    let store = db.store().await;
    let hits = found(&store, owner, search("quokka")).await;
    assert_eq!(
        hits,
        [(
            "Old".to_owned(),
            Some("m1".to_owned()),
            vec!["quokka".to_owned()]
        )]
    );
    assert!(found(&store, owner, search("wombat")).await.is_empty());
    db.execute("VACUUM");
    let done = Content::text(vec!["a wombat".into()]).unwrap();
    store
        .update_content(
            id,
            &MessageId::parse("m2").unwrap(),
            &done,
            MessageStatus::FinishedSuccessfully,
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        found(&store, owner, search("wombat")).await[0].1.as_deref(),
        Some("m2")
    );
    assert_eq!(
        found(&store, owner, search("quokka")).await[0].1.as_deref(),
        Some("m1")
    );
}

async fn archived_conversations_are_listed_apart(backend: Backend) {
    let f = fixture(backend).await;
    let ida = user(&f.store, "ida").await;
    let kept = conversation(&f.store, ida.id, "kept", now()).await;
    let archived = conversation(&f.store, ida.id, "archived", now()).await;
    archive(&f.store, ida.id, archived).await;
    let active = ConversationStore::list(&f.store, ida.id, &query())
        .await
        .unwrap();
    assert_eq!(
        active.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [kept]
    );
    let q = ConversationQuery {
        archived: true,
        ..query()
    };
    let only = ConversationStore::list(&f.store, ida.id, &q).await.unwrap();
    assert_eq!(
        only.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [archived]
    );
    assert!(only.items[0].is_archived);
}

async fn patch_renames_and_archives(backend: Backend) {
    let f = fixture(backend).await;
    let jo = user(&f.store, "joe").await;
    let t0 = now();
    let id = conversation(&f.store, jo.id, "before", t0).await;
    let later = t0 + Duration::from_secs(5);
    let patch = ConversationPatch {
        title: Some(Title::parse("after").unwrap()),
        ..ConversationPatch::default()
    };
    let c = f.store.update(jo.id, id, patch, later).await.unwrap();
    assert_eq!(c.title.as_str(), "after");
    assert!(!c.is_archived);
    assert!(c.updated_at > c.created_at);
    let c = f
        .store
        .update(
            jo.id,
            id,
            ConversationPatch {
                is_archived: Some(true),
                ..ConversationPatch::default()
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(c.title.as_str(), "after");
    assert!(c.is_archived);

    // Switching branch: the history then ends at the node named.
    let question = message(id, "u1", MessageRole::User, "q");
    let answer = under(message(id, "a1", MessageRole::Assistant, "a"), &question);
    f.store.insert_exchange(&question, &answer).await.unwrap();
    let c = f
        .store
        .update(
            jo.id,
            id,
            ConversationPatch {
                current_node: Some(question.id.clone()),
                ..ConversationPatch::default()
            },
            later,
        )
        .await
        .unwrap();
    assert_eq!(c.current_node, Some(question.id.clone()));
    assert!(c.is_archived, "the other fields are left as they were");
    let ids: Vec<MessageId> = all_messages(&f.store, id)
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, [question.id]);
}

async fn soft_deleted_conversation_is_gone_everywhere(backend: Backend) {
    let f = fixture(backend).await;
    let kim = user(&f.store, "kim").await;
    let id = conversation(&f.store, kim.id, "doomed", now()).await;
    f.store.soft_delete(kim.id, id, now()).await.unwrap();
    assert!(matches!(
        ConversationStore::get(&f.store, kim.id, id).await,
        Err(DomainError::NotFound)
    ));
    assert_eq!(
        ConversationStore::list(&f.store, kim.id, &query())
            .await
            .unwrap()
            .total,
        0
    );
    let patch = ConversationPatch {
        is_archived: Some(true),
        ..Default::default()
    };
    assert!(matches!(
        f.store.update(kim.id, id, patch, now()).await,
        Err(DomainError::NotFound)
    ));
    assert!(matches!(
        f.store.soft_delete(kim.id, id, now()).await,
        Err(DomainError::NotFound)
    ));
}

async fn messages_keep_order_and_content(backend: Backend) {
    let f = fixture(backend).await;
    let lee = user(&f.store, "lee").await;
    let id = conversation(&f.store, lee.id, "chat", now()).await;
    let text = "Héllo — 日本語 🎉 \"quoted\" \\ and \n\ndata: [DONE]";
    let mut question = message(id, "zzz_last_alphabetically", MessageRole::User, text);
    question
        .metadata
        .insert("temperature".into(), serde_json::json!(0.7));
    let mut answer = message(id, "aaa_first_alphabetically", MessageRole::Assistant, "");
    answer.content = Content::empty_text();
    answer.status = MessageStatus::InProgress;
    answer.parent_id = Some(question.id.clone());
    answer.model_slug = Some(ModelSlug::parse("llama3.1:8b").unwrap());
    MessageStore::insert(&f.store, &question).await.unwrap();
    MessageStore::insert(&f.store, &answer).await.unwrap();

    let listed = all_messages(&f.store, id).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, question.id, "insertion order, not id order");
    assert_eq!(listed[0].content.parts(), [text]);
    assert_eq!(listed[0].metadata["temperature"], serde_json::json!(0.7));
    assert_eq!(listed[1].parent_id.as_ref(), Some(&question.id));
    assert_eq!(listed[1].status, MessageStatus::InProgress);
    assert_eq!(
        listed[1].model_slug.as_ref().map(ModelSlug::as_str),
        Some("llama3.1:8b")
    );
    assert_eq!(listed[1].content.parts(), [""]);
}

async fn a_history_is_paged_backwards_from_its_end(backend: Backend) {
    let f = fixture(backend).await;
    let pia = user(&f.store, "pia").await;
    let id = conversation(&f.store, pia.id, "long", now()).await;
    let other = conversation(&f.store, pia.id, "other", now()).await;
    // Ids in reverse alphabetical order: pages follow insertion.
    let ids: Vec<String> = (1..=7).map(|n| format!("m{}", 9 - n)).collect();
    let mut parent: Option<Message> = None;
    for (n, mid) in ids.iter().enumerate() {
        let role = if n % 2 == 0 {
            MessageRole::User
        } else {
            MessageRole::Assistant
        };
        let mut m = message(id, mid, role, &format!("text {n}"));
        if let Some(parent) = &parent {
            m = under(m, parent);
        }
        MessageStore::insert(&f.store, &m).await.unwrap();
        parent = Some(m);
    }
    MessageStore::insert(
        &f.store,
        &message(other, "elsewhere", MessageRole::User, "x"),
    )
    .await
    .unwrap();
    let page = |before: Option<&str>, limit| {
        let before = before.map(|b| MessageId::parse(b).unwrap());
        let store = &f.store;
        async move {
            MessageStore::page(store, id, before.as_ref(), limit)
                .await
                .map(|p| {
                    let ids: Vec<String> = p.messages.iter().map(|m| m.id.to_string()).collect();
                    (ids, p.has_more)
                })
        }
    };
    let want = |range: std::ops::Range<usize>, more| (ids[range].to_vec(), more);

    assert_eq!(
        page(None, 3).await.unwrap(),
        want(4..7, true),
        "the newest, oldest first"
    );
    assert_eq!(page(Some(&ids[4]), 3).await.unwrap(), want(1..4, true));
    assert_eq!(page(Some(&ids[1]), 3).await.unwrap(), want(0..1, false));
    assert_eq!(page(Some(&ids[0]), 3).await.unwrap(), want(0..0, false));
    assert_eq!(
        page(None, 7).await.unwrap(),
        want(0..7, false),
        "exactly all"
    );
    assert_eq!(page(None, 100).await.unwrap(), want(0..7, false));
    let first = MessageStore::page(&f.store, id, None, 1).await.unwrap();
    assert_eq!(first.cursor().map(MessageId::as_str), Some(ids[6].as_str()));
    assert_eq!(
        MessageStore::page(&f.store, id, None, 7)
            .await
            .unwrap()
            .cursor(),
        None,
        "no cursor on the last page"
    );

    // A `before` that is not a message of this conversation.
    for foreign in ["nowhere", "elsewhere"] {
        assert!(
            matches!(page(Some(foreign), 3).await, Err(DomainError::NotFound)),
            "{foreign}"
        );
    }
    // A conversation without messages (or none at all) has an empty page.
    let empty = MessageStore::page(&f.store, ConversationId::generate(), None, 3)
        .await
        .unwrap();
    assert!(empty.messages.is_empty() && !empty.has_more);

    // One message by id, in its own conversation only.
    let third = MessageStore::find(&f.store, id, &MessageId::parse(&ids[2]).unwrap())
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(third.content.parts(), ["text 2"]);
    assert_eq!(third.role, MessageRole::User);
    let elsewhere = MessageId::parse("elsewhere").unwrap();
    assert_eq!(
        MessageStore::find(&f.store, id, &elsewhere).await.unwrap(),
        None
    );
    assert!(
        MessageStore::find(&f.store, other, &elsewhere)
            .await
            .unwrap()
            .is_some()
    );
}

/// PostgreSQL's plan of `statement`, a line each.
fn plan(conn: &mut diesel::PgConnection, statement: &str) -> Vec<String> {
    use diesel::{QueryableByName, RunQueryDsl};

    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }

    let lines: Vec<PlanLine> = diesel::sql_query(format!("EXPLAIN {statement}"))
        .load(conn)
        .unwrap();
    lines.into_iter().map(|l| l.line).collect()
}

/// The page of a history is read up its branch one primary-key lookup per
/// message, never by scanning or sorting the conversation.
#[tokio::test]
async fn a_history_page_reads_the_branch_over_the_primary_key() {
    use diesel::{Connection, PgConnection, RunQueryDsl};

    let db = TestDatabase::postgres();
    let _store = db.store().await;
    let mut conn = PgConnection::establish(db.direct_url()).unwrap();
    for statement in [
        "INSERT INTO users VALUES ('u1', 'pager', 'pager@example.com', 'x', 'user', FALSE, 0, 0)",
        "INSERT INTO conversations (id, user_id, title, created_at, updated_at) \
         VALUES ('c1', 'u1', 'Long', 0, 0), ('c2', 'u1', 'Other', 0, 0)",
        "INSERT INTO messages (conversation_id, id, position, parent_id, role, content, \
         status, created_at, updated_at) SELECT 'c' || (1 + g % 2), 'm' || g, g, \
         CASE WHEN g > 2 THEN 'm' || (g - 2) END, 'user', \
         '{\"content_type\":\"text\",\"parts\":[\"x\"]}', 'finished_successfully', g, g \
         FROM generate_series(1, 20000) g",
        "ANALYZE messages",
    ] {
        diesel::sql_query(statement).execute(&mut conn).unwrap();
    }
    let statement = confab_sql::testing::BRANCH_STATEMENT_POSTGRES
        .replace("$1", "'c1'")
        .replace("$2", "'m15001'")
        .replace("$3", "0")
        .replace("$4", "100");
    let plan = plan(&mut conn, &statement);
    assert!(
        plan.iter().any(|l| l.contains("messages_pkey")),
        "{plan:#?}"
    );
    assert!(
        !plan.iter().any(|l| l.contains("Seq Scan on messages")),
        "{plan:#?}"
    );
    // A page's children (`MessageStore::children`): over the parents'
    // index, not the whole conversation.
    let children = "SELECT parent_id, id FROM messages WHERE conversation_id = 'c1' \
         AND (parent_id = ANY(ARRAY['m14001', 'm14003']) OR parent_id IS NULL) ORDER BY position";
    let read = self::plan(&mut conn, children);
    assert!(
        read.iter().any(|l| l.contains("messages_parent_idx")),
        "{read:#?}"
    );
    assert!(
        !read.iter().any(|l| l.contains("Seq Scan on messages")),
        "{read:#?}"
    );
}

async fn duplicate_message_id_in_one_conversation(backend: Backend) {
    let f = fixture(backend).await;
    let (max, ned) = (user(&f.store, "max").await, user(&f.store, "ned").await);
    let a = conversation(&f.store, max.id, "a", now()).await;
    let b = conversation(&f.store, ned.id, "b", now()).await;
    MessageStore::insert(&f.store, &message(a, "msg_001", MessageRole::User, "one"))
        .await
        .unwrap();
    let err = MessageStore::insert(&f.store, &message(a, "msg_001", MessageRole::User, "again"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DomainError::Duplicate { ref field } if *field == Field::MessageId),
        "{err:?}"
    );
    // The same client id in another conversation is fine.
    MessageStore::insert(&f.store, &message(b, "msg_001", MessageRole::User, "other"))
        .await
        .unwrap();
}

async fn message_into_missing_or_deleted_conversation_is_not_found(backend: Backend) {
    let f = fixture(backend).await;
    let olga = user(&f.store, "olga").await;
    let err = MessageStore::insert(
        &f.store,
        &message(ConversationId::generate(), "m", MessageRole::User, "x"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DomainError::NotFound), "{err:?}");
    let id = conversation(&f.store, olga.id, "gone", now()).await;
    f.store.soft_delete(olga.id, id, now()).await.unwrap();
    let err = MessageStore::insert(&f.store, &message(id, "m", MessageRole::User, "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound), "{err:?}");
}

async fn updating_content_refreshes_the_preview(backend: Backend) {
    let f = fixture(backend).await;
    let pat = user(&f.store, "pat").await;
    let id = conversation(&f.store, pat.id, "chat", now()).await;
    let mut answer = message(id, "a1", MessageRole::Assistant, "");
    answer.status = MessageStatus::InProgress;
    MessageStore::insert(&f.store, &answer).await.unwrap();
    let done = Content::text(vec!["Redis caching stores data in memory.".into()]).unwrap();
    f.store
        .update_content(
            id,
            &answer.id,
            &done,
            MessageStatus::FinishedSuccessfully,
            now(),
        )
        .await
        .unwrap();
    let listed = all_messages(&f.store, id).await;
    assert_eq!(listed[0].status, MessageStatus::FinishedSuccessfully);
    assert_eq!(listed[0].content, done);
    let page = ConversationStore::list(&f.store, pat.id, &query())
        .await
        .unwrap();
    assert_eq!(
        page.items[0].last_message.as_deref(),
        Some("Redis caching stores data in memory.")
    );
    let missing = MessageId::parse("nope").unwrap();
    let err = f
        .store
        .update_content(id, &missing, &done, MessageStatus::Failed, now())
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound));
    // A closed answer stays as it was closed: a late flush of a generation
    // that was declared gone does not reopen or rewrite it.
    let late = Content::text(vec!["a late flush".into()]).unwrap();
    let err = f
        .store
        .update_content(id, &answer.id, &late, MessageStatus::InProgress, now())
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound));
    let kept = all_messages(&f.store, id).await;
    assert_eq!(kept[0].status, MessageStatus::FinishedSuccessfully);
    assert_eq!(kept[0].content, done);
}

async fn concurrent_inserts_get_distinct_positions(backend: Backend) {
    let f = fixture(backend).await;
    let quinn = user(&f.store, "quinn").await;
    let id = conversation(&f.store, quinn.id, "busy", now()).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = f.store.clone();
            tokio::spawn(async move {
                MessageStore::insert(
                    &store,
                    &message(id, &format!("m{i}"), MessageRole::User, "hi"),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    for i in 0..8 {
        let mid = MessageId::parse(format!("m{i}")).unwrap();
        assert!(
            MessageStore::find(&f.store, id, &mid)
                .await
                .unwrap()
                .is_some()
        );
    }
    // None names a parent: each is a root, and the last stored is current.
    let current = all_messages(&f.store, id).await;
    assert_eq!(current.len(), 1, "{current:?}");
}

async fn migrations_are_idempotent_and_health_is_ok(backend: Backend) {
    let f = fixture(backend).await;
    assert_eq!(
        f.store.migrate().await.unwrap(),
        0,
        "a second run applies nothing"
    );
    assert_eq!(f.store.name(), "database");
    f.store.check().await.unwrap();
}

/// Instances starting together migrate once: the advisory lock makes the
/// others wait, then find nothing to do. Run through PgBouncer (`make
/// test-pgbouncer`), the stores are opened as docs/operations.md says a
/// pooled deployment must be: statements unprepared, migrations (and their
/// session lock) on the direct URL.
#[tokio::test]
async fn postgres_instances_starting_together_migrate_once() {
    let db = TestDatabase::postgres();
    let reverted = db.before_migration("20261204000006").len();
    assert!(reverted > 0);
    let mut stores = Vec::new();
    for _ in 0..4 {
        let target = DatabaseTarget::parse(db.url()).unwrap();
        stores.push(SqlStore::open(target, db.pool_options()).await.unwrap());
    }
    let (a, b, c, d) = tokio::join!(
        stores[0].migrate(),
        stores[1].migrate(),
        stores[2].migrate(),
        stores[3].migrate()
    );
    let applied: Vec<usize> = [a, b, c, d]
        .into_iter()
        .map(|r| r.expect("every instance's migration run succeeds"))
        .collect();
    assert_eq!(
        applied.iter().sum::<usize>(),
        reverted,
        "each migration applied once in all: {applied:?}"
    );
    // And the lock was let go: a later run takes it and finds nothing.
    assert_eq!(stores[0].migrate().await.unwrap(), 0);
    stores[3].check().await.unwrap();
}

/// Every update and read of one conversation by its owner looks it up by
/// primary key, even on a fresh database that was never analyzed: until
/// its first ANALYZE, PostgreSQL guessed a partial list index on
/// `user_id` as cheap, and the look-up read every conversation of the
/// owner (each new conversation's title cost as much as its owner's
/// conversation count).
#[tokio::test]
async fn owner_checked_lookups_by_id_use_the_primary_key_before_any_analyze() {
    use diesel::{Connection, PgConnection, RunQueryDsl};

    let db = TestDatabase::postgres();
    let _store = db.store().await;
    let mut conn = PgConnection::establish(db.direct_url()).unwrap();
    diesel::sql_query(
        "INSERT INTO users VALUES ('u1', 'planner', 'planner@example.com', 'x', 'user', FALSE, 0, 0)",
    )
    .execute(&mut conn)
    .unwrap();
    diesel::sql_query(
        "INSERT INTO conversations (id, user_id, title, created_at, updated_at) \
         SELECT 'c' || g, 'u1', 'New chat', g, g FROM generate_series(1, 2000) g",
    )
    .execute(&mut conn)
    .unwrap();
    let owned = "id = 'c5' AND user_id = 'u1' AND deleted_at IS NULL";
    for statement in [
        format!("SELECT * FROM conversations WHERE {owned}"),
        format!(
            "UPDATE conversations SET title = 'T', updated_at = 1 WHERE {owned} AND title = 'New chat'"
        ),
        format!("UPDATE conversations SET deleted_at = 1, updated_at = 1 WHERE {owned}"),
    ] {
        let plan = plan(&mut conn, &statement);
        assert!(
            plan.iter().any(|l| l.contains("conversations_pkey")),
            "{statement}: {plan:#?}"
        );
    }
}

#[tokio::test]
async fn refused_postgres_is_a_clear_error() {
    let target = DatabaseTarget::parse("postgres://postgres@127.0.0.1:1/confab").unwrap();
    let err = SqlStore::open(target, PoolOptions::default())
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, SqlError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("postgres://postgres@127.0.0.1:1/confab"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("connect"), "{text}");
}

#[tokio::test]
async fn sqlite_creates_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/confab.db");
    let target = DatabaseTarget::parse(&format!("sqlite://{}", path.display())).unwrap();
    let store = SqlStore::open(target, PoolOptions::default())
        .await
        .unwrap();
    assert!(store.migrate().await.unwrap() > 0);
    assert!(path.exists());
}

async fn refresh(store: &SqlStore, user: UserId, family: FamilyId, ttl: Duration) -> TokenId {
    // Opening an existing family again is a duplicate: open it once.
    let _ = store
        .open_family(family, user, now(), SessionOrigin::default())
        .await;
    let jti = TokenId::generate();
    let recorded = RefreshTokenStore::insert(
        store,
        NewRefreshToken {
            jti,
            family,
            user_id: user,
            issued_at: now(),
            expires_at: now() + ttl,
        },
    )
    .await
    .unwrap();
    assert!(recorded);
    jti
}

async fn no_token_joins_a_revoked_family(backend: Backend) {
    let f = fixture(backend).await;
    let vic = user(&f.store, "vic").await;
    let family = FamilyId::generate();
    refresh(&f.store, vic.id, family, Duration::from_secs(60)).await;
    f.store.revoke_family(family, now()).await.unwrap();
    let late = NewRefreshToken {
        jti: TokenId::generate(),
        family,
        user_id: vic.id,
        issued_at: now(),
        expires_at: now() + Duration::from_secs(60),
    };
    assert!(
        !RefreshTokenStore::insert(&f.store, late.clone())
            .await
            .unwrap(),
        "a revoked family takes no new token"
    );
    assert_eq!(
        f.store.redeem(late.jti, now()).await.unwrap(),
        Redemption::Rejected
    );
    // Revoking a family leaves the user's other families alone.
    let other = refresh(
        &f.store,
        vic.id,
        FamilyId::generate(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        f.store.redeem(other, now()).await.unwrap(),
        Redemption::Redeemed
    );
}

async fn refresh_token_redeems_once_then_is_reuse(backend: Backend) {
    let f = fixture(backend).await;
    let rita = user(&f.store, "rita").await;
    let family = FamilyId::generate();
    let jti = refresh(&f.store, rita.id, family, Duration::from_secs(60)).await;
    assert_eq!(
        f.store.redeem(jti, now()).await.unwrap(),
        Redemption::Redeemed
    );
    let again = f.store.redeem(jti, now()).await.unwrap();
    assert!(
        matches!(again, Redemption::Reused { family: fa, user_id, used_at }
            if fa == family && user_id == rita.id && now() - used_at < Duration::from_secs(5)),
        "{again:?}"
    );
    assert_eq!(
        f.store.redeem(TokenId::generate(), now()).await.unwrap(),
        Redemption::Rejected
    );
}

async fn racing_redemptions_have_exactly_one_winner(backend: Backend) {
    let f = fixture(backend).await;
    let sam = user(&f.store, "sam").await;
    let jti = refresh(
        &f.store,
        sam.id,
        FamilyId::generate(),
        Duration::from_secs(60),
    )
    .await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = f.store.clone();
            tokio::spawn(async move { store.redeem(jti, now()).await.unwrap() })
        })
        .collect();
    let mut redeemed = 0;
    for t in tasks {
        if t.await.unwrap() == Redemption::Redeemed {
            redeemed += 1;
        }
    }
    assert_eq!(redeemed, 1);
}

/// More sessions than SQLite (32,766) or PostgreSQL (65,535) accepts
/// bound parameters in one statement: revoking them all still works.
async fn a_user_with_tens_of_thousands_of_sessions_can_be_revoked(backend: Backend) {
    let f = fixture(backend).await;
    let uma = user(&f.store, "uma").await;
    let sessions = 40_000;
    for _ in 0..sessions / 1_000 {
        let opens: Vec<_> = (0..1_000)
            .map(|_| {
                let store = f.store.clone();
                let user = uma.id;
                tokio::spawn(async move {
                    store
                        .open_family(FamilyId::generate(), user, now(), SessionOrigin::default())
                        .await
                })
            })
            .collect();
        for opened in opens {
            opened.await.unwrap().unwrap();
        }
    }
    let last = refresh(
        &f.store,
        uma.id,
        FamilyId::generate(),
        Duration::from_secs(60),
    )
    .await;
    let ended = f.store.revoke_user(uma.id, None, now()).await.unwrap();
    assert_eq!(ended.len(), sessions + 1);
    assert_eq!(
        f.store.redeem(last, now()).await.unwrap(),
        Redemption::Rejected
    );
}

async fn revoked_and_expired_refresh_tokens_are_rejected(backend: Backend) {
    let f = fixture(backend).await;
    let tia = user(&f.store, "tia").await;
    let family = FamilyId::generate();
    let a = refresh(&f.store, tia.id, family, Duration::from_secs(60)).await;
    let b = refresh(&f.store, tia.id, family, Duration::from_secs(60)).await;
    let other = refresh(
        &f.store,
        tia.id,
        FamilyId::generate(),
        Duration::from_secs(60),
    )
    .await;
    f.store.revoke_family(family, now()).await.unwrap();
    assert_eq!(
        f.store.redeem(a, now()).await.unwrap(),
        Redemption::Rejected
    );
    assert_eq!(
        f.store.redeem(b, now()).await.unwrap(),
        Redemption::Rejected
    );
    let ended = f.store.revoke_user(tia.id, None, now()).await.unwrap();
    assert_eq!(
        f.store.redeem(other, now()).await.unwrap(),
        Redemption::Rejected
    );
    assert_eq!(ended.len(), 1, "only the family that was still live");
    assert!(
        f.store
            .revoke_user(tia.id, None, now())
            .await
            .unwrap()
            .is_empty(),
        "nothing left to end"
    );
    let expired = refresh(
        &f.store,
        tia.id,
        FamilyId::generate(),
        Duration::from_secs(1),
    )
    .await;
    let later = now() + Duration::from_secs(5);
    assert_eq!(
        f.store.redeem(expired, later).await.unwrap(),
        Redemption::Rejected
    );
}

/// The ids of `user`'s live sessions, in the store's order.
async fn session_ids(store: &SqlStore, user: UserId) -> Vec<FamilyId> {
    store
        .sessions(user, now())
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect()
}

/// A user's live sessions carry where they came from and when they were
/// last used, newest use first; one is ended only by its owner; all but
/// one end at once; what is left of ended sessions is swept after the
/// cut-off, and live ones stay.
async fn sessions_are_listed_ended_one_by_one_or_all_but_one_and_swept(backend: Backend) {
    let f = fixture(backend).await;
    let (vera, walt) = (user(&f.store, "vera").await, user(&f.store, "walt").await);
    let hour = Duration::from_secs(3600);
    let origin = |ua: &str, ip: &str| SessionOrigin::new(Some(ua), ip);
    let (phone, laptop, tablet) = (
        FamilyId::generate(),
        FamilyId::generate(),
        FamilyId::generate(),
    );
    let opened = now() - Duration::from_secs(60);
    for (family, ua) in [
        (phone, "Phone/1"),
        (laptop, "Laptop/2"),
        (tablet, "Tablet/3"),
    ] {
        f.store
            .open_family(family, vera.id, opened, origin(ua, "198.51.100.7"))
            .await
            .unwrap();
    }
    // The laptop refreshes last: it comes first.
    for family in [tablet, phone, laptop] {
        refresh(&f.store, vera.id, family, hour).await;
    }
    let theirs = FamilyId::generate();
    f.store
        .open_family(theirs, walt.id, opened, SessionOrigin::default())
        .await
        .unwrap();
    refresh(&f.store, walt.id, theirs, hour).await;

    let listed = f.store.sessions(vera.id, now()).await.unwrap();
    let ids: Vec<FamilyId> = listed.iter().map(|s| s.id).collect();
    assert_eq!(ids, [laptop, phone, tablet]);
    let first = &listed[0];
    assert_eq!(first.origin.user_agent.as_deref(), Some("Laptop/2"));
    assert_eq!(first.origin.client.as_deref(), Some("198.51.100.7"));
    assert!(first.created_at < first.last_used_at, "{first:?}");
    assert!(first.expires_at > now() + Duration::from_secs(3000));

    // Another user's session is not theirs to end.
    assert!(
        !f.store
            .revoke_session(vera.id, theirs, now())
            .await
            .unwrap()
    );
    assert_eq!(f.store.sessions(walt.id, now()).await.unwrap().len(), 1);
    assert!(
        f.store
            .revoke_session(vera.id, tablet, now())
            .await
            .unwrap()
    );
    assert!(
        !f.store
            .revoke_session(vera.id, tablet, now())
            .await
            .unwrap(),
        "ended once"
    );
    // All but the phone.
    let ended = f
        .store
        .revoke_user(vera.id, Some(phone), now())
        .await
        .unwrap();
    assert_eq!(ended, [laptop]);
    let left: Vec<FamilyId> = session_ids(&f.store, vera.id).await;
    assert_eq!(left, [phone]);

    // A session an older release opened during a rolling deploy has no
    // expiry yet: it is live, and can be ended.
    let older = FamilyId::generate();
    f.db.execute(&format!(
        "INSERT INTO refresh_families (id, user_id, created_at) VALUES ('{older}', '{}', 1)",
        vera.id
    ));
    let listed: Vec<FamilyId> = session_ids(&f.store, vera.id).await;
    assert_eq!(listed, [phone, older]);
    assert!(f.store.revoke_session(vera.id, older, now()).await.unwrap());

    // A sweep now keeps everything (nothing ended before now - 1 day);
    // one after the sessions ended takes what ended and leaves the live.
    assert_eq!(
        f.store
            .sweep(now() - Duration::from_secs(86_400))
            .await
            .unwrap(),
        0
    );
    let swept = f.store.sweep(now() + Duration::from_secs(1)).await.unwrap();
    assert_eq!(swept, 3, "the three ended sessions");
    assert_eq!(f.store.sessions(vera.id, now()).await.unwrap().len(), 1);
    assert_eq!(f.store.sessions(walt.id, now()).await.unwrap().len(), 1);
    // Past their tokens' expiry, the live ones go too.
    let swept = f.store.sweep(now() + hour + hour).await.unwrap();
    assert_eq!(swept, 2);
    assert!(f.store.sessions(vera.id, now()).await.unwrap().is_empty());
}

async fn password_hash_is_replaced(backend: Backend) {
    let f = fixture(backend).await;
    let uma = user(&f.store, "uma").await;
    let (_, first) = f.store.find_credentials("uma").await.unwrap().unwrap();
    let replaced = f
        .store
        .replace_password_hash(uma.id, &first, PasswordHash::new("$new".into()), now())
        .await
        .unwrap();
    assert!(replaced);
    let (_, hash) = f.store.find_credentials("uma").await.unwrap().unwrap();
    assert_eq!(hash.as_str(), "$new");
    // A change made against the hash it had before lands nowhere: of two
    // racing changes, only the first counts.
    let stale = f
        .store
        .replace_password_hash(uma.id, &first, PasswordHash::new("$late".into()), now())
        .await
        .unwrap();
    assert!(!stale);
    let (_, hash) = f.store.find_credentials("uma").await.unwrap().unwrap();
    assert_eq!(hash.as_str(), "$new");
    let unknown = f
        .store
        .replace_password_hash(
            UserId::generate(),
            &hash,
            PasswordHash::new("x".into()),
            now(),
        )
        .await
        .unwrap();
    assert!(!unknown);
}

async fn a_deleted_user_leaves_no_row_and_names_every_conversation(backend: Backend) {
    let f = fixture(backend).await;
    let gone = user(&f.store, "gone").await;
    let kept = user(&f.store, "kept").await;
    let live = conversation(&f.store, gone.id, "live", now()).await;
    let binned = conversation(&f.store, gone.id, "binned", now()).await;
    let theirs = conversation(&f.store, kept.id, "theirs", now()).await;
    for (id, text) in [(live, "zanzibarquux one"), (binned, "zanzibarquux two")] {
        let m = message(id, "m1", MessageRole::User, text);
        MessageStore::insert(&f.store, &m).await.unwrap();
    }
    let m = message(theirs, "m1", MessageRole::User, "zanzibarquux kept");
    MessageStore::insert(&f.store, &m).await.unwrap();
    ConversationStore::soft_delete(&f.store, gone.id, binned, now())
        .await
        .unwrap();
    let query = ConversationQuery {
        search: Some(SearchQuery::parse("zanzibarquux").unwrap()),
        ..query()
    };
    let found = ConversationStore::list(&f.store, kept.id, &query)
        .await
        .unwrap();
    assert_eq!(found.total, 1, "before");
    for owner in [gone.id, kept.id] {
        f.store
            .create_key(
                &api_key(owner, "deploy"),
                ApiKeyDigest::from_trusted("d".repeat(64)),
            )
            .await
            .unwrap();
        let family = FamilyId::generate();
        f.store
            .open_family(family, owner, now(), SessionOrigin::default())
            .await
            .unwrap();
        refresh(&f.store, owner, family, Duration::from_secs(3600)).await;
    }

    let mut deleted = UserStore::delete(&f.store, gone.id)
        .await
        .unwrap()
        .expect("the user existed");
    deleted.sort();
    let mut expected = vec![live, binned];
    expected.sort();
    assert_eq!(deleted, expected, "the deleted conversation is named too");
    let needles = [
        gone.id.to_string(),
        live.to_string(),
        binned.to_string(),
        "gone".to_owned(),
    ];
    assert_eq!(f.db.rows_containing(&needles), Vec::<(String, i64)>::new());
    // The other user keeps everything, searchable as before.
    assert_eq!(all_messages(&f.store, theirs).await.len(), 1);
    assert_eq!(f.store.sessions(kept.id, now()).await.unwrap().len(), 1);
    assert_eq!(f.store.keys(kept.id).await.unwrap().len(), 1);
    let found = ConversationStore::list(&f.store, kept.id, &query)
        .await
        .unwrap();
    assert_eq!(found.total, 1);
    // Again: no such user, nothing done.
    assert_eq!(UserStore::delete(&f.store, gone.id).await.unwrap(), None);
}

async fn usage_is_summed_per_user_day_and_model(backend: Backend) {
    use confab_domain::{AnswerUsage, TokenUsage, UsagePeriod};
    use confab_ports::UsageStore;
    let f = fixture(backend).await;
    let (una, vic) = (user(&f.store, "una").await, user(&f.store, "vic").await);
    let day = |d: u8| {
        time::Date::from_calendar_date(2026, time::Month::December, d)
            .unwrap()
            .with_hms(12, 0, 0)
            .unwrap()
            .assume_utc()
    };
    let model = |m: &str| confab_domain::ModelSlug::parse(m).unwrap();
    let answer = |user: UserId, m: &str, at, tokens| AnswerUsage {
        user,
        model: model(m),
        at,
        tokens,
    };
    for usage in [
        answer(una.id, "big", day(1), TokenUsage::reported(10, 5)),
        answer(una.id, "big", day(1), TokenUsage::estimate(8, 4)),
        answer(una.id, "small", day(1), TokenUsage::reported(1, 1)),
        answer(una.id, "big", day(3), TokenUsage::reported(7, 7)),
        answer(vic.id, "big", day(1), TokenUsage::reported(100, 50)),
    ] {
        f.store.record(&usage).await.unwrap();
    }
    let period = |from: u8, to: u8| {
        UsagePeriod::new(Some(day(from).date()), Some(day(to).date()), day(31).date()).unwrap()
    };
    let lines = f.store.daily(Some(una.id), period(1, 31)).await.unwrap();
    let seen: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l.day.day(),
                l.model.as_str(),
                l.answers,
                l.estimated_answers,
                l.prompt_tokens,
                l.completion_tokens,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "big", 2, 1, 12, 6),
            (1, "small", 1, 0, 1, 1),
            (3, "big", 1, 0, 7, 7)
        ]
    );
    // The period's bounds are inclusive; everyone's is summed.
    assert_eq!(
        f.store
            .daily(Some(una.id), period(2, 3))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        f.store
            .daily(Some(una.id), period(4, 31))
            .await
            .unwrap()
            .is_empty()
    );
    let all = f.store.daily(None, period(1, 1)).await.unwrap();
    let big = all.iter().find(|l| l.model == "big").unwrap();
    assert_eq!(
        (big.answers, big.prompt_tokens, big.completion_tokens),
        (3, 112, 56)
    );
    // A deleted account's usage goes with it, and a late answer of its
    // records nothing.
    UserStore::delete(&f.store, vic.id).await.unwrap();
    f.store
        .record(&answer(vic.id, "big", day(1), TokenUsage::reported(1, 1)))
        .await
        .unwrap();
    let all = f.store.daily(None, period(1, 1)).await.unwrap();
    let big = all.iter().find(|l| l.model == "big").unwrap();
    assert_eq!(big.answers, 2);
    assert!(
        f.store
            .daily(Some(vic.id), period(1, 31))
            .await
            .unwrap()
            .is_empty()
    );
}

/// 300 answers of three users ending at once, one of the users deleted
/// first: every answer of the others is counted once, the deleted user's
/// dropped without failing anyone else's.
async fn usage_recorded_at_once_by_many_answers_is_all_counted(backend: Backend) {
    use confab_domain::{AnswerUsage, TokenUsage, UsagePeriod};
    use confab_ports::UsageStore;
    let f = fixture(backend).await;
    let users = [
        user(&f.store, "wes").await.id,
        user(&f.store, "xia").await.id,
        user(&f.store, "yan").await.id,
    ];
    UserStore::delete(&f.store, users[2]).await.unwrap();
    let at = now();
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let store = f.store.clone();
            let usage = AnswerUsage {
                user: users[i % 3],
                model: confab_domain::ModelSlug::parse(if i % 2 == 0 { "a" } else { "b" }).unwrap(),
                at,
                tokens: TokenUsage::reported(2, 1),
            };
            tokio::spawn(async move { store.record(&usage).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let period = UsagePeriod::new(Some(at.date()), Some(at.date()), at.date()).unwrap();
    for user in &users[..2] {
        let lines = f.store.daily(Some(*user), period).await.unwrap();
        let answers: u64 = lines.iter().map(|l| l.answers).sum();
        let tokens: u64 = lines
            .iter()
            .map(|l| l.prompt_tokens + l.completion_tokens)
            .sum();
        assert_eq!((answers, tokens), (100, 300), "{lines:?}");
    }
    let all = f.store.daily(None, period).await.unwrap();
    assert_eq!(all.iter().map(|l| l.answers).sum::<u64>(), 200);
}

async fn orphaned_generations_are_closed_as_failed_with_their_text(backend: Backend) {
    let f = fixture(backend).await;
    let pat = user(&f.store, "pat").await;
    let id = conversation(&f.store, pat.id, "chat", now()).await;
    let mut orphan = message(id, "a1", MessageRole::Assistant, "half an ans");
    orphan.status = MessageStatus::InProgress;
    MessageStore::insert(&f.store, &orphan).await.unwrap();
    let finished = under(message(id, "a2", MessageRole::Assistant, "done"), &orphan);
    MessageStore::insert(&f.store, &finished).await.unwrap();
    let open = f.store.in_progress(10).await.unwrap();
    assert_eq!(open, vec![(id, orphan.id.clone())]);
    assert!(
        f.store
            .fail_if_in_progress(id, &orphan.id, now())
            .await
            .unwrap()
    );
    let listed = all_messages(&f.store, id).await;
    assert_eq!(listed[0].status, MessageStatus::Failed);
    assert_eq!(listed[0].content.parts(), ["half an ans"]);
    assert_eq!(listed[1].status, MessageStatus::FinishedSuccessfully);
    // Once closed (or when it finished meanwhile) it is left alone.
    assert!(
        !f.store
            .fail_if_in_progress(id, &orphan.id, now())
            .await
            .unwrap()
    );
    assert!(
        !f.store
            .fail_if_in_progress(id, &finished.id, now())
            .await
            .unwrap()
    );
    assert!(f.store.in_progress(10).await.unwrap().is_empty());
}

async fn generated_title_never_overwrites_a_rename(backend: Backend) {
    let f = fixture(backend).await;
    let pat = user(&f.store, "pat").await;
    let eve = user(&f.store, "eve").await;
    let placeholder = Title::placeholder();
    let untitled = conversation(&f.store, pat.id, placeholder.as_str(), now()).await;
    let renamed = conversation(&f.store, pat.id, "Mine", now()).await;
    let generated = Title::parse("Generated").unwrap();
    let set = |owner, id| {
        f.store
            .set_generated_title(owner, id, &placeholder, &generated, now())
    };
    assert!(!set(eve.id, untitled).await.unwrap(), "not someone else's");
    assert!(set(pat.id, untitled).await.unwrap());
    assert!(!set(pat.id, renamed).await.unwrap());
    let titles = |id| ConversationStore::get(&f.store, pat.id, id);
    assert_eq!(titles(untitled).await.unwrap().title.as_str(), "Generated");
    assert_eq!(titles(renamed).await.unwrap().title.as_str(), "Mine");
}

async fn an_answers_final_save_titles_its_conversation_unless_renamed(backend: Backend) {
    let f = fixture(backend).await;
    let pat = user(&f.store, "pat").await;
    let eve = user(&f.store, "eve").await;
    let placeholder = Title::placeholder();
    let generated = Title::parse("Generated").unwrap();
    let (store, placeholder, generated) = (&f.store, &placeholder, &generated);
    // A conversation of `pat` titled `title`, with an answer in progress.
    let with_answer = |title: String| async move {
        let id = conversation(store, pat.id, &title, now()).await;
        let mut answer = message(id, "a1", MessageRole::Assistant, "");
        answer.status = MessageStatus::InProgress;
        MessageStore::insert(store, &answer).await.unwrap();
        (id, answer.id)
    };
    let save = |id, answer: MessageId, owner, text: &'static str| async move {
        let content = Content::text(vec![text.to_owned()]).unwrap();
        let title = TitleIfUntitled {
            owner,
            untitled: placeholder,
            title: generated,
        };
        store
            .update_content_titled(
                id,
                &answer,
                &content,
                MessageStatus::FinishedSuccessfully,
                now(),
                title,
            )
            .await
    };
    let title_of = |id| async move {
        ConversationStore::get(store, pat.id, id)
            .await
            .unwrap()
            .title
    };
    let closed = |id| async move {
        let listed = all_messages(store, id).await;
        (listed[0].status, listed[0].content.parts().to_vec())
    };
    let done = (
        MessageStatus::FinishedSuccessfully,
        vec!["answer".to_owned()],
    );

    // Untitled: the answer is saved and the title given, in one write.
    let (untitled, answer) = with_answer(placeholder.as_str().to_owned()).await;
    assert!(
        save(untitled, answer.clone(), pat.id, "answer")
            .await
            .unwrap()
    );
    assert_eq!(&title_of(untitled).await, generated);
    assert_eq!(closed(untitled).await, done);
    let listed = ConversationStore::list(store, pat.id, &query())
        .await
        .unwrap();
    let summary = listed.items.iter().find(|c| c.id == untitled).unwrap();
    assert_eq!(summary.last_message.as_deref(), Some("answer"));
    // Saved once: a second save finds no answer in progress and changes
    // nothing.
    assert!(matches!(
        save(untitled, answer, pat.id, "again").await,
        Err(DomainError::NotFound)
    ));
    assert_eq!(closed(untitled).await, done);

    // Renamed meanwhile: the rename stands, the answer is saved.
    let (renamed, answer) = with_answer("Mine".to_owned()).await;
    assert!(!save(renamed, answer, pat.id, "answer").await.unwrap());
    assert_eq!(title_of(renamed).await.as_str(), "Mine");
    assert_eq!(closed(renamed).await, done);

    // Someone else's: no title, the answer is saved.
    let (other, answer) = with_answer(placeholder.as_str().to_owned()).await;
    assert!(!save(other, answer, eve.id, "answer").await.unwrap());
    assert_eq!(&title_of(other).await, placeholder);
    assert_eq!(closed(other).await, done);

    // No text yet (no preview to refresh): titled all the same.
    let (empty, answer) = with_answer(placeholder.as_str().to_owned()).await;
    assert!(save(empty, answer, pat.id, "").await.unwrap());
    assert_eq!(&title_of(empty).await, generated);

    // Deleted meanwhile: the answer is closed, nothing is titled.
    let (deleted, answer) = with_answer(placeholder.as_str().to_owned()).await;
    ConversationStore::soft_delete(store, pat.id, deleted, now())
        .await
        .unwrap();
    assert!(!save(deleted, answer, pat.id, "answer").await.unwrap());
    assert_eq!(closed(deleted).await, done);
}

async fn an_answer_in_a_deleted_conversation_can_still_be_closed(backend: Backend) {
    let f = fixture(backend).await;
    let pat = user(&f.store, "pat").await;
    let id = conversation(&f.store, pat.id, "chat", now()).await;
    let mut answer = message(id, "a1", MessageRole::Assistant, "");
    answer.status = MessageStatus::InProgress;
    MessageStore::insert(&f.store, &answer).await.unwrap();
    ConversationStore::soft_delete(&f.store, pat.id, id, now())
        .await
        .unwrap();
    let text = Content::text(vec!["cut short".into()]).unwrap();
    f.store
        .update_content(
            id,
            &answer.id,
            &text,
            MessageStatus::FinishedPartialCompletion,
            now(),
        )
        .await
        .unwrap();
    let listed = all_messages(&f.store, id).await;
    assert_eq!(listed[0].status, MessageStatus::FinishedPartialCompletion);
    assert!(f.store.in_progress(10).await.unwrap().is_empty());
}

async fn an_exchange_is_stored_whole_or_not_at_all(backend: Backend) {
    let f = fixture(backend).await;
    let pat = user(&f.store, "pat").await;
    let id = conversation(&f.store, pat.id, "chat", now()).await;
    let first = message(id, "u1", MessageRole::User, "question");
    MessageStore::insert(&f.store, &first).await.unwrap();
    let question = under(
        message(id, "u2", MessageRole::User, "next question"),
        &first,
    );
    let mut answer = under(message(id, "a2", MessageRole::Assistant, ""), &question);
    answer.status = MessageStatus::InProgress;
    f.store.insert_exchange(&question, &answer).await.unwrap();
    let ids: Vec<String> = all_messages(&f.store, id)
        .await
        .iter()
        .map(|m| m.id.as_str().to_owned())
        .collect();
    assert_eq!(ids, ["u1", "u2", "a2"]);
    let page = ConversationStore::list(&f.store, pat.id, &query())
        .await
        .unwrap();
    assert_eq!(page.items[0].last_message.as_deref(), Some("next question"));
    // A duplicate user message id stores neither message.
    let again = message(id, "u2", MessageRole::User, "dup");
    let other = message(id, "a3", MessageRole::Assistant, "");
    let err = f.store.insert_exchange(&again, &other).await.unwrap_err();
    assert!(matches!(err, DomainError::Duplicate { .. }), "{err:?}");
    assert_eq!(all_messages(&f.store, id).await.len(), 3);
}

fn new_conversation(owner: UserId) -> NewConversation {
    NewConversation {
        id: ConversationId::generate(),
        owner,
        title: Title::placeholder(),
        settings: Default::default(),
        created_at: now(),
    }
}

/// A question and its in-progress answer in `conversation`.
fn exchange(conversation: ConversationId, n: usize) -> (Message, Message) {
    let question = message(
        conversation,
        &format!("u{n}"),
        MessageRole::User,
        "question",
    );
    let mut answer = message(conversation, &format!("a{n}"), MessageRole::Assistant, "");
    answer.status = MessageStatus::InProgress;
    answer.parent_id = Some(question.id.clone());
    (question, answer)
}

async fn a_new_conversation_and_its_exchange_are_stored_together(backend: Backend) {
    let f = fixture(backend).await;
    let pat = user(&f.store, "pat").await;
    let new = new_conversation(pat.id);
    let id = new.id;
    let (question, answer) = exchange(id, 1);
    let created = f
        .store
        .create_with_exchange(new.clone(), &question, &answer)
        .await
        .unwrap();
    assert_eq!((created.id, created.owner), (id, pat.id));
    assert_eq!(
        created.updated_at,
        ConversationStore::get(&f.store, pat.id, id)
            .await
            .unwrap()
            .updated_at
    );
    let stored: Vec<_> = all_messages(&f.store, id)
        .await
        .into_iter()
        .map(|m| (m.id, m.parent_id, m.role, m.content, m.status))
        .collect();
    let sent: Vec<_> = [question, answer]
        .into_iter()
        .map(|m| (m.id, m.parent_id, m.role, m.content, m.status))
        .collect();
    assert_eq!(stored, sent);
    let page = ConversationStore::list(&f.store, pat.id, &query())
        .await
        .unwrap();
    assert_eq!(page.items[0].last_message.as_deref(), Some("question"));

    // The same conversation id again: a duplicate, and its messages are
    // not stored anywhere.
    let (q2, a2) = exchange(id, 2);
    let err = f
        .store
        .create_with_exchange(new, &q2, &a2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DomainError::Duplicate {
                field: Field::ConversationId
            }
        ),
        "{err:?}"
    );
    assert_eq!(all_messages(&f.store, id).await.len(), 2);

    // An owner that does not exist: nothing is stored.
    let ghost = new_conversation(UserId::generate());
    let ghost_id = ghost.id;
    let (q3, a3) = exchange(ghost_id, 3);
    let err = f
        .store
        .create_with_exchange(ghost, &q3, &a3)
        .await
        .unwrap_err();
    assert!(matches!(err, DomainError::NotFound), "{err:?}");
    assert!(all_messages(&f.store, ghost_id).await.is_empty());
}

/// Writes sent at once are committed together (the writer's group), and
/// one that fails inside a group fails alone: every other write of the
/// group is stored, and each caller hears its own outcome.
async fn concurrent_writes_commit_together_and_fail_alone(backend: Backend) {
    let f = fixture(backend).await;
    let pat = user(&f.store, "pat").await;
    let taken = new_conversation(pat.id);
    let (q, a) = exchange(taken.id, 0);
    f.store
        .create_with_exchange(taken.clone(), &q, &a)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 1..=64_usize {
        let store = f.store.clone();
        // Every eighth reuses the taken id and must fail alone.
        let new = if n % 8 == 0 {
            taken.clone()
        } else {
            new_conversation(pat.id)
        };
        tasks.push(tokio::spawn(async move {
            let (q, a) = exchange(new.id, n);
            (n, store.create_with_exchange(new, &q, &a).await)
        }));
    }
    let mut stored = 0;
    for task in tasks {
        let (n, result) = task.await.unwrap();
        if n % 8 == 0 {
            assert!(
                matches!(result, Err(DomainError::Duplicate { .. })),
                "write {n}: {result:?}"
            );
        } else {
            let conversation = result.unwrap();
            let messages = all_messages(&f.store, conversation.id).await;
            assert_eq!(messages.len(), 2, "write {n}");
            stored += 1;
        }
    }
    assert_eq!(stored, 56);
    let page = ConversationStore::list(
        &f.store,
        pat.id,
        &ConversationQuery {
            page: PageRequest::new(0, 100).unwrap(),
            ..query()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.total, 57, "the 56 new ones and the taken one");
    assert_eq!(all_messages(&f.store, taken.id).await.len(), 2);
}

/// The tree migration on a database the release before it wrote: every
/// conversation comes over as one branch (whatever its rows' `parent_id`
/// said), ending at its newest message, and reads as it did.
async fn a_database_of_the_previous_release_comes_over_as_one_branch(backend: Backend) {
    let db = TestDatabase::new(backend);
    assert_eq!(
        db.before_migration("20261204000004"),
        migrations_down_to(backend, "20261204000004")
    );
    let owner = UserId::generate();
    let (long, empty) = (ConversationId::generate(), ConversationId::generate());
    let text = r#"{"content_type":"text","parts":["x"]}"#;
    let mut sql = format!(
        "INSERT INTO users VALUES ('{owner}', 'old', 'old@example.com', 'x', 'user', FALSE, 0, 0); \
         INSERT INTO conversations VALUES ('{long}', '{owner}', 'Old', 'x', FALSE, NULL, 1, 9), \
         ('{empty}', '{owner}', 'Empty', NULL, FALSE, NULL, 1, 1);"
    );
    // Positions 1..=5, stored out of order; the third lost its parent.
    for position in [3_i64, 1, 5, 2, 4] {
        let parent = match position {
            1 | 3 => "NULL".to_owned(),
            p => format!("'m{}'", p - 1),
        };
        let role = if position % 2 == 1 {
            "user"
        } else {
            "assistant"
        };
        sql.push_str(&format!(
            "INSERT INTO messages VALUES ('{long}', 'm{position}', {position}, {parent}, \
             '{role}', '{text}', 'finished_successfully', NULL, '{{}}', {position}, {position});"
        ));
    }
    db.execute(&sql);
    let store = db.store().await;
    let conversation = ConversationStore::get(&store, owner, long).await.unwrap();
    assert_eq!(
        conversation.current_node.as_ref().map(MessageId::as_str),
        Some("m5")
    );
    // No settings of its own: the service's.
    assert_eq!(
        conversation.settings,
        confab_domain::ConversationSettings::default()
    );
    assert_eq!(
        ConversationStore::get(&store, owner, empty)
            .await
            .unwrap()
            .current_node,
        None
    );
    let ids = |page: confab_domain::MessagePage| -> Vec<String> {
        page.messages.iter().map(|m| m.id.to_string()).collect()
    };
    let all = MessageStore::page(&store, long, None, 100).await.unwrap();
    assert!(!all.has_more);
    assert_eq!(
        all.messages[2].parent_id.as_ref().map(MessageId::as_str),
        Some("m2")
    );
    assert_eq!(ids(all), ["m1", "m2", "m3", "m4", "m5"]);
    let m3 = MessageId::parse("m3").unwrap();
    let older = MessageStore::page(&store, long, Some(&m3), 100)
        .await
        .unwrap();
    assert_eq!(ids(older), ["m1", "m2"]);
    assert!(
        MessageStore::page(&store, empty, None, 100)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

/// Edits and regenerations are siblings: the history is the one branch from
/// the root to the current node, which every insert moves, and `before`
/// pages up the ancestors of a message on any branch.
async fn a_history_is_the_branch_that_ends_at_the_current_node(backend: Backend) {
    let f = fixture(backend).await;
    let ida = user(&f.store, "ida").await;
    let id = conversation(&f.store, ida.id, "tree", now()).await;
    let m = |mid: &str, role| message(id, mid, role, mid);
    let (user_role, bot) = (MessageRole::User, MessageRole::Assistant);
    let u1 = m("u1", user_role);
    let a1 = under(m("a1", bot), &u1);
    let u2 = under(m("u2", user_role), &a1);
    let a2 = under(m("a2", bot), &u2);
    for message in [&u1, &a1] {
        MessageStore::insert(&f.store, message).await.unwrap();
    }
    f.store.insert_exchange(&u2, &a2).await.unwrap();
    // An edit of the second question: a sibling of u2, and its answer.
    let u2b = under(m("u2b", user_role), &a1);
    let a2b = under(m("a2b", bot), &u2b);
    f.store.insert_exchange(&u2b, &a2b).await.unwrap();
    let ids = |page: confab_domain::MessagePage| -> (Vec<String>, bool) {
        (
            page.messages.iter().map(|m| m.id.to_string()).collect(),
            page.has_more,
        )
    };
    let page = |before: Option<&Message>, limit| {
        let before = before.map(|m| m.id.clone());
        let store = &f.store;
        async move {
            ids(MessageStore::page(store, id, before.as_ref(), limit)
                .await
                .unwrap())
        }
    };
    let current = ConversationStore::get(&f.store, ida.id, id).await.unwrap();
    assert_eq!(current.current_node, Some(a2b.id.clone()));
    assert_eq!(
        page(None, 10).await,
        (
            vec!["u1".into(), "a1".into(), "u2b".into(), "a2b".into()],
            false
        )
    );
    assert_eq!(
        page(Some(&a2b), 10).await,
        (vec!["u1".into(), "a1".into(), "u2b".into()], false)
    );
    // The older branch is still there, above its own messages.
    assert_eq!(
        page(Some(&a2), 10).await,
        (vec!["u1".into(), "a1".into(), "u2".into()], false)
    );
    // A regeneration on the older branch moves the current node to it.
    let a2c = under(m("a2c", bot), &u2);
    MessageStore::insert(&f.store, &a2c).await.unwrap();
    assert_eq!(page(None, 2).await, (vec!["u2".into(), "a2c".into()], true));
    assert_eq!(
        page(Some(&u2), 2).await,
        (vec!["u1".into(), "a1".into()], false)
    );
    assert_eq!(page(None, 10).await.0, ["u1", "a1", "u2", "a2c"]);
}

async fn only_an_answer_that_stopped_early_is_reopened(backend: Backend) {
    let f = fixture(backend).await;
    let rei = user(&f.store, "rei").await;
    let id = conversation(&f.store, rei.id, "continued", now()).await;
    let m = |mid: &str, role| message(id, mid, role, mid);
    let (user_role, bot) = (MessageRole::User, MessageRole::Assistant);
    let u1 = m("u1", user_role);
    let mut a1 = under(m("a1", bot), &u1);
    a1.status = MessageStatus::FinishedPartialCompletion;
    let u2 = under(m("u2", user_role), &a1);
    let a2 = under(m("a2", bot), &u2);
    f.store.insert_exchange(&u1, &a1).await.unwrap();
    f.store.insert_exchange(&u2, &a2).await.unwrap();
    let at = now();
    // Not an answer, finished, or no message: nothing changes.
    for other in [&u1, &a2] {
        assert!(!f.store.reopen(id, &other.id, at).await.unwrap());
    }
    let unknown = MessageId::parse("nope").unwrap();
    assert!(!f.store.reopen(id, &unknown, at).await.unwrap());
    let node = |c: confab_domain::Conversation| c.current_node.map(|n| n.to_string());
    let read = ConversationStore::get(&f.store, rei.id, id).await.unwrap();
    assert_eq!(node(read), Some("a2".into()));
    // The one that stopped: in progress again, with its text, and the
    // current node; once only.
    assert!(f.store.reopen(id, &a1.id, at).await.unwrap());
    let found = f.store.find(id, &a1.id).await.unwrap().unwrap();
    assert_eq!(found.status, MessageStatus::InProgress);
    assert_eq!(found.content, a1.content);
    let read = ConversationStore::get(&f.store, rei.id, id).await.unwrap();
    assert_eq!(node(read), Some("a1".into()));
    assert!(!f.store.reopen(id, &a1.id, at).await.unwrap());
    // In a deleted conversation: NotFound, and nothing is reopened.
    let mut a3 = under(m("a3", bot), &u2);
    a3.status = MessageStatus::FinishedPartialCompletion;
    MessageStore::insert(&f.store, &a3).await.unwrap();
    ConversationStore::soft_delete(&f.store, rei.id, id, now())
        .await
        .unwrap();
    assert!(matches!(
        f.store.reopen(id, &a3.id, at).await,
        Err(DomainError::NotFound)
    ));
    let found = f.store.find(id, &a3.id).await.unwrap().unwrap();
    assert_eq!(found.status, MessageStatus::FinishedPartialCompletion);
}

async fn a_conversations_settings_are_stored_changed_and_cleared(backend: Backend) {
    use confab_domain::{ConversationSettings, SystemPrompt};
    let f = fixture(backend).await;
    let sam = user(&f.store, "sam").await;
    let settings = ConversationSettings {
        system_prompt: Some(SystemPrompt::parse(" Be brief.\n🚀 ").unwrap()),
        model: Some(ModelSlug::parse("other-model").unwrap()),
    };
    let new = NewConversation {
        settings: settings.clone(),
        ..new_conversation(sam.id)
    };
    let id = new.id;
    let created = ConversationStore::create(&f.store, new).await.unwrap();
    assert_eq!(created.settings, settings);
    let read = ConversationStore::get(&f.store, sam.id, id).await.unwrap();
    assert_eq!(read.settings, settings, "kept as written");
    // A list still reads (without them).
    let listed = ConversationStore::list(&f.store, sam.id, &ConversationQuery::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    // Changed; then one cleared, the other left alone.
    let patch = ConversationPatch {
        system_prompt: Some(Some(SystemPrompt::parse("Be thorough.").unwrap())),
        ..ConversationPatch::default()
    };
    let changed = ConversationStore::update(&f.store, sam.id, id, patch, now())
        .await
        .unwrap();
    assert_eq!(
        changed
            .settings
            .system_prompt
            .as_ref()
            .map(SystemPrompt::as_str),
        Some("Be thorough.")
    );
    assert_eq!(changed.settings.model, settings.model);
    let patch = ConversationPatch {
        model: Some(None),
        ..ConversationPatch::default()
    };
    let cleared = ConversationStore::update(&f.store, sam.id, id, patch, now())
        .await
        .unwrap();
    assert_eq!(cleared.settings.model, None);
    assert!(cleared.settings.system_prompt.is_some());
    let read = ConversationStore::get(&f.store, sam.id, id).await.unwrap();
    assert_eq!(read.settings, cleared.settings);
}

async fn all_of_an_owners_conversations_are_listed_by_id_and_deleted_at_once(backend: Backend) {
    let f = fixture(backend).await;
    let (ann, bob) = (user(&f.store, "ann").await, user(&f.store, "bob").await);
    let base = now();
    let mut anns = Vec::new();
    for n in 0..3 {
        let at = base + Duration::from_secs(n);
        anns.push(conversation(&f.store, ann.id, "mine", at).await);
    }
    let bobs = conversation(&f.store, bob.id, "his", base).await;
    let gone = conversation(&f.store, ann.id, "deleted", base).await;
    ConversationStore::soft_delete(&f.store, ann.id, gone, now())
        .await
        .unwrap();
    let archive = ConversationPatch {
        is_archived: Some(true),
        ..ConversationPatch::default()
    };
    ConversationStore::update(&f.store, ann.id, anns[0], archive, now())
        .await
        .unwrap();
    // Newest first, archived included, deleted and foreign left out.
    let ids = ConversationStore::ids(&f.store, ann.id).await.unwrap();
    assert_eq!(ids, [anns[2], anns[1], anns[0]]);
    let mut deleted = ConversationStore::soft_delete_all(&f.store, ann.id, now())
        .await
        .unwrap();
    deleted.sort();
    let mut expected = anns.clone();
    expected.sort();
    assert_eq!(deleted, expected);
    assert!(
        ConversationStore::ids(&f.store, ann.id)
            .await
            .unwrap()
            .is_empty()
    );
    for id in &anns {
        assert!(matches!(
            ConversationStore::get(&f.store, ann.id, *id).await,
            Err(DomainError::NotFound)
        ));
    }
    assert!(
        ConversationStore::soft_delete_all(&f.store, ann.id, now())
            .await
            .unwrap()
            .is_empty()
    );
    ConversationStore::get(&f.store, bob.id, bobs)
        .await
        .unwrap();
}

fn api_key(owner: UserId, name: &str) -> ApiKey {
    ApiKey {
        id: ApiKeyId::generate(),
        user_id: owner,
        name: ApiKeyName::parse(name).unwrap(),
        scopes: Scopes::parse(&["conversations:read", "models:read"]).unwrap(),
        // Whole microseconds: what the database keeps.
        created_at: OffsetDateTime::from_unix_timestamp(now().unix_timestamp()).unwrap(),
        expires_at: None,
        last_used_at: None,
    }
}

async fn api_keys_are_kept_per_owner_bounded_and_swept(backend: Backend) {
    let f = fixture(backend).await;
    let owner = user(&f.store, "keyholder").await;
    let other = user(&f.store, "bystander").await;
    let digest = ApiKeyDigest::from_trusted("ab".repeat(32));
    let mut first = api_key(owner.id, "ci");
    first.expires_at = Some(first.created_at + Duration::from_secs(3600));
    assert_eq!(
        f.store.create_key(&first, digest.clone()).await.unwrap(),
        KeyCreation::Created
    );
    assert_eq!(
        f.store.find_key(first.id).await.unwrap(),
        Some(StoredKey {
            key: first.clone(),
            digest: digest.clone()
        })
    );
    // The name is the owner's: taken for them, free for anyone else.
    assert_eq!(
        f.store
            .create_key(&api_key(owner.id, "ci"), digest.clone())
            .await
            .unwrap(),
        KeyCreation::NameTaken
    );
    assert_eq!(
        f.store
            .create_key(&api_key(other.id, "ci"), digest.clone())
            .await
            .unwrap(),
        KeyCreation::Created
    );
    assert!(
        matches!(
            f.store
                .create_key(&api_key(UserId::generate(), "ci"), digest.clone())
                .await,
            Err(DomainError::NotFound)
        ),
        "no such owner"
    );
    let mut later = api_key(owner.id, "later");
    later.created_at += Duration::from_secs(1);
    f.store.create_key(&later, digest.clone()).await.unwrap();
    let listed: Vec<ApiKeyId> = f
        .store
        .keys(owner.id)
        .await
        .unwrap()
        .iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(
        listed,
        [later.id, first.id],
        "newest first, the owner's only"
    );

    // Last use moves forward only.
    let used = first.created_at + Duration::from_secs(60);
    f.store.touch_key(first.id, used).await.unwrap();
    f.store.touch_key(first.id, first.created_at).await.unwrap();
    let found = f.store.find_key(first.id).await.unwrap().unwrap();
    assert_eq!(found.key.last_used_at, Some(used));

    // Only the owner deletes it.
    assert!(!f.store.delete_key(other.id, first.id).await.unwrap());
    assert!(f.store.delete_key(owner.id, first.id).await.unwrap());
    assert!(!f.store.delete_key(owner.id, first.id).await.unwrap());
    assert_eq!(f.store.find_key(first.id).await.unwrap(), None);

    // The bound counts every key the owner has.
    for n in 1..ApiKey::MAX_PER_USER {
        let created = f
            .store
            .create_key(&api_key(owner.id, &format!("k{n}")), digest.clone())
            .await;
        assert_eq!(created.unwrap(), KeyCreation::Created, "key {n}");
    }
    assert_eq!(
        f.store
            .create_key(&api_key(owner.id, "one more"), digest.clone())
            .await
            .unwrap(),
        KeyCreation::TooMany
    );

    // Sweeping goes by expiry: a key without one stays.
    let mut expired = api_key(other.id, "expired");
    expired.expires_at = Some(expired.created_at - Duration::from_secs(10));
    f.store.create_key(&expired, digest.clone()).await.unwrap();
    assert_eq!(f.store.sweep_keys(now()).await.unwrap(), 1);
    assert_eq!(f.store.find_key(expired.id).await.unwrap(), None);
    assert_eq!(f.store.keys(other.id).await.unwrap().len(), 1);
}

async fn racing_key_creations_never_pass_the_bound(backend: Backend) {
    let f = fixture(backend).await;
    let owner = user(&f.store, "racer").await;
    let digest = ApiKeyDigest::from_trusted("cd".repeat(32));
    let tasks: Vec<_> = (0..ApiKey::MAX_PER_USER + 15)
        .map(|n| {
            let store = f.store.clone();
            let digest = digest.clone();
            // Every fifth name twice.
            let name = format!("k{}", if n % 5 == 0 { n + 1 } else { n });
            tokio::spawn(async move { store.create_key(&api_key(owner.id, &name), digest).await })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == KeyCreation::Created {
            created += 1;
        }
    }
    let keys = f.store.keys(owner.id).await.unwrap();
    assert_eq!(keys.len(), created);
    assert_eq!(created, ApiKey::MAX_PER_USER);
    let mut names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), keys.len(), "no name twice");
}
