//! Where a store lives: a PostgreSQL URL told from a file path, and a URL with its password
//! redacted for errors, logs and `Debug`.

use std::fmt;
use std::ops::Range;
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
    /// What `path` names, by the one rule [`TokenStore::open`](crate::TokenStore::open)
    /// uses: a `postgres://` or `postgresql://` URL (scheme in any case) is a database, held
    /// here with its password redacted; anything else is a file path, as given.
    ///
    /// ```
    /// use std::path::Path;
    /// use tokencache::Location;
    /// assert!(matches!(Location::of(Path::new("postgres://u:pw@db/t")), Location::Database(url) if url == "postgres://u:***@db/t"));
    /// assert!(matches!(Location::of(Path::new("./postgres/tokens.snap")), Location::File(_)));
    /// ```
    pub fn of(path: &Path) -> Location {
        match database_url(path) {
            Some(url) => Location::Database(redact_url(url)),
            None => Location::File(path.to_path_buf()),
        }
    }

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

/// How tokencache shows a store path in errors, logs, [`TokenStore::path`](crate::TokenStore::path) and the CLI: a
/// file path as it is, a PostgreSQL URL (`postgres://` or `postgresql://`) with every
/// password in it replaced by `***`.
///
/// ```
/// use std::path::Path;
/// assert_eq!(
///     tokencache::redacted_path(Path::new("postgres://app:s3/cr@t@db:5432/tokens")),
///     "postgres://app:***@db:5432/tokens"
/// );
/// assert_eq!(tokencache::redacted_path(Path::new("/var/lib/tokens.snap")), "/var/lib/tokens.snap");
/// ```
pub fn redacted_path(path: &Path) -> String {
    match database_url(path) {
        Some(url) => redact_url(url),
        None => path.display().to_string(),
    }
}

/// `url` with every password in it replaced by `***`, for errors, logs and `Debug`.
///
/// What it hides is a superset of what the client (`tokio-postgres` 0.7's
/// `Config::from_str`, which `postgres` 0.19 uses) reads as a password, so that no way of
/// writing a URL shows one:
///
/// - **in the user part**: the client takes the credentials up to the *first* `@` of the
///   whole URL, and the password after their first `:`, so `/`, `?`, `:` and `#` may stand
///   in a password unescaped. A password with an unescaped `@` is cut there by the client
///   (the connection then fails), and the rest must not show either: everything from the
///   first `:` to the *last* `@` of the URL is hidden. (A URL with an `@` in a parameter
///   value loses its host from the display too; the display may hide too much, never a
///   password.)
/// - **in the parameters** (after the first `?`, `&`-separated, the key up to the first
///   `=`): the client percent-decodes the key, so `pass%77ord=` is `password=`. Every value
///   whose decoded key contains `password` (any case) is hidden, with the `&`-separated
///   pieces after it up to the next parameter the client knows (a piece with no `=`, or
///   with a key the client refuses, is no parameter: a person meant it as part of the
///   password).
///
/// Anything else is kept, byte for byte.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(hidden) = hidden_parts(url).map(|(hidden, _)| hidden) else {
        return url.to_owned();
    };
    // Overlapping or touching ranges become one `***`. Every bound is at an ASCII byte
    // (`:`, `@`, `?`, `&`, `=`), so slicing there is safe.
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(hidden.len());
    for range in hidden {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    let mut redacted = String::with_capacity(url.len());
    let mut shown = 0;
    for range in merged {
        redacted.push_str(&url[shown..range.start]);
        redacted.push_str("***");
        shown = range.end;
    }
    redacted.push_str(&url[shown..]);
    redacted
}

/// Whether a `password` parameter of `url` runs on over `&`-pieces the client would not
/// take as part of it (see [`redact_url`]): the client would then fail naming such a piece
/// (``unknown option `…` ``) in its error, so `open` refuses the URL before the client sees it.
#[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
pub(crate) fn password_spills_into_parameters(url: &str) -> bool {
    hidden_parts(url).is_some_and(|(_, spilled)| spilled)
}

