//! Identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{DomainError, Field};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:expr, $generate:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new id (`now_v7`: time-ordered; `new_v4`: random).
            #[must_use]
            pub fn generate() -> Self {
                Self(Uuid::$generate())
            }

            /// Wraps an existing UUID (read back from storage).
            #[must_use]
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// The UUID inside.
            #[must_use]
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| DomainError::invalid($field, "must be a UUID"))
            }
        }
    };
}

uuid_id!(
    /// A user's id (UUIDv7).
    UserId,
    Field::UserId,
    now_v7
);
uuid_id!(
    /// A conversation's id (UUIDv7, so ids sort by creation time).
    ConversationId,
    Field::ConversationId,
    now_v7
);
uuid_id!(
    /// A token's id (the JWT `jti`), random (UUIDv4): nothing about it can be guessed.
    TokenId,
    Field::TokenId,
    new_v4
);
uuid_id!(
    /// An API key's id, random (UUIDv4). It is the public part of the
    /// key's text (logged, and in rate-bucket names): knowing it grants
    /// nothing without the secret.
    ApiKeyId,
    Field::Id,
    new_v4
);
uuid_id!(
    /// A login session, random (UUIDv4): every refresh token rotated from
    /// one login shares it, so reuse of any of them can revoke them all.
    FamilyId,
    Field::SessionId,
    new_v4
);

/// A message's id. Clients may choose it (the seed's `msg_001`), so it is a
/// short token rather than a UUID: 1..=64 characters of `[A-Za-z0-9_-]`.
/// Unique within its conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// Longest accepted id, in characters.
    pub const MAX_LEN: usize = 64;

    /// The id ChatGPT's clients give the root above a conversation's first
    /// messages: as a send's parent, "no parent" (a new first question);
    /// never the id of a message.
    pub const ROOT: &'static str = "client-created-root";

    /// Whether this is [`MessageId::ROOT`].
    #[must_use]
    pub fn is_root(&self) -> bool {
        self.0 == Self::ROOT
    }

    /// Validates a client-supplied id.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] when empty, too long or outside the charset.
    pub fn parse(value: impl Into<String>) -> Result<Self, DomainError> {
        let value = value.into();
        let ok_len = !value.is_empty() && value.len() <= Self::MAX_LEN;
        let ok_chars = value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok_len && ok_chars {
            Ok(Self(value))
        } else {
            Err(DomainError::invalid(
                Field::Id,
                "must be 1 to 64 characters of letters, digits, '_' or '-'",
            ))
        }
    }

    /// A new server-chosen id (a UUIDv7 in its hyphenated form).
    #[must_use]
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_v7_and_ordered() {
        let a = ConversationId::generate();
        let b = ConversationId::generate();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a <= b);
    }

    #[test]
    fn token_and_session_ids_are_random() {
        assert_eq!(TokenId::generate().as_uuid().get_version_num(), 4);
        assert_eq!(FamilyId::generate().as_uuid().get_version_num(), 4);
        assert_ne!(TokenId::generate(), TokenId::generate());
    }

    #[test]
    fn uuid_ids_parse_and_refuse_garbage() {
        let id = UserId::generate();
        assert_eq!(id.to_string().parse::<UserId>().unwrap(), id);
        assert!("not-a-uuid".parse::<UserId>().is_err());
    }

    #[test]
    fn message_ids_accept_the_seed_shape() {
        assert_eq!(MessageId::parse("msg_001").unwrap().as_str(), "msg_001");
        assert!(MessageId::parse(MessageId::generate().as_str()).is_ok());
    }

    #[test]
    fn message_ids_refuse_bad_values() {
        for bad in ["", "a b", "x\0", "é", &"a".repeat(65)] {
            assert!(MessageId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(serde_json::from_str::<MessageId>("\"../etc\"").is_err());
    }
}
