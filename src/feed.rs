//! The change feed: [`TokenStore::subscribe`](crate::TokenStore::subscribe) hands out a [`Changes`] receiver, and the
//! persister publishes every change to it once the change is durable.
//!
//! Each subscriber has its own bounded queue (a crossbeam array channel). The persister
//! only ever `try_send`s into it, so a subscriber that reads slowly, or never, cannot slow
//! or block a write: when its queue is full the persister counts the events it could not
//! queue, and queues [`Feed::Missed`] with that count, in the place where they were lost,
//! as soon as there is room again (before any later event; at the latest at the
//! persister's next batch or timed wake-up). A count still owed when the store closes is
//! handed over beside the channel, so it is the last item the subscriber reads.
//!
//! The subscriber list is a `Mutex` taken only by the persister (once per batch, and only
//! if someone subscribed) and by [`TokenStore::subscribe`](crate::TokenStore::subscribe); validation never touches it.
//! It is no part of the write-behind protocol the loom models check, hence `std::sync`.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use crate::clock::from_ms;
use crate::entry::Entry;
use crate::token::TokenId;

/// How many items a [`TokenStore::subscribe`](crate::TokenStore::subscribe) queue holds before events are counted as
/// missed instead.
pub const DEFAULT_FEED_CAPACITY: usize = 4096;

/// The largest queue [`TokenStore::subscribe_with_capacity`](crate::TokenStore::subscribe_with_capacity) accepts (its memory is taken
/// when the subscriber is made).
pub const MAX_FEED_CAPACITY: usize = 1 << 20;

/// What changed.
///
/// Owner-wide calls: `revoke_owner` and `delete_owner` are one event per token they
/// changed ([`Revoked`](ChangeKind::Revoked), [`Deleted`](ChangeKind::Deleted), with
/// [`ChangeEvent::owner_wide`] set and one `at`), so a reader following one token sees
/// every change to it, whatever call made it; `set_owner_rate_limit` changes no token and
/// is one [`OwnerRateLimitSet`](ChangeKind::OwnerRateLimitSet) event without an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A token was issued (`issue`, `issue_many`; on a replica, any new token, including
    /// the replacement of a rotation made elsewhere).
    Issued,
    /// A token was revoked (`revoke`, or `revoke_owner` with
    /// [`owner_wide`](ChangeEvent::owner_wide)). Revoking a token already revoked changes
    /// nothing and is no event.
    Revoked,
    /// A token was deleted (`delete`, or `delete_owner` with
    /// [`owner_wide`](ChangeEvent::owner_wide); on a replica, also any purge made
    /// elsewhere).
    Deleted,
    /// A token was issued by `rotate` as the replacement of token `old` (whose shortened
    /// expiry is an [`ExpiryShortened`](ChangeKind::ExpiryShortened) event right after).
    Rotated {
        /// The token it replaces.
        old: TokenId,
    },
    /// A token's expiry was brought forward: the old token of a rotation (expired by
    /// rotation once its grace ends).
    ExpiryShortened,
    /// A token's rate limit was set or removed.
    RateLimitSet,
    /// A token was deleted by `purge` or by the retention purge.
    Purged,
    /// A token's metadata was set (`set_meta`; metadata given at issue or import is part
    /// of that event).
    MetaSet,
    /// A key minted elsewhere was imported (`import`, `import_many`; only its digest is
    /// kept).
    Imported,
    /// The rate limit shared by every token of an owner was set or removed: one event for
    /// the owner, whose `id` is `None` (it changes no token, and an owner may have none).
    OwnerRateLimitSet,
    /// A token's credits were set or removed (`set_credits`; credits given at issue are
    /// part of its [`Issued`](ChangeKind::Issued) event).
    CreditsSet,
    /// Spending took a token's remaining credits below the threshold set with them
    /// ([`Credits::alert_below`](crate::Credits::alert_below)): once per crossing, published
    /// with the write that records that spending (within one flush interval, or at
    /// `flush`).
    CreditsLow,
}

impl ChangeKind {
    /// A short stable name for logs and audit lines (`"issued"`, `"revoked"`...).
    pub fn as_str(&self) -> &'static str {
        match self {
            ChangeKind::Issued => "issued",
            ChangeKind::Revoked => "revoked",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Rotated { .. } => "rotated",
            ChangeKind::ExpiryShortened => "expiry_shortened",
            ChangeKind::RateLimitSet => "rate_limit_set",
            ChangeKind::Purged => "purged",
            ChangeKind::MetaSet => "meta_set",
            ChangeKind::Imported => "imported",
            ChangeKind::OwnerRateLimitSet => "owner_rate_limit_set",
            ChangeKind::CreditsSet => "credits_set",
            ChangeKind::CreditsLow => "credits_low",
        }
    }
}

/// Where a change was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// Through this store handle (or a clone of it), in this process.
    Local,
    /// By another replica of the same PostgreSQL store, read from the database.
    Replica,
}

impl Origin {
    /// `"local"` or `"replica"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Replica => "replica",
        }
    }
}

