//! Requests: what a caller asks of the store, checked before anything is queued. A
//! [`NewToken`] and its limits, a [`TokenInfo`] shown back, the rotation rule, and the
//! store's [`Request`]: a change built for the persister, not yet queued.

use std::time::Duration;

use chrono::{DateTime, Utc};

use std::sync::Arc;

use crate::clock::{from_ms, millis};
use crate::credits::{Credits, Meter};
use crate::entry::{self, Entry};
use crate::error::{Error, Rejection};
use crate::extras::{self, Extras};
use crate::inbox::{self, Answer, Message, Reply};
use crate::map::Map;
use crate::owner::{self, Owners};
use crate::rate_limit::RateLimit;
use crate::token::{Digest, IssuedToken, TokenId};

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
    pub(crate) owner: Option<String>,
    pub(crate) meta: Vec<(String, String)>,
    pub(crate) credits: Option<Credits>,
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
            owner: None,
            meta: Vec::new(),
            credits: None,
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

    /// The customer, team or account the token belongs to: an opaque id of 1 to 128 bytes.
    /// An owner's tokens are listed ([`TokenStore::owned_by`](crate::TokenStore::owned_by)),
    /// revoked and deleted together, and may share a rate limit
    /// ([`TokenStore::set_owner_rate_limit`](crate::TokenStore::set_owner_rate_limit)).
    pub fn owner(mut self, owner: impl Into<String>) -> NewToken {
        self.owner = Some(owner.into());
        self
    }

    /// Gives the token credits: each accepted validation spends 1
    /// ([`validate_cost`](crate::TokenStore::validate_cost) spends more), and a token with
    /// too few left is refused with [`Rejection::UsageExceeded`](crate::Rejection::UsageExceeded).
    /// Changeable later with [`TokenStore::set_credits`](crate::TokenStore::set_credits).
    /// File stores only, for now (a PostgreSQL store refuses it).
    pub fn credits(mut self, credits: Credits) -> NewToken {
        self.credits = Some(credits);
        self
    }

    /// Adds one metadata pair (the plan, the tenant, an account id...), readable on every
    /// validation with [`ValidToken::meta`](crate::ValidToken::meta). Keys are unique and
    /// 1 to 128 bytes; keys and values take at most 4 KiB per token.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> NewToken {
        self.meta.push((key.into(), value.into()));
        self
    }

    /// The entry this request makes: token `id` with `digest`, issued at `now`, its owner
    /// shared through `owners`. Checks the request first ([`check`](Self::check)).
    pub(crate) fn entry(
        &self,
        id: TokenId,
        digest: Digest,
        now: u64,
        owners: &Owners,
        imported: bool,
    ) -> Result<Entry, Error> {
        self.check()?;
        let expires_at = self.expires_in.map(|d| now.saturating_add(millis(d)));
        let mut entry = Entry::new(
            id,
            digest,
            entry::pack_text(&self.name, &self.scopes),
            now,
            expires_at,
            self.rate_limit,
        );
        let meta = extras::pack_meta(&self.meta).map_err(Error::InvalidRequest)?;
        let owner = self.owner.as_deref().map(|name| owners.get_or_add(name));
        let meter = self.credits.map(|c| Arc::new(Meter::new(c, now)));
        entry.set_extras(Some(Extras::new(owner, meta, imported).with_meter(meter)));
        Ok(entry)
    }

    /// Refuses names and scopes that would make lists unreadable or snapshots huge, and rate
    /// limits that cannot work.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Some(owner) = &self.owner {
            owner::check_name(owner).map_err(Error::InvalidRequest)?;
        }
        extras::pack_meta(&self.meta).map_err(Error::InvalidRequest)?;
        if let Some(credits) = &self.credits {
            credits.check().map_err(Error::InvalidRequest)?;
        }
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
    /// Its owner, if it has one.
    pub owner: Option<String>,
    /// Its metadata pairs, in the order given.
    pub meta: Vec<(String, String)>,
    /// Whether it was imported ([`TokenStore::import`](crate::TokenStore::import)): its
    /// digest is of a key minted elsewhere.
    pub imported: bool,
    /// Its credits, if it has any: the remaining ones as of this moment in memory (in a
    /// [`StoreView`](crate::StoreView), as last written), a refill that came due counted.
    pub credits: Option<Credits>,
    /// Its accepted validations since it was issued, untaken counts included (in a
    /// [`StoreView`](crate::StoreView), as last written); `None` if the store does not
    /// count ([`Builder::usage_days`](crate::Builder::usage_days) is 0, or a PostgreSQL
    /// store). Per-day counts: [`TokenStore::usage`](crate::TokenStore::usage).
    pub uses: Option<u64>,
}

