//! Shared rules for text that comes from clients.

use crate::{DomainError, Field};

/// Checks that `value` has between `min` and `max` characters (Unicode
/// scalar values, not bytes) and holds no NUL byte, which PostgreSQL cannot
/// store and which has no business in any text field.
pub(crate) fn check_text(
    field: Field,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), DomainError> {
    if value.contains('\0') {
        return Err(DomainError::invalid(field, "must not contain NUL bytes"));
    }
    let len = value.chars().count();
    if len < min || len > max {
        return Err(DomainError::invalid(
            field,
            format!("must be between {min} and {max} characters"),
        ));
    }
    Ok(())
}

/// A one-line name (a title, a key's name): `check_text`'s bounds, no
/// control character, not only white space; returned without its leading
/// and trailing white space.
pub(crate) fn visible_line(field: Field, value: &str, max: usize) -> Result<String, DomainError> {
    check_text(field, value, 1, max)?;
    if value.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(DomainError::invalid(field, "must not be blank"));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::check_text;
    use crate::Field;

    #[test]
    fn counts_characters_not_bytes() {
        // Four characters, twelve bytes.
        assert!(check_text(Field::Title, "日本語字", 1, 4).is_ok());
        assert!(check_text(Field::Title, "日本語字x", 1, 4).is_err());
    }

    #[test]
    fn refuses_nul_bytes() {
        let err = check_text(Field::Title, "a\0b", 0, 10).unwrap_err();
        assert!(err.to_string().contains("NUL"));
    }

    #[test]
    fn refuses_too_short() {
        assert!(check_text(Field::Title, "", 1, 10).is_err());
    }
}
