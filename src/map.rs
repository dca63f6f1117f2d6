//! The token map: id to entry, the one structure that holds the tokens, with what the
//! tokens share: the index of imported keys by digest, the owners, the accepted prefixes.
//!
//! Normally a `papaya::HashMap` (chosen by measurement: docs/DESIGN.md, "The token map").
//! Reads take no lock and write no memory another thread reads: a reader announces itself
//! in its own thread's slot of the map's collector (`seize`) and borrows the entry in place,
//! so one token read from many threads at once scales. Insert and remove are O(1)
//! amortized; a removed entry is freed once every reader that could still hold it has
//! finished. Ids are hashed with a per-process random seed (`foldhash`): they come from
//! the request, so a fixed hash would let a client aim at one bucket.
//!
//! Under loom it is a loom `RwLock` around a `Vec` in insertion order (papaya's atomics are
//! invisible to the model checker, and a hash map's random order would make runs
//! non-deterministic, which loom's replay cannot handle; models hold two or three tokens),
//! and `read` hands out an `Arc` clone instead of a borrow.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::credits::Meter;
use crate::entry::Entry;
use crate::extras::{Extras, Unlinked};
use crate::owner::Owners;
use crate::rate_limit::RateLimit;
use crate::token::{Digest, Prefixes, TokenId};
use crate::usage::Counter;

/// The tokens, by id, and what they share.
pub(crate) struct Map {
    entries: Entries,
    /// Imported keys' ids by digest: a key minted elsewhere has no id in it to look up.
    imported: DigestIndex,
    /// How many imported keys the store holds: 0 keeps a foreign string's fast `Malformed`.
    imported_count: AtomicUsize,
    /// Every owner some token or shared limit names.
    pub(crate) owners: Owners,
    /// The prefixes tokens are accepted under.
    pub(crate) prefixes: Prefixes,
    /// The tokens' usage counts.
    pub(crate) usage: Counter,
}

impl Map {
    pub(crate) fn with_capacity(capacity: usize) -> Map {
        Map {
            entries: Entries::with_capacity(capacity),
            imported: DigestIndex::default(),
            imported_count: AtomicUsize::new(0),
            owners: Owners::default(),
            prefixes: Prefixes::default(),
            usage: Counter::new(),
        }
    }

