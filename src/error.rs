//! What can go wrong: [`Error`] for store operations, [`Rejection`] for a refused token.
//!
//! Messages name the file or token id involved and say what to do next. No message ever
//! contains a token secret.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::snapshot::{DecodeError, FORMAT_VERSION};
use crate::token::TokenId;

/// The error of a store operation (`open`, `issue`, `revoke`, `flush`, `close`...).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a file the store uses.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What the store was doing, e.g. "write a snapshot to".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error (shared: one failed write can fail many waiting callers).
        #[source]
        source: Arc<io::Error>,
    },

    /// A PostgreSQL store's database failed or refused (feature `postgres`): it could not
    /// be reached, its schema is not one this build uses, or a transaction failed.
    #[error("could not {action} {url}: {cause}")]
    Database {
        /// What the store was doing, e.g. "connect to".
        action: &'static str,
        /// The database's URL with its password redacted.
        url: String,
        /// The database client's message, with its causes.
        cause: String,
    },

    /// The store file exists but is damaged or is not a tokencache store. It was not changed.
    #[error("store file {} cannot be used: {problem}. It was left untouched; restore it from a backup or move it aside to start an empty store", path.display())]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// The store file was written by a newer tokencache. It was not changed.
    #[error("store file {} has format version {found}, but this build reads up to version {supported}; upgrade tokencache to open it (the file was left untouched)", path.display())]
    FutureVersion {
        /// The store file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// Another store handle, in this process or another, has the store open.
    #[error("store {} is already open in another process or handle (lock {} is held); close it first, or use the same TokenStore handle (it is cheap to clone)", path.display(), lock.display())]
    Locked {
        /// The store file.
        path: PathBuf,
        /// The lock file that is held.
        lock: PathBuf,
    },

    /// The given path cannot hold a store file.
    #[error("cannot use {} as a store file: {reason}", path.display())]
    BadPath {
        /// The path given to `open`.
        path: PathBuf,
        /// Why it cannot be used.
        reason: &'static str,
    },

    /// The store path is a symlink to nothing. No store was created at its target.
    #[error("store path {} is a symlink to {}, which does not exist; fix the link or give the path of an existing store", path.display(), target.display())]
    DanglingLink {
        /// The path given to `open`.
        path: PathBuf,
        /// Where the link points.
        target: PathBuf,
    },

    /// The store file may be written by group or others, so anyone among them could add a
    /// token; it is not trusted. It was not changed.
    #[error("store file {} is writable by group or others (mode {mode:04o}), so anyone who can write it could add tokens; run `chmod go-w {}` and open it again", path.display(), path.display())]
    LoosePermissions {
        /// The store file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The store's persister thread stopped unexpectedly (it panicked: a bug, or a panic
    /// in a user `Clock`; the log has the panic message). Nothing more can be written, and
    /// changes not yet acknowledged were not made durable.
    #[error("the persister thread of token store {} died, so nothing more can be written to it; see the log for its panic, then open the store again", path.display())]
    PersisterDied {
        /// The store file.
        path: PathBuf,
    },

    /// No token has this id.
    #[error("no token has id {0}; `list` shows the ids this store holds")]
    UnknownId(TokenId),

    /// A `NewToken` was refused before anything was written.
    #[error("invalid token request: {0}")]
    InvalidRequest(String),

    /// A rate limit that cannot work was refused before anything was written.
    #[error("invalid rate limit: {0}")]
    InvalidRateLimit(#[from] crate::rate_limit::RateLimitError),

    /// A [`Builder`](crate::Builder) setting that cannot work was refused by `open`
    /// (the message says which and why).
    #[error("invalid store setting: {0}")]
    InvalidSetting(String),

    /// The OS random number generator failed, so no secret could be made.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),

    /// The store was closed; its persister no longer accepts changes.
    #[error("the token store {} is closed; open it again to make changes", path.display())]
    Closed {
        /// The store file.
        path: PathBuf,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// A failure of the database at `url` (already redacted) while doing `action`.
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) fn database(
        action: &'static str,
        url: &std::path::Path,
        cause: impl ToString,
    ) -> Error {
        Error::Database {
            action,
            url: url.display().to_string(),
            cause: cause.to_string(),
        }
    }

    /// A store that must exist to be read (`inspect`, `StoreView::read`) but does not.
    pub(crate) fn missing(path: PathBuf) -> Error {
        Error::BadPath {
            path,
            reason: "it does not exist; check the path",
        }
    }
}

/// Why `validate` refused a token. Cheap to copy; the hot path never allocates one.
///
/// New reasons may be added in a minor release (`#[non_exhaustive]`): a `match` needs a
/// `_` arm, for which [`as_str`](Self::as_str) and [`advice`](Self::advice) describe any
/// reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The string is not shaped like a tokencache token, or its checksum is wrong.
    #[error("malformed token")]
    Malformed,
    /// No token matches (unknown id and wrong secret look the same, on purpose).
    #[error("unknown token")]
    Unknown,
    /// The token was revoked.
    #[error("token revoked")]
    Revoked,
    /// The token's expiry time has passed.
    #[error("token expired")]
    Expired,
    /// The token is over its rate limit; try again after `retry_after`.
    #[error("rate limited: retry after {} ms", retry_after.as_millis())]
    RateLimited {
        /// How long until a request would be admitted.
        retry_after: Duration,
    },
    /// The token is valid but lacks the required scope.
    #[error("token lacks the required scope")]
    MissingScope,
    /// A replica of a PostgreSQL store with [`max_staleness`](crate::Builder::max_staleness)
    /// set has not caught up with the database for longer than that, so it does not vouch
    /// for any token (a revocation elsewhere may not have reached it). Try again later.
    #[error("token store unavailable: this replica is too far behind its database")]
    Unavailable,
    /// The token has credits ([`Credits`](crate::Credits)) and not enough remain for this
    /// call's cost; nothing was spent. `retry_after` is the time to the next refill, if the
    /// credits refill.
    #[error("usage exceeded: the token's credits are spent")]
    UsageExceeded {
        /// How long until the credits refill, if they do.
        retry_after: Option<Duration>,
    },
}

impl Rejection {
    /// A short stable name for logs, metrics and the CLI (`"malformed"`, `"revoked"`...).
    pub fn as_str(&self) -> &'static str {
        self.reason().name
    }

    /// What a person should make of this rejection, in a sentence (as the CLI prints it
    /// after the name): `"this token was revoked; issue a new one"`. For
    /// [`RateLimited`](Rejection::RateLimited) it reads "retry after", to be followed by
    /// the wait.
    pub fn advice(&self) -> &'static str {
        self.reason().advice
    }

    /// This rejection's row of [`REASONS`].
    pub(crate) fn reason(&self) -> &'static Reason {
        &REASONS[self.index()]
    }

    /// This rejection's place in [`REASONS`] (and in the stats' counters). The one match
    /// over `Rejection` that every other place reads through: a new reason gets its row
    /// here.
    pub(crate) fn index(&self) -> usize {
        match self {
            Rejection::Malformed => 0,
            Rejection::Unknown => 1,
            Rejection::Revoked => 2,
            Rejection::Expired => 3,
            Rejection::RateLimited { .. } => 4,
            Rejection::MissingScope => 5,
            Rejection::Unavailable => 6,
            Rejection::UsageExceeded { .. } => 7,
        }
    }
}

