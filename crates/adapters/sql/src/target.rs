//! Which database a URL names.

use std::fmt;
use std::path::PathBuf;

use crate::SqlError;

/// The database backends Confab runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, for running several instances.
    Postgres,
    /// SQLite, the embedded default.
    Sqlite,
}

/// A parsed database URL.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    /// A PostgreSQL connection string, passed to libpq as it is.
    Postgres(String),
    /// A SQLite database file.
    Sqlite(PathBuf),
}

impl DatabaseTarget {
    /// Parses `postgres://…`, `postgresql://…`, `sqlite://relative/path.db`
    /// or `sqlite:///absolute/path.db`.
    ///
    /// # Errors
    /// [`SqlError::Url`] for any other scheme, an empty SQLite path or an
    /// in-memory SQLite database (each pooled connection would get its own).
    pub fn parse(url: &str) -> Result<Self, SqlError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() || path == ":memory:" || path.starts_with('?') {
                return Err(SqlError::Url(
                    "a sqlite:// URL needs a file path, e.g. sqlite://data/confab.db".into(),
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        let scheme = url.split_once(':').map_or("", |(s, _)| s);
        Err(SqlError::Url(format!(
            "unsupported database URL scheme '{scheme}': use postgres://… or sqlite://path"
        )))
    }

    /// The backend this target uses.
    #[must_use]
    pub const fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The URL with any password removed, safe to log.
    #[must_use]
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
            Self::Postgres(url) => redact_postgres(url),
        }
    }
}

fn redact_postgres(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres://[unparsable]".to_owned();
    };
    let (authority, tail) = rest.split_once('/').map_or((rest, ""), |(a, t)| (a, t));
    // Drop the query string: it may carry `password=`.
    let db = tail.split('?').next().unwrap_or("");
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}@{host}")
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{host}/{db}")
}

impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_backend_by_scheme() {
        assert_eq!(
            DatabaseTarget::parse("postgres://h/db").unwrap().backend(),
            Backend::Postgres
        );
        assert_eq!(
            DatabaseTarget::parse("postgresql://h/db")
                .unwrap()
                .backend(),
            Backend::Postgres
        );
        assert_eq!(
            DatabaseTarget::parse("sqlite://data/x.db").unwrap(),
            DatabaseTarget::Sqlite(PathBuf::from("data/x.db"))
        );
        assert_eq!(
            DatabaseTarget::parse("sqlite:///tmp/x.db").unwrap(),
            DatabaseTarget::Sqlite(PathBuf::from("/tmp/x.db"))
        );
    }

    #[test]
    fn refuses_unknown_schemes_instead_of_making_a_file() {
        for bad in [
            "postgre://h/db",
            "mysql://h/db",
            "data/confab.db",
            "sqlite://",
            "sqlite://:memory:",
        ] {
            let err = DatabaseTarget::parse(bad).unwrap_err();
            assert!(matches!(err, SqlError::Url(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn redaction_hides_passwords() {
        let t =
            DatabaseTarget::parse("postgres://bob:s3cret@db:5432/confab?password=s3cret").unwrap();
        assert_eq!(t.redacted(), "postgres://bob@db:5432/confab");
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
