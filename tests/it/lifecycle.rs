//! A token's life after issue: delete, purge, retention and rotate, each durable before it
//! returns (checked by reopening the file), and what a failed write leaves behind.
//! SIGKILL during deletes and rotations: `crash`.

use crate::common;

use std::time::Duration;

use common::{faulty_store, manual_builder, manual_store, scratch, INTERVAL};
use tokencache::__fault::FaultStep;
use tokencache::{Clock, Error, ManualClock, NewToken, RateLimit, Rejection, TokenStore};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn a_deleted_token_is_unknown_gone_from_lists_and_from_the_file() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let gone = store.issue(NewToken::new("gone").scope("read")).unwrap();
    let kept = store.issue(NewToken::new("kept")).unwrap();
    store.delete(&gone.id()).unwrap();
    assert_eq!(
        store.validate(gone.secret()).unwrap_err(),
        Rejection::Unknown
    );
    assert_eq!(store.get(&gone.id()), None);
    assert_eq!(store.list().len(), 1);
    assert_eq!(store.stats().tokens, 1);
    let again = store.delete(&gone.id()).unwrap_err();
    assert!(
        matches!(again, Error::UnknownId(id) if id == gone.id()),
        "{again}"
    );
    store.close().unwrap();

    let store = TokenStore::open(&s.path).unwrap();
    assert_eq!(
        store.validate(gone.secret()).unwrap_err(),
        Rejection::Unknown
    );
    assert!(store.validate(kept.secret()).is_ok());
    assert_eq!(store.list().len(), 1);
}

#[test]
fn a_token_validated_before_its_delete_stays_readable_while_held() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let issued = store
        .issue(NewToken::new("held").scopes(["a", "b"]))
        .unwrap();
    let held = store.validate(issued.secret()).unwrap();
    // Another thread deletes it while this one still holds the borrowed entry.
    std::thread::scope(|scope| {
        scope.spawn(|| store.delete(&issued.id()).unwrap());
    });
    assert_eq!(held.name(), "held");
    assert_eq!(held.scopes().collect::<Vec<_>>(), ["a", "b"]);
    let owned = held.into_owned();
    assert_eq!(
        store.validate(issued.secret()).unwrap_err(),
        Rejection::Unknown
    );
    assert_eq!(owned.name(), "held");
}

#[test]
fn purge_deletes_exactly_the_tokens_revoked_or_expired_long_enough_ago() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let live = store.issue(NewToken::new("live")).unwrap();
    let revoked_early = store.issue(NewToken::new("revoked-early")).unwrap();
    let expires_early = store
        .issue(NewToken::new("expires-early").expires_in(Duration::from_secs(60)))
        .unwrap();
    let expires_late = store
        .issue(NewToken::new("expires-late").expires_in(3 * HOUR))
        .unwrap();
    store.revoke(&revoked_early.id()).unwrap();
    clock.advance(2 * HOUR);
    let revoked_late = store.issue(NewToken::new("revoked-late")).unwrap();
    store.revoke(&revoked_late.id()).unwrap();
    clock.advance(Duration::from_secs(60));

    // Revoked or expired more than an hour ago: the two early ones only.
    assert_eq!(store.purge(HOUR).unwrap(), 2);
    for gone in [&revoked_early, &expires_early] {
        assert_eq!(
            store.validate(gone.secret()).unwrap_err(),
            Rejection::Unknown
        );
    }
    assert_eq!(store.purge(HOUR).unwrap(), 0, "nothing left that old");
    // Age zero: everything revoked or expired by now.
    assert_eq!(store.purge(Duration::ZERO).unwrap(), 1);
    assert_eq!(
        store.validate(revoked_late.secret()).unwrap_err(),
        Rejection::Unknown
    );
    store.close().unwrap();

    let store = TokenStore::open(&s.path).unwrap();
    let mut names: Vec<String> = store.list().into_iter().map(|t| t.name).collect();
    names.sort();
    assert_eq!(names, ["expires-late", "live"]);
    assert!(store.validate(live.secret()).is_ok());
    drop(expires_late);
}

#[test]
fn retention_makes_the_persister_purge_on_its_timed_tick() {
    let s = scratch();
    let (builder, clock) = manual_builder(&s.path);
    let store = builder.retention(HOUR).open().unwrap();
    let kept = store.issue(NewToken::new("kept")).unwrap();
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    store.revoke(&revoked.id()).unwrap();
    clock.advance(HOUR / 2);
    assert_eq!(store.list().len(), 2, "not old enough yet");
    clock.advance(HOUR / 2 + INTERVAL);
    assert_eq!(store.list().len(), 1, "purged by the tick");
    assert_eq!(
        store.validate(revoked.secret()).unwrap_err(),
        Rejection::Unknown
    );
    // The tick wrote the purge: killing the store here would not bring the token back.
    let on_disk = tokencache::inspect(&s.path).unwrap();
    assert_eq!((on_disk.tokens, on_disk.revoked), (1, 0));
    assert!(store.validate(kept.secret()).is_ok());
}

