//! API keys: minting their secrets, and keeping them.

use async_trait::async_trait;
use confab_domain::{ApiKey, ApiKeyDigest, ApiKeyId, DomainError, OffsetDateTime, UserId};

/// Mints API key secrets and digests them. Pure computation (randomness
/// aside): no I/O.
pub trait ApiKeySecrets: Send + Sync + 'static {
    /// A fresh secret: 32 random bytes from the operating system, in
    /// unpadded base64url ([`ApiKeyText::SECRET_CHARS`] characters).
    ///
    /// [`ApiKeyText::SECRET_CHARS`]: confab_domain::ApiKeyText::SECRET_CHARS
    ///
    /// # Errors
    /// [`DomainError::Internal`] when the system's randomness fails.
    fn mint(&self) -> Result<String, DomainError>;

    /// The digest stored for `secret`. A secret has 256 random bits, so a
    /// fast digest is as strong as a slow password hash would be.
    fn digest(&self, secret: &str) -> ApiKeyDigest;

    /// Whether `secret` is the one `digest` was made from, compared in
    /// constant time.
    fn matches(&self, secret: &str, digest: &ApiKeyDigest) -> bool;
}

/// What creating a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCreation {
    /// It was stored.
    Created,
    /// The owner has a key of that name already.
    NameTaken,
    /// The owner has [`ApiKey::MAX_PER_USER`] keys already.
    TooMany,
}

/// A key as stored: what its owner sees, and its secret's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key.
    pub key: ApiKey,
    /// Its secret's digest.
    pub digest: ApiKeyDigest,
}

/// Keeps API keys.
#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Stores `key` with `digest`, unless its owner has a key of that name
    /// or [`ApiKey::MAX_PER_USER`] keys already (checked with the insert,
    /// so concurrent creations can't pass the bound).
    ///
    /// # Errors
    /// On storage failure ([`DomainError::NotFound`] when the owner does not
    /// exist).
    async fn create_key(
        &self,
        key: &ApiKey,
        digest: ApiKeyDigest,
    ) -> Result<KeyCreation, DomainError>;

    /// `user`'s keys, the newest first.
    ///
    /// # Errors
    /// On storage failure.
    async fn keys(&self, user: UserId) -> Result<Vec<ApiKey>, DomainError>;

    /// The key `id`, whoever owns it.
    ///
    /// # Errors
    /// On storage failure.
    async fn find_key(&self, id: ApiKeyId) -> Result<Option<StoredKey>, DomainError>;

    /// Deletes `user`'s key `id`: `false` when they have no such key.
    ///
    /// # Errors
    /// On storage failure.
    async fn delete_key(&self, user: UserId, id: ApiKeyId) -> Result<bool, DomainError>;

    /// Records that the key `id` was used at `at` (a later use only).
    ///
    /// # Errors
    /// On storage failure.
    async fn touch_key(&self, id: ApiKeyId, at: OffsetDateTime) -> Result<(), DomainError>;

    /// Deletes the keys that expired before `expired_before`: how many.
    ///
    /// # Errors
    /// On storage failure.
    async fn sweep_keys(&self, expired_before: OffsetDateTime) -> Result<u64, DomainError>;
}
