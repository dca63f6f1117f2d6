//! The persister's inbox: the messages it takes, the bounded channel they travel on, and
//! the gate that keeps a request from being queued where no one would answer it.

use std::fmt;
use std::sync::TryLockError;
use std::task::{Poll, Waker};

use crate::entry::Entry;
use crate::error::Error;
use crate::rate_limit::RateLimit;
use crate::sync::channel::{self, Receiver, Sender, TrySendError};
use crate::sync::oneshot;
use crate::sync::{thread, Arc, AtomicBool, Ordering, RwLock};
use crate::token::TokenId;

/// A caller's reply: `Ok(n)` with how many tokens the change touched. Sent once, by the
/// persister; dropped unsent only if the persister died.
pub(crate) type Reply = oneshot::Sender<Result<usize, Error>>;
/// Where the caller hears its [`Reply`]: `recv` blocks, `.await` does not.
pub(crate) type Answer = oneshot::Receiver<Result<usize, Error>>;

/// A reply and where it is heard.
pub(crate) fn reply() -> (Reply, Answer) {
    oneshot::channel()
}

/// What the persister receives.
pub(crate) enum Message {
    /// A validation made this token dirty.
    Dirty(TokenId),
    /// Make these new tokens durable together (all or none), add them to the map, reply.
    Issue(Vec<Entry>, Reply),
    /// Revoke this token durably, then reply.
    Revoke(TokenId, Reply),
    /// Set or remove this token's rate limit durably, then reply.
    SetRateLimit(TokenId, Option<RateLimit>, Reply),
    /// Delete this token durably, then reply.
    Delete(TokenId, Reply),
    /// Revoke every token of this owner durably, then reply with how many.
    RevokeOwner(String, Reply),
    /// Delete every token of this owner durably, then reply with how many.
    DeleteOwner(String, Reply),
    /// Set or remove this owner's shared rate limit durably, then reply.
    SetOwnerRateLimit(String, Option<RateLimit>, Reply),
    /// Replace this token's metadata (packed, checked) durably, then reply.
    SetMeta(TokenId, Box<str>, Reply),
    /// Set (a new meter, checked) or remove this token's credits durably, then reply.
    SetCredits(TokenId, Option<Box<crate::credits::Meter>>, Reply),
    /// Delete every token revoked or expired at or before this time (Unix ms) durably, then
    /// reply with how many.
    Purge(u64, Reply),
    /// Issue `new` and make `old` expire by `until` (Unix ms), in one write, then reply.
    Rotate {
        old: TokenId,
        until: u64,
        new: Box<Entry>,
        reply: Reply,
    },
    /// Reply once everything observed before the call is on disk.
    Flush(Reply),
    /// PostgreSQL stores: the rows other replicas (and this one) committed since the last
    /// catch-up, as changes to apply to memory.
    #[cfg(all(feature = "postgres", not(loom)))]
    Remote(crate::change::Read),
    /// The clock jumped: re-check the deadline, then acknowledge.
    Tick(Sender<()>),
    /// Write what is pending, reply, and stop.
    Shutdown(Reply),
}

/// The persister's inbox: its channel, and a gate that shuts for good at shutdown or when
/// the persister dies.
///
/// Requests (`issue`, `revoke`, `flush`, ticks) are queued under the gate's read lock, and
/// `Shutdown` only after the gate is shut under its write lock, so no request is ever queued
/// behind `Shutdown`. One that were would never be answered: the persister stops after the
/// batch holding `Shutdown`, and a crossbeam array channel keeps queued messages (with their
/// reply senders) until every sender is gone, so its caller would wait forever. loom's
/// `close_racing_validation_and_issue_loses_no_acknowledged_change` checks this.
///
/// The async calls hold the read lock only for a `try_send`. When the channel is full they
/// wait, holding nothing, for the persister to take a message, and then pass the gate again
/// (`an_async_revoke_racing_close_is_answered_or_refused` checks them).
pub(crate) struct Inbox {
    tx: Sender<Message>,
    gate: RwLock<Gate>,
    /// Whether the gate is `Open`, readable without its lock: the clock thread asks, and it
    /// must never wait behind a `shut` that waits for a full channel.
    open: AtomicBool,
}

/// Whether the inbox takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// The store is closing or closed.
    Shut,
    /// The persister thread panicked.
    Dead,
}

