//! A token's extras: its owner, its metadata and whether it was imported. Most tokens have
//! none, and an entry without them holds one null pointer. With them, an entry points at
//! one immutable [`Extras`]; `set_meta` swaps in a new one whole.

use std::borrow::Cow;
use std::sync::Arc;

use crate::credits::Meter;
use crate::owner::{self, Owner, Owners};
use crate::rate_limit::RateLimit;
use crate::snapshot::{ExtrasRecord, ExtrasRef, Problem};
use crate::token::TokenId;

/// The most bytes of metadata one token carries (keys and values together).
pub(crate) const MAX_META_BYTES: usize = 4096;
/// Separates keys and values in packed metadata (none holds it).
const SEPARATOR: char = '\0';

/// A token's owner, metadata, import mark, credits and rate limit as set, as one immutable
/// value (the credits' meter spends through atomics of its own).
#[derive(Default)]
pub(crate) struct Extras {
    pub(crate) owner: Option<Arc<Owner>>,
    /// Each key, then its value, each followed by [`SEPARATOR`], in the order given.
    meta: Box<str>,
    pub(crate) imported: bool,
    /// The token's credits, if it has any (shared by the extras that replace these when
    /// only the metadata changes).
    pub(crate) meter: Option<Arc<Meter>>,
    /// The rate limit as set, for `get`, `list` and snapshots (validation reads the
    /// entry's limiter, which holds it in the form it enforces). Kept here, not in the
    /// entry, because few tokens have one and the entry's second cache line is full.
    pub(crate) rate_limit: Option<RateLimit>,
}

impl Extras {
    /// Extras from their parts; `meta` must come from [`pack_meta`].
    pub(crate) fn new(owner: Option<Arc<Owner>>, meta: Box<str>, imported: bool) -> Extras {
        Extras {
            owner,
            meta,
            imported,
            meter: None,
            rate_limit: None,
        }
    }

    /// The same extras with `meter` as the token's credits.
    pub(crate) fn with_meter(mut self, meter: Option<Arc<Meter>>) -> Extras {
        self.meter = meter;
        self
    }

    /// The extras a record describes, checked as `NewToken` checks them (a file or a row
    /// holding what no call could have made is refused), with the owner shared through
    /// `owners`.
    pub(crate) fn from_record(
        record: ExtrasRecord,
        owners: &Owners,
    ) -> Result<(TokenId, Extras), Problem> {
        let id = TokenId::from_bytes(record.id)
            .ok_or_else(|| Problem::BadId(String::from_utf8_lossy(&record.id).into()))?;
        let bad = |why: String| Problem::BadExtras {
            id: id.to_string(),
            why,
        };
        let meta = pack_meta(&record.meta).map_err(bad)?;
        let owner = match &record.owner {
            Some(name) => {
                owner::check_name(name).map_err(bad)?;
                Some(owners.get_or_add(name))
            }
            None => None,
        };
        Ok((id, Extras::new(owner, meta, record.imported)))
    }

    /// The same extras with `limit` as the token's rate limit as set.
    pub(crate) fn with_rate_limit(mut self, limit: Option<RateLimit>) -> Extras {
        self.rate_limit = limit;
        self
    }

    /// The same owner, import mark, credits and rate limit with other metadata.
    pub(crate) fn with_meta(&self, meta: Box<str>) -> Extras {
        Extras::new(self.owner.clone(), meta, self.imported)
            .with_meter(self.meter.clone())
            .with_rate_limit(self.rate_limit)
    }

    /// Whether there is nothing to keep: no owner, no metadata, not imported, no credits,
    /// no rate limit.
    pub(crate) fn is_empty(&self) -> bool {
        !self.is_recorded() && self.rate_limit.is_none()
    }

    /// Whether files and rows hold these extras as an extras record (with the credits
    /// after it): an owner, metadata, the import mark or credits. The rate limit travels
    /// in the token's own record.
    pub(crate) fn is_recorded(&self) -> bool {
        self.owner.is_some() || !self.meta.is_empty() || self.imported || self.meter.is_some()
    }

    /// Whether `other` holds the same owner, metadata and import mark (a replica's own
    /// change coming back is no change).
    pub(crate) fn same_as(&self, other: &Extras) -> bool {
        self.owner_name() == other.owner_name()
            && self.meta == other.meta
            && self.imported == other.imported
    }

