//! API keys: long-lived credentials a user gives a service instead of
//! their password, each limited to the scopes it was created with.
//!
//! A key's text is `cfk_<id>_<secret>`: the key's id (32 lower-case hex
//! digits) and a random secret (43 characters of base64url, 256 bits).
//! Only a digest of the secret is stored; the text is shown once, when the
//! key is created. The `cfk_` prefix tells a key from an access token (a
//! JWT) at a glance, and lets secret scanners find one.

use std::fmt;

use uuid::Uuid;

use crate::text::visible_line;
use crate::{ApiKeyId, DomainError, Field, OffsetDateTime, UserId};

/// What an API key may do. A route names the scope a key needs to call it;
/// the routes that manage the account, its sessions and its keys, and the
/// admin routes, accept no key at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read conversations and their messages, resume answer streams.
    ConversationsRead,
    /// Start, continue, rename, archive and delete conversations, and stop
    /// answers.
    ConversationsWrite,
    /// List the models.
    ModelsRead,
    /// Read the account's usage and allowance.
    UsageRead,
}

impl Scope {
    /// Every scope, in the order they are listed.
    pub const ALL: [Self; 4] = [
        Self::ConversationsRead,
        Self::ConversationsWrite,
        Self::ModelsRead,
        Self::UsageRead,
    ];

