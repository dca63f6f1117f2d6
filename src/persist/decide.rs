//! The decide phase: what one batch writes (a journal record, a compaction, or nothing),
//! from the facts the persister gathers and its backend's policy.

use super::batch::{Batch, Pending};
use super::Persister;
use crate::change::ChangeRef;

/// What the decide phase chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// Nothing to write.
    Nothing,
    /// One journal record: the batch's changes, and `last_used` of the tokens used since
    /// the last write if `used` (scanning every token if `scan`).
    Append { used: bool, scan: bool },
    /// A snapshot of everything, then a fresh journal.
    Compact,
}

/// What a backend decides a batch's write on: the batch and the persister's state.
pub(crate) struct Facts<'a> {
    /// The batch changes a definition (a change made in memory, or a new token).
    pub(crate) definitions: bool,
    /// A timed write is due (a flush interval passed since the last attempt).
    pub(crate) due: bool,
    /// A `last_used` or a change waits for the next timed write.
    pub(crate) waiting: bool,
    /// The journal's size is due a look (once per interval).
    pub(crate) size_check_due: bool,
    /// A flush asks for everything seen before it.
    pub(crate) flush_asked: bool,
    /// The store is closing: this is the last write.
    pub(crate) closing: bool,
    /// A change memory holds is not written (its write failed).
    pub(crate) unwritten_changes: bool,
    /// A dirty id was dropped or a write failed: look at every token.
    pub(crate) scan_all: bool,
    /// Some tokens' `Dirty` messages arrived since their last write, or usage counts wait.
    pub(crate) used_known: bool,
    /// The newest snapshot's size.
    pub(crate) snapshot_len: u64,
    /// The journal size below which no compaction runs.
    pub(crate) compaction_floor: u64,
    /// Whether any token's `last_used` differs from the one written (a scan: ask last).
    pub(crate) unsaved_anywhere: &'a dyn Fn() -> bool,
}

impl Facts<'_> {
    /// An append if anything is to be written: the batch's changes, the backend's `resend`
    /// of changes it holds, or `last_used` when a timed write, a flush or close asks for it
    /// (of every token if `scan`, else of those whose messages arrived); else nothing.
    pub(crate) fn append(&self, resend: bool, scan: bool) -> Write {
        let used = (self.due && self.waiting) || self.flush_asked || self.closing;
        if self.definitions || resend || (used && (scan || self.used_known)) {
            Write::Append { used, scan }
        } else {
            Write::Nothing
        }
    }
}

impl Persister {
    /// The decide phase: append the batch's changes (with `last_used` if a timed write is
    /// due or a flush or close asks), compact, or nothing.
    ///
    /// The persister gathers the facts; its backend decides ([`Sink::decide`]): the file
    /// backend by [`file_policy`](super::backend::file_policy) (compaction, and the rule
    /// that keeps the files equal to memory: while memory holds a change that is not on
    /// disk (`definitions_pending`: its write failed) or the journal is not trusted (an
    /// append or its fsync failed), every write that happens is a compaction, and close
    /// always writes one), the database backend by its own (it never compacts instead of
    /// appending, and resends what failed).
    ///
    /// [`Sink::decide`]: super::Sink::decide
    pub(super) fn decide(
        &mut self,
        changes: &[ChangeRef<'_>],
        pending: &Pending,
        batch: &Batch,
        now: u64,
    ) -> Write {
        let size_check_due = self.interval_passed(self.last_size_check_ms, now);
        if size_check_due {
            self.last_size_check_ms = now;
        }
        let unsaved_anywhere = || self.unsaved_anywhere();
        let facts = Facts {
            definitions: !changes.is_empty() || !pending.issues.is_empty(),
            due: self.interval_passed(self.last_attempt_ms, now),
            waiting: self.waiting(),
            size_check_due,
            flush_asked: !batch.flushes.is_empty(),
            closing: batch.shutdown.is_some(),
            unwritten_changes: self.definitions_pending,
            scan_all: self.scan_all,
            used_known: !self.used.is_empty() || self.counts_waiting,
            snapshot_len: self.snapshot_len,
            compaction_floor: self.compaction_floor,
            unsaved_anywhere: &unsaved_anywhere,
        };
        self.sink.decide(&facts)
    }

    /// Whether any token's `last_used`, credits or usage counts differ from the ones on
    /// disk (a scan, for `close`).
    fn unsaved_anywhere(&self) -> bool {
        let map = &self.shared.map;
        map.usage.lock().pending() || map.with_all(|entries| entries.iter().any(|e| e.unsaved()))
    }
}
