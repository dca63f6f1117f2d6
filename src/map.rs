//! The token map: id to entry, the one structure that holds the tokens.
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

use crate::entry::Entry;
use crate::token::TokenId;

/// The id already in the map that an insert refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Duplicate(pub(crate) TokenId);

#[cfg(not(loom))]
pub(crate) use self::papaya_map::{Lent, Map};

#[cfg(loom)]
pub(crate) use self::loom_map::{Lent, Map};

#[cfg(not(loom))]
mod papaya_map {
    use super::*;
    use papaya::{Guard, LocalGuard};

    type Hasher = foldhash::fast::RandomState;

    /// The concurrent map.
    pub(crate) struct Map {
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

    impl Map {
        pub(crate) fn with_capacity(capacity: usize) -> Map {
            Map {
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

        /// Adds new entries. Stops at the first id already present (`Err`); the entries
        /// before it stay added.
        pub(crate) fn insert_new(
            &self,
            entries: impl IntoIterator<Item = Entry>,
        ) -> Result<(), Duplicate> {
            let guard = self.inner.guard();
            for entry in entries {
                let id = entry.id;
                if self.inner.try_insert(id, Box::new(entry), &guard).is_err() {
                    return Err(Duplicate(id));
                }
            }
            Ok(())
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
    }
}

#[cfg(loom)]
mod loom_map {
    use super::*;
    use crate::sync::{Arc, RwLock};

    pub(crate) struct Map {
        inner: RwLock<Vec<Arc<Entry>>>,
    }

    /// A clone: the loom map cannot lend past its lock.
    pub(crate) struct Lent<'a> {
        entry: Arc<Entry>,
        _map: std::marker::PhantomData<&'a Map>,
    }

    impl Deref for Lent<'_> {
        type Target = Entry;

        fn deref(&self) -> &Entry {
            &self.entry
        }
    }

    impl Map {
        pub(crate) fn with_capacity(capacity: usize) -> Map {
            Map {
                inner: RwLock::new(Vec::with_capacity(capacity)),
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

        pub(crate) fn insert_new(
            &self,
            entries: impl IntoIterator<Item = Entry>,
        ) -> Result<(), Duplicate> {
            let mut all = self.inner.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                if all.iter().any(|e| e.id == entry.id) {
                    return Err(Duplicate(entry.id));
                }
                all.push(Arc::new(entry));
            }
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
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::entry::pack_text;

    fn entry(id: TokenId) -> Entry {
        Entry::new(id, [1; 32], pack_text("lent", &["read"]), 0, None, None)
    }

    /// The one `unsafe` in the crate: a lent entry stays valid while held, though another
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
}
