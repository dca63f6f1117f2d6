//! One live token in memory, and the dirty protocol between validations and snapshots.
//!
//! An entry is two cache lines. The first, [`Hot`], holds everything `validate` reads or
//! writes: the digest, a status word (expiry and the revoked bit), the `last_used` word
//! with its dirty bit, and the rate limiter. The second holds what only lists, snapshots
//! and the persister read: the id, name and scopes, times, the rate limit as set.
//!
//! A token's owner, metadata and import mark ([`Extras`]) hang off the second line; the
//! status word's owner bit tells `validate` whether to look there, so a token without an
//! owner pays one bit test for owners.
//!
//! `last_used` and the dirty bit share one word: a validation's `fetch_max` stamps the time
//! and sets the bit in one step, and a snapshot's `fetch_and` clears the bit and returns the
//! time in one step, so there is no ordering argument between two atomics: a validation
//! racing a snapshot either lands in it or leaves the bit set for the next one.

use std::collections::HashSet;

use subtle::ConstantTimeEq;

use crate::credits::{Meter, Spent};
use crate::error::Rejection;
use crate::extras::{Extras, ExtrasSlot, Unlinked};
use crate::rate_limit::{Gcra, RateLimit};
use crate::snapshot::{Problem, Record, RecordRef, Scopes};
use crate::sync::{AtomicU64, Ordering};
use crate::token::{Digest, TokenId};
use crate::usage::Uses;

/// `0` in a time word means "never".
const NEVER: u64 = 0;
/// The revoked bit of the status word; the low 62 bits hold the expiry (Unix ms, 0 = never).
const REVOKED: u64 = 1 << 63;
/// The owner bit of the status word: the token has an owner, whose shared rate limit
/// `validate` checks too.
const OWNED: u64 = 1 << 62;
/// The credits bit of the status word: the token has credits, which `validate` spends.
const METERED: u64 = 1 << 61;
/// The flags `verdict` tests in one branch: a token with none of them pays for none.
const FLAGS: u64 = REVOKED | OWNED | METERED;
/// The expiry bits of the status word (an expiry past the year 73 million is clamped).
const EXPIRY: u64 = METERED - 1;
/// The dirty bit of the `used` word; the other bits hold `last_used << 1`.
const DIRTY: u64 = 1;
/// The latest time either word can hold (63 bits of milliseconds: the year 292 million).
/// Later times are clamped to it on the way in, and refused in a store file.
const LATEST: u64 = REVOKED - 1;
/// Separates the name and each scope in an entry's text (no name or scope holds it).
const SEPARATOR: char = '\0';

/// What `validate` touches, in one cache line.
#[repr(C, align(64))]
pub(crate) struct Hot {
    digest: Digest,
    /// Expiry in Unix ms (0 = never), with [`REVOKED`] set once the token is revoked and
    /// [`OWNED`] while it has an owner.
    status: AtomicU64,
    /// `last_used << 1 | dirty`.
    used: AtomicU64,
    /// The rate-limit check (its state is in memory only).
    pub(crate) limiter: Gcra,
}

/// A token as the store holds it: [`Hot`], then the rest.
#[repr(C, align(64))]
pub(crate) struct Entry {
    hot: Hot,
    pub(crate) id: TokenId,
    /// The name, then each scope, each after a [`SEPARATOR`].
    text: Box<str>,
    pub(crate) created_at: u64,
    revoked_at: AtomicU64,
    /// The `last_used` value in the newest snapshot on disk. Only the persister touches it.
    persisted_last_used: AtomicU64,
    /// Accepted validations not yet in a thread's tally (see [`crate::usage`]).
    pub(crate) uses: Uses,
    /// Owner, metadata, import mark, credits, the rate limit as set: null for most tokens;
    /// swapped whole by the persister.
    extras: ExtrasSlot,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Hot>() == 64);
    assert!(std::mem::size_of::<Entry>() == 128);
};

/// What `verdict` read of an admitted token besides revocation and expiry: whether it has
/// an owner, whose shared limit `validate` checks too, and credits, which it spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    owned: bool,
    metered: bool,
}

