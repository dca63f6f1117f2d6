//! `validate` allocates nothing: a counting global allocator watches this thread.
//!
//! The allocator is the whole `it` crate's: it counts per thread, so the tests of other
//! modules, running on their own threads, do not change the counts taken here.

use crate::common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{manual_store, scratch};
use tokencache::{NewToken, RateLimit, Rejection};

/// Counts allocations made by the current thread only, so the persister thread and the
/// test harness do not disturb the count.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwards the caller's layout to the system allocator unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as in `dealloc`; the system allocator handles the resize.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_allocations() {
    // Guard against a broken counter making the real test pass vacuously.
    let n = allocations_during(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(n, 1);
}

#[test]
fn validate_allocates_nothing_on_any_path() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let good = store.issue(NewToken::new("good").scopes(["read"])).unwrap();
    let gone = store.issue(NewToken::new("gone")).unwrap();
    // Each 2 s clock step below refills its burst of 2: admitted twice, then refused.
    let limited = store
        .issue(NewToken::new("limited").rate_limit(RateLimit::per_second(1).burst(2)))
        .unwrap();
    store.revoke(&gone.id()).unwrap();
    let long = "x".repeat(1 << 20);
    let mut forged = good.secret().to_string();
    forged.replace_range(12..13, if &forged[12..13] == "A" { "B" } else { "A" });

    // A thread's first accepted validation makes its usage tally (once per thread and
    // store). Warm up on a token of its own, then count.
    let warm = store.issue(NewToken::new("warm")).unwrap();
    let first = allocations_during(|| {
        assert!(store.validate(warm.secret()).is_ok());
    });
    assert!(
        first <= 2,
        "the first validation on a thread allocated {first} times"
    );
    store.flush().unwrap();
    let sends_before = store.stats().dirty_sends;

    let mut allocations = 0;
    for round in 0..10_000u64 {
        // The first validation of each millisecond stamps last_used and, after a snapshot,
        // sends the token id on the channel: both must be allocation-free. (Moving the
        // manual clock allocates in the test's clock, so it stays outside the count.)
        if round % 1000 == 0 {
            clock.set(clock_now(&clock) + 2_000);
            store.flush().unwrap();
        }
        allocations += allocations_during(|| {
            assert!(store.validate(good.secret()).is_ok());
            assert!(store.validate_scope(good.secret(), "read").is_ok());
            assert_eq!(
                store.validate_scope(good.secret(), "admin").unwrap_err(),
                Rejection::MissingScope
            );
            assert_eq!(
                store.validate(gone.secret()).unwrap_err(),
                Rejection::Revoked
            );
            assert_eq!(store.validate(&forged).unwrap_err(), Rejection::Malformed);
            assert_eq!(store.validate(&long).unwrap_err(), Rejection::Malformed);
            assert_eq!(store.validate("").unwrap_err(), Rejection::Malformed);
            let admitted = store.validate(limited.secret()).is_ok();
            assert_eq!(admitted, round % 1000 < 2, "round {round}");
        });
    }
    assert_eq!(allocations, 0);
    assert_eq!(
        store.stats().dirty_sends - sends_before,
        20,
        "each flushed round sent each accepted id once"
    );
    assert_eq!(store.stats().rejections.rate_limited, 10 * 998);
}

fn clock_now(clock: &tokencache::ManualClock) -> u64 {
    use tokencache::Clock;
    clock.now_ms()
}

/// A megabyte-long string is refused by the length check that opens `token::parse`
/// (src/token.rs: `bytes.len() != TOKEN_LEN` comes before any other work): no allocation,
/// no hashing, whatever the string starts with.
#[test]
fn a_megabyte_string_is_refused_without_allocating() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let good = store.issue(NewToken::new("good")).unwrap();
    let junk = "x".repeat(1 << 20);
    let prefixed = format!("{}{}", good.secret(), "x".repeat(1 << 20));
    let nul = "\0".repeat(1 << 20);
    let n = allocations_during(|| {
        for candidate in [&junk, &prefixed, &nul] {
            assert_eq!(store.validate(candidate).unwrap_err(), Rejection::Malformed);
        }
    });
    assert_eq!(n, 0);
    assert_eq!(store.stats().rejections.malformed, 3);
}
