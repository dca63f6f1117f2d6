//! loom model of the GCRA compare-exchange loop (`src/rate_limit.rs`).
//!
//! Properties:
//! - however the checks of concurrent requests interleave, they never admit more than the
//!   quota (the burst at one instant); the broken twin (`check_racy`: load, decide, store)
//!   must be caught admitting too many, so the model has teeth;
//! - a check racing `set_rate_limit` decides under the old limit and state or the new limit
//!   and its reset state, never the new limit with the old state; the broken twin
//!   (`set_reordered`: limit published before the reset) must be caught mixing them.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p loom-tests --test rate_limit`
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use tokencache::__loom::Gcra;
use tokencache::RateLimit;

const NOW_MS: u64 = 1_767_225_600_000;

/// `threads` threads each make `per_thread` requests at the same instant against a limit
/// with burst `burst`; returns how many were admitted, checked with `check`.
fn admitted(burst: u32, threads: usize, per_thread: usize, check: fn(&Gcra, u64) -> bool) -> usize {
    let gcra = Arc::new(Gcra::new(Some(RateLimit::per_second(10).burst(burst))));
    let admitted = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let gcra = gcra.clone();
            let admitted = admitted.clone();
            thread::spawn(move || {
                for _ in 0..per_thread {
                    if check(&gcra, NOW_MS) {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

fn cas(gcra: &Gcra, now_ms: u64) -> bool {
    gcra.check(now_ms).is_ok()
}

fn racy(gcra: &Gcra, now_ms: u64) -> bool {
    gcra.check_racy(now_ms).is_ok()
}

#[test]
fn two_threads_never_share_one_slot() {
    loom::model(|| {
        assert_eq!(admitted(1, 2, 1, cas), 1);
    });
}

#[test]
fn two_threads_two_requests_each_get_exactly_the_burst() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        assert_eq!(admitted(3, 2, 2, cas), 3);
    });
}

#[test]
fn three_threads_never_exceed_a_burst_of_two() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        assert_eq!(admitted(2, 3, 1, cas), 2);
    });
}

#[test]
#[should_panic(expected = "admitted more than the quota")]
fn broken_twin_load_then_store_admits_too_many() {
    loom::model(|| {
        let n = admitted(1, 2, 1, racy);
        assert!(n <= 1, "admitted more than the quota: {n} > 1");
    });
}

/// One hour in the units of `retry_after`.
const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// A token limited to 1/h with burst 2 has spent both (TAT = now + 2 h) when its limit is
/// changed to 10/s burst 1 while another thread checks it. Under the old limit and state the
/// check waits 1 h; under the new limit and reset state it is admitted. The new limit with
/// the old state would say 2 h: that mix must never happen.
fn change_while_checking(set: fn(&Gcra, Option<RateLimit>)) {
    let gcra = Arc::new(Gcra::new(Some(RateLimit::per_hour(1).burst(2))));
    assert!(gcra.check(NOW_MS).is_ok() && gcra.check(NOW_MS).is_ok());
    let setter = {
        let gcra = gcra.clone();
        thread::spawn(move || set(&gcra, Some(RateLimit::per_second(10).burst(1))))
    };
    let outcome = gcra.check(NOW_MS);
    setter.join().unwrap();
    assert!(
        matches!(outcome, Ok(()) | Err(HOUR)),
        "new limit mixed with old state: {outcome:?}"
    );
}

#[test]
fn a_check_racing_a_limit_change_never_mixes_old_state_and_new_limit() {
    loom::model(|| change_while_checking(Gcra::set));
}

#[test]
#[should_panic(expected = "new limit mixed with old state")]
fn broken_twin_limit_published_before_the_reset_mixes_them() {
    loom::model(|| change_while_checking(Gcra::set_reordered));
}
