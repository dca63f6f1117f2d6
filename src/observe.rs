//! Metrics and traces (docs/OBSERVABILITY.md).
//!
//! Traces are always on: one short `tracing` span per durable write, compaction, catch-up
//! and reconnect ([`Op`]), none per validation. Metrics go through the `metrics` facade
//! with the `metrics` feature; without it every call here is an empty inline function, so
//! call sites carry no `cfg`.
//!
//! Only the persister and listener threads call the facade. The validation hot path bumps
//! its striped counters (`stats.rs`) as it always did, and the persister publishes them
//! ([`Publisher`]): at least once a second, at each flush and at close. It publishes the
//! growth since its last publication as an increment, never an absolute value, so two
//! stores in one process add up instead of overwriting each other's totals.

use std::time::{Duration, Instant};

use tracing::field::{debug, Empty};

use crate::validate::Shared;

/// The kinds of change `tokencache_changes_total` counts, as its `kind` label spells them.
const KINDS: [&str; 10] = [
    "issue",
    "revoke",
    "delete",
    "rotate",
    "rate_limit",
    "purge",
    "import",
    "meta",
    "owner_rate_limit",
    "credits",
];

/// A kind of change a caller (or retention) asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Issue = 0,
    Revoke = 1,
    Delete = 2,
    Rotate = 3,
    RateLimit = 4,
    Purge = 5,
    Import = 6,
    Meta = 7,
    OwnerRateLimit = 8,
    Credits = 9,
}

/// Changes of one batch by kind, counted once their write succeeded.
#[derive(Debug, Default)]
pub(crate) struct Kinds([u64; KINDS.len()]);

impl Kinds {
    /// `n` more changes of `kind` (tokens issued, revoked, deleted, rotated, limits set,
    /// tokens purged).
    pub(crate) fn add(&mut self, kind: Kind, n: usize) {
        self.0[kind as usize] += n as u64;
    }
}

/// One durable write, compaction, catch-up or reconnect: its span, entered from creation
/// to drop (so what the operation logs is inside it), and its real elapsed time
/// (`Instant`: how long the disk or the database took, whatever the store's clock says).
/// The span's `duration` field is recorded when the `Op` is dropped.
pub(crate) struct Op {
    span: tracing::span::EnteredSpan,
    start: Instant,
}

impl Op {
    fn new(span: tracing::Span) -> Op {
        Op {
            span: span.entered(),
            start: Instant::now(),
        }
    }

    /// A journal append (or a database transaction) of `records` changes.
    pub(crate) fn write(records: usize) -> Op {
        Op::new(tracing::info_span!(
            "write",
            records,
            bytes = Empty,
            duration = Empty
        ))
    }

    /// A compaction: a snapshot of `tokens` tokens, then a fresh journal.
    pub(crate) fn compaction(tokens: usize) -> Op {
        Op::new(tracing::info_span!(
            "compaction",
            tokens,
            bytes = Empty,
            duration = Empty
        ))
    }

    /// A replica's catch-up: the rows other replicas changed since the last one.
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) fn catch_up() -> Op {
        Op::new(tracing::info_span!(
            "catch_up",
            records = Empty,
            duration = Empty
        ))
    }

    /// A replica's listener connecting (and catching up) again after it lost the database.
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) fn reconnect() -> Op {
        Op::new(tracing::info_span!("reconnect", duration = Empty))
    }

    /// Notes how many records (rows) the operation read.
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) fn records(&self, records: usize) {
        self.span.record("records", records);
    }

    /// A journal record (or transaction) of `bytes` is durable.
    pub(crate) fn appended(&self, bytes: u64) {
        self.span.record("bytes", bytes);
        facade::appended(bytes, self.start.elapsed());
    }

    /// A snapshot of `bytes` is durable.
    pub(crate) fn compacted(&self, bytes: u64) {
        self.span.record("bytes", bytes);
        facade::compacted(self.start.elapsed());
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        self.span.record("duration", debug(self.start.elapsed()));
    }
}

