//! loom model of usage counting (`src/usage/tally.rs`): a thread's tally, whose slots
//! only their owner writes and only the sweeper takes from, and a token's shared word.
//!
//! Properties, each with a broken twin loom must catch:
//! - a sweep racing a thread's counts, including its claim of a slot for another token,
//!   loses no count, doubles none and gives none to the wrong token (twin:
//!   `Bug::ClaimDirtySlot`, a claim that does not check that the sweeper took the slot's
//!   counts);
//! - the shared word racing the persister's take loses and doubles nothing, and the first
//!   count after each take says so, so the persister always hears of untaken counts
//!   (twin: `add_racy`, a load then a store, which loses a count).
//!
//! The sweep stands for every way counts leave a tally: the persister's write-behind round,
//! a flush barrier and close all sweep under the book's lock.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p loom-tests --test usage`
#![cfg(loom)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use loom::sync::Arc;
use loom::thread;
use tokencache::__loom::usage::{Tally, Uses};
use tokencache::__loom::{plant, Bug};

const DAY: u64 = 20_000;
/// Three tokens for a tally of two slots (under loom): the third needs a slot back, and
/// the first comes again.
const KEYS: [u64; 4] = [11, 22, 33, 11];

fn model(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    let bound = *builder.preemption_bound.get_or_insert(bound);
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    builder.check(move || {
        counter.fetch_add(1, Relaxed);
        f();
    });
    eprintln!(
        "loom: {} executions explored, preemption bound {bound}",
        executions.load(Relaxed)
    );
}

#[test]
fn a_sweep_racing_counts_and_claims_loses_and_misattributes_nothing() {
    model(3, sweep_racing_counts);
}

#[test]
#[should_panic(expected = "counts per token")]
fn twin_claiming_a_slot_with_untaken_counts_gives_them_to_another_token() {
    let _bug = plant(Bug::ClaimDirtySlot);
    model(3, sweep_racing_counts);
}

/// The owner counts each of `KEYS` (on the fallback when no slot is clean, as `validate`
/// does), while the sweeper sweeps twice; a final sweep after both.
fn sweep_racing_counts() {
    let tally = Arc::new(Tally::default());
    let swept = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
    let owner = {
        let tally = tally.clone();
        thread::spawn(move || {
            let mut fallback = BTreeMap::new();
            for key in KEYS {
                if !tally.count(key, DAY) {
                    *fallback.entry(key).or_insert(0) += 1;
                }
            }
            fallback
        })
    };
    let sweeper = {
        let (tally, swept) = (tally.clone(), swept.clone());
        thread::spawn(move || {
            sweep_into(&tally, &swept);
            sweep_into(&tally, &swept);
        })
    };
    let fallback = owner.join().unwrap();
    sweeper.join().unwrap();
    sweep_into(&tally, &swept);
    let mut counted = swept.lock().unwrap().clone();
    for (key, n) in fallback {
        *counted.entry(key).or_insert(0) += n;
    }
    let mut expected = BTreeMap::new();
    for key in KEYS {
        *expected.entry(key).or_insert(0) += 1;
    }
    assert_eq!(counted, expected, "counts per token");
}

fn sweep_into(tally: &Tally, swept: &Mutex<BTreeMap<u64, u64>>) {
    let mut swept = swept.lock().unwrap();
    tally.sweep(|t| {
        assert_eq!(t.day, DAY, "counts per token: a day from another claim");
        *swept.entry(t.key).or_insert(0) += t.n;
    });
}

type AddFn = fn(&Uses, u64) -> bool;

#[test]
fn the_shared_word_racing_takes_loses_nothing_and_reports_each_first_count() {
    model(3, || shared_word(Uses::add));
}

#[test]
#[should_panic(expected = "counts on the shared word")]
fn twin_adding_with_a_load_and_a_store_loses_a_count() {
    model(3, || shared_word(Uses::add_racy));
}

/// Two threads count once each on one token's word while the persister takes it; a final
/// take after both. Every count is taken once, and each run of counts between two takes
/// began with a count that said it was first.
fn shared_word(add: AddFn) {
    let uses = Arc::new(Uses::default());
    let counters: Vec<_> = (0..2)
        .map(|_| {
            let uses = uses.clone();
            thread::spawn(move || add(&uses, DAY))
        })
        .collect();
    let taker = {
        let uses = uses.clone();
        thread::spawn(move || uses.take())
    };
    let firsts = counters
        .into_iter()
        .map(|c| usize::from(c.join().unwrap()))
        .sum::<usize>();
    let takes = [taker.join().unwrap(), uses.take()];
    let taken: u64 = takes.iter().flatten().map(|&(_, n)| n).sum();
    assert_eq!(taken, 2, "counts on the shared word");
    assert_eq!(
        firsts,
        takes.iter().flatten().count(),
        "a run without a first count"
    );
}
