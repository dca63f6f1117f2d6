//! Write failures: what a full disk, a failing device or a denied permission does to the
//! store. Faults that cannot be produced for real on demand are injected through the one
//! seam in the file-writing code (`Builder::fault_plan`); a read-only directory and a
//! missing parent directory are real.

use crate::common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{faulty_store, manual_store, scratch, INTERVAL};
use tokencache::__fault::{FaultPlan, FaultStep};
use tokencache::{Clock, Error, NewToken, RateLimit, Rejection, TokenStore};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;
const EACCES: i32 = 13;

fn temp_files(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// A journal append or its fsync failing: the change is not acknowledged (a failed issue
/// leaves no token), and the journal that failed is never appended to again: the next
/// change is written as a snapshot with a fresh journal, and later ones append to that.
#[test]
fn a_failed_append_is_not_acknowledged_and_the_journal_is_not_trusted_again() {
    for step in [FaultStep::Append, FaultStep::AppendSync] {
        for (errno, text) in [
            (ENOSPC, "No space left on device"),
            (EIO, "Input/output error"),
        ] {
            let case = format!("{step:?} failing with {text}");
            let s = scratch();
            let (store, _clock, plan) = faulty_store(&s.path);
            let kept = store.issue(NewToken::new("kept")).unwrap();
            let journal = common::journal_path(&s.path);
            let inode = fs::metadata(&journal).unwrap().ino();
            let before = store.stats();

            plan.fail(step, errno);
            let err = store.issue(NewToken::new("never")).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(text), "{case}: {message}");
            assert!(message.contains("journal"), "{case}: {message}");
            assert!(store.list().iter().all(|t| t.name != "never"), "{case}");
            assert_eq!(store.stats().write_errors, 1, "{case}");

            plan.clear();
            let revoked = store.issue(NewToken::new("revoked")).unwrap();
            store.revoke(&revoked.id()).unwrap();
            let after = store.stats();
            assert_eq!(
                after.snapshots_written,
                before.snapshots_written + 1,
                "{case}: the issue after the failure must be a snapshot"
            );
            assert_eq!(
                after.journal_records_written,
                before.journal_records_written + 1,
                "{case}: the revoke after it appends to the fresh journal"
            );
            assert_ne!(
                fs::metadata(&journal).unwrap().ino(),
                inode,
                "{case}: the journal whose write failed was appended to again"
            );
            store.close().unwrap();

            let reopened = TokenStore::open(&s.path).unwrap();
            let mut names: Vec<String> = reopened.list().into_iter().map(|t| t.name).collect();
            names.sort();
            assert_eq!(names, ["kept", "revoked"], "{case}");
            assert!(reopened.validate(kept.secret()).is_ok());
            assert_eq!(
                reopened.validate(revoked.secret()).unwrap_err(),
                Rejection::Revoked
            );
        }
    }
}

