//! Usage counts on the file store: exact counts from many threads (their tallies and the
//! tokens' shared words both), per UTC day on the manual clock, through restarts, flushes
//! and crash images, and what a store that does not count answers.
//!
//! The sequence test drives random calls (validations of a few tokens from a few threads,
//! time passing across midnight, flush, a flush whose write fails, close and reopen, a
//! crash image reopened) against a reference model of every token's counts per day, and
//! checks every answer.

use crate::common::{crash_image, manual_builder, run_model, scratch, Steps};

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDate;
use proptest::prelude::*;
use tokencache::__fault::{FaultPlan, FaultStep};
use tokencache::{Clock, Error, ManualClock, NewToken, TokenId, TokenStore, Usage};

const DAY_MS: u64 = 86_400_000;

fn date(day: u64) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Days::new(day)
}

#[test]
fn counts_from_many_threads_over_many_tokens_are_exact_and_survive_a_restart() {
    let dir = scratch();
    let store = TokenStore::open(&dir.path).unwrap();
    // More tokens than a thread's tally has slots (2,048): once they are taken, the other
    // tokens count on their shared words, racing the other threads there.
    let tokens = store
        .issue_many((0..2_500).map(|i| NewToken::new(format!("t{i}"))))
        .unwrap();
    let hot = &tokens[0];
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (store, tokens) = (&store, &tokens);
            scope.spawn(move || {
                for round in 0..4 {
                    // Token i is validated by every thread i % 3 + 1 times a round; the
                    // hot one 50 times, from its tally slot.
                    for (i, token) in tokens.iter().enumerate() {
                        for _ in 0..i % 3 + 1 {
                            store.validate(token.secret()).unwrap();
                        }
                    }
                    for _ in 0..50 {
                        store.validate(hot.secret()).unwrap();
                    }
                    // A flush racing the other threads' counting.
                    if t == 0 && round % 2 == 0 {
                        store.flush().unwrap();
                    }
                }
            });
        }
    });
    let expected = |i: usize| 4 * 4 * (i as u64 % 3 + 1) + if i == 0 { 4 * 4 * 50 } else { 0 };
    let check = |store: &TokenStore, when: &str| {
        for (i, token) in tokens.iter().enumerate() {
            let usage = store.usage(&token.id()).unwrap();
            assert_eq!(usage.total, expected(i), "token {i} {when}");
            assert_eq!(usage.days.len(), 1, "{when}");
            assert_eq!(usage.days[0].1, expected(i), "{when}");
            assert_eq!(store.get(&token.id()).unwrap().uses, Some(expected(i)));
        }
        let listed: u64 = store.list().iter().map(|t| t.uses.unwrap()).sum();
        assert_eq!(
            listed,
            (0..tokens.len()).map(expected).sum::<u64>(),
            "{when}"
        );
    };
    check(&store, "in memory");
    store.close().unwrap();
    let store = TokenStore::open(&dir.path).unwrap();
    check(&store, "after a restart");
    // The view reads the same counts from the files.
    store.close().unwrap();
    let view = tokencache::StoreView::read(&dir.path).unwrap();
    assert_eq!(view.get(&hot.id()).unwrap().uses, Some(expected(0)));
    assert_eq!(view.usage(&hot.id()).unwrap().total, expected(0));
}

#[test]
fn counts_fall_on_their_utc_day_and_only_the_days_kept_are_kept() {
    let dir = scratch();
    let (builder, clock) = manual_builder(&dir.path);
    let store = builder.usage_days(2).open().unwrap();
    let token = store.issue(NewToken::new("daily")).unwrap();
    let first = clock.now_ms() / DAY_MS + 1;
    // Three days: 3, then 1, then 2 validations; the first day falls out of the window.
    for (day, n) in [(first, 3), (first + 1, 1), (first + 2, 2)] {
        clock.set(date_ms(day) + 1_000);
        for _ in 0..n {
            store.validate(token.secret()).unwrap();
        }
    }
    let two_days = Usage {
        total: 6,
        days: vec![(date(first + 1), 1), (date(first + 2), 2)],
    };
    // The last moment of the third day.
    clock.set(date_ms(first + 3) - 1);
    let usage = store.usage(&token.id()).unwrap();
    assert_eq!(usage, two_days);
    store.close().unwrap();
    let (builder, _) = manual_builder(&dir.path);
    let store = builder.clock(clock.clone()).usage_days(2).open().unwrap();
    assert_eq!(store.usage(&token.id()).unwrap(), two_days);
    // A day later still, only the newest day is within the window; the total stays.
    clock.set(date_ms(first + 3));
    let usage = store.usage(&token.id()).unwrap();
    assert_eq!(usage.total, 6);
    assert_eq!(usage.days, [(date(first + 2), 2)]);
}

fn date_ms(day: u64) -> u64 {
    day * DAY_MS
}

#[test]
fn a_store_that_does_not_count_says_so_and_an_unknown_id_is_named() {
    let dir = scratch();
    let store = TokenStore::builder(&dir.path).usage_days(0).open().unwrap();
    let token = store.issue(NewToken::new("quiet")).unwrap();
    store.validate(token.secret()).unwrap();
    assert!(matches!(
        store.usage(&token.id()),
        Err(Error::InvalidRequest(why)) if why.contains("usage_days(0)")
    ));
    assert_eq!(store.get(&token.id()).unwrap().uses, None);
    store.close().unwrap();
    let store = TokenStore::open(&dir.path).unwrap();
    let unknown: TokenId = "zzzzzzzz".parse().unwrap();
    assert!(matches!(store.usage(&unknown), Err(Error::UnknownId(id)) if id == unknown));
    assert_eq!(store.usage(&token.id()).unwrap(), Usage::default());
}

