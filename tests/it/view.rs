//! `StoreView`: a store's files read beside the process that has the store open, with no
//! lock taken and nothing written.

use crate::common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use tokencache::{Error, NewToken, RateLimit, Rejection, StoreView, TokenStore};

/// Every file in `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read the directory")
        .map(|entry| {
            let entry = entry.expect("an entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, fs::read(entry.path()).expect("read a file"))
        })
        .collect()
}

#[test]
fn a_view_read_while_the_store_is_open_equals_its_list_after_a_flush() {
    let scratch = common::scratch();
    let (store, clock) = common::manual_store(&scratch.path);
    let kept = store
        .issue(NewToken::new("kept").scopes(["read", "write"]))
        .expect("issue");
    clock.advance(Duration::from_millis(5));
    let revoked = store.issue(NewToken::new("revoked")).expect("issue");
    let deleted = store.issue(NewToken::new("deleted")).expect("issue");
    let limited = store
        .issue(NewToken::new("limited").expires_in(Duration::from_secs(3600)))
        .expect("issue");
    store.revoke(&revoked.id()).expect("revoke");
    store.delete(&deleted.id()).expect("delete");
    store
        .set_rate_limit(&limited.id(), Some(RateLimit::per_minute(60)))
        .expect("limit");
    store.validate(kept.secret()).expect("valid");
    store.flush().expect("flush");

    let view = StoreView::read(&scratch.path).expect("read beside the open store");
    assert_eq!(view.list(), store.list());
    assert_eq!(view.len(), 3);
    assert!(!view.is_empty());
    for id in [kept.id(), revoked.id(), limited.id()] {
        assert_eq!(view.get(&id), store.get(&id));
    }
    assert_eq!(view.get(&deleted.id()), None);
    assert!(
        view.get(&kept.id()).expect("kept").last_used.is_some(),
        "the flushed use is on disk"
    );
    store.close().expect("close");
}

#[test]
fn a_view_shows_last_used_only_once_the_write_behind_interval_wrote_it() {
    let scratch = common::scratch();
    let (store, clock) = common::manual_store(&scratch.path);
    let issued = store.issue(NewToken::new("svc")).expect("issue");
    store.validate(issued.secret()).expect("valid");
    let before = StoreView::read(&scratch.path).expect("read");
    assert_eq!(before.get(&issued.id()).expect("token").last_used, None);

    clock.advance(Duration::from_secs(60));
    let after = StoreView::read(&scratch.path).expect("read");
    assert_eq!(after.list(), store.list());
    assert!(after.get(&issued.id()).expect("token").last_used.is_some());
    store.close().expect("close");
}

#[test]
fn reading_a_view_takes_no_lock_and_writes_nothing() {
    let scratch = common::scratch();
    let store = TokenStore::open(&scratch.path).expect("open");
    let issued = store.issue(NewToken::new("svc")).expect("issue");
    store.revoke(&issued.id()).expect("revoke");
    let before = files(scratch.dir.path());

    let view = StoreView::read(&scratch.path).expect("read");
    assert_eq!(view.list(), store.list());
    assert_eq!(
        files(scratch.dir.path()),
        before,
        "no file changed or appeared"
    );
    // The store still owns its files and can change them.
    store
        .issue(NewToken::new("later"))
        .expect("issue after the read");
    assert_eq!(view.len(), 1, "a view does not follow later changes");
    assert_eq!(StoreView::read(&scratch.path).expect("read").len(), 2);
    store.close().expect("close");
}

