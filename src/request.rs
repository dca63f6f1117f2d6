//! Requests: what a caller asks of the store, checked before anything is queued. A
//! [`NewToken`] and its limits, a [`TokenInfo`] shown back, the rotation rule, and the
//! store's [`Request`]: a change built for the persister, not yet queued.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::from_ms;
use crate::entry::Entry;
use crate::error::{Error, Rejection};
use crate::inbox::{self, Answer, Message, Reply};
use crate::map::Map;
use crate::rate_limit::RateLimit;
use crate::token::{IssuedToken, TokenId};

/// Limits on a token's definition, so a snapshot stays small and a list stays readable.
pub(crate) const MAX_NAME_LEN: usize = 256;
pub(crate) const MAX_SCOPES: usize = 64;
pub(crate) const MAX_SCOPE_LEN: usize = 128;

/// A request for a new token, given to [`TokenStore::issue`](crate::TokenStore::issue).
///
/// ```
/// use std::time::Duration;
/// use tokencache::NewToken;
/// let request = NewToken::new("ci-bot")
///     .scopes(["read", "write"])
///     .expires_in(Duration::from_secs(86_400));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct NewToken {
    pub(crate) name: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) rate_limit: Option<RateLimit>,
}

impl NewToken {
    /// A token called `name` (shown in lists and logs; need not be unique), with no scopes
    /// and no expiry.
    pub fn new(name: impl Into<String>) -> NewToken {
        NewToken {
            name: name.into(),
            scopes: Vec::new(),
            expires_in: None,
            rate_limit: None,
        }
    }

    /// The scopes the token grants (replacing any set before).
    pub fn scopes<I, S>(mut self, scopes: I) -> NewToken
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one scope.
    pub fn scope(mut self, scope: impl Into<String>) -> NewToken {
        self.scopes.push(scope.into());
        self
    }

    /// The token expires this long after it is issued.
    pub fn expires_in(mut self, lifetime: Duration) -> NewToken {
        self.expires_in = Some(lifetime);
        self
    }

    /// Limits how often the token is accepted (see [`RateLimit`]); changeable later with
    /// [`TokenStore::set_rate_limit`](crate::TokenStore::set_rate_limit).
    pub fn rate_limit(mut self, limit: RateLimit) -> NewToken {
        self.rate_limit = Some(limit);
        self
    }

    /// Refuses names and scopes that would make lists unreadable or snapshots huge, and rate
    /// limits that cannot work.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Some(limit) = &self.rate_limit {
            limit.check()?;
        }
        let bad = |message: String| Err(Error::InvalidRequest(message));
        if self.name.trim().is_empty() {
            return bad("the token name is empty; give a name that says who uses the token".into());
        }
        if self.name.len() > MAX_NAME_LEN {
            return bad(format!(
                "the token name is {} bytes; the limit is {MAX_NAME_LEN}",
                self.name.len()
            ));
        }
        if self.name.chars().any(char::is_control) {
            return bad("the token name contains control characters".into());
        }
        if self.scopes.len() > MAX_SCOPES {
            return bad(format!(
                "{} scopes given; the limit is {MAX_SCOPES}",
                self.scopes.len()
            ));
        }
        for scope in &self.scopes {
            if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
                return bad(format!(
                    "scope {scope:?} must be 1 to {MAX_SCOPE_LEN} bytes"
                ));
            }
            if scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!(
                    "scope {scope:?} contains whitespace or control characters"
                ));
            }
        }
        Ok(())
    }
}

/// A token's details as [`TokenStore::get`](crate::TokenStore::get) and [`TokenStore::list`](crate::TokenStore::list) (and a
/// [`StoreView`](crate::StoreView)'s) show them. Never holds the secret or its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The public id.
    pub id: TokenId,
    /// The name given at issue.
    pub name: String,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it expires, if it does.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Its last successful validation, if any (as of this moment in memory; in a
    /// [`StoreView`](crate::StoreView), as last written to the files).
    pub last_used: Option<DateTime<Utc>>,
    /// Its rate limit, if it has one.
    pub rate_limit: Option<RateLimit>,
}

