//! The persister: the one thread that writes snapshots and changes the token map.
//!
//! It takes messages from its [`Inbox`](crate::inbox::Inbox): dirty token ids from
//! validations (write-behind: a snapshot at most once per `flush_interval`, none while
//! nothing changed), and commands with a reply channel: issue, revoke, delete, purge,
//! rotate, rate limits (group commit: every change waiting in the channel shares one write,
//! and each caller is answered only once it is on disk), `flush` (a barrier), timer ticks
//! and shutdown. All snapshot writes go through a [`Sink`].
//!
//! Each batch goes through four phases: apply (changes that are safe to make in memory
//! first: revoke, rate limit, delete, purge), decide (whether and why to write), write (a
//! snapshot of memory plus the new tokens, which join memory only once written), reply.

use std::collections::{HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use crate::clock::millis;
use crate::entry::Entry;
use crate::error::Error;
use crate::file::{self, FaultPlan, WriteError};
use crate::inbox::{Message, Reply};
use crate::rate_limit::RateLimit;
use crate::snapshot::{self, BodyRef, RecordRef};
use crate::store::Shared;
use crate::sync::channel::{Receiver, RecvTimeoutError, Sender};
use crate::sync::{Arc, Ordering};
use crate::token::TokenId;

/// Where snapshots go. The store file in production; a recorder in model checks; the
/// file-writing code is the only place a test may inject a fault.
pub(crate) trait Sink: Send + 'static {
    /// Writes `body` durably and returns the bytes written.
    fn write(&mut self, body: &BodyRef<'_, '_>) -> Result<u64, WriteError>;
    /// The path to name in errors.
    fn path(&self) -> PathBuf;
}

/// The production sink: atomic replace of the store file.
pub(crate) struct FileSink {
    pub(crate) path: PathBuf,
    /// The test seam for write faults; always `None` unless a test set one.
    pub(crate) faults: Option<FaultPlan>,
}

impl Sink for FileSink {
    fn write(&mut self, body: &BodyRef<'_, '_>) -> Result<u64, WriteError> {
        let image = snapshot::encode(body);
        file::write_atomic(&self.path, &image, self.faults.as_ref())?;
        Ok(image.len() as u64)
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}

/// Model checks only: a [`Sink`] that keeps what each snapshot held instead of writing a
/// file, so loom models do no I/O and can assert on every snapshot "written".
#[cfg(loom)]
#[derive(Clone)]
pub struct Recorder {
    written: Arc<crate::sync::Mutex<Vec<Recorded>>>,
}

/// Model checks only: one snapshot as the [`Recorder`] saw it.
#[cfg(loom)]
#[derive(Debug, Clone)]
pub struct Recorded {
    tokens: Vec<(TokenId, Option<u64>, Option<u64>)>,
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
}

#[cfg(loom)]
impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            written: Arc::new(crate::sync::Mutex::new(Vec::new())),
        }
    }
}

#[cfg(loom)]
impl Recorder {
    /// Every snapshot written so far, oldest first.
    pub fn snapshots(&self) -> Vec<Recorded> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The newest snapshot written so far.
    pub fn last(&self) -> Option<Recorded> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
}

#[cfg(loom)]
impl Sink for Recorder {
    fn write(&mut self, body: &BodyRef<'_, '_>) -> Result<u64, WriteError> {
        let tokens = body.records.iter().map(|r| {
            let id = TokenId::from_bytes(r.id).ok_or(std::io::ErrorKind::InvalidData)?;
            Ok((id, r.last_used, r.revoked_at))
        });
        let tokens = tokens.collect::<std::io::Result<Vec<_>>>()?;
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Recorded { tokens });
        Ok(0)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("<loom recorder>")
    }
}

/// Messages handled together: every reply waits for the one write they share.
#[derive(Default)]
struct Batch {
    dirty: bool,
    issues: Vec<(Vec<Entry>, Reply)>,
    revokes: Vec<(TokenId, Reply)>,
    rate_limits: Vec<(TokenId, Option<RateLimit>, Reply)>,
    deletes: Vec<(TokenId, Reply)>,
    purges: Vec<(u64, Reply)>,
    rotations: Vec<(TokenId, u64, Box<Entry>, Reply)>,
    flushes: Vec<Reply>,
    ticks: Vec<Sender<()>>,
    shutdown: Option<Reply>,
}

