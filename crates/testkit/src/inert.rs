//! A double for the ports a test must fill to build a state but never
//! means to exercise (the HTTP layer's middleware tests build a whole
//! `HttpState` to serve handlers of their own).

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::{
    ApiKey, ApiKeyDigest, ApiKeyId, ConversationId, DomainError, FamilyId, MessageId,
    OffsetDateTime, Password, PasswordHash, Role, TokenId, UserId, WireEvent,
};
use confab_ports::{
    AccessClaims, ApiKeySecrets, ApiKeyStore, Cache, CachedValue, Claim, EventFeed, FailureCount,
    FailureCounter, IdempotencyStore, IssuedToken, KeyCreation, LogHead, PasswordHasher,
    RateDecision, RateLimiter, RatePolicy, ReadFrom, RefreshClaims, ResumeClaims, ResumeTokenCodec,
    Standing, StopSignal, StoredKey, StoredOutcome, StreamLog, TokenBlocklist, TokenCodec,
    TokenRejection, Verification,
};

/// The access token lifetime [`Inert`] reports.
const ACCESS_TTL: Duration = Duration::from_secs(900);

/// Does nothing and lets everything through: it hashes no password and
/// matches none, issues no token and accepts none, blocks no token, limits
/// no request, counts no failure, remembers no idempotency key or API key, caches nothing (every read
/// misses) and opens no stream log (a send fails as unavailable).
#[derive(Debug, Clone, Copy, Default)]
pub struct Inert;

impl ApiKeySecrets for Inert {
    fn mint(&self) -> Result<String, DomainError> {
        Err(DomainError::internal("the inert double mints no key"))
    }

    fn digest(&self, _: &str) -> ApiKeyDigest {
        ApiKeyDigest::from_trusted(String::new())
    }

    fn matches(&self, _: &str, _: &ApiKeyDigest) -> bool {
        false
    }
}

#[async_trait]
impl ApiKeyStore for Inert {
    async fn create_key(&self, _: &ApiKey, _: ApiKeyDigest) -> Result<KeyCreation, DomainError> {
        Err(DomainError::Unavailable(
            "the inert double keeps no key".into(),
        ))
    }

    async fn keys(&self, _: UserId) -> Result<Vec<ApiKey>, DomainError> {
        Ok(Vec::new())
    }

    async fn find_key(&self, _: ApiKeyId) -> Result<Option<StoredKey>, DomainError> {
        Ok(None)
    }

    async fn delete_key(&self, _: UserId, _: ApiKeyId) -> Result<bool, DomainError> {
        Ok(false)
    }

    async fn touch_key(&self, _: ApiKeyId, _: OffsetDateTime) -> Result<(), DomainError> {
        Ok(())
    }

    async fn sweep_keys(&self, _: OffsetDateTime) -> Result<u64, DomainError> {
        Ok(0)
    }
}

#[async_trait]
impl FailureCounter for Inert {
    async fn counts(&self, keys: &[String]) -> Result<Vec<FailureCount>, DomainError> {
        Ok(vec![FailureCount::default(); keys.len()])
    }

    async fn record(&self, _: &[String], _: Duration) -> Result<(), DomainError> {
        Ok(())
    }

    async fn clear(&self, _: &str) -> Result<(), DomainError> {
        Ok(())
    }
}

#[async_trait]
impl PasswordHasher for Inert {
    async fn hash(&self, _: &Password) -> Result<PasswordHash, DomainError> {
        Err(DomainError::unavailable("the inert double hashes nothing"))
    }

    async fn verify(
        &self,
        _: &Password,
        _: Option<&PasswordHash>,
    ) -> Result<Verification, DomainError> {
        Ok(Verification::Mismatch)
    }
}

impl TokenCodec for Inert {
    fn issue_access(
        &self,
        _: UserId,
        _: Role,
        _: FamilyId,
        _: OffsetDateTime,
    ) -> Result<IssuedToken, DomainError> {
        Err(DomainError::internal("the inert double issues no token"))
    }

    fn issue_refresh(
        &self,
        _: UserId,
        _: FamilyId,
        _: OffsetDateTime,
    ) -> Result<IssuedToken, DomainError> {
        Err(DomainError::internal("the inert double issues no token"))
    }

