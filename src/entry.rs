//! One live token in memory, and the dirty protocol between validations and snapshots.
//!
//! A validation stamps `last_used` and, only when it flips the entry from clean to dirty,
//! tells the persister (so a token used a million times between snapshots is sent once).
//! A snapshot clears the flag *before* reading `last_used`, so a validation racing it either
//! lands in this snapshot or re-dirties the entry for the next one: no update is lost.

use std::collections::HashSet;

use crate::rate_limit::{Gcra, RateLimit};
use crate::snapshot::{Problem, Record};
use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering};
use crate::token::{Digest, TokenId};

/// `0` in `last_used` / `revoked_at` means "never".
const NEVER: u64 = 0;

/// A token as the store holds it. The definition fields are immutable; what changes after
/// issue (`last_used`, `revoked_at`, the rate limit) is atomic, so entries are never replaced
/// in the map and a validation holding an old `Arc` still writes to the live entry.
pub(crate) struct Entry {
    pub(crate) id: TokenId,
    pub(crate) digest: Digest,
    pub(crate) name: Box<str>,
    pub(crate) scopes: Box<[Box<str>]>,
    pub(crate) created_at: u64,
    pub(crate) expires_at: Option<u64>,
    revoked_at: AtomicU64,
    last_used: AtomicU64,
    dirty: AtomicBool,
    /// The `last_used` value in the newest snapshot on disk. Only the persister touches it.
    persisted_last_used: AtomicU64,
    /// The rate-limit check `validate` runs (its state is in memory only).
    pub(crate) limiter: Gcra,
    /// The rate limit as set, for `get`, `list` and snapshots; written by the persister only,
    /// never read on the hot path (which reads `limiter`).
    rate_limit: Mutex<Option<RateLimit>>,
}

/// What [`Entry::touch`] asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Touch {
    /// Nothing: the entry already had this time, or was already dirty.
    Nothing,
    /// This call made the entry dirty: send its id to the persister.
    Send,
}

impl Entry {
    pub(crate) fn new(
        id: TokenId,
        digest: Digest,
        name: Box<str>,
        scopes: Box<[Box<str>]>,
        created_at: u64,
        expires_at: Option<u64>,
        rate_limit: Option<RateLimit>,
    ) -> Entry {
        Entry {
            id,
            digest,
            name,
            scopes,
            created_at,
            expires_at,
            revoked_at: AtomicU64::new(NEVER),
            last_used: AtomicU64::new(NEVER),
            dirty: AtomicBool::new(false),
            persisted_last_used: AtomicU64::new(NEVER),
            limiter: Gcra::new(rate_limit),
            rate_limit: Mutex::new(rate_limit),
        }
    }

    /// An entry as loaded from a snapshot (with its checked rate limit): clean, and in step
    /// with the file. Takes the record to keep its decoded name without copying it.
    pub(crate) fn from_record(record: Record, id: TokenId, rate_limit: Option<RateLimit>) -> Entry {
        let entry = Entry::new(
            id,
            record.digest,
            record.name.into_boxed_str(),
            record
                .scopes
                .into_iter()
                .map(String::into_boxed_str)
                .collect(),
            record.created_at,
            record.expires_at,
            rate_limit,
        );
        let last_used = record.last_used.unwrap_or(NEVER);
        entry
            .revoked_at
            .store(record.revoked_at.unwrap_or(NEVER), Ordering::Relaxed);
        entry.last_used.store(last_used, Ordering::Relaxed);
        entry
            .persisted_last_used
            .store(last_used, Ordering::Relaxed);
        entry
    }

    /// Records a use at `now_ms` (the hot path: no allocation, no lock).
    ///
    /// Skip-if-fresh: when `last_used` already holds `now_ms` or later, another validation
    /// stored it and that validation is responsible for the dirty flag, so this one writes
    /// nothing and shares no cache line in exclusive mode.
    #[inline]
    pub(crate) fn touch(&self, now_ms: u64) -> Touch {
        // Relaxed: a hint only; `fetch_max` below is what decides.
        if self.last_used.load(Ordering::Relaxed) >= now_ms {
            return Touch::Nothing;
        }
        // Relaxed: published to the persister by the Release half of the swap below.
        self.last_used.fetch_max(now_ms, Ordering::Relaxed);
        // Planted bug (loom twin only): check-then-act on `dirty` lets two validations send.
        #[cfg(loom)]
        if crate::sync::bug::planted(crate::sync::bug::Bug::CheckThenSetDirty) {
            if self.dirty.load(Ordering::Acquire) {
                return Touch::Nothing;
            }
            self.dirty.store(true, Ordering::Release);
            return Touch::Send;
        }
        // AcqRel: Release publishes the `last_used` write above to the persister's Acquire
        // swap in `take_for_snapshot`. Being a read-modify-write, it is totally ordered with
        // that swap: either the snapshot's swap reads this `true` (and so sees our
        // `last_used`), or ours comes later and reads the snapshot's `false` (and we send).
        if self.dirty.swap(true, Ordering::AcqRel) {
            Touch::Nothing
        } else {
            Touch::Send
        }
    }

