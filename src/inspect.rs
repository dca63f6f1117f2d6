//! Reading a store file as `open` reads it, without opening the store: no lock, no
//! persister, nothing written, so it is safe beside a live service.

use std::path::Path;

use crate::entry;
use crate::error::Error;
use crate::file;
use crate::snapshot::{self, DecodeError, HEADER_LEN};

/// What [`inspect`] reads from a store file.
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
    /// Tokens in the file, revoked ones included.
    pub tokens: usize,
    /// Revoked tokens in the file.
    pub revoked: usize,
}

/// Checks the store file at `path` with every check [`TokenStore::open`] runs (path,
/// file type, permissions, header, checksums, body, and each record's id and rate limit)
/// and reports what it holds, without taking the store's lock.
///
/// [`TokenStore::open`]: crate::TokenStore::open
pub fn inspect(path: impl AsRef<Path>) -> Result<SnapshotInfo, Error> {
    let path = file::resolve(path.as_ref())?;
    let bytes = file::read_store(&path)?.ok_or_else(|| Error::BadPath {
        path: path.clone(),
        reason: "it does not exist; check the path",
    })?;
    let body = snapshot::decode(&bytes).map_err(|e| e.at(&path))?;
    let written_at_ms = body.written_at;
    let entries = entry::load(body.records).map_err(|p| DecodeError::from(p).at(&path))?;
    Ok(SnapshotInfo {
        version: snapshot::version_of(&bytes).unwrap_or_default(),
        file_len: bytes.len() as u64,
        body_len: (bytes.len() - HEADER_LEN) as u64,
        body_crc: crc32fast::hash(&bytes[HEADER_LEN..]),
        written_at_ms,
        tokens: entries.len(),
        revoked: entries.iter().filter(|e| e.revoked_at().is_some()).count(),
    })
}