/// For every fault (ENOSPC, EIO, EACCES) at every step of a snapshot (write, fsync,
/// rename), with appends failing too (a full disk): nothing in memory is lost, `issue` and
/// `revoke` return the error, a failed issue leaves no token, stats count it, each due
/// tick retries, the files are untouched meanwhile, and once the fault clears the next
/// snapshot holds everything.
#[test]
fn every_write_fault_loses_nothing_and_is_retried_until_it_clears() {
    for step in [FaultStep::Write, FaultStep::Fsync, FaultStep::Rename] {
        for (errno, text) in [
            (ENOSPC, "No space left on device"),
            (EIO, "Input/output error"),
            (EACCES, "Permission denied"),
        ] {
            let case = format!("{step:?} failing with {text}");
            let s = scratch();
            let (store, clock, plan) = faulty_store(&s.path);
            let used = store.issue(NewToken::new("used")).unwrap();
            let revoked = store.issue(NewToken::new("to-revoke")).unwrap();
            clock.advance(INTERVAL / 2);
            store.validate(used.secret()).unwrap();
            let used_at = clock.now_ms();
            let file_before = fs::read(&s.path).unwrap();
            let written_before = store.stats().snapshots_written;

            plan.fail(FaultStep::Append, errno);
            plan.fail(step, errno);
            let err = store.issue(NewToken::new("never")).unwrap_err();
            assert!(matches!(err, Error::Io { .. }), "{case}: {err}");
            let message = err.to_string();
            assert!(message.contains(text), "{case}: {message}");
            assert!(
                message.contains(s.path.to_str().unwrap()),
                "{case}: {message}"
            );
            // Not half-issued: the failed token is nowhere.
            assert_eq!(store.list().len(), 2, "{case}");
            assert!(store.list().iter().all(|t| t.name != "never"), "{case}");

            let err = store.revoke(&revoked.id()).unwrap_err();
            assert!(err.to_string().contains(text), "{case}: {err}");
            // The safe side: revoked in memory even though not yet on disk.
            assert_eq!(
                store.validate(revoked.secret()).unwrap_err(),
                Rejection::Revoked
            );
            assert!(store.validate(used.secret()).is_ok(), "{case}");

            let stats = store.stats();
            assert_eq!(stats.write_errors, 2, "{case}");
            assert!(
                stats.last_error.as_deref().unwrap().contains(text),
                "{case}"
            );
            assert!(
                stats.dirty_tokens >= 1,
                "{case}: unsaved last_used must stay dirty"
            );
            assert_eq!(stats.snapshots_written, written_before, "{case}");
            // The issue's append, then the revoke's snapshot (the journal is not trusted).
            assert_eq!(plan.injected(), 2, "{case}");

            // Each due tick retries (and fails again while the fault lasts).
            for retry in 1..=2 {
                clock.advance(INTERVAL);
                assert_eq!(
                    plan.injected(),
                    2 + retry,
                    "{case}: tick {retry} did not retry"
                );
                assert_eq!(store.stats().write_errors, 2 + retry, "{case}");
            }
            // A failed write never touches the store file and leaves no temp file.
            assert_eq!(fs::read(&s.path).unwrap(), file_before, "{case}");
            assert_eq!(temp_files(s.dir.path()), Vec::<String>::new(), "{case}");

            // The disk recovers: the next due tick writes a complete snapshot.
            plan.clear();
            let in_memory = store.list();
            clock.advance(INTERVAL);
            let stats = store.stats();
            assert_eq!(stats.snapshots_written, written_before + 1, "{case}");
            assert_eq!(stats.dirty_tokens, 0, "{case}");
            assert_eq!(stats.write_errors, 4, "{case}");
            assert_eq!(tokencache::inspect(&s.path).unwrap().revoked, 1, "{case}");
            store.close().unwrap();

            let reopened = TokenStore::builder(&s.path)
                .clock(clock.clone())
                .open()
                .unwrap();
            assert_eq!(reopened.list(), in_memory, "{case}");
            let info = reopened.get(&used.id()).unwrap();
            assert_eq!(info.last_used.unwrap().timestamp_millis() as u64, used_at);
            assert_eq!(
                reopened.validate(revoked.secret()).unwrap_err(),
                Rejection::Revoked,
                "{case}"
            );
            reopened.close().unwrap();
        }
    }
}

/// `flush` and `close` report a failed write, and a later `flush` after the fault clears
/// writes what the failed one could not.
#[test]
fn flush_and_close_report_a_failed_write() {
    let s = scratch();
    let (store, clock, plan) = faulty_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    clock.advance(INTERVAL / 4);
    store.validate(token.secret()).unwrap();
    plan.fail(FaultStep::AppendSync, EIO);
    let err = store.flush().unwrap_err();
    assert!(err.to_string().contains("Input/output error"), "{err}");
    plan.clear();
    store.flush().unwrap();
    assert_eq!(store.stats().dirty_tokens, 0);

    clock.advance(INTERVAL / 4);
    store.validate(token.secret()).unwrap();
    // `close` compacts.
    plan.fail(FaultStep::Rename, ENOSPC);
    let err = store.clone().close().unwrap_err();
    assert!(err.to_string().contains("No space left on device"), "{err}");
}

