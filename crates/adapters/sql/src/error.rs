//! Errors of this adapter, and their translation into [`DomainError`].

use confab_domain::{DomainError, Field};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// What can fail while opening or migrating the store.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The URL is not one this adapter understands.
    #[error("invalid DATABASE_URL: {0}")]
    Url(String),
    /// The database could not be reached or opened.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The redacted URL.
        target: String,
        /// The driver's explanation.
        reason: String,
    },
    /// The store's threads could not be started.
    #[error("cannot start the database threads: {0}")]
    Threads(#[source] std::io::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A query failed while setting up.
    #[error("database error: {0}")]
    Query(#[from] DieselError),
    /// The filesystem refused (creating the SQLite directory).
    #[error("cannot prepare the SQLite file: {0}")]
    Io(#[from] std::io::Error),
}

/// Translates a diesel error at the adapter boundary.
pub(crate) fn domain(err: DieselError) -> DomainError {
    match err {
        DieselError::NotFound => DomainError::NotFound,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            let text = format!(
                "{} {}",
                info.constraint_name().unwrap_or(""),
                info.message()
            );
            DomainError::Duplicate {
                field: duplicate_field(&text),
            }
        }
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            DomainError::NotFound
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
            DomainError::unavailable(info.message().to_owned())
        }
        DieselError::DatabaseError(kind, info) if is_busy(kind, info.message()) => {
            DomainError::unavailable(info.message().to_owned())
        }
        other => DomainError::internal(other),
    }
}

/// SQLite answers "database is locked" when its busy timeout runs out, and
/// PostgreSQL a serialization failure under contention: both are transient.
fn is_busy(kind: DatabaseErrorKind, message: &str) -> bool {
    matches!(kind, DatabaseErrorKind::SerializationFailure)
        || message.contains("database is locked")
        || message.contains("database is busy")
}

/// Names the client field behind a unique constraint from its name (on
/// PostgreSQL) or message (on SQLite: `UNIQUE constraint failed: users.email`).
fn duplicate_field(text: &str) -> Field {
    if text.contains("username") {
        Field::Username
    } else if text.contains("email") {
        Field::Email
    } else if text.contains("messages") {
        Field::MessageId
    } else if text.contains("conversations") {
        Field::ConversationId
    } else {
        Field::Id
    }
}

#[cfg(test)]
mod tests {
    use super::duplicate_field;
    use confab_domain::Field;

    #[test]
    fn duplicate_fields_from_both_backends() {
        assert_eq!(
            duplicate_field("users_username_key duplicate key"),
            Field::Username
        );
        assert_eq!(
            duplicate_field(" UNIQUE constraint failed: users.email"),
            Field::Email
        );
        assert_eq!(
            duplicate_field(" UNIQUE constraint failed: messages.conversation_id, messages.id"),
            Field::MessageId
        );
        assert_eq!(duplicate_field("conversations_pkey"), Field::ConversationId);
    }
}
