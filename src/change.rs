//! The one vocabulary of changes to the store's tokens: [`Change`] (read back: journal
//! replay, rows from PostgreSQL), [`ChangeRef`] (written: the persister's batches, to the
//! journal or the database), and [`apply`], the one way a read change reaches memory.
//! Whatever path changes memory outside the persister's own batches (opening, a catch-up
//! with the database) applies through here.

use serde::{Deserialize, Serialize};

use crate::entry;
use crate::extras::Extras;
use crate::map::Map;
use crate::rate_limit::RateLimit;
use crate::snapshot::{ExtrasRecord, ExtrasRef, Problem, RateLimitRecord, Record, RecordRef};
use crate::token::TokenId;

/// One change to the store, as a journal record holds it and as a row another replica
/// committed becomes (`pg/rows.rs`). Times are Unix ms.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) enum Change {
    /// A new token (from `issue`, or the replacement `rotate` made).
    Issue(Record),
    /// The token was revoked at `at` (a token already revoked keeps its first time).
    Revoke { id: [u8; 8], at: u64 },
    /// The token was deleted (`delete`, `purge`, retention); unknown ids are ignored.
    Delete { id: [u8; 8] },
    /// The token's rate limit was set or removed.
    SetRateLimit {
        id: [u8; 8],
        limit: Option<RateLimitRecord>,
    },
    /// The token expires at `at` if it would expire later (`rotate`'s grace).
    Expire { id: [u8; 8], at: u64 },
    /// The token was last used at `at` (replayed with max).
    Used { id: [u8; 8], at: u64 },
    // Journal version 2 appends the variants below; version 1 records decode unchanged.
    /// The token's owner, metadata and import mark are now these (at issue, `set_meta`).
    Extras(ExtrasRecord),
    /// Every token of `owner` present at this point was revoked at `at`.
    RevokeOwner { owner: String, at: u64 },
    /// Every token of `owner` present at this point was deleted.
    DeleteOwner { owner: String },
    /// The owner's shared rate limit was set or removed.
    OwnerRateLimit {
        owner: String,
        limit: Option<RateLimitRecord>,
    },
    /// The store issues (or issued) tokens under this prefix: it stays accepted.
    Prefix(String),
}

/// What a record is written from: a [`Change`] whose new token borrows its entry's text.
/// Encodes to exactly the bytes the owned form decodes.
#[derive(Debug, Serialize)]
pub(crate) enum ChangeRef<'a> {
    Issue(RecordRef<'a>),
    Revoke {
        id: [u8; 8],
        at: u64,
    },
    Delete {
        id: [u8; 8],
    },
    SetRateLimit {
        id: [u8; 8],
        limit: Option<RateLimitRecord>,
    },
    Expire {
        id: [u8; 8],
        at: u64,
    },
    Used {
        id: [u8; 8],
        at: u64,
    },
    Extras(ExtrasRef<'a>),
    RevokeOwner {
        owner: String,
        at: u64,
    },
    DeleteOwner {
        owner: String,
    },
    OwnerRateLimit {
        owner: String,
        limit: Option<RateLimitRecord>,
    },
    Prefix(String),
}

/// Applies one change to `map`: a journal record's while opening (`recover`), or
/// (PostgreSQL stores) a row another replica committed, on the persister thread. Each change is idempotent (a
/// revoke keeps the first time, a delete of an absent token and an issue of a present one
/// change nothing, `Used` and `Expire` take the max and the min, a rate limit equal to the
/// token's is left alone so its spent quota stands), so applying one twice is harmless.
/// Returns whether memory changed (a `last_used` is not counted): the change feed
/// publishes only changes that did.
pub(crate) fn apply(map: &Map, change: Change) -> Result<bool, Problem> {
    let mut changed = false;
    match change {
        Change::Issue(record) => {
            let entry = entry::load_one(record)?;
            if !map.contains(&entry.id) {
                let added = map.insert_new([entry]);
                debug_assert!(added.is_ok(), "checked just before");
                changed = true;
            }
        }
        Change::Revoke { id, at } => {
            map.with(&token_id(id)?, |e| {
                changed = e.revoked_at().is_none();
                e.revoke(at);
            });
        }
        Change::Delete { id } => {
            changed = map.remove(&token_id(id)?);
        }
        Change::SetRateLimit { id, limit } => {
            let id = token_id(id)?;
            let limit = match limit {
                Some(stored) => Some(
                    RateLimit::from_record(&stored)
                        .ok_or_else(|| Problem::BadRateLimit(id.to_string()))?,
                ),
                None => None,
            };
            map.with(&id, |e| {
                if e.rate_limit() != limit {
                    e.set_rate_limit(limit);
                    changed = true;
                }
            });
        }
        Change::Expire { id, at } => {
            map.with(&token_id(id)?, |e| {
                let before = e.expires_at();
                e.shorten_expiry(at);
                changed = e.expires_at() != before;
            });
        }
        Change::Used { id, at } => {
            map.with(&token_id(id)?, |e| e.replay_used(at));
        }
        Change::Extras(record) => {
            let (id, extras) = Extras::from_record(record, &map.owners)?;
            map.set_extras(&id, extras);
        }
        Change::RevokeOwner { owner, at } => {
            map.revoke_owner(&owner, at);
        }
        Change::DeleteOwner { owner } => {
            map.delete_owner(&owner);
        }
        Change::OwnerRateLimit { owner, limit } => {
            let limit = match limit {
                Some(stored) => Some(
                    RateLimit::from_record(&stored)
                        .ok_or_else(|| Problem::BadRateLimit(format!("of owner {owner:?}")))?,
                ),
                None => None,
            };
            map.owners.set_rate_limit(&owner, limit);
        }
        Change::Prefix(prefix) => {
            map.prefixes
                .add(&prefix)
                .map_err(|_| Problem::BadPrefix(prefix))?;
        }
    }
    Ok(changed)
}

fn token_id(id: [u8; 8]) -> Result<TokenId, Problem> {
    TokenId::from_bytes(id).ok_or_else(|| Problem::BadId(String::from_utf8_lossy(&id).into()))
}
