//! The one place the concurrency protocol gets its primitives from.
//!
//! Normally this re-exports `std` and `crossbeam-channel`; under `--cfg loom` it hands out
//! loom's atomics, `Arc`, `Mutex`, `RwLock`, threads and a small loom-built channel with the
//! same interface, so the model checker explores the production code itself (the pattern of
//! tokio's `src/loom`). Nothing outside this module may name `std::sync` for the protocol.

#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, MutexGuard, RwLock,
};

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, MutexGuard, RwLock,
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
/// `try_send`, `recv`, `try_recv` and `recv_timeout` (the persister's timer "tick"), plus
/// `try_send_or_wait` for the async calls: a `try_send` that, when the channel is full, has
/// the caller's waker woken once the receiver takes a message (`room.rs`).
pub(crate) mod channel {
    pub(crate) use crossbeam_channel::{RecvTimeoutError, TrySendError};

    #[cfg(not(loom))]
    pub(crate) use super::room::{bounded, Receiver, Sender};

    #[cfg(loom)]
    pub(crate) use self::model::{bounded, Receiver, Sender};

    /// A bounded MPSC channel made of loom primitives. loom has no time, so `recv_timeout`
    /// never times out: under loom the persister's timer only fires through explicit ticks.
    #[cfg(loom)]
    mod model {
        use super::{RecvTimeoutError, TrySendError};
        use crossbeam_channel::TryRecvError;
        use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
        use std::collections::VecDeque;
        use std::task::Waker;
        use std::time::Duration;

        struct State<T> {
            queue: VecDeque<T>,
            senders: usize,
            receiver_alive: bool,
            /// Async senders that found the queue full, woken when a message is taken.
            waiting: Vec<Waker>,
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
                    waiting: Vec::new(),
                }),
                changed: Condvar::new(),
                capacity: capacity.max(1),
            });
            (Sender(chan.clone()), Receiver(chan))
        }

        impl<T> Sender<T> {
            pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
                let mut state = self.0.state.lock().unwrap();
                self.try_push(&mut state, msg)
            }

            /// Like `try_send`; when the queue is full, `waker` is woken once a message is
            /// taken (registered under the same lock as the try, so no wake-up is lost).
            pub(crate) fn try_send_or_wait(
                &self,
                msg: T,
                waker: &Waker,
            ) -> Result<(), TrySendError<T>> {
                let mut state = self.0.state.lock().unwrap();
                let result = self.try_push(&mut state, msg);
                if matches!(result, Err(TrySendError::Full(_)))
                    && !state.waiting.iter().any(|w| w.will_wake(waker))
                {
                    state.waiting.push(waker.clone());
                }
                result
            }

            fn try_push(&self, state: &mut State<T>, msg: T) -> Result<(), TrySendError<T>> {
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
                        wake_waiting(state);
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
                        wake_waiting(state);
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
                wake_waiting(state);
            }
        }

        /// Wakes the async senders waiting for room, after letting go of the lock.
        fn wake_waiting<T>(mut state: MutexGuard<'_, State<T>>) {
            let waiting = std::mem::take(&mut state.waiting);
            drop(state);
            waiting.into_iter().for_each(Waker::wake);
        }
    }
}

/// A caller's one-shot reply from the persister (`sync/oneshot.rs`).
pub(crate) mod oneshot;
/// Room in the channel for async senders (`sync/room.rs`).
#[cfg(not(loom))]
mod room;

/// Deliberately planted bugs, so each loom model can show it would catch the mistake it
/// guards against (a model without teeth proves little). Exists only under `--cfg loom`:
/// normal builds contain neither the switch nor any twin. Each broken twin is its own
/// function in a `cfg(loom)` `twins` module beside the code it breaks (`entry.rs`,
/// `inbox.rs`, `store/handle.rs`, `persist/twins.rs`), which is the one place that asks
/// [`planted`](bug::planted) and chooses between the twin and the real step; no production
/// function asks.
///
/// The switch is a `std` thread-local of the test's OS thread: loom runs every modelled
/// thread on that OS thread, so one model sees it and tests running in parallel do not.
#[cfg(loom)]
pub mod bug {
    use std::cell::Cell;

    /// One planted bug; the twin function it selects says what it breaks.
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
        /// Requests (blocking and async) bypass the inbox's gate, so one can be queued
        /// behind `Shutdown`.
        UngatedRequests,
        /// A second `close` finds the persister already taken and reports success at once,
        /// before the first close's final snapshot is written.
        CloseWithoutWaiting,
        /// The persister answers a revoke or delete before it changes memory.
        ChangeAfterReply,
        /// After a compaction, each token's `last_used` as memory holds it then is taken as
        /// written, instead of the value the snapshot read.
        PersistedFromMemory,
        /// An async request that finds the channel full leaves no waker, so nothing wakes it.
        AsyncWithoutWaker,
        /// A thread gives its tally slot to another token without checking that the
        /// sweeper took the slot's counts.
        ClaimDirtySlot,
    }

    std::thread_local! {
        static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
    }

    /// Plants `bug` until the returned guard drops.
    pub fn plant(bug: Bug) -> Planted {
        PLANTED.with(|p| p.set(Some(bug)));
        Planted(())
    }

    /// Whether `bug` is planted (asked only by the `twins` modules' choosers).
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