impl Standing {
    /// Neither: the common token.
    const PLAIN: Standing = Standing {
        owned: false,
        metered: false,
    };
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
    /// A new entry: `text` is the name followed by each scope (see [`pack_text`]).
    pub(crate) fn new(
        id: TokenId,
        digest: Digest,
        text: Box<str>,
        created_at: u64,
        expires_at: Option<u64>,
        rate_limit: Option<RateLimit>,
    ) -> Entry {
        let mut entry = Entry {
            hot: Hot {
                digest,
                // An expiry of 0 (1970) means expired, not "never".
                status: AtomicU64::new(expires_at.map_or(NEVER, |at| at.clamp(1, EXPIRY))),
                used: AtomicU64::new(NEVER),
                limiter: Gcra::new(rate_limit),
            },
            id,
            text,
            created_at,
            revoked_at: AtomicU64::new(NEVER),
            persisted_last_used: AtomicU64::new(NEVER),
            uses: Uses::default(),
            extras: ExtrasSlot::default(),
        };
        entry
            .extras
            .set(Some(Extras::default().with_rate_limit(rate_limit)));
        entry
    }

    /// The SHA-256 digest the token is stored under.
    pub(crate) fn digest(&self) -> &Digest {
        &self.hot.digest
    }

    /// An entry as loaded from a snapshot (with its checked id, text and rate limit):
    /// clean, and in step with the file.
    fn from_record(
        record: &Record,
        id: TokenId,
        text: Box<str>,
        rate_limit: Option<RateLimit>,
    ) -> Entry {
        let entry = Entry::new(
            id,
            record.digest,
            text,
            record.created_at,
            record.expires_at,
            rate_limit,
        );
        if let Some(at) = record.revoked_at {
            entry.revoke(at);
        }
        let last_used = record.last_used.unwrap_or(NEVER);
        // Relaxed: the entry is not shared yet; publishing it to the map orders these.
        entry.hot.used.store(last_used << 1, Ordering::Relaxed);
        entry
            .persisted_last_used
            .store(last_used, Ordering::Relaxed);
        entry
    }