/// The byte ranges of `url` that [`redact_url`] hides, sorted by start, and whether a
/// hidden parameter value spilled over `&`-pieces; `None` if `url` has no `://`.
fn hidden_parts(url: &str) -> Option<(Vec<Range<usize>>, bool)> {
    let (scheme, rest) = url.split_once("://")?;
    let offset = scheme.len() + 3;
    let mut spilled = false;
    let mut hidden: Vec<Range<usize>> = Vec::new();
    // The user part: from its first `:` to the last `@`.
    if let Some(at) = rest.rfind('@') {
        if let Some(colon) = rest[..at].find(':') {
            hidden.push(offset + colon + 1..offset + at);
        }
    }
    // The parameters.
    if let Some(question) = rest.find('?') {
        let mut start = offset + question + 1;
        let mut hiding = false;
        for piece in url[start..].split('&') {
            let end = start + piece.len();
            let key = piece.split_once('=').map(|(key, _)| percent_decode(key));
            match key {
                Some(key) if key.to_ascii_lowercase().contains("password") => {
                    let value = start + piece.find('=').map_or(0, |i| i + 1);
                    hidden.push(value..end);
                    hiding = true;
                }
                // A parameter of the client's own ends a hidden value.
                Some(key) if CLIENT_PARAMETERS.contains(&key.as_str()) => hiding = false,
                // Anything else after a hidden value (no `=`, or a key the client refuses)
                // is taken as more of that value: `&` and `=` may stand in a password.
                _ if hiding => {
                    if let Some(last) = hidden.last_mut() {
                        last.end = end;
                    }
                    spilled = true;
                }
                _ => {}
            }
            start = end + 1;
        }
    }
    hidden.sort_by_key(|range| range.start);
    Some((hidden, spilled))
}