/// Retention keeps its own timer: a steady stream of other changes (each one a write) does
/// not keep resetting it.
#[test]
fn retention_purges_even_while_other_changes_keep_writing() {
    let s = scratch();
    let (builder, clock) = manual_builder(&s.path);
    let store = builder.retention(Duration::ZERO).open().unwrap();
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    store.revoke(&revoked.id()).unwrap();
    // An issue every 10 s: each writes a snapshot, so a write is never an interval old.
    for i in 0..12 {
        clock.advance(INTERVAL / 6);
        store.issue(NewToken::new(format!("busy-{i}"))).unwrap();
    }
    assert_eq!(
        store.validate(revoked.secret()).unwrap_err(),
        Rejection::Unknown
    );
}

#[test]
fn rotate_issues_a_twin_and_shortens_the_old_tokens_life_to_the_grace() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let limit = RateLimit::per_minute(600).burst(20);
    let old = store
        .issue(
            NewToken::new("ci-bot")
                .scopes(["read", "write"])
                .expires_in(24 * HOUR)
                .rate_limit(limit),
        )
        .unwrap();
    clock.advance(HOUR);
    let rotated_at = clock.now_ms();
    let new = store.rotate(&old.id(), HOUR).unwrap();
    assert_ne!(new.id(), old.id());

    let info = store.get(&new.id()).unwrap();
    assert_eq!(info.name, "ci-bot");
    assert_eq!(info.scopes, ["read", "write"]);
    assert_eq!(info.rate_limit, Some(limit));
    let expiry = |at: Option<chrono::DateTime<chrono::Utc>>| at.unwrap().timestamp_millis() as u64;
    assert_eq!(
        expiry(info.expires_at),
        rotated_at + 24 * 3_600_000,
        "same lifetime"
    );
    let old_info = store.get(&old.id()).unwrap();
    assert_eq!(
        expiry(old_info.expires_at),
        rotated_at + 3_600_000,
        "now + grace"
    );

    // Both work during the grace; then only the new one.
    assert!(store.validate(old.secret()).is_ok());
    assert!(store.validate(new.secret()).is_ok());
    clock.advance(HOUR);
    assert_eq!(
        store.validate(old.secret()).unwrap_err(),
        Rejection::Expired
    );
    assert!(store.validate(new.secret()).is_ok());

    // A grace longer than the old token's own life does not lengthen it.
    let short = store
        .issue(NewToken::new("short").expires_in(Duration::from_secs(60)))
        .unwrap();
    let short_expiry = expiry(store.get(&short.id()).unwrap().expires_at);
    store.rotate(&short.id(), 10 * HOUR).unwrap();
    assert_eq!(
        expiry(store.get(&short.id()).unwrap().expires_at),
        short_expiry
    );

    let unknown = store
        .rotate(&"zzzzzzzz".parse().unwrap(), HOUR)
        .unwrap_err();
    assert!(matches!(unknown, Error::UnknownId(_)), "{unknown}");
    store.close().unwrap();

    let (store, _clock) = manual_store(&s.path);
    assert_eq!(
        expiry(store.get(&old.id()).unwrap().expires_at),
        rotated_at + 3_600_000,
        "the shortened expiry is on disk"
    );
    assert_eq!(store.get(&new.id()).unwrap().name, "ci-bot");
}

#[test]
fn a_rotation_whose_write_fails_changes_nothing() {
    let s = scratch();
    let (store, _clock, plan) = faulty_store(&s.path);
    let old = store.issue(NewToken::new("bot")).unwrap();
    plan.fail(FaultStep::Append, 28);
    let error = store.rotate(&old.id(), HOUR).unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error}");
    assert_eq!(store.list().len(), 1, "no new token");
    assert_eq!(
        store.get(&old.id()).unwrap().expires_at,
        None,
        "old expiry untouched"
    );
    plan.clear();
    store.close().unwrap();
    assert_eq!(TokenStore::open(&s.path).unwrap().list().len(), 1);
}