    /// Whether `digest` is this token's, compared in constant time: the four 64-bit words'
    /// differences are OR-ed with no branch, and only the total meets `subtle`'s
    /// optimization barrier (one, where comparing bytes puts 32 on the hot path).
    #[inline]
    pub(crate) fn digest_matches(&self, digest: &Digest) -> bool {
        let word = |bytes: &Digest, i: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(word)
        };
        let difference = (0..4).fold(0, |acc, i| {
            acc | (word(&self.hot.digest, i) ^ word(digest, i))
        });
        bool::from(difference.ct_eq(&0))
    }

    /// Revoked, expired at `now_ms`, or neither: one load of the status word, whose
    /// [`Standing`] the rest of the validation reads instead of loading it again.
    #[inline]
    pub(crate) fn verdict(&self, now_ms: u64) -> Result<Standing, Rejection> {
        // Acquire: pairs with the Release in `revoke` and `shorten_expiry`; a validation
        // that starts after `revoke` returned sees it (the persister's reply also orders it).
        // And with the Release in `mark_flags`, which comes after the extras: a validation
        // that sees the owner bit finds the owner.
        let status = self.hot.status.load(Ordering::Acquire);
        // Most tokens: no flag, so the word is the expiry itself.
        if status & FLAGS == 0 {
            if status != NEVER && now_ms >= status {
                return Err(Rejection::Expired);
            }
            return Ok(Standing::PLAIN);
        }
        if status & REVOKED != 0 {
            return Err(Rejection::Revoked);
        }
        let expiry = status & EXPIRY;
        if expiry != NEVER && now_ms >= expiry {
            return Err(Rejection::Expired);
        }
        Ok(Standing {
            owned: status & OWNED != 0,
            metered: status & METERED != 0,
        })
    }

    /// Spends one request of the owner's shared rate limit at `now_ms`, if the token has an
    /// owner as of `standing` (its `verdict`); a token without one costs a bit test.
    #[inline]
    pub(crate) fn check_owner_rate(
        &self,
        standing: Standing,
        now_ms: u64,
    ) -> Result<(), std::time::Duration> {
        if standing.owned {
            self.check_owner_rate_slow(now_ms)
        } else {
            Ok(())
        }
    }

    /// Spends `cost` of the token's credits at `now_ms`, if it has credits as of
    /// `standing`; a token without costs a bit test.
    #[inline]
    pub(crate) fn spend(&self, standing: Standing, cost: u64, now_ms: u64) -> Spent {
        if !standing.metered {
            return Spent::Yes { send: false };
        }
        self.spend_slow(cost, now_ms)
    }

    #[inline(never)]
    fn spend_slow(&self, cost: u64, now_ms: u64) -> Spent {
        match self.extras().and_then(|x| x.meter.as_deref()) {
            Some(meter) => meter.spend(cost, now_ms),
            None => Spent::Yes { send: false },
        }
    }

    /// The token's credits meter, if it has credits.
    pub(crate) fn meter(&self) -> Option<&Meter> {
        self.extras()?.meter.as_deref()
    }

    #[inline(never)]
    fn check_owner_rate_slow(&self, now_ms: u64) -> Result<(), std::time::Duration> {
        match self.extras().and_then(|x| x.owner.as_ref()) {
            Some(owner) => owner.check_rate(now_ms),
            None => Ok(()),
        }
    }

    /// The token's extras (owner, metadata, import mark), if it has any: borrowed, no
    /// count taken.
    #[inline]
    pub(crate) fn extras(&self) -> Option<&Extras> {
        self.extras.get()
    }

    /// The token's extras as a counted reference, to keep beyond the borrow of the entry.
    pub(crate) fn extras_arc(&self) -> Option<std::sync::Arc<Extras>> {
        self.extras.arc()
    }

    /// Whether the token belongs to `owner`.
    pub(crate) fn owner_is(&self, owner: &str) -> bool {
        self.extras().and_then(|x| x.owner_name()) == Some(owner)
    }

    /// Whether the token was imported (its digest is of a key minted elsewhere).
    pub(crate) fn is_imported(&self) -> bool {
        self.extras().is_some_and(|x| x.imported)
    }

    /// Sets the extras of an entry no other thread sees yet (empty ones are kept as none),
    /// keeping its rate limit, and the owner and credits bits to match.
    pub(crate) fn set_extras(&mut self, extras: Option<Extras>) {
        let limit = self.rate_limit();
        let extras = Some(extras.unwrap_or_default().with_rate_limit(limit));
        let flags = flags_of(&extras);
        self.extras.set(extras);
        self.mark_flags(flags);
    }

    /// Replaces a shared entry's extras and sets the owner bit to match; the old extras
    /// may still be borrowed, so the map retires them (`Map::set_extras`, its only caller).
    /// Called by the persister only (and while loading), like every other write of the
    /// status word.
    pub(crate) fn replace_extras(&self, extras: Option<Extras>) -> Option<Unlinked> {
        let flags = flags_of(&extras);
        let old = self.extras.replace(extras);
        self.mark_flags(flags);
        old
    }

    /// Sets the owner and credits bits to `flags` (the other bits as they are).
    fn mark_flags(&self, flags: u64) {
        // Release: pairs with the Acquire in `verdict` (the extras first, so a validation
        // that sees a bit finds what it stands for).
        let set = flags & (OWNED | METERED);
        let clear = !flags & (OWNED | METERED);
        if set != 0 {
            self.hot.status.fetch_or(set, Ordering::Release);
        }
        if clear != 0 {
            self.hot.status.fetch_and(!clear, Ordering::Release);
        }
    }

    /// Spends one request of the token's rate limit at `now_ms`, or says how long to wait.
    #[inline]
    pub(crate) fn check_rate(&self, now_ms: u64) -> Result<(), std::time::Duration> {
        self.hot.limiter.check(now_ms)
    }

    /// Records a use at `now_ms` (the hot path: no allocation, no lock).
    ///
    /// Skip-if-fresh: when `last_used` already holds `now_ms` or later, another validation
    /// stored it and that validation is responsible for the dirty bit, so this one writes
    /// nothing and shares no cache line in exclusive mode.
    #[inline]
    pub(crate) fn touch(&self, now_ms: u64) -> Touch {
        let now_ms = now_ms.min(LATEST);
        // Relaxed: a hint only; `fetch_max` below is what decides.
        if self.hot.used.load(Ordering::Relaxed) >> 1 >= now_ms {
            return Touch::Nothing;
        }
        self.set_dirty(now_ms)
    }

    /// The write half of [`touch`](Self::touch): `last_used` and the dirty bit set in one
    /// read-modify-write; `Send` if this call set the bit. (Under loom, `twins::set_dirty`
    /// chooses between this and its broken twin.)
    #[cfg(not(loom))]
    #[inline]
    fn set_dirty(&self, now_ms: u64) -> Touch {
        self.set_dirty_at_once(now_ms)
    }

    /// See [`set_dirty`](Self::set_dirty).
    #[inline]
    fn set_dirty_at_once(&self, now_ms: u64) -> Touch {
        // AcqRel: Release publishes this use to the persister's Acquire `fetch_and` in
        // `take_for_snapshot`. Both are read-modify-writes of one word, so they are totally
        // ordered: either the snapshot's clear comes later and returns this time, or ours
        // comes later, finds the bit clear, sets it, and we send.
        let stamp = (now_ms << 1) | DIRTY;
        let before = self.hot.used.fetch_max(stamp, Ordering::AcqRel);
        // The word changed (`before < stamp`) from clean to dirty: this call set the bit.
        if before & DIRTY == 0 && before < stamp {
            Touch::Send
        } else {
            Touch::Nothing
        }
    }

    /// Clears the dirty bit and returns `last_used`, in one step: the snapshot half of the
    /// protocol (see [`touch`](Self::touch)).
    /// (Under loom, `twins::take_for_snapshot` chooses between this and its broken twin.)
    #[cfg(not(loom))]
    pub(crate) fn take_for_snapshot(&self) -> u64 {
        self.take_clearing_first()
    }

    /// See [`take_for_snapshot`](Self::take_for_snapshot).
    fn take_clearing_first(&self) -> u64 {
        // AcqRel: Acquire pairs with the Release of `touch`'s fetch_max (see there).
        self.hot.used.fetch_and(!DIRTY, Ordering::AcqRel) >> 1
    }

    /// Whether `last_used`, the credits or the shared usage count differ from what the
    /// files hold.
    pub(crate) fn unsaved(&self) -> bool {
        // Acquire on `used`: as in `take_for_snapshot`. `persisted_last_used` is only
        // written by the persister thread, which is the caller, so Relaxed suffices.
        self.hot.used.load(Ordering::Acquire) >> 1
            != self.persisted_last_used.load(Ordering::Relaxed)
            || self.meter().is_some_and(|m| m.state() != m.persisted())
            || self.uses.peek().is_some()
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

    /// The token was used at `at`, which is on disk (or in the database); an earlier time
    /// than the entry has changes nothing. Journal replay while opening (the entry is not
    /// shared yet), and rows from other replicas of a PostgreSQL store (on the persister
    /// thread). A later time replaces a dirty one and clears the bit: the newer time is
    /// already stored, the persister still holds the id, and the next `touch` sets the bit
    /// again and sends (a cleared bit only costs a message, a set one without a send would
    /// lose a write).
    pub(crate) fn replay_used(&self, at: u64) {
        let at = at.min(LATEST);
        // Relaxed: a read-modify-write of the one word `touch` and `take_for_snapshot` also
        // update, so all are totally ordered; this publishes nothing else.
        self.hot.used.fetch_max(at << 1, Ordering::Relaxed);
        self.persisted_last_used.fetch_max(at, Ordering::Relaxed);
    }

    /// After a failed write: the entry stays dirty until a snapshot succeeds.
    pub(crate) fn mark_dirty(&self) {
        // Release: like `touch`'s, but no send: the persister already knows.
        self.hot.used.fetch_or(DIRTY, Ordering::Release);
    }

    /// Whether the entry is waiting for a snapshot.
    pub(crate) fn is_dirty(&self) -> bool {
        self.hot.used.load(Ordering::Acquire) & DIRTY != 0
    }

    /// The last successful validation, in Unix ms.
    pub(crate) fn last_used(&self) -> Option<u64> {
        // Relaxed: a reading for display; ordering with other fields is not promised.
        nonzero(self.hot.used.load(Ordering::Relaxed) >> 1)
    }

    /// When the token was revoked, in Unix ms.
    pub(crate) fn revoked_at(&self) -> Option<u64> {
        // Acquire: pairs with the Release of the status word in `revoke`, whose bit is set
        // after this time is stored.
        if self.hot.status.load(Ordering::Acquire) & REVOKED == 0 {
            return None;
        }
        nonzero(self.revoked_at.load(Ordering::Relaxed))
    }

    /// When the token expires, in Unix ms.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        nonzero(self.hot.status.load(Ordering::Acquire) & EXPIRY)
    }

    /// Marks the token revoked at `now_ms`, keeping the first revocation time if it already
    /// was. Called by the persister only (and while loading, before the entry is shared).
    pub(crate) fn revoke(&self, now_ms: u64) {
        if self.revoked_at().is_some() {
            return;
        }
        // Relaxed: published by the Release below.
        self.revoked_at.store(now_ms.max(1), Ordering::Relaxed);
        // Release: pairs with the Acquire loads in `verdict` and `revoked_at`.
        self.hot.status.fetch_or(REVOKED, Ordering::Release);
    }

    /// Makes the token expire at `at_ms` if it would otherwise expire later (or never).
    /// Called by the persister only (`rotate`).
    pub(crate) fn shorten_expiry(&self, at_ms: u64) {
        let at = at_ms.clamp(1, EXPIRY);
        // Relaxed loads: only the persister writes the word, and this thread is it.
        let status = self.hot.status.load(Ordering::Relaxed);
        let expiry = status & EXPIRY;
        if expiry == NEVER || at < expiry {
            // Release: pairs with the Acquire in `verdict`.
            self.hot
                .status
                .store((status & !EXPIRY) | at, Ordering::Release);
        }
    }

    /// The token's rate limit, as set.
    pub(crate) fn rate_limit(&self) -> Option<RateLimit> {
        self.extras()?.rate_limit
    }

    /// Makes validation enforce `limit` (a full burst is available again). Called by the
    /// persister only, through `Map::set_rate_limit`, which keeps the limit as set in the
    /// extras in step.
    pub(crate) fn set_limiter(&self, limit: Option<RateLimit>) {
        self.hot.limiter.set(limit);
    }

    /// The token's name.
    pub(crate) fn name(&self) -> &str {
        name_of(&self.text)
    }

    /// The token's scopes.
    pub(crate) fn scopes(&self) -> impl Iterator<Item = &str> {
        scopes_of(&self.text)
    }

    /// Whether the token grants `scope`.
    #[inline]
    pub(crate) fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The name and scopes, packed (for a detached copy of a valid token).
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The entry as a snapshot record borrowing its text, with `last_used` as read by
    /// `take_for_snapshot`.
    pub(crate) fn record(&self, last_used: u64) -> RecordRef<'_> {
        RecordRef {
            id: self.id.to_bytes(),
            name: name_of(&self.text),
            digest: self.hot.digest,
            scopes: Scopes {
                text: &self.text,
                separator: SEPARATOR,
            },
            created_at: self.created_at,
            expires_at: self.expires_at(),
            revoked_at: self.revoked_at(),
            last_used: nonzero(last_used),
            rate_limit: self.rate_limit().map(RateLimit::to_record),
        }
    }

    /// The entry as an owned snapshot record (for tests that compare records).
    #[cfg(test)]
    pub(crate) fn to_record(&self, last_used: u64) -> Record {
        let record = self.record(last_used);
        Record {
            id: record.id,
            name: record.name.to_string(),
            digest: record.digest,
            scopes: record.scopes.iter().map(str::to_string).collect(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            last_used: record.last_used,
            rate_limit: record.rate_limit,
        }
    }
}

