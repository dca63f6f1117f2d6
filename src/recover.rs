//! Recovery: the store as its files describe it, the snapshot and then every journal record
//! after the last one it covers, read without writing anything (so `open` can refuse with
//! every file untouched, and `list` can read beside a live service).

use std::path::Path;

use crate::change;
use crate::entry;
use crate::error::Error;
use crate::extras::Extras;
use crate::file;
use crate::journal::{self, JournalError, Logged, ScanError};
use crate::map::Map;
use crate::rate_limit::RateLimit;
use crate::snapshot::{self, DecodeError, ExtrasRecord, OwnerRecord, Problem};

/// What the files hold.
pub(crate) struct Recovered {
    /// Every token, as of the newest record.
    pub(crate) map: Map,
    /// The store file as read (`None`: there is none).
    pub(crate) snapshot: Option<SnapshotRead>,
    /// The sequence number of the newest change on disk (the next record is one more).
    pub(crate) seq: u64,
    /// Journal records replayed onto the snapshot.
    pub(crate) replayed: usize,
    /// The journal (`None`: there is none).
    pub(crate) journal: Option<JournalRead>,
}

#[cfg(any(loom, feature = "postgres"))]
impl Recovered {
    /// A store of `entries` with nothing on disk yet (no snapshot, no journal): a database
    /// store's tokens as loaded, or a model check's.
    pub(crate) fn fresh(entries: Vec<entry::Entry>) -> Recovered {
        let map = Map::with_capacity(entries.len());
        let added = map.insert_new(entries);
        // Callers pass entries with distinct ids (`entry::load` checks).
        debug_assert!(added.is_ok(), "a duplicate id");
        Recovered {
            map,
            snapshot: None,
            seq: 0,
            replayed: 0,
            journal: None,
        }
    }
}

/// The store file as read: what `inspect` reports of it.
pub(crate) struct SnapshotRead {
    /// Its size in bytes.
    pub(crate) len: u64,
    /// The format version its header states.
    pub(crate) version: u32,
    /// Its body's CRC32, as its header states it (the read checked it).
    pub(crate) body_crc: u32,
    /// When it was written, Unix ms.
    pub(crate) written_at: u64,
    /// The last journal record it covers.
    pub(crate) seq: u64,
}

/// The journal as read.
pub(crate) struct JournalRead {
    /// Its size in bytes.
    pub(crate) file_len: u64,
    /// Where its valid part ends: the next record goes there.
    pub(crate) valid_len: u64,
    /// It ends in a torn record, from `valid_len` to `file_len` (to be set aside).
    pub(crate) torn: bool,
    /// It cannot take the next record: its records all precede the snapshot's (a
    /// compaction stopped before it replaced the journal), its header was cut, or it has an
    /// older format version.
    pub(crate) stale: bool,
}

/// Loads what a snapshot holds besides its token records into `map`: each token's extras
/// (refused if no token has the id), owners' limits, recorded prefixes.
pub(crate) fn load_shared(
    map: &Map,
    extras: Vec<ExtrasRecord>,
    owners: Vec<OwnerRecord>,
    prefixes: Vec<String>,
) -> Result<(), Problem> {
    for record in extras {
        let (id, extras) = Extras::from_record(record, &map.owners)?;
        if !map.set_extras(&id, extras) {
            return Err(Problem::BadExtras {
                id: id.to_string(),
                why: "no token in the file has this id".into(),
            });
        }
    }
    for owner in owners {
        let limit = RateLimit::from_record(&owner.rate_limit)
            .ok_or_else(|| Problem::BadRateLimit(format!("of owner {:?}", owner.owner)))?;
        map.owners.set_rate_limit(&owner.owner, Some(limit));
    }
    for prefix in prefixes {
        map.prefixes
            .add(&prefix)
            .map_err(|_| Problem::BadPrefix(prefix.clone()))?;
    }
    Ok(())
}

