//! The one place the concurrency protocol gets its primitives from.
//!
//! Normally this re-exports `std` and `crossbeam-channel`; under `--cfg loom` it hands out
//! loom's atomics, `Arc`, `Mutex`, `RwLock`, threads and a small loom-built channel with the
//! same interface, so the model checker explores the production code itself (the pattern of
//! tokio's `src/loom`). Nothing outside this module may name `std::sync` for the protocol.

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, RwLock,
};

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, RwLock,
};

/// Thread spawning for the persister.
pub(crate) mod thread {
    #[cfg(loom)]
    pub(crate) use loom::thread::{yield_now, Builder, JoinHandle};
    #[cfg(not(loom))]
    pub(crate) use std::thread::{yield_now, Builder, JoinHandle};
}

/// The channel between the store's callers and its persister.
///
/// The interface is the part of crossbeam-channel the protocol uses: `bounded`, `send`,
/// `try_send`, `recv`, `try_recv` and `recv_timeout` (the persister's timer "tick").
pub(crate) mod channel {
    pub(crate) use crossbeam_channel::{RecvTimeoutError, TrySendError};

    #[cfg(not(loom))]
    pub(crate) use crossbeam_channel::{bounded, Receiver, Sender};

    #[cfg(loom)]
    pub(crate) use self::model::{bounded, Receiver, Sender};

    /// A bounded MPSC channel made of loom primitives. loom has no time, so `recv_timeout`
    /// never times out: under loom the persister's timer only fires through explicit ticks.
    #[cfg(loom)]
    mod model {
        use super::{RecvTimeoutError, TrySendError};
        use crossbeam_channel::TryRecvError;
        use loom::sync::{Arc, Condvar, Mutex};
        use std::collections::VecDeque;
        use std::time::Duration;

        struct State<T> {
            queue: VecDeque<T>,
            senders: usize,
            receiver_alive: bool,
        }

        struct Chan<T> {
            state: Mutex<State<T>>,
            changed: Condvar,
            capacity: usize,
        }

        pub(crate) struct Sender<T>(Arc<Chan<T>>);
        pub(crate) struct Receiver<T>(Arc<Chan<T>>);

        /// The error of a send to a channel whose receiver is gone (as crossbeam's).
        #[derive(Debug)]
        pub(crate) struct SendError<T>(#[allow(dead_code)] pub T);

        pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
            let chan = Arc::new(Chan {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    senders: 1,
                    receiver_alive: true,
                }),
                changed: Condvar::new(),
                capacity: capacity.max(1),
            });
            (Sender(chan.clone()), Receiver(chan))
        }

        impl<T> Sender<T> {
            pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
                let mut state = self.0.state.lock().unwrap();
                if !state.receiver_alive {
                    return Err(TrySendError::Disconnected(msg));
                }
                if state.queue.len() >= self.0.capacity {
                    return Err(TrySendError::Full(msg));
                }
                state.queue.push_back(msg);
                self.0.changed.notify_all();
                Ok(())
            }

            pub(crate) fn send(&self, msg: T) -> Result<(), SendError<T>> {
                let mut state = self.0.state.lock().unwrap();
                loop {
                    if !state.receiver_alive {
                        return Err(SendError(msg));
                    }
                    if state.queue.len() < self.0.capacity {
                        state.queue.push_back(msg);
                        self.0.changed.notify_all();
                        return Ok(());
                    }
                    state = self.0.changed.wait(state).unwrap();
                }
            }
        }

        impl<T> Clone for Sender<T> {
            fn clone(&self) -> Self {
                self.0.state.lock().unwrap().senders += 1;
                Sender(self.0.clone())
            }
        }

        impl<T> Drop for Sender<T> {
            fn drop(&mut self) {
                self.0.state.lock().unwrap().senders -= 1;
                self.0.changed.notify_all();
            }
        }

        impl<T> Receiver<T> {
            pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
                let mut state = self.0.state.lock().unwrap();
                match state.queue.pop_front() {
                    Some(msg) => {
                        self.0.changed.notify_all();
                        Ok(msg)
                    }
                    None if state.senders == 0 => Err(TryRecvError::Disconnected),
                    None => Err(TryRecvError::Empty),
                }
            }

            pub(crate) fn recv_timeout(&self, _ignored: Duration) -> Result<T, RecvTimeoutError> {
                let mut state = self.0.state.lock().unwrap();
                loop {
                    if let Some(msg) = state.queue.pop_front() {
                        self.0.changed.notify_all();
                        return Ok(msg);
                    }
                    if state.senders == 0 {
                        return Err(RecvTimeoutError::Disconnected);
                    }
                    state = self.0.changed.wait(state).unwrap();
                }
            }

            pub(crate) fn recv(&self) -> Result<T, RecvTimeoutError> {
                self.recv_timeout(Duration::MAX)
            }
        }

        impl<T> Drop for Receiver<T> {
            // Like crossbeam's bounded (array) flavor, dropping the receiver disconnects but
            // keeps queued messages until the last sender is gone too.
            fn drop(&mut self) {
                let mut state = self.0.state.lock().unwrap();
                state.receiver_alive = false;
                self.0.changed.notify_all();
            }
        }
    }
}