/// One durable change, as the feed delivers it: to one token, or (an owner's shared rate
/// limit) to one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeEvent {
    /// What changed.
    pub kind: ChangeKind,
    /// The token it changed; `None` only for [`ChangeKind::OwnerRateLimitSet`].
    pub id: Option<TokenId>,
    /// The token's owner, if it has one (as the token was when the change was made: a
    /// deleted token's owner is read before it goes); the owner itself for
    /// [`ChangeKind::OwnerRateLimitSet`].
    pub owner: Option<String>,
    /// The change was one call over every token of `owner` (`revoke_owner`,
    /// `delete_owner`, `set_owner_rate_limit`), not a call about this token. Another
    /// replica's owner-wide revoke or delete reaches this one as rows, one per token, and
    /// is not marked.
    pub owner_wide: bool,
    /// When the change was made, by the store's clock: for a local change, the persister's
    /// time when it took the change; for a replica's, the time the row records (issue,
    /// revocation) or else the time this replica read it.
    pub at: DateTime<Utc>,
    /// This process, or another replica.
    pub origin: Origin,
}

/// One item of a [`Changes`] feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// A change, once durable.
    Event(ChangeEvent),
    /// This many events were not queued here because the queue was full (the subscriber
    /// read too slowly); they happened between the item before and the item after.
    Missed(u64),
}

/// Why [`Changes::try_recv`] or [`Changes::recv_timeout`] returned no item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedError {
    /// Nothing is queued (for `recv_timeout`: nothing arrived in time); more may come.
    Empty,
    /// The store is closed and every item was read: nothing more will come.
    Closed,
}

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FeedError::Empty => "no change is queued yet; wait or try again",
            FeedError::Closed => "the store is closed and every change was read",
        })
    }
}

impl std::error::Error for FeedError {}

/// A subscriber's end of the change feed (see [`TokenStore::subscribe`](crate::TokenStore::subscribe)): a bounded queue
/// of [`Feed`] items, read blocking ([`recv`](Changes::recv), or as an iterator), with a
/// timeout, or without waiting.
///
/// Dropping it unsubscribes: the persister forgets it at the next change.
pub struct Changes {
    rx: Receiver<Feed>,
    /// Events missed that could not be queued before the store closed: read after the
    /// queue, once it is disconnected.
    owed: Arc<AtomicU64>,
}

impl Changes {
    /// The next item, waiting for it; `None` once the store is closed and every item was
    /// read.
    pub fn recv(&self) -> Option<Feed> {
        match self.rx.recv() {
            Ok(item) => Some(item),
            Err(_) => self.owed(),
        }
    }

    /// The next item if one comes within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Feed, FeedError> {
        match self.rx.recv_timeout(timeout) {
            Ok(item) => Ok(item),
            Err(RecvTimeoutError::Timeout) => Err(FeedError::Empty),
            Err(RecvTimeoutError::Disconnected) => self.owed().ok_or(FeedError::Closed),
        }
    }

    /// The next item if one is queued, without waiting.
    pub fn try_recv(&self) -> Result<Feed, FeedError> {
        match self.rx.try_recv() {
            Ok(item) => Ok(item),
            Err(TryRecvError::Empty) => Err(FeedError::Empty),
            Err(TryRecvError::Disconnected) => self.owed().ok_or(FeedError::Closed),
        }
    }

    /// The count the closing persister could not queue, once (after the queue is drained
    /// and disconnected, so it comes last).
    fn owed(&self) -> Option<Feed> {
        // Acquire: pairs with the Release in `Hub::close`, which stores before it drops the
        // sender whose disconnection brought us here.
        let missed = self.owed.swap(0, Ordering::Acquire);
        (missed > 0).then_some(Feed::Missed(missed))
    }
}

impl Iterator for Changes {
    type Item = Feed;

    /// Blocks for the next item; ends once the store is closed and every item was read.
    fn next(&mut self) -> Option<Feed> {
        self.recv()
    }
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes")
            .field("queued", &self.rx.len())
            .finish()
    }
}

/// The token's owner for an event about it. The one place events learn a token's owner:
/// every event about a token the store holds takes it from here (a delete or purge reads it
/// just before the entry is removed).
pub(crate) fn owner_of(entry: &Entry) -> Option<String> {
    entry
        .extras()
        .as_ref()
        .and_then(|x| x.owner_name())
        .map(String::from)
}

/// The kind of the event that a new token joining the store is: imported or issued.
pub(crate) fn arrival(entry: &Entry) -> ChangeKind {
    if entry.is_imported() {
        ChangeKind::Imported
    } else {
        ChangeKind::Issued
    }
}

/// An event made now by this process (`at`: Unix ms of the store's clock).
pub(crate) fn local(
    kind: ChangeKind,
    id: Option<TokenId>,
    owner: Option<String>,
    at: u64,
) -> ChangeEvent {
    event(kind, id, owner, at, Origin::Local)
}

/// An event about a change another replica committed.
#[cfg(all(feature = "postgres", not(loom)))]
pub(crate) fn replica(
    kind: ChangeKind,
    id: Option<TokenId>,
    owner: Option<String>,
    at: u64,
) -> ChangeEvent {
    event(kind, id, owner, at, Origin::Replica)
}

