//! Model checks of the write-behind protocol, run on the production code: `Entry::touch` /
//! `take_for_snapshot`, the persister and `TokenStore`, with loom's atomics, locks, threads
//! and channel swapped in by `src/sync.rs`. Journal records and snapshots go to a recording
//! sink (no I/O) that keeps what the files would hold after each write ("on disk" below),
//! and time moves only through `ManualClock`, whose ticks are the persister's only timer.
//!
//! Each property has a twin: the same model with one bug planted in the production code
//! (`tokencache::__loom::Bug`), which loom must find. Run with `scripts/loom.sh`.
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use loom::thread;
use tokencache::__loom::{open_recorded, open_recorded_owned, plant, Bug, Recorder};
use tokencache::{Error, ManualClock, NewToken, RateLimit, Rejection, TokenId, TokenStore};

/// The start time of every model (Unix ms).
const T0: u64 = ManualClock::DEFAULT_START_MS;
/// The write-behind period; models move the clock by it to make a timed write due.
const INTERVAL: Duration = Duration::from_secs(60);

/// Runs `f` under loom with at most `bound` preemptions per execution, unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise, and reports how many executions it explored.
fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    let bound = *builder.preemption_bound.get_or_insert(bound);
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    builder.check(move || {
        counter.fetch_add(1, Relaxed);
        f();
    });
    let executions = executions.load(Relaxed);
    eprintln!("loom: {executions} executions explored, preemption bound {bound}");
}

/// A model's store: `tokens` clean tokens, a manual clock at `T0`, a recording sink.
struct Fixture {
    store: TokenStore,
    clock: ManualClock,
    recorder: Recorder,
    secrets: Vec<String>,
    ids: Vec<TokenId>,
}

fn open(tokens: usize) -> Fixture {
    open_with(tokens, None)
}

/// [`open`], with every token belonging to `owner` if given.
fn open_with(tokens: usize, owner: Option<&str>) -> Fixture {
    let clock = ManualClock::new(T0);
    let recorder = Recorder::default();
    let builder = TokenStore::builder("loom-model.snap")
        .clock(clock.clone())
        .flush_interval(INTERVAL);
    let (store, issued) = open_recorded_owned(builder, tokens, owner, recorder.clone()).unwrap();
    Fixture {
        store,
        clock,
        recorder,
        secrets: issued.iter().map(|t| t.secret().to_owned()).collect(),
        ids: issued.iter().map(|t| t.id()).collect(),
    }
}

/// `last_used` of `id` on disk after the newest write.
fn stored_last_used(recorder: &Recorder, id: TokenId) -> Option<u64> {
    recorder.last().and_then(|s| s.last_used(id))
}

// ---- 1. No lost `last_used` -------------------------------------------------------------

/// A validation racing a write (here the record `flush` appends) either lands in it or
/// re-dirties the token, so the next timed record stores the newest `last_used`. Bound 3: a lost update needs only two
/// preemptions (inside `take_for_snapshot`, inside `touch`); the third covers the send.
#[test]
fn a_validation_racing_a_write_reaches_the_next_timed_write() {
    model(3, no_lost_last_used);
}

/// Twin: `take_for_snapshot` reads `last_used` before clearing `dirty`; a touch in between
/// finds the flag still set, sends nothing, and its time never reaches disk.
#[test]
#[should_panic(expected = "lost last_used")]
fn twin_reading_before_clearing_dirty_loses_last_used() {
    let _bug = plant(Bug::ReadBeforeClear);
    model(3, no_lost_last_used);
}

fn no_lost_last_used() {
    let Fixture {
        store,
        clock,
        recorder,
        secrets,
        ids,
    } = open(1);
    store.validate(&secrets[0]).unwrap(); // at T0: dirty, id sent
    clock.advance(Duration::from_millis(1)); // a tick, but no write is due yet
    let racer = {
        let (store, secret) = (store.clone(), secrets[0].clone());
        thread::spawn(move || drop(store.validate(&secret).unwrap())) // at T0 + 1
    };
    store.flush().unwrap(); // a write racing the validation
    racer.join().unwrap();
    clock.advance(INTERVAL); // the timed write is due if anything is still dirty
    assert_eq!(
        stored_last_used(&recorder, ids[0]),
        Some(T0 + 1),
        "lost last_used: the newest validation never reached the disk"
    );
}

