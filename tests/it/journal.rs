//! The journal on real files: what a cut or a damaged journal opens as, what the
//! write-behind appends, and when compaction runs.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{journal_path, manual_builder, manual_store, scratch, INTERVAL};
use tokencache::{Error, NewToken, RateLimit, TokenInfo, TokenStore};

/// Every file in `dir`, by name, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read(e.path()).unwrap())
        })
        .collect()
}

/// Writes a store file and a journal into a fresh directory, private as the store keeps
/// them.
fn plant(snapshot: &[u8], journal: &[u8]) -> common::Scratch {
    let s = scratch();
    for (path, bytes) in [(s.path.clone(), snapshot), (journal_path(&s.path), journal)] {
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    s
}

/// A store whose journal holds one record per kind of change, and what the store held
/// after each record: `(journal length, tokens)`, the first entry before any record. The
/// files are copied while the store is open, as a crash would leave them.
struct Recorded {
    snapshot: Vec<u8>,
    journal: Vec<u8>,
    states: Vec<(usize, Vec<TokenInfo>)>,
}

fn recorded() -> Recorded {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let journal_len = || fs::metadata(journal_path(&s.path)).unwrap().len() as usize;
    let mut states = vec![(journal_len(), store.list())];
    let mut record = |store: &TokenStore| states.push((journal_len(), store.list()));
    let a = store
        .issue(NewToken::new("a").scopes(["read", "write"]))
        .unwrap();
    record(&store);
    let b = store
        .issue(NewToken::new("b").rate_limit(RateLimit::per_minute(60)))
        .unwrap();
    record(&store);
    clock.advance(Duration::from_secs(3));
    store.validate(a.secret()).unwrap();
    store.flush().unwrap();
    record(&store);
    store.revoke(&b.id()).unwrap();
    record(&store);
    let c = store.rotate(&a.id(), Duration::from_secs(600)).unwrap();
    record(&store);
    store
        .set_rate_limit(&c.id(), Some(RateLimit::per_second(5)))
        .unwrap();
    record(&store);
    store.delete(&b.id()).unwrap();
    record(&store);
    let recorded = Recorded {
        snapshot: fs::read(&s.path).unwrap(),
        journal: fs::read(journal_path(&s.path)).unwrap(),
        states,
    };
    assert_eq!(recorded.journal.len(), journal_len());
    assert_eq!(recorded.states.len(), 8, "one record per change");
    drop(store);
    recorded
}

#[test]
fn every_truncation_of_the_journal_opens_with_every_record_before_the_cut() {
    let recorded = recorded();
    let header = recorded.states[0].0;
    for cut in 0..=recorded.journal.len() {
        let s = plant(&recorded.snapshot, &recorded.journal[..cut]);
        let (builder, _) = manual_builder(&s.path);
        let store = builder
            .open()
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let (kept, expected) = recorded
            .states
            .iter()
            .rev()
            .find(|(len, _)| *len <= cut)
            .unwrap_or(&recorded.states[0]);
        assert_eq!(&store.list(), expected, "cut at {cut}");
        // A cut inside a record leaves a torn tail: set aside, byte for byte.
        let torn: Vec<(String, Vec<u8>)> = files(s.dir.path())
            .into_iter()
            .filter(|(name, _)| name.contains(".torn-"))
            .collect();
        if cut == *kept {
            assert!(torn.is_empty(), "cut at {cut}: {torn:?}");
        } else {
            let from = if cut < header { 0 } else { *kept };
            let name = format!("tokens.snap.journal.torn-{from}");
            assert_eq!(
                torn,
                [(name, recorded.journal[from..cut].to_vec())],
                "cut at {cut}"
            );
        }
        // The store takes changes again, and they survive.
        store.issue(NewToken::new("after")).unwrap();
        store.close().unwrap();
        let (builder, _) = manual_builder(&s.path);
        assert_eq!(builder.open().unwrap().list().len(), expected.len() + 1);
    }
}

#[test]
fn a_bit_flip_in_an_older_record_is_refused_and_every_file_is_untouched() {
    let recorded = recorded();
    // Every byte before the last record: the header and every older record.
    let last = recorded.states[recorded.states.len() - 2].0;
    for byte in 0..last {
        let mut journal = recorded.journal.clone();
        journal[byte] ^= 1 << (byte % 8);
        let s = plant(&recorded.snapshot, &journal);
        let before = files(s.dir.path());
        let error = TokenStore::open(&s.path).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains(journal_path(&s.path).to_str().unwrap()),
            "byte {byte}: {text}"
        );
        assert!(
            matches!(error, Error::Corrupt { .. } | Error::FutureVersion { .. }),
            "byte {byte}: {text}"
        );
        if byte >= 32 {
            assert!(text.contains("at byte "), "byte {byte}: {text}");
        }
        // The lock file is the one file `open` may create.
        let mut after = files(s.dir.path());
        after.remove("tokens.snap.lock");
        assert_eq!(after, before, "byte {byte}: open changed the files");
    }
}

