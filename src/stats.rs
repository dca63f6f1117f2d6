//! Counters a service can export, and the public [`Stats`] reading of them.
//!
//! Validation counters are striped: each thread bumps its own cache-padded slot, so two
//! threads validating at full speed never fight over one cache line. Reading sums the slots.
//! These are plain `std` atomics on purpose: statistics are not part of the protocol loom
//! checks, and no ordering between counters is promised.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use crossbeam_utils::CachePadded;

use crate::error::Rejection;

const STRIPES: usize = 16;
const REASONS: usize = crate::error::REASONS.len();

/// The outcomes of a validation: accepted, then each rejection reason.
#[cfg(all(feature = "metrics", not(loom)))]
pub(crate) const OUTCOMES: usize = 1 + REASONS;

/// The outcomes' names, as `tokencache_validations_total` labels them: `accepted`, then each
/// rejection's name ([`Rejection::as_str`]) in [`Rejection::index`] order.
#[cfg(all(feature = "metrics", not(loom)))]
pub(crate) const OUTCOME_NAMES: [&str; OUTCOMES] = {
    let mut names = ["accepted"; OUTCOMES];
    let mut i = 0;
    while i < REASONS {
        names[1 + i] = crate::error::REASONS[i].name;
        i += 1;
    }
    names
};

#[derive(Default)]
struct Stripe {
    accepted: AtomicU64,
    rejected: [AtomicU64; REASONS],
}

/// The store's live counters (all `Relaxed`: each is an independent tally).
#[derive(Default)]
pub(crate) struct Counters {
    stripes: [CachePadded<Stripe>; STRIPES],
    pub(crate) dirty_sends: AtomicU64,
    pub(crate) channel_full: AtomicU64,
    pub(crate) snapshots_written: AtomicU64,
    pub(crate) journal_records_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) journal_bytes_written: AtomicU64,
    pub(crate) compaction_bytes_written: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) last_snapshot_at: AtomicU64,
    /// PostgreSQL stores: when (clock ms) memory last caught up with the database; 0 for a
    /// file store. Read by `validate` when `max_staleness` is set.
    pub(crate) last_sync_at: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
}

