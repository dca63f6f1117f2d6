//! Credits on the file store: spending under contention, refills through restarts on the
//! manual clock, `validate_cost`, `set_credits`, rotation, the low-credit event, and what
//! reaches the files (write-behind, flush, close, a crash image).
//!
//! The sequence test drives random calls (validate with a cost, time passing, set_credits,
//! flush, close and reopen, a crash image reopened) against a reference model of one
//! token's credits, and checks every answer and every remaining count.

use crate::common::{self, crash_image, manual_builder, manual_store, run_model, scratch, Steps};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use tokencache::{
    ChangeKind, Clock, Credits, Error, Feed, ManualClock, NewToken, Refill, Rejection, TokenStore,
};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn racing_threads_never_spend_more_than_was_granted() {
    let dir = scratch();
    let store = TokenStore::open(&dir.path).unwrap();
    let token = store
        .issue(NewToken::new("metered").credits(Credits::new(1_000)))
        .unwrap();
    let accepted = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..400 {
                    match store.validate(token.secret()) {
                        Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                        Err(Rejection::UsageExceeded { retry_after: None }) => {
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(other) => panic!("unexpected {other:?}"),
                    };
                }
            });
        }
    });
    assert_eq!(accepted.into_inner(), 1_000, "exactly the credits granted");
    assert_eq!(refused.into_inner(), 600);
    assert_eq!(store.credits(&token.id()).unwrap().remaining(), 0);
    assert_eq!(store.stats().rejections.usage_exceeded, 600);
    store.close().unwrap();
    let store = TokenStore::open(&dir.path).unwrap();
    assert_eq!(
        store.credits(&token.id()).unwrap().remaining(),
        0,
        "close wrote it"
    );
    assert!(matches!(
        store.validate(token.secret()),
        Err(Rejection::UsageExceeded { .. })
    ));
}

#[test]
fn a_refill_comes_once_per_period_through_restarts() {
    let dir = scratch();
    let (store, clock) = manual_store(&dir.path);
    let credits = Credits::new(2).refill(Refill::every(HOUR, 3));
    let token = store
        .issue(NewToken::new("hourly").credits(credits))
        .unwrap();
    store.validate(token.secret()).unwrap();
    store.validate(token.secret()).unwrap();
    clock.advance(Duration::from_secs(600));
    assert_eq!(
        store.validate(token.secret()).err(),
        Some(Rejection::UsageExceeded {
            retry_after: Some(Duration::from_secs(3000))
        }),
        "the wait is the time to the next refill"
    );
    clock.advance(Duration::from_secs(3000));
    for _ in 0..3 {
        store.validate(token.secret()).unwrap();
    }
    store.close().unwrap();

    // Reopened in the same period: the refill is not given again.
    let (builder, clock2) = manual_builder(&dir.path);
    clock2.set(clock.now_ms());
    let store = builder.open().unwrap();
    assert_eq!(store.credits(&token.id()).unwrap().remaining(), 0);
    assert!(store.validate(token.secret()).is_err());
    clock2.advance(HOUR);
    assert_eq!(
        store.credits(&token.id()).unwrap().remaining(),
        3,
        "the next one"
    );
    store.validate(token.secret()).unwrap();
    store.close().unwrap();
}

#[test]
fn validate_cost_spends_the_cost_and_zero_only_checks() {
    let dir = scratch();
    let store = TokenStore::open(&dir.path).unwrap();
    let metered = store
        .issue(NewToken::new("m").credits(Credits::new(10)))
        .unwrap();
    let plain = store.issue(NewToken::new("p")).unwrap();
    store.validate_cost(metered.secret(), 7).unwrap();
    assert!(matches!(
        store.validate_cost(metered.secret(), 4),
        Err(Rejection::UsageExceeded { retry_after: None })
    ));
    store.validate_cost(metered.secret(), 0).unwrap();
    store.validate_cost(metered.secret(), 3).unwrap();
    assert_eq!(store.credits(&metered.id()).unwrap().remaining(), 0);
    store.validate_cost(metered.secret(), 0).unwrap();
    // A token without credits ignores the cost.
    store.validate_cost(plain.secret(), u64::MAX).unwrap();
    assert_eq!(store.credits(&plain.id()), None);
    // A refused request spends nothing and records no use.
    assert!(store.get(&metered.id()).unwrap().last_used.is_some());
}