#[test]
fn a_journal_that_starts_after_the_store_file_ends_is_refused() {
    // A store file restored from an older copy: the journal's first record follows one
    // the older snapshot does not cover.
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    store.issue(NewToken::new("a")).unwrap();
    store.close().unwrap();
    let old_snapshot = fs::read(&s.path).unwrap();
    let (store, _) = manual_store(&s.path);
    store.issue(NewToken::new("b")).unwrap();
    store.close().unwrap();
    let (store, _) = manual_store(&s.path);
    store.issue(NewToken::new("c")).unwrap();
    let journal = fs::read(journal_path(&s.path)).unwrap();
    drop(store);
    let s2 = plant(&old_snapshot, &journal);
    let error = TokenStore::open(&s2.path).unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
}

/// The `last_used` write-behind appends only the tokens used since the last write: with a
/// million tokens, an interval in which 1,000 were used writes one record of at most
/// 64 KiB, and an idle interval writes nothing.
#[test]
fn a_flush_of_1000_used_tokens_among_a_million_writes_at_most_64_kib() {
    let s = scratch();
    let (builder, clock) = manual_builder(&s.path);
    // No compaction in this test: the floor is above the 1M-token journal record.
    let store = builder.compaction_floor(u64::MAX).open().unwrap();
    let issued = store
        .issue_many((0..1_000_000).map(|i| NewToken::new(format!("t{i}"))))
        .unwrap();
    let before = store.stats();
    for token in issued.iter().step_by(1000) {
        store.validate(token.secret()).unwrap();
    }
    clock.advance(INTERVAL);
    let after = store.stats();
    let written = after.journal_bytes_written - before.journal_bytes_written;
    assert_eq!(
        after.journal_records_written,
        before.journal_records_written + 1
    );
    assert_eq!(after.snapshots_written, before.snapshots_written);
    assert!(written <= 64 * 1024, "{written} bytes for 1000 used tokens");
    println!("1,000 used tokens of 1,000,000: one record of {written} bytes");
    clock.advance(INTERVAL);
    assert_eq!(store.stats().bytes_written, after.bytes_written, "idle");
    drop(store);
}

/// Compaction runs on its own timer once the journal is larger than both the snapshot and
/// the floor, and not before; close compacts what is left; each leaves an empty journal.
#[test]
fn compaction_runs_when_the_journal_outgrows_snapshot_and_floor() {
    const FLOOR: u64 = 4096;
    let s = scratch();
    let (builder, clock) = manual_builder(&s.path);
    let store = builder.compaction_floor(FLOOR).open().unwrap();
    let journal_len = || fs::metadata(journal_path(&s.path)).unwrap().len();
    let header = journal_len();
    let mut n = 0;
    let mut issue_until = |len: u64| {
        while journal_len() <= len {
            store.issue(NewToken::new(format!("t{n}"))).unwrap();
            n += 1;
        }
    };
    // Past the snapshot (a new store's is nearly empty) but not the floor: no compaction.
    issue_until(FLOOR / 2);
    clock.advance(INTERVAL);
    assert_eq!(
        store.stats().snapshots_written,
        1,
        "only the first snapshot"
    );
    // Past both.
    issue_until(4 * FLOOR);
    clock.advance(INTERVAL);
    assert_eq!(
        store.stats().snapshots_written,
        2,
        "outgrew snapshot and floor"
    );
    assert_eq!(journal_len(), header, "a fresh journal");
    let info = tokencache::inspect(&s.path).unwrap();
    assert_eq!((info.tokens, info.journal_records), (store.list().len(), 0));

    // Past the floor but not the snapshot (which now holds every token): no compaction.
    let snapshot = fs::metadata(&s.path).unwrap().len();
    assert!(snapshot > 2 * FLOOR);
    issue_until(FLOOR + header);
    clock.advance(INTERVAL);
    assert_eq!(
        store.stats().snapshots_written,
        2,
        "smaller than the snapshot"
    );
    // The timer, not the append, decides: past the snapshot, nothing until the tick.
    issue_until(snapshot);
    assert_eq!(
        store.stats().snapshots_written,
        2,
        "compacted off the timer"
    );
    clock.advance(INTERVAL);
    assert_eq!(store.stats().snapshots_written, 3);
    issue_until(header);
    let tokens = store.list().len();
    store.close().unwrap();
    assert_eq!(journal_len(), header, "close compacted");
    let info = tokencache::inspect(&s.path).unwrap();
    assert_eq!((info.tokens, info.journal_records), (tokens, 0));
}

