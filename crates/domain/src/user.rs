//! Users and their credentials.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::text::check_text;
use crate::{DomainError, Field, UserId};

/// A login name: 3..=32 characters of `[a-zA-Z0-9_-]`, not reserved, stored
/// lower-cased so that `Alice` and `alice` are the same account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// Shortest username, in characters.
    pub const MIN_CHARS: usize = 3;
    /// Longest username, in characters.
    pub const MAX_CHARS: usize = 32;
    /// Names nobody may register (seed `001`'s blocklist), compared
    /// case-insensitively.
    pub const RESERVED: &'static [&'static str] = &["admin", "root", "null", "undefined"];

    /// Validates and normalises a username.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `username` when the length, charset
    /// or blocklist rule is broken.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        check_text(Field::Username, value, Self::MIN_CHARS, Self::MAX_CHARS)?;
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(DomainError::invalid(
                Field::Username,
                "may contain only letters, digits, '_' and '-'",
            ));
        }
        let lower = value.to_ascii_lowercase();
        if Self::RESERVED.contains(&lower.as_str()) {
            return Err(DomainError::invalid(Field::Username, "is not allowed"));
        }
        Ok(Self(lower))
    }

    /// Rebuilds a username read back from storage, where it was validated on
    /// the way in.
    #[must_use]
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The username as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address, lower-cased: `local@domain.tld`, at most 254
/// characters, ASCII only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Shortest address, in characters.
    pub const MIN_CHARS: usize = 3;
    /// Longest address, in characters.
    pub const MAX_CHARS: usize = 254;
    /// The shape [`Email::parse`] accepts, as a regular expression (ECMA
    /// 262 and Rust `regex` alike): dot-separated runs of `[A-Za-z0-9_+-]`,
    /// `@`, labels of letters, digits and inner `-`, and a top-level domain
    /// of two or more letters.
    pub const PATTERN: &'static str = "^[A-Za-z0-9_+-]+(\\.[A-Za-z0-9_+-]+)*@([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\\.)+[A-Za-z]{2,}$";

    /// Validates and normalises an address: [`Email::PATTERN`], 3..=254
    /// characters.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `email` when the shape is wrong.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        check_text(Field::Email, value, Self::MIN_CHARS, Self::MAX_CHARS)?;
        let bad = || DomainError::invalid(Field::Email, "is not a valid e-mail address");
        let (local, domain) = value.split_once('@').ok_or_else(bad)?;
        let local_ok = local.split('.').all(|run| {
            !run.is_empty()
                && run
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
        });
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
        if local_ok && domain_ok {
            Ok(Self(value.to_ascii_lowercase()))
        } else {
            Err(bad())
        }
    }

    /// Rebuilds an address read back from storage.
    #[must_use]
    pub fn from_trusted(value: String) -> Self {
        Self(value)
    }

    /// The address as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An ordinary account.
    User,
    /// May use the admin routes.
    Admin,
}

impl Role {
    /// The role's stored and serialised name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    /// Parses a stored role name.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] for an unknown name.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        match value {
            "user" => Ok(Self::User),
            "admin" => Ok(Self::Admin),
            _ => Err(DomainError::invalid(
                Field::Role,
                "must be 'user' or 'admin'",
            )),
        }
    }
}

/// The most common passwords, refused whatever else is true of them
/// (compared lower-cased).
const COMMON_PASSWORDS: &[&str] = &[
    "12345678",
    "123456789",
    "1234567890",
    "password",
    "password1",
    "password123",
    "qwerty123",
    "qwertyuiop",
    "11111111",
    "00000000",
    "iloveyou",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "abc12345",
    "abcd1234",
    "1q2w3e4r",
    "1qaz2wsx",
    "qwerty12",
    "letmein1",
    "trustno1",
    "superman",
    "starwars",
    "passw0rd",
    "p@ssw0rd",
    "changeme",
    "administrator",
    "88888888",
    "12341234",
    "87654321",
    "monkey123",
    "dragon123",
];

