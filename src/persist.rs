//! The persister: the one thread that writes the journal and snapshots and changes the
//! token map.
//!
//! It takes messages from its [`Inbox`](crate::inbox::Inbox): dirty token ids from
//! validations (write-behind: one journal record per `flush_interval` holding the tokens
//! used since the last one, none while idle), and commands with a reply channel: issue,
//! revoke, delete, purge, rotate, rate limits (group commit: every change waiting in the
//! channel shares one journal record and one fsync, and each caller is answered only once
//! it is on disk), `flush` (a barrier), timer ticks and shutdown. All writes go through a
//! [`Sink`].
//!
//! Each batch goes through four phases: apply (changes that are safe to make in memory
//! first: revoke, rate limit, delete, purge), decide (append a record, compact, or
//! nothing), write (the new tokens join memory only once written), reply.
//!
//! Compaction writes a full snapshot covering every record so far, then starts an empty
//! journal. It runs when the journal has outgrown both the snapshot and a floor (checked
//! once per interval), on close, and instead of an append when the journal cannot be
//! trusted (an append or its fsync failed).

use std::collections::{HashMap, HashSet};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use crate::clock::millis;
use crate::entry::Entry;
use crate::error::Error;
use crate::file::{self, Appender, FaultPlan, WriteError};
use crate::inbox::{Message, Reply};
use crate::journal::{self, ChangeRef};
use crate::rate_limit::RateLimit;
use crate::snapshot::{self, BodyRef, RecordRef};
use crate::sync::channel::{Receiver, RecvTimeoutError, Sender};
use crate::sync::{Arc, Ordering};
use crate::token::TokenId;
use crate::validate::Shared;