/// The journal is held to the store file's rules: group- or other-writable is refused
/// (anyone who can write it can add a token), naming the journal, untouched.
#[test]
fn a_journal_others_may_write_is_refused() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    store.issue(NewToken::new("a")).unwrap();
    drop(store);
    let journal = journal_path(&s.path);
    fs::set_permissions(&journal, fs::Permissions::from_mode(0o666)).unwrap();
    let before = fs::read(&journal).unwrap();
    let error = TokenStore::open(&s.path).unwrap_err();
    assert!(matches!(error, Error::LoosePermissions { .. }), "{error}");
    assert!(error.to_string().contains("journal"), "{error}");
    assert_eq!(fs::read(&journal).unwrap(), before);
}

/// A store file alone (a journal deleted by hand, or a store written before journals
/// existed) opens with what it holds, and gets a fresh journal.
#[test]
fn a_store_file_without_a_journal_opens_and_starts_one() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let token = store.issue(NewToken::new("a")).unwrap();
    store.close().unwrap();
    fs::remove_file(journal_path(&s.path)).unwrap();
    let (store, _) = manual_store(&s.path);
    assert!(store.validate(token.secret()).is_ok());
    assert!(journal_path(&s.path).exists());
    let revoked = store.issue(NewToken::new("b")).unwrap();
    store.revoke(&revoked.id()).unwrap();
    drop(store);
    let (store, _) = manual_store(&s.path);
    assert_eq!(store.list().len(), 2);
}

/// Tokens in the big `issue_many` below: one journal record of about 18 MB, the size at
/// which the review measured 45 s for `open` with the old quadratic check.
const BIG_BATCH: usize = 250_000;

/// A crash in the middle of a big `issue_many` leaves up to its whole record as a torn
/// tail. Deciding that nothing valid follows the cut costs bytes checksummed in proportion
/// to the tail (a counter in the reader, not a timing): the old check checksummed a
/// would-be record at every offset holding a plausible sequence number, the square of the
/// tail. The store then opens with the tail set aside, byte for byte.
#[test]
fn a_big_torn_tail_costs_checksums_linear_in_its_size() {
    let s = scratch();
    let (builder, _) = manual_builder(&s.path);
    let store = builder.compaction_floor(u64::MAX).open().unwrap();
    let header = fs::metadata(journal_path(&s.path)).unwrap().len() as usize;
    store
        .issue_many((0..BIG_BATCH).map(|i| NewToken::new(format!("batch-{i}")).scopes(["read"])))
        .unwrap();
    // Copied while the store is open, as a crash would leave them.
    let snapshot = fs::read(&s.path).unwrap();
    let journal = fs::read(journal_path(&s.path)).unwrap();
    drop(store);
    let record = journal.len() - header;
    assert!(record > 16_000_000, "one record of {record} bytes");
    for cut in [journal.len() - 1, header + record / 2, header + 4096] {
        let s = plant(&snapshot, &journal[..cut]);
        let tail = (cut - header) as u64;
        let scan = tokencache::__journal::scan(&journal_path(&s.path)).unwrap();
        println!(
            "torn tail of {tail} bytes: {} bytes checksummed",
            scan.checked
        );
        assert!(scan.torn, "cut at {cut}");
        assert_eq!((scan.records, scan.valid_len), (0, header as u64));
        assert!(
            scan.checked <= 2 * tail,
            "cut at {cut}: {} bytes checksummed for a tail of {tail}",
            scan.checked
        );
        let store = TokenStore::open(&s.path).unwrap();
        assert!(store.list().is_empty());
        drop(store);
        let aside = s
            .dir
            .path()
            .join(format!("tokens.snap.journal.torn-{header}"));
        assert!(
            fs::read(aside).unwrap() == journal[header..cut],
            "cut at {cut}"
        );
        assert_eq!(
            fs::metadata(journal_path(&s.path)).unwrap().len(),
            header as u64
        );
    }
}