    /// The owner's id.
    pub(crate) fn owner_name(&self) -> Option<&str> {
        self.owner.as_deref().map(Owner::name)
    }

    /// The value of metadata `key`: a scan of at most 4 KiB, no allocation.
    pub(crate) fn meta(&self, key: &str) -> Option<&str> {
        self.meta_pairs().find(|&(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every metadata pair, in the order given.
    pub(crate) fn meta_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.meta.split_terminator(SEPARATOR);
        std::iter::from_fn(move || Some((parts.next()?, parts.next().unwrap_or_default())))
    }

    /// The packed metadata (to copy into a new [`Extras`]).
    pub(crate) fn packed_meta(&self) -> &str {
        &self.meta
    }

    /// As a snapshot or journal record of token `id` stores it.
    pub(crate) fn record(&self, id: TokenId) -> ExtrasRef<'_> {
        ExtrasRef {
            id: id.to_bytes(),
            owner: self.owner_name().map(Cow::Borrowed),
            meta: self
                .meta_pairs()
                .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
                .collect(),
            imported: self.imported,
        }
    }
}

/// Checks metadata pairs and packs them in one allocation: keys 1 to 128 bytes, unique,
/// without control characters; values without NUL; at most [`MAX_META_BYTES`] of keys and
/// values together. The error says which rule a pair broke.
pub(crate) fn pack_meta<K: AsRef<str>, V: AsRef<str>>(
    pairs: &[(K, V)],
) -> Result<Box<str>, String> {
    let total: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len())
        .sum();
    if total > MAX_META_BYTES {
        return Err(format!(
            "metadata takes {total} bytes (keys and values); the limit is {MAX_META_BYTES}"
        ));
    }
    let mut packed = String::with_capacity(total + 2 * pairs.len());
    for (n, (key, value)) in pairs.iter().enumerate() {
        let (key, value) = (key.as_ref(), value.as_ref());
        if key.is_empty() || key.len() > 128 || key.chars().any(char::is_control) {
            return Err(format!(
                "metadata key {key:?} must be 1 to 128 bytes without control characters"
            ));
        }
        if value.contains(SEPARATOR) {
            return Err(format!(
                "the value of metadata key {key:?} holds a NUL character"
            ));
        }
        if pairs[..n].iter().any(|(k, _)| k.as_ref() == key) {
            return Err(format!(
                "metadata key {key:?} is given twice; keys are unique"
            ));
        }
        packed.push_str(key);
        packed.push(SEPARATOR);
        packed.push_str(value);
        packed.push(SEPARATOR);
    }
    Ok(packed.into_boxed_str())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn metadata_packs_in_order_and_reads_back_by_key() {
        let packed = pack_meta(&[("plan", "pro"), ("tenant", ""), ("region", "eu")]).unwrap();
        let extras = Extras::new(None, packed, false);
        assert_eq!(extras.meta("plan"), Some("pro"));
        assert_eq!(extras.meta("tenant"), Some(""));
        assert_eq!(extras.meta("absent"), None);
        let pairs: Vec<_> = extras.meta_pairs().collect();
        assert_eq!(pairs, [("plan", "pro"), ("tenant", ""), ("region", "eu")]);
        assert!(!extras.is_empty());
        assert!(Extras::new(None, "".into(), false).is_empty());
    }

    #[test]
    fn metadata_over_the_limit_a_repeated_key_or_a_nul_is_refused() {
        let big = "v".repeat(MAX_META_BYTES);
        assert!(pack_meta(&[("k", big.as_str())]).is_err());
        assert!(pack_meta(&[("k", &big[1..])]).is_ok(), "exactly the limit");
        assert!(pack_meta(&[("k", "1"), ("k", "2")]).is_err());
        assert!(pack_meta(&[("", "1")]).is_err());
        assert!(pack_meta(&[("k", "a\0b")]).is_err());
        assert!(pack_meta(&[("k\0", "a")]).is_err());
    }
}

