//! `SystemClock` reads a word a background thread refreshes every millisecond while a store
//! is open: it stays close to the system clock, and the thread ends after the last store
//! closes. In `tests/process_wide/`, taking turns, so no other test's store keeps the thread
//! alive.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokencache::{Clock, NewToken, SystemClock, TokenStore};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether a thread of this process is named `tokencache-time`.
fn clock_thread_runs() -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|task| {
        let comm = task.unwrap().path().join("comm");
        std::fs::read_to_string(comm).is_ok_and(|name| name.trim() == "tokencache-time")
    })
}

/// Polls `condition` for up to 10 s.
fn eventually(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn the_clock_word_follows_the_system_clock_while_a_store_is_open() {
    let _turn = crate::one_at_a_time();
    // The test before ours may have closed its last store a moment ago.
    assert!(
        eventually(|| !clock_thread_runs()),
        "a clock thread runs with no store open"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::open(dir.path().join("tokens.snap")).unwrap();
    let issued = store.issue(NewToken::new("bot")).unwrap();
    // The thread names itself once it runs, which on a loaded machine can be a moment after
    // `open` spawned it.
    assert!(
        eventually(clock_thread_runs),
        "no clock thread while a store is open"
    );
    // The word is never ahead of the system clock, and catches up within a few ticks
    // (generous: the machine running the tests is shared).
    for _ in 0..50 {
        let before = wall_ms();
        let word = SystemClock.now_ms();
        let after = wall_ms();
        assert!(
            word <= after,
            "the word {word} is ahead of the clock {after}"
        );
        assert!(
            eventually(|| SystemClock.now_ms() >= before),
            "the word stayed behind {before}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // Validation stamps `last_used` from the word: within the same bounds.
    let before = wall_ms();
    drop(store.validate(issued.secret()).unwrap());
    let stamped = store.get(&issued.id()).unwrap().last_used.unwrap();
    assert!((stamped.timestamp_millis() as u64) <= wall_ms());
    assert!((stamped.timestamp_millis() as u64) + 1_000 >= before);
    store.close().unwrap();
    assert!(
        eventually(|| !clock_thread_runs()),
        "the clock thread outlived every store"
    );
    // Stopped, the clock reads the system clock itself.
    let word = SystemClock.now_ms();
    assert!(word + 5 >= wall_ms() && word <= wall_ms());
}