#[test]
fn validate_scope_cost_checks_the_scope_before_it_spends() {
    let dir = scratch();
    let store = TokenStore::open(&dir.path).unwrap();
    let token = store
        .issue(
            NewToken::new("m")
                .scopes(["read"])
                .credits(Credits::new(10)),
        )
        .unwrap();
    assert_eq!(
        store.validate_scope_cost(token.secret(), "write", 4).err(),
        Some(Rejection::MissingScope)
    );
    assert_eq!(store.credits(&token.id()).unwrap().remaining(), 10);
    store
        .validate_scope_cost(token.secret(), "read", 4)
        .unwrap();
    store
        .validate_scope_cost(token.secret(), "read", 6)
        .unwrap();
    assert!(matches!(
        store.validate_scope_cost(token.secret(), "read", 1),
        Err(Rejection::UsageExceeded { retry_after: None })
    ));
    assert_eq!(store.credits(&token.id()).unwrap().remaining(), 0);
}

#[test]
fn set_credits_replaces_or_removes_them_durably_and_refuses_bad_ones() {
    let dir = scratch();
    let store = TokenStore::open(&dir.path).unwrap();
    let token = store.issue(NewToken::new("t")).unwrap();
    store
        .set_credits(&token.id(), Some(Credits::new(1).alert_below(1)))
        .unwrap();
    store.validate(token.secret()).unwrap();
    assert!(store.validate(token.secret()).is_err());
    store
        .set_credits(&token.id(), Some(Credits::new(5)))
        .unwrap();
    assert_eq!(
        store.get(&token.id()).unwrap().credits.unwrap().remaining(),
        5
    );
    let image = crash_image(&dir.path);
    let view = TokenStore::open(&image.path).unwrap();
    assert_eq!(
        view.credits(&token.id()).unwrap().remaining(),
        5,
        "durable on return"
    );
    view.close().unwrap();
    store.set_credits(&token.id(), None).unwrap();
    for _ in 0..10 {
        store.validate(token.secret()).unwrap();
    }
    let image = crash_image(&dir.path);
    assert_eq!(
        TokenStore::open(&image.path).unwrap().credits(&token.id()),
        None
    );
    let bad = [
        Credits::new(tokencache::MAX_CREDITS + 1),
        Credits::new(1).refill(Refill::every(Duration::from_secs(1), 1)),
        Credits::new(1).refill(Refill::monthly(0, 1)),
    ];
    for credits in bad {
        assert!(matches!(
            store.set_credits(&token.id(), Some(credits)),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            store.issue(NewToken::new("x").credits(credits)),
            Err(Error::InvalidRequest(_))
        ));
    }
    let unknown = "00000000".parse().unwrap();
    assert!(matches!(
        store.set_credits(&unknown, Some(Credits::new(1))),
        Err(Error::UnknownId(_))
    ));
}

#[test]
fn a_rotated_token_takes_the_credits_left_and_both_spend_apart() {
    let dir = scratch();
    let (store, _clock) = manual_store(&dir.path);
    let old = store
        .issue(NewToken::new("r").credits(Credits::new(5)))
        .unwrap();
    store.validate_cost(old.secret(), 2).unwrap();
    let new = store.rotate(&old.id(), HOUR).unwrap();
    assert_eq!(store.credits(&new.id()).unwrap().remaining(), 3);
    store.validate_cost(new.secret(), 3).unwrap();
    assert_eq!(store.credits(&old.id()).unwrap().remaining(), 3);
    assert_eq!(store.credits(&new.id()).unwrap().remaining(), 0);
}