thread_local! {
    /// This thread's stripe, assigned round-robin on first use.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

fn stripe_index() -> usize {
    STRIPE.with(|cell| {
        let mut index = cell.get();
        if index == usize::MAX {
            index = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
            cell.set(index);
        }
        index
    })
}

impl Counters {
    #[inline]
    pub(crate) fn accepted(&self) {
        self.stripes[stripe_index()].accepted.fetch_add(1, Relaxed);
    }

    #[inline]
    pub(crate) fn rejected(&self, rejection: &Rejection) {
        self.stripes[stripe_index()].rejected[rejection.index()].fetch_add(1, Relaxed);
    }

    /// A journal record of `bytes` was appended.
    pub(crate) fn record_append(&self, bytes: u64) {
        self.journal_records_written.fetch_add(1, Relaxed);
        self.journal_bytes_written.fetch_add(bytes, Relaxed);
        self.bytes_written.fetch_add(bytes, Relaxed);
    }

    /// A snapshot of `bytes` was written at `at_ms` (a compaction, or the first file).
    pub(crate) fn record_compaction(&self, bytes: u64, at_ms: u64) {
        self.snapshots_written.fetch_add(1, Relaxed);
        self.record_compaction_bytes(bytes);
        self.last_snapshot_at.store(at_ms, Relaxed);
    }

    /// A compaction wrote `bytes` more (the fresh journal's header).
    pub(crate) fn record_compaction_bytes(&self, bytes: u64) {
        self.compaction_bytes_written.fetch_add(bytes, Relaxed);
        self.bytes_written.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn record_error(&self, message: String) {
        self.write_errors.fetch_add(1, Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }

    /// The validation counts in [`OUTCOME_NAMES`] order, summed over the stripes.
    #[cfg(all(feature = "metrics", not(loom)))]
    pub(crate) fn outcomes(&self) -> [u64; OUTCOMES] {
        let mut counts = [0; OUTCOMES];
        for stripe in &self.stripes {
            counts[0] += stripe.accepted.load(Relaxed);
            for (count, reason) in counts[1..].iter_mut().zip(&stripe.rejected) {
                *count += reason.load(Relaxed);
            }
        }
        counts
    }

    /// The counters as [`Stats`], `now_ms` being the clock's time (for the replica lag).
    pub(crate) fn read(&self, tokens: usize, dirty: usize, now_ms: u64) -> Stats {
        let sum = |f: &dyn Fn(&Stripe) -> u64| self.stripes.iter().map(|s| f(s)).sum::<u64>();
        let reason = |i: usize| sum(&|s| s.rejected[i].load(Relaxed));
        let last_snapshot = self.last_snapshot_at.load(Relaxed);
        let last_sync = self.last_sync_at.load(Relaxed);
        let at = |ms: u64| {
            (ms != 0)
                .then(|| DateTime::from_timestamp_millis(ms as i64))
                .flatten()
        };
        Stats {
            tokens,
            dirty_tokens: dirty,
            validations: sum(&|s| s.accepted.load(Relaxed)),
            rejections: Rejections {
                malformed: reason(0),
                unknown: reason(1),
                revoked: reason(2),
                expired: reason(3),
                rate_limited: reason(4),
                missing_scope: reason(5),
                unavailable: reason(6),
                usage_exceeded: reason(7),
            },
            dirty_sends: self.dirty_sends.load(Relaxed),
            channel_full: self.channel_full.load(Relaxed),
            snapshots_written: self.snapshots_written.load(Relaxed),
            journal_records_written: self.journal_records_written.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            journal_bytes_written: self.journal_bytes_written.load(Relaxed),
            compaction_bytes_written: self.compaction_bytes_written.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            last_snapshot_at: at(last_snapshot),
            last_catch_up_at: at(last_sync),
            replica_lag: (last_sync != 0)
                .then(|| std::time::Duration::from_millis(now_ms.saturating_sub(last_sync))),
        }
    }
}

/// A reading of the store's counters, from [`TokenStore::stats`](crate::TokenStore::stats).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tokens in memory, revoked ones included.
    pub tokens: usize,
    /// Tokens whose `last_used` is waiting for the next write.
    pub dirty_tokens: usize,
    /// Successful validations.
    pub validations: u64,
    /// Refused validations, by reason.
    pub rejections: Rejections,
    /// Token ids sent to the persister (one per clean-to-dirty flip).
    pub dirty_sends: u64,
    /// Sends that found the channel full and fell back to a full scan.
    pub channel_full: u64,
    /// Snapshots written since `open`: compactions, and the first file of a new store.
    pub snapshots_written: u64,
    /// Journal records appended since `open` (each one write and one fsync, shared by every
    /// change of a group commit and by the `last_used` of one interval). For a PostgreSQL
    /// store: transactions committed (the byte counts stay 0).
    pub journal_records_written: u64,
    /// Every byte the store wrote since `open`: `journal_bytes_written` +
    /// `compaction_bytes_written`.
    pub bytes_written: u64,
    /// Bytes appended to the journal.
    pub journal_bytes_written: u64,
    /// Bytes written by compactions: snapshots and the fresh journals' headers.
    pub compaction_bytes_written: u64,
    /// Writes that failed (each is retried).
    pub write_errors: u64,
    /// The most recent write error, if any.
    pub last_error: Option<String>,
    /// When the newest snapshot (compaction) was written by this handle.
    pub last_snapshot_at: Option<DateTime<Utc>>,
    /// PostgreSQL stores: when this replica last caught up with the database (read every
    /// change committed before then). `None` for a file store.
    pub last_catch_up_at: Option<DateTime<Utc>>,
    /// PostgreSQL stores: how stale this replica's memory may be, the time since
    /// `last_catch_up_at` (about one poll interval while the database is reachable; it grows
    /// while the database is not). `None` for a file store.
    pub replica_lag: Option<std::time::Duration>,
}

/// Refused validations by [`Rejection`] reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejections {
    /// [`Rejection::Malformed`].
    pub malformed: u64,
    /// [`Rejection::Unknown`].
    pub unknown: u64,
    /// [`Rejection::Revoked`].
    pub revoked: u64,
    /// [`Rejection::Expired`].
    pub expired: u64,
    /// [`Rejection::RateLimited`].
    pub rate_limited: u64,
    /// [`Rejection::MissingScope`].
    pub missing_scope: u64,
    /// [`Rejection::Unavailable`].
    pub unavailable: u64,
    /// [`Rejection::UsageExceeded`].
    pub usage_exceeded: u64,
}

impl Rejections {
    /// All refusals together.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.unknown
            + self.revoked
            + self.expired
            + self.rate_limited
            + self.missing_scope
            + self.unavailable
            + self.usage_exceeded
    }
}
