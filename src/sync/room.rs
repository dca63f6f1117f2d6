//! Room in the persister's channel: crossbeam's bounded channel, plus the wakers of async
//! callers that found it full, woken as soon as the persister takes a message.
//!
//! A blocking caller waits for room inside crossbeam's `send`; an async one must not park its
//! executor's thread, so it registers its waker and returns `Pending` instead
//! ([`Sender::try_send_or_wait`]). The normal build only: the loom build's channel model
//! (`sync::channel`) keeps its waiters under its own lock.

use std::task::Waker;
use std::time::Duration;

use crossbeam_channel::{RecvError, RecvTimeoutError, SendError, TryRecvError, TrySendError};

use super::{fence, Arc, AtomicBool, Mutex, Ordering};

/// A bounded channel of `capacity` messages whose receiver wakes senders waiting for room.
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let room = Arc::new(Room::default());
    (
        Sender {
            tx,
            room: room.clone(),
        },
        Receiver { rx, room },
    )
}

/// The sending side: crossbeam's, plus [`try_send_or_wait`](Self::try_send_or_wait).
pub(crate) struct Sender<T> {
    tx: crossbeam_channel::Sender<T>,
    room: Arc<Room>,
}

/// The receiving side: crossbeam's; every message taken wakes the senders waiting for room.
pub(crate) struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    room: Arc<Room>,
}

/// The wakers of the senders that found the channel full.
#[derive(Default)]
struct Room {
    /// Whether `wakers` may hold a waker, so the receiver skips the lock when none does.
    waiting: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl<T> Sender<T> {
    /// Sends, waiting while the channel is full.
    pub(crate) fn send(&self, msg: T) -> Result<(), SendError<T>> {
        self.tx.send(msg)
    }

    /// Sends if there is room now, never waiting.
    #[inline]
    pub(crate) fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(msg)
    }

    /// Like [`try_send`](Self::try_send); when the channel is full, `waker` is woken once
    /// the receiver has taken a message (then try again).
    pub(crate) fn try_send_or_wait(&self, msg: T, waker: &Waker) -> Result<(), TrySendError<T>> {
        match self.tx.try_send(msg) {
            Err(TrySendError::Full(msg)) => {
                self.room.wait(waker);
                // Again, after registering: a message taken before the receiver could see the
                // registration made room this try sees (the fences in `wait` and `made`).
                self.tx.try_send(msg)
            }
            sent => sent,
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            room: self.room.clone(),
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for a message.
    pub(crate) fn recv(&self) -> Result<T, RecvError> {
        self.room.after(self.rx.recv())
    }

    /// Takes a message if one is waiting.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        self.room.after(self.rx.try_recv())
    }

    /// Waits for a message at most `timeout`.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.room.after(self.rx.recv_timeout(timeout))
    }
}

impl<T> Drop for Receiver<T> {
    /// A waiting sender's next try finds the channel disconnected.
    fn drop(&mut self) {
        self.room.made();
    }
}

impl Room {
    /// A sender found the channel full: `waker` is woken by the next [`made`](Self::made).
    /// The sender must try once more afterwards.
    fn wait(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        // Relaxed: published by the fence below (and the lock, for `made`'s take).
        self.waiting.store(true, Ordering::Relaxed);
        drop(wakers);
        // SeqCst: pairs with the fence in `made`. Either `made` sees `waiting`, or this
        // sender's next try sees the room that `made`'s message left.
        fence(Ordering::SeqCst);
    }

    /// What a receive returned; a message taken wakes the waiting senders.
    #[inline]
    fn after<T, E>(&self, received: Result<T, E>) -> Result<T, E> {
        if received.is_ok() {
            self.made();
        }
        received
    }

    /// Wakes every waiting sender (there may be room now).
    fn made(&self) {
        // SeqCst: pairs with the fence in `wait` (see there).
        fence(Ordering::SeqCst);
        // Relaxed: ordered by the fences; a stale `true` only costs a lock.
        if !self.waiting.load(Ordering::Relaxed) {
            return;
        }
        let wakers = {
            let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            // Relaxed: under the lock, as every registration's `true` is.
            self.waiting.store(false, Ordering::Relaxed);
            std::mem::take(&mut *wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}
