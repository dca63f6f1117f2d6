//! The persister: the one thread that writes snapshots.
//!
//! It receives messages on one bounded channel: dirty token ids from validations (write-
//! behind: a snapshot at most once per `flush_interval`, none while nothing changed), and
//! commands with a reply channel: `issue`/`revoke` (group commit: every change waiting in
//! the channel shares one write, and each caller is answered only once it is on disk),
//! `flush` (a barrier), timer ticks and shutdown. All snapshot writes go through a [`Sink`].

use std::collections::HashSet;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use crate::entry::Entry;
use crate::error::Error;
use crate::file::{self, FaultPlan, WriteError};
use crate::rate_limit::RateLimit;
use crate::snapshot::{self, Body, Record};
use crate::store::Shared;
use crate::sync::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use crate::sync::{thread, Arc, Ordering, RwLock};
use crate::token::TokenId;

/// A caller's reply channel.
pub(crate) type Reply = Sender<Result<(), Error>>;

/// What the persister receives.
pub(crate) enum Message {
    /// A validation made this token dirty.
    Dirty(TokenId),
    /// Make these new tokens durable together (all or none), add them to the map, reply.
    Issue(Vec<Arc<Entry>>, Reply),
    /// Revoke this token durably, then reply.
    Revoke(TokenId, Reply),
    /// Set or remove this token's rate limit durably, then reply.
    SetRateLimit(TokenId, Option<RateLimit>, Reply),
    /// Reply once everything observed before the call is on disk.
    Flush(Reply),
    /// The clock jumped: re-check the deadline, then acknowledge.
    Tick(Sender<()>),
    /// Write what is pending, reply, and stop.
    Shutdown(Reply),
}