#[test]
fn the_low_credit_event_comes_once_per_crossing_with_the_write() {
    let dir = scratch();
    let (store, clock) = manual_store(&dir.path);
    let changes = store.subscribe();
    let credits = Credits::new(4)
        .refill(Refill::every(HOUR, 4))
        .alert_below(2);
    let token = store.issue(NewToken::new("a").credits(credits)).unwrap();
    let lows = |store: &TokenStore| {
        store.flush().unwrap();
        let mut n = 0;
        while let Ok(Feed::Event(event)) = changes.try_recv() {
            if event.kind == ChangeKind::CreditsLow {
                assert_eq!(event.id, Some(token.id()));
                n += 1;
            }
        }
        n
    };
    store.validate(token.secret()).unwrap(); // 4 -> 3
    assert_eq!(lows(&store), 0);
    store.validate_cost(token.secret(), 2).unwrap(); // 3 -> 1: crosses
    store.validate(token.secret()).unwrap(); // 1 -> 0
    assert_eq!(lows(&store), 1, "one crossing, one event");
    assert_eq!(lows(&store), 0);
    clock.advance(HOUR);
    store.validate_cost(token.secret(), 3).unwrap(); // refilled 4 -> 1: crosses again
    assert_eq!(lows(&store), 1);
}

#[test]
fn spending_is_written_behind_once_per_interval_and_on_flush() {
    let dir = scratch();
    let (store, clock) = manual_store(&dir.path);
    let token = store
        .issue(NewToken::new("w").credits(Credits::new(100)))
        .unwrap();
    let on_disk = || {
        let image = crash_image(&dir.path);
        let reopened = TokenStore::open(&image.path).unwrap();
        let left = reopened.credits(&token.id()).unwrap().remaining();
        reopened.close().unwrap();
        left
    };
    let records = store.stats().journal_records_written;
    for _ in 0..10 {
        store.validate(token.secret()).unwrap();
    }
    assert_eq!(on_disk(), 100, "no write per spend");
    assert_eq!(store.stats().journal_records_written, records);
    store.flush().unwrap();
    assert_eq!(on_disk(), 90);
    for _ in 0..5 {
        store.validate(token.secret()).unwrap();
    }
    // The write-behind tick, one interval on.
    clock.advance(common::INTERVAL);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while on_disk() != 85 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tick never wrote the spending"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_store_without_credits_reads_an_older_file_and_credits_survive_compaction() {
    let dir = scratch();
    let store = TokenStore::builder(&dir.path)
        .compaction_floor(0)
        .open()
        .unwrap();
    let token = store
        .issue(NewToken::new("c").credits(Credits::new(50).refill(Refill::monthly(31, 50))))
        .unwrap();
    for _ in 0..20 {
        store.validate(token.secret()).unwrap();
        store.issue(NewToken::new("filler")).unwrap();
    }
    store.close().unwrap();
    let info = tokencache::inspect(&dir.path).unwrap();
    assert!(info.snapshot_seq > 0, "compacted");
    let store = TokenStore::open(&dir.path).unwrap();
    let credits = store.credits(&token.id()).unwrap();
    assert_eq!(credits.remaining(), 30);
    assert_eq!(credits.refill_plan(), Some(Refill::monthly(31, 50)));
}

/// One step of the sequence test.
#[derive(Debug, Clone)]
enum Step {
    Spend(u64),
    Advance(u64),
    Set(Option<u64>),
    Flush,
    Reopen,
    /// A copy of the files as they are (a SIGKILL now), reopened: what it holds is checked
    /// against what was last flushed and what memory holds.
    CrashImage,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u64..4).prop_map(Step::Spend),
        2 => (0u64..90).prop_map(|m| Step::Advance(m * 60_000)),
        1 => proptest::option::of(0u64..6).prop_map(Step::Set),
        1 => Just(Step::Flush),
        1 => Just(Step::Reopen),
        1 => Just(Step::CrashImage),
    ]
}

