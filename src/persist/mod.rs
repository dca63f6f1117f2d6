//! The persister: the one thread that writes the journal and snapshots and changes the
//! token map.
//!
//! It takes messages from its [`Inbox`](crate::inbox::Inbox): dirty token ids from
//! validations (write-behind: one journal record per `flush_interval` holding the tokens
//! used since the last one, none while idle), and commands with a reply channel: issue,
//! revoke, delete, purge, rotate, rate limits (group commit: every change waiting in the
//! channel shares one journal record and one fsync, and each caller is answered only once
//! it is on disk), `flush` (a barrier), timer ticks and shutdown. All writes go through a
//! [`Sink`] (`backend.rs`).
//!
//! Each batch goes through its phases, one file each: `batch` (the messages taken
//! together, and the ids validations dirtied), `apply` (changes that are safe to make in
//! memory first: revoke, rate limit, delete, purge), `write` (decide: append a record,
//! compact, or nothing; then write: the new tokens join memory only once written), then
//! `publish` (in this file: the events of what the write made durable go to the change
//! feed's subscribers, `feed.rs`), and `reply`.
//! Under `--cfg loom`, `twins.rs` holds the broken twins the model checks must catch.
//!
//! Compaction writes a full snapshot covering every record so far, then starts an empty
//! journal. It runs when the journal has outgrown both the snapshot and a floor (checked
//! once per interval), on close, and instead of an append when the journal cannot be
//! trusted (an append or its fsync failed).

mod apply;
mod backend;
mod batch;
mod decide;
#[cfg(loom)]
mod recorder;
mod reply;
#[cfg(loom)]
mod twins;
mod write;

use std::collections::HashSet;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use crate::clock::millis;
use crate::error::Error;
use crate::feed::{ChangeEvent, Hub};
use crate::inbox::Message;
use crate::observe::{self, Publisher};
use crate::sync::channel::{Receiver, RecvTimeoutError};
use crate::sync::Arc;
use crate::token::TokenId;
use crate::validate::Shared;

// The database backend (not built under loom) uses these too.
#[cfg_attr(loom, allow(unused_imports))]
pub(crate) use backend::{FileSink, Sink};
// What the PostgreSQL backend implements `Sink` with (loom's recorder takes them from
// `backend` itself).
#[cfg(all(feature = "postgres", not(loom)))]
pub(crate) use backend::{AppendFailed, Compacted, Facts, Write};
use batch::{Applied, Batch, Events};
#[cfg(loom)]
pub use recorder::{Recorded, Recorder};
pub(crate) use write::{compact, Behind};

/// The persister's state; [`Persister::run`] is the thread's body.
pub(crate) struct Persister {
    shared: Arc<Shared>,
    rx: Receiver<Message>,
    sink: Box<dyn Sink>,
    interval_ms: u64,
    /// Purge tokens revoked or expired this long ago once per interval (`None`: keep all).
    retention_ms: Option<u64>,
    /// Compact once the journal is larger than both the snapshot and this.
    compaction_floor: u64,
    /// Clock time of the last retention purge: the next is due `interval_ms` later, however
    /// often other changes are written meanwhile.
    last_purge_ms: u64,
    /// Clock time of the last look at the journal's size.
    last_size_check_ms: u64,
    /// Clock time of the last timed write attempt (successful or not): the next is due
    /// `interval_ms` later.
    last_attempt_ms: u64,
    /// The size of the newest snapshot.
    snapshot_len: u64,
    /// The newest sequence number given to a record (or covered by the snapshot).
    seq: u64,
    /// Tokens validations dirtied (by their `Dirty` messages) since their last write.
    used: HashSet<TokenId>,
    /// A dirty id was dropped (channel full) or a write failed: look at every token.
    scan_all: bool,
    /// The last round took usage counts (or failed to write them): the next timed round
    /// sweeps the tallies again.
    counts_waiting: bool,
    /// A change made in memory is not yet on disk (its write failed).
    definitions_pending: bool,
    /// Publishes the counters (with the `metrics` feature).
    published: Publisher,
    /// The change feed's subscribers.
    feed: std::sync::Arc<Hub>,
    /// Events of changes memory holds whose write failed: published by the write that
    /// makes them durable (`publish`).
    unpublished: Vec<ChangeEvent>,
    /// The prefix this store issues under, while no file (or the database) records it.
    unrecorded_prefix: Option<String>,
}

/// How many messages one batch takes at most, so a flood cannot starve the writes.
const MAX_BATCH: usize = 65_536;

/// Where the persister starts.
pub(crate) struct Start {
    pub(crate) interval: Duration,
    pub(crate) retention: Option<Duration>,
    pub(crate) compaction_floor: u64,
    pub(crate) snapshot_len: u64,
    pub(crate) seq: u64,
    /// The change feed's subscribers.
    pub(crate) feed: std::sync::Arc<Hub>,
    /// The prefix this store issues under, if its files do not record it yet.
    pub(crate) unrecorded_prefix: Option<String>,
}

