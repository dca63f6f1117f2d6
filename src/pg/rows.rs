//! Between rows of `tokencache_tokens` and the store's own types: a row as the `Record` it
//! mirrors, and as the changes that bring a replica's memory to it.

use postgres::Row;

use crate::change::Change;
use crate::extras;
use crate::owner;
use crate::request::{MAX_NAME_LEN, MAX_SCOPES, MAX_SCOPE_LEN};
use crate::snapshot::{ExtrasRecord, RateLimitRecord, Record};

/// The columns [`record`], [`extras`] and [`essentials`] read, by name (the metadata as
/// its JSON text: the client reads no jsonb without a feature of its own).
pub(super) const COLUMNS: &str = "id, name, digest, scopes, created_at, expires_at, revoked_at, \
    last_used, rate_period_ms, rate_count, rate_burst, deleted, version, owner, \
    meta::text AS meta, imported";
/// The columns [`owner_limit`] reads, of `tokencache_owners`.
pub(super) const OWNER_COLUMNS: &str = "owner, rate_period_ms, rate_count, rate_burst";

/// A time (Unix ms) as a `bigint`.
pub(super) fn sql_time(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn time(value: Option<i64>) -> Option<u64> {
    value.map(|v| u64::try_from(v).unwrap_or(0))
}

/// A token id as its text (ids are base62 ASCII).
pub(super) fn id_text(id: [u8; 8]) -> String {
    String::from_utf8_lossy(&id).into_owned()
}

/// A row read with [`COLUMNS`]: its record (`Err` names what is wrong), whether it is a
/// tombstone, and its version.
pub(super) fn record(row: &Row) -> Result<(Record, bool, i64), String> {
    let id: String = row.try_get("id").map_err(|e| e.to_string())?;
    let bad = |what: &str| format!("token {id:?}: {what}");
    let id_bytes: [u8; 8] = id
        .as_bytes()
        .try_into()
        .map_err(|_| bad("the id is not 8 bytes"))?;
    let digest: Vec<u8> = row.try_get("digest").map_err(|e| bad(&e.to_string()))?;
    let digest: [u8; 32] = digest
        .try_into()
        .map_err(|_| bad("the digest is not 32 bytes"))?;
    let get = |e: postgres::Error| bad(&e.to_string());
    let rate_limit = rate_limit(
        row.try_get("rate_period_ms").map_err(get)?,
        row.try_get("rate_count").map_err(get)?,
        row.try_get("rate_burst").map_err(get)?,
    )
    .map_err(bad)?;
    // Bounded as `issue` bounds them, so a hand-made row cannot make every replica hold
    // (and every `list` print) a huge name or scope list.
    let name: String = row.try_get("name").map_err(get)?;
    if name.len() > MAX_NAME_LEN {
        return Err(bad(&format!(
            "the name is {} bytes; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    let scopes: Vec<String> = row.try_get("scopes").map_err(get)?;
    if scopes.len() > MAX_SCOPES {
        return Err(bad(&format!(
            "{} scopes; the limit is {MAX_SCOPES}",
            scopes.len()
        )));
    }
    if scopes
        .iter()
        .any(|s| s.is_empty() || s.len() > MAX_SCOPE_LEN)
    {
        return Err(bad(&format!(
            "a scope is empty or longer than {MAX_SCOPE_LEN} bytes"
        )));
    }
    let record = Record {
        id: id_bytes,
        name,
        digest,
        scopes,
        created_at: time(row.try_get("created_at").map_err(get)?).unwrap_or(0),
        expires_at: time(row.try_get("expires_at").map_err(get)?),
        revoked_at: time(row.try_get("revoked_at").map_err(get)?),
        last_used: time(row.try_get("last_used").map_err(get)?),
        rate_limit,
    };
    Ok((
        record,
        row.try_get("deleted").map_err(get)?,
        row.try_get("version").map_err(get)?,
    ))
}

/// Metadata pairs as the `meta` column holds them: a JSON array of `[key, value]` pairs.
pub(super) fn meta_json<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let pairs: Vec<[&str; 2]> = pairs
        .iter()
        .map(|(k, v)| [k.as_ref(), v.as_ref()])
        .collect();
    // An array of strings always serializes.
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

/// The owner, metadata and import mark of a row read with [`COLUMNS`], checked as
/// `NewToken` checks them (so applying them cannot fail halfway: a row holding what no call
/// could have made does not load, as a broken rate limit does not).
pub(super) fn extras(row: &Row) -> Result<ExtrasRecord, String> {
    let id: String = row.try_get("id").map_err(|e| e.to_string())?;
    let bad = |what: &str| format!("token {id:?}: {what}");
    let get = |e: postgres::Error| bad(&e.to_string());
    let id_bytes: [u8; 8] = id
        .as_bytes()
        .try_into()
        .map_err(|_| bad("the id is not 8 bytes"))?;
    let owner: Option<String> = row.try_get("owner").map_err(get)?;
    if let Some(owner) = &owner {
        owner::check_name(owner).map_err(|e| bad(&e))?;
    }
    let meta: String = row.try_get("meta").map_err(get)?;
    let meta: Vec<(String, String)> = serde_json::from_str(&meta).map_err(|e| {
        bad(&format!(
            "the metadata is not an array of [key, value] pairs: {e}"
        ))
    })?;
    extras::pack_meta(&meta).map_err(|e| bad(&e))?;
    Ok(ExtrasRecord {
        id: id_bytes,
        owner,
        meta,
        imported: row.try_get("imported").map_err(get)?,
    })
}

/// Whether `extras` holds anything (a token without owner, metadata or import mark keeps
/// no extras in memory).
pub(super) fn has_extras(extras: &ExtrasRecord) -> bool {
    extras.owner.is_some() || !extras.meta.is_empty() || extras.imported
}

/// A row of `tokencache_owners` read with [`OWNER_COLUMNS`]: the change that sets (or,
/// with NULLs, removes) the owner's shared limit.
pub(super) fn owner_limit(row: &Row) -> Result<Change, String> {
    let owner: String = row.try_get("owner").map_err(|e| e.to_string())?;
    let bad = |what: &str| format!("owner {owner:?}: {what}");
    let get = |e: postgres::Error| bad(&e.to_string());
    owner::check_name(&owner).map_err(|e| bad(&e))?;
    let limit = rate_limit(
        row.try_get("rate_period_ms").map_err(get)?,
        row.try_get("rate_count").map_err(get)?,
        row.try_get("rate_burst").map_err(get)?,
    )
    .map_err(bad)?;
    Ok(Change::OwnerRateLimit { owner, limit })
}

/// A rate limit from its three columns: all set, or all NULL.
fn rate_limit(
    period: Option<i64>,
    count: Option<i64>,
    burst: Option<i64>,
) -> Result<Option<RateLimitRecord>, &'static str> {
    match (period, count, burst) {
        (Some(period), Some(count), Some(burst)) => Ok(Some(RateLimitRecord {
            period_ms: u64::try_from(period).map_err(|_| "a negative rate period")?,
            count: u32::try_from(count).map_err(|_| "a rate count out of range")?,
            burst: u32::try_from(burst).map_err(|_| "a burst out of range")?,
        })),
        (None, None, None) => Ok(None),
        _ => Err("a rate limit with missing parts"),
    }
}

/// What a row that does not load as a whole still says for sure: its id, whether it is a
/// tombstone, when it was revoked. A revocation or a delete must reach every
/// replica even if (say) an operator's hand-made UPDATE broke another column of the row.
pub(super) struct Essentials {
    pub(super) id: Option<[u8; 8]>,
    pub(super) deleted: bool,
    pub(super) revoked_at: Option<u64>,
}

/// The [`Essentials`] of a row read with [`COLUMNS`], each column read on its own.
pub(super) fn essentials(row: &Row) -> Essentials {
    let id = row
        .try_get::<_, String>("id")
        .ok()
        .and_then(|id| <[u8; 8]>::try_from(id.as_bytes()).ok());
    Essentials {
        id,
        deleted: row.try_get("deleted").unwrap_or(false),
        revoked_at: row
            .try_get::<_, Option<i64>>("revoked_at")
            .ok()
            .flatten()
            .map(|v| u64::try_from(v).unwrap_or(0)),
    }
}

/// The changes a row that does not load still makes: a tombstone deletes, a revocation
/// revokes (a token memory does not hold ignores both).
pub(super) fn essential_changes(row: &Essentials, out: &mut Vec<Change>) {
    let Some(id) = row.id else { return };
    if row.deleted {
        out.push(Change::Delete { id });
    } else if let Some(at) = row.revoked_at {
        out.push(Change::Revoke { id, at });
    }
}

/// The changes that bring a replica's memory to what a row says: a tombstone deletes; a
/// token is issued if new, then takes the row's owner, metadata and import mark (always:
/// a `set_meta` that removed every pair must reach the replicas too), revocation, rate
/// limit, expiry and `last_used` (each applied idempotently, see `change::apply`). A token
/// with an owner has its extras before its issue as well: a replica whose delete of that
/// owner is still to be written holds the whole row back by them (`PgSink::overrides`);
/// for a token memory lacks they change nothing.
pub(super) fn changes(record: Record, extras: ExtrasRecord, deleted: bool, out: &mut Vec<Change>) {
    let id = record.id;
    if deleted {
        out.push(Change::Delete { id });
        return;
    }
    if extras.owner.is_some() {
        out.push(Change::Extras(extras.clone()));
    }
    let (revoked, expires, used, limit) = (
        record.revoked_at,
        record.expires_at,
        record.last_used,
        record.rate_limit,
    );
    out.push(Change::Issue(record));
    out.push(Change::Extras(extras));
    if let Some(at) = revoked {
        out.push(Change::Revoke { id, at });
    }
    out.push(Change::SetRateLimit { id, limit });
    if let Some(at) = expires {
        out.push(Change::Expire { id, at });
    }
    if let Some(at) = used {
        out.push(Change::Used { id, at });
    }
}

/// A row read with `listen::USED_SINCE` (`id, last_used`): the change that brings memory's
/// `last_used` to it (`change::apply` keeps the later time). `None` for a row whose id or
/// time does not load.
pub(super) fn used(row: &Row) -> Option<Change> {
    let id: String = row.try_get(0).ok()?;
    let id: [u8; 8] = id.as_bytes().try_into().ok()?;
    let at: i64 = row.try_get::<_, Option<i64>>(1).ok()??;
    Some(Change::Used {
        id,
        at: u64::try_from(at).ok()?,
    })
}
