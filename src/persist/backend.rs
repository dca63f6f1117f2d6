//! The persister's backends: where a batch's bytes go. [`Sink`] is what the persister asks
//! of one; [`FileSink`] writes the store file and its journal.

use std::io;
use std::path::PathBuf;

use crate::change::ChangeRef;
use crate::error::Error;
use crate::file::{self, Appender, FaultPlan, WriteError};
use crate::journal;
use crate::snapshot::{self, BodyRef};

pub(crate) use super::decide::{Facts, Write};

/// The file backend's policy (the store file and its journal; the loom recorder keeps the
/// same books). A compaction writes every definition, so it can stand in for an append:
///
/// - it runs when the journal has records and has outgrown both the snapshot and the floor
///   (looked at once per interval), on close (unless nothing at all is unwritten), and
///   instead of any write while memory holds a change that is not on disk or the journal is
///   not trusted (an append or its fsync failed). So a revoke or delete that memory applied
///   before its write failed reaches disk with the next write of any kind, and a record
///   whose fsync failed (possibly on disk, never acknowledged) is covered by the
///   snapshot's `seq` and never replayed once the store has written again;
/// - otherwise the batch's changes are appended, with `last_used` when asked, scanning
///   every token after a dropped id or for a flush.
pub(crate) fn file_policy(facts: &Facts<'_>, journal_ok: bool, journal_len: u64) -> Write {
    let has_records = journal_len > journal::HEADER_LEN as u64;
    let outgrown = has_records && journal_len > facts.snapshot_len.max(facts.compaction_floor);
    let behind = facts.unwritten_changes || !journal_ok;
    let writing = facts.definitions || facts.flush_asked || (facts.due && facts.waiting);
    let compact = (facts.closing
        && (behind || has_records || facts.definitions || (facts.unsaved_anywhere)()))
        || (facts.size_check_due && outgrown)
        || (behind && writing);
    if compact {
        return Write::Compact;
    }
    facts.append(false, facts.scan_all || facts.flush_asked)
}

/// Where the store's bytes go. The store's files in production; a recorder in model
/// checks; the file-writing code is the only place a test may inject a fault.
pub(crate) trait Sink: Send + 'static {
    /// Appends journal record `seq` holding `changes`, durably; returns the bytes written.
    /// A file backend does not trust its journal after an error, until a compaction.
    fn append(&mut self, seq: u64, changes: &[ChangeRef<'_>]) -> Result<u64, AppendFailed>;
    /// Replaces the store file with `body` (durably), then the journal with an empty one
    /// whose first record will be `body.seq + 1`.
    fn compact(&mut self, body: &BodyRef<'_, '_>) -> Result<Compacted, WriteError>;
    /// What to write for a batch: this backend's policy.
    fn decide(&self, facts: &Facts<'_>) -> Write;
    /// Whether opening must write a snapshot first (a new store, or a journal that cannot
    /// take the next record), given the size of the one it found (0: none).
    fn snapshot_at_open(&self, snapshot_len: u64) -> bool;
    /// The path to name in errors.
    fn path(&self) -> PathBuf;
    /// The public error for a failed write of this backend (`action` of its path, as the
    /// error says it).
    fn error(&self, action: &'static str, error: io::Error) -> Error {
        Error::io(action, self.path(), error)
    }
    /// PostgreSQL stores: whether `change`, read from the database, would undo a change
    /// memory holds and this sink has yet to write (its transaction failed): then it is
    /// not applied. A file store reads nothing back.
    #[cfg(all(feature = "postgres", not(loom)))]
    fn overrides(&self, _change: &crate::change::Change) -> bool {
        false
    }
    /// PostgreSQL stores: the changes [`overrides`](Self::overrides) is asked about next
    /// were read from the database as of `version` (`None`: a history other than the one
    /// this sink's writes took their versions from).
    #[cfg(all(feature = "postgres", not(loom)))]
    fn reading(&mut self, _version: Option<i64>) {}
}

/// A failed append, in its backend's words.
pub(crate) struct AppendFailed {
    /// The OS's or the database client's error.
    pub(crate) error: io::Error,
    /// What the backend was doing, as the error says it before the path.
    pub(crate) action: &'static str,
    /// What the log says happens next.
    pub(crate) next: &'static str,
}

impl AppendFailed {
    /// A failed journal append: the file backend's words.
    pub(crate) fn journal(error: io::Error) -> AppendFailed {
        AppendFailed {
            error,
            action: "append to the journal of",
            next: "journal append failed; will write a snapshot at the next tick",
        }
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
    fn append(&mut self, seq: u64, changes: &[ChangeRef<'_>]) -> Result<u64, AppendFailed> {
        let Some(journal) = self.journal.as_mut() else {
            return Err(AppendFailed::journal(io::Error::other(
                "the journal is not open",
            )));
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
        written.map(|()| len).map_err(AppendFailed::journal)
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

    fn decide(&self, facts: &Facts<'_>) -> Write {
        let journal_len = self.journal.as_ref().map_or(0, Appender::len);
        file_policy(facts, self.journal.is_some(), journal_len)
    }

    fn snapshot_at_open(&self, snapshot_len: u64) -> bool {
        snapshot_len == 0 || self.journal.is_none()
    }

    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}