    /// The entry, lent: no lock, no clone, no write to memory other threads read.
    #[inline]
    pub(crate) fn read(&self, id: &TokenId) -> Option<Lent<'_>> {
        self.entries.read(id)
    }

    /// Whether the store holds any imported key (a load: the validation path asks it of
    /// every string not in our format).
    #[inline]
    pub(crate) fn has_imported(&self) -> bool {
        // Relaxed: a hint; an import racing a validation may or may not be seen by it.
        self.imported_count.load(Ordering::Relaxed) != 0
    }

    /// The imported key whose digest is `digest`, lent, with its id.
    pub(crate) fn read_imported(&self, digest: &Digest) -> Option<(TokenId, Lent<'_>)> {
        let id = self.imported.get(digest)?;
        Some((id, self.entries.read(&id)?))
    }

    /// Runs `f` on the entry, if there is one.
    pub(crate) fn with<R>(&self, id: &TokenId, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.entries.with(id, f)
    }

    pub(crate) fn contains(&self, id: &TokenId) -> bool {
        self.entries.contains(id)
    }

    /// Whether an imported key has this digest.
    pub(crate) fn contains_imported(&self, digest: &Digest) -> bool {
        self.imported.get(digest).is_some()
    }

    /// Adds new entries. Stops at the first id already present (`Err`); the entries
    /// before it stay added.
    pub(crate) fn insert_new(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), Duplicate> {
        for entry in entries {
            let imported = entry.is_imported().then(|| (*entry.digest(), entry.id));
            self.entries.insert_new(entry)?;
            if let Some((digest, id)) = imported {
                self.index(digest, id);
            }
        }
        Ok(())
    }

    /// Removes the entry; it is freed once no reader holds it. `false` if there was none.
    pub(crate) fn remove(&self, id: &TokenId) -> bool {
        let imported = self
            .entries
            .with(id, |e| e.is_imported().then(|| *e.digest()))
            .flatten();
        let removed = self.entries.remove(id);
        if let (true, Some(digest)) = (removed, imported) {
            self.unindex(&digest);
        }
        if removed {
            // Counts a tally still holds may bring the id back into the book; the next
            // snapshot keeps only the tokens the map holds.
            self.usage.lock().book().forget(id);
        }
        removed
    }

    /// Replaces token `id`'s owner, metadata and import mark (persister, or loading),
    /// keeping its credits and rate limit, and the digest index in step with its import
    /// mark. `false` if there is no such token.
    pub(crate) fn set_extras(&self, id: &TokenId, extras: Extras) -> bool {
        self.update_extras(id, |old| {
            extras
                .with_meter(old.and_then(|x| x.meter.clone()))
                .with_rate_limit(old.and_then(|x| x.rate_limit))
        })
    }

    /// Replaces token `id`'s rate limit (persister, or loading): the limit as set, kept in
    /// its extras, then the one validation enforces, with a full burst. `false` if there
    /// is no such token.
    pub(crate) fn set_rate_limit(&self, id: &TokenId, limit: Option<RateLimit>) -> bool {
        let found = self.update_extras(id, |old| {
            old.map_or_else(Extras::default, |x| x.with_meta(x.packed_meta().into()))
                .with_rate_limit(limit)
        });
        found && self.entries.with(id, |e| e.set_limiter(limit)).is_some()
    }

    /// Replaces token `id`'s credits (persister, or loading), keeping the rest of its
    /// extras. `false` if there is no such token.
    pub(crate) fn set_meter(&self, id: &TokenId, meter: Option<Meter>) -> bool {
        let meter = meter.map(std::sync::Arc::new);
        self.update_extras(id, |old| match old {
            Some(old) => old.with_meta(old.packed_meta().into()).with_meter(meter),
            None => Extras::new(None, "".into(), false).with_meter(meter),
        })
    }

    fn update_extras(&self, id: &TokenId, f: impl FnOnce(Option<&Extras>) -> Extras) -> bool {
        let found = self.entries.with(id, |e| {
            let was = e.is_imported();
            let extras = f(e.extras());
            let now = extras.imported;
            if let Some(old) = e.replace_extras(Some(extras)) {
                self.entries.retire(old);
            }
            (was, now, *e.digest())
        });
        match found {
            Some((false, true, digest)) => self.index(digest, *id),
            Some((true, false, digest)) => self.unindex(&digest),
            _ => {}
        }
        found.is_some()
    }

    /// Revokes at `at` every token of `owner` not revoked yet; returns their ids.
    pub(crate) fn revoke_owner(&self, owner: &str, at: u64) -> Vec<TokenId> {
        self.with_all(|entries| {
            entries
                .iter()
                .filter(|e| e.revoked_at().is_none() && e.owner_is(owner))
                .map(|e| {
                    e.revoke(at);
                    e.id
                })
                .collect()
        })
    }

    /// Deletes every token of `owner`; returns their ids.
    pub(crate) fn delete_owner(&self, owner: &str) -> Vec<TokenId> {
        let doomed: Vec<TokenId> = self.owned_by(owner);
        let deleted = doomed.into_iter().filter(|id| self.remove(id)).collect();
        self.owners.forget_unused();
        deleted
    }

    /// The ids of `owner`'s tokens.
    pub(crate) fn owned_by(&self, owner: &str) -> Vec<TokenId> {
        self.with_all(|entries| {
            entries
                .iter()
                .filter(|e| e.owner_is(owner))
                .map(|e| e.id)
                .collect()
        })
    }

    /// Calls `f` with every entry (in no particular order), all held under one guard:
    /// entries removed meanwhile stay valid until it returns.
    pub(crate) fn with_all<R>(&self, f: impl FnOnce(&[&Entry]) -> R) -> R {
        self.entries.with_all(f)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn index(&self, digest: Digest, id: TokenId) {
        if self.imported.insert(digest, id) {
            self.imported_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn unindex(&self, digest: &Digest) {
        if self.imported.remove(digest) {
            self.imported_count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Imported keys' ids by digest. Lock-free reads (papaya) outside loom; a lock under it.
#[cfg(not(loom))]
#[derive(Default)]
struct DigestIndex(papaya::HashMap<Digest, TokenId, foldhash::fast::RandomState>);

#[cfg(not(loom))]
impl DigestIndex {
    fn get(&self, digest: &Digest) -> Option<TokenId> {
        self.0.pin().get(digest).copied()
    }

    /// `true` if the digest was not indexed before.
    fn insert(&self, digest: Digest, id: TokenId) -> bool {
        self.0.pin().insert(digest, id).is_none()
    }

    fn remove(&self, digest: &Digest) -> bool {
        self.0.pin().remove(digest).is_some()
    }
}

#[cfg(loom)]
#[derive(Default)]
struct DigestIndex(std::sync::Mutex<std::collections::HashMap<Digest, TokenId>>);

#[cfg(loom)]
impl DigestIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Digest, TokenId>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, digest: &Digest) -> Option<TokenId> {
        self.lock().get(digest).copied()
    }

    fn insert(&self, digest: Digest, id: TokenId) -> bool {
        self.lock().insert(digest, id).is_none()
    }

    fn remove(&self, digest: &Digest) -> bool {
        self.lock().remove(digest).is_some()
    }
}

/// The id already in the map that an insert refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Duplicate(pub(crate) TokenId);

#[cfg(not(loom))]
use self::papaya_map::Entries;
#[cfg(not(loom))]
pub(crate) use self::papaya_map::Lent;

#[cfg(loom)]
use self::loom_map::Entries;
#[cfg(loom)]
pub(crate) use self::loom_map::Lent;

#[cfg(not(loom))]
mod papaya_map {
    use super::*;
    use papaya::{Guard, LocalGuard};

    type Hasher = foldhash::fast::RandomState;

    /// The concurrent map.
    pub(crate) struct Entries {
        inner: papaya::HashMap<TokenId, Box<Entry>, Hasher>,
    }

    /// An entry lent by the map: it stays allocated while this value lives, even if the
    /// token is removed meanwhile. Not `Send`: the protection belongs to this thread.
    pub(crate) struct Lent<'a> {
        /// A pointer, not a reference: a reference here would be live while `_guard`'s drop
        /// frees the entry (a reference held in a value being dropped still counts).
        entry: std::ptr::NonNull<Entry>,
        _guard: LocalGuard<'a>,
        _lent: std::marker::PhantomData<&'a Entry>,
    }

    impl Deref for Lent<'_> {
        type Target = Entry;

        #[inline]
        fn deref(&self) -> &Entry {
            // SAFETY: `entry` came from the map under `_guard`, which this value owns: the
            // entry stays allocated until `_guard` drops (see `Map::read`), and the reference
            // returned here cannot outlive `&self`, so not the guard either.
            unsafe { self.entry.as_ref() }
        }
    }

    impl Entries {
        pub(crate) fn with_capacity(capacity: usize) -> Entries {
            Entries {
                inner: papaya::HashMap::builder()
                    .capacity(capacity)
                    .hasher(Hasher::default())
                    .build(),
            }
        }

        /// The entry, lent: no lock, no clone, no write to memory other threads read.
        #[inline]
        ///
        /// Why `unsafe` (in `Lent::deref`): papaya ties a reference to the borrow of the
        /// guard it was read under, so a guard and the reference cannot be stored side by
        /// side without it. papaya frees a removed entry only once every guard that was
        /// active when it was removed has been dropped (seize's reclamation), so the entry
        /// stays valid while `guard` lives; `Lent` owns that guard and keeps a pointer, and
        /// moving a `LocalGuard` does not end its protection (it is a handle to this thread's
        /// reservation, and `!Send` keeps it on this thread). It pays for itself: lending
        /// instead of cloning an `Arc` keeps one hot token scaling across threads
        /// (docs/BENCHMARKS.md, "One hot token"). Miri: `scripts/miri.sh`.
        pub(crate) fn read(&self, id: &TokenId) -> Option<Lent<'_>> {
            let guard = self.inner.guard();
            let entry = std::ptr::NonNull::from(&**self.inner.get(id, &guard)?);
            Some(Lent {
                entry,
                _guard: guard,
                _lent: std::marker::PhantomData,
            })
        }

        /// Runs `f` on the entry, if there is one.
        pub(crate) fn with<R>(&self, id: &TokenId, f: impl FnOnce(&Entry) -> R) -> Option<R> {
            let guard = self.inner.guard();
            self.inner.get(id, &guard).map(|entry| f(entry))
        }

        pub(crate) fn contains(&self, id: &TokenId) -> bool {
            self.inner.contains_key(id, &self.inner.guard())
        }

        /// Adds a new entry, unless its id is present (`Err`).
        pub(crate) fn insert_new(&self, entry: Entry) -> Result<(), Duplicate> {
            let id = entry.id;
            let guard = self.inner.guard();
            match self.inner.try_insert(id, Box::new(entry), &guard) {
                Ok(_) => Ok(()),
                Err(_) => Err(Duplicate(id)),
            }
        }

        /// Removes the entry; it is freed once no reader holds it. `false` if there was none.
        pub(crate) fn remove(&self, id: &TokenId) -> bool {
            let guard = self.inner.guard();
            let removed = self.inner.remove(id, &guard).is_some();
            // Hand the retired entry to the collector now rather than when this thread's
            // batch fills, so memory comes back without waiting for more removals.
            guard.flush();
            removed
        }

        /// Calls `f` with every entry (in no particular order), all held under one guard:
        /// entries removed meanwhile stay valid until it returns.
        pub(crate) fn with_all<R>(&self, f: impl FnOnce(&[&Entry]) -> R) -> R {
            let guard = self.inner.guard();
            let all: Vec<&Entry> = self.inner.iter(&guard).map(|(_, e)| &**e).collect();
            f(&all)
        }

        pub(crate) fn len(&self) -> usize {
            self.inner.len()
        }

        /// Frees extras unlinked from one of this map's entries once every guard that was
        /// active meanwhile, so every reader that may borrow them, is gone.
        pub(crate) fn retire(&self, old: Unlinked) {
            let guard = self.inner.guard();
            // SAFETY: `old` came from `Entry::replace_extras` on an entry of this map, so no
            // new reader can load it, and it is retired once (`Unlinked` is consumed). The
            // readers that may hold it borrowed the entry under a guard of this map's
            // collector, which frees it only after all such guards are dropped.
            unsafe { guard.defer_retire(old.into_raw(), |ptr, _| Unlinked::free(ptr)) };
            // Into the collector now, not when this thread's batch fills (as `remove`).
            guard.flush();
        }
    }
}

