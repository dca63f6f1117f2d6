//! Reading a store's files as `open` reads them, without opening the store: no lock, no
//! persister, nothing written, so it is safe beside a live service.

use std::path::Path;

use crate::error::Error;
use crate::file;
use crate::recover;
use crate::snapshot::HEADER_LEN;
use crate::view;

/// What [`inspect`] reads from a store's files.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// The format version the file's header states.
    pub version: u32,
    /// The whole file's size in bytes.
    pub file_len: u64,
    /// The body's size in bytes.
    pub body_len: u64,
    /// The body's CRC32.
    pub body_crc: u32,
    /// When the snapshot was written, Unix ms.
    pub written_at_ms: u64,
    /// The last journal record the snapshot covers.
    pub snapshot_seq: u64,
    /// The journal's size in bytes (0: there is none).
    pub journal_len: u64,
    /// Journal records after the snapshot, replayed onto it.
    pub journal_records: usize,
    /// Whether the journal ends in a torn record (a write a crash cut short, never
    /// acknowledged; `open` sets it aside).
    pub journal_torn: bool,
    /// Tokens in the store (the snapshot with the journal replayed), revoked ones included.
    pub tokens: usize,
    /// Revoked tokens in the store.
    pub revoked: usize,
}

/// Checks the store at `path` with every check [`TokenStore::open`] runs (path, file type,
/// permissions, headers, checksums, the snapshot's records, the journal's records and their
/// sequence) and reports what it holds, without taking the store's lock: safe beside a
/// service that has the store open (a snapshot the service replaces during the reading is
/// read again, so the facts are of one moment).
///
/// [`TokenStore::open`]: crate::TokenStore::open
pub fn inspect(path: impl AsRef<Path>) -> Result<SnapshotInfo, Error> {
    let path = file::resolve(path.as_ref())?;
    view::settled(&path, || read(&path))
}

/// One reading of the files of store `path` (already resolved).
fn read(path: &Path) -> Result<SnapshotInfo, Error> {
    let recovered = recover::read(path)?;
    let snapshot = recovered
        .snapshot
        .as_ref()
        .ok_or_else(|| Error::missing(path.to_path_buf()))?;
    let (tokens, revoked) = recovered.map.with_all(|entries| {
        let revoked = entries.iter().filter(|e| e.revoked_at().is_some()).count();
        (entries.len(), revoked)
    });
    let journal = recovered.journal.as_ref();
    Ok(SnapshotInfo {
        version: snapshot.version,
        file_len: snapshot.len,
        body_len: snapshot.len - HEADER_LEN as u64,
        body_crc: snapshot.body_crc,
        written_at_ms: snapshot.written_at,
        snapshot_seq: snapshot.seq,
        journal_len: journal.map_or(0, |j| j.file_len),
        journal_records: recovered.replayed,
        journal_torn: journal.is_some_and(|j| j.torn),
        tokens,
        revoked,
    })
}
