//! Tests that watch state of the whole process, so they cannot share a binary with the
//! other integration tests (`tests/it/`), whose stores would disturb what they measure:
//!
//! - `churn`: the live heap, counted by a global allocator over every thread
//!   ([`counting`]);
//! - `clock`, `clock_close`: the one `SystemClock` thread, which runs while any store on the
//!   system clock is open.
//!
//! The tests here take turns ([`one_at_a_time`]) for the same reason.

mod churn;
mod clock;
mod clock_close;
mod counting;

use std::sync::{Mutex, MutexGuard};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Held by each test for its whole run: the tests here measure process-wide state, so no
/// two of them run at once. (A failed test poisons the lock; the next one goes on.)
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
