//! The batch phase: the messages the persister takes together (every reply waits for the
//! one write they share), the ids validations dirtied, and what the apply phase leaves for
//! the write and reply phases.

use super::Persister;
use crate::change::ChangeRef;
use crate::credits::Meter;
use crate::entry::Entry;
use crate::error::Error;
use crate::feed::{self, ChangeEvent, ChangeKind};
use crate::inbox::{Message, Reply};
use crate::observe::Kinds;
use crate::rate_limit::RateLimit;
use crate::sync::channel::Sender;
use crate::sync::Ordering;
use crate::token::TokenId;

/// Messages handled together: every reply waits for the one write they share.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) dirty: Vec<TokenId>,
    pub(super) issues: Vec<(Vec<Entry>, Reply)>,
    pub(super) revokes: Vec<(TokenId, Reply)>,
    pub(super) rate_limits: Vec<(TokenId, Option<RateLimit>, Reply)>,
    pub(super) deletes: Vec<(TokenId, Reply)>,
    pub(super) owner_revokes: Vec<(String, Reply)>,
    pub(super) owner_deletes: Vec<(String, Reply)>,
    pub(super) owner_limits: Vec<(String, Option<RateLimit>, Reply)>,
    pub(super) metas: Vec<(TokenId, Box<str>, Reply)>,
    pub(super) credits: Vec<(TokenId, Option<Box<Meter>>, Reply)>,
    pub(super) purges: Vec<(u64, Reply)>,
    pub(super) rotations: Vec<(TokenId, u64, Box<Entry>, Reply)>,
    pub(super) flushes: Vec<Reply>,
    pub(super) ticks: Vec<Sender<()>>,
    pub(super) shutdown: Option<Reply>,
    /// Rows other replicas committed, as the catch-ups read them.
    #[cfg(all(feature = "postgres", not(loom)))]
    pub(super) remote: Vec<crate::change::Read>,
}

impl Batch {
    pub(super) fn add(&mut self, message: Message) {
        match message {
            Message::Dirty(id) => {
                tracing::trace!(%id, "token dirty");
                self.dirty.push(id);
            }
            Message::Issue(entries, reply) => self.issues.push((entries, reply)),
            Message::Revoke(id, reply) => self.revokes.push((id, reply)),
            Message::SetRateLimit(id, limit, reply) => self.rate_limits.push((id, limit, reply)),
            Message::Delete(id, reply) => self.deletes.push((id, reply)),
            Message::RevokeOwner(owner, reply) => self.owner_revokes.push((owner, reply)),
            Message::DeleteOwner(owner, reply) => self.owner_deletes.push((owner, reply)),
            Message::SetOwnerRateLimit(owner, limit, reply) => {
                self.owner_limits.push((owner, limit, reply));
            }
            Message::SetMeta(id, meta, reply) => self.metas.push((id, meta, reply)),
            Message::SetCredits(id, meter, reply) => self.credits.push((id, meter, reply)),
            Message::Purge(cutoff, reply) => self.purges.push((cutoff, reply)),
            Message::Rotate {
                old,
                until,
                new,
                reply,
            } => self.rotations.push((old, until, new, reply)),
            Message::Flush(reply) => self.flushes.push(reply),
            Message::Tick(ack) => self.ticks.push(ack),
            Message::Shutdown(reply) => self.shutdown = Some(reply),
            #[cfg(all(feature = "postgres", not(loom)))]
            Message::Remote(read) => self.remote.push(read),
        }
    }
}

impl Persister {
    /// Takes the ids validations dirtied into the set the next `last_used` write looks at;
    /// if any were dropped (the channel was full), the next write scans every token.
    pub(super) fn take_dirty(&mut self, batch: &mut Batch) {
        // Relaxed: the flag is a hint that ids were dropped; the scan reads every entry
        // through its own Acquire protocol.
        let overflowed = self.shared.overflow.swap(false, Ordering::Relaxed);
        self.scan_all |= overflowed;
        self.used.extend(batch.dirty.drain(..));
    }
}

