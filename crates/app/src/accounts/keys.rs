//! API keys: created, listed and revoked by their owner; verified for
//! every request that presents one.
//!
//! An instance remembers the keys it has read for [`KEY_MEMORY`], so a
//! request with a known key reads nothing from the database. A revocation
//! deletes the key and blocks its id in the blocklist for longer than any
//! instance remembers it: the next request with it is refused on every
//! instance. A failed presentation (unknown key, wrong secret, expired)
//! is counted per client address; past [`KEY_FAILURES_PER_ADDRESS`] in a
//! window, the address is refused before any database read, so made-up
//! keys can't make the database do work at request rate.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use confab_domain::{
    ApiKey, ApiKeyId, ApiKeyName, ApiKeyText, DomainError, FamilyId, Field, KeyLifetime,
    OffsetDateTime, Role, Scopes, TokenId, UserId,
};
use confab_ports::{AccessClaims, KeyCreation, KeyGrant, RateDecision, StoredKey};

use super::{Accounts, INVALID_TOKEN};
use crate::{AppError, AuthFailure};

/// How long an instance trusts a key it has read: revocation is made
/// certain for this long (plus a margin) through the blocklist.
pub(super) const KEY_MEMORY: Duration = Duration::from_secs(60);

/// Failed key presentations one client address may make in a window (the
/// login failure window) before it is refused without a look-up.
pub const KEY_FAILURES_PER_ADDRESS: u32 = 20;

/// The most keys remembered; past it, the memory starts afresh.
const MAX_KNOWN_KEYS: usize = 100_000;

/// The keys this instance has read.
#[derive(Debug, Default)]
pub(super) struct KnownKeys {
    entries: Mutex<HashMap<ApiKeyId, (StoredKey, Instant)>>,
}

impl KnownKeys {
    fn entries(&self) -> MutexGuard<'_, HashMap<ApiKeyId, (StoredKey, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: ApiKeyId) -> Option<StoredKey> {
        self.entries()
            .get(&id)
            .filter(|(_, read_at)| read_at.elapsed() < KEY_MEMORY)
            .map(|(key, _)| key.clone())
    }

    fn remember(&self, key: StoredKey) {
        let mut entries = self.entries();
        if entries.len() >= MAX_KNOWN_KEYS && !entries.contains_key(&key.key.id) {
            entries.clear();
        }
        entries.insert(key.key.id, (key, Instant::now()));
    }

    fn forget(&self, id: ApiKeyId) {
        self.entries().remove(&id);
    }
}

/// A key to create ([`Accounts::create_api_key`]), as received.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// What the owner calls it.
    pub name: String,
    /// The scope names it is to have.
    pub scopes: Vec<String>,
    /// How many days it lasts; `None`: until revoked.
    pub expires_in_days: Option<i64>,
}

/// A key just created: what its owner sees, and its text, shown once.
/// Not `Debug`: the text is a secret.
pub struct CreatedKey {
    /// The key.
    pub key: ApiKey,
    /// Its whole text, to hand to the owner once (never log it).
    pub text: String,
}

fn key_claims(key: &ApiKey, now: OffsetDateTime, ttl: Duration) -> AccessClaims {
    let id = *key.id.as_uuid();
    AccessClaims {
        user_id: key.user_id,
        // A key never carries an admin's powers.
        role: Role::User,
        jti: TokenId::from_uuid(id),
        family: FamilyId::from_uuid(id),
        issued_at: key.created_at,
        // How long this grant holds without a new check: the key's expiry,
        // or an access token's lifetime.
        expires_at: key.expires_at.unwrap_or(now + ttl).min(now + ttl),
        api_key: Some(KeyGrant {
            id: key.id,
            scopes: key.scopes,
        }),
    }
}