/// A validation whose id a full channel refused (it sets `overflow` instead of blocking)
/// still reaches the next timed write. Bound 3: the twin's loss needs one preemption
/// (the validation meeting a tick in the one-slot channel); two more move the flag around it.
#[test]
fn a_validation_refused_by_a_full_channel_reaches_the_next_timed_write() {
    model(3, overflow_not_lost);
}

/// Twin: the persister ignores the `overflow` flag, so the refused id is forgotten.
#[test]
#[should_panic(expected = "lost last_used")]
fn twin_ignoring_overflow_loses_last_used() {
    let _bug = plant(Bug::IgnoreOverflow);
    model(3, overflow_not_lost);
}

fn overflow_not_lost() {
    let clock = ManualClock::new(T0);
    let recorder = Recorder::default();
    let builder = TokenStore::builder("loom-model.snap")
        .clock(clock.clone())
        .flush_interval(INTERVAL)
        .channel_capacity(1);
    let (store, issued) = open_recorded(builder, 1, recorder.clone()).unwrap();
    let (secret, id) = (issued[0].secret().to_owned(), issued[0].id());
    let ticker = {
        let clock = clock.clone();
        thread::spawn(move || clock.advance(Duration::from_millis(1))) // fills the channel
    };
    store.validate(&secret).unwrap(); // its send may find the channel full
    ticker.join().unwrap();
    clock.advance(INTERVAL); // the timed write is due if anything is still dirty
    let newest = store.get(&id).and_then(|t| t.last_used);
    let newest = newest.map(|t| u64::try_from(t.timestamp_millis()).unwrap());
    assert!(newest.is_some());
    assert_eq!(
        stored_last_used(&recorder, id),
        newest,
        "lost last_used: a validation refused by the full channel never reached the disk ({:?})",
        store.stats()
    );
}

// ---- 2. Coalescing ----------------------------------------------------------------------

/// Three validations of one clean token send its id to the persister exactly once (never
/// zero, never twice). Bound 3: a double send needs two validations to pass the fresh check
/// and meet at the dirty flag (two preemptions); the third lets the third validation join.
#[test]
fn validations_of_a_clean_token_send_exactly_once() {
    model(3, coalescing);
}

/// Twin: `touch` tests `dirty` with a load and sets it with a store (check-then-act), so
/// two validations that both see it clean both send.
#[test]
#[should_panic(expected = "coalescing broken")]
fn twin_check_then_set_dirty_sends_twice() {
    let _bug = plant(Bug::CheckThenSetDirty);
    model(3, coalescing);
}

fn coalescing() {
    let Fixture { store, secrets, .. } = open(1);
    let validators: Vec<_> = (0..2)
        .map(|_| {
            let (store, secret) = (store.clone(), secrets[0].clone());
            thread::spawn(move || drop(store.validate(&secret).unwrap()))
        })
        .collect();
    store.validate(&secrets[0]).unwrap();
    for validator in validators {
        validator.join().unwrap();
    }
    assert_eq!(
        store.stats().dirty_sends,
        1,
        "coalescing broken: one clean token, sends between two writes"
    );
}

// ---- 3. Flush barrier -------------------------------------------------------------------

/// Whatever a thread observed before `flush` (here: its own validation, which may have
/// found another thread's unsent `last_used` and sent nothing) is in the record `flush`
/// waited for. Bound 3: the miss needs one preemption (the other validation stopped between
/// its store and its send); two more let that send land before, inside or after the batch.
#[test]
fn flush_waits_for_a_write_holding_everything_seen_before_it() {
    model(3, flush_barrier);
}

/// Twin: the persister writes for a flush only if a `Dirty` message arrived, trusting
/// messages instead of scanning; the racing validation has not sent yet, so nothing is written.
#[test]
#[should_panic(expected = "flush barrier broken")]
fn twin_flush_trusting_dirty_messages_misses_an_unsent_update() {
    let _bug = plant(Bug::FlushTrustsMessages);
    model(3, flush_barrier);
}