impl Batch {
    fn add(&mut self, message: Message) {
        match message {
            Message::Dirty(id) => {
                tracing::trace!(%id, "token dirty");
                self.dirty = true;
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
        }
    }
}

/// What the apply phase leaves for the write and reply phases.
#[derive(Default)]
struct Applied {
    /// A change was made in memory (revoke, limit, delete, purge): the file must follow.
    changed_memory: bool,
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

impl Pending {
    fn is_empty(&self) -> bool {
        self.issues.is_empty() && self.expiries.is_empty()
    }
}

/// Why a snapshot is being considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A definition changed: write even if no `last_used` did.
    Always,
    /// Write if any `last_used` differs from the file.
    IfChanged,
}

/// The persister's state; [`Persister::run`] is the thread's body.
pub(crate) struct Persister {
    shared: Arc<Shared>,
    rx: Receiver<Message>,
    sink: Box<dyn Sink>,
    interval_ms: u64,
    /// Purge tokens revoked or expired this long ago once per interval (`None`: keep all).
    retention_ms: Option<u64>,
    /// Clock time of the last retention purge: the next is due `interval_ms` later, however
    /// often other changes are written meanwhile.
    last_purge_ms: u64,
    /// Clock time of the last write attempt (successful or not): the next timed snapshot
    /// is due `interval_ms` later.
    last_attempt_ms: u64,
    /// Some validation dirtied a token since the last successful snapshot.
    dirty: bool,
    /// A change made in memory is not yet on disk (its write failed).
    definitions_pending: bool,
}

/// How many messages one batch takes at most, so a flood cannot starve the writes.
const MAX_BATCH: usize = 65_536;

impl Persister {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Message>,
        sink: Box<dyn Sink>,
        interval: Duration,
        retention: Option<Duration>,
    ) -> Persister {
        let now = shared.clock.now_ms();
        Persister {
            shared,
            rx,
            sink,
            interval_ms: millis(interval).max(1),
            retention_ms: retention.map(millis),
            last_purge_ms: now,
            last_attempt_ms: now,
            dirty: false,
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

    /// How long to sleep: until the next snapshot is due if something is waiting for one.
    fn wait(&self) -> Duration {
        let interval = Duration::from_millis(self.interval_ms);
        if !self.dirty && !self.definitions_pending {
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
        // Relaxed: the flag is a hint that ids were dropped; the snapshot scan reads every
        // entry through its own Acquire protocol.
        let overflowed = self.shared.overflow.swap(false, Ordering::Relaxed);
        // Planted bug (loom twin only): an id refused by a full channel is forgotten.
        #[cfg(loom)]
        let overflowed =
            overflowed && !crate::sync::bug::planted(crate::sync::bug::Bug::IgnoreOverflow);
        self.dirty |= batch.dirty || overflowed;
        let due = self.interval_passed(self.last_attempt_ms, now);

        // Planted bug (loom twin only): revokes and deletes answered before memory changes.
        #[cfg(loom)]
        if crate::sync::bug::planted(crate::sync::bug::Bug::ChangeAfterReply) {
            self.change_after_reply(&mut batch, now);
        }
        let applied = self.apply(&mut batch, now);
        let need = self.decide(&applied, &batch, due);
        let Applied {
            changed_memory,
            pending,
            replies,
        } = applied;
        // Planted bug (loom twin only): answering callers before their snapshot is written.
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
        let result = match need {
            Some(need) => self.snapshot(need, pending, now),
            None => Ok(()),
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
        let map = &self.shared.map;
        for (id, reply) in batch.revokes.drain(..) {
            applied.answer(reply, id, map.with(&id, |e| e.revoke(now)).is_some());
        }
        for (id, limit, reply) in batch.rate_limits.drain(..) {
            let found = map.with(&id, |e| e.set_rate_limit(limit)).is_some();
            applied.answer(reply, id, found);
        }
        for (id, reply) in batch.deletes.drain(..) {
            applied.answer(reply, id, map.remove(&id));
        }
        for (cutoff, reply) in batch.purges.drain(..) {
            let purged = self.purge(cutoff);
            applied.changed_memory |= purged > 0;
            applied.replies.push((reply, purged));
        }
        let purge_due = self.interval_passed(self.last_purge_ms, now);
        if let (true, Some(retention)) = (purge_due, self.retention_ms) {
            self.last_purge_ms = now;
            let purged = self.purge(now.saturating_sub(retention));
            if purged > 0 {
                tracing::info!(purged, "retention purged revoked and expired tokens");
            }
            applied.changed_memory |= purged > 0;
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
            match map.with(&old, |e| crate::store::refuse_rotation(e, now)) {
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

    /// The decide phase: whether to write, and whether a write may be skipped when no
    /// `last_used` changed.
    fn decide(&self, applied: &Applied, batch: &Batch, due: bool) -> Option<Need> {
        let flush_asked = !batch.flushes.is_empty();
        // Planted bug (loom twin only): a flush that trusts `Dirty` messages over the scan.
        #[cfg(loom)]
        let flush_asked = flush_asked
            && (self.dirty
                || !crate::sync::bug::planted(crate::sync::bug::Bug::FlushTrustsMessages));
        if applied.changed_memory
            || !applied.pending.is_empty()
            || (self.definitions_pending && due)
        {
            Some(Need::Always)
        } else if flush_asked || batch.shutdown.is_some() || (self.dirty && due) {
            Some(Need::IfChanged)
        } else {
            None
        }
    }

    /// Deletes every token revoked or expired at or before `cutoff` (Unix ms); how many.
    fn purge(&self, cutoff: u64) -> usize {
        let map = &self.shared.map;
        let old = |at: Option<u64>| at.is_some_and(|at| at <= cutoff);
        let doomed: Vec<TokenId> = map.with_all(|entries| {
            entries
                .iter()
                .filter(|e| old(e.revoked_at()) || old(e.expires_at()))
                .map(|e| e.id)
                .collect()
        });
        doomed.iter().filter(|id| map.remove(id)).count()
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

    /// The write phase: a snapshot of every entry plus what is pending, unless `need` is
    /// `IfChanged` and nothing changed. On success (or once the new file replaced the old
    /// one) the pending changes join memory.
    fn snapshot(&mut self, need: Need, pending: Pending, now: u64) -> Result<(), Error> {
        let shared = self.shared.clone();
        shared
            .map
            .with_all(|entries| self.write_snapshot(entries, need, pending, now))
    }

    fn write_snapshot(
        &mut self,
        entries: &[&Entry],
        need: Need,
        pending: Pending,
        now: u64,
    ) -> Result<(), Error> {
        let taken: Vec<u64> = entries.iter().map(|e| e.take_for_snapshot()).collect();
        let changed = entries
            .iter()
            .zip(&taken)
            .any(|(e, &lu)| lu != e.persisted_last_used());
        if need == Need::IfChanged && !changed && !self.definitions_pending {
            self.dirty = false;
            return Ok(());
        }
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
        let written = self.sink.write(&BodyRef {
            written_at: now,
            records: &records,
        });
        drop(records);
        match written {
            Ok(bytes) => {
                self.written(entries, &taken, pending, bytes, now);
                Ok(())
            }
            Err(WriteError {
                error,
                replaced: Some(bytes),
            }) => {
                // The new file is the store file: memory takes what it holds, so a restart
                // brings back nothing memory lacks. Its rename may not survive a power loss,
                // so the callers hear the error, and the next due tick writes again.
                self.written(entries, &taken, pending, bytes, now);
                self.definitions_pending = true;
                Err(self.failed(error, "the snapshot replaced the store file, but syncing its directory failed; will write again at the next tick"))
            }
            Err(WriteError {
                error,
                replaced: None,
            }) => {
                // Nothing is lost: every entry whose last_used is not on disk stays dirty,
                // and the next tick retries. Pending changes are dropped with their error.
                for entry in entries.iter().filter(|e| e.unsaved()) {
                    entry.mark_dirty();
                }
                self.dirty = true;
                Err(self.failed(error, "snapshot write failed; will retry at the next tick"))
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
            entry.mark_persisted(lu);
        }
        let map = &self.shared.map;
        for (id, until) in pending.expiries {
            map.with(&id, |e| e.shorten_expiry(until));
        }
        let added = map.insert_new(pending.issues);
        // `collision` kept only ids that are not in the map.
        debug_assert!(added.is_ok(), "collision let a taken id through");
        self.dirty = false;
        self.definitions_pending = false;
        self.shared.counters.record_write(bytes, now);
    }

    /// Logs and counts a failed write; the error to give the callers.
    fn failed(&self, error: std::io::Error, what: &'static str) -> Error {
        let path = self.sink.path();
        tracing::error!(file = %path.display(), error = %error, "{what}");
        let error = Error::io("write a snapshot to", path, error);
        self.shared.counters.record_error(error.to_string());
        error
    }
}

impl Applied {
    /// A request for `id`: waits for the write if the id was found, else is refused now.
    fn answer(&mut self, reply: Reply, id: TokenId, found: bool) {
        if found {
            self.changed_memory = true;
            self.replies.push((reply, 1));
        } else {
            let _ = reply.send(Err(Error::UnknownId(id)));
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