/// Where an entry keeps its [`Extras`]: null, or a pointer from [`Arc::into_raw`] holding
/// one count. A reader borrows the extras without a lock and without touching the count,
/// for as long as it borrows the entry; a validation that never asks pays nothing, and a
/// [`ValidToken`](crate::ValidToken) stays as small as the entry's pointer.
///
/// This is sound because of how entries are reached. A shared entry is only ever borrowed
/// from the map under its guard (`Map::read`, `with`, `with_all`), and only the map
/// replaces a shared entry's extras (`Map::set_extras`), retiring the old ones into the
/// same collector that frees removed entries: they are freed once every guard that was
/// active when they were unlinked, so every reader that may have loaded them, is gone.
/// An entry no one else sees yet is changed through `&mut` ([`ExtrasSlot::set`]).
#[derive(Default)]
pub(crate) struct ExtrasSlot(std::sync::atomic::AtomicPtr<Extras>);

/// Extras unlinked from a shared entry that readers may still borrow: the map retires
/// them (`Map::set_extras`). Dropped without that, they leak rather than dangle.
#[must_use = "extras unlinked from a shared entry must be retired by its map"]
pub(crate) struct Unlinked(std::ptr::NonNull<Extras>);

// SAFETY: the pointer is an `Arc<Extras>`'s, and `Extras` is `Send + Sync`; moving the
// count to another thread is what `Arc` allows.
unsafe impl Send for Unlinked {}

impl ExtrasSlot {
    /// The extras, borrowed for as long as the entry is.
    #[inline]
    pub(crate) fn get(&self) -> Option<&Extras> {
        // SeqCst: what seize's `Guard::protect` uses for a load under a guard (a plain load
        // on x86), so a reader whose guard began after an unlink sees the new value.
        let ptr = self.0.load(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: non-null values come from `Arc::into_raw` and keep their count while
        // linked; once unlinked they are freed only after every reader that may have loaded
        // them is gone (see the type's docs), and `&self` does not outlive the reader.
        unsafe { ptr.as_ref() }
    }

    /// The extras as a counted reference, to keep beyond the borrow of the entry.
    pub(crate) fn arc(&self) -> Option<Arc<Extras>> {
        let extras: *const Extras = self.get()?;
        // SAFETY: `extras` came from `Arc::into_raw` and is alive (see `get`): one more
        // count, handed to the `Arc` built from it.
        unsafe {
            Arc::increment_strong_count(extras);
            Some(Arc::from_raw(extras))
        }
    }

    /// Replaces the extras of an entry no other thread can see, freeing the old ones.
    pub(crate) fn set(&mut self, extras: Option<Extras>) {
        let old = std::mem::replace(self.0.get_mut(), into_raw(extras));
        // SAFETY: `&mut self`: no reader borrows the old value.
        drop(unsafe { from_raw(old) });
    }

    /// Links `extras` into a shared entry and returns the old ones, still borrowed maybe.
    pub(crate) fn replace(&self, extras: Option<Extras>) -> Option<Unlinked> {
        let old = self
            .0
            .swap(into_raw(extras), std::sync::atomic::Ordering::SeqCst);
        std::ptr::NonNull::new(old).map(Unlinked)
    }
}

impl Drop for ExtrasSlot {
    fn drop(&mut self) {
        // SAFETY: the entry is being dropped, so no reader borrows it or its extras.
        drop(unsafe { from_raw(*self.0.get_mut()) });
    }
}

impl Unlinked {
    /// The pointer, to retire into a collector with [`Unlinked::free`] as its reclaimer.
    pub(crate) fn into_raw(self) -> *mut Extras {
        self.0.as_ptr()
    }

    /// Frees extras retired with [`Unlinked::into_raw`].
    ///
    /// # Safety
    ///
    /// `ptr` came from `into_raw`, is freed once, and no reader can still borrow it.
    pub(crate) unsafe fn free(ptr: *mut Extras) {
        // SAFETY: the caller's contract.
        drop(unsafe { from_raw(ptr) });
    }
}

/// Null for none (empty extras count as none).
fn into_raw(extras: Option<Extras>) -> *mut Extras {
    match extras.filter(|x| !x.is_empty()) {
        Some(extras) => Arc::into_raw(Arc::new(extras)).cast_mut(),
        None => std::ptr::null_mut(),
    }
}

/// # Safety
///
/// `ptr` is null or came from [`into_raw`], and its count is not used again.
unsafe fn from_raw(ptr: *mut Extras) -> Option<Arc<Extras>> {
    // SAFETY: the caller's contract.
    (!ptr.is_null()).then(|| unsafe { Arc::from_raw(ptr) })
}