fn flush_barrier() {
    let Fixture {
        store,
        recorder,
        secrets,
        ids,
        ..
    } = open(1);
    let other = {
        let (store, secret) = (store.clone(), secrets[0].clone());
        thread::spawn(move || drop(store.validate(&secret).unwrap()))
    };
    store.validate(&secrets[0]).unwrap();
    store.flush().unwrap();
    assert_eq!(
        stored_last_used(&recorder, ids[0]),
        Some(T0),
        "flush barrier broken: flush returned before the disk held what this thread saw"
    );
    other.join().unwrap();
}

// ---- 4. Group commit --------------------------------------------------------------------

/// A concurrent `issue` and `revoke` each return only after the journal record holding
/// their change (one record when they meet in one batch) is on disk, and once the disk
/// holds the revoke it always does. Bound 3: the two requests can meet in one batch or
/// two, in either order, with the write in between.
#[test]
fn issue_and_revoke_return_only_after_their_record_and_a_revoke_stays() {
    model(3, group_commit);
}

/// Twin: the persister answers `issue`/`revoke`/`flush` before appending the record.
#[test]
#[should_panic(expected = "acknowledged before")]
fn twin_acking_before_the_write_breaks_group_commit() {
    let _bug = plant(Bug::AckBeforeWrite);
    model(3, group_commit);
}

fn group_commit() {
    let Fixture {
        store,
        recorder,
        secrets,
        ids,
        ..
    } = open(1);
    let issuer = {
        let (store, recorder) = (store.clone(), recorder.clone());
        thread::spawn(move || {
            let new = store.issue(NewToken::new("new")).unwrap();
            let written = recorder.snapshots().iter().any(|s| s.contains(new.id()));
            assert!(written, "issue acknowledged before the disk held it");
            new
        })
    };
    store.revoke(&ids[0]).unwrap();
    let written = recorder.snapshots().iter().any(|s| s.revoked(ids[0]));
    assert!(written, "revoke acknowledged before the disk held it");
    assert_eq!(store.validate(&secrets[0]).unwrap_err(), Rejection::Revoked);
    let new = issuer.join().unwrap();
    let valid = store.validate(new.secret()).is_ok();
    assert!(
        valid,
        "issue acknowledged before the new token joined the map"
    );

    let snapshots = recorder.snapshots();
    let first = snapshots.iter().position(|s| s.revoked(ids[0])).unwrap();
    assert!(
        snapshots[first..].iter().all(|s| s.revoked(ids[0])),
        "a revoke was undone by a later write"
    );
}

// ---- 5. Shutdown ------------------------------------------------------------------------

/// `close` racing a validation and an issue neither hangs (loom reports a deadlock), nor
/// panics, nor loses a change acknowledged before it: the validation made before `close`
/// and an `issue` that returned `Ok`. Bound 2: each racer is preempted once around the
/// persister's last batch.
#[test]
fn close_racing_validation_and_issue_loses_no_acknowledged_change() {
    model(2, shutdown_by_close);
}

/// Twin: on shutdown the persister answers and exits without writing what is pending.
#[test]
#[should_panic(expected = "shutdown lost")]
fn twin_shutdown_without_the_final_write_loses_last_used() {
    let _bug = plant(Bug::ShutdownSkipsWrite);
    model(2, shutdown_by_close);
}

/// Twin: requests bypass the inbox's gate (the code before loom found this), so an `issue`
/// queued behind `Shutdown` is never answered and its caller waits forever. loom aborts the
/// process on a deadlock, so the bugged model runs in a child test process.
#[test]
fn twin_request_queued_behind_shutdown_hangs_forever() {
    expect_deadlock("ungated_requests_model", "the stranded request");
}

/// Runs the `#[ignore]`d test `model` (a bugged model that hangs) in a child test process,
/// since loom aborts the process on a deadlock, and checks that loom reported one.
fn expect_deadlock(model: &str, missed: &str) {
    let exe = std::env::current_exe().unwrap();
    let child = std::process::Command::new(exe)
        .args(["--exact", "--ignored", "--nocapture", model])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert!(!child.status.success(), "loom missed {missed}");
    assert!(
        stderr.contains("deadlock"),
        "expected loom to report a deadlock:\n{stderr}"
    );
}

/// The bugged model for the twin above; run only by it, in a child process.
#[test]
#[ignore = "run by twin_request_queued_behind_shutdown_hangs_forever in a child process"]
fn ungated_requests_model() {
    let _bug = plant(Bug::UngatedRequests);
    model(2, shutdown_by_close);
}