impl TokenInfo {
    /// Every token in `map`, oldest first (ties by id, so the order is stable).
    pub(crate) fn all(map: &Map) -> Vec<TokenInfo> {
        let mut all =
            map.with_all(|entries| entries.iter().map(|e| TokenInfo::of(e)).collect::<Vec<_>>());
        all.sort_by_key(|info| (info.created_at, info.id));
        all
    }

    /// The details of one token.
    pub(crate) fn of(entry: &Entry) -> TokenInfo {
        TokenInfo {
            id: entry.id,
            name: entry.name().to_string(),
            scopes: entry.scopes().map(str::to_string).collect(),
            created_at: from_ms(entry.created_at).unwrap_or_default(),
            expires_at: entry.expires_at().and_then(from_ms),
            revoked_at: entry.revoked_at().and_then(from_ms),
            last_used: entry.last_used().and_then(from_ms),
            rate_limit: entry.rate_limit(),
        }
    }
}

/// Whether `old` may be rotated at `now_ms`: not if it is revoked or expired, since a
/// replacement would restore the access its revocation or expiry ended.
pub(crate) fn refuse_rotation(old: &Entry, now_ms: u64) -> Result<(), Error> {
    let why = match old.verdict(now_ms) {
        Ok(()) => return Ok(()),
        Err(Rejection::Revoked) => "revoked",
        Err(_) => "expired",
    };
    Err(Error::InvalidRequest(format!(
        "token {} is {why}, so it is not rotated (a replacement would restore the access that ended); issue a new token instead",
        old.id
    )))
}

/// A change checked and built for the persister, not yet queued: its message (which holds
/// the reply), where the reply is heard, and how the call's result follows from the
/// persister's count of tokens touched. A blocking call and its async twin build the same
/// `Request` and differ only in how they queue it and wait.
pub(crate) struct Request<F> {
    /// `None`: nothing to ask the persister (`issue_many` of no tokens).
    request: Option<(Message, Answer)>,
    finish: F,
}

impl<T, F: FnOnce(usize) -> T> Request<F> {
    /// A change `message` describes; `finish` turns the count into the call's result.
    pub(crate) fn new(message: impl FnOnce(Reply) -> Message, finish: F) -> Request<F> {
        let (reply, answer) = inbox::reply();
        Request {
            request: Some((message(reply), answer)),
            finish,
        }
    }

    /// Nothing to do: the result is `finish(0)`.
    pub(crate) fn done(finish: F) -> Request<F> {
        Request {
            request: None,
            finish,
        }
    }

    pub(crate) fn split(self) -> (Option<(Message, Answer)>, F) {
        (self.request, self.finish)
    }
}

impl<F: FnOnce(usize) -> Vec<IssuedToken>> Request<F> {
    /// An issue of one token: its result is that token.
    pub(crate) fn only(self) -> Request<impl FnOnce(usize) -> IssuedToken> {
        let Request { request, finish } = self;
        Request {
            request,
            // `issuing` returns one token per request, or an error.
            finish: move |touched| finish(touched).remove(0),
        }
    }
}

/// Prepares the revocation of token `id`.
pub(crate) fn revoking(id: &TokenId) -> Request<impl FnOnce(usize)> {
    Request::new(|reply| Message::Revoke(*id, reply), drop)
}

/// Prepares the deletion of token `id`.
pub(crate) fn deleting(id: &TokenId) -> Request<impl FnOnce(usize)> {
    Request::new(|reply| Message::Delete(*id, reply), drop)
}

/// Checks `limit` and prepares setting it (or, `None`, removing token `id`'s limit).
pub(crate) fn limiting(
    id: &TokenId,
    limit: Option<RateLimit>,
) -> Result<Request<impl FnOnce(usize)>, Error> {
    if let Some(limit) = &limit {
        limit.check()?;
    }
    Ok(Request::new(
        |reply| Message::SetRateLimit(*id, limit, reply),
        drop,
    ))
}

/// Prepares a flush.
pub(crate) fn flushing() -> Request<impl FnOnce(usize)> {
    Request::new(Message::Flush, drop)
}