/// The map from token id to entry.
///
/// Normally a `DashMap` is the map of record (`get`, `contains`, `values`, `len`), and
/// `read`, the hot path, goes through a read index instead: an `arc-swap`ed `HashMap` from id
/// to a slot in an append-only `boxcar::Vec`. A read there takes no lock, writes no shared
/// memory and lends the value instead of cloning it, so one token read from many threads at
/// once scales (a DashMap read writes the shard's lock word, and an `Arc` clone its count;
/// see "One hot token" in docs/BENCHMARKS.md). Values are never removed,
/// so a lent value lives as long as the map. Each insert republishes the index (O(n)), like
/// the full snapshot every insert is part of.
///
/// Under loom it is a loom `RwLock` around a `Vec` in insertion order (DashMap's own locks
/// are invisible to the model checker, and a `HashMap`'s random iteration order would make
/// runs non-deterministic, which loom's replay cannot handle; models hold two or three
/// tokens, so a scan is cheap), and `read` hands out clones.
pub(crate) mod map {
    use std::ops::Deref;

    use crate::token::TokenId;

    /// A value read from the map: lent by it, or owned (a clone).
    pub(crate) enum Held<'a, V> {
        /// Borrowed from the map (never under loom, whose map cannot lend past its lock).
        #[cfg_attr(loom, allow(dead_code))]
        Lent(&'a V),
        Owned(V),
    }

    impl<V: Clone> Held<'_, V> {
        /// The value itself, cloned if it was lent.
        pub(crate) fn into_owned(self) -> V {
            match self {
                Held::Lent(value) => value.clone(),
                Held::Owned(value) => value,
            }
        }
    }

    impl<V: Clone> Clone for Held<'_, V> {
        fn clone(&self) -> Self {
            match self {
                Held::Lent(value) => Held::Lent(value),
                Held::Owned(value) => Held::Owned(value.clone()),
            }
        }
    }

    impl<V> Deref for Held<'_, V> {
        type Target = V;

        #[inline]
        fn deref(&self) -> &V {
            match self {
                Held::Lent(value) => value,
                Held::Owned(value) => value,
            }
        }
    }

    /// The id already in the map that an insert refused.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Duplicate(pub(crate) TokenId);

    /// The concurrent map; `get` and `values` hand out clones and never a guard, so no
    /// caller can hold a shard lock while the same shard is written (a DashMap deadlock).
    pub(crate) struct Map<V> {
        #[cfg(not(loom))]
        records: dashmap::DashMap<TokenId, V>,
        /// Every value ever inserted, at an address that never changes.
        #[cfg(not(loom))]
        slots: boxcar::Vec<V>,
        /// Id to slot in `slots`, replaced whole by each insert.
        #[cfg(not(loom))]
        index: arc_swap::ArcSwap<std::collections::HashMap<TokenId, usize>>,
        /// Serializes inserts: each copies the index, extends it and publishes the copy.
        #[cfg(not(loom))]
        writer: std::sync::Mutex<()>,
        #[cfg(loom)]
        inner: loom::sync::RwLock<Vec<(TokenId, V)>>,
    }

    #[cfg(not(loom))]
    impl<V: Clone> Map<V> {
        pub(crate) fn with_capacity(capacity: usize) -> Self {
            Map {
                records: dashmap::DashMap::with_capacity(capacity),
                slots: boxcar::Vec::with_capacity(capacity),
                index: arc_swap::ArcSwap::from_pointee(std::collections::HashMap::new()),
                writer: std::sync::Mutex::new(()),
            }
        }

        /// The value, lent: no lock, no clone, no write to memory other threads read.
        #[inline]
        pub(crate) fn read(&self, id: &TokenId) -> Option<Held<'_, V>> {
            // The guard protects only the index; the slot number outlives it, and the slot
            // is valid for as long as `self` (values are never removed).
            let slot = *self.index.load().get(id)?;
            self.slots.get(slot).map(Held::Lent)
        }

        /// A clone of the value; the shard's read lock is released before this returns.
        pub(crate) fn get(&self, id: &TokenId) -> Option<V> {
            self.records.get(id).map(|r| r.value().clone())
        }

        pub(crate) fn contains(&self, id: &TokenId) -> bool {
            self.records.contains_key(id)
        }

        /// Adds new values, then publishes them to `read` all at once. Stops at the first id
        /// already present (`Err`); the values before it stay added.
        pub(crate) fn insert_new(
            &self,
            values: impl IntoIterator<Item = (TokenId, V)>,
        ) -> Result<(), Duplicate> {
            let _writer = self
                .writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let values = values.into_iter();
            let mut index = std::collections::HashMap::clone(&self.index.load());
            index.reserve(values.size_hint().0);
            let mut result = Ok(());
            for (id, value) in values {
                if index.contains_key(&id) {
                    result = Err(Duplicate(id));
                    break;
                }
                index.insert(id, self.slots.push(value.clone()));
                self.records.insert(id, value);
            }
            self.index.store(std::sync::Arc::new(index));
            result
        }

        /// Clones of every value (each shard is read-locked only while it is copied).
        pub(crate) fn values(&self) -> Vec<V> {
            self.records.iter().map(|r| r.value().clone()).collect()
        }

        pub(crate) fn len(&self) -> usize {
            self.records.len()
        }
    }

    #[cfg(loom)]
    impl<V: Clone> Map<V> {
        pub(crate) fn with_capacity(capacity: usize) -> Self {
            Map {
                inner: loom::sync::RwLock::new(Vec::with_capacity(capacity)),
            }
        }

        /// A clone: the loom map cannot lend past its lock.
        pub(crate) fn read(&self, id: &TokenId) -> Option<Held<'_, V>> {
            self.get(id).map(Held::Owned)
        }

        pub(crate) fn get(&self, id: &TokenId) -> Option<V> {
            let entries = self.inner.read().unwrap();
            entries
                .iter()
                .find(|(k, _)| k == id)
                .map(|(_, v)| v.clone())
        }

        pub(crate) fn contains(&self, id: &TokenId) -> bool {
            self.inner.read().unwrap().iter().any(|(k, _)| k == id)
        }

        pub(crate) fn insert_new(
            &self,
            values: impl IntoIterator<Item = (TokenId, V)>,
        ) -> Result<(), Duplicate> {
            let mut entries = self.inner.write().unwrap();
            for (id, value) in values {
                if entries.iter().any(|(k, _)| *k == id) {
                    return Err(Duplicate(id));
                }
                entries.push((id, value));
            }
            Ok(())
        }

        pub(crate) fn values(&self) -> Vec<V> {
            self.inner
                .read()
                .unwrap()
                .iter()
                .map(|(_, v)| v.clone())
                .collect()
        }

        pub(crate) fn len(&self) -> usize {
            self.inner.read().unwrap().len()
        }
    }
}