#[test]
fn a_view_of_a_missing_store_is_an_error_naming_the_path() {
    let scratch = common::scratch();
    let err = StoreView::read(&scratch.path).expect_err("no store there");
    assert!(matches!(err, Error::BadPath { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("tokens.snap"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(files(scratch.dir.path()).is_empty(), "nothing was created");
}

#[test]
fn a_view_validates_without_recording_the_use() {
    let scratch = common::scratch();
    let (store, clock) = common::manual_store(&scratch.path);
    let reader = store
        .issue(NewToken::new("reader").scope("read"))
        .expect("issue");
    let revoked = store.issue(NewToken::new("gone")).expect("issue");
    store.revoke(&revoked.id()).expect("revoke");

    let view = StoreView::read(&scratch.path).expect("read");
    let valid = view.validate(reader.secret()).expect("valid");
    assert_eq!(valid.id(), reader.id());
    assert_eq!(valid.name(), "reader");
    drop(valid);
    assert!(view.validate_scope(reader.secret(), "read").is_ok());
    assert_eq!(
        view.validate_scope(reader.secret(), "write").unwrap_err(),
        Rejection::MissingScope
    );
    assert_eq!(
        view.validate(revoked.secret()).unwrap_err(),
        Rejection::Revoked
    );
    assert_eq!(
        view.validate("tc_not_a_token").unwrap_err(),
        Rejection::Malformed
    );

    clock.advance(Duration::from_secs(60));
    store.flush().expect("flush");
    assert_eq!(store.get(&reader.id()).expect("reader").last_used, None);
    assert_eq!(
        StoreView::read(&scratch.path)
            .expect("read")
            .get(&reader.id())
            .expect("reader")
            .last_used,
        None
    );
    assert_eq!(store.stats().validations, 0, "the view is not the store");
    store.close().expect("close");
}

#[test]
fn views_read_while_the_service_compacts_never_fail() {
    let scratch = common::scratch();
    let (builder, clock) = common::manual_builder(&scratch.path);
    let store = builder.compaction_floor(0).open().expect("open");
    let kept = store.issue(NewToken::new("kept")).expect("issue");
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let view = StoreView::read(&scratch.path).expect("a consistent read");
                assert!(view.get(&kept.id()).is_some());
                reads += 1;
            }
            reads
        });
        // Each round's issue and delete outgrow the one-token snapshot, so each timed tick
        // compacts: the store file is replaced and a fresh journal started.
        for _ in 0..200 {
            let churn = store.issue(NewToken::new("churn")).expect("issue");
            store.delete(&churn.id()).expect("delete");
            clock.advance(common::INTERVAL);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().expect("the reader") > 0);
    });
    assert!(store.stats().snapshots_written > 100, "{:?}", store.stats());
    store.close().expect("close");
}

/// A read overtaken by a compaction: while a reader reads, the service closes (close
/// compacts: a new store file replaces the old one and a fresh journal starts) and opens
/// again. The reader notes the store file's inode before and after each read; a read across
/// which it changed began on a file that was replaced under it. Such reads happen (the test
/// runs until it saw several) and each returns the whole store, never an error or a mix of
/// the old snapshot and the new journal (which would lack the records between them).
#[test]
fn a_read_overtaken_by_a_compaction_is_read_again_and_whole() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const KEPT: usize = 2_000;
    const WANTED: usize = 3;
    let scratch = common::scratch();
    let (store, _clock) = common::manual_store(&scratch.path);
    let kept = store
        .issue_many((0..KEPT).map(|n| NewToken::new(format!("kept-{n}"))))
        .expect("issue");
    store.close().expect("close");
    let inode = || fs::metadata(&scratch.path).expect("the store file").ino();
    let done = AtomicBool::new(false);
    let overtaken = AtomicUsize::new(0);
    let rounds = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let before = inode();
                let view = StoreView::read(&scratch.path).expect("a whole read");
                let after = inode();
                // Each round's one extra token is issued and deleted before its close.
                assert!(
                    view.len() == KEPT || view.len() == KEPT + 1,
                    "{}",
                    view.len()
                );
                for token in [&kept[0], &kept[KEPT / 2], &kept[KEPT - 1]] {
                    assert!(view.get(&token.id()).is_some());
                }
                if before != after {
                    overtaken.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let mut rounds = 0;
        while overtaken.load(Ordering::Relaxed) < WANTED && rounds < 5_000 {
            let (store, _clock) = common::manual_store(&scratch.path);
            let extra = store.issue(NewToken::new("extra")).expect("issue");
            store.delete(&extra.id()).expect("delete");
            store.close().expect("close compacts");
            rounds += 1;
        }
        done.store(true, Ordering::Relaxed);
        reader.join().expect("the reader");
        rounds
    });
    let overtaken = overtaken.into_inner();
    assert!(
        overtaken >= WANTED,
        "only {overtaken} reads were overtaken by a compaction in {rounds} rounds"
    );
    let view = StoreView::read(&scratch.path).expect("read");
    assert_eq!(view.len(), KEPT);
}
