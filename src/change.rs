//! The one vocabulary of changes to the store's tokens: [`Change`] (read back: journal
//! replay, rows from PostgreSQL), [`ChangeRef`] (written: the persister's batches, to the
//! journal or the database), and [`apply`], the one way a read change reaches memory.
//! Whatever path changes memory outside the persister's own batches (opening, a catch-up
//! with the database) applies through here.

use serde::{Deserialize, Serialize};

use crate::credits::{CreditsRecord, Meter};
use crate::entry;
use crate::extras::Extras;
use crate::map::Map;
use crate::rate_limit::RateLimit;
use crate::snapshot::{ExtrasRecord, ExtrasRef, Problem, RateLimitRecord, Record, RecordRef};
use crate::token::TokenId;
use crate::usage::UsageRecord;

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
    // Journal version 3 appends the variants below.
    /// The token's credits are now these: set (at issue, `set_credits`), or as spent
    /// (written behind, with `last_used`).
    Credits(CreditsRecord),
    /// The token's credits were removed.
    NoCredits { id: [u8; 8] },
    // Journal version 4 appends the variants below.
    /// The token's usage counts (written behind, with `last_used`).
    Usage(UsageRecord),
}

/// What one catch-up of a PostgreSQL store read (`pg/listen.rs`), for the persister to
/// apply.
#[cfg(all(feature = "postgres", not(loom)))]
pub(crate) struct Read {
    /// The changes the rows make.
    pub(crate) changes: Vec<Change>,
    /// The clock time (Unix ms) of the catch-up: memory is current as of then once the
    /// changes are applied.
    pub(crate) at: u64,
    /// The version of the database's history the rows are as of; `None` after the
    /// database went back in its history (a version read before then may name another
    /// commit now).
    pub(crate) version: Option<i64>,
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
    Credits(CreditsRecord),
    NoCredits {
        id: [u8; 8],
    },
    Usage(UsageRecord),
}

/// What [`apply`] changed in memory, for the change feed (a `last_used` is no change).
#[derive(Debug, PartialEq)]
pub(crate) enum Changed {
    /// Nothing: the change was there already, its token is gone, or it is a `last_used`
    /// or a prefix.
    Nothing,
    /// Token `id` (new, revoked, deleted, its limit, expiry or extras).
    Token(TokenId),
    /// These tokens, by one owner-wide revoke or delete.
    Tokens(Vec<TokenId>),
    /// An owner's shared rate limit; no token.
    Owner,
}

/// Applies one change to `map`: a journal record's while opening (`recover`), or
/// (PostgreSQL stores) a row another replica committed, on the persister thread. Each
/// change is idempotent (a revoke keeps the first time, a delete of an absent token and an
/// issue of a present one change nothing, `Used` and `Expire` take the max and the min, a
/// rate limit equal to the token's or the owner's is left alone so its spent quota stands,
/// extras equal to the token's are no change), so applying one twice is harmless.
/// Returns what changed: the change feed publishes only changes that did.
pub(crate) fn apply(map: &Map, change: Change) -> Result<Changed, Problem> {
    let mut changed = false;
    let id = match change {
        Change::Issue(record) => {
            let entry = entry::load_one(record)?;
            let id = entry.id;
            if !map.contains(&id) {
                let added = map.insert_new([entry]);
                debug_assert!(added.is_ok(), "checked just before");
                changed = true;
            }
            id
        }
        Change::Revoke { id, at } => {
            let id = token_id(id)?;
            map.with(&id, |e| {
                changed = e.revoked_at().is_none();
                e.revoke(at);
            });
            id
        }
        Change::Delete { id } => {
            let id = token_id(id)?;
            changed = map.remove(&id);
            id
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
            if map.with(&id, |e| e.rate_limit() != limit) == Some(true) {
                changed = map.set_rate_limit(&id, limit);
            }
            id
        }
        Change::Expire { id, at } => {
            let id = token_id(id)?;
            map.with(&id, |e| {
                let before = e.expires_at();
                e.shorten_expiry(at);
                changed = e.expires_at() != before;
            });
            id
        }
        Change::Used { id, at } => {
            map.with(&token_id(id)?, |e| e.replay_used(at));
            return Ok(Changed::Nothing);
        }
        Change::Extras(record) => {
            let (id, extras) = Extras::from_record(record, &map.owners)?;
            changed = map
                .with(&id, |e| match e.extras() {
                    Some(old) => !old.same_as(&extras),
                    None => extras.is_recorded(),
                })
                .unwrap_or(false);
            map.set_extras(&id, extras);
            id
        }
        Change::RevokeOwner { owner, at } => {
            return Ok(Changed::Tokens(map.revoke_owner(&owner, at)));
        }
        Change::DeleteOwner { owner } => {
            return Ok(Changed::Tokens(map.delete_owner(&owner)));
        }
        Change::OwnerRateLimit { owner, limit } => {
            let limit = match limit {
                Some(stored) => Some(
                    RateLimit::from_record(&stored)
                        .ok_or_else(|| Problem::BadRateLimit(format!("of owner {owner:?}")))?,
                ),
                None => None,
            };
            let before = map.owners.rate_limit(&owner);
            map.owners.set_rate_limit(&owner, limit);
            return Ok(if before == limit {
                Changed::Nothing
            } else {
                Changed::Owner
            });
        }
        Change::Prefix(prefix) => {
            map.prefixes
                .add(&prefix)
                .map_err(|_| Problem::BadPrefix(prefix))?;
            return Ok(Changed::Nothing);
        }
        Change::Credits(record) => {
            let id = token_id(record.id)?;
            let meter = Meter::from_record(&record).map_err(|why| Problem::BadCredits {
                id: id.to_string(),
                why,
            })?;
            // A state written behind is no change for the feed; only loading applies it.
            map.set_meter(&id, Some(meter));
            return Ok(Changed::Nothing);
        }
        Change::Usage(record) => {
            let id = token_id(record.id)?;
            // A record of a token deleted later is skipped.
            if map.contains(&id) {
                map.usage.lock().replay(id, &record);
            }
            return Ok(Changed::Nothing);
        }
        Change::NoCredits { id } => {
            let id = token_id(id)?;
            changed = map.with(&id, |e| e.meter().is_some()).unwrap_or(false);
            if changed {
                map.set_meter(&id, None);
            }
            id
        }
    };
    Ok(if changed {
        Changed::Token(id)
    } else {
        Changed::Nothing
    })
}