/// Makes the journal of store `path` `len` bytes long by extending it with a hole (a
/// sparse file: no disk space is used, reads of the hole return zeros).
fn extend_sparse(path: &Path, len: u64) {
    let journal = fs::OpenOptions::new()
        .write(true)
        .open(journal_path(path))
        .unwrap();
    journal.set_len(len).unwrap();
}

/// A journal with a valid header and a terabyte hole after it (a sparse file) is refused at
/// once by `open`, `inspect`, `StoreView::read` and the CLI's `inspect`: a crash cuts short
/// at most the one record being written, and no record is longer than 4 GiB, so the reader
/// neither allocates the file's size (as it once did: a SIGABRT) nor reads the hole. The
/// error names the journal and the offset; no file is changed.
#[test]
fn a_sparse_terabyte_journal_is_refused_without_reading_or_allocating_it() {
    const TIB: u64 = 1 << 40;
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    store.issue(NewToken::new("a")).unwrap();
    store.close().unwrap();
    extend_sparse(&s.path, TIB);
    let before = fs::read(&s.path).unwrap();
    let journal = journal_path(&s.path);
    let errors = [
        TokenStore::open(&s.path).err(),
        tokencache::inspect(&s.path).err(),
        tokencache::StoreView::read(&s.path).err(),
    ];
    for error in errors {
        let error = error.expect("a terabyte of holes accepted");
        let message = error.to_string();
        assert!(matches!(error, Error::Corrupt { .. }), "{message}");
        assert!(message.contains(journal.to_str().unwrap()), "{message}");
        assert!(message.contains("at byte 32"), "{message}");
        assert!(message.contains("more than one record"), "{message}");
    }
    #[cfg(feature = "cli")]
    {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokencache"))
            .arg("--store")
            .arg(&s.path)
            .arg("inspect")
            .env_remove("TOKENCACHE_STORE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "stderr: {stderr}");
        assert!(
            output.status.code().is_some(),
            "killed by a signal: {stderr}"
        );
        assert!(stderr.contains("more than one record"), "{stderr}");
    }
    assert_eq!(fs::metadata(&journal).unwrap().len(), TIB);
    assert_eq!(fs::read(&s.path).unwrap(), before);
    let names: Vec<String> = files_named(s.dir.path());
    assert!(!names.iter().any(|n| n.contains(".torn-")), "{names:?}");
}

/// Zeros after the last record, as long as a record may be (a crash in an append whose
/// pages never reached the disk; here a 64 MiB hole), are a torn tail: skipped a piece at a
/// time without a checksum, set aside, and the store opens with every record.
#[test]
fn a_hole_after_the_last_record_is_a_torn_tail_read_a_piece_at_a_time() {
    let open = scratch();
    let (store, _) = manual_store(&open.path);
    let token = store.issue(NewToken::new("a")).unwrap();
    // Copied while the store is open, as a crash would leave them.
    let journal = fs::read(journal_path(&open.path)).unwrap();
    let s = plant(&fs::read(&open.path).unwrap(), &journal);
    drop(store);
    let valid = journal.len() as u64;
    extend_sparse(&s.path, valid + (64 << 20));
    let scan = tokencache::__journal::scan(&journal_path(&s.path)).unwrap();
    assert!(scan.torn);
    assert_eq!((scan.records, scan.valid_len), (1, valid));
    assert!(scan.checked < 4096, "{} bytes checksummed", scan.checked);
    let view = tokencache::StoreView::read(&s.path).unwrap();
    assert!(view.validate(token.secret()).is_ok());
    let (store, _) = manual_store(&s.path);
    assert!(store.validate(token.secret()).is_ok());
    let aside = s
        .dir
        .path()
        .join(format!("tokens.snap.journal.torn-{valid}"));
    assert_eq!(fs::metadata(aside).unwrap().len(), 64 << 20);
    assert_eq!(fs::metadata(journal_path(&s.path)).unwrap().len(), valid);
}

/// The names of the files in `dir`.
fn files_named(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