impl Gate {
    /// Whether a request may pass, and if not, why.
    fn admits(self) -> Result<(), Refused> {
        match self {
            Gate::Open => Ok(()),
            Gate::Shut => Err(Refused::Closed),
            Gate::Dead => Err(Refused::Dead),
        }
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The store was closed.
    Closed,
    /// The persister thread died.
    Dead,
}

impl Inbox {
    pub(crate) fn new(tx: Sender<Message>) -> Inbox {
        Inbox {
            tx,
            gate: RwLock::new(Gate::Open),
            open: AtomicBool::new(true),
        }
    }

    /// Queues a request for the persister, unless the store is closing or its persister died.
    /// (Under loom, `twins::request` chooses between this and its broken twin.)
    #[cfg(not(loom))]
    pub(crate) fn request(&self, message: Message) -> Result<(), Refused> {
        self.request_through_gate(message)
    }

    /// See [`request`](Self::request).
    fn request_through_gate(&self, message: Message) -> Result<(), Refused> {
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        gate.admits()?;
        self.tx.send(message).map_err(|_| Refused::Dead)
    }

    /// Like [`request`](Self::request), never blocking: `Pending` while the channel is full,
    /// with the message kept in `message` and `waker` woken once the persister takes a
    /// message (then poll again). The message leaves `message` when it is queued or refused.
    /// (Under loom, `twins::poll_request` chooses between this and its broken twin.)
    #[cfg(not(loom))]
    pub(crate) fn poll_request(
        &self,
        message: &mut Option<Message>,
        waker: &Waker,
    ) -> Poll<Result<(), Refused>> {
        self.poll_request_through_gate(message, waker)
    }

    /// See [`poll_request`](Self::poll_request).
    fn poll_request_through_gate(
        &self,
        message: &mut Option<Message>,
        waker: &Waker,
    ) -> Poll<Result<(), Refused>> {
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.poll_send(gate.admits(), message, waker)
    }

    /// If the gate `admitted` it (the caller holds the gate's lock), queues what `message`
    /// holds if there is room now, and otherwise keeps it there and has `waker` woken once
    /// the persister takes a message.
    fn poll_send(
        &self,
        admitted: Result<(), Refused>,
        message: &mut Option<Message>,
        waker: &Waker,
    ) -> Poll<Result<(), Refused>> {
        let Some(next) = message.take() else {
            return Poll::Ready(Ok(()));
        };
        if let Err(refused) = admitted {
            return Poll::Ready(Err(refused));
        }
        match self.try_send_or_wait(next, waker) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(TrySendError::Full(next)) => {
                *message = Some(next);
                Poll::Pending
            }
            Err(TrySendError::Disconnected(_)) => Poll::Ready(Err(Refused::Dead)),
        }
    }

    /// Sends `message` if there is room, or leaves `waker` to be woken once there may be.
    /// (Under loom, `twins::try_send_or_wait` chooses between this and its broken twin.)
    #[cfg(not(loom))]
    fn try_send_or_wait(
        &self,
        message: Message,
        waker: &Waker,
    ) -> Result<(), TrySendError<Message>> {
        self.tx.try_send_or_wait(message, waker)
    }

    /// Whether the store still takes requests (it is neither closed nor dead). Never
    /// blocks.
    pub(crate) fn is_open(&self) -> bool {
        // Relaxed: a hint for the clock thread, which asks again later.
        self.open.load(Ordering::Relaxed)
    }

    /// Queues a dirty id without blocking. No gate: it carries no reply to lose.
    #[inline]
    pub(crate) fn try_send(&self, message: Message) -> Result<(), TrySendError<Message>> {
        self.tx.try_send(message)
    }

    /// Shuts the gate, then queues `shutdown` behind every request already queued.
    /// `Err` if the persister is already gone (it died).
    pub(crate) fn shut(&self, shutdown: Message) -> Result<(), Refused> {
        let mut gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.shut_gate(&mut gate)?;
        self.tx.send(shutdown).map_err(|_| Refused::Dead)
    }

    /// Like [`shut`](Self::shut), never blocking. `shutdown` stays in its slot while the
    /// channel is full (as in [`poll_request`](Self::poll_request)). While a request holds the
    /// gate's read lock (for a `try_send`, or a blocking caller's `send` into a full channel,
    /// which ends as soon as the persister takes a message), this wakes `waker` at once and
    /// returns `Pending`: the caller's executor polls again after its other tasks.
    ///
    /// Once the gate is shut no request passes it, so every request that did is queued
    /// ahead of `shutdown` however long `shutdown` waits for room.
    pub(crate) fn poll_shut(
        &self,
        shutdown: &mut Option<Message>,
        waker: &Waker,
    ) -> Poll<Result<(), Refused>> {
        let mut gate = match self.gate.try_write() {
            Ok(gate) => gate,
            Err(TryLockError::Poisoned(gate)) => gate.into_inner(),
            Err(TryLockError::WouldBlock) => {
                waker.wake_by_ref();
                return Poll::Pending;
            }
        };
        let shut = self.shut_gate(&mut gate);
        self.poll_send(shut, shutdown, waker)
    }

