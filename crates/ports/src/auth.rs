//! Tokens, their revocation, and rate limits.

use std::time::Duration;

use async_trait::async_trait;
use confab_domain::{
    ApiKeyId, ConversationId, DomainError, FamilyId, MessageId, OffsetDateTime, Role, Scopes,
    TokenId, UserId,
};

/// A freshly signed token.
#[derive(Clone)]
pub struct IssuedToken {
    /// The compact token itself (a secret: never log it).
    pub token: String,
    /// Its id.
    pub jti: TokenId,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("jti", &self.jti)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What a valid access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user.
    pub user_id: UserId,
    /// The user's role when the token was issued.
    pub role: Role,
    /// The token's id.
    pub jti: TokenId,
    /// The login session it belongs to.
    pub family: FamilyId,
    /// When it was issued (whole seconds).
    pub issued_at: OffsetDateTime,
    /// When it expires.
    pub expires_at: OffsetDateTime,
    /// `Some` when the caller presented an API key rather than an access
    /// token: the key and what it may do. `jti` and `family` are then the
    /// key's id, so the blocklist can refuse a revoked key at once.
    pub api_key: Option<KeyGrant>,
}

/// What an API key presented for a request grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyGrant {
    /// The key.
    pub id: ApiKeyId,
    /// What it may do.
    pub scopes: Scopes,
}

/// What a valid refresh token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshClaims {
    /// The user.
    pub user_id: UserId,
    /// The token's id.
    pub jti: TokenId,
    /// The login session it belongs to.
    pub family: FamilyId,
    /// When it expires.
    pub expires_at: OffsetDateTime,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    /// Well-formed and correctly signed, but past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// Anything else: garbage, truncated, tampered, wrong algorithm,
    /// issuer, audience or type, not yet valid.
    #[error("the token is invalid")]
    Invalid,
}

/// Signs and verifies tokens. Pure computation: no I/O.
pub trait TokenCodec: Send + Sync + 'static {
    /// Signs an access token.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if signing fails.
    fn issue_access(
        &self,
        user: UserId,
        role: Role,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, DomainError>;

    /// Signs a refresh token.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if signing fails.
    fn issue_refresh(
        &self,
        user: UserId,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, DomainError>;

    /// Verifies an access token (and that it *is* an access token).
    ///
    /// # Errors
    /// [`TokenRejection`] when it must not be accepted.
    fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenRejection>;

    /// Verifies a refresh token (and that it *is* a refresh token).
    ///
    /// # Errors
    /// [`TokenRejection`] when it must not be accepted.
    fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, TokenRejection>;

    /// How long access tokens live.
    fn access_ttl(&self) -> Duration;
}

/// What a valid resume token says: who may resume which generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeClaims {
    /// The user it was issued to.
    pub user_id: UserId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The assistant message being generated.
    pub message_id: MessageId,
    /// When it expires.
    pub expires_at: OffsetDateTime,
}

/// Signs and verifies `resume_conversation_token`s: short-lived tokens,
/// bound to a user, a conversation and a message, that a reader presents
/// to resume a generation's stream. Pure computation: no I/O.
pub trait ResumeTokenCodec: Send + Sync + 'static {
    /// Signs a resume token valid for the codec's resume lifetime.
    ///
    /// # Errors
    /// [`DomainError::Internal`] if signing fails.
    fn issue_resume(
        &self,
        user: UserId,
        conversation: ConversationId,
        message: &MessageId,
        now: OffsetDateTime,
    ) -> Result<String, DomainError>;

    /// Verifies a resume token (and that it *is* a resume token: access and
    /// refresh tokens are refused).
    ///
    /// # Errors
    /// [`TokenRejection`] when it must not be accepted.
    fn verify_resume(&self, token: &str) -> Result<ResumeClaims, TokenRejection>;
}

/// A refresh token to remember.
#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    /// Its id.
    pub jti: TokenId,
    /// Its login session.
    pub family: FamilyId,
    /// Its user.
    pub user_id: UserId,
    /// When it was issued.
    pub issued_at: OffsetDateTime,
    /// When it expires.
    pub expires_at: OffsetDateTime,
}

/// Where a login session was opened from, as the server saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOrigin {
    /// The client's `User-Agent`, cut to [`SessionOrigin::MAX_CHARS`]
    /// characters; `None` when it sent none.
    pub user_agent: Option<String>,
    /// The client's address, as the trusted-proxy rules give it.
    pub client: Option<String>,
}

impl SessionOrigin {
    /// Longest user agent kept, in characters.
    pub const MAX_CHARS: usize = 256;

    /// An origin from what a request said: the user agent without
    /// control characters and cut to its bound, blank as none.
    #[must_use]
    pub fn new(user_agent: Option<&str>, client: &str) -> Self {
        let user_agent = user_agent
            .map(|ua| {
                ua.chars()
                    .filter(|c| !c.is_control())
                    .take(Self::MAX_CHARS)
                    .collect::<String>()
            })
            .filter(|ua| !ua.trim().is_empty());
        Self {
            user_agent,
            client: Some(client.to_owned()).filter(|c| !c.is_empty()),
        }
    }
}