/// Reads the store at `path` (already [`resolve`](file::resolve)d): checks the snapshot and
/// the journal with every check `open` runs, and replays the journal onto the snapshot.
pub(crate) fn read(path: &Path) -> Result<Recovered, Error> {
    let bytes = file::read_store(path)?;
    let mut shared = None;
    let (entries, snapshot) = match &bytes {
        Some(bytes) => {
            let mut body = snapshot::decode(bytes).map_err(|e| e.at(path))?;
            shared = Some((
                std::mem::take(&mut body.extras),
                std::mem::take(&mut body.owners),
                std::mem::take(&mut body.prefixes),
            ));
            let read = SnapshotRead {
                len: bytes.len() as u64,
                version: snapshot::version_of(bytes).unwrap_or_default(),
                body_crc: snapshot::body_crc_of(bytes).unwrap_or_default(),
                written_at: body.written_at,
                seq: body.seq,
            };
            let entries =
                entry::load(body.records).map_err(|problem| DecodeError::from(problem).at(path))?;
            (entries, Some(read))
        }
        None => (Vec::new(), None),
    };
    let snapshot_seq = snapshot.as_ref().map_or(0, |s| s.seq);
    drop(bytes);
    let map = Map::with_capacity(entries.len());
    let added = map.insert_new(entries);
    // `entry::load` refused any id that appears twice.
    debug_assert!(added.is_ok(), "entry::load let a duplicate id through");
    if let Some((extras, owners, prefixes)) = shared {
        load_shared(&map, extras, owners, prefixes)
            .map_err(|problem| DecodeError::from(problem).at(path))?;
    }

    let journal_path = file::journal_path(path);
    let Some((file, file_len)) = file::open_journal(&journal_path)? else {
        return Ok(Recovered {
            map,
            snapshot,
            seq: snapshot_seq,
            replayed: 0,
            journal: None,
        });
    };
    let at = |e: JournalError| journal_error(&journal_path, e);
    let source = journal::FileSource {
        file: &file,
        len: file_len,
    };
    let scanned = journal::scan_from(&source).map_err(|e| match e {
        ScanError::Bad(e) => at(e),
        ScanError::Io(e) => Error::io("read the journal", &journal_path, e),
    })?;
    drop(file);
    let header_whole = scanned.valid_len >= journal::HEADER_LEN as u64;
    if header_whole && scanned.base > snapshot_seq {
        return Err(at(JournalError {
            offset: 16,
            error: Problem::Undecodable(format!(
                "the journal starts after record {}, but the store file covers records only up to {snapshot_seq}: the records between are missing (was the store file replaced by an older copy?)",
                scanned.base
            ))
            .into(),
        }));
    }
    // The last record's number (no arithmetic: the scan checked each follows the one before).
    let end = scanned.records.last().map_or(scanned.base, |r| r.seq);
    let replayed = replay_after(&map, scanned.records, snapshot_seq).map_err(at)?;
    Ok(Recovered {
        map,
        snapshot,
        seq: snapshot_seq.max(end),
        replayed,
        journal: Some(JournalRead {
            file_len: scanned.file_len,
            valid_len: scanned.valid_len,
            // A journal of an older version is replayed, then replaced by a fresh one (after
            // a snapshot), so no record of the new version follows its old header.
            stale: !header_whole || end < snapshot_seq || scanned.version < journal::VERSION,
            torn: scanned.torn,
        }),
    })
}

/// Applies every record after sequence number `after` to `map`, in order; returns how
/// many. An error names the offset of the record that cannot be applied.
pub(crate) fn replay_after(
    map: &Map,
    records: Vec<Logged>,
    after: u64,
) -> Result<usize, JournalError> {
    let mut replayed = 0;
    for logged in records.into_iter().filter(|r| r.seq > after) {
        let offset = logged.offset;
        replay(map, logged).map_err(|problem| JournalError {
            offset,
            error: problem.into(),
        })?;
        replayed += 1;
    }
    Ok(replayed)
}

/// Applies one record's changes to `map`, in order (see [`change::apply`]).
fn replay(map: &Map, logged: Logged) -> Result<(), Problem> {
    for change in logged.changes {
        change::apply(map, change)?;
    }
    Ok(())
}

/// The public error for a journal problem: the journal's path and the byte offset.
fn journal_error(path: &Path, e: JournalError) -> Error {
    e.error.in_file(path, Some(e.offset), journal::VERSION)
}