/// The parameter keys `tokio-postgres` 0.7 accepts besides `password` (`Config::param`),
/// and the TLS ones `open` takes out before it (`crate::tls::TlsOptions::split_url`); any other is
/// refused.
const CLIENT_PARAMETERS: [&str; 21] = [
    // Taken out of the URL by `open` (crate::tls) before the client sees it.
    "sslrootcert",
    "sslcert",
    "sslkey",
    "user",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// `text` with its `%XX` escapes decoded, as the client decodes a parameter's key (an
/// invalid escape is kept as written, invalid UTF-8 replaced).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(high), Some(low)) if hex(high).is_some() && hex(low).is_some() => {
                let value = hex(high).unwrap_or(0) * 16 + hex(low).unwrap_or(0);
                decoded.push(value as u8);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
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
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
            (
                "postgres://h/db?password=pw&sslmode=disable",
                "postgres://h/db?password=***&sslmode=disable",
            ),
            ("postgresql://u:p@w@h/db", "postgresql://u:***@h/db"),
            ("postgres://u:pw@h", "postgres://u:***@h"),
            // Finding 15: a `/` or `?` in the password (base64 has `/`); the client reads
            // the credentials up to the first `@` of the whole URL.
            (
                "postgres://app:Ab/Cd+ef==@db:5432/tokens",
                "postgres://app:***@db:5432/tokens",
            ),
            (
                "postgres://app:a?b/c@db/t?sslmode=require",
                "postgres://app:***@db/t?sslmode=require",
            ),
            ("postgres://app:a#b:c@db/t", "postgres://app:***@db/t"),
            ("postgres://app:a%40b%2Fc@db/t", "postgres://app:***@db/t"),
            // An unescaped `@` (the client cuts the password there): nothing of it shows.
            ("postgres://app:se@cr/et@db/t", "postgres://app:***@db/t"),
            // A percent-encoded key is the client's `password`; any case, any `*password*`.
            (
                "postgres://h/db?pass%77ord=pw&sslmode=disable",
                "postgres://h/db?pass%77ord=***&sslmode=disable",
            ),
            (
                "postgres://h/db?%70%61ssword=pw",
                "postgres://h/db?%70%61ssword=***",
            ),
            (
                "postgres://h/db?PASSWORD=pw",
                "postgres://h/db?PASSWORD=***",
            ),
            (
                "postgres://h/db?sslpassword=pw",
                "postgres://h/db?sslpassword=***",
            ),
            // A value with `&`, `=`, `/`, `?` or `@` in it.
            (
                "postgres://h/db?password=a&b&sslmode=disable",
                "postgres://h/db?password=***&sslmode=disable",
            ),
            (
                "postgres://h/db?password=a=b/c?d",
                "postgres://h/db?password=***",
            ),
            (
                "postgres://h/db?password=a@b",
                "postgres://h/db?password=***",
            ),
            ("postgres://h/db?password=", "postgres://h/db?password=***"),
            // Both at once.
            (
                "postgres://u:x/y@h/db?password=z",
                "postgres://u:***@h/db?password=***",
            ),
            // An `@` in another parameter: the display may hide too much, never a password.
            (
                "postgres://h/db?application_name=me@host&password=pw",
                "postgres://h/db?application_name=me@host&password=***",
            ),
            (
                "postgres://h:5432/db?application_name=a@b",
                "postgres://h:***@b",
            ),
            ("PostgreSQL://u:pw@h/db", "PostgreSQL://u:***@h/db"),
            // The TLS parameters end a password value; their paths are no secret.
            (
                "postgres://h/db?password=a&b&sslrootcert=/ca.pem&sslmode=verify-full",
                "postgres://h/db?password=***&sslrootcert=/ca.pem&sslmode=verify-full",
            ),
            (
                "postgres://ü:pä@h/dß?password=ö",
                "postgres://ü:***@h/dß?password=***",
            ),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn a_password_parameter_that_spills_into_others_is_told() {
        use super::password_spills_into_parameters as spills;
        assert!(spills("postgres://h/db?password=a&b"));
        assert!(spills("postgres://h/db?password=a&b=c&sslmode=disable"));
        assert!(!spills("postgres://h/db?password=a&sslmode=disable"));
        assert!(!spills(
            "postgres://h/db?password=a&sslrootcert=/ca.pem&sslcert=c&sslkey=k"
        ));
        assert!(!spills("postgres://h/db?password=a%26b"));
        assert!(!spills("postgres://u:a&b@h/db"));
        assert!(
            !spills("postgres://h/db?x&y=z"),
            "no password: the client's own error"
        );
    }

    #[test]
    fn a_file_path_is_shown_as_it_is() {
        for path in ["tokens.snap", "/var/lib/a:b@c/tokens.snap", "password=x"] {
            assert_eq!(super::redacted_path(Path::new(path)), path);
        }
        assert_eq!(
            super::redacted_path(Path::new("postgres://u:pw@h/db")),
            "postgres://u:***@h/db"
        );
    }

    mod props {
        use super::redact_url;
        use proptest::prelude::*;

        /// A password in which every character that is not a letter is followed by an
        /// upper-case letter, and the rest of the URL has none: an upper-case letter in the
        /// redacted URL is a piece of the password shown.
        fn password(specials: &'static str) -> impl Strategy<Value = String> {
            let special = proptest::sample::select(specials.chars().collect::<Vec<_>>());
            let piece = prop_oneof![
                "[A-Z]{1,3}",
                (special, "[A-Z]").prop_map(|(c, upper)| format!("{c}{upper}")),
            ];
            proptest::collection::vec(piece, 1..8).prop_map(|pieces| pieces.concat())
        }

        fn tail() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                Just(""),
                Just("/db"),
                Just("/db?sslmode=disable"),
                Just("?application_name=me&connect_timeout=5"),
            ]
        }

        fn assert_hidden(url: &str) -> Result<(), TestCaseError> {
            let redacted = redact_url(url);
            prop_assert!(
                !redacted.chars().any(|c| c.is_ascii_uppercase()),
                "{url} shown as {redacted}"
            );
            #[cfg(feature = "postgres")]
            if let Ok(config) = url.parse::<postgres::Config>() {
                if let Some(password) = config.get_password().filter(|p| !p.is_empty()) {
                    let password = String::from_utf8_lossy(password);
                    prop_assert!(!redacted.contains(&*password), "{url}: {redacted}");
                }
            }
            Ok(())
        }

        proptest! {
            /// Finding 15: a password in the user part, with any of `/ ? # : @ % & =` in it,
            /// never shows, whatever follows; with the `postgres` feature the password the
            /// client itself reads never shows either.
            #[test]
            fn a_password_in_the_user_part_never_shows(
                password in password("/?#:@%&=+"),
                host in prop_oneof![Just("h"), Just("h:5432"), Just("h1,h2:6543")],
                tail in tail(),
                scheme in prop_oneof![Just("postgres"), Just("postgresql")],
            ) {
                assert_hidden(&format!("{scheme}://user:{password}@{host}{tail}"))?;
            }

            /// Finding 15: a `password` parameter, its key written in any case or
            /// percent-encoding, its value holding `/ ? @ : % =` or `&` pieces without `=`.
            #[test]
            fn a_password_parameter_never_shows(
                key in prop_oneof![
                    Just("password"), Just("pass%77ord"), Just("%70assword"),
                    Just("PASSWORD"), Just("Password"), Just("sslpassword"),
                ],
                password in password("/?@:%=&"),
                before in prop_oneof![Just(""), Just("sslmode=disable&")],
                after in prop_oneof![Just(""), Just("&connect_timeout=5")],
                user in prop_oneof![Just(""), Just("u@"), Just("u:x@")],
            ) {
                // The key is matched after decoding; the letters of a key are not a password.
                let url = format!("postgres://{user}h/db?{before}{key}={password}{after}");
                let redacted = redact_url(&url);
                let shown: String = redacted.replace(key, "");
                prop_assert!(
                    !shown.chars().any(|c| c.is_ascii_uppercase()),
                    "{url} shown as {redacted}"
                );
            }

            /// Any text at all: no panic (slicing at char boundaries), and no `:...@`
            /// password of a well-formed user part survives.
            #[test]
            fn any_text_redacts_without_panicking(text in any::<String>()) {
                let _ = redact_url(&text);
                let _ = redact_url(&format!("postgres://{text}"));
            }
        }
    }
}