/// Where snapshots go. The store file in production; a recorder in model checks; the
/// file-writing code is the only place a test may inject a fault.
pub(crate) trait Sink: Send + 'static {
    /// Writes `body` durably and returns the bytes written.
    fn write(&mut self, body: &Body) -> Result<u64, WriteError>;
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
    fn write(&mut self, body: &Body) -> Result<u64, WriteError> {
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
    fn write(&mut self, body: &Body) -> Result<u64, WriteError> {
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
        self.tx.send(shutdown).map_err(|_| Refused::Dead)
    }

    /// Called by a persister that panicked, before it lets go of `rx`: shuts the gate for
    /// good and drops every queued message, so each waiting caller's reply channel closes
    /// and it returns an error instead of waiting forever.
    ///
    /// A request may be blocked in `send` on a full channel while it holds the gate's read
    /// lock, so this drains before each try for the write lock: the drain makes room, the
    /// sender finishes and lets go.
    fn die(&self, rx: &Receiver<Message>) {
        loop {
            while rx.try_recv().is_ok() {}
            if let Ok(mut gate) = self.gate.try_write() {
                *gate = Gate::Dead;
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
}

impl fmt::Debug for Timer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Timer")
    }
}

/// Messages handled together: every reply waits for the one write they share.
#[derive(Default)]
struct Batch {
    dirty: bool,
    issues: Vec<(Vec<Arc<Entry>>, Reply)>,
    revokes: Vec<(TokenId, Reply)>,
    rate_limits: Vec<(TokenId, Option<RateLimit>, Reply)>,
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
            Message::Flush(reply) => self.flushes.push(reply),
            Message::Tick(ack) => self.ticks.push(ack),
            Message::Shutdown(reply) => self.shutdown = Some(reply),
        }
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
    /// Clock time of the last write attempt (successful or not): the next timed snapshot
    /// is due `interval_ms` later.
    last_attempt_ms: u64,
    /// Some validation dirtied a token since the last successful snapshot.
    dirty: bool,
    /// A definition change (revoke) is applied in memory but not yet on disk.
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
    ) -> Persister {
        let now = shared.clock.now_ms();
        Persister {
            shared,
            rx,
            sink,
            interval_ms: u64::try_from(interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
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
                let _ = reply.send(Ok(()));
                return true;
            }
        }
        let now = self.shared.clock.now_ms();
        // Relaxed: the flag is a hint that ids were dropped; the snapshot scan below reads
        // every entry through its own Acquire protocol.
        let overflowed = self.shared.overflow.swap(false, Ordering::Relaxed);
        // Planted bug (loom twin only): an id refused by a full channel is forgotten.
        #[cfg(loom)]
        let overflowed =
            overflowed && !crate::sync::bug::planted(crate::sync::bug::Bug::IgnoreOverflow);
        self.dirty |= batch.dirty || overflowed;

        let due = now >= self.last_attempt_ms.saturating_add(self.interval_ms)
            || now < self.last_attempt_ms;
        // A revoke whose write failed is retried when the next snapshot is due, not on
        // every message, so a failing disk is not hammered.
        let mut changed = self.definitions_pending && due;
        let mut definition_replies = Vec::with_capacity(batch.revokes.len());
        for (id, reply) in batch.revokes.drain(..) {
            match self.shared.map.get(&id) {
                Some(entry) => {
                    entry.revoke(now);
                    changed = true;
                    definition_replies.push(reply);
                }
                None => {
                    let _ = reply.send(Err(Error::UnknownId(id)));
                }
            }
        }
        // Rate-limit changes are handled like revokes: in memory first, in request order.
        for (id, limit, reply) in batch.rate_limits.drain(..) {
            match self.shared.map.get(&id) {
                Some(entry) => {
                    entry.set_rate_limit(limit);
                    changed = true;
                    definition_replies.push(reply);
                }
                None => {
                    let _ = reply.send(Err(Error::UnknownId(id)));
                }
            }
        }
        let issues = self.refuse_collisions(batch.issues);
        changed |= !issues.is_empty();

        let flush_asked = !batch.flushes.is_empty();
        // Planted bug (loom twin only): a flush that trusts `Dirty` messages over the scan.
        #[cfg(loom)]
        let flush_asked = flush_asked
            && (self.dirty
                || !crate::sync::bug::planted(crate::sync::bug::Bug::FlushTrustsMessages));
        let need = if changed {
            Some(Need::Always)
        } else if flush_asked || batch.shutdown.is_some() || (self.dirty && due) {
            Some(Need::IfChanged)
        } else {
            None
        };
        // Planted bug (loom twin only): answering callers before their snapshot is written.
        #[cfg(loom)]
        let acked_early = crate::sync::bug::planted(crate::sync::bug::Bug::AckBeforeWrite);
        #[cfg(loom)]
        if acked_early {
            let early = issues.iter().map(|(_, reply)| reply);
            for reply in early.chain(&definition_replies).chain(&batch.flushes) {
                let _ = reply.send(Ok(()));
            }
        }
        let result = match need {
            Some(need) => self.snapshot(need, &issues, now),
            None => Ok(()),
        };
        if changed && result.is_err() {
            self.definitions_pending = !definition_replies.is_empty() || self.definitions_pending;
        }

        let replies = issues
            .into_iter()
            .map(|(_, reply)| reply)
            .chain(definition_replies)
            .chain(batch.flushes)
            .chain(batch.shutdown.iter().cloned());
        for reply in replies {
            // (Planted bug: those answered early are full or gone, so `try_send` skips them.)
            #[cfg(loom)]
            if acked_early {
                let _ = reply.try_send(result.clone());
                continue;
            }
            let _ = reply.send(result.clone());
        }
        for ack in batch.ticks {
            let _ = ack.send(());
        }
        batch.shutdown.is_some()
    }

    /// Refuses each request holding an id that is already taken (in the map or earlier in
    /// the batch). Ids are 47 random bits and `issue` pre-checks the map, so this guards
    /// against two concurrent requests drawing the same id; it is not a normal path.
    fn refuse_collisions(
        &self,
        issues: Vec<(Vec<Arc<Entry>>, Reply)>,
    ) -> Vec<(Vec<Arc<Entry>>, Reply)> {
        let mut taken = HashSet::new();
        let mut kept = Vec::with_capacity(issues.len());
        for (entries, reply) in issues {
            let collision = entries
                .iter()
                .find(|e| self.shared.map.contains(&e.id) || taken.contains(&e.id));
            if let Some(entry) = collision {
                let _ = reply.send(Err(Error::InvalidRequest(format!(
                    "token id {} was drawn twice; issue again",
                    entry.id
                ))));
            } else {
                taken.extend(entries.iter().map(|e| e.id));
                kept.push((entries, reply));
            }
        }
        kept
    }

    /// Takes a snapshot of every entry plus the new ones and writes it, unless `need` is
    /// `IfChanged` and nothing changed. On success the new entries join the map.
    fn snapshot(
        &mut self,
        need: Need,
        issues: &[(Vec<Arc<Entry>>, Reply)],
        now: u64,
    ) -> Result<(), Error> {
        let entries = self.shared.map.values();
        // Protocol: clear each dirty flag, *then* read last_used (see `Entry::touch`).
        let taken: Vec<u64> = entries.iter().map(|e| e.take_for_snapshot()).collect();
        let changed = entries
            .iter()
            .zip(&taken)
            .any(|(e, &lu)| lu != e.persisted_last_used());
        if need == Need::IfChanged && !changed && !self.definitions_pending {
            self.dirty = false;
            return Ok(());
        }
        let records: Vec<Record> = entries
            .iter()
            .zip(&taken)
            .map(|(e, &lu)| e.to_record(lu))
            .chain(
                issues
                    .iter()
                    .flat_map(|(new, _)| new.iter().map(|e| e.to_record(0))),
            )
            .collect();
        let body = Body {
            written_at: now,
            records,
        };
        self.last_attempt_ms = now;
        match self.sink.write(&body) {
            Ok(bytes) => {
                self.written(&entries, taken, issues, bytes, now);
                Ok(())
            }
            Err(WriteError {
                error,
                replaced: Some(bytes),
            }) => {
                // The new file is the store file: memory takes what it holds, so a restart
                // brings back nothing memory lacks. Its rename may not survive a power loss,
                // so the callers hear the error, and the next due tick writes again.
                self.written(&entries, taken, issues, bytes, now);
                self.definitions_pending = true;
                Err(self.failed(error, "the snapshot replaced the store file, but syncing its directory failed; will write again at the next tick"))
            }
            Err(WriteError {
                error,
                replaced: None,
            }) => {
                // Nothing is lost: every entry whose last_used is not on disk stays dirty,
                // and the next tick retries.
                for entry in entries.iter().filter(|e| e.unsaved()) {
                    entry.mark_dirty();
                }
                self.dirty = true;
                Err(self.failed(error, "snapshot write failed; will retry at the next tick"))
            }
        }
    }

    /// After the store file took a snapshot of `entries` (with `last_used` as `taken`) and
    /// the new entries of `issues`: memory says so.
    fn written(
        &mut self,
        entries: &[Arc<Entry>],
        taken: Vec<u64>,
        issues: &[(Vec<Arc<Entry>>, Reply)],
        bytes: u64,
        now: u64,
    ) {
        for (entry, lu) in entries.iter().zip(taken) {
            entry.mark_persisted(lu);
        }
        let added = self.shared.map.insert_new(
            issues
                .iter()
                .flat_map(|(new, _)| new)
                .map(|entry| (entry.id, entry.clone())),
        );
        // `refuse_collisions` kept only ids that are not in the map.
        debug_assert!(added.is_ok(), "refuse_collisions let a taken id through");
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