fn shutdown_by_close() {
    let Fixture {
        store,
        recorder,
        secrets,
        ids,
        ..
    } = open(1);
    let validator = {
        let (store, secret) = (store.clone(), secrets[0].clone());
        thread::spawn(move || drop(store.validate(&secret).unwrap()))
    };
    let issuer = {
        let store = store.clone();
        thread::spawn(move || store.issue(NewToken::new("late")))
    };
    store.validate(&secrets[0]).unwrap();
    store.close().unwrap();
    validator.join().unwrap();
    let issued = issuer.join().unwrap();

    let last = recorder
        .last()
        .expect("shutdown lost everything: no snapshot");
    assert_eq!(last.last_used(ids[0]), Some(T0), "shutdown lost last_used");
    match issued {
        Ok(new) => assert!(last.contains(new.id()), "shutdown lost an issued token"),
        Err(e) => assert!(matches!(e, Error::Closed { .. }), "issue failed: {e}"),
    }
}

/// Two `close` calls on clones of one store: each returns only once the final snapshot,
/// holding the validation made before them, is written (whichever of them wrote it). Bound
/// 2: the second caller is preempted around the first one's flush.
#[test]
fn concurrent_closes_each_return_after_the_final_snapshot() {
    model(2, two_closes);
}

/// Twin: a second `close` that finds the persister already taken returns at once.
#[test]
#[should_panic(expected = "a close returned before the final snapshot")]
fn twin_second_close_without_waiting_returns_before_the_flush() {
    let _bug = plant(Bug::CloseWithoutWaiting);
    model(2, two_closes);
}

fn two_closes() {
    closes_racing(TokenStore::close);
}

/// Two closes on clones of one store, `close_mine` here and `close` on another thread; each
/// must return only once the final snapshot holds a validation made before both.
fn closes_racing(close_mine: fn(TokenStore) -> Result<(), Error>) {
    let Fixture {
        store,
        recorder,
        secrets,
        ids,
        ..
    } = open(1);
    store.validate(&secrets[0]).unwrap();
    let other = {
        let (store, recorder, id) = (store.clone(), recorder.clone(), ids[0]);
        thread::spawn(move || {
            store.close().unwrap();
            stored_last_used(&recorder, id)
        })
    };
    close_mine(store).unwrap();
    let mine = stored_last_used(&recorder, ids[0]);
    let theirs = other.join().unwrap();
    for seen in [mine, theirs] {
        assert_eq!(seen, Some(T0), "a close returned before the final snapshot");
    }
}

/// Dropping the last handle (in whichever thread does it last) closes like `close`: the
/// final snapshot holds every validation and issue made through any handle. Bound 2: as
/// for `close`.
#[test]
fn dropping_the_last_handle_loses_no_change() {
    model(2, shutdown_by_drop);
}

/// Twin: the same planted bug, now reached through `Drop` in some thread.
#[test]
#[should_panic(expected = "shutdown lost")]
fn twin_drop_without_the_final_write_loses_last_used() {
    let _bug = plant(Bug::ShutdownSkipsWrite);
    model(2, shutdown_by_drop);
}

fn shutdown_by_drop() {
    let Fixture {
        store,
        clock,
        recorder,
        secrets,
        ids,
    } = open(1);
    // The clock holds only a timer, not the store; drop it so the handles decide.
    drop(clock);
    let validator = {
        let (store, secret) = (store.clone(), secrets[0].clone());
        thread::spawn(move || drop(store.validate(&secret).unwrap()))
    };
    let issuer = {
        let store = store.clone();
        thread::spawn(move || store.issue(NewToken::new("late")).unwrap().id())
    };
    store.validate(&secrets[0]).unwrap();
    drop(store);
    validator.join().unwrap();
    let new = issuer.join().unwrap();

    let last = recorder
        .last()
        .expect("shutdown lost everything: no snapshot");
    assert_eq!(last.last_used(ids[0]), Some(T0), "shutdown lost last_used");
    assert!(last.contains(new), "shutdown lost an issued token");
}

// ---- 7. Revoke and delete racing a validation ------------------------------------------