    fn verify_access(&self, _: &str) -> Result<AccessClaims, TokenRejection> {
        Err(TokenRejection::Invalid)
    }

    fn verify_refresh(&self, _: &str) -> Result<RefreshClaims, TokenRejection> {
        Err(TokenRejection::Invalid)
    }

    fn access_ttl(&self) -> Duration {
        ACCESS_TTL
    }
}

impl ResumeTokenCodec for Inert {
    fn issue_resume(
        &self,
        _: UserId,
        _: ConversationId,
        _: &MessageId,
        _: OffsetDateTime,
    ) -> Result<String, DomainError> {
        Err(DomainError::internal("the inert double issues no token"))
    }

    fn verify_resume(&self, _: &str) -> Result<ResumeClaims, TokenRejection> {
        Err(TokenRejection::Invalid)
    }
}

#[async_trait]
impl TokenBlocklist for Inert {
    async fn block_token(
        &self,
        _: UserId,
        _: TokenId,
        _: OffsetDateTime,
    ) -> Result<(), DomainError> {
        Ok(())
    }

    async fn block_family(
        &self,
        _: UserId,
        _: FamilyId,
        _: OffsetDateTime,
    ) -> Result<(), DomainError> {
        Ok(())
    }

    async fn standing(&self, _: &AccessClaims) -> Result<Standing, DomainError> {
        Ok(Standing {
            blocked: false,
            user_version: 0,
        })
    }

    async fn user_changed(&self, _: UserId) -> Result<(), DomainError> {
        Ok(())
    }
}

#[async_trait]
impl RateLimiter for Inert {
    async fn check(&self, policy: &RatePolicy, _: &str) -> Result<RateDecision, DomainError> {
        Ok(RateDecision {
            allowed: true,
            remaining: policy.quota,
            reset_after: Duration::ZERO,
            retry_after: Duration::ZERO,
        })
    }
}

#[async_trait]
impl IdempotencyStore for Inert {
    async fn claim(&self, _: &str, _: &str, _: &str, _: Duration) -> Result<Claim, DomainError> {
        Ok(Claim::Claimed)
    }

    async fn complete(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: StoredOutcome,
        _: Duration,
    ) -> Result<(), DomainError> {
        Ok(())
    }

    async fn release(&self, _: &str, _: &str, _: &str) -> Result<(), DomainError> {
        Ok(())
    }
}

#[async_trait]
impl Cache for Inert {
    async fn get(&self, _: &str) -> Result<Option<CachedValue>, DomainError> {
        Ok(None)
    }

    async fn put(&self, _: &str, _: CachedValue, _: Duration) -> Result<(), DomainError> {
        Ok(())
    }

    async fn version(&self, _: &str) -> Result<u64, DomainError> {
        Ok(0)
    }

    async fn bump(&self, _: &str) -> Result<(), DomainError> {
        Ok(())
    }
}

#[async_trait]
impl StreamLog for Inert {
    async fn open(
        &self,
        _: ConversationId,
        _: &MessageId,
    ) -> Result<Box<dyn StopSignal>, DomainError> {
        Err(DomainError::unavailable("the inert double keeps no log"))
    }

    async fn append(&self, _: ConversationId, _: WireEvent) -> Result<String, DomainError> {
        Err(DomainError::NotFound)
    }

    async fn close(&self, _: ConversationId) -> Result<(), DomainError> {
        Ok(())
    }

    async fn finish(&self, _: ConversationId, _: Vec<WireEvent>) -> Result<(), DomainError> {
        Err(DomainError::NotFound)
    }

    async fn current(&self, _: ConversationId) -> Result<LogHead, DomainError> {
        Err(DomainError::NotFound)
    }

    async fn read(
        &self,
        _: ConversationId,
        _: ReadFrom,
    ) -> Result<Box<dyn EventFeed>, DomainError> {
        Err(DomainError::NotFound)
    }

    async fn request_stop(&self, _: ConversationId) -> Result<bool, DomainError> {
        Ok(false)
    }
}