    /// The scope's name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConversationsRead => "conversations:read",
            Self::ConversationsWrite => "conversations:write",
            Self::ModelsRead => "models:read",
            Self::UsageRead => "usage:read",
        }
    }

    /// The scope named `name`.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `scopes` for an unknown name.
    pub fn parse(name: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                DomainError::invalid(
                    Field::Scopes,
                    format!(
                        "unknown scope; one of {}",
                        Self::ALL.map(Self::as_str).join(", ")
                    ),
                )
            })
    }

    const fn bit(self) -> u8 {
        match self {
            Self::ConversationsRead => 1,
            Self::ConversationsWrite => 2,
            Self::ModelsRead => 4,
            Self::UsageRead => 8,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-empty set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// The scopes named in `names`: at least one, each known (a name given
    /// twice counts once).
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `scopes`.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, DomainError> {
        if names.is_empty() {
            return Err(DomainError::invalid(
                Field::Scopes,
                "must name at least one scope",
            ));
        }
        let mut bits = 0;
        for name in names {
            bits |= Scope::parse(name.as_ref())?.bit();
        }
        Ok(Self(bits))
    }

    /// Rebuilds a set stored by [`Scopes::stored`].
    ///
    /// # Errors
    /// [`DomainError::Internal`] when the text names no scope or an
    /// unknown one.
    pub fn from_stored(text: &str) -> Result<Self, DomainError> {
        let names: Vec<&str> = text.split_whitespace().collect();
        Self::parse(&names).map_err(|_| DomainError::internal("stored scopes do not parse"))
    }

    /// The set as stored: the names, space-separated, in [`Scope::ALL`]'s
    /// order.
    #[must_use]
    pub fn stored(self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }

    /// Whether `scope` is in the set.
    #[must_use]
    pub const fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The scopes, in [`Scope::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// An API key's name: what its owner calls it (unique among their keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyName(String);

impl ApiKeyName {
    /// Longest name, in characters.
    pub const MAX_CHARS: usize = 100;

    /// Validates a name: 1..=100 characters, no control character, not
    /// only white space; kept without leading and trailing white space.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `name`.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        visible_line(Field::Name, value, Self::MAX_CHARS).map(Self)
    }

    /// Rebuilds a name read back from storage.
    #[must_use]
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How long a new key lasts, in whole days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLifetime(u32);

impl KeyLifetime {
    /// The longest lifetime a key can be given: about ten years.
    pub const MAX_DAYS: u32 = 3_650;

    /// Validates a lifetime of 1..=3650 days.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `expires_in_days`.
    pub fn days(days: i64) -> Result<Self, DomainError> {
        u32::try_from(days)
            .ok()
            .filter(|d| (1..=Self::MAX_DAYS).contains(d))
            .map(Self)
            .ok_or_else(|| {
                DomainError::invalid(
                    Field::ExpiresInDays,
                    format!("must be between 1 and {}", Self::MAX_DAYS),
                )
            })
    }

    /// When a key created at `now` with this lifetime expires.
    #[must_use]
    pub fn from(self, now: OffsetDateTime) -> OffsetDateTime {
        now + time::Duration::days(i64::from(self.0))
    }
}

/// An API key as its owner sees it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key.
    pub id: ApiKeyId,
    /// Its owner.
    pub user_id: UserId,
    /// What the owner calls it.
    pub name: ApiKeyName,
    /// What it may do.
    pub scopes: Scopes,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it stops working, if ever.
    pub expires_at: Option<OffsetDateTime>,
    /// When it was last seen authenticating a request, to the minute or
    /// so (it is written when an instance reads the key, not on every
    /// request).
    pub last_used_at: Option<OffsetDateTime>,
}

impl ApiKey {
    /// The most keys one user may have (expired ones included, until they
    /// are deleted or swept).
    pub const MAX_PER_USER: usize = 25;

    /// Whether the key has expired at `now`.
    #[must_use]
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The stored digest of a key's secret (lower-case hex).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyDigest(String);

impl ApiKeyDigest {
    /// Wraps a digest (computed by the key-secrets port, or read back).
    #[must_use]
    pub fn from_trusted(hex: String) -> Self {
        Self(hex)
    }

    /// The digest as stored.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyDigest(..)")
    }
}

/// A key's text, as created or as presented: its id and its secret. Its
/// `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyText {
    id: ApiKeyId,
    secret: String,
}

impl ApiKeyText {
    /// What every key's text starts with.
    pub const PREFIX: &'static str = "cfk_";
    /// The length of a secret: 32 bytes in base64url, unpadded.
    pub const SECRET_CHARS: usize = 43;

    /// Whether a bearer credential is meant as an API key (it has the
    /// prefix), whether or not it is a valid one.
    #[must_use]
    pub fn is_key(credential: &str) -> bool {
        credential.starts_with(Self::PREFIX)
    }

    /// A key's text from its parts (a freshly minted secret).
    ///
    /// # Errors
    /// [`DomainError::Internal`] when the secret is not
    /// [`SECRET_CHARS`](Self::SECRET_CHARS) base64url characters.
    pub fn new(id: ApiKeyId, secret: String) -> Result<Self, DomainError> {
        if valid_secret(&secret) {
            Ok(Self { id, secret })
        } else {
            Err(DomainError::internal("a minted key secret is malformed"))
        }
    }

    /// Reads a presented credential: `None` unless it has the form of a
    /// key's text exactly.
    #[must_use]
    pub fn parse(credential: &str) -> Option<Self> {
        let rest = credential.strip_prefix(Self::PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let valid_id = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid_id || !valid_secret(secret) {
            return None;
        }
        let id = Uuid::try_parse(id).ok()?;
        Some(Self {
            id: ApiKeyId::from_uuid(id),
            secret: secret.to_owned(),
        })
    }

    /// The key's id.
    #[must_use]
    pub const fn id(&self) -> ApiKeyId {
        self.id
    }

    /// The secret part (never log it).
    #[must_use]
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The whole text, to hand to the key's owner once (never log it).
    #[must_use]
    pub fn expose(&self) -> String {
        format!(
            "{}{}_{}",
            Self::PREFIX,
            self.id.as_uuid().simple(),
            self.secret
        )
    }
}

fn valid_secret(secret: &str) -> bool {
    secret.len() == ApiKeyText::SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl fmt::Debug for ApiKeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyText")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_known_names_only_and_store_in_one_order() {
        let scopes = Scopes::parse(&["usage:read", "conversations:read", "usage:read"]).unwrap();
        assert!(scopes.contains(Scope::ConversationsRead));
        assert!(scopes.contains(Scope::UsageRead));
        assert!(!scopes.contains(Scope::ConversationsWrite));
        assert_eq!(scopes.stored(), "conversations:read usage:read");
        assert_eq!(Scopes::from_stored(&scopes.stored()).unwrap(), scopes);
        for bad in [
            &[][..],
            &["conversations:delete"][..],
            &["Conversations:Read"][..],
        ] {
            let err = Scopes::parse(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    DomainError::Invalid {
                        field: Field::Scopes,
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
        assert!(Scopes::from_stored("").is_err());
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()).unwrap(), scope);
        }
    }

    #[test]
    fn a_name_is_trimmed_visible_text() {
        assert_eq!(ApiKeyName::parse("  ci bot ").unwrap().as_str(), "ci bot");
        for bad in ["", "   ", "a\nb", "x\0", &"n".repeat(101)] {
            assert!(ApiKeyName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ApiKeyName::parse(&"n".repeat(100)).is_ok());
    }

    #[test]
    fn a_lifetime_is_one_day_to_ten_years() {
        for bad in [0, -1, 3_651, i64::MAX] {
            assert!(KeyLifetime::days(bad).is_err(), "{bad}");
        }
        let now = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(
            KeyLifetime::days(2).unwrap().from(now),
            now + time::Duration::days(2)
        );
    }

    #[test]
    fn a_key_text_round_trips_and_nothing_else_parses() {
        let secret = "A".repeat(42) + "_";
        let text = ApiKeyText::new(ApiKeyId::generate(), secret.clone()).unwrap();
        let exposed = text.expose();
        assert!(ApiKeyText::is_key(&exposed));
        assert_eq!(ApiKeyText::parse(&exposed), Some(text.clone()));
        assert_eq!(ApiKeyText::parse(&exposed).unwrap().secret(), secret);
        assert!(
            !format!("{text:?}").contains(&secret),
            "Debug hides the secret"
        );
        let id = text.id().as_uuid().simple().to_string();
        for bad in [
            String::new(),
            "cfk_".to_owned(),
            format!("cfk_{id}"),
            format!("cfk_{id}_{}", "A".repeat(42)),
            format!("cfk_{id}_{}", "A".repeat(44)),
            format!("cfk_{id}_{}!", "A".repeat(42)),
            format!("cfk_{}_{secret}", id.to_uppercase()),
            format!("cfk_{}_{secret}", text.id()),
            format!("CFK_{id}_{secret}"),
            format!("{exposed} "),
            "eyJhbGciOiJIUzI1NiJ9.e30.sig".to_owned(),
        ] {
            assert_eq!(ApiKeyText::parse(&bad), None, "{bad}");
        }
        assert!(ApiKeyText::new(ApiKeyId::generate(), "short".to_owned()).is_err());
    }

    #[test]
    fn a_key_expires_at_its_time() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let mut key = ApiKey {
            id: ApiKeyId::generate(),
            user_id: UserId::generate(),
            name: ApiKeyName::from_trusted("k".to_owned()),
            scopes: Scopes::parse(&["models:read"]).unwrap(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: None,
            last_used_at: None,
        };
        assert!(!key.expired(now));
        key.expires_at = Some(now);
        assert!(key.expired(now));
        assert!(!key.expired(now - time::Duration::SECOND));
    }
}