/// A revoke on one thread racing a validation on another: the validation accepts or says
/// `Revoked`, and once `revoke` has returned (and the validating thread has seen it
/// return) it says `Revoked`. Bound 2 (the twin is found at 1: the persister preempted
/// between its reply and its change).
#[test]
fn a_validation_after_revoke_returned_says_revoked() {
    model(2, || change_racing_validate(Change::Revoke));
}

/// Twin: the persister answers the revoke before it marks the entry, so a validation
/// that starts after `revoke` returned can still accept the token.
#[test]
#[should_panic(expected = "accepted after the change returned")]
fn twin_revoke_answered_before_memory_changes_accepts_a_revoked_token() {
    let _bug = plant(Bug::ChangeAfterReply);
    model(2, || change_racing_validate(Change::Revoke));
}

/// A delete on one thread racing a validation on another: the validation accepts or says
/// `Unknown`, and once `delete` has returned it says `Unknown`. Bound 2. (Under loom the map hands
/// out clones; the reclamation of a deleted entry a validation still borrows is papaya's,
/// checked by `map::tests::a_lent_entry_outlives_its_removal_while_held` under Miri and by
/// the real-thread `tests/lifecycle.rs` `deletes_racing_validations_on_real_threads`.)
#[test]
fn a_validation_after_delete_returned_says_unknown() {
    model(2, || change_racing_validate(Change::Delete));
}

/// Twin: the persister answers the delete before it removes the entry.
#[test]
#[should_panic(expected = "accepted after the change returned")]
fn twin_delete_answered_before_memory_changes_accepts_a_deleted_token() {
    let _bug = plant(Bug::ChangeAfterReply);
    model(2, || change_racing_validate(Change::Delete));
}

/// `revoke_owner` racing a validation of one of the owner's tokens: as for `revoke`, once
/// it has returned every validation says `Revoked`. Bound 2.
#[test]
fn a_validation_after_revoke_owner_returned_says_revoked() {
    model(2, || change_racing_validate(Change::RevokeOwner));
}

/// Twin: the persister answers `revoke_owner` before it marks the owner's tokens.
#[test]
#[should_panic(expected = "accepted after the change returned")]
fn twin_revoke_owner_answered_before_memory_changes_accepts_a_revoked_token() {
    let _bug = plant(Bug::ChangeAfterReply);
    model(2, || change_racing_validate(Change::RevokeOwner));
}

/// `delete_owner` racing a validation: once it has returned, `Unknown`. Bound 2.
#[test]
fn a_validation_after_delete_owner_returned_says_unknown() {
    model(2, || change_racing_validate(Change::DeleteOwner));
}

/// Twin: the persister answers `delete_owner` before it removes the owner's tokens.
#[test]
#[should_panic(expected = "accepted after the change returned")]
fn twin_delete_owner_answered_before_memory_changes_accepts_a_deleted_token() {
    let _bug = plant(Bug::ChangeAfterReply);
    model(2, || change_racing_validate(Change::DeleteOwner));
}

/// Two tokens of one owner validated on two threads at once, under an owner limit with a
/// burst of one: exactly one is accepted (one budget, spent by one compare-exchange chain
/// whichever token's validation gets there first). Bound 2.
#[test]
fn two_tokens_of_one_owner_share_its_budget() {
    model(2, || {
        let clock = ManualClock::new(T0);
        let builder = TokenStore::builder("loom-model.snap")
            .clock(clock)
            .flush_interval(INTERVAL);
        let (store, issued) =
            open_recorded_owned(builder, 2, Some("acme"), Recorder::default()).unwrap();
        let limit = RateLimit::per_hour(1);
        store.set_owner_rate_limit("acme", Some(limit)).unwrap();
        let other = {
            let (store, secret) = (store.clone(), issued[1].secret().to_owned());
            thread::spawn(move || store.validate(&secret).is_ok())
        };
        let mine = store.validate(issued[0].secret()).is_ok();
        let theirs = other.join().unwrap();
        assert_eq!(usize::from(mine) + usize::from(theirs), 1, "one budget");
    });
}

#[derive(Clone, Copy)]
enum Change {
    Revoke,
    Delete,
    RevokeOwner,
    DeleteOwner,
}

