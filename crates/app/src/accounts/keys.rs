//! API keys: created, listed and revoked by their owner; verified for
//! every request that presents one.
//!
//! An instance remembers each key it has read, tagged with its owner's
//! account version as the blocklist gave it (the version read *before* the
//! key was read), so a request with a known key at that version reads
//! nothing from the database. A revocation deletes the key and then moves
//! the owner's account version: every instance's next request with the key
//! carries a version its memory was not read at, reads the key again and
//! finds it gone. No timing is assumed; what an instance remembers is also
//! forgotten after [`KEY_MEMORY`], a bound on a lost version move (Redis
//! flushed under a running service).
//!
//! A key this instance does not know costs its caller's address one token
//! of the `api-key-lookups` bucket before the database is read, so made-up
//! keys can't make the database work at request rate; a key found missing
//! is remembered as such.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use confab_domain::{
    ApiKey, ApiKeyId, ApiKeyName, ApiKeyText, DomainError, FamilyId, Field, KeyLifetime,
    OffsetDateTime, Password, Role, Scopes, TokenId, UserId,
};
use confab_ports::{AccessClaims, KeyCreation, KeyGrant, StoredKey};

use super::{Accounts, INVALID_TOKEN};
use crate::{AppError, AuthFailure};

/// How long an instance trusts what it read of a key at an unchanged
/// account version.
pub(super) const KEY_MEMORY: Duration = Duration::from_secs(60);

/// The most keys remembered; past it, the memory starts afresh.
const MAX_KNOWN_KEYS: usize = 100_000;

/// The most missing key ids remembered (apart from the keys, so that
/// made-up ids never push a real key out); past it, they start afresh.
const MAX_MISSING_KEYS: usize = 10_000;

/// What this instance read of one key.
#[derive(Debug, Clone)]
struct KnownKey {
    stored: StoredKey,
    /// The owner's account version read before the key was: `None` until
    /// a request has confirmed the key at a version.
    version: Option<u64>,
    read_at: Instant,
}

/// What an instance knows of a key id.
#[derive(Debug, Clone)]
enum Known {
    /// The key, as read.
    Key(KnownKey),
    /// There is no such key.
    Missing,
}

/// The keys this instance has read, and the ids it found no key for.
#[derive(Debug, Default)]
pub(super) struct KnownKeys {
    entries: Mutex<(HashMap<ApiKeyId, KnownKey>, HashMap<ApiKeyId, Instant>)>,
}

type Entries = (HashMap<ApiKeyId, KnownKey>, HashMap<ApiKeyId, Instant>);

impl KnownKeys {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, id: ApiKeyId) -> Option<Known> {
        let entries = self.entries();
        if let Some(known) = entries
            .0
            .get(&id)
            .filter(|k| k.read_at.elapsed() < KEY_MEMORY)
        {
            return Some(Known::Key(known.clone()));
        }
        entries
            .1
            .get(&id)
            .filter(|read_at| read_at.elapsed() < KEY_MEMORY)
            .map(|_| Known::Missing)
    }

    /// Remembers what was read of `id` (`None`: no such key).
    fn remember(&self, id: ApiKeyId, stored: Option<StoredKey>, version: Option<u64>) {
        let mut entries = self.entries();
        let (keys, missing) = &mut *entries;
        match stored {
            Some(stored) => {
                missing.remove(&id);
                if keys.len() >= MAX_KNOWN_KEYS && !keys.contains_key(&id) {
                    keys.clear();
                }
                keys.insert(
                    id,
                    KnownKey {
                        stored,
                        version,
                        read_at: Instant::now(),
                    },
                );
            }
            None => {
                keys.remove(&id);
                if missing.len() >= MAX_MISSING_KEYS && !missing.contains_key(&id) {
                    missing.clear();
                }
                missing.insert(id, Instant::now());
            }
        }
    }

    fn forget(&self, id: ApiKeyId) {
        let mut entries = self.entries();
        entries.0.remove(&id);
        entries.1.remove(&id);
    }
}

/// A key to create ([`Accounts::create_api_key`]), as received.
/// Not `Debug`: it holds a password.
pub struct NewApiKey {
    /// What the owner calls it.
    pub name: String,
    /// The scope names it is to have.
    pub scopes: Vec<String>,
    /// How many days it lasts; `None`: until revoked.
    pub expires_in_days: Option<i64>,
    /// The caller's password: a key outlives sessions, so making one asks
    /// for it, as a login does (the same limits).
    pub password: Password,
    /// The client's address, for the login limits.
    pub client: String,
}

/// A key just created: what its owner sees, and its text, shown once.
/// Not `Debug`: the text is a secret.
pub struct CreatedKey {
    /// The key.
    pub key: ApiKey,
    /// Its whole text, to hand to the owner once (never log it).
    pub text: String,
}