fn token_id(id: [u8; 8]) -> Result<TokenId, Problem> {
    TokenId::from_bytes(id).ok_or_else(|| Problem::BadId(String::from_utf8_lossy(&id).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ExtrasRecord;

    fn issue(id: TokenId) -> Change {
        Change::Issue(Record {
            id: id.to_bytes(),
            name: "t".into(),
            digest: [7; 32],
            scopes: vec![],
            created_at: 1,
            expires_at: None,
            revoked_at: None,
            last_used: None,
            rate_limit: None,
        })
    }

    fn extras(id: TokenId, owner: &str, plan: &str) -> Change {
        Change::Extras(ExtrasRecord {
            id: id.to_bytes(),
            owner: Some(owner.into()),
            meta: vec![("plan".into(), plan.into())],
            imported: false,
        })
    }

    /// What a replica's feed publishes rests on this: each change says what it changed,
    /// and the same change applied again (a replica's own, read back) changes nothing.
    #[test]
    fn apply_says_what_changed_and_a_second_apply_changes_nothing() {
        let map = Map::with_capacity(0);
        let ids: Vec<TokenId> = (0..3u8)
            .map(|n| format!("0000000{n}").parse().unwrap())
            .collect();
        for &id in &ids {
            assert_eq!(apply(&map, issue(id)), Ok(Changed::Token(id)));
            assert_eq!(apply(&map, issue(id)), Ok(Changed::Nothing));
        }
        for &id in &ids[..2] {
            assert_eq!(
                apply(&map, extras(id, "acme", "pro")),
                Ok(Changed::Token(id))
            );
            assert_eq!(apply(&map, extras(id, "acme", "pro")), Ok(Changed::Nothing));
        }
        let other = extras(ids[0], "acme", "free");
        assert_eq!(apply(&map, other), Ok(Changed::Token(ids[0])));

        let limit = || Change::OwnerRateLimit {
            owner: "acme".into(),
            limit: Some(RateLimit::per_second(5).to_record()),
        };
        assert_eq!(apply(&map, limit()), Ok(Changed::Owner));
        assert_eq!(apply(&map, limit()), Ok(Changed::Nothing));

        let revoke = || Change::RevokeOwner {
            owner: "acme".into(),
            at: 9,
        };
        let Ok(Changed::Tokens(mut revoked)) = apply(&map, revoke()) else {
            panic!("an owner-wide revoke names its tokens");
        };
        revoked.sort();
        assert_eq!(revoked, ids[..2]);
        assert_eq!(apply(&map, revoke()), Ok(Changed::Tokens(vec![])));

        let delete = Change::DeleteOwner {
            owner: "acme".into(),
        };
        let Ok(Changed::Tokens(deleted)) = apply(&map, delete) else {
            panic!("an owner-wide delete names its tokens");
        };
        assert_eq!(deleted.len(), 2);
        assert!(map.contains(&ids[2]), "a token without the owner stays");
        let used = Change::Used {
            id: ids[2].to_bytes(),
            at: 5,
        };
        assert_eq!(apply(&map, used), Ok(Changed::Nothing));
        assert_eq!(
            apply(&map, Change::Prefix("sk_live".into())),
            Ok(Changed::Nothing)
        );
    }
}