/// The model of one token's credits: a plan refilled every hour to `AMOUNT`, counted from
/// when they were set.
#[derive(Debug, Clone, Copy)]
struct Model {
    remaining: Option<u64>,
    anchor: u64,
    period: u64,
}

const AMOUNT: u64 = 4;
const PERIOD_MS: u64 = 3_600_000;

impl Model {
    fn at(&mut self, now: u64) -> Option<u64> {
        let period = (now - self.anchor) / PERIOD_MS;
        if self.remaining.is_some() && period != self.period {
            self.period = period;
            self.remaining = Some(AMOUNT);
        }
        self.remaining
    }
}

#[test]
fn random_sequences_agree_with_a_model_of_the_credits() {
    run_model(
        "TOKENCACHE_CREDITS_CASES",
        32,
        2_000,
        &proptest::collection::vec(step(), 1..40).prop_map(Steps),
        |Steps(steps)| {
            let dir = scratch();
            let clock = ManualClock::default();
            let open = |clock: &ManualClock| {
                TokenStore::builder(&dir.path)
                    .clock(clock.clone())
                    .flush_interval(Duration::from_secs(86_400 * 365))
                    .open()
                    .unwrap()
            };
            let mut store = open(&clock);
            let plan =
                |n| Credits::new(n).refill(Refill::every(Duration::from_millis(PERIOD_MS), AMOUNT));
            let token = store
                .issue(NewToken::new("model").credits(plan(AMOUNT)))
                .unwrap();
            let mut model = Model {
                remaining: Some(AMOUNT),
                anchor: clock.now_ms(),
                period: 0,
            };
            // The credits as the files hold them: as of the last flush, close or set (the
            // interval is a year, so no tick writes meanwhile).
            let mut flushed = model;
            for step in steps {
                let now = clock.now_ms();
                match step {
                    Step::Spend(cost) => {
                        let result = store.validate_cost(token.secret(), cost);
                        match model.at(now) {
                            Some(left) if left >= cost => {
                                prop_assert!(result.is_ok(), "{result:?}");
                                model.remaining = Some(left - cost);
                            }
                            Some(_) => prop_assert!(
                                matches!(
                                    result,
                                    Err(Rejection::UsageExceeded {
                                        retry_after: Some(_)
                                    })
                                ),
                                "{result:?}"
                            ),
                            None => prop_assert!(result.is_ok()),
                        }
                    }
                    Step::Advance(ms) => clock.advance(Duration::from_millis(ms)),
                    Step::Set(n) => {
                        store.set_credits(&token.id(), n.map(plan)).unwrap();
                        model = Model {
                            remaining: n,
                            anchor: now,
                            period: 0,
                        };
                        flushed = model;
                    }
                    Step::Flush => {
                        store.flush().unwrap();
                        model.at(now);
                        flushed = model;
                    }
                    Step::Reopen => {
                        store.close().unwrap();
                        store = open(&clock);
                        model.at(now);
                        flushed = model;
                    }
                    Step::CrashImage => {
                        let image = crash_image(&dir.path);
                        let seen = TokenStore::builder(&image.path)
                            .clock(clock.clone())
                            .open()
                            .unwrap()
                            .credits(&token.id())
                            .map(|c| c.remaining());
                        // The image holds the last write's state, refilled as due now: the
                        // spending since is given back, never more.
                        let mut at_write = flushed;
                        prop_assert_eq!(seen, at_write.at(now));
                        let now_left = model.at(now);
                        prop_assert!(seen >= now_left, "image {seen:?}, memory {now_left:?}");
                    }
                }
                let now = clock.now_ms();
                prop_assert_eq!(
                    store.credits(&token.id()).map(|c| c.remaining()),
                    model.at(now)
                );
            }
            store.close().unwrap();
            Ok(())
        },
    );
}