fn event(
    kind: ChangeKind,
    id: Option<TokenId>,
    owner: Option<String>,
    at: u64,
    origin: Origin,
) -> ChangeEvent {
    ChangeEvent {
        kind,
        id,
        owner,
        owner_wide: false,
        at: from_ms(at).unwrap_or_default(),
        origin,
    }
}

impl ChangeEvent {
    /// The same event, marked as part of one call over every token of its owner.
    pub(crate) fn marked_owner_wide(mut self) -> ChangeEvent {
        self.owner_wide = true;
        self
    }
}

/// The subscribers, shared by the store handle (which adds them) and the persister (which
/// publishes to them, and closes them when it stops).
#[derive(Default)]
pub(crate) struct Hub {
    subscribers: Mutex<Subscribers>,
    /// Whether anyone is subscribed, readable without the lock (set and cleared under it):
    /// while no one is, the persister makes no events at all (an `issue_many` of a million
    /// tokens allocates none).
    used: AtomicBool,
}

#[derive(Default)]
struct Subscribers {
    list: Vec<Subscriber>,
    /// The persister stopped: nothing more will be published.
    closed: bool,
}

/// One subscriber, as the persister sees it.
struct Subscriber {
    tx: Sender<Feed>,
    /// Events not queued (full) since the last item queued: owed as one `Missed`.
    missed: u64,
    /// Where a count still owed at close is left for the receiver.
    owed: Arc<AtomicU64>,
}

/// Whether a subscriber is still there after an offer.
enum Kept {
    Yes,
    Gone,
}

impl Subscriber {
    /// Queues `event`, after the `Missed` owed before it; counts it as missed if there is
    /// no room for it (or for the `Missed` that must come first).
    fn offer(&mut self, event: &ChangeEvent) -> Kept {
        if let Kept::Gone = self.settle() {
            return Kept::Gone;
        }
        if self.missed > 0 {
            self.missed = self.missed.saturating_add(1);
            return Kept::Yes;
        }
        match self.tx.try_send(Feed::Event(event.clone())) {
            Ok(()) => Kept::Yes,
            Err(TrySendError::Full(_)) => {
                self.missed = 1;
                Kept::Yes
            }
            Err(TrySendError::Disconnected(_)) => Kept::Gone,
        }
    }

    /// Queues the `Missed` owed, if any and if there is room.
    fn settle(&mut self) -> Kept {
        if self.missed == 0 {
            return Kept::Yes;
        }
        match self.tx.try_send(Feed::Missed(self.missed)) {
            Ok(()) => {
                self.missed = 0;
                Kept::Yes
            }
            Err(TrySendError::Full(_)) => Kept::Yes,
            Err(TrySendError::Disconnected(_)) => Kept::Gone,
        }
    }
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, Subscribers> {
        // Nothing under the lock panics midway; a poisoned list is still consistent.
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new subscriber with a queue of `capacity` (already checked).
    pub(crate) fn subscribe(&self, capacity: usize) -> Changes {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let owed = Arc::new(AtomicU64::new(0));
        let mut subscribers = self.lock();
        if !subscribers.closed {
            subscribers.list.push(Subscriber {
                tx,
                missed: 0,
                owed: owed.clone(),
            });
            // Relaxed: a hint for the persister's next batch; the list itself is read
            // under the lock.
            self.used.store(true, Ordering::Relaxed);
        }
        // Closed: `tx` is dropped here, and the feed has ended.
        Changes { rx, owed }
    }

    /// Whether the persister should make events: someone is subscribed (or was, and has not
    /// been forgotten yet).
    pub(crate) fn active(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Offers `events`, in order, to every subscriber; forgets the subscribers that are
    /// gone. With no events, queues the `Missed` counts owed where there is room now.
    pub(crate) fn publish(&self, events: &[ChangeEvent]) {
        if !self.active() {
            return;
        }
        let mut subscribers = self.lock();
        subscribers.list.retain_mut(|subscriber| {
            let mut kept = subscriber.settle();
            for event in events {
                if let Kept::Gone = kept {
                    break;
                }
                kept = subscriber.offer(event);
            }
            matches!(kept, Kept::Yes)
        });
        if subscribers.list.is_empty() {
            // Under the lock, as `subscribe` sets it: no event is made for nobody.
            self.used.store(false, Ordering::Relaxed);
        }
    }

    /// The persister stopped: queues the counts owed where there is room, leaves the rest
    /// beside each channel, and drops every sender, so each feed ends once read. Later
    /// subscriptions get a feed that has already ended.
    pub(crate) fn close(&self) {
        let mut subscribers = self.lock();
        subscribers.closed = true;
        for mut subscriber in subscribers.list.drain(..) {
            let _ = subscriber.settle();
            // Release: pairs with the Acquire in `Changes::owed`, which reads this after
            // it sees the channel disconnected by the drop below.
            subscriber.owed.store(subscriber.missed, Ordering::Release);
            drop(subscriber.tx);
        }
    }
}