/// The listener is connected and caught up again (`reconnect` is its [`Op::reconnect`]).
#[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
pub(crate) fn reconnected(reconnect: Option<Op>) {
    if reconnect.is_some() {
        facade::reconnected();
    }
}

/// A write failed (it is retried: the persister logs the error and when it tries again).
pub(crate) fn write_failed() {
    facade::write_failed();
}

/// The changes of a batch whose write succeeded.
pub(crate) fn committed(kinds: &Kinds) {
    facade::committed(kinds);
}

/// Publishes the store's counters and gauges from the persister thread.
pub(crate) struct Publisher {
    #[cfg(all(feature = "metrics", not(loom)))]
    published: facade::Published,
}

impl Publisher {
    /// The longest the persister sleeps between two looks at whether a publication is due.
    pub(crate) const MAX_WAIT: Duration = facade::MAX_WAIT;

    /// A store's publisher; describes every metric to the recorder installed now.
    pub(crate) fn new() -> Publisher {
        facade::describe();
        Publisher {
            #[cfg(all(feature = "metrics", not(loom)))]
            published: facade::Published::default(),
        }
    }

    /// After a batch: publishes if a second passed since the last publication or `now`
    /// (a flush or close asks: what was counted before it is published before it
    /// returns). At close (`closing`) the store's tokens leave the `tokencache_tokens`
    /// gauge.
    #[cfg_attr(not(all(feature = "metrics", not(loom))), allow(unused_variables))]
    pub(crate) fn batch_done(&mut self, shared: &Shared, now: bool, closing: bool) {
        #[cfg(all(feature = "metrics", not(loom)))]
        self.published.publish(shared, now || closing, closing);
    }
}

