//! What every [`Cache`] promises: values are found as they were stored
//! until their TTL runs out, and version counters are stable until bumped,
//! then only grow.

use std::time::Duration;

use confab_domain::{
    Content, Conversation, ConversationId, ConversationSummary, Message, MessageId,
    MessageMetadata, MessagePage, MessageRole, MessageStatus, ModelSlug, OffsetDateTime, Page,
    PageRequest, SearchHit, SearchQuery, Title, UserId,
};
use confab_ports::{Cache, CachedValue};

use super::eventually;

const MINUTE: Duration = Duration::from_secs(60);

/// A time with nanoseconds, so a lossy encoding would show.
fn at(nanos: i128) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(nanos).expect("a valid time")
}

fn title(text: &str) -> Title {
    Title::parse(text).expect("a valid title")
}

fn message_id(id: &str) -> MessageId {
    MessageId::parse(id).expect("a valid message id")
}

/// A page of a conversation list with every field set, non-ASCII text and
/// times with nanoseconds: a value a lossy encoding would not give back.
#[must_use]
pub fn sample_list() -> CachedValue {
    let summary =
        |title_text: &str, last: Option<&str>, archived: bool, t: i128| ConversationSummary {
            id: ConversationId::generate(),
            title: title(title_text),
            last_message: last.map(str::to_owned),
            is_archived: archived,
            created_at: at(t),
            updated_at: at(t + 86_400_123_456_789),
            hit: None,
        };
    let found = |mut summary: ConversationSummary, message: Option<&str>, text: &str| {
        let search = SearchQuery::parse("plan ☕").expect("a valid search");
        summary.hit = Some(SearchHit {
            message_id: message.map(message_id),
            snippet: search.snippet(text),
        });
        summary
    };
    CachedValue::ConversationList(Page {
        items: vec![
            found(
                summary("Plan ☕", None, false, 1_733_000_000_000_000_007),
                Some("msg_7"),
                "A plan — café ☕ planning, with 日本語 around it",
            ),
            found(
                summary("Planned", Some("x"), false, 1_733_000_000_000_000_008),
                None,
                "Planned",
            ),
            summary(
                "Quarterly plan",
                Some("Let's go over the numbers"),
                false,
                1_732_000_000_123_456_789,
            ),
            summary(
                "Café ☕ — 日本語のメモ",
                Some("どうぞ 🎉"),
                true,
                1_731_000_000_000_000_001,
            ),
            summary("New chat", None, false, 1_730_000_000_999_999_999),
        ],
        total: 42,
        request: PageRequest::new(20, 3).expect("a valid page request"),
    })
}

/// One message of [`history`]'s conversation.
struct Draft<'a> {
    id: &'a str,
    parent: Option<&'a str>,
    role: MessageRole,
    parts: &'a [&'a str],
    status: MessageStatus,
    model: Option<&'a str>,
    metadata: MessageMetadata,
    t: i128,
}

impl Draft<'_> {
    fn build(self, conversation: ConversationId) -> Message {
        Message {
            id: message_id(self.id),
            conversation_id: conversation,
            parent_id: self.parent.map(message_id),
            role: self.role,
            content: Content::text(self.parts.iter().map(|p| (*p).to_owned()).collect())
                .expect("valid content"),
            status: self.status,
            model_slug: self
                .model
                .map(|m| ModelSlug::parse(m).expect("a valid model slug")),
            metadata: self.metadata,
            created_at: at(self.t),
            updated_at: at(self.t + 1_500),
        }
    }
}

/// A conversation and its messages: every role and status, metadata of
/// every JSON type, text that needs escaping, an empty message. A value a
/// lossy encoding would not give back.
#[must_use]
pub fn sample_history() -> CachedValue {
    let (conversation, messages) = history();
    CachedValue::History(
        Box::new(conversation),
        MessagePage {
            children: children(&messages),
            messages,
            has_more: true,
        },
    )
}

/// Children groups over `messages`' ids (the round trip doesn't check them
/// against the messages): one under a parent, one of first messages.
fn children(messages: &[Message]) -> Vec<confab_domain::Children> {
    let ids: Vec<MessageId> = messages.iter().map(|m| m.id.clone()).collect();
    vec![
        confab_domain::Children {
            parent: ids.first().cloned(),
            ids: ids.iter().skip(1).cloned().collect(),
        },
        confab_domain::Children {
            parent: None,
            ids: ids.iter().take(2).cloned().collect(),
        },
    ]
}