/// Until when a key put on the blocklist is refused: past the longest any
/// instance trusts what it read of a key.
fn block_until() -> OffsetDateTime {
    OffsetDateTime::now_utc() + KEY_MEMORY + Duration::from_secs(2)
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
    /// that name; [`AppError::Unauthorized`] when the account is gone, or
    /// with [`AuthFailure::BadCredentials`] when the password is wrong;
    /// [`AppError::RateLimited`] as for a login.
    pub async fn create_api_key(
        &self,
        caller: &AccessClaims,
        new: NewApiKey,
    ) -> Result<CreatedKey, AppError> {
        let name = ApiKeyName::parse(&new.name)?;
        let scopes = Scopes::parse(&new.scopes)?;
        let lifetime = new.expires_in_days.map(KeyLifetime::days).transpose()?;
        let user = match self.ports.users.get(caller.user_id).await {
            Ok(user) => user,
            Err(DomainError::NotFound) => return Err(INVALID_TOKEN),
            Err(e) => return Err(e.into()),
        };
        self.confirm_password(&user, &new.password, &new.client)
            .await?;
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
    /// refused, on every instance. The key's id is put on the blocklist
    /// first (for longer than any instance trusts what it read of a key:
    /// refused before its rate bucket is charged), then it is deleted, then
    /// its owner's account version moves, so every instance reads it again
    /// and finds it gone. A failure at any step leaves the key refused for
    /// that minute at least, and a retry finishes the work (or answers 404
    /// once the key is gone).
    ///
    /// # Errors
    /// [`AppError::NotFound`] when the caller has no such key;
    /// [`AppError::Unavailable`] when a store fails.
    pub async fn revoke_api_key(
        &self,
        caller: &AccessClaims,
        id: ApiKeyId,
    ) -> Result<(), AppError> {
        let found = self.ports.api_keys.find_key(id).await?;
        if found.is_none_or(|stored| stored.key.user_id != caller.user_id) {
            return Err(AppError::NotFound);
        }
        let until = block_until();
        self.ports
            .blocklist
            .block_token(caller.user_id, TokenId::from_uuid(*id.as_uuid()), until)
            .await?;
        self.keys.forget(id);
        if !self.ports.api_keys.delete_key(caller.user_id, id).await? {
            return Err(AppError::NotFound);
        }
        self.known.forget(caller.user_id);
        self.ports.blocklist.user_changed(caller.user_id).await?;
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
        let until = block_until();
        for key in self.ports.api_keys.keys(user).await? {
            self.keys.forget(key.id);
            self.ports
                .blocklist
                .block_token(user, TokenId::from_uuid(*key.id.as_uuid()), until)
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

    /// The claims an API key presented by `client` grants, if it is a key
    /// and the secret is its own, and the account version this instance
    /// read it at (`None`: not confirmed at any; see
    /// [`Accounts::confirm_key`]). A key this instance does not know costs
    /// the address a token of the lookup bucket before it is read, and so
    /// does every key refused: a bad key looping behind a shared address
    /// spends that bucket, never the address's anonymous one.
    pub(super) async fn verify_key(
        &self,
        credential: &str,
        client: &str,
    ) -> Result<(AccessClaims, Option<u64>), AppError> {
        // Formatted only when charged: a known, good key pays nothing.
        let bucket = || format!("ip:{client}");
        let mut charged = false;
        let verdict = async {
            let presented = ApiKeyText::parse(credential).ok_or(INVALID_TOKEN)?;
            let id = presented.id();
            let (stored, version) = match self.keys.get(id) {
                Some(Known::Key(known)) => (known.stored, known.version),
                Some(Known::Missing) => return Err(INVALID_TOKEN),
                None => {
                    charged = true;
                    self.limit(&self.limits.key_lookups, &bucket()).await?;
                    let found = self.ports.api_keys.find_key(id).await?;
                    self.keys.remember(id, found.clone(), None);
                    (found.ok_or(INVALID_TOKEN)?, None)
                }
            };
            let now = OffsetDateTime::now_utc();
            if !self
                .ports
                .key_secrets
                .matches(presented.secret(), &stored.digest)
            {
                tracing::info!(api_key = %id, "API key refused: wrong secret");
                return Err(INVALID_TOKEN);
            }
            if stored.key.expired(now) {
                return Err(AppError::Unauthorized(AuthFailure::ExpiredToken));
            }
            let ttl = self.ports.tokens.access_ttl();
            Ok((key_claims(&stored.key, now, ttl), version))
        }
        .await;
        if matches!(verdict, Err(AppError::Unauthorized(_))) && !charged {
            self.limit(&self.limits.key_lookups, &bucket()).await?;
        }
        verdict
    }

    /// Reads the key of `claims` again, after its owner's account version
    /// `version` was read, and remembers it at that version: a revocation
    /// that landed before this read is seen now, one after it moves the
    /// version. Records the key's use (off the request's path).
    pub(super) async fn confirm_key(
        &self,
        claims: &AccessClaims,
        id: ApiKeyId,
        version: u64,
    ) -> Result<(), AppError> {
        let found = self.ports.api_keys.find_key(id).await?;
        let now = OffsetDateTime::now_utc();
        let live = found
            .as_ref()
            .is_some_and(|s| s.key.user_id == claims.user_id && !s.key.expired(now));
        self.keys.remember(id, found, Some(version));
        if !live {
            return Err(INVALID_TOKEN);
        }
        let keys = std::sync::Arc::clone(&self.ports.api_keys);
        tokio::spawn(async move {
            if let Err(e) = keys.touch_key(id, now).await {
                tracing::warn!(error = %e, "could not record an API key's use");
            }
        });
        Ok(())
    }
}