/// With the `metrics` feature: the facade calls.
#[cfg(all(feature = "metrics", not(loom)))]
mod facade {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};

    use ::metrics::{
        counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
    };

    use super::{Kinds, KINDS};
    use crate::stats::{OUTCOMES, OUTCOME_NAMES};
    use crate::validate::Shared;

    pub(super) const MAX_WAIT: Duration = Duration::from_secs(1);

    const VALIDATIONS: &str = "tokencache_validations_total";
    const CHANGES: &str = "tokencache_changes_total";
    const WRITE_FAILURES: &str = "tokencache_write_failures_total";
    const JOURNAL_RECORDS: &str = "tokencache_journal_records_total";
    const JOURNAL_BYTES: &str = "tokencache_journal_bytes_total";
    const COMPACTIONS: &str = "tokencache_compactions_total";
    const WRITE_SECONDS: &str = "tokencache_write_seconds";
    const COMPACTION_SECONDS: &str = "tokencache_compaction_seconds";
    const TOKENS: &str = "tokencache_tokens";
    const REPLICA_LAG: &str = "tokencache_replica_lag_seconds";
    const RECONNECTS: &str = "tokencache_replica_reconnects_total";

    /// Describes every metric, with its unit, to the recorder installed now (each store's
    /// open does: a recorder installed after the first store opened still learns them).
    pub(super) fn describe() {
        describe_counter!(VALIDATIONS, Unit::Count, "Validations by outcome: accepted, or the rejection's reason (published by the persister at least once a second)");
        describe_counter!(CHANGES, Unit::Count, "Changes written, by kind: tokens issued, revoked, deleted, rotated, rate limits set, tokens purged");
        describe_counter!(
            WRITE_FAILURES,
            Unit::Count,
            "Durable writes that failed (each is retried)"
        );
        describe_counter!(
            JOURNAL_RECORDS,
            Unit::Count,
            "Journal records appended (PostgreSQL stores: transactions committed)"
        );
        describe_counter!(JOURNAL_BYTES, Unit::Bytes, "Bytes appended to the journal");
        describe_counter!(
            COMPACTIONS,
            Unit::Count,
            "Compactions: snapshots replacing the store file"
        );
        describe_histogram!(
            WRITE_SECONDS,
            Unit::Seconds,
            "One durable write: journal append and fsync, or the database transaction"
        );
        describe_histogram!(
            COMPACTION_SECONDS,
            Unit::Seconds,
            "One compaction: the snapshot and a fresh journal"
        );
        describe_gauge!(
            TOKENS,
            Unit::Count,
            "Tokens in memory, revoked ones included, summed over the open stores"
        );
        describe_gauge!(
            REPLICA_LAG,
            Unit::Seconds,
            "PostgreSQL stores: time since this replica last caught up with the database"
        );
        describe_counter!(
            RECONNECTS,
            Unit::Count,
            "PostgreSQL stores: reconnections of the replica's listener after it lost the database"
        );
    }

    pub(super) fn appended(bytes: u64, took: Duration) {
        counter!(JOURNAL_RECORDS).increment(1);
        counter!(JOURNAL_BYTES).increment(bytes);
        histogram!(WRITE_SECONDS).record(took.as_secs_f64());
    }

    pub(super) fn compacted(took: Duration) {
        counter!(COMPACTIONS).increment(1);
        histogram!(COMPACTION_SECONDS).record(took.as_secs_f64());
    }

    pub(super) fn reconnected() {
        counter!(RECONNECTS).increment(1);
    }

    pub(super) fn write_failed() {
        counter!(WRITE_FAILURES).increment(1);
    }

    pub(super) fn committed(kinds: &Kinds) {
        for (&n, kind) in kinds.0.iter().zip(KINDS) {
            if n > 0 {
                counter!(CHANGES, "kind" => kind).increment(n);
            }
        }
    }

    /// What this store published last: the next publication adds the growth since.
    pub(super) struct Published {
        validations: [u64; OUTCOMES],
        tokens: f64,
        at: Option<Instant>,
    }

    impl Default for Published {
        fn default() -> Self {
            Published {
                validations: [0; OUTCOMES],
                tokens: 0.0,
                at: None,
            }
        }
    }

    impl Published {
        pub(super) fn publish(&mut self, shared: &Shared, now: bool, closing: bool) {
            let due = self.at.is_none_or(|at| at.elapsed() >= MAX_WAIT);
            if !(now || due) {
                return;
            }
            self.at = Some(Instant::now());
            let counts = shared.counters.outcomes();
            for ((count, last), outcome) in
                counts.iter().zip(&mut self.validations).zip(OUTCOME_NAMES)
            {
                // The striped counters only grow.
                let grown = count.saturating_sub(*last);
                if grown > 0 || *last == 0 {
                    counter!(VALIDATIONS, "outcome" => outcome).increment(grown);
                }
                *last = *count;
            }
            let tokens = if closing {
                0.0
            } else {
                shared.map.len() as f64
            };
            gauge!(TOKENS).increment(tokens - self.tokens);
            self.tokens = tokens;
            let synced = shared.counters.last_sync_at.load(Relaxed);
            if synced != 0 && !closing {
                // The store's clock: the lag `stats()` and `max_staleness` speak of.
                let lag_ms = shared.clock.now_ms().saturating_sub(synced);
                gauge!(REPLICA_LAG).set(lag_ms as f64 / 1000.0);
            }
        }
    }
}

/// Without the `metrics` feature: nothing.
#[cfg(not(all(feature = "metrics", not(loom))))]
mod facade {
    use std::time::Duration;

    use super::Kinds;

    pub(super) const MAX_WAIT: Duration = Duration::MAX;

    #[inline]
    pub(super) fn describe() {}
    #[inline]
    pub(super) fn appended(_bytes: u64, _took: Duration) {}
    #[inline]
    pub(super) fn compacted(_took: Duration) {}
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    #[inline]
    pub(super) fn reconnected() {}
    #[inline]
    pub(super) fn write_failed() {}
    #[inline]
    pub(super) fn committed(_kinds: &Kinds) {}
}