/// [`sample_history`]'s conversation and messages.
fn history() -> (Conversation, Vec<Message>) {
    let conversation = Conversation {
        id: ConversationId::generate(),
        owner: UserId::generate(),
        title: title("Redis caching 🚀 strategies"),
        is_archived: true,
        current_node: Some(MessageId::parse("msg_a2").expect("message id")),
        settings: confab_domain::ConversationSettings {
            system_prompt: Some(
                confab_domain::SystemPrompt::parse("  Answer as a pirate.\n\"Arr\" 🚀 ")
                    .expect("a system prompt"),
            ),
            model: Some(ModelSlug::parse("gpt-4o-mini").expect("a model")),
        },
        deleted_at: None,
        created_at: at(1_732_000_000_000_000_007),
        updated_at: at(1_732_000_999_123_456_789),
    };
    let mut metadata = MessageMetadata::new();
    metadata.insert("finish_reason".into(), "length".into());
    metadata.insert("tokens".into(), 2048.into());
    metadata.insert(
        "nested".into(),
        serde_json::json!({"list": [1, "two", null, true], "ratio": 0.25}),
    );
    let generated = MessageId::generate().to_string();
    let drafts = [
        Draft {
            id: "msg_001",
            parent: None,
            role: MessageRole::System,
            parts: &["You are a helpful assistant."],
            status: MessageStatus::FinishedSuccessfully,
            model: None,
            metadata: MessageMetadata::new(),
            t: 1_732_000_000_000_000_100,
        },
        Draft {
            id: "msg_002",
            parent: Some("msg_001"),
            role: MessageRole::User,
            parts: &["Explique-moi le cache Redis, s'il te plaît 🙏 «vite»"],
            status: MessageStatus::FinishedSuccessfully,
            model: None,
            metadata: MessageMetadata::new(),
            t: 1_732_000_000_000_000_200,
        },
        Draft {
            id: &generated,
            parent: Some("msg_002"),
            role: MessageRole::Assistant,
            parts: &[
                "Bien sûr ! Redis garde les données en mémoire…\n\n",
                "第二部分 👍",
            ],
            status: MessageStatus::FinishedPartialCompletion,
            model: Some("llama3.1:8b"),
            metadata,
            t: 1_732_000_000_000_000_300,
        },
        Draft {
            id: "tool-call_1",
            parent: Some("msg_002"),
            role: MessageRole::Tool,
            parts: &[
                "{\"error\": \"timeout\"}",
                "",
                "\"quoted\" \\ backslash \t tab",
            ],
            status: MessageStatus::Failed,
            model: None,
            metadata: MessageMetadata::new(),
            t: 1_732_000_000_000_000_400,
        },
    ];
    let mut messages: Vec<Message> = drafts
        .into_iter()
        .map(|draft| draft.build(conversation.id))
        .collect();
    messages.push(Message {
        content: Content::empty_text(),
        ..Draft {
            id: "msg_005",
            parent: Some("tool-call_1"),
            role: MessageRole::Assistant,
            parts: &["x"],
            status: MessageStatus::InProgress,
            model: Some("org/model-v2"),
            metadata: MessageMetadata::new(),
            t: 1_732_000_000_000_000_500,
        }
        .build(conversation.id)
    });
    (conversation, messages)
}

/// A key never stored is a miss, and so is a key that only names a version
/// counter: values and counters do not share a namespace.
pub async fn a_missing_key_is_none(cache: &dyn Cache) {
    assert_eq!(cache.get("never-stored").await.expect("get"), None);
    cache.version("k").await.expect("version");
    assert_eq!(cache.get("k").await.expect("get"), None);
}

/// A conversation list comes back equal to what was stored, and a second
/// put under the same key replaces it.
pub async fn a_conversation_list_round_trips(cache: &dyn Cache) {
    let value = sample_list();
    cache
        .put("list:u1:p1", value.clone(), MINUTE)
        .await
        .expect("put");
    assert_eq!(cache.get("list:u1:p1").await.expect("get"), Some(value));

    let empty = CachedValue::ConversationList(Page {
        items: Vec::new(),
        total: 0,
        request: PageRequest::default(),
    });
    cache
        .put("list:u1:p1", empty.clone(), MINUTE)
        .await
        .expect("put");
    assert_eq!(
        cache.get("list:u1:p1").await.expect("get"),
        Some(empty),
        "a second put replaces the value"
    );
}