/// What the crate says about one kind of [`Rejection`]: one row of [`REASONS`], read by
/// the stats (`counter`), the tower layer (HTTP status and RFC 6750 challenge) and the CLI.
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) struct Reason {
    /// The stable name ([`Rejection::as_str`]).
    pub(crate) name: &'static str,
    /// The HTTP status `TokenLayer` answers with.
    pub(crate) http_status: u16,
    /// The `WWW-Authenticate` challenge `TokenLayer` sends with a bearer token.
    pub(crate) challenge: Challenge,
    /// The CLI's explanation after the name (a rate limit adds its wait).
    pub(crate) advice: &'static str,
}

/// The RFC 6750 challenge a refusal of a bearer token carries.
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) enum Challenge {
    /// `error="invalid_token"` with this `error_description`.
    InvalidToken(&'static str),
    /// `error="insufficient_scope"` with the required scope.
    InsufficientScope,
    /// None: the status says "wait" or "try again", not "authenticate".
    None,
}

/// Every kind of rejection, in [`Rejection::index`] order (which is also the order of the
/// [`Rejections`](crate::Rejections) counters).
pub(crate) const REASONS: [Reason; 8] = [
    Reason {
        name: "malformed",
        http_status: 401,
        challenge: Challenge::InvalidToken("the token is malformed"),
        advice: "this is not a tokencache token (wrong shape or checksum; check for a copy-paste error)",
    },
    Reason {
        name: "unknown",
        http_status: 401,
        challenge: Challenge::InvalidToken("the token is unknown"),
        advice: "no token in this store matches",
    },
    Reason {
        name: "revoked",
        http_status: 401,
        challenge: Challenge::InvalidToken("the token was revoked"),
        advice: "this token was revoked; issue a new one",
    },
    Reason {
        name: "expired",
        http_status: 401,
        challenge: Challenge::InvalidToken("the token has expired"),
        advice: "this token's lifetime is over; issue a new one",
    },
    Reason {
        name: "rate_limited",
        http_status: 429,
        challenge: Challenge::None,
        advice: "retry after",
    },
    Reason {
        name: "missing_scope",
        http_status: 403,
        challenge: Challenge::InsufficientScope,
        advice: "the token does not grant this scope",
    },
    Reason {
        name: "unavailable",
        http_status: 503,
        challenge: Challenge::None,
        advice: "this replica has not reached its database for longer than its max staleness; try again later",
    },
    Reason {
        name: "usage_exceeded",
        http_status: 429,
        challenge: Challenge::None,
        advice: "the token's credits are spent (set more with set_credits, or wait for the refill)",
    },
];

impl DecodeError {
    /// The public error for this problem in store file `path`.
    pub(crate) fn at(self, path: &std::path::Path) -> Error {
        self.in_file(path, None, FORMAT_VERSION)
    }

    /// The public error for this problem in file `path` (at byte `offset`, if known), whose
    /// format this build reads up to version `supported`. The one conversion from a
    /// decode problem to an [`Error`], for the store file and the journal.
    pub(crate) fn in_file(
        self,
        path: &std::path::Path,
        offset: Option<u64>,
        supported: u32,
    ) -> Error {
        match self {
            DecodeError::Problem(problem) => Error::Corrupt {
                path: path.to_path_buf(),
                problem: match offset {
                    Some(offset) => format!("at byte {offset}: {problem}"),
                    None => problem.to_string(),
                },
            },
            DecodeError::FutureVersion(found) => Error::FutureVersion {
                path: path.to_path_buf(),
                found,
                supported,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Rejection, REASONS};
    use std::time::Duration;

    #[test]
    fn every_rejection_has_its_own_row_of_the_table() {
        let all = [
            (Rejection::Malformed, "malformed", 401),
            (Rejection::Unknown, "unknown", 401),
            (Rejection::Revoked, "revoked", 401),
            (Rejection::Expired, "expired", 401),
            (
                Rejection::RateLimited {
                    retry_after: Duration::from_secs(1),
                },
                "rate_limited",
                429,
            ),
            (Rejection::MissingScope, "missing_scope", 403),
            (Rejection::Unavailable, "unavailable", 503),
            (
                Rejection::UsageExceeded { retry_after: None },
                "usage_exceeded",
                429,
            ),
        ];
        assert_eq!(all.len(), REASONS.len());
        let mut seen = [false; REASONS.len()];
        for (rejection, name, status) in all {
            assert!(!seen[rejection.index()], "{name} shares a row");
            seen[rejection.index()] = true;
            assert_eq!(rejection.as_str(), name);
            assert_eq!(rejection.reason().http_status, status);
            assert!(!rejection.advice().is_empty());
        }
    }
}
