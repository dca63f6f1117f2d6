//! Recovery: the store as its files describe it, the snapshot and then every journal record
//! after the last one it covers, read without writing anything (so `open` can refuse with
//! every file untouched, and `list` can read beside a live service).

use std::path::Path;

use crate::change;
use crate::credits::Meter;
use crate::entry;
use crate::error::Error;
use crate::extras::Extras;
use crate::file;
use crate::journal::{self, JournalError, Logged, ScanError};
use crate::map::Map;
use crate::rate_limit::RateLimit;
use crate::snapshot::{self, Beside, DecodeError, Problem};
use crate::token::TokenId;

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
/// and credits (refused if no token has the id), owners' limits, recorded prefixes.
pub(crate) fn load_shared(map: &Map, beside: Beside) -> Result<(), Problem> {
    let Beside {
        extras,
        owners,
        prefixes,
        credits,
        usage,
    } = beside;
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
    for record in credits {
        let id = TokenId::from_bytes(record.id)
            .ok_or_else(|| Problem::BadId(String::from_utf8_lossy(&record.id).into()))?;
        let bad = |why: String| Problem::BadCredits {
            id: id.to_string(),
            why,
        };
        let meter = Meter::from_record(&record).map_err(bad)?;
        if !map.set_meter(&id, Some(meter)) {
            return Err(bad("no token in the file has this id".into()));
        }
    }
    let mut book = map.usage.lock();
    for record in usage {
        let id = TokenId::from_bytes(record.id)
            .ok_or_else(|| Problem::BadId(String::from_utf8_lossy(&record.id).into()))?;
        if !map.contains(&id) {
            return Err(Problem::BadUsage(id.to_string()));
        }
        book.replay(id, &record);
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
            shared = Some(body.take_beside());
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
    if let Some(beside) = shared {
        load_shared(&map, beside).map_err(|problem| DecodeError::from(problem).at(path))?;
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

/// Arbitrary stored extras, owners' limits and prefixes (what a damaged or hand-made file,
/// or a row written by another build, may hold) either load or are refused with a
/// `Problem`: never a panic, and never a value a call could not have made.
#[cfg(all(test, not(loom)))]
mod proptests {
    use proptest::prelude::*;

    use crate::extras::{Extras, MAX_META_BYTES};
    use crate::map::Map;
    use crate::owner::{self, Owners};
    use crate::snapshot::{Beside, ExtrasRecord};
    use crate::snapshot::{OwnerRecord, RateLimitRecord, Record};
    use crate::token::{check_prefix, Prefixes, MAX_PREFIXES};

    /// Ids: mostly from a pool of four valid ones (so extras meet their tokens, twice at
    /// times), now and then any bytes.
    fn id() -> impl Strategy<Value = [u8; 8]> {
        prop_oneof![
            4 => proptest::sample::select(vec![*b"AAAAAAAA", *b"BBBBBBBB", *b"cccccccc", *b"01234567"]),
            1 => any::<[u8; 8]>(),
        ]
    }

    /// Text near the rules' edges: empty, control characters, NULs, long.
    fn text(max: usize) -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z]{1,8}",
            1 => Just(String::new()),
            1 => "[a-z\\x00\\n\\t]{1,6}",
            1 => (0..=max).prop_map(|n| "x".repeat(n)),
        ]
    }

    fn extras_record() -> impl Strategy<Value = ExtrasRecord> {
        let meta = proptest::collection::vec((text(200), text(5000)), 0..4);
        (id(), proptest::option::of(text(200)), meta, any::<bool>()).prop_map(
            |(id, owner, meta, imported)| ExtrasRecord {
                id,
                owner,
                meta,
                imported,
            },
        )
    }

    /// The rules as the docs state them, written out apart from the code that checks them.
    fn follows_the_rules(record: &ExtrasRecord) -> bool {
        let base62 = record.id.iter().all(u8::is_ascii_alphanumeric);
        let owner = record
            .owner
            .as_ref()
            .is_none_or(|o| (1..=128).contains(&o.len()) && !o.chars().any(char::is_control));
        let total: usize = record.meta.iter().map(|(k, v)| k.len() + v.len()).sum();
        let pairs = record.meta.iter().enumerate().all(|(n, (k, v))| {
            (1..=128).contains(&k.len())
                && !k.chars().any(char::is_control)
                && !v.contains('\0')
                && record.meta[..n].iter().all(|(other, _)| other != k)
        });
        base62 && owner && total <= MAX_META_BYTES && pairs
    }

    fn token(id: [u8; 8]) -> Record {
        Record {
            id,
            name: "t".into(),
            digest: [7; 32],
            scopes: Vec::new(),
            created_at: 1,
            expires_at: None,
            revoked_at: None,
            last_used: None,
            rate_limit: None,
        }
    }

    proptest! {
        #[test]
        fn any_extras_record_loads_as_stored_or_is_refused(record in extras_record()) {
            let owners = Owners::default();
            match Extras::from_record(record.clone(), &owners) {
                Ok((id, extras)) => {
                    prop_assert!(follows_the_rules(&record), "loaded {record:?}");
                    let back = extras.record(id).into_owned();
                    prop_assert_eq!(id.to_bytes(), record.id);
                    prop_assert_eq!(back.owner.map(|o| o.into_owned()), record.owner.clone());
                    let meta: Vec<(String, String)> = back
                        .meta
                        .into_iter()
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    prop_assert_eq!(meta, record.meta.clone());
                    prop_assert_eq!(back.imported, record.imported);
                    for (key, value) in &record.meta {
                        prop_assert_eq!(extras.meta(key), Some(value.as_str()));
                    }
                }
                Err(_) => prop_assert!(!follows_the_rules(&record), "refused {record:?}"),
            }
        }

        #[test]
        fn any_prefixes_are_added_or_refused(
            prefixes in proptest::collection::vec(
                prop_oneof!["[a-zA-Z0-9_]{0,18}", ".{0,4}", Just("tc".to_string())],
                0..48,
            ),
        ) {
            let accepted = Prefixes::default();
            for prefix in &prefixes {
                let full = accepted.recorded().len() == MAX_PREFIXES;
                match accepted.add(prefix) {
                    Ok(_) => prop_assert!(accepted.contains(prefix.as_bytes())),
                    Err(_) => prop_assert!(check_prefix(prefix).is_err() || full, "{prefix:?}"),
                }
                prop_assert!(accepted.contains(b"tc"));
            }
            prop_assert!(accepted.recorded().len() <= MAX_PREFIXES);
            for recorded in accepted.recorded() {
                prop_assert!(check_prefix(recorded).is_ok());
            }
        }

        /// The path `open` takes for a version 3 snapshot's shared parts, on tokens loaded
        /// from the same file.
        #[test]
        fn any_shared_parts_of_a_snapshot_load_or_are_refused(
            tokens in proptest::collection::btree_set(id(), 0..4),
            extras in proptest::collection::vec(extras_record(), 0..4),
            owners in proptest::collection::vec(
                (text(200), any::<(u64, u32, u32)>()), 0..3),
            prefixes in proptest::collection::vec(
                prop_oneof!["[a-z_]{1,17}", ".{0,4}"], 0..3),
        ) {
            let records = tokens.iter().copied().map(token).collect();
            let Ok(entries) = crate::entry::load(records) else {
                return Ok(()); // an id that is not base62: refused before this step
            };
            let map = Map::with_capacity(entries.len());
            prop_assert!(map.insert_new(entries).is_ok());
            let owners: Vec<OwnerRecord> = owners
                .into_iter()
                .map(|(owner, (period_ms, count, burst))| OwnerRecord {
                    owner,
                    rate_limit: RateLimitRecord { period_ms, count, burst },
                })
                .collect();
            let beside = Beside {
                extras: extras.clone(),
                owners: owners.clone(),
                prefixes: prefixes.clone(),
                credits: Vec::new(),
                usage: Vec::new(),
            };
            let loaded = crate::recover::load_shared(&map, beside);
            if loaded.is_ok() {
                // Everything held is what the records said, on tokens the file holds.
                for record in &extras {
                    prop_assert!(tokens.contains(&record.id));
                    prop_assert!(follows_the_rules(record));
                }
                let mut limits = std::collections::HashMap::new();
                for owner in &owners {
                    prop_assert!(owner::check_name(&owner.owner).is_ok(), "owner {:?}", owner.owner);
                    let limit = crate::rate_limit::RateLimit::from_record(&owner.rate_limit);
                    limits.insert(owner.owner.as_str(), limit);
                }
                for (name, limit) in limits {
                    prop_assert_eq!(map.owners.rate_limit(name), limit);
                }
                for prefix in &prefixes {
                    prop_assert!(map.prefixes.contains(prefix.as_bytes()));
                }
            }
        }
    }
}
