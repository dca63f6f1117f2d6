//! The persister's inbox: the messages it takes, the bounded channel they travel on, and
//! the gate that keeps a request from being queued where no one would answer it.

use std::fmt;

use crate::entry::Entry;
use crate::error::Error;
use crate::rate_limit::RateLimit;
use crate::sync::channel::{self, Receiver, Sender, TrySendError};
use crate::sync::{thread, Arc, AtomicBool, Ordering, RwLock};
use crate::token::TokenId;

/// A caller's reply channel: `Ok(n)` with how many tokens the change touched.
pub(crate) type Reply = Sender<Result<usize, Error>>;

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
    pub(crate) fn request(&self, message: Message) -> Result<(), Refused> {
        // Planted bug (loom twin only): a request that bypasses the gate can be stranded.
        #[cfg(loom)]
        if crate::sync::bug::planted(crate::sync::bug::Bug::UngatedRequests) {
            return self.tx.send(message).map_err(|_| Refused::Closed);
        }
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        match *gate {
            Gate::Open => self.tx.send(message).map_err(|_| Refused::Dead),
            Gate::Shut => Err(Refused::Closed),
            Gate::Dead => Err(Refused::Dead),
        }
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
        if *gate == Gate::Dead {
            return Err(Refused::Dead);
        }
        *gate = Gate::Shut;
        self.open.store(false, Ordering::Relaxed);
        self.tx.send(shutdown).map_err(|_| Refused::Dead)
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