/// Deliberately planted bugs, so each loom model can show it would catch the mistake it
/// guards against (a model without teeth proves little). Exists only under `--cfg loom`:
/// normal builds contain neither the switch nor any of the `planted(..)` branches.
///
/// The switch is a `std` thread-local of the test's OS thread: loom runs every modelled
/// thread on that OS thread, so one model sees it and tests running in parallel do not.
#[cfg(loom)]
pub mod bug {
    use std::cell::Cell;

    /// One planted bug; the comment at each `planted(..)` site says what it breaks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum Bug {
        /// `take_for_snapshot` reads `last_used` *before* clearing `dirty` (lost update).
        ReadBeforeClear,
        /// `touch` tests `dirty` with a load and sets it with a store (check-then-act), so
        /// two validations can both see it clean and both send.
        CheckThenSetDirty,
        /// `flush` writes only if a `Dirty` message arrived, trusting messages over the scan.
        FlushTrustsMessages,
        /// The persister answers `issue`/`revoke`/`flush` before the snapshot is written.
        AckBeforeWrite,
        /// On shutdown the persister answers and exits without writing what is pending.
        ShutdownSkipsWrite,
        /// The persister ignores the `overflow` flag set when a full channel refused an id.
        IgnoreOverflow,
        /// Requests bypass the inbox's gate, so one can be queued behind `Shutdown`.
        UngatedRequests,
        /// A second `close` finds the persister already taken and reports success at once,
        /// before the first close's final snapshot is written.
        CloseWithoutWaiting,
    }

    std::thread_local! {
        static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
    }

    /// Plants `bug` until the returned guard drops.
    pub fn plant(bug: Bug) -> Planted {
        PLANTED.with(|p| p.set(Some(bug)));
        Planted(())
    }

    /// Whether `bug` is planted (the production code asks this at each bug site).
    pub(crate) fn planted(bug: Bug) -> bool {
        PLANTED.with(|p| p.get() == Some(bug))
    }

    /// Removes the planted bug when dropped.
    #[derive(Debug)]
    pub struct Planted(());

    impl Drop for Planted {
        fn drop(&mut self) {
            PLANTED.with(|p| p.set(None));
        }
    }
}
