//! Between rows of `tokencache_tokens` and the store's own types: a row as the `Record` it
//! mirrors, and as the changes that bring a replica's memory to it.

use postgres::Row;

use crate::change::Change;
use crate::request::{MAX_NAME_LEN, MAX_SCOPES, MAX_SCOPE_LEN};
use crate::snapshot::{RateLimitRecord, Record};

/// The columns [`record`] and [`essentials`] read, by name.
pub(super) const COLUMNS: &str = "id, name, digest, scopes, created_at, expires_at, revoked_at, \
    last_used, rate_period_ms, rate_count, rate_burst, deleted, version";

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
    let period: Option<i64> = row.try_get("rate_period_ms").map_err(get)?;
    let count: Option<i64> = row.try_get("rate_count").map_err(get)?;
    let burst: Option<i64> = row.try_get("rate_burst").map_err(get)?;
    let rate_limit = match (period, count, burst) {
        (Some(period), Some(count), Some(burst)) => Some(RateLimitRecord {
            period_ms: u64::try_from(period).map_err(|_| bad("a negative rate period"))?,
            count: u32::try_from(count).map_err(|_| bad("a rate count out of range"))?,
            burst: u32::try_from(burst).map_err(|_| bad("a burst out of range"))?,
        }),
        (None, None, None) => None,
        _ => return Err(bad("a rate limit with missing parts")),
    };
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
/// token is issued if new, then takes the row's revocation, rate limit, expiry and
/// `last_used` (each applied idempotently, see `change::apply`).
pub(super) fn changes(record: Record, deleted: bool, out: &mut Vec<Change>) {
    let id = record.id;
    if deleted {
        out.push(Change::Delete { id });
        return;
    }
    let (revoked, expires, used, limit) = (
        record.revoked_at,
        record.expires_at,
        record.last_used,
        record.rate_limit,
    );
    out.push(Change::Issue(record));
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