/// A conversation with its messages comes back equal to what was stored,
/// and so does a soft-deleted one without messages.
pub async fn a_history_round_trips(cache: &dyn Cache) {
    let (conversation, messages) = history();
    let value = CachedValue::History(
        Box::new(conversation.clone()),
        MessagePage {
            children: children(&messages),
            messages,
            has_more: true,
        },
    );
    cache
        .put("history:c1", value.clone(), MINUTE)
        .await
        .expect("put");
    assert_eq!(cache.get("history:c1").await.expect("get"), Some(value));

    let deleted = CachedValue::History(
        Box::new(Conversation {
            deleted_at: Some(at(1_732_100_000_000_000_001)),
            ..conversation
        }),
        MessagePage::default(),
    );
    cache
        .put("history:c2", deleted.clone(), MINUTE)
        .await
        .expect("put");
    assert_eq!(cache.get("history:c2").await.expect("get"), Some(deleted));
}

/// A value is found until its TTL runs out, then it is a miss; values with
/// a longer TTL are still found.
pub async fn entries_expire_after_their_ttl(cache: &dyn Cache) {
    cache
        .put("short", sample_list(), Duration::from_secs(1))
        .await
        .expect("put");
    cache.put("long", sample_list(), MINUTE).await.expect("put");
    assert!(cache.get("short").await.expect("get").is_some());
    eventually("a 1 s entry expires", async || {
        cache.get("short").await.expect("get").is_none()
    })
    .await;
    assert!(cache.get("long").await.expect("get").is_some());
}

/// A zero TTL stores nothing (the value would never be found); a TTL too
/// long to add to the clock, or shorter than the backend counts, is
/// accepted, and a later put replaces the TTL along with the value.
pub async fn a_zero_ttl_stores_nothing_and_a_huge_one_is_honoured(cache: &dyn Cache) {
    cache
        .put("zero", sample_list(), Duration::ZERO)
        .await
        .expect("put");
    assert_eq!(cache.get("zero").await.expect("get"), None);

    let value = sample_list();
    cache
        .put("huge", value.clone(), Duration::MAX)
        .await
        .expect("a TTL too long is cut, never an error");
    assert_eq!(cache.get("huge").await.expect("get"), Some(value));
    // Replaced with a short TTL, it expires (and is not left on a shared
    // backend for a year).
    cache
        .put("huge", sample_list(), Duration::from_millis(1))
        .await
        .expect("put");
    eventually("the replaced TTL runs out", async || {
        cache.get("huge").await.expect("get").is_none()
    })
    .await;

    cache
        .put("tiny", sample_list(), Duration::from_micros(1))
        .await
        .expect("a TTL below a millisecond is accepted");
}

/// A version is above zero and stable until bumped; each bump makes it
/// grow; a bump of a counter never read creates it; counters are
/// independent.
pub async fn versions_are_stable_until_bumped_then_grow(cache: &dyn Cache) {
    let v1 = cache.version("k").await.expect("version");
    assert!(v1 > 0);
    assert_eq!(cache.version("k").await.expect("version"), v1, "stable");
    let mut last = v1;
    for _ in 0..50 {
        cache.bump("k").await.expect("bump");
        let v = cache.version("k").await.expect("version");
        assert!(v > last, "{v} after {last}");
        last = v;
    }
    assert_eq!(cache.version("k").await.expect("version"), last);

    cache.bump("fresh").await.expect("bump");
    assert!(cache.version("fresh").await.expect("version") > 0);

    let other = cache.version("other").await.expect("version");
    cache.bump("k").await.expect("bump");
    assert_eq!(cache.version("other").await.expect("version"), other);
}

/// `bump_all` bumps every key it is given (counters read before or never
/// read) and no other; an empty list does nothing.
pub async fn bump_all_moves_every_key_given(cache: &dyn Cache) {
    let a = cache.version("a").await.expect("version");
    let b = cache.version("b").await.expect("version");
    let untouched = cache.version("c").await.expect("version");
    cache
        .bump_all(&["a".to_owned(), "b".to_owned(), "new".to_owned()])
        .await
        .expect("bump_all");
    assert!(cache.version("a").await.expect("version") > a);
    assert!(cache.version("b").await.expect("version") > b);
    assert!(cache.version("new").await.expect("version") > 0);
    assert_eq!(cache.version("c").await.expect("version"), untouched);

    let a = cache.version("a").await.expect("version");
    cache.bump_all(&[]).await.expect("an empty bump_all");
    assert_eq!(cache.version("a").await.expect("version"), a);
}