/// What the apply phase leaves for the write and reply phases.
#[derive(Default)]
pub(super) struct Applied {
    /// Changes made in memory (revoke, limit, delete, purge), for the journal record.
    pub(super) changes: Vec<ChangeRef<'static>>,
    /// What joins memory only once it is on disk.
    pub(super) pending: Pending,
    /// The record holds the store's prefix, which the files did not hold before.
    pub(super) records_prefix: bool,
    /// Callers waiting for the write, each with its count.
    pub(super) replies: Vec<(Reply, usize)>,
    /// The changes by kind, for the metrics once written.
    pub(super) kinds: Kinds,
    /// The change feed's events of these changes.
    pub(super) events: Events,
}

/// The change feed's events of a batch's changes (none while no one is subscribed).
#[derive(Default)]
pub(super) struct Events {
    /// Whether to make any: someone is subscribed.
    pub(super) recording: bool,
    /// Of the changes made in memory (revoke, limit, delete, purge, metadata, and the
    /// owner-wide ones): published by the write that makes them durable, this batch's or a
    /// later one.
    pub(super) applied: Vec<ChangeEvent>,
    /// Of the new tokens (issued, imported) and rotations: published if this batch's write
    /// succeeds, else dropped with them.
    pub(super) pending: Vec<ChangeEvent>,
}

impl Events {
    /// Events of the changes of a batch, if `recording`.
    pub(super) fn new(recording: bool) -> Events {
        Events {
            recording,
            ..Events::default()
        }
    }

    /// The owner of `entry` for an event, if events are made at all.
    pub(super) fn owner(&self, entry: &Entry) -> Option<String> {
        if self.recording {
            feed::owner_of(entry)
        } else {
            None
        }
    }

    /// A change made in memory now (`at`), to `id`.
    pub(super) fn applied(
        &mut self,
        kind: ChangeKind,
        id: TokenId,
        owner: Option<String>,
        at: u64,
    ) {
        if self.recording {
            self.applied.push(feed::local(kind, Some(id), owner, at));
        }
    }

    /// Changes made in memory now (`at`) by one call over every token of `owner`
    /// (`revoke_owner`, `delete_owner`): one event per token in `ids`.
    pub(super) fn owner_wide(&mut self, kind: ChangeKind, ids: &[TokenId], owner: &str, at: u64) {
        if self.recording {
            self.applied.extend(ids.iter().map(|&id| {
                feed::local(kind, Some(id), Some(owner.to_owned()), at).marked_owner_wide()
            }));
        }
    }

    /// Owner `owner`'s shared rate limit was set in memory now (`at`): one event, no token.
    pub(super) fn owner_limit(&mut self, owner: &str, at: u64) {
        if self.recording {
            let kind = ChangeKind::OwnerRateLimitSet;
            let event = feed::local(kind, None, Some(owner.to_owned()), at);
            self.applied.push(event.marked_owner_wide());
        }
    }

    /// A change that joins memory once written.
    pub(super) fn pending(
        &mut self,
        kind: ChangeKind,
        id: TokenId,
        owner: Option<String>,
        at: u64,
    ) {
        if self.recording {
            self.pending.push(feed::local(kind, Some(id), owner, at));
        }
    }
}

/// Changes that memory takes only after the write that holds them succeeds, so a failed
/// write leaves no trace of them: new tokens, and expiries that `rotate` shortens.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) issues: Vec<Entry>,
    pub(super) expiries: Vec<(TokenId, u64)>,
}

impl Applied {
    /// A request for `id`: waits for the write if the id was found (`change` says what
    /// changed), else is refused now.
    pub(super) fn answer(&mut self, reply: Reply, id: TokenId, change: Option<ChangeRef<'static>>) {
        match change {
            Some(change) => {
                self.changes.push(change);
                self.replies.push((reply, 1));
            }
            None => {
                let _ = reply.send(Err(Error::UnknownId(id)));
            }
        }
    }
}