    /// Clears the dirty flag, *then* reads `last_used`: the snapshot half of the protocol.
    pub(crate) fn take_for_snapshot(&self) -> u64 {
        // Planted bug (loom twin only): reading before clearing loses a racing touch.
        #[cfg(loom)]
        if crate::sync::bug::planted(crate::sync::bug::Bug::ReadBeforeClear) {
            let last_used = self.last_used.load(Ordering::Acquire);
            self.dirty.swap(false, Ordering::AcqRel);
            return last_used;
        }
        // AcqRel: Acquire pairs with the Release of `touch`'s swap (see there).
        self.dirty.swap(false, Ordering::AcqRel);
        // Acquire: sees at least the `last_used` of every touch whose swap we read from.
        self.last_used.load(Ordering::Acquire)
    }

    /// Whether `last_used` differs from what the newest snapshot on disk holds.
    pub(crate) fn unsaved(&self) -> bool {
        // Acquire on last_used: as in `take_for_snapshot`. `persisted_last_used` is only
        // written by the persister thread, which is the caller, so Relaxed suffices.
        self.last_used.load(Ordering::Acquire) != self.persisted_last_used.load(Ordering::Relaxed)
    }

    /// The `last_used` value in the newest snapshot on disk.
    pub(crate) fn persisted_last_used(&self) -> u64 {
        // Relaxed: only the persister thread reads and writes it.
        self.persisted_last_used.load(Ordering::Relaxed)
    }

    /// After a successful write: `last_used` as of that snapshot is on disk.
    pub(crate) fn mark_persisted(&self, last_used: u64) {
        self.persisted_last_used.store(last_used, Ordering::Relaxed);
    }

    /// After a failed write: the entry stays dirty until a snapshot succeeds.
    pub(crate) fn mark_dirty(&self) {
        // Release: like `touch`'s swap, but no send: the persister already knows.
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether the entry is waiting for a snapshot.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// The last successful validation, in Unix ms.
    pub(crate) fn last_used(&self) -> Option<u64> {
        // Relaxed: a reading for display; ordering with other fields is not promised.
        nonzero(self.last_used.load(Ordering::Relaxed))
    }

    /// When the token was revoked, in Unix ms.
    #[inline]
    pub(crate) fn revoked_at(&self) -> Option<u64> {
        // Acquire: pairs with the Release in `revoke`; a validation that starts after
        // `revoke` returned sees it (the persister's reply also orders it).
        nonzero(self.revoked_at.load(Ordering::Acquire))
    }

    /// Marks the token revoked at `now_ms`, keeping the first revocation time if it already
    /// was. Called by the persister only.
    pub(crate) fn revoke(&self, now_ms: u64) {
        let stamp = now_ms.max(1);
        let _ =
            self.revoked_at
                .compare_exchange(NEVER, stamp, Ordering::Release, Ordering::Relaxed);
    }

    /// The token's rate limit, as set.
    pub(crate) fn rate_limit(&self) -> Option<RateLimit> {
        *self.rate_limit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the token's rate limit (a full burst is available again). Called by the
    /// persister only, so the two fields below are never written concurrently.
    pub(crate) fn set_rate_limit(&self, limit: Option<RateLimit>) {
        *self.rate_limit.lock().unwrap_or_else(|e| e.into_inner()) = limit;
        self.limiter.set(limit);
    }

    /// Whether the token has expired at `now_ms`.
    #[inline]
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| now_ms >= at)
    }

    /// Whether the token grants `scope`.
    pub(crate) fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }

    /// The entry as a snapshot record, with `last_used` as read by `take_for_snapshot`.
    pub(crate) fn to_record(&self, last_used: u64) -> Record {
        Record {
            id: self.id.to_bytes(),
            name: self.name.to_string(),
            digest: self.digest,
            scopes: self.scopes.iter().map(|s| s.to_string()).collect(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at(),
            last_used: nonzero(last_used),
            rate_limit: self.rate_limit().map(RateLimit::to_record),
        }
    }
}

/// The entries a store file's records describe, each record checked as `open` and
/// `inspect` check it: a valid id, no id twice, a rate limit this build can enforce.
/// Takes the records to keep their decoded names without copying them.
pub(crate) fn load(records: Vec<Record>) -> Result<Vec<Entry>, Problem> {
    let mut seen = HashSet::with_capacity(records.len());
    let mut entries = Vec::with_capacity(records.len());
    for record in records {
        let id = TokenId::from_bytes(record.id)
            .ok_or_else(|| Problem::BadId(String::from_utf8_lossy(&record.id).into()))?;
        if !seen.insert(id) {
            return Err(Problem::DuplicateId(id.to_string()));
        }
        let rate_limit = match &record.rate_limit {
            None => None,
            Some(stored) => Some(
                RateLimit::from_record(stored)
                    .ok_or_else(|| Problem::BadRateLimit(id.to_string()))?,
            ),
        };
        entries.push(Entry::from_record(record, id, rate_limit));
    }
    Ok(entries)
}

fn nonzero(ms: u64) -> Option<u64> {
    (ms != NEVER).then_some(ms)
}