impl Accounts {
    /// Creates an API key for the caller, with the scopes and lifetime
    /// asked for. Only its digest is stored; its text is returned once.
    ///
    /// # Errors
    /// [`AppError::Validation`] on `name`, `scopes` or `expires_in_days`,
    /// and on `name` when the caller has [`ApiKey::MAX_PER_USER`] keys
    /// already; [`AppError::Conflict`] on `name` when they have a key of
    /// that name; [`AppError::Unauthorized`] when the account is gone.
    pub async fn create_api_key(
        &self,
        caller: &AccessClaims,
        new: NewApiKey,
    ) -> Result<CreatedKey, AppError> {
        let name = ApiKeyName::parse(&new.name)?;
        let scopes = Scopes::parse(&new.scopes)?;
        let lifetime = new.expires_in_days.map(KeyLifetime::days).transpose()?;
        let secret = self.ports.key_secrets.mint()?;
        let text = ApiKeyText::new(ApiKeyId::generate(), secret)?;
        // Whole seconds: what every backend gives back the same.
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(DomainError::internal)?;
        let key = ApiKey {
            id: text.id(),
            user_id: caller.user_id,
            name,
            scopes,
            created_at: now,
            expires_at: lifetime.map(|l| l.from(now)),
            last_used_at: None,
        };
        let digest = self.ports.key_secrets.digest(text.secret());
        match self.ports.api_keys.create_key(&key, digest).await {
            Ok(KeyCreation::Created) => {}
            Ok(KeyCreation::NameTaken) => return Err(AppError::Conflict { field: Field::Name }),
            Ok(KeyCreation::TooMany) => {
                return Err(DomainError::invalid(
                    Field::Name,
                    format!(
                        "an account has at most {} API keys; delete one first",
                        ApiKey::MAX_PER_USER
                    ),
                )
                .into());
            }
            Err(DomainError::NotFound) => return Err(INVALID_TOKEN),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(
            security_event = "api_key_created",
            user_id = %key.user_id,
            api_key = %key.id,
            scopes = %key.scopes.stored(),
            "API key created"
        );
        Ok(CreatedKey {
            text: text.expose(),
            key,
        })
    }

    /// The caller's API keys, the newest first (never their secrets).
    ///
    /// # Errors
    /// On storage failure.
    pub async fn api_keys(&self, caller: &AccessClaims) -> Result<Vec<ApiKey>, AppError> {
        Ok(self.ports.api_keys.keys(caller.user_id).await?)
    }

    /// Revokes one of the caller's API keys: the next request with it is
    /// refused, on every instance.
    ///
    /// # Errors
    /// [`AppError::NotFound`] when the caller has no such key.
    pub async fn revoke_api_key(
        &self,
        caller: &AccessClaims,
        id: ApiKeyId,
    ) -> Result<(), AppError> {
        let found = self.ports.api_keys.find_key(id).await?;
        if found.is_none_or(|stored| stored.key.user_id != caller.user_id) {
            return Err(AppError::NotFound);
        }
        // Refused everywhere first (for longer than any instance trusts
        // what it read of the key), then deleted: a failure between the
        // two leaves the key refused, and a retry finishes.
        let until = OffsetDateTime::now_utc() + KEY_MEMORY + Duration::from_secs(2);
        self.ports
            .blocklist
            .block_token(TokenId::from_uuid(*id.as_uuid()), until)
            .await?;
        self.keys.forget(id);
        if !self.ports.api_keys.delete_key(caller.user_id, id).await? {
            return Err(AppError::NotFound);
        }
        tracing::info!(
            security_event = "api_key_revoked",
            user_id = %caller.user_id,
            api_key = %id,
            "API key revoked"
        );
        Ok(())
    }

    /// Refuses every key of `user` on every instance, for longer than any
    /// instance trusts a key it read (an account being deleted).
    pub(super) async fn block_keys(&self, user: UserId) -> Result<(), AppError> {
        let until = OffsetDateTime::now_utc() + KEY_MEMORY + Duration::from_secs(2);
        for key in self.ports.api_keys.keys(user).await? {
            self.keys.forget(key.id);
            self.ports
                .blocklist
                .block_token(TokenId::from_uuid(*key.id.as_uuid()), until)
                .await?;
        }
        Ok(())
    }

    /// Deletes keys that expired more than
    /// [`Accounts::ENDED_SESSION_RETENTION`] ago; how many went.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn sweep_api_keys(&self) -> Result<u64, AppError> {
        let before = OffsetDateTime::now_utc() - Self::ENDED_SESSION_RETENTION;
        Ok(self.ports.api_keys.sweep_keys(before).await?)
    }

    /// The claims an API key presented by `client` grants, if it is a
    /// live key and the secret is its own.
    pub(super) async fn verify_key(
        &self,
        credential: &str,
        client: &str,
    ) -> Result<AccessClaims, AppError> {
        let failures = [format!("apikey:ip:{client}")];
        let now = OffsetDateTime::now_utc();
        let ttl = self.ports.tokens.access_ttl();
        let presented = ApiKeyText::parse(credential);
        let known = presented.as_ref().and_then(|p| self.keys.get(p.id()));
        let stored = match (&presented, known) {
            (_, Some(stored)) => Some(stored),
            (None, None) => None,
            (Some(presented), None) => {
                self.refuse_after_key_failures(&failures).await?;
                let found = self.ports.api_keys.find_key(presented.id()).await?;
                if let Some(found) = &found {
                    self.keys.remember(found.clone());
                    if let Err(e) = self.ports.api_keys.touch_key(found.key.id, now).await {
                        tracing::warn!(error = %e, "could not record an API key's use");
                    }
                }
                found
            }
        };
        let verdict = match (presented, stored) {
            (Some(presented), Some(stored))
                if self
                    .ports
                    .key_secrets
                    .matches(presented.secret(), &stored.digest) =>
            {
                if stored.key.expired(now) {
                    Err(AppError::Unauthorized(AuthFailure::ExpiredToken))
                } else {
                    Ok(key_claims(&stored.key, now, ttl))
                }
            }
            _ => Err(INVALID_TOKEN),
        };
        if verdict.is_err() {
            tracing::info!("API key refused");
            let window = self.limits.login_failures.window;
            if let Err(e) = self.ports.failures.record(&failures, window).await {
                tracing::warn!(error = %e, "could not count a refused API key");
            }
        }
        verdict
    }

    /// Refuses a client address that has presented
    /// [`KEY_FAILURES_PER_ADDRESS`] bad keys in the window. When the counts
    /// can't be read, the look-up goes ahead.
    async fn refuse_after_key_failures(&self, keys: &[String; 1]) -> Result<(), AppError> {
        let counts = match self.ports.failures.counts(keys).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(error = %e, "refused API keys can't be counted; looking up anyway");
                return Ok(());
            }
        };
        match counts.first() {
            Some(count) if count.failures >= KEY_FAILURES_PER_ADDRESS => {
                tracing::info!("API key refused after failed attempts from its address");
                Err(AppError::RateLimited {
                    policy: self
                        .limits
                        .login_failures
                        .policy("api-key-failures", KEY_FAILURES_PER_ADDRESS),
                    decision: RateDecision {
                        allowed: false,
                        remaining: 0,
                        reset_after: count.resets_in,
                        retry_after: count.resets_in,
                    },
                })
            }
            _ => Ok(()),
        }
    }
}