/// A fault on the very first write (creating the store file) makes `open` fail cleanly,
/// creating no store file, and leaves the store openable once the fault is gone.
#[test]
fn a_fault_creating_the_store_fails_open_cleanly() {
    let s = scratch();
    let plan = FaultPlan::default();
    plan.fail(FaultStep::Write, ENOSPC);
    let err = TokenStore::builder(&s.path)
        .fault_plan(plan.clone())
        .open()
        .unwrap_err();
    assert!(err.to_string().contains("create the store file"), "{err}");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(!s.path.exists());
    assert!(!common::journal_path(&s.path).exists());
    plan.clear();
    let store = TokenStore::builder(&s.path)
        .fault_plan(plan)
        .open()
        .unwrap();
    store.close().unwrap();
}

/// Whether this process can create files in a directory whose write bit is off (root can).
fn permissions_are_enforced(dir: &std::path::Path) -> bool {
    let probe = dir.join("probe");
    let enforced = fs::write(&probe, b"").is_err();
    let _ = fs::remove_file(&probe);
    enforced
}

/// Real, no injection: the store's directory turns read-only under a running store. When
/// the tests run as root (CI does), a read-only directory stops no one, so the checks run
/// in a child process as the unprivileged user `nobody` (as the PostgreSQL tests run the
/// server as `postgres`).
#[test]
fn a_read_only_directory_gives_clear_errors() {
    let probe = scratch();
    fs::set_permissions(probe.dir.path(), fs::Permissions::from_mode(0o500)).unwrap();
    let enforced = permissions_are_enforced(probe.dir.path());
    fs::set_permissions(probe.dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    if enforced {
        read_only_directory_checks();
        return;
    }
    // Root (or CAP_DAC_OVERRIDE): the same checks as `nobody`, in a temp directory it owns.
    let home = tempfile::tempdir_in("/tmp").unwrap();
    std::os::unix::fs::chown(home.path(), Some(common::NOBODY), Some(common::NOBODY)).unwrap();
    let child = common::spawn_child_test(
        "faults::child_read_only_directory",
        &[("TMPDIR", home.path().to_str().unwrap())],
    );
    let output = common::as_nobody(&child).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(CHECKED_AS),
        "the checks as nobody failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// What the child prints once the read-only checks passed, with its uid.
const CHECKED_AS: &str = "read-only directory checked as uid ";

/// Child process of `a_read_only_directory_gives_clear_errors` (not a test of its own):
/// runs its checks as the unprivileged user it was started as.
#[test]
#[ignore = "child process of a_read_only_directory_gives_clear_errors"]
fn child_read_only_directory() {
    if !common::in_child() {
        return;
    }
    read_only_directory_checks();
    let uid = fs::metadata("/proc/self").unwrap().uid();
    println!("{CHECKED_AS}{uid}");
}

fn read_only_directory_checks() {
    let s = scratch();
    let (store, _) = manual_store(&s.path);
    let kept = store.issue(NewToken::new("kept")).unwrap();
    let dir = s.dir.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o500)).unwrap();
    assert!(
        permissions_are_enforced(dir),
        "a read-only directory does not stop this process (uid {}) writing",
        fs::metadata("/proc/self").unwrap().uid()
    );
    // An issue appends to the journal, which needs no write to the directory: it succeeds
    // and is durable. (Before the journal, every change rewrote the store file, and this
    // issue was refused; as root the test never ran this far to notice.)
    let appended = store.issue(NewToken::new("appended")).unwrap();
    // A compaction does need one (a temp file, a rename): close compacts, and says why it
    // could not.
    let err = store.close().unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    let store = TokenStore::open(&s.path).unwrap();
    assert_eq!(store.list().len(), 2);
    assert!(store.validate(kept.secret()).is_ok());
    assert!(store.validate(appended.secret()).is_ok());
    store.issue(NewToken::new("after")).unwrap();
    store.close().unwrap();

    // A new store in a read-only directory: the lock file cannot be created.
    let ro = scratch();
    fs::set_permissions(ro.dir.path(), fs::Permissions::from_mode(0o500)).unwrap();
    let err = TokenStore::open(&ro.path).unwrap_err();
    fs::set_permissions(ro.dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    assert!(err.to_string().contains("Permission denied"), "{err}");
    assert!(err.to_string().contains("lock"), "{err}");
}

/// A revoke whose write failed is retried by the next due tick on its own, even when no
/// `last_used` is waiting to be written, and reaches the file once the fault clears.
#[test]
fn a_failed_revoke_alone_is_retried_by_the_next_tick() {
    let s = scratch();
    let (store, clock, plan) = faulty_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    plan.fail(FaultStep::AppendSync, EIO);
    plan.fail(FaultStep::Fsync, EIO);
    store.revoke(&token.id()).unwrap_err();
    assert_eq!(
        store.stats().dirty_tokens,
        0,
        "only the definition is pending"
    );
    clock.advance(INTERVAL);
    assert_eq!(plan.injected(), 2, "the tick did not retry the revoke");
    plan.clear();
    clock.advance(INTERVAL);
    assert_eq!(plan.injected(), 2);
    assert_eq!(store.stats().write_errors, 2);
    // Written by the tick: reopen without closing first would need the lock, so read the
    // file directly through `inspect`.
    assert_eq!(tokencache::inspect(&s.path).unwrap().revoked, 1);
    store.close().unwrap();
    let reopened = TokenStore::open(&s.path).unwrap();
    assert_eq!(
        reopened.validate(token.secret()).unwrap_err(),
        Rejection::Revoked
    );
}

/// A revoke, delete or rate limit whose journal append (or its fsync) failed is in force in
/// memory; a clean close must write it, so after reopening the revoked token is still
/// revoked and the deleted one still gone. (After the first failure the journal is not
/// trusted and each change is a compaction, so the disk stays full for those too.)
#[test]
fn a_revoked_token_stays_revoked_after_a_failed_write_and_close() {
    for step in [FaultStep::Append, FaultStep::AppendSync] {
        let s = scratch();
        let (store, _clock, plan) = faulty_store(&s.path);
        let revoked = store.issue(NewToken::new("revoked")).unwrap();
        let deleted = store.issue(NewToken::new("deleted")).unwrap();
        let limited = store.issue(NewToken::new("limited")).unwrap();
        plan.fail(step, EIO);
        plan.fail(FaultStep::Write, ENOSPC);
        store.revoke(&revoked.id()).unwrap_err();
        store.delete(&deleted.id()).unwrap_err();
        store
            .set_rate_limit(&limited.id(), Some(RateLimit::per_minute(1)))
            .unwrap_err();
        plan.clear();
        store.close().unwrap();

        let reopened = TokenStore::open(&s.path).unwrap();
        assert_eq!(
            reopened.validate(revoked.secret()).unwrap_err(),
            Rejection::Revoked,
            "{step:?}"
        );
        assert_eq!(
            reopened.validate(deleted.secret()).unwrap_err(),
            Rejection::Unknown,
            "{step:?}"
        );
        let limit = reopened.get(&limited.id()).unwrap().rate_limit;
        assert_eq!(limit, Some(RateLimit::per_minute(1)), "{step:?}");
    }
}

/// An issue or rotation whose record was written but whose fsync failed returned an error:
/// once the store has written again (another change, a flush, a clean close), the record
/// is never replayed, so the refused token never appears.
#[test]
fn a_refused_issue_or_rotation_never_replays_once_the_store_wrote_again() {
    type Act = fn(&TokenStore, &tokencache::IssuedToken);
    let refused: [(&str, Act); 2] = [
        ("issue", |store, _| {
            store.issue(NewToken::new("refused")).unwrap_err();
        }),
        ("rotate", |store, old| {
            store
                .rotate(&old.id(), std::time::Duration::from_secs(60))
                .unwrap_err();
        }),
    ];
    type Then = fn(&TokenStore);
    let thens: [(&str, Then); 3] = [
        ("close", |_| {}),
        ("flush", |store| store.flush().unwrap()),
        ("issue", |store| {
            drop(store.issue(NewToken::new("later")).unwrap())
        }),
    ];
    for (what, refuse) in refused {
        for (then, act) in thens {
            let case = format!("a refused {what}, then {then}");
            let s = scratch();
            let (store, _clock, plan) = faulty_store(&s.path);
            let old = store.issue(NewToken::new("old")).unwrap();
            plan.fail(FaultStep::AppendSync, EIO);
            refuse(&store, &old);
            plan.clear();
            act(&store);
            // A crash once the store wrote again, or a clean close: neither brings the
            // refused change back. (A crash before either may: its outcome is unknown.)
            let image = (then != "close").then(|| common::crash_image(&s.path));
            store.close().unwrap();
            for path in image.iter().map(|i| &i.path).chain([&s.path]) {
                let reopened = TokenStore::open(path).unwrap();
                let names: Vec<String> = reopened.list().into_iter().map(|t| t.name).collect();
                assert!(
                    names.iter().all(|n| n == "old" || n == "later"),
                    "{case}: {names:?}"
                );
                assert_eq!(names.iter().filter(|n| *n == "old").count(), 1, "{case}");
                let expiry = reopened.get(&old.id()).unwrap().expires_at;
                assert_eq!(expiry, None, "{case}");
            }
        }
    }
}

/// A clock that never fires the persister's timer, so a test decides which batch is the
/// first after a size check falls due.
#[derive(Debug, Clone, Default)]
struct SilentClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Clock for SilentClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A compaction that fails before its rename leaves the journal trusted, but a revoke it
/// held only in memory: the next flush must make it durable (a crash right after the flush
/// keeps it), not append only `last_used`.
#[test]
fn a_flush_after_a_failed_compaction_makes_the_revoke_durable() {
    let s = scratch();
    let clock = SilentClock::default();
    clock
        .0
        .store(1_767_225_600_000, std::sync::atomic::Ordering::Relaxed);
    let plan = FaultPlan::default();
    let store = TokenStore::builder(&s.path)
        .clock(clock.clone())
        .flush_interval(INTERVAL)
        .compaction_floor(0)
        .fault_plan(plan.clone())
        .open()
        .unwrap();
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    // The journal has outgrown the snapshot, and the revoke's batch is the first after the
    // size check falls due: it compacts, and the compaction fails.
    clock.0.fetch_add(
        INTERVAL.as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let snapshots = store.stats().snapshots_written;
    plan.fail(FaultStep::Write, EIO);
    store.revoke(&revoked.id()).unwrap_err();
    plan.clear();
    assert_eq!(store.stats().snapshots_written, snapshots);
    store.flush().unwrap();
    let image = common::crash_image(&s.path);
    let reopened = TokenStore::open(&image.path).unwrap();
    assert_eq!(
        reopened.validate(revoked.secret()).unwrap_err(),
        Rejection::Revoked
    );
    store.close().unwrap();
}

/// A batch whose record would exceed the journal's record limit (64 MiB) is written as a
/// snapshot: no sequence number is spent on it, so the journal has no gap, the next change
/// appends, and the files read beside the live store and after a crash hold every token.
#[test]
fn an_issue_many_too_large_for_a_record_is_written_as_a_snapshot_without_a_gap() {
    let s = scratch();
    let (store, _clock, _plan) = faulty_store(&s.path);
    let scopes: Vec<String> = (0..64).map(|n| format!("{n:0>128}")).collect();
    let requests = (0..8_000).map(|n| NewToken::new(format!("{n:0>256}")).scopes(scopes.clone()));
    let before = store.stats();
    let issued = store.issue_many(requests).unwrap();
    let after = store.stats();
    assert_eq!(after.snapshots_written, before.snapshots_written + 1);
    assert_eq!(
        after.journal_records_written,
        before.journal_records_written
    );
    let last = store.issue(NewToken::new("after")).unwrap();
    assert_eq!(
        store.stats().journal_records_written,
        after.journal_records_written + 1
    );
    let view = tokencache::StoreView::read(&s.path).unwrap();
    assert_eq!(view.len(), 8_001);
    let image = common::crash_image(&s.path);
    let reopened = TokenStore::open(&image.path).unwrap();
    assert_eq!(reopened.list().len(), 8_001);
    assert!(reopened.validate(issued[7_999].secret()).is_ok());
    assert!(reopened.validate(last.secret()).is_ok());
    store.close().unwrap();
}