/// Where the store's bytes go. The store's files in production; a recorder in model
/// checks; the file-writing code is the only place a test may inject a fault.
pub(crate) trait Sink: Send + 'static {
    /// Appends journal record `seq` holding `changes`, durably; returns the bytes written.
    /// After an error the journal is not trusted (see [`journal_ok`](Self::journal_ok)).
    fn append(&mut self, seq: u64, changes: &[ChangeRef<'_>]) -> io::Result<u64>;
    /// Replaces the store file with `body` (durably), then the journal with an empty one
    /// whose first record will be `body.seq + 1`.
    fn compact(&mut self, body: &BodyRef<'_, '_>) -> Result<Compacted, WriteError>;
    /// Whether the journal can take the next record: false after a failed append, until a
    /// compaction starts a fresh one.
    fn journal_ok(&self) -> bool;
    /// The journal's size in bytes.
    fn journal_len(&self) -> u64;
    /// The path to name in errors.
    fn path(&self) -> PathBuf;
    /// Whether [`compact`](Self::compact) writes every definition (a snapshot of the whole
    /// store), so a compaction can stand in for an append. A database sink says no: each
    /// change must reach it as a change (a delete is a tombstone other replicas read), so
    /// the persister never compacts instead of appending, and the sink itself keeps the
    /// changes memory already made (revoke, delete, rate limit) when an append fails and
    /// writes them first in its next append.
    fn compaction_holds_definitions(&self) -> bool {
        true
    }
    /// What a failed append was doing (as the error says it, before the path), and what
    /// the log says happens next.
    fn append_failure(&self) -> (&'static str, &'static str) {
        (
            "append to the journal of",
            "journal append failed; will write a snapshot at the next tick",
        )
    }
    /// PostgreSQL stores: whether `change`, read from the database, would undo a change
    /// memory holds and this sink has yet to write (its transaction failed): then it is
    /// not applied. A file store reads nothing back.
    #[cfg(all(feature = "postgres", not(loom)))]
    fn overrides(&self, _change: &journal::Change) -> bool {
        false
    }
}

/// What a compaction wrote.
pub(crate) struct Compacted {
    /// The snapshot's size: it is durable.
    pub(crate) snapshot_bytes: u64,
    /// The fresh journal's size, or why it could not be started (the snapshot holds every
    /// change regardless; the next write compacts again).
    pub(crate) journal: io::Result<u64>,
}

/// The production sink: the store file (replaced atomically) and its journal (appended).
pub(crate) struct FileSink {
    path: PathBuf,
    journal_path: PathBuf,
    /// `None` while the journal is not trusted.
    journal: Option<Appender>,
    /// The test seam for write faults; always `None` unless a test set one.
    faults: Option<FaultPlan>,
    /// Reused for each record's bytes.
    buffer: Vec<u8>,
}

impl FileSink {
    /// A sink for store `path`; `journal` is its journal open for appending, if trusted.
    pub(crate) fn new(path: PathBuf, journal: Option<Appender>, faults: Option<FaultPlan>) -> Self {
        FileSink {
            journal_path: file::journal_path(&path),
            path,
            journal,
            faults,
            buffer: Vec::new(),
        }
    }
}

impl Sink for FileSink {
    fn append(&mut self, seq: u64, changes: &[ChangeRef<'_>]) -> io::Result<u64> {
        let Some(journal) = self.journal.as_mut() else {
            return Err(io::Error::other("the journal is not open"));
        };
        self.buffer.clear();
        let encoded = journal::encode_record(seq, changes, &mut self.buffer);
        let written = encoded.and_then(|()| journal.append(&self.buffer, self.faults.as_ref()));
        if written
            .as_ref()
            .is_err_and(|e| !journal::RecordTooLarge::is(e))
        {
            // Never trusted again: a retried fsync can report success for lost pages.
            self.journal = None;
        }
        let len = self.buffer.len() as u64;
        // A rare huge record (issue_many) should not pin its memory.
        if self.buffer.capacity() > 1 << 20 {
            self.buffer = Vec::new();
        }
        written.map(|()| len)
    }

    fn compact(&mut self, body: &BodyRef<'_, '_>) -> Result<Compacted, WriteError> {
        let image = snapshot::encode(body);
        file::write_atomic(
            &self.path,
            &image,
            self.faults.as_ref(),
            &file::SNAPSHOT_STEPS,
        )?;
        let snapshot_bytes = image.len() as u64;
        drop(image);
        self.journal = None;
        let journal = Appender::reset(&self.journal_path, body.seq, self.faults.as_ref())
            .map(|appender| {
                let len = appender.len();
                self.journal = Some(appender);
                len
            })
            .map_err(|e| e.error);
        Ok(Compacted {
            snapshot_bytes,
            journal,
        })
    }

    fn journal_ok(&self) -> bool {
        self.journal.is_some()
    }

    fn journal_len(&self) -> u64 {
        self.journal.as_ref().map_or(0, Appender::len)
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}

/// Model checks only: a [`Sink`] that keeps what the files would hold after each write
/// (the last snapshot with every journal record since applied) instead of writing them, so
/// loom models do no I/O and can assert on what is "on disk" after every write.
#[cfg(loom)]
#[derive(Clone)]
pub struct Recorder {
    written: Arc<crate::sync::Mutex<Vec<Recorded>>>,
    /// Records appended since the last compaction: the journal's "length" (the persister's
    /// copy counts; compaction runs once it passes the store's floor).
    records: u64,
}

/// Model checks only: what the files held after one write, as the [`Recorder`] saw it.
#[cfg(loom)]
#[derive(Debug, Clone)]
pub struct Recorded {
    tokens: Vec<(TokenId, Option<u64>, Option<u64>)>,
    /// Whether this write was a compaction (a snapshot), not a journal record.
    compaction: bool,
}

#[cfg(loom)]
impl Recorded {
    /// Whether the snapshot holds the token.
    pub fn contains(&self, id: TokenId) -> bool {
        self.tokens.iter().any(|(t, _, _)| *t == id)
    }

    /// The token's `last_used` in this snapshot (`None`: never used, or not in it).
    pub fn last_used(&self, id: TokenId) -> Option<u64> {
        self.tokens
            .iter()
            .find(|(t, _, _)| *t == id)
            .and_then(|t| t.1)
    }

    /// Whether the snapshot holds the token as revoked.
    pub fn revoked(&self, id: TokenId) -> bool {
        self.tokens.iter().any(|(t, _, r)| *t == id && r.is_some())
    }

    /// Whether this write was a compaction (a snapshot), not a journal record.
    pub fn is_compaction(&self) -> bool {
        self.compaction
    }
}

#[cfg(loom)]
impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            written: Arc::new(crate::sync::Mutex::new(Vec::new())),
            records: 0,
        }
    }
}

#[cfg(loom)]
impl Recorder {
    /// What the files held after each write so far, oldest first.
    pub fn snapshots(&self) -> Vec<Recorded> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What the files hold now.
    pub fn last(&self) -> Option<Recorded> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
}