/// A live login session, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session (its refresh family).
    pub id: FamilyId,
    /// When it was opened (the login).
    pub created_at: OffsetDateTime,
    /// When it was last used to get a token pair (the login or the latest
    /// refresh).
    pub last_used_at: OffsetDateTime,
    /// When its current refresh token expires, ending it unless used.
    pub expires_at: OffsetDateTime,
    /// Where it was opened from.
    pub origin: SessionOrigin,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redemption {
    /// It was unused and valid, and is now used: issue the next pair.
    Redeemed,
    /// It had been used before: someone replays it. Revoke its family.
    Reused {
        /// The family to revoke.
        family: FamilyId,
        /// Its user.
        user_id: UserId,
        /// When it was first redeemed.
        used_at: OffsetDateTime,
    },
    /// Unknown, expired or revoked.
    Rejected,
}

/// Remembers refresh tokens so that each is used once.
#[async_trait]
pub trait RefreshTokenStore: Send + Sync + 'static {
    /// Starts a login session (family) for `user`.
    ///
    /// # Errors
    /// On storage failure.
    async fn open_family(
        &self,
        family: FamilyId,
        user: UserId,
        at: OffsetDateTime,
        origin: SessionOrigin,
    ) -> Result<(), DomainError>;

    /// `user`'s live login sessions (not revoked, a refresh token not yet
    /// expired), the most recently used first.
    ///
    /// # Errors
    /// On storage failure.
    async fn sessions(
        &self,
        user: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionRecord>, DomainError>;

    /// Revokes one of `user`'s live sessions, every token of it; `false`
    /// when it is not a live session of theirs (someone else's, unknown,
    /// ended).
    ///
    /// # Errors
    /// On storage failure.
    async fn revoke_session(
        &self,
        user: UserId,
        family: FamilyId,
        now: OffsetDateTime,
    ) -> Result<bool, DomainError>;

    /// Deletes what is left of sessions that ended before `ended_before`
    /// (revoked, or their last refresh token expired) with their tokens,
    /// and refresh tokens that expired before it: how many sessions went.
    ///
    /// # Errors
    /// On storage failure.
    async fn sweep(&self, ended_before: OffsetDateTime) -> Result<u64, DomainError>;

    /// Records a newly issued refresh token in its family, unless the
    /// family has been revoked (returns `false` then: the token must not be
    /// handed out). Serialised with [`RefreshTokenStore::revoke_family`], so
    /// a token is never left alive in a family revoked concurrently.
    ///
    /// # Errors
    /// On storage failure.
    async fn insert(&self, token: NewRefreshToken) -> Result<bool, DomainError>;

    /// Marks the token used, atomically: of two concurrent redemptions of
    /// the same token exactly one is [`Redemption::Redeemed`].
    ///
    /// # Errors
    /// On storage failure.
    async fn redeem(&self, jti: TokenId, now: OffsetDateTime) -> Result<Redemption, DomainError>;

    /// Revokes every token of a login session.
    ///
    /// # Errors
    /// On storage failure.
    async fn revoke_family(&self, family: FamilyId, now: OffsetDateTime)
    -> Result<(), DomainError>;

    /// Revokes every token of a user (but those of the session `except`),
    /// and returns the login sessions this revoked (those that were live), so that their access tokens can be
    /// refused too. However many sessions the user has, this is a bounded
    /// number of statements.
    ///
    /// # Errors
    /// On storage failure.
    async fn revoke_user(
        &self,
        user: UserId,
        except: Option<FamilyId>,
        now: OffsetDateTime,
    ) -> Result<Vec<FamilyId>, DomainError>;
}

/// What the shared state says of one access token on one request: read in
/// one step, so a request pays one look-up (one round trip on Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Whether the token is refused (it, or its login session, is blocked).
    pub blocked: bool,
    /// The version of the token's user's account state (disabled, role):
    /// it changes whenever [`TokenBlocklist::user_changed`] is called for
    /// the user, and is 0 for a user never changed. What an instance
    /// remembers of a user is good for as long as this is unchanged.
    pub user_version: u64,
}