fn change_racing_validate(change: Change) {
    let owned = matches!(change, Change::RevokeOwner | Change::DeleteOwner);
    let Fixture {
        store,
        secrets,
        ids,
        ..
    } = open_with(1, owned.then_some("acme"));
    let refused = match change {
        Change::Revoke | Change::RevokeOwner => Rejection::Revoked,
        Change::Delete | Change::DeleteOwner => Rejection::Unknown,
    };
    let returned = Arc::new(loom::sync::atomic::AtomicBool::new(false));
    let changer = {
        let (store, returned, id) = (store.clone(), returned.clone(), ids[0]);
        thread::spawn(move || {
            match change {
                Change::Revoke => store.revoke(&id).unwrap(),
                Change::Delete => store.delete(&id).unwrap(),
                Change::RevokeOwner => assert_eq!(store.revoke_owner("acme").unwrap(), 1),
                Change::DeleteOwner => assert_eq!(store.delete_owner("acme").unwrap(), 1),
            }
            // Release: pairs with the Acquire below; the validation then starts after the
            // change's call returned.
            returned.store(true, loom::sync::atomic::Ordering::Release);
        })
    };
    let after = returned.load(loom::sync::atomic::Ordering::Acquire);
    match store.validate(&secrets[0]) {
        Ok(_) => assert!(!after, "accepted after the change returned"),
        Err(rejection) => assert_eq!(rejection, refused),
    }
    changer.join().unwrap();
    match store.validate(&secrets[0]) {
        Ok(_) => panic!("accepted after the change returned (and its thread ended)"),
        Err(rejection) => assert_eq!(rejection, refused),
    }
}

// ---- 8. Compaction racing a validation --------------------------------------------------

/// A validation racing a compaction (the full snapshot that replaces the journal, here
/// started by the timer because the journal outgrew a floor of 0) either lands in the
/// snapshot or stays dirty with its time not counted as written, so the next timed record
/// stores the newest `last_used`. Bound 3: the loss needs the validation between the
/// snapshot's read and its bookkeeping (two preemptions); the third moves its send.
#[test]
fn a_validation_racing_a_compaction_reaches_the_next_write() {
    model(3, compaction_racing_validation);
}

/// Twin: after a compaction, memory's newest `last_used` is taken as written instead of the
/// value the snapshot read; a validation in between is then never written.
#[test]
#[should_panic(expected = "lost last_used")]
fn twin_taking_memory_as_written_after_a_compaction_loses_last_used() {
    let _bug = plant(Bug::PersistedFromMemory);
    model(3, compaction_racing_validation);
}

fn compaction_racing_validation() {
    let clock = ManualClock::new(T0);
    let recorder = Recorder::default();
    let builder = TokenStore::builder("loom-model.snap")
        .clock(clock.clone())
        .flush_interval(INTERVAL)
        .compaction_floor(0);
    let (store, issued) = open_recorded(builder, 1, recorder.clone()).unwrap();
    let (secret, id) = (issued[0].secret().to_owned(), issued[0].id());
    store.validate(&secret).unwrap(); // at T0
    store.flush().unwrap(); // a journal record: the next size check compacts
    clock.advance(Duration::from_millis(1)); // a tick, but no check is due yet
    let racer = {
        let (store, secret) = (store.clone(), secret.clone());
        thread::spawn(move || drop(store.validate(&secret).unwrap()))
    };
    clock.advance(INTERVAL); // the size check is due: a compaction racing the validation
    racer.join().unwrap();
    let compactions = recorder
        .snapshots()
        .iter()
        .filter(|r| r.is_compaction())
        .count();
    assert_eq!(
        compactions, 2,
        "the first snapshot and the timed compaction"
    );
    clock.advance(INTERVAL); // the timed record is due if anything is still dirty
    let newest = store.get(&id).and_then(|t| t.last_used);
    let newest = newest.map(|t| u64::try_from(t.timestamp_millis()).unwrap());
    assert_eq!(
        stored_last_used(&recorder, id),
        newest,
        "lost last_used: the validation racing the compaction never reached the disk"
    );
}

// ---- 9. Async calls ---------------------------------------------------------------------

/// An async revoke (a loom thread running `block_on`) racing `close`: it is either done
/// (and the final snapshot holds it) or refused with `Closed`; never stranded behind
/// `Shutdown`, which would leave its future unwoken (loom reports a deadlock). Bound 2.
#[test]
fn an_async_revoke_racing_close_is_answered_or_refused() {
    model(2, async_revoke_racing_close);
}