impl TokenInfo {
    /// Every token in `map` at clock time `now`, oldest first (ties by id, so the order
    /// is stable).
    pub(crate) fn all(map: &Map, now: u64) -> Vec<TokenInfo> {
        let counts = map.usage.lock();
        let uses = counts.totals();
        let mut all = map.with_all(|entries| {
            entries
                .iter()
                .map(|e| TokenInfo::of(e, now, uses.as_ref().map(|total| total(&e.id, &e.uses))))
                .collect::<Vec<_>>()
        });
        all.sort_by_key(|info| (info.created_at, info.id));
        all
    }

    /// The details of token `id` in `map` at clock time `now`.
    pub(crate) fn get(map: &Map, id: &TokenId, now: u64) -> Option<TokenInfo> {
        TokenInfo::some(map, std::slice::from_ref(id), now).pop()
    }

    /// The details of the tokens `ids` that `map` holds, in that order, at clock time
    /// `now` (one look at the threads' tallies for all of them).
    pub(crate) fn some(map: &Map, ids: &[TokenId], now: u64) -> Vec<TokenInfo> {
        let counts = map.usage.lock();
        let uses = counts.totals();
        ids.iter()
            .filter_map(|id| {
                map.with(id, |e| {
                    TokenInfo::of(e, now, uses.as_ref().map(|total| total(&e.id, &e.uses)))
                })
            })
            .collect()
    }

    /// The details of one token at clock time `now` (its credits: a refill due counts as
    /// done), with its total `uses` if the store counts them.
    fn of(entry: &Entry, now: u64, uses: Option<u64>) -> TokenInfo {
        let extras = entry.extras();
        TokenInfo {
            id: entry.id,
            name: entry.name().to_string(),
            scopes: entry.scopes().map(str::to_string).collect(),
            created_at: from_ms(entry.created_at).unwrap_or_default(),
            expires_at: entry.expires_at().and_then(from_ms),
            revoked_at: entry.revoked_at().and_then(from_ms),
            last_used: entry.last_used().and_then(from_ms),
            rate_limit: entry.rate_limit(),
            owner: extras.and_then(Extras::owner_name).map(str::to_string),
            meta: extras.map_or_else(Vec::new, |x| {
                x.meta_pairs()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            imported: extras.is_some_and(|x| x.imported),
            credits: entry.meter().map(|m| m.credits(now)),
            uses,
        }
    }
}

/// A key minted elsewhere, given to [`TokenStore::import`](crate::TokenStore::import): only
/// the SHA-256 of the key is given and kept. Everything else is as for a [`NewToken`]
/// (named `"imported"` unless [`name`](Self::name) says otherwise).
///
/// ```
/// use tokencache::ImportedToken;
/// let key = ImportedToken::sha256("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")?
///     .name("legacy-ci")
///     .scopes(["read"])
///     .owner("acme");
/// # Ok::<(), tokencache::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ImportedToken {
    pub(crate) digest: Digest,
    pub(crate) token: NewToken,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
}

impl ImportedToken {
    /// A key whose SHA-256 digest (of its exact text, UTF-8) is `hex`: 64 hexadecimal
    /// characters, either case. Anything else is [`Error::InvalidRequest`].
    pub fn sha256(hex: &str) -> Result<ImportedToken, Error> {
        let digest = decode_hex_digest(hex).ok_or_else(|| {
            Error::InvalidRequest(format!(
                "{:?} is not a SHA-256 digest: give 64 hexadecimal characters (e.g. the output of `sha256sum`)",
                hex.chars().take(80).collect::<String>()
            ))
        })?;
        Ok(ImportedToken {
            digest,
            token: NewToken::new("imported"),
            created_at: None,
            expires_at: None,
        })
    }

    /// The name shown in lists and logs.
    pub fn name(mut self, name: impl Into<String>) -> ImportedToken {
        self.token.name = name.into();
        self
    }

    /// The scopes the key grants (replacing any set before).
    pub fn scopes<I, S>(mut self, scopes: I) -> ImportedToken
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.token = self.token.scopes(scopes);
        self
    }

    /// The key expires at `at` (as it did where it was minted).
    pub fn expires_at(mut self, at: DateTime<Utc>) -> ImportedToken {
        self.expires_at = Some(at);
        self
    }

    /// When the key was minted (default: when it is imported).
    pub fn created_at(mut self, at: DateTime<Utc>) -> ImportedToken {
        self.created_at = Some(at);
        self
    }