/// Access tokens refused before they expire: after a logout, or when their
/// login session was revoked (refresh-token reuse); and the version of each
/// user's account state, so every instance can keep what it read of an
/// account until it changes.
#[async_trait]
pub trait TokenBlocklist: Send + Sync + 'static {
    /// Refuses the token `jti` of `user` until `until` (its expiry), and
    /// not after it; an `until` already past refuses nothing. (The user
    /// places the entry beside the user's other state: one Redis Cluster
    /// slot.)
    ///
    /// # Errors
    /// When the blocklist is unreachable.
    async fn block_token(
        &self,
        user: UserId,
        jti: TokenId,
        until: OffsetDateTime,
    ) -> Result<(), DomainError>;

    /// Refuses every access token of `user`'s login session `family`
    /// until `until` (when the last of them has expired anyway), and not
    /// after it; an `until` already past refuses nothing.
    ///
    /// # Errors
    /// When the blocklist is unreachable.
    async fn block_family(
        &self,
        user: UserId,
        family: FamilyId,
        until: OffsetDateTime,
    ) -> Result<(), DomainError>;

    /// Whether the access token described by `claims` is refused, and the
    /// version of its user's account state, in one look-up.
    ///
    /// # Errors
    /// When the blocklist is unreachable.
    async fn standing(&self, claims: &AccessClaims) -> Result<Standing, DomainError>;

    /// Whether the access token described by `claims` is refused.
    ///
    /// # Errors
    /// When the blocklist is unreachable.
    async fn is_blocked(&self, claims: &AccessClaims) -> Result<bool, DomainError> {
        Ok(self.standing(claims).await?.blocked)
    }

    /// Says that `user`'s account state changed (after the change is
    /// stored): every instance's next [`TokenBlocklist::standing`] of the
    /// user's tokens carries a version it has not seen.
    ///
    /// # Errors
    /// When the blocklist is unreachable.
    async fn user_changed(&self, user: UserId) -> Result<(), DomainError>;
}

/// A token-bucket limit: `quota` requests per `window`, refilled evenly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatePolicy {
    /// Its name in the `RateLimit-Policy` header (`default`, `login`).
    pub name: String,
    /// Requests per window (the bucket's size).
    pub quota: u32,
    /// The window.
    pub window: Duration,
}

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may go ahead (it consumed a token if so).
    pub allowed: bool,
    /// Requests left in the bucket now.
    pub remaining: u32,
    /// Time until the bucket is full again. When allowed, an adapter may
    /// round it up to whole refill periods (`window / quota`) per token
    /// taken; when refused, it is `retry_after` plus a period per token
    /// but one of the quota.
    pub reset_after: Duration,
    /// When refused: time until one request would be allowed.
    pub retry_after: Duration,
}

/// Token-bucket rate limiting, keyed by whatever the caller chooses (a
/// user id, a client IP, an account name).
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one token from `key`'s bucket under `policy`, if there is one.
    /// Each policy name and key has a bucket of its own.
    ///
    /// # Errors
    /// [`DomainError::Unavailable`] when the limiter's store is
    /// unreachable; [`DomainError::Internal`] for a policy with a zero
    /// quota or a zero window (a configuration bug).
    async fn check(&self, policy: &RatePolicy, key: &str) -> Result<RateDecision, DomainError>;
}

/// What one request's admission found, for a token that is not refused:
/// its user's account-state version and the caller's rate decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// As [`Standing::user_version`].
    pub user_version: u64,
    /// The check of the caller's rate bucket.
    pub decision: RateDecision,
    /// The [`Cache`](crate::Cache) version of the key the admission was
    /// asked to read, read in the same step: `None` when none was asked,
    /// when the counter does not exist yet, or when the backend does not
    /// hold the cache's versions (the caller then asks the cache).
    pub cache_version: Option<u64>,
}

/// A request's token standing and its charge to the caller's rate bucket,
/// in one step where the backend can (one round trip on Redis).
#[async_trait]
pub trait Admission: Send + Sync + 'static {
    /// `None` when the token described by `claims` is refused, and then
    /// nothing is charged: whoever holds a revoked token cannot spend its
    /// user's budget. Otherwise the user's version, the check of `policy`
    /// for `key`, and, where the backend can read it in the same step, the
    /// cache version of `cache_key` (a key as given to
    /// [`Cache::version`](crate::Cache::version)), so a read that needs it
    /// makes no round trip of its own.
    ///
    /// # Errors
    /// When the blocklist or the limiter is unreachable.
    async fn admit(
        &self,
        claims: &AccessClaims,
        policy: &RatePolicy,
        key: &str,
        cache_key: Option<&str>,
    ) -> Result<Option<Admitted>, DomainError>;
}

#[cfg(test)]
mod tests {
    use super::SessionOrigin;

    #[test]
    fn an_origin_keeps_text_bounded_and_drops_blanks() {
        let origin = SessionOrigin::new(Some("Agent\r\n/1\u{7}"), "203.0.113.7");
        assert_eq!(origin.user_agent.as_deref(), Some("Agent/1"));
        assert_eq!(origin.client.as_deref(), Some("203.0.113.7"));
        let long = "é".repeat(1_000);
        let origin = SessionOrigin::new(Some(&long), "");
        assert_eq!(
            origin.user_agent.map(|ua| ua.chars().count()),
            Some(SessionOrigin::MAX_CHARS)
        );
        assert_eq!(origin.client, None);
        assert_eq!(SessionOrigin::new(Some("  \t"), "x").user_agent, None);
        assert_eq!(SessionOrigin::new(None, "x").user_agent, None);
    }
}