#[cfg(loom)]
mod loom_map {
    use super::*;
    use crate::sync::{Arc, RwLock};

    pub(crate) struct Entries {
        inner: RwLock<Vec<Arc<Entry>>>,
        /// Extras unlinked from entries, which `Lent` clones may still borrow.
        retired: std::sync::Mutex<Vec<Unlinked>>,
    }

    /// A clone: the loom map cannot lend past its lock.
    pub(crate) struct Lent<'a> {
        entry: Arc<Entry>,
        _map: std::marker::PhantomData<&'a Entries>,
    }

    impl Deref for Lent<'_> {
        type Target = Entry;

        fn deref(&self) -> &Entry {
            &self.entry
        }
    }

    impl Entries {
        pub(crate) fn with_capacity(capacity: usize) -> Entries {
            Entries {
                inner: RwLock::new(Vec::with_capacity(capacity)),
                retired: std::sync::Mutex::default(),
            }
        }

        fn find(&self, id: &TokenId) -> Option<Arc<Entry>> {
            let entries = self.inner.read().unwrap_or_else(|e| e.into_inner());
            entries.iter().find(|e| e.id == *id).cloned()
        }

        pub(crate) fn read(&self, id: &TokenId) -> Option<Lent<'_>> {
            self.find(id).map(|entry| Lent {
                entry,
                _map: std::marker::PhantomData,
            })
        }

        pub(crate) fn with<R>(&self, id: &TokenId, f: impl FnOnce(&Entry) -> R) -> Option<R> {
            self.find(id).map(|entry| f(&entry))
        }

        pub(crate) fn contains(&self, id: &TokenId) -> bool {
            self.find(id).is_some()
        }

        pub(crate) fn insert_new(&self, entry: Entry) -> Result<(), Duplicate> {
            let mut all = self.inner.write().unwrap_or_else(|e| e.into_inner());
            if all.iter().any(|e| e.id == entry.id) {
                return Err(Duplicate(entry.id));
            }
            all.push(Arc::new(entry));
            Ok(())
        }

        pub(crate) fn remove(&self, id: &TokenId) -> bool {
            let mut all = self.inner.write().unwrap_or_else(|e| e.into_inner());
            let before = all.len();
            all.retain(|e| e.id != *id);
            all.len() != before
        }

        pub(crate) fn with_all<R>(&self, f: impl FnOnce(&[&Entry]) -> R) -> R {
            let all = self.inner.read().unwrap_or_else(|e| e.into_inner()).clone();
            let refs: Vec<&Entry> = all.iter().map(|e| &**e).collect();
            f(&refs)
        }

        pub(crate) fn len(&self) -> usize {
            self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
        }

        /// Keeps unlinked extras until the map drops: a loom model replaces a few at most.
        pub(crate) fn retire(&self, old: Unlinked) {
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(old);
        }
    }

    impl Drop for Entries {
        fn drop(&mut self) {
            for old in self
                .retired
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                // SAFETY: the map is being dropped: no entry of it is borrowed any more.
                unsafe { Unlinked::free(old.into_raw()) };
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::entry::pack_text;

    fn entry(id: TokenId) -> Entry {
        Entry::new(id, [1; 32], pack_text("lent", &["read"]), 0, None, None)
    }

    /// The first `unsafe`: a lent entry stays valid while held, though another
    /// thread removes it and the map reclaims what it can meanwhile. Run under Miri:
    /// `cargo +nightly miri test --lib map::tests` (scripts/miri.sh).
    #[test]
    fn a_lent_entry_outlives_its_removal_while_held() {
        let map = Map::with_capacity(0);
        let ids: Vec<TokenId> = (0..4u8)
            .map(|n| format!("0000000{n}").parse().unwrap())
            .collect();
        map.insert_new(ids.iter().map(|&id| entry(id))).unwrap();
        let lent = map.read(&ids[0]).unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for id in &ids {
                    assert!(map.remove(id));
                }
                // More retirements, so the collector has batches to reclaim.
                for n in 10..40u8 {
                    let id: TokenId = format!("000000{n}").parse().unwrap();
                    map.insert_new([entry(id)]).unwrap();
                    assert!(map.remove(&id));
                }
            });
        });
        assert!(map.read(&ids[0]).is_none());
        assert_eq!(lent.name(), "lent");
        assert!(lent.has_scope("read"));
        assert!(lent.digest_matches(&[1; 32]));
        drop(lent);
        assert_eq!(map.len(), 0);
    }

    /// The other `unsafe`: extras borrowed through a lent entry stay valid while it is held,
    /// though another thread replaces them, and are freed once it is dropped (the owner's
    /// count, which the first extras hold, comes back). Miri: `scripts/miri.sh`.
    #[test]
    fn borrowed_extras_outlive_their_replacement_while_the_entry_is_held() {
        use crate::extras::{pack_meta, Extras};
        let map = Map::with_capacity(0);
        let id: TokenId = "00000001".parse().unwrap();
        map.insert_new([entry(id)]).unwrap();
        let extras =
            |owner, plan: &str| Extras::new(owner, pack_meta(&[("plan", plan)]).unwrap(), false);
        let acme = map.owners.get_or_add("acme");
        map.set_extras(&id, extras(Some(acme.clone()), "first"));
        let held = std::sync::Arc::strong_count(&acme);
        let lent = map.read(&id).unwrap();
        let plan = lent.extras().unwrap().meta("plan").unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for n in 0..40 {
                    assert!(map.set_extras(&id, extras(None, &n.to_string())));
                }
            });
        });
        assert_eq!(plan, "first");
        assert_eq!(lent.extras().unwrap().meta("plan"), Some("39"));
        assert_eq!(
            std::sync::Arc::strong_count(&acme),
            held,
            "freed while borrowed"
        );
        drop(lent);
        let freed = (0..1000).any(|n| {
            map.set_extras(&id, extras(None, &n.to_string()));
            std::sync::Arc::strong_count(&acme) == held - 1
        });
        assert!(freed, "the replaced extras were never freed");
    }
}