/// The name followed by each scope, each after a separator, in one allocation.
pub(crate) fn pack_text<S: AsRef<str>>(name: &str, scopes: &[S]) -> Box<str> {
    let len = name.len() + scopes.iter().map(|s| s.as_ref().len() + 1).sum::<usize>();
    let mut text = String::with_capacity(len);
    text.push_str(name);
    for scope in scopes {
        text.push(SEPARATOR);
        text.push_str(scope.as_ref());
    }
    text.into_boxed_str()
}

/// The name in a packed text.
pub(crate) fn name_of(text: &str) -> &str {
    text.split(SEPARATOR).next().unwrap_or_default()
}

/// The scopes in a packed text.
pub(crate) fn scopes_of(text: &str) -> impl Iterator<Item = &str> {
    text.split(SEPARATOR).skip(1)
}

/// The entries a store file's records describe, each record checked by [`load_one`], and
/// no id twice.
pub(crate) fn load(records: Vec<Record>) -> Result<Vec<Entry>, Problem> {
    let mut seen = HashSet::with_capacity(records.len());
    let mut entries = Vec::with_capacity(records.len());
    for record in records {
        let entry = load_one(record)?;
        if !seen.insert(entry.id) {
            return Err(Problem::DuplicateId(entry.id.to_string()));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// The entry one record describes, checked as `open`, `inspect` and journal replay check
/// it: a valid id, times a token can hold, a name and scopes without the separator, a rate
/// limit this build can enforce.
pub(crate) fn load_one(mut record: Record) -> Result<Entry, Problem> {
    let id = TokenId::from_bytes(record.id)
        .ok_or_else(|| Problem::BadId(String::from_utf8_lossy(&record.id).into()))?;
    let times = [record.expires_at, record.last_used];
    if times.into_iter().flatten().any(|t| t > LATEST) {
        return Err(Problem::BadTime(id.to_string()));
    }
    let texts = std::iter::once(&record.name).chain(&record.scopes);
    if texts.into_iter().any(|t| t.contains(SEPARATOR)) {
        return Err(Problem::BadText(id.to_string()));
    }
    let rate_limit = match &record.rate_limit {
        None => None,
        Some(stored) => Some(
            RateLimit::from_record(stored).ok_or_else(|| Problem::BadRateLimit(id.to_string()))?,
        ),
    };
    // The decoded name's allocation becomes the text: no copy of it.
    let mut text = std::mem::take(&mut record.name);
    for scope in &record.scopes {
        text.push(SEPARATOR);
        text.push_str(scope);
    }
    Ok(Entry::from_record(
        &record,
        id,
        text.into_boxed_str(),
        rate_limit,
    ))
}

fn nonzero(ms: u64) -> Option<u64> {
    (ms != NEVER).then_some(ms)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let id: TokenId = "abcd1234".parse().unwrap();
        Entry::new(
            id,
            [7; 32],
            pack_text("bot", &["read", "write"]),
            1,
            None,
            None,
        )
    }

    #[test]
    fn a_borrowed_record_encodes_as_the_owned_one_decodes() {
        use crate::snapshot::{decode, encode, Body, BodyRef};
        let id: TokenId = "abcd1234".parse().unwrap();
        let limited = Some(RateLimit::per_minute(600).burst(20));
        let entries = [
            entry(),
            Entry::new(
                id,
                [9; 32],
                pack_text::<&str>("bare", &[]),
                5,
                Some(99),
                limited,
            ),
        ];
        entries[1].revoke(7);
        let records: Vec<RecordRef<'_>> = entries.iter().map(|e| e.record(42)).collect();
        let image = encode(&BodyRef {
            written_at: 3,
            seq: 5,
            records: &records,
            extras: &[],
            owners: &[],
            prefixes: &[],
            credits: &[],
            usage: &[],
        });
        let owned = Body::tokens(3, 5, entries.iter().map(|e| e.to_record(42)).collect());
        assert_eq!(image, encode(&owned));
        assert_eq!(decode(&image).unwrap(), owned);
    }

    #[test]
    fn times_past_63_bits_are_clamped_in_memory_and_refused_in_a_file() {
        let id: TokenId = "abcd1234".parse().unwrap();
        let text = || pack_text::<&str>("t", &[]);
        let epoch = Entry::new(id, [0; 32], text(), 0, Some(0), None);
        assert_eq!(
            epoch.verdict(1),
            Err(Rejection::Expired),
            "0 is 1970, not never"
        );
        let far = Entry::new(id, [0; 32], text(), 0, Some(u64::MAX), None);
        assert_eq!(far.verdict(u64::MAX - 1), Err(Rejection::Expired));
        assert!(far.verdict(EXPIRY - 1).is_ok(), "an expiry keeps 61 bits");
        assert_eq!(far.expires_at(), Some(EXPIRY));
        assert_eq!(far.touch(u64::MAX), Touch::Send);
        assert_eq!(far.last_used(), Some(LATEST));
        let mut record = epoch.to_record(0);
        record.last_used = Some(1 << 63);
        assert_eq!(
            load(vec![record]).err(),
            Some(Problem::BadTime(id.to_string()))
        );
    }

    #[test]
    fn text_packs_name_and_scopes() {
        let e = entry();
        assert_eq!(e.name(), "bot");
        assert_eq!(e.scopes().collect::<Vec<_>>(), ["read", "write"]);
        assert!(e.has_scope("write") && !e.has_scope("bot") && !e.has_scope(""));
        let bare = pack_text::<&str>("bare", &[]);
        assert_eq!(scopes_of(&bare).count(), 0);
    }

    #[test]
    fn touch_sends_once_and_a_snapshot_clears_and_reads_in_one_step() {
        let e = entry();
        assert_eq!(e.touch(10), Touch::Send);
        assert_eq!(e.touch(11), Touch::Nothing, "already dirty");
        assert_eq!(e.touch(11), Touch::Nothing, "already fresh");
        assert_eq!(e.take_for_snapshot(), 11);
        assert!(!e.is_dirty());
        assert_eq!(e.touch(11), Touch::Nothing, "clean but not newer");
        assert_eq!(e.touch(12), Touch::Send);
        assert_eq!(e.last_used(), Some(12));
    }

    #[test]
    fn status_word_says_revoked_before_expired_and_keeps_the_first_revocation() {
        let id: TokenId = "abcd1234".parse().unwrap();
        let e = Entry::new(id, [0; 32], pack_text::<&str>("x", &[]), 1, Some(100), None);
        assert!(e.verdict(99).is_ok());
        assert_eq!(e.verdict(100), Err(Rejection::Expired));
        e.shorten_expiry(50);
        assert_eq!(e.expires_at(), Some(50));
        e.shorten_expiry(70);
        assert_eq!(e.expires_at(), Some(50), "rotate never lengthens");
        e.revoke(60);
        e.revoke(80);
        assert_eq!(e.revoked_at(), Some(60));
        assert_eq!(e.verdict(10), Err(Rejection::Revoked));
        assert_eq!(e.expires_at(), Some(50));
    }
}

/// Model checks only: the broken twins of the dirty-bit protocol, each its own function,
/// and the one place that chooses between them and the real steps.
#[cfg(loom)]
mod twins {
    use super::{Entry, Touch, DIRTY};
    use crate::sync::bug::{planted, Bug};
    use crate::sync::Ordering;

    impl Entry {
        /// `touch`'s write: the real one, or its twin if `CheckThenSetDirty` is planted.
        #[inline]
        pub(super) fn set_dirty(&self, now_ms: u64) -> Touch {
            if planted(Bug::CheckThenSetDirty) {
                self.set_dirty_check_then_set(now_ms)
            } else {
                self.set_dirty_at_once(now_ms)
            }
        }

        /// The snapshot's read: the real one, or its twin if `ReadBeforeClear` is planted.
        pub(crate) fn take_for_snapshot(&self) -> u64 {
            if planted(Bug::ReadBeforeClear) {
                self.take_reading_first()
            } else {
                self.take_clearing_first()
            }
        }

        /// Broken twin of `set_dirty`: a load of the dirty bit, then a separate write, so
        /// two validations can both see it clear and both send.
        fn set_dirty_check_then_set(&self, now_ms: u64) -> Touch {
            let dirty = self.hot.used.load(Ordering::Acquire) & DIRTY != 0;
            self.hot
                .used
                .fetch_max((now_ms << 1) | DIRTY, Ordering::AcqRel);
            if dirty {
                Touch::Nothing
            } else {
                Touch::Send
            }
        }

        /// Broken twin of `take_for_snapshot`: reading before clearing loses a racing touch.
        fn take_reading_first(&self) -> u64 {
            let used = self.hot.used.load(Ordering::Acquire);
            self.hot.used.fetch_and(!DIRTY, Ordering::AcqRel);
            used >> 1
        }
    }
}

/// The status word's bits for these extras: owner, credits.
fn flags_of(extras: &Option<Extras>) -> u64 {
    let Some(extras) = extras else { return 0 };
    let owned = if extras.owner.is_some() { OWNED } else { 0 };
    let metered = if extras.meter.is_some() { METERED } else { 0 };
    owned | metered
}