/// Twin: on shutdown the persister exits without handling the rest of its last batch, so a
/// revoke queued before `Shutdown` is never answered (its caller hears `PersisterDied`).
#[test]
#[should_panic(expected = "revoke failed")]
fn twin_shutdown_skipping_its_batch_fails_a_queued_async_revoke() {
    let _bug = plant(Bug::ShutdownSkipsWrite);
    model(2, async_revoke_racing_close);
}

/// Twin: async requests bypass the inbox's gate too, so a revoke queued behind `Shutdown`
/// is never answered and its future never woken; loom reports the deadlock (in a child
/// process).
#[test]
fn twin_async_request_queued_behind_shutdown_hangs_forever() {
    expect_deadlock("ungated_async_requests_model", "the stranded async request");
}

/// The bugged model for the twin above; run only by it, in a child process.
#[test]
#[ignore = "run by twin_async_request_queued_behind_shutdown_hangs_forever in a child process"]
fn ungated_async_requests_model() {
    let _bug = plant(Bug::UngatedRequests);
    model(2, async_revoke_racing_close);
}

fn async_revoke_racing_close() {
    let Fixture {
        store,
        recorder,
        ids,
        ..
    } = open(1);
    let revoker = {
        let (store, id) = (store.clone(), ids[0]);
        thread::spawn(move || loom::future::block_on(store.revoke_async(&id)))
    };
    store.close().unwrap();
    match revoker.join().unwrap() {
        Ok(()) => {
            let last = recorder.last().expect("shutdown lost everything");
            assert!(last.revoked(ids[0]), "shutdown lost an async revoke");
        }
        Err(e) => assert!(matches!(e, Error::Closed { .. }), "revoke failed: {e}"),
    }
}

/// An async revoke that finds the one-message channel full (a validation's dirty id in
/// it) waits without blocking and is woken when the persister takes a message; it then
/// queues and completes. A lost wake-up would leave it waiting forever (a deadlock to
/// loom). Bound 2.
#[test]
fn an_async_revoke_finding_the_channel_full_is_woken_by_the_room_made() {
    model(2, async_revoke_behind_a_full_channel);
}

/// Twin: the async path tries the full channel without leaving its waker, so nothing wakes
/// it; loom reports the deadlock (in a child process).
#[test]
fn twin_async_send_without_a_waker_hangs_forever() {
    expect_deadlock("async_without_waker_model", "the unwoken async request");
}

/// The bugged model for the twin above; run only by it, in a child process.
#[test]
#[ignore = "run by twin_async_send_without_a_waker_hangs_forever in a child process"]
fn async_without_waker_model() {
    let _bug = plant(Bug::AsyncWithoutWaker);
    model(2, async_revoke_behind_a_full_channel);
}

fn async_revoke_behind_a_full_channel() {
    let recorder = Recorder::default();
    let builder = TokenStore::builder("loom-model.snap")
        .clock(ManualClock::new(T0))
        .flush_interval(INTERVAL)
        .channel_capacity(1);
    let (store, issued) = open_recorded(builder, 2, recorder.clone()).unwrap();
    let (secret, doomed) = (issued[0].secret().to_owned(), issued[1].id());
    let validator = {
        let store = store.clone();
        thread::spawn(move || drop(store.validate(&secret).unwrap())) // fills the channel
    };
    loom::future::block_on(store.revoke_async(&doomed)).unwrap();
    assert!(
        recorder.last().is_some_and(|s| s.revoked(doomed)),
        "an async revoke returned before its snapshot"
    );
    validator.join().unwrap();
}

/// `close_async` (under `block_on`) and `close` on clones: each returns only once the final
/// snapshot, holding a validation made before both, is written. Bound 2.
#[test]
fn close_async_and_close_each_return_after_the_final_snapshot() {
    model(2, close_async_and_close);
}

/// Twin: the blocking close that finds a close under way returns at once.
#[test]
#[should_panic(expected = "a close returned before the final snapshot")]
fn twin_close_without_waiting_for_close_async_returns_before_the_flush() {
    let _bug = plant(Bug::CloseWithoutWaiting);
    model(2, close_async_and_close);
}

fn close_async_and_close() {
    closes_racing(|store| loom::future::block_on(store.close_async()));
}
