//! loom model of credits spending (`src/credits.rs`): one atomic word per token, spent
//! with a compare-exchange, refilled in the same compare-exchange, taken by the persister
//! with one `fetch_and`.
//!
//! Properties, each with a broken twin loom must catch:
//! - concurrent spends never spend one credit twice, nor take the credits below zero
//!   (twin: `spend_racy`, load then store);
//! - a refill coming due while threads spend is applied once: the threads that find the
//!   word in the old period race to refill it, and together they spend at most one
//!   refill's worth (twin: `spend_racy`, which refills once per thread);
//! - the persister's take racing spends loses none and doubles none: the remaining credits
//!   are the granted ones less every accepted spend, and a state the take did not see is
//!   left dirty, with its id sent (twin: `take_state_racy`, load then store, which can undo
//!   a spend).
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p loom-tests --test credits`
#![cfg(loom)]

use std::time::Duration;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use tokencache::__loom::{Meter, Spent, Taken};
use tokencache::{Credits, Refill};

const HOUR_MS: u64 = 3_600_000;
const SET_AT: u64 = 1_767_225_600_000;

type SpendFn = fn(&Meter, u64, u64) -> Spent;

fn cas(meter: &Meter, cost: u64, now: u64) -> Spent {
    meter.spend(cost, now)
}

fn racy(meter: &Meter, cost: u64, now: u64) -> Spent {
    meter.spend_racy(cost, now)
}

/// `threads` threads each spend 1 at `now` from `meter`; returns how many were accepted
/// and how many of those sent the id (set the dirty flag).
fn spend_all(meter: &Arc<Meter>, threads: usize, now: u64, spend: SpendFn) -> (usize, usize) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (meter, accepted, sent) = (meter.clone(), accepted.clone(), sent.clone());
            thread::spawn(move || {
                if let Spent::Yes { send } = spend(&meter, 1, now) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    if send {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    (
        accepted.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
    )
}

fn never_twice(spend: SpendFn) {
    loom::model(move || {
        let meter = Arc::new(Meter::new(Credits::new(1), SET_AT));
        let (accepted, sent) = spend_all(&meter, 2, SET_AT, spend);
        assert_eq!(accepted, 1, "spent one credit twice");
        assert_eq!(sent, 1, "the one spend sends the id");
        assert_eq!(meter.credits(SET_AT).remaining(), 0);
    });
}

#[test]
fn two_threads_never_spend_one_credit_twice() {
    never_twice(cas);
}

#[test]
#[should_panic(expected = "spent one credit twice")]
fn twin_load_then_store_spends_one_credit_twice() {
    never_twice(racy);
}

fn refilled_once(spend: SpendFn) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        // Spent out in the first hour; the second hour's refill gives 2.
        let credits = Credits::new(0).refill(Refill::every(Duration::from_millis(HOUR_MS), 2));
        let meter = Arc::new(Meter::new(credits, SET_AT));
        let (accepted, _) = spend_all(&meter, 3, SET_AT + HOUR_MS, spend);
        assert_eq!(accepted, 2, "refilled more than once for one period");
        assert_eq!(meter.credits(SET_AT + HOUR_MS).remaining(), 0);
    });
}

#[test]
fn a_refill_racing_spends_is_applied_once() {
    refilled_once(cas);
}

#[test]
#[should_panic(expected = "refilled more than once for one period")]
fn twin_load_then_store_refills_once_per_thread() {
    refilled_once(racy);
}

fn take_racing_spends(take: fn(&Meter) -> Taken) {
    loom::model(move || {
        let meter = Arc::new(Meter::new(Credits::new(5), SET_AT));
        let spender = {
            let meter = meter.clone();
            thread::spawn(move || {
                let mut accepted = 0;
                let mut sent = 0;
                for _ in 0..2 {
                    if let Spent::Yes { send } = meter.spend(1, SET_AT) {
                        accepted += 1;
                        sent += usize::from(send);
                    }
                }
                (accepted, sent)
            })
        };
        // The persister: take what is there and record it.
        let taken = take(&meter);
        meter.mark_persisted(taken.state);
        let (accepted, sent) = spender.join().unwrap();
        let remaining = meter.credits(SET_AT).remaining();
        assert_eq!(remaining, 5 - accepted, "a spend was lost");
        // A state the take did not see stays dirty, and a spend after the take sent the id
        // (so the persister hears of it and writes it).
        let dirty = meter.is_dirty();
        if meter.persisted() != meter.take_state().state {
            assert!(dirty, "an unrecorded spend left the word clean");
            assert!(sent >= 1, "an unrecorded spend sent no id");
        }
    });
}

#[test]
fn the_persister_taking_racing_spends_loses_none() {
    take_racing_spends(|m| m.take_state());
}

#[test]
#[should_panic(expected = "a spend was lost")]
fn twin_take_by_load_then_store_undoes_a_spend() {
    take_racing_spends(|m| m.take_state_racy());
}
