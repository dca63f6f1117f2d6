//! Deleted tokens give their memory back: a million issue + delete cycles holding 10,000
//! live tokens end with the live heap within 1.5x of where it started, on the map the store
//! uses; and the same through the store's own `issue_many` and `delete` (fewer cycles: each
//! delete is a journal write). Measured with a counting global allocator (every thread's
//! allocations).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use tokencache::__churn::Churn;
use tokencache::{ManualClock, NewToken, TokenId, TokenStore};

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

/// The churn promise through the public API: a store holding 2,000 live tokens, through
/// which 20,000 more are issued (`issue_many`, 100 at a time) and deleted one by one with
/// `TokenStore::delete` (ten turnovers of the live set, with the compactions the journal
/// needs meanwhile), ends with the live heap within 1.5x of where it started. A delete that
/// kept anything per token (a tombstone, an index entry) would grow it past that.
#[test]
fn issue_and_delete_through_the_store_give_the_memory_back() {
    let _turn = crate::one_at_a_time();
    const LIVE_TOKENS: usize = 2_000;
    const CYCLES: usize = 20_000;
    const BATCH: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::builder(dir.path().join("tokens.snap"))
        .clock(ManualClock::default())
        .open()
        .unwrap();
    let mut ids = VecDeque::with_capacity(LIVE_TOKENS + BATCH);
    let issue = |ids: &mut VecDeque<TokenId>, from: usize| {
        let issued = store
            .issue_many(
                (from..from + BATCH).map(|n| NewToken::new(format!("churn-{n:08}")).scope("read")),
            )
            .unwrap();
        ids.extend(issued.iter().map(|token| token.id()));
    };
    for from in (0..LIVE_TOKENS).step_by(BATCH) {
        issue(&mut ids, from);
    }
    store.flush().unwrap();
    let start = LIVE.load(Relaxed);
    let mut peak = start;
    for from in (LIVE_TOKENS..LIVE_TOKENS + CYCLES).step_by(BATCH) {
        issue(&mut ids, from);
        for _ in 0..BATCH {
            let oldest = ids.pop_front().unwrap();
            store.delete(&oldest).unwrap();
        }
        peak = peak.max(LIVE.load(Relaxed));
    }
    store.flush().unwrap();
    let end = LIVE.load(Relaxed);
    assert_eq!(store.list().len(), LIVE_TOKENS);
    println!(
        "store live heap: {start} bytes with {LIVE_TOKENS} tokens, {end} after {CYCLES} \
         issue + delete cycles (peak sampled {peak}); {:.2}x",
        end as f64 / start as f64
    );
    assert!(
        (end as f64) <= 1.5 * start as f64,
        "live heap grew from {start} to {end} bytes"
    );
    store.close().unwrap();
}