/// A plain-text password on its way to the hasher. Its `Debug` never shows
/// the value.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Shortest accepted password, in characters.
    pub const MIN_CHARS: usize = 8;
    /// Longest accepted password, in characters; checked before any hashing,
    /// so a megabyte-long password costs nothing.
    pub const MAX_CHARS: usize = 128;
    /// The most common passwords (lower case), refused in any case.
    pub const COMMON: &'static [&'static str] = COMMON_PASSWORDS;

    /// Validates a new password for the account named `username` / `email`.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on field `password` when it is too short or
    /// long, contains the username, equals the e-mail address, or is one of
    /// the most common passwords.
    pub fn new_for(value: &str, username: &Username, email: &Email) -> Result<Self, DomainError> {
        // Bound the work first: a byte length over 4 bytes per allowed
        // character is too long whatever its characters are.
        if value.len() > Self::MAX_CHARS * 4 {
            return Err(too_long());
        }
        check_text(Field::Password, value, Self::MIN_CHARS, Self::MAX_CHARS)?;
        let lower = value.to_lowercase();
        if lower.contains(username.as_str()) {
            return Err(DomainError::invalid(
                Field::Password,
                "must not contain the username",
            ));
        }
        if lower == email.as_str() {
            return Err(DomainError::invalid(
                Field::Password,
                "must not be the e-mail address",
            ));
        }
        if Self::COMMON.contains(&lower.as_str()) {
            return Err(DomainError::invalid(Field::Password, "is too common"));
        }
        Ok(Self(value.to_owned()))
    }

    /// Wraps a password presented at login, with only the length cap applied
    /// (policy is for new passwords; an old one must still be checkable).
    ///
    /// # Errors
    /// [`DomainError::Invalid`] when longer than [`Password::MAX_CHARS`].
    pub fn presented(value: &str) -> Result<Self, DomainError> {
        if value.len() > Self::MAX_CHARS * 4 || value.chars().count() > Self::MAX_CHARS {
            return Err(too_long());
        }
        Ok(Self(value.to_owned()))
    }

    /// The secret text, for the hasher only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn too_long() -> DomainError {
    DomainError::invalid(Field::Password, "must be between 8 and 128 characters")
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

/// A password hash in PHC string format (`$pbkdf2-sha256$i=…$salt$hash`).
/// Never serialised; its `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string produced by a hasher or read from storage.
    #[must_use]
    pub fn new(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash([REDACTED])")
    }
}

/// A registered account, without its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable id.
    pub id: UserId,
    /// Login name (lower-case).
    pub username: Username,
    /// E-mail address (lower-case).
    pub email: Email,
    /// What the user may do.
    pub role: Role,
    /// A disabled user can't log in or use tokens.
    pub disabled: bool,
    /// When the account was created.
    pub created_at: OffsetDateTime,
    /// When the account last changed.
    pub updated_at: OffsetDateTime,
}

/// Everything needed to store a new account.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The id to give it.
    pub id: UserId,
    /// Login name.
    pub username: Username,
    /// E-mail address.
    pub email: Email,
    /// Role.
    pub role: Role,
    /// The hash of the chosen password.
    pub password_hash: PasswordHash,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_is_lowercased() {
        assert_eq!(Username::parse("Alice_01").unwrap().as_str(), "alice_01");
    }

    #[test]
    fn username_refuses_the_seed_blocklist_in_any_case() {
        for name in ["admin", "ROOT", "Null", "undefined"] {
            assert!(Username::parse(name).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn username_refuses_bad_charset_and_lengths() {
        for bad in ["ab", "a b c", "alice!", "élodie", "x\0yz", &"a".repeat(33)] {
            let err = Username::parse(bad).unwrap_err();
            assert!(
                matches!(err, DomainError::Invalid { ref field, .. } if *field == Field::Username)
            );
        }
        assert!(Username::parse(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn email_accepts_ordinary_addresses_and_lowercases() {
        assert_eq!(
            Email::parse("Alice.B+tag@Example.co.uk").unwrap().as_str(),
            "alice.b+tag@example.co.uk"
        );
    }

    #[test]
    fn email_refuses_bad_shapes() {
        for bad in [
            "plain", "@x.io", "a@", "a@b", "a@b.c", "a@-b.io", "a@b..io", "a b@c.io", "a@@b.io",
            ".a@b.io", "a@b.i0", "a\0@b.io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn password_policy() {
        let u = Username::parse("alice").unwrap();
        let e = Email::parse("alice@example.com").unwrap();
        assert!(Password::new_for("correct horse battery", &u, &e).is_ok());
        for bad in ["short", "Password123", "my-alice-pass", "alice@example.com"] {
            assert!(Password::new_for(bad, &u, &e).is_err(), "{bad} accepted");
        }
        assert!(Password::new_for(&"x".repeat(129), &u, &e).is_err());
        assert!(Password::new_for(&"x".repeat(1_000_000), &u, &e).is_err());
        assert!(Password::new_for(&"é".repeat(128), &u, &e).is_ok());
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let p = Password::presented("hunter2hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        let h = PasswordHash::new("$pbkdf2-sha256$i=1$c2FsdA$aGFzaA".into());
        assert!(!format!("{h:?}").contains("pbkdf2"));
    }

    #[test]
    fn role_round_trips() {
        for r in [Role::User, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()).unwrap(), r);
        }
        assert!(Role::parse("root").is_err());
    }
}
