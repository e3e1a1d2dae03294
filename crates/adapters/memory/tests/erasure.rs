//! A deleted account's entries are forgotten by every in-process store
//! (its cache entries and version counters, idempotency records, failure
//! counts, answer logs, account version), and no one else's are.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use confab_domain::{
    ConversationId, DomainError, FamilyId, MessageId, OffsetDateTime, Page, PageRequest, Role,
    TokenId, UserId,
};
use confab_memory::{
    IdempotencyLimits, InMemoryBlocklist, InMemoryFailures, InMemoryIdempotency, MemoryCache,
    MemoryStreamLog, StreamLogOptions,
};
use confab_ports::{
    AccessClaims, Cache, CachedValue, Erasure, ErasureTargets, FailureCounter, IdempotencyStore,
    StreamLog, TokenBlocklist,
};

fn list() -> CachedValue {
    CachedValue::ConversationList(Page {
        items: Vec::new(),
        total: 0,
        request: PageRequest::new(0, 20).unwrap(),
    })
}

#[tokio::test]
async fn every_store_forgets_the_deleted_users_entries_only() {
    let (gone, kept) = (UserId::generate(), UserId::generate());
    let (theirs, others) = (ConversationId::generate(), ConversationId::generate());
    let targets = ErasureTargets::new(gone, &["gone"], &[theirs]);
    let minute = Duration::from_secs(60);

    let cache = MemoryCache::new(1_000, 1 << 20);
    for key in [
        format!("user:{gone}:conversation_list"),
        format!("conv:{theirs}:history"),
        format!("user:{kept}:conversation_list"),
        format!("conv:{others}:history"),
    ] {
        cache.bump(&key).await.unwrap();
        let version = cache.version(&key).await.unwrap();
        cache
            .put(&format!("{key}:{version}"), list(), minute)
            .await
            .unwrap();
    }
    assert_eq!(cache.len(), 8);
    assert_eq!(cache.erase(&targets).await.unwrap(), 4);
    assert_eq!(cache.len(), 4);
    let key = format!("user:{kept}:conversation_list");
    let version = cache.version(&key).await.unwrap();
    assert!(
        cache
            .get(&format!("{key}:{version}"))
            .await
            .unwrap()
            .is_some()
    );

    let idempotency = InMemoryIdempotency::new(IdempotencyLimits {
        max_entries: 100,
        max_bytes: 1 << 20,
        max_per_owner: 10,
    });
    for (owner, key) in [(gone, "a"), (gone, "b"), (kept, "a")] {
        idempotency
            .claim(&owner.to_string(), key, "print", minute)
            .await
            .unwrap();
    }
    assert_eq!(idempotency.erase(&targets).await.unwrap(), 2);
    assert_eq!(idempotency.len(), 1);

    let failures = InMemoryFailures::new(100);
    let keys = |user: UserId| {
        [
            format!("login:user:{user}"),
            format!("login:user:{user}:from:10.0.0.1"),
        ]
    };
    failures.record(&keys(gone), minute).await.unwrap();
    failures.record(&keys(kept), minute).await.unwrap();
    // Failed logins typed with the name before the account existed.
    let typed = ["login:name:gone".to_owned()];
    failures.record(&typed, minute).await.unwrap();
    assert_eq!(failures.erase(&targets).await.unwrap(), 3);
    let counts = failures.counts(&keys(gone)).await.unwrap();
    assert!(counts.iter().all(|c| c.failures == 0));
    let counts = failures.counts(&keys(kept)).await.unwrap();
    assert!(counts.iter().all(|c| c.failures == 1));

    let log = MemoryStreamLog::new(StreamLogOptions {
        retention: minute,
        max_events_per_log: 100,
        max_logs: 10,
    });
    let message = MessageId::parse("answer").unwrap();
    for conversation in [theirs, others] {
        log.open(conversation, &message).await.unwrap();
        log.close(conversation).await.unwrap();
    }
    assert_eq!(log.erase(&targets).await.unwrap(), 1);
    assert!(matches!(
        log.current(theirs).await,
        Err(DomainError::NotFound)
    ));
    assert!(log.current(others).await.is_ok());

    let blocklist = InMemoryBlocklist::new();
    let claims = |user: UserId| AccessClaims {
        user_id: user,
        role: Role::User,
        jti: TokenId::generate(),
        family: FamilyId::generate(),
        issued_at: OffsetDateTime::now_utc(),
        expires_at: OffsetDateTime::now_utc() + minute,
        api_key: None,
    };
    blocklist.user_changed(gone).await.unwrap();
    blocklist.user_changed(kept).await.unwrap();
    assert_eq!(blocklist.erase(&targets).await.unwrap(), 1);
    assert_eq!(
        blocklist
            .standing(&claims(gone))
            .await
            .unwrap()
            .user_version,
        0
    );
    assert_ne!(
        blocklist
            .standing(&claims(kept))
            .await
            .unwrap()
            .user_version,
        0
    );
}
