//! Where a store lives: a PostgreSQL URL told from a file path, and a URL with its password
//! redacted for errors, logs and `Debug`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a store lives: a file, or (feature `postgres`) a PostgreSQL database. From
/// [`TokenStore::location`](crate::TokenStore::location).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A store file: the path it was opened at, with a symlink resolved to its target.
    File(PathBuf),
    /// A PostgreSQL database: its URL with the password redacted.
    Database(String),
}

impl Location {
    /// The file's path, or the redacted URL as a path (what [`TokenStore::path`] returns,
    /// and what errors name).
    ///
    /// [`TokenStore::path`]: crate::TokenStore::path
    pub fn as_path(&self) -> &Path {
        match self {
            Location::File(path) => path,
            Location::Database(url) => Path::new(url),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Database(url) => f.write_str(url),
        }
    }
}

/// The URL in `path` if it names a PostgreSQL database (`postgres://` or `postgresql://`).
pub(crate) fn database_url(path: &Path) -> Option<&str> {
    let text = path.to_str()?;
    let scheme = text.split_once("://")?.0;
    ["postgres", "postgresql"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
        .then_some(text)
}

/// `url` with its password (in the user part, or a `password=` parameter) replaced by
/// `***`, for errors, logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user, hosts)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{hosts}"),
            None => format!("{user}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::{database_url, redact_url};
    use std::path::Path;

    #[test]
    fn a_database_url_is_told_from_a_file_path() {
        assert!(database_url(Path::new("postgres://h/db")).is_some());
        assert!(database_url(Path::new("PostgreSQL://h/db")).is_some());
        assert!(database_url(Path::new("tokens.snap")).is_none());
        assert!(database_url(Path::new("./postgres/tokens.snap")).is_none());
        assert!(database_url(Path::new("mysql://h/db")).is_none());
    }

    #[test]
    fn redaction_hides_every_password_and_keeps_the_rest() {
        let cases = [
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?password=pw&sslmode=disable",
                "postgres://h/db?password=***&sslmode=disable",
            ),
            ("postgresql://u:p@w@h/db", "postgresql://u:***@h/db"),
            ("postgres://u:pw@h", "postgres://u:***@h"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url(url), redacted);
        }
    }
}