#[cfg(loom)]
impl Recorder {
    /// Records the state after a write: `change` applied to the newest state.
    fn record(
        &self,
        compaction: bool,
        change: impl FnOnce(&mut Vec<(TokenId, Option<u64>, Option<u64>)>),
    ) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let mut tokens = written.last().map(|r| r.tokens.clone()).unwrap_or_default();
        change(&mut tokens);
        written.push(Recorded { tokens, compaction });
    }
}

#[cfg(loom)]
impl Sink for Recorder {
    fn append(&mut self, _seq: u64, changes: &[ChangeRef<'_>]) -> io::Result<u64> {
        let id_of = |id: [u8; 8]| TokenId::from_bytes(id).ok_or(io::ErrorKind::InvalidData);
        let mut parsed = Vec::with_capacity(changes.len());
        for change in changes {
            parsed.push(match change {
                ChangeRef::Issue(r) => (id_of(r.id)?, Some((r.last_used, r.revoked_at))),
                ChangeRef::Revoke { id, at } => (id_of(*id)?, Some((None, Some(*at)))),
                ChangeRef::Delete { id } => (id_of(*id)?, None),
                ChangeRef::Used { id, at } => (id_of(*id)?, Some((Some(*at), None))),
                ChangeRef::SetRateLimit { id, .. } | ChangeRef::Expire { id, .. } => {
                    (id_of(*id)?, Some((None, None)))
                }
            });
        }
        self.records += 1;
        self.record(false, |tokens| {
            for (change, (id, what)) in changes.iter().zip(parsed) {
                let at = tokens.iter().position(|t| t.0 == id);
                match (change, at, what) {
                    (ChangeRef::Issue(_), None, Some((used, revoked))) => {
                        tokens.push((id, used, revoked))
                    }
                    (ChangeRef::Delete { .. }, Some(at), _) => {
                        tokens.remove(at);
                    }
                    (_, Some(at), Some((used, revoked))) => {
                        let token = &mut tokens[at];
                        token.1 = token.1.max(used);
                        token.2 = token.2.or(revoked);
                    }
                    _ => {}
                }
            }
        });
        Ok(0)
    }

    fn compact(&mut self, body: &BodyRef<'_, '_>) -> Result<Compacted, WriteError> {
        let tokens = body.records.iter().map(|r| {
            let id = TokenId::from_bytes(r.id).ok_or(io::ErrorKind::InvalidData)?;
            Ok((id, r.last_used, r.revoked_at))
        });
        let tokens = tokens.collect::<io::Result<Vec<_>>>()?;
        self.records = 0;
        self.record(true, |state| *state = tokens);
        Ok(Compacted {
            snapshot_bytes: 0,
            journal: Ok(0),
        })
    }

    fn journal_ok(&self) -> bool {
        true
    }

    fn journal_len(&self) -> u64 {
        journal::HEADER_LEN as u64 + self.records
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("<loom recorder>")
    }
}

/// Messages handled together: every reply waits for the one write they share.
#[derive(Default)]
struct Batch {
    dirty: Vec<TokenId>,
    issues: Vec<(Vec<Entry>, Reply)>,
    revokes: Vec<(TokenId, Reply)>,
    rate_limits: Vec<(TokenId, Option<RateLimit>, Reply)>,
    deletes: Vec<(TokenId, Reply)>,
    purges: Vec<(u64, Reply)>,
    rotations: Vec<(TokenId, u64, Box<Entry>, Reply)>,
    flushes: Vec<Reply>,
    ticks: Vec<Sender<()>>,
    shutdown: Option<Reply>,
    /// Rows other replicas committed, with the time of the catch-up that read them.
    #[cfg(all(feature = "postgres", not(loom)))]
    remote: Vec<(Vec<journal::Change>, u64)>,
}

impl Batch {
    fn add(&mut self, message: Message) {
        match message {
            Message::Dirty(id) => {
                tracing::trace!(%id, "token dirty");
                self.dirty.push(id);
            }
            Message::Issue(entries, reply) => self.issues.push((entries, reply)),
            Message::Revoke(id, reply) => self.revokes.push((id, reply)),
            Message::SetRateLimit(id, limit, reply) => self.rate_limits.push((id, limit, reply)),
            Message::Delete(id, reply) => self.deletes.push((id, reply)),
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
            Message::Remote(changes, at) => self.remote.push((changes, at)),
        }
    }
}

/// What the apply phase leaves for the write and reply phases.
#[derive(Default)]
struct Applied {
    /// Changes made in memory (revoke, limit, delete, purge), for the journal record.
    changes: Vec<ChangeRef<'static>>,
    /// What joins memory only once it is on disk.
    pending: Pending,
    /// Callers waiting for the write, each with its count.
    replies: Vec<(Reply, usize)>,
}

/// Changes that memory takes only after the write that holds them succeeds, so a failed
/// write leaves no trace of them: new tokens, and expiries that `rotate` shortens.
#[derive(Default)]
struct Pending {
    issues: Vec<Entry>,
    expiries: Vec<(TokenId, u64)>,
}

/// What the decide phase chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Nothing to write.
    Nothing,
    /// One journal record: the batch's changes, and `last_used` of the tokens used since
    /// the last write if `used` (scanning every token if `scan`).
    Append { used: bool, scan: bool },
    /// A snapshot of everything, then a fresh journal.
    Compact,
}

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
    /// A change made in memory is not yet on disk (its write failed).
    definitions_pending: bool,
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
            definitions_pending: false,
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
            if self.handle(batch) {
                return;
            }
        }
    }

    /// Whether a `last_used` or a change waits for the next timed write.
    fn waiting(&self) -> bool {
        !self.used.is_empty() || self.scan_all || self.definitions_pending
    }

    /// How long to sleep: until the next timed write is due if something waits for one,
    /// else one interval (the journal's size and retention are checked once per interval).
    fn wait(&self) -> Duration {
        let interval = Duration::from_millis(self.interval_ms);
        if !self.waiting() {
            return interval;
        }
        let due = self.last_attempt_ms.saturating_add(self.interval_ms);
        let now = self.shared.clock.now_ms();
        Duration::from_millis(due.saturating_sub(now)).min(interval)
    }

    /// Handles one batch; returns `true` when the persister should stop.
    fn handle(&mut self, mut batch: Batch) -> bool {
        // Planted bug (loom twin only): shutting down without writing what is pending.
        #[cfg(loom)]
        if crate::sync::bug::planted(crate::sync::bug::Bug::ShutdownSkipsWrite) {
            if let Some(reply) = batch.shutdown.take() {
                let _ = reply.send(Ok(0));
                return true;
            }
        }
        let now = self.shared.clock.now_ms();
        // Relaxed: the flag is a hint that ids were dropped; the scan reads every entry
        // through its own Acquire protocol.
        let overflowed = self.shared.overflow.swap(false, Ordering::Relaxed);
        // Planted bug (loom twin only): an id refused by a full channel is forgotten.
        #[cfg(loom)]
        let overflowed =
            overflowed && !crate::sync::bug::planted(crate::sync::bug::Bug::IgnoreOverflow);
        self.scan_all |= overflowed;
        self.used.extend(batch.dirty.drain(..));

        // Planted bug (loom twin only): revokes and deletes answered before memory changes.
        #[cfg(loom)]
        if crate::sync::bug::planted(crate::sync::bug::Bug::ChangeAfterReply) {
            self.change_after_reply(&mut batch, now);
        }
        let Applied {
            changes,
            pending,
            replies,
        } = self.apply(&mut batch, now);
        let write = self.decide(&changes, &pending, &batch, now);
        // Planted bug (loom twin only): answering callers before their write.
        #[cfg(loom)]
        let acked_early = crate::sync::bug::planted(crate::sync::bug::Bug::AckBeforeWrite);
        #[cfg(loom)]
        let mut replies = replies;
        #[cfg(loom)]
        if acked_early {
            // (Planted bug: answered now, so the reply phase below no longer holds them.)
            let early = replies.drain(..).map(|(reply, _)| reply);
            for reply in early.chain(batch.flushes.drain(..)) {
                let _ = reply.send(Ok(0));
            }
        }
        let changed_memory = !changes.is_empty();
        let result = match write {
            Write::Nothing => Ok(()),
            Write::Append { used, scan } => self.append(changes, pending, used, scan, now),
            Write::Compact => self.compact(pending, now),
        };
        if changed_memory && result.is_err() {
            // Written by the next due tick (a failing disk is not hammered on every message).
            self.definitions_pending = true;
        }

        let stop = batch.shutdown.is_some();
        let counted = replies.into_iter();
        let plain = batch
            .flushes
            .into_iter()
            .chain(batch.shutdown)
            .map(|reply| (reply, 0));
        for (reply, count) in counted.chain(plain) {
            let _ = reply.send(result.clone().map(|()| count));
        }
        for ack in batch.ticks {
            let _ = ack.send(());
        }
        stop
    }

    /// Whether a flush interval has passed since `since` at `now`; a clock that went back
    /// (`now` before `since`) counts as passed, so a step back never postpones a timer.
    fn interval_passed(&self, since: u64, now: u64) -> bool {
        now >= since.saturating_add(self.interval_ms) || now < since
    }

    /// The apply phase. Revokes, rate limits, deletes and purges take effect in memory at
    /// once (the safe side: a revoked or deleted token is refused from now on, even if the
    /// write fails, and the next tick retries it). New tokens and rotations wait in
    /// `pending` for the write. Requests for an unknown id are answered here.
    fn apply(&mut self, batch: &mut Batch, now: u64) -> Applied {
        let mut applied = Applied::default();
        #[cfg(all(feature = "postgres", not(loom)))]
        self.apply_remote(batch);
        let map = &self.shared.map;
        for (id, reply) in batch.revokes.drain(..) {
            let at = map.with(&id, |e| {
                e.revoke(now);
                e.revoked_at().unwrap_or(now)
            });
            applied.answer(
                reply,
                id,
                at.map(|at| ChangeRef::Revoke {
                    id: id.to_bytes(),
                    at,
                }),
            );
        }
        for (id, limit, reply) in batch.rate_limits.drain(..) {
            let found = map.with(&id, |e| e.set_rate_limit(limit)).is_some();
            let change = ChangeRef::SetRateLimit {
                id: id.to_bytes(),
                limit: limit.map(RateLimit::to_record),
            };
            applied.answer(reply, id, found.then_some(change));
        }
        for (id, reply) in batch.deletes.drain(..) {
            let change = ChangeRef::Delete { id: id.to_bytes() };
            applied.answer(reply, id, map.remove(&id).then_some(change));
        }
        for (cutoff, reply) in batch.purges.drain(..) {
            let purged = self.purge(cutoff, &mut applied.changes);
            applied.replies.push((reply, purged));
        }
        let purge_due = self.interval_passed(self.last_purge_ms, now);
        if let (true, Some(retention)) = (purge_due, self.retention_ms) {
            self.last_purge_ms = now;
            let purged = self.purge(now.saturating_sub(retention), &mut applied.changes);
            if purged > 0 {
                tracing::info!(purged, "retention purged revoked and expired tokens");
            }
        }
        let mut taken = HashSet::new();
        for (entries, reply) in batch.issues.drain(..) {
            if let Some(id) = self.collision(&entries, &mut taken) {
                let _ = reply.send(Err(drawn_twice(id)));
                continue;
            }
            applied.pending.issues.extend(entries);
            applied.replies.push((reply, 1));
        }
        for (old, until, new, reply) in batch.rotations.drain(..) {
            // Checked again here: a revoke may have been applied since the caller looked.
            match map.with(&old, |e| crate::request::refuse_rotation(e, now)) {
                None => {
                    let _ = reply.send(Err(Error::UnknownId(old)));
                    continue;
                }
                Some(Err(refusal)) => {
                    let _ = reply.send(Err(refusal));
                    continue;
                }
                Some(Ok(())) => {}
            }
            let new = vec![*new];
            if let Some(id) = self.collision(&new, &mut taken) {
                let _ = reply.send(Err(drawn_twice(id)));
                continue;
            }
            applied.pending.issues.extend(new);
            applied.pending.expiries.push((old, until));
            applied.replies.push((reply, 1));
        }
        applied
    }

    /// PostgreSQL stores: applies what other replicas committed (as journal replay does;
    /// this replica's own changes come back too, and change nothing), then notes how
    /// current memory is.
    #[cfg(all(feature = "postgres", not(loom)))]
    fn apply_remote(&mut self, batch: &mut Batch) {
        for (changes, at) in batch.remote.drain(..) {
            for change in changes {
                if self.sink.overrides(&change) {
                    continue;
                }
                if let Err(problem) = crate::recover::apply_change(&self.shared.map, change) {
                    tracing::error!(store = %self.sink.path().display(), %problem, "a row in the database cannot be loaded; skipped");
                }
            }
            let counters = &self.shared.counters;
            counters
                .last_sync_at
                .fetch_max(at, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Broken twin of the revoke and delete steps of [`apply`](Self::apply) (loom only):
    /// each caller is answered first and memory changes after, so a validation that starts
    /// once the call returned can still accept the token.
    #[cfg(loom)]
    fn change_after_reply(&self, batch: &mut Batch, now: u64) {
        let map = &self.shared.map;
        for (id, reply) in batch.revokes.drain(..) {
            let _ = reply.send(Ok(1));
            map.with(&id, |e| e.revoke(now));
        }
        for (id, reply) in batch.deletes.drain(..) {
            let _ = reply.send(Ok(1));
            map.remove(&id);
        }
    }

    /// The decide phase: append the batch's changes (with `last_used` if a timed write is
    /// due or a flush or close asks), compact, or nothing.
    ///
    /// For a file store the rule that keeps the files equal to memory: while memory holds a
    /// change that is not on disk (`definitions_pending`: its write failed) or the journal
    /// is not trusted (an append or its fsync failed), every write that happens is a
    /// compaction, and close always writes one. So a revoke or delete that memory applied
    /// before its write failed reaches disk with the next write of any kind, and a record
    /// whose fsync failed (possibly on disk, never acknowledged) is covered by the
    /// snapshot's `seq` and never replayed once the store has written again.
    fn decide(
        &mut self,
        changes: &[ChangeRef<'_>],
        pending: &Pending,
        batch: &Batch,
        now: u64,
    ) -> Write {
        let definitions = !changes.is_empty() || !pending.issues.is_empty();
        let due = self.interval_passed(self.last_attempt_ms, now);
        let size_check_due = self.interval_passed(self.last_size_check_ms, now);
        if size_check_due {
            self.last_size_check_ms = now;
        }
        let has_records = self.sink.journal_len() > journal::HEADER_LEN as u64;
        let outgrown =
            has_records && self.sink.journal_len() > self.snapshot_len.max(self.compaction_floor);
        let flush_asked = !batch.flushes.is_empty();
        // Planted bug (loom twin only): a flush that trusts `Dirty` messages over the scan.
        #[cfg(loom)]
        let flush_scans =
            flush_asked && !crate::sync::bug::planted(crate::sync::bug::Bug::FlushTrustsMessages);
        #[cfg(not(loom))]
        let flush_scans = flush_asked;
        let closing = batch.shutdown.is_some();
        if self.sink.compaction_holds_definitions() {
            let behind = self.definitions_pending || !self.sink.journal_ok();
            let writing = definitions || flush_asked || (due && self.waiting());
            let compact = (closing
                && (behind || has_records || definitions || self.unsaved_anywhere()))
                || (size_check_due && outgrown)
                || (behind && writing);
            if compact {
                return Write::Compact;
            }
        }
        // A database sink retries its failed changes in the next append.
        let resend = !self.sink.compaction_holds_definitions()
            && self.definitions_pending
            && (due || closing || flush_asked);
        let used = (due && self.waiting()) || flush_asked || closing;
        let scan =
            self.scan_all || flush_scans || (closing && !self.sink.compaction_holds_definitions());
        if definitions || resend || (used && (scan || !self.used.is_empty())) {
            Write::Append { used, scan }
        } else {
            Write::Nothing
        }
    }

    /// Whether any token's `last_used` differs from the one on disk (a scan, for `close`).
    fn unsaved_anywhere(&self) -> bool {
        self.shared
            .map
            .with_all(|entries| entries.iter().any(|e| e.unsaved()))
    }

    /// Deletes every token revoked or expired at or before `cutoff` (Unix ms), noting each
    /// in `changes`; returns how many.
    fn purge(&self, cutoff: u64, changes: &mut Vec<ChangeRef<'static>>) -> usize {
        let map = &self.shared.map;
        let old = |at: Option<u64>| at.is_some_and(|at| at <= cutoff);
        let doomed: Vec<TokenId> = map.with_all(|entries| {
            entries
                .iter()
                .filter(|e| old(e.revoked_at()) || old(e.expires_at()))
                .map(|e| e.id)
                .collect()
        });
        let before = changes.len();
        changes.extend(
            doomed
                .iter()
                .filter(|id| map.remove(id))
                .map(|id| ChangeRef::Delete { id: id.to_bytes() }),
        );
        changes.len() - before
    }

    /// The first id among `entries` that is already taken (in the map, or earlier in this
    /// batch). Ids are 47 random bits and `issue` pre-checks the map, so this guards
    /// against two concurrent requests drawing the same id; it is not a normal path.
    fn collision(&self, entries: &[Entry], taken: &mut HashSet<TokenId>) -> Option<TokenId> {
        let clash = entries
            .iter()
            .find(|e| self.shared.map.contains(&e.id) || taken.contains(&e.id))
            .map(|e| e.id);
        if clash.is_none() {
            taken.extend(entries.iter().map(|e| e.id));
        }
        clash
    }

    /// `last_used` of every token used since its last write: `(id, time)` for each whose
    /// time differs from the one on disk. Looks at the tokens whose `Dirty` messages
    /// arrived, or at every token if `scan`.
    fn take_used(&mut self, scan: bool) -> Vec<(TokenId, u64)> {
        let take = |e: &Entry| {
            let used = e.take_for_snapshot();
            (used != e.persisted_last_used()).then_some((e.id, used))
        };
        let map = &self.shared.map;
        let taken = if scan {
            self.used.clear();
            map.with_all(|entries| entries.iter().filter_map(|e| take(e)).collect())
        } else {
            let ids = self.used.drain();
            ids.filter_map(|id| map.with(&id, take).flatten()).collect()
        };
        self.scan_all = false;
        taken
    }

    /// The write phase of an append: one journal record holding `changes`, the pending
    /// ones, and `last_used` if `used`. On success the pending changes join memory.
    fn append(
        &mut self,
        changes: Vec<ChangeRef<'static>>,
        pending: Pending,
        used: bool,
        scan: bool,
        now: u64,
    ) -> Result<(), Error> {
        let taken = if used {
            self.take_used(scan)
        } else {
            Vec::new()
        };
        if used {
            self.last_attempt_ms = now;
        }
        let mut changes: Vec<ChangeRef<'_>> = changes;
        changes.extend(pending.issues.iter().map(|e| ChangeRef::Issue(e.record(0))));
        changes.extend(pending.expiries.iter().map(|&(id, at)| ChangeRef::Expire {
            id: id.to_bytes(),
            at,
        }));
        changes.extend(taken.iter().map(|&(id, at)| ChangeRef::Used {
            id: id.to_bytes(),
            at,
        }));
        // A database sink holding failed changes writes them even with nothing new.
        let resend = self.definitions_pending && !self.sink.compaction_holds_definitions();
        if changes.is_empty() && !resend {
            return Ok(());
        }
        // Files refuse a number above `MAX_SEQ`, so the store never writes one.
        let next = self.seq.checked_add(1).filter(|&s| s <= snapshot::MAX_SEQ);
        let Some(seq) = next else {
            let error = io::Error::other("the journal's sequence numbers are used up");
            return Err(self.failed(error, "append to the journal of", "cannot number a record"));
        };
        let written = self.sink.append(seq, &changes);
        drop(changes);
        let map = &self.shared.map;
        match written {
            Ok(bytes) => {
                self.seq = seq;
                for &(id, at) in &taken {
                    map.with(&id, |e| e.mark_persisted(at));
                }
                self.join(pending);
                self.shared.counters.record_append(bytes);
                if !self.sink.compaction_holds_definitions() {
                    // The append wrote the changes the sink held from failed ones first.
                    self.definitions_pending = false;
                }
                Ok(())
            }
            Err(error) if journal::RecordTooLarge::is(&error) => {
                // Nothing was written, so the number stays free (a gap would make `open`
                // refuse the journal) and the journal stays trusted: a snapshot holds a
                // batch of any size. The taken times are in memory, which it writes.
                self.compact(pending, now)
            }
            Err(error) => {
                // The record may be on disk: its number is spent, and the next write is a
                // compaction whose snapshot covers it, so it is never replayed (the journal
                // is not trusted again). Nothing is lost: the taken tokens are dirty again.
                // Pending changes are dropped with their error.
                self.seq = seq;
                for &(id, _) in &taken {
                    map.with(&id, |e| e.mark_dirty());
                    self.used.insert(id);
                }
                let (action, what) = self.sink.append_failure();
                Err(self.failed(error, action, what))
            }
        }
    }

    /// The write phase of a compaction: a snapshot of every entry plus what is pending,
    /// covering every record so far, then a fresh journal. On success (or once the new
    /// file replaced the old one) the pending changes join memory.
    fn compact(&mut self, pending: Pending, now: u64) -> Result<(), Error> {
        let shared = self.shared.clone();
        shared
            .map
            .with_all(|entries| self.write_snapshot(entries, pending, now))
    }

    fn write_snapshot(
        &mut self,
        entries: &[&Entry],
        pending: Pending,
        now: u64,
    ) -> Result<(), Error> {
        let taken: Vec<u64> = entries.iter().map(|e| e.take_for_snapshot()).collect();
        self.used.clear();
        self.scan_all = false;
        // Two rotations of one token in a batch: the earlier expiry wins, as it does in
        // memory (`shorten_expiry`), so the file says what memory says.
        let mut expiries: HashMap<TokenId, u64> = HashMap::new();
        for &(id, until) in &pending.expiries {
            let at = expiries.entry(id).or_insert(until);
            *at = (*at).min(until);
        }
        let mut records: Vec<RecordRef<'_>> = entries
            .iter()
            .zip(&taken)
            .map(|(e, &lu)| with_expiry(e.record(lu), expiries.get(&e.id)))
            .collect();
        records.extend(pending.issues.iter().map(|e| e.record(0)));
        self.last_attempt_ms = now;
        let written = self.sink.compact(&BodyRef {
            written_at: now,
            seq: self.seq,
            records: &records,
        });
        drop(records);
        match written {
            Ok(compacted) => {
                self.written(entries, &taken, pending, compacted.snapshot_bytes, now);
                match compacted.journal {
                    Ok(bytes) => self.shared.counters.record_compaction_bytes(bytes),
                    Err(error) => {
                        // Every change is in the snapshot; only the next write pays: it
                        // compacts again.
                        let _ = self.failed(error, "start a fresh journal beside", "the snapshot is written, but starting a fresh journal failed; the next write compacts again");
                    }
                }
                Ok(())
            }
            Err(WriteError { error, replaced }) => {
                // The callers hear the error, so what they asked for (new tokens, shortened
                // expiries) does not join memory, and every entry whose last_used may not be
                // on disk stays dirty. If the new file already replaced the store file (only
                // its directory's fsync failed), it may hold what memory lacks, and its
                // rename may not survive a power loss: the next write of any kind compacts
                // again, so nothing refused outlives it.
                for entry in entries.iter().filter(|e| e.unsaved()) {
                    entry.mark_dirty();
                }
                self.scan_all = true;
                let what = if replaced.is_some() {
                    self.definitions_pending = true;
                    "the snapshot replaced the store file, but syncing its directory failed; the next write compacts again"
                } else {
                    "snapshot write failed; will retry at the next tick"
                };
                Err(self.failed(error, "write a snapshot to", what))
            }
        }
    }

    /// After the store file took a snapshot of `entries` (with `last_used` as `taken`) and
    /// the pending changes: memory says so.
    fn written(
        &mut self,
        entries: &[&Entry],
        taken: &[u64],
        pending: Pending,
        bytes: u64,
        now: u64,
    ) {
        for (entry, &lu) in entries.iter().zip(taken) {
            // Planted bug (loom twin only): memory's newest time is taken as written, though
            // a validation may have set it after the snapshot read it.
            #[cfg(loom)]
            if crate::sync::bug::planted(crate::sync::bug::Bug::PersistedFromMemory) {
                entry.mark_persisted(entry.last_used().unwrap_or(0));
                continue;
            }
            entry.mark_persisted(lu);
        }
        self.join(pending);
        self.snapshot_len = bytes;
        self.definitions_pending = false;
        self.shared.counters.record_compaction(bytes, now);
    }

    /// The pending changes join memory: their write succeeded.
    fn join(&self, pending: Pending) {
        let map = &self.shared.map;
        for (id, until) in pending.expiries {
            map.with(&id, |e| e.shorten_expiry(until));
        }
        let added = map.insert_new(pending.issues);
        // `collision` kept only ids that are not in the map.
        debug_assert!(added.is_ok(), "collision let a taken id through");
    }

    /// Logs and counts a failed write (`action` of the store file, as the error says it);
    /// the error to give the callers.
    fn failed(&self, error: io::Error, action: &'static str, what: &'static str) -> Error {
        let path = self.sink.path();
        tracing::error!(file = %path.display(), error = %error, "{what}");
        let error = Error::io(action, path, error);
        self.shared.counters.record_error(error.to_string());
        error
    }
}

impl Applied {
    /// A request for `id`: waits for the write if the id was found (`change` says what
    /// changed), else is refused now.
    fn answer(&mut self, reply: Reply, id: TokenId, change: Option<ChangeRef<'static>>) {
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

/// `record` with its expiry shortened to `until`, if `rotate` asked for that.
fn with_expiry<'a>(mut record: RecordRef<'a>, until: Option<&u64>) -> RecordRef<'a> {
    if let Some(&until) = until {
        record.expires_at = Some(record.expires_at.map_or(until, |at| at.min(until)));
    }
    record
}

fn drawn_twice(id: TokenId) -> Error {
    Error::InvalidRequest(format!("token id {id} was drawn twice; issue again"))
}