    /// Shuts the gate (under its write lock), unless the persister died.
    fn shut_gate(&self, gate: &mut Gate) -> Result<(), Refused> {
        if *gate == Gate::Dead {
            return Err(Refused::Dead);
        }
        *gate = Gate::Shut;
        self.open.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Called by a persister that panicked, before it lets go of `rx`: shuts the gate for
    /// good and drops every queued message, so each waiting caller's reply channel closes
    /// and it returns an error instead of waiting forever.
    ///
    /// A request may be blocked in `send` on a full channel while it holds the gate's read
    /// lock, so this drains before each try for the write lock: the drain makes room, the
    /// sender finishes and lets go.
    pub(crate) fn die(&self, rx: &Receiver<Message>) {
        loop {
            while rx.try_recv().is_ok() {}
            if let Ok(mut gate) = self.gate.try_write() {
                *gate = Gate::Dead;
                self.open.store(false, Ordering::Relaxed);
                break;
            }
            thread::yield_now();
        }
        while rx.try_recv().is_ok() {}
    }
}

/// A handle that wakes a store's persister after its clock jumps; see
/// [`Clock::attach`](crate::Clock::attach).
pub struct Timer {
    inbox: Arc<Inbox>,
}

impl Timer {
    pub(crate) fn new(inbox: Arc<Inbox>) -> Timer {
        Timer { inbox }
    }

    /// Makes the persister re-check its deadline (writing a due snapshot) and waits until it
    /// has. Returns `false` once the store is closed: the timer can then be dropped.
    pub fn fire(&self) -> bool {
        let (tx, rx) = channel::bounded(1);
        self.inbox.request(Message::Tick(tx)).is_ok() && rx.recv().is_ok()
    }

    /// Whether the store is still open (`false` once it is closed or its persister died).
    pub fn is_open(&self) -> bool {
        self.inbox.is_open()
    }
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Timer")
    }
}

/// Model checks only: the inbox's broken twins, each its own function, and the one place
/// that chooses between them and the real calls.
#[cfg(loom)]
mod twins {
    use std::task::{Poll, Waker};

    use super::{Inbox, Message, Refused};
    use crate::sync::bug::{planted, Bug};
    use crate::sync::channel::TrySendError;

    impl Inbox {
        /// `request`: the real one, or its twin if `UngatedRequests` is planted.
        pub(crate) fn request(&self, message: Message) -> Result<(), Refused> {
            if planted(Bug::UngatedRequests) {
                self.request_ungated(message)
            } else {
                self.request_through_gate(message)
            }
        }

        /// `poll_request`: the real one, or its twin if `UngatedRequests` is planted.
        pub(crate) fn poll_request(
            &self,
            message: &mut Option<Message>,
            waker: &Waker,
        ) -> Poll<Result<(), Refused>> {
            if planted(Bug::UngatedRequests) {
                self.poll_request_ungated(message, waker)
            } else {
                self.poll_request_through_gate(message, waker)
            }
        }

        /// `try_send_or_wait`: the real one, or its twin if `AsyncWithoutWaker` is planted.
        pub(super) fn try_send_or_wait(
            &self,
            message: Message,
            waker: &Waker,
        ) -> Result<(), TrySendError<Message>> {
            if planted(Bug::AsyncWithoutWaker) {
                self.tx.try_send(message)
            } else {
                self.tx.try_send_or_wait(message, waker)
            }
        }

        /// Broken twin of `request`: a request that bypasses the gate can be stranded.
        fn request_ungated(&self, message: Message) -> Result<(), Refused> {
            self.tx.send(message).map_err(|_| Refused::Closed)
        }

        /// Broken twin of `poll_request`: a request that bypasses the gate can be stranded.
        fn poll_request_ungated(
            &self,
            message: &mut Option<Message>,
            waker: &Waker,
        ) -> Poll<Result<(), Refused>> {
            let sent = self.poll_send(Ok(()), message, waker);
            sent.map_err(|_| Refused::Closed) // as the blocking twin says
        }
    }
}