#[test]
fn a_delete_whose_write_fails_is_gone_from_memory_and_reaches_the_file_later() {
    let s = scratch();
    let (store, clock, plan) = faulty_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    plan.fail(FaultStep::Append, 5);
    plan.fail(FaultStep::Fsync, 5);
    assert!(store.delete(&token.id()).is_err());
    assert_eq!(
        store.validate(token.secret()).unwrap_err(),
        Rejection::Unknown
    );
    assert_eq!(tokencache::inspect(&s.path).unwrap().tokens, 1, "not yet");
    plan.clear();
    clock.advance(INTERVAL);
    assert_eq!(
        tokencache::inspect(&s.path).unwrap().tokens,
        0,
        "the tick retried"
    );
}

/// Real threads: validations (each holding the borrowed entry while it reads the name)
/// race deletes of the same tokens. Every validation accepts with the right name or says
/// `Unknown`, never anything else, and nothing crashes: the reclamation that loom cannot
/// enter (papaya's) keeps every borrowed entry valid. Miri checks the same borrow in
/// `map::tests::a_lent_entry_outlives_its_removal_while_held`.
#[test]
fn deletes_racing_validations_on_real_threads() {
    let s = scratch();
    let store = TokenStore::builder(&s.path)
        .flush_interval(Duration::from_secs(3600))
        .open()
        .unwrap();
    let tokens = store
        .issue_many((0..100).map(|i| NewToken::new(format!("t{i}"))))
        .unwrap();
    let deleting = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut unknown = 0;
                while deleting.load(std::sync::atomic::Ordering::Relaxed) || unknown == 0 {
                    for (i, token) in tokens.iter().enumerate() {
                        match store.validate(token.secret()) {
                            Ok(valid) => assert_eq!(valid.name(), format!("t{i}")),
                            Err(Rejection::Unknown) => unknown += 1,
                            Err(other) => panic!("token t{i}: {other}"),
                        }
                    }
                }
            });
        }
        for token in &tokens {
            store.delete(&token.id()).unwrap();
        }
        deleting.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(store.list().len(), 0);
}

/// A clock that makes the persister take 300 ms over each batch while `slow` is set, so
/// requests made meanwhile land in one batch.
#[derive(Debug, Clone)]
struct SlowPersister(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl tokencache::Clock for SlowPersister {
    fn now_ms(&self) -> u64 {
        let on_persister = std::thread::current().name() == Some("tokencache-persister");
        if on_persister && self.0.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
        }
        ManualClock::DEFAULT_START_MS
    }
}

/// Two rotations of one token in one batch: each returns only once the earlier of their
/// expiries is on disk, and the file says what memory says.
#[test]
fn two_rotations_in_one_batch_write_the_earlier_expiry() {
    let s = scratch();
    let slow = SlowPersister(Default::default());
    let store = TokenStore::builder(&s.path)
        .clock(slow.clone())
        .open()
        .unwrap();
    let old = store.issue(NewToken::new("svc")).unwrap();
    slow.0.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::scope(|scope| {
        let (store, id) = (&store, old.id());
        // The first occupies the persister; the next two then wait in one batch.
        scope.spawn(move || store.rotate(&id, 2 * HOUR).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        scope.spawn(move || store.rotate(&id, Duration::from_secs(60)).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        scope.spawn(move || store.rotate(&id, HOUR).unwrap());
    });
    slow.0.store(false, std::sync::atomic::Ordering::SeqCst);
    let in_memory = store.get(&old.id()).unwrap().expires_at;
    store.close().unwrap();
    let reopened = TokenStore::builder(&s.path).clock(slow).open().unwrap();
    assert_eq!(reopened.get(&old.id()).unwrap().expires_at, in_memory);
    let expected = ManualClock::DEFAULT_START_MS + 60_000;
    assert_eq!(in_memory.unwrap().timestamp_millis() as u64, expected);
}

#[test]
fn an_expired_token_cannot_be_rotated_back_to_life() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let short = store
        .issue(NewToken::new("short").expires_in(Duration::from_secs(60)))
        .unwrap();
    clock.advance(HOUR);
    let error = store.rotate(&short.id(), Duration::ZERO).unwrap_err();
    assert!(error.to_string().contains("expired"), "{error}");
    assert_eq!(store.list().len(), 1, "no replacement was issued");
}

#[test]
fn a_revoked_token_cannot_be_rotated_back_to_life() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("compromised")).unwrap();
    store.revoke(&token.id()).unwrap();
    let error = store.rotate(&token.id(), HOUR).unwrap_err();
    assert!(matches!(error, Error::InvalidRequest(_)), "{error}");
    assert!(error.to_string().contains("revoked"), "{error}");
    assert_eq!(store.list().len(), 1, "no replacement was issued");
}