impl Persister {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Message>,
        sink: Box<dyn Sink>,
        start: Start,
    ) -> Persister {
        let now = shared.clock.now_ms();
        Persister {
            shared,
            rx,
            sink,
            interval_ms: millis(start.interval).max(1),
            retention_ms: start.retention.map(millis),
            compaction_floor: start.compaction_floor,
            last_purge_ms: now,
            last_size_check_ms: now,
            last_attempt_ms: now,
            snapshot_len: start.snapshot_len,
            seq: start.seq,
            used: HashSet::new(),
            scan_all: false,
            counts_waiting: false,
            definitions_pending: false,
            published: Publisher::new(),
            feed: start.feed,
            unpublished: Vec::new(),
            unrecorded_prefix: start.unrecorded_prefix,
        }
    }

    /// The thread's body: handles messages until shutdown (or until every sender is gone).
    /// If handling panics (a bug, or a panicking user `Clock`), the inbox is shut for good
    /// and every waiting caller gets [`Error::PersisterDied`], none is left blocked.
    pub(crate) fn run(mut self) {
        let served = panic::catch_unwind(AssertUnwindSafe(|| self.serve()));
        if let Err(panic) = served {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic without a message");
            tracing::error!(file = %self.sink.path().display(), panic = message, "the persister thread panicked; the store can no longer write, and every change now fails");
            self.shared.inbox.die(&self.rx);
        }
        // Nothing more will be published: every feed ends once read.
        self.feed.close();
    }

    /// The message loop.
    fn serve(&mut self) {
        loop {
            let mut batch = Batch::default();
            match self.rx.recv_timeout(self.wait()) {
                Ok(message) => batch.add(message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for _ in 0..MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(message) => batch.add(message),
                    Err(_) => break,
                }
            }
            // Under loom, a planted bug's broken twin may stand in (`twins.rs`).
            #[cfg(loom)]
            let stop = self.handle_chosen(batch);
            #[cfg(not(loom))]
            let stop = self.handle(batch);
            if stop {
                return;
            }
        }
    }

    /// Whether a `last_used` or a change waits for the next timed write.
    fn waiting(&self) -> bool {
        !self.used.is_empty() || self.scan_all || self.definitions_pending || self.counts_waiting
    }

    /// How long to sleep: until the next timed write is due if something waits for one,
    /// else one interval (the journal's size and retention are checked once per interval);
    /// with the `metrics` feature, at most a second (the counters are published that often).
    fn wait(&self) -> Duration {
        let interval = Duration::from_millis(self.interval_ms).min(Publisher::MAX_WAIT);
        if !self.waiting() {
            return interval;
        }
        let due = self.last_attempt_ms.saturating_add(self.interval_ms);
        let now = self.shared.clock.now_ms();
        Duration::from_millis(due.saturating_sub(now)).min(interval)
    }

    /// Handles one batch, phase by phase; returns `true` when the persister should stop.
    fn handle(&mut self, mut batch: Batch) -> bool {
        let now = self.shared.clock.now_ms();
        self.take_dirty(&mut batch);
        let Applied {
            changes,
            pending,
            replies,
            kinds,
            events,
            records_prefix,
        } = self.apply(&mut batch, now);
        let write = self.decide(&changes, &pending, &batch, now);
        let result = self.write(write, changes, pending, now);
        if result.is_ok() {
            observe::committed(&kinds);
            if records_prefix {
                self.unrecorded_prefix = None;
            }
        }
        // Before the replies: a caller whose change is durable finds its event queued.
        self.publish(events, result.is_ok());
        // Before the replies: what a flush or close saw counted is published when it returns.
        let asked = !batch.flushes.is_empty();
        let closing = batch.shutdown.is_some();
        self.published.batch_done(&self.shared, asked, closing);
        reply::send(result, replies, batch)
    }

    /// The publish phase: once a write succeeded and memory holds no change that is not
    /// durable, the events of every change it made durable go to the feed, in order (those
    /// of changes that waited for it after a failed write first). A failed write publishes
    /// nothing: the events of the changes memory keeps wait for the write that makes them
    /// durable, and those of new tokens and rotations, which the failure dropped, are
    /// dropped too. Also queues the `Missed` counts owed where there is room now.
    fn publish(&mut self, events: Events, written: bool) {
        self.unpublished.extend(events.applied);
        if !written || self.definitions_pending {
            self.feed.publish(&[]);
            return;
        }
        self.unpublished.extend(events.pending);
        self.feed.publish(&self.unpublished);
        self.unpublished.clear();
    }

    /// Whether a flush interval has passed since `since` at `now`; a clock that went back
    /// (`now` before `since`) counts as passed, so a step back never postpones a timer.
    fn interval_passed(&self, since: u64, now: u64) -> bool {
        now >= since.saturating_add(self.interval_ms) || now < since
    }

    /// Logs and counts a failed write (`action` of the store file, as the error says it);
    /// the error to give the callers.
    fn failed(&self, error: io::Error, action: &'static str, what: &'static str) -> Error {
        let path = self.sink.path();
        tracing::error!(file = %path.display(), error = %error, "{what}");
        let error = self.sink.error(action, error);
        self.shared.counters.record_error(error.to_string());
        observe::write_failed();
        error
    }
}