#[test]
fn a_deleted_token_takes_its_counts_with_it() {
    let dir = scratch();
    let store = TokenStore::open(&dir.path).unwrap();
    let kept = store.issue(NewToken::new("kept")).unwrap();
    let gone = store.issue(NewToken::new("gone")).unwrap();
    for _ in 0..3 {
        store.validate(kept.secret()).unwrap();
        store.validate(gone.secret()).unwrap();
    }
    store.flush().unwrap();
    store.delete(&gone.id()).unwrap();
    assert!(matches!(store.usage(&gone.id()), Err(Error::UnknownId(_))));
    store.close().unwrap();
    // The snapshot close wrote holds no counts of the deleted token: opening checks that
    // every count names a token it holds.
    let store = TokenStore::open(&dir.path).unwrap();
    assert_eq!(store.usage(&kept.id()).unwrap().total, 3);
}

/// One step of the sequence test.
#[derive(Debug, Clone)]
enum Step {
    /// Validations of token `token`, `n` of them from each of `threads` threads.
    Validate {
        token: usize,
        n: u64,
        threads: usize,
    },
    /// Time passes (up to a day, so days change).
    Advance(u64),
    Flush,
    /// A flush whose write fails (a full disk): the counts it took stay in memory and
    /// reach the files with the next write that succeeds.
    FailedFlush,
    Reopen,
    /// A copy of the files as they are (a SIGKILL now), reopened: it holds at least what
    /// the last flush held and at most what memory holds.
    CrashImage,
}

const TOKENS: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..TOKENS, 1u64..5, 1usize..3)
            .prop_map(|(token, n, threads)| Step::Validate { token, n, threads }),
        2 => (0u64..26).prop_map(|h| Step::Advance(h * 3_600_000)),
        1 => Just(Step::Flush),
        1 => Just(Step::FailedFlush),
        1 => Just(Step::Reopen),
        1 => Just(Step::CrashImage),
    ]
}

/// Counts per token, per day.
type Model = Vec<BTreeMap<u64, u64>>;

fn usage_of(model: &Model, token: usize) -> Usage {
    let days = &model[token];
    Usage {
        total: days.values().sum(),
        days: days.iter().map(|(&d, &n)| (date(d), n)).collect(),
    }
}

#[test]
fn random_sequences_agree_with_a_model_of_the_counts() {
    run_model(
        "TOKENCACHE_USAGE_CASES",
        24,
        2_000,
        &proptest::collection::vec(step(), 1..40).prop_map(Steps),
        |Steps(steps)| {
            let dir = scratch();
            let clock = ManualClock::default();
            let plan = FaultPlan::default();
            // A year's interval and a year of days: only flush, close and the tick after a
            // round that took counts write; no day falls out of the window.
            let open = |clock: &ManualClock| {
                TokenStore::builder(&dir.path)
                    .clock(clock.clone())
                    .fault_plan(plan.clone())
                    .flush_interval(Duration::from_secs(86_400 * 365))
                    .usage_days(366)
                    .open()
                    .unwrap()
            };
            let mut store = open(&clock);
            let tokens: Vec<_> = (0..TOKENS)
                .map(|i| store.issue(NewToken::new(format!("t{i}"))).unwrap())
                .collect();
            let mut model: Model = vec![BTreeMap::new(); TOKENS];
            // The counts the files hold for certain: as of the last flush or close.
            let mut flushed = model.clone();
            for step in steps {
                match step {
                    Step::Validate { token, n, threads } => {
                        let day = clock.now_ms() / DAY_MS;
                        std::thread::scope(|scope| {
                            for _ in 0..threads {
                                let (store, secret) = (&store, tokens[token].secret());
                                scope.spawn(move || {
                                    for _ in 0..n {
                                        store.validate(secret).unwrap();
                                    }
                                });
                            }
                        });
                        *model[token].entry(day).or_default() += n * threads as u64;
                    }
                    Step::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                    Step::Flush => {
                        store.flush().unwrap();
                        flushed = model.clone();
                    }
                    Step::FailedFlush => {
                        // An append or a compaction, whichever the flush writes, fails
                        // before a byte reaches the disk.
                        plan.fail(FaultStep::Append, 28);
                        plan.fail(FaultStep::Write, 28);
                        let failed = store.flush();
                        plan.clear();
                        // With counts to write it must fail (with none it may write nothing).
                        prop_assert!(failed.is_err() || model == flushed, "{failed:?}");
                    }
                    Step::Reopen => {
                        store.close().unwrap();
                        store = open(&clock);
                        flushed = model.clone();
                    }
                    Step::CrashImage => {
                        let image = crash_image(&dir.path);
                        let seen = TokenStore::builder(&image.path)
                            .clock(clock.clone())
                            .usage_days(366)
                            .open()
                            .unwrap();
                        for (i, token) in tokens.iter().enumerate() {
                            let on_disk = seen.usage(&token.id()).unwrap();
                            let floor = usage_of(&flushed, i);
                            let ceiling = usage_of(&model, i);
                            prop_assert!(
                                floor.total <= on_disk.total && on_disk.total <= ceiling.total,
                                "token {i}: image {on_disk:?}, flushed {floor:?}, memory {ceiling:?}"
                            );
                        }
                    }
                }
                for (i, token) in tokens.iter().enumerate() {
                    prop_assert_eq!(store.usage(&token.id()).unwrap(), usage_of(&model, i));
                }
            }
            store.close().unwrap();
            let store = open(&clock);
            for (i, token) in tokens.iter().enumerate() {
                prop_assert_eq!(store.usage(&token.id()).unwrap(), usage_of(&model, i));
            }
            Ok(())
        },
    );
}