    /// Limits how often the key is accepted (see [`NewToken::rate_limit`]).
    pub fn rate_limit(mut self, limit: RateLimit) -> ImportedToken {
        self.token = self.token.rate_limit(limit);
        self
    }

    /// The key's owner (see [`NewToken::owner`]).
    pub fn owner(mut self, owner: impl Into<String>) -> ImportedToken {
        self.token = self.token.owner(owner);
        self
    }

    /// Adds one metadata pair (see [`NewToken::meta`]).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> ImportedToken {
        self.token = self.token.meta(key, value);
        self
    }

    /// Gives the key credits (see [`NewToken::credits`]).
    pub fn credits(mut self, credits: Credits) -> ImportedToken {
        self.token = self.token.credits(credits);
        self
    }

    /// The SHA-256 digest given, as 64 lowercase hexadecimal characters.
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The entry this import makes under `id`, at `now`.
    pub(crate) fn entry(&self, id: TokenId, now: u64, owners: &Owners) -> Result<Entry, Error> {
        let ms = |at: DateTime<Utc>| u64::try_from(at.timestamp_millis()).unwrap_or(0);
        let created = self.created_at.map_or(now, ms);
        let entry = self.token.entry(id, self.digest, created, owners, true)?;
        if let Some(at) = self.expires_at {
            entry.shorten_expiry(ms(at));
        }
        Ok(entry)
    }
}

/// 64 hexadecimal characters as 32 bytes.
fn decode_hex_digest(hex: &str) -> Option<Digest> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |b: u8| (b as char).to_digit(16);
    let mut digest = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        digest[i] = u8::try_from(nibble(pair[0])? * 16 + nibble(pair[1])?).ok()?;
    }
    Some(digest)
}

/// Whether `old` may be rotated at `now_ms`: not if it is revoked or expired, since a
/// replacement would restore the access its revocation or expiry ended.
pub(crate) fn refuse_rotation(old: &Entry, now_ms: u64) -> Result<(), Error> {
    let why = match old.verdict(now_ms) {
        Ok(_) => return Ok(()),
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

/// Prepares the revocation of every token of `owner`; the result is how many were revoked.
pub(crate) fn revoking_owner(owner: &str) -> Request<impl FnOnce(usize) -> usize> {
    let owner = owner.to_string();
    Request::new(|reply| Message::RevokeOwner(owner, reply), |n| n)
}

/// Prepares the deletion of every token of `owner`; the result is how many were deleted.
pub(crate) fn deleting_owner(owner: &str) -> Request<impl FnOnce(usize) -> usize> {
    let owner = owner.to_string();
    Request::new(|reply| Message::DeleteOwner(owner, reply), |n| n)
}

/// Checks `owner` and `limit` and prepares setting (or, `None`, removing) the owner's
/// shared rate limit.
pub(crate) fn limiting_owner(
    owner: &str,
    limit: Option<RateLimit>,
) -> Result<Request<impl FnOnce(usize)>, Error> {
    owner::check_name(owner).map_err(Error::InvalidRequest)?;
    if let Some(limit) = &limit {
        limit.check()?;
    }
    let owner = owner.to_string();
    Ok(Request::new(
        |reply| Message::SetOwnerRateLimit(owner, limit, reply),
        drop,
    ))
}

/// Prepares replacing token `id`'s metadata with `packed` (from `extras::pack_meta`, which
/// refused what breaks the rules).
pub(crate) fn setting_meta(
    id: &TokenId,
    packed: Result<Box<str>, String>,
) -> Result<Request<impl FnOnce(usize)>, Error> {
    let packed = packed.map_err(Error::InvalidRequest)?;
    Ok(Request::new(
        |reply| Message::SetMeta(*id, packed, reply),
        drop,
    ))
}

/// Prepares setting (`Some`, as of `now`) or removing token `id`'s credits.
pub(crate) fn setting_credits(
    id: &TokenId,
    credits: Option<Credits>,
    now: u64,
) -> Result<Request<impl FnOnce(usize)>, Error> {
    if let Some(credits) = &credits {
        credits.check().map_err(Error::InvalidRequest)?;
    }
    let meter = credits.map(|c| Box::new(Meter::new(c, now)));
    Ok(Request::new(
        |reply| Message::SetCredits(*id, meter, reply),
        drop,
    ))
}

/// Prepares a flush.
pub(crate) fn flushing() -> Request<impl FnOnce(usize)> {
    Request::new(Message::Flush, drop)
}
