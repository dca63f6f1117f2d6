//! Deleted tokens give their memory back: a million issue + delete cycles holding 10,000
//! live tokens end with the live heap within 1.5x of where it started. Measured with a
//! counting global allocator (every thread's allocations), on the map the store uses.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use tokencache::__churn::Churn;
use tokencache::TokenId;

use crate::counting::LIVE;

/// Token ids from a counter: eight decimal digits are eight base62 characters.
fn id(n: u64) -> TokenId {
    format!("{n:08}").parse().unwrap()
}

#[test]
fn a_million_issue_delete_cycles_give_the_memory_back() {
    let _turn = crate::one_at_a_time();
    const LIVE_TOKENS: u64 = 10_000;
    const CYCLES: u64 = 1_000_000;
    let map = Churn::new();
    let mut ids = VecDeque::with_capacity(LIVE_TOKENS as usize + 1);
    for n in 0..LIVE_TOKENS {
        map.issue(id(n));
        ids.push_back(id(n));
    }
    let start = LIVE.load(Relaxed);
    let mut peak = start;
    for n in LIVE_TOKENS..LIVE_TOKENS + CYCLES {
        map.issue(id(n));
        ids.push_back(id(n));
        let oldest = ids.pop_front().unwrap();
        assert!(map.delete(&oldest));
        if n % 10_000 == 0 {
            peak = peak.max(LIVE.load(Relaxed));
        }
    }
    let end = LIVE.load(Relaxed);
    assert_eq!(map.len(), LIVE_TOKENS as usize);
    println!(
        "live heap: {start} bytes with {LIVE_TOKENS} tokens, {end} after {CYCLES} cycles \
         (peak sampled {peak}); {:.2}x",
        end as f64 / start as f64
    );
    assert!(
        (end as f64) <= 1.5 * start as f64,
        "live heap grew from {start} to {end} bytes"
    );
}
