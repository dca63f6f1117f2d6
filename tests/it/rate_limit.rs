//! Per-token rate limits through the public API: exact GCRA arithmetic on a manual clock,
//! the quota never exceeded under concurrency, durability of `set_rate_limit`, bad input.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use common::{manual_store, scratch};
use tokencache::{Error, ManualClock, NewToken, RateLimit, RateLimitError, Rejection, TokenStore};

fn limited(retry_after_ms: u64) -> Rejection {
    Rejection::RateLimited {
        retry_after: Duration::from_millis(retry_after_ms),
    }
}

#[test]
fn exactly_the_burst_at_once_then_one_per_interval_with_exact_waits() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    // 10/s, burst 4: emission interval 100 ms.
    let token = store
        .issue(NewToken::new("bot").rate_limit(RateLimit::per_second(10).burst(4)))
        .unwrap();
    for _ in 0..4 {
        store.validate(token.secret()).unwrap();
    }
    assert_eq!(store.validate(token.secret()).unwrap_err(), limited(100));
    clock.advance(Duration::from_millis(30));
    assert_eq!(store.validate(token.secret()).unwrap_err(), limited(70));
    clock.advance(Duration::from_millis(70));
    store.validate(token.secret()).unwrap();
    assert_eq!(store.validate(token.secret()).unwrap_err(), limited(100));
    // Steady state: one per interval, for a while.
    for _ in 0..20 {
        clock.advance(Duration::from_millis(100));
        store.validate(token.secret()).unwrap();
        assert_eq!(store.validate(token.secret()).unwrap_err(), limited(100));
    }
    let rejections = store.stats().rejections;
    assert_eq!(rejections.rate_limited, 23);
}

#[test]
fn an_ntp_step_back_refuses_for_at_most_one_interval() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let token = store
        .issue(NewToken::new("bot").rate_limit(RateLimit::per_second(10)))
        .unwrap();
    for _ in 0..10 {
        store.validate(token.secret()).unwrap();
    }
    assert_eq!(store.validate(token.secret()).unwrap_err(), limited(100));
    // The wall clock is stepped back an hour (NTP): the limiter must not make the token
    // wait out the hour.
    clock.set(ManualClock::DEFAULT_START_MS - 3_600_000);
    assert_eq!(store.validate(token.secret()).unwrap_err(), limited(100));
    clock.advance(Duration::from_millis(100));
    store.validate(token.secret()).unwrap();
    assert_eq!(store.validate(token.secret()).unwrap_err(), limited(100));
}

#[test]
fn without_burst_the_burst_is_the_count() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store
        .issue(NewToken::new("bot").rate_limit(RateLimit::per_minute(6)))
        .unwrap();
    for _ in 0..6 {
        store.validate(token.secret()).unwrap();
    }
    assert_eq!(store.validate(token.secret()).unwrap_err(), limited(10_000));
}

#[test]
fn only_requests_that_would_be_accepted_spend_quota() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store
        .issue(
            NewToken::new("bot")
                .scopes(["read"])
                .rate_limit(RateLimit::per_hour(1)),
        )
        .unwrap();
    // Out-of-scope requests and forged secrets for the same public id spend nothing.
    for _ in 0..10 {
        assert_eq!(
            store.validate_scope(token.secret(), "write").unwrap_err(),
            Rejection::MissingScope
        );
        assert_eq!(
            store.validate(&forge(token.secret())).unwrap_err(),
            Rejection::Unknown
        );
    }
    store.validate_scope(token.secret(), "read").unwrap();
    assert!(matches!(
        store.validate(token.secret()).unwrap_err(),
        Rejection::RateLimited { .. }
    ));
    // A revoked token says Revoked, not RateLimited, even with its quota spent.
    store.revoke(&token.id()).unwrap();
    assert_eq!(
        store.validate(token.secret()).unwrap_err(),
        Rejection::Revoked
    );
}

/// A token with the real id, another secret and a correct checksum.
fn forge(secret: &str) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut text = secret[..12].to_string();
    text.push_str("AAAAAAAAAAAAAAAAAAAAAA");
    let mut crc = crc32fast::hash(text.as_bytes());
    let mut digits = [0u8; 6];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(crc % 62) as usize];
        crc /= 62;
    }
    text.push_str(std::str::from_utf8(&digits).unwrap());
    assert_eq!(text.len(), tokencache::TOKEN_LEN);
    text
}

#[test]
fn four_threads_never_get_more_than_the_quota() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let token = store
        .issue(NewToken::new("bot").rate_limit(RateLimit::per_second(50).burst(25)))
        .unwrap();
    let secret = token.secret();
    // Each window: 4 threads hammer the token while the clock stands still, then it moves
    // by `k` emission intervals (20 ms each) and exactly `k` more must be admitted.
    let mut expected = 25;
    for window in 0..10u64 {
        let admitted = AtomicU64::new(0);
        let barrier = Barrier::new(4);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    barrier.wait();
                    for _ in 0..2_000 {
                        if store.validate(secret).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), expected, "window {window}");
        let k = window % 4 + 1;
        clock.advance(Duration::from_millis(20 * k));
        expected = k;
    }
}

#[test]
fn set_rate_limit_is_durable_and_shown_by_get_and_list() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let a = store.issue(NewToken::new("a")).unwrap();
    let b = store
        .issue(NewToken::new("b").rate_limit(RateLimit::per_minute(600)))
        .unwrap();
    assert_eq!(store.get(&a.id()).unwrap().rate_limit, None);
    assert_eq!(
        store.get(&b.id()).unwrap().rate_limit,
        Some(RateLimit::per_minute(600))
    );
    let written = store.stats().journal_records_written;
    store
        .set_rate_limit(&a.id(), Some(RateLimit::per_second(2).burst(1)))
        .unwrap();
    store.set_rate_limit(&b.id(), None).unwrap();
    assert_eq!(
        store.stats().journal_records_written,
        written + 2,
        "each is durable"
    );
    store.validate(a.secret()).unwrap();
    assert_eq!(store.validate(a.secret()).unwrap_err(), limited(500));
    drop(store);

    let (store, _clock) = manual_store(&s.path);
    let listed = store.list();
    let limit_of = |id| listed.iter().find(|t| t.id == id).unwrap().rate_limit;
    assert_eq!(limit_of(a.id()), Some(RateLimit::per_second(2).burst(1)));
    assert_eq!(limit_of(b.id()), None);
    assert_eq!(store.get(&a.id()).unwrap().rate_limit, limit_of(a.id()));
    // The limit survived; its state did not (a restart forgets spent quota).
    store.validate(a.secret()).unwrap();
    assert_eq!(store.validate(a.secret()).unwrap_err(), limited(500));
    for _ in 0..100 {
        store.validate(b.secret()).unwrap();
    }
}

#[test]
fn set_rate_limit_is_on_disk_when_it_returns() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    store
        .set_rate_limit(&token.id(), Some(RateLimit::per_hour(7)))
        .unwrap();
    // The store is still open, its persister idle: what is in the files now is what a
    // crash would leave. Open a copy of them.
    let copy = scratch();
    std::fs::copy(&s.path, &copy.path).unwrap();
    std::fs::copy(
        common::journal_path(&s.path),
        common::journal_path(&copy.path),
    )
    .unwrap();
    let reopened = TokenStore::open(&copy.path).unwrap();
    assert_eq!(
        reopened.get(&token.id()).unwrap().rate_limit,
        Some(RateLimit::per_hour(7))
    );
}

#[test]
fn a_new_limit_applies_at_once_with_a_full_burst() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    for _ in 0..100 {
        store.validate(token.secret()).unwrap();
    }
    store
        .set_rate_limit(&token.id(), Some(RateLimit::per_second(1).burst(2)))
        .unwrap();
    store.validate(token.secret()).unwrap();
    store.validate(token.secret()).unwrap();
    assert_eq!(store.validate(token.secret()).unwrap_err(), limited(1_000));
}

#[test]
fn bad_limits_are_refused_before_anything_is_written() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    let written = store.stats().snapshots_written;
    let bad = [
        (RateLimit::per_second(0), RateLimitError::ZeroCount),
        (RateLimit::per_minute(5).burst(0), RateLimitError::ZeroBurst),
        (
            RateLimit::per_hour(10).burst(u32::MAX),
            RateLimitError::BurstTooLarge(u32::MAX),
        ),
    ];
    for (limit, why) in bad {
        match store.issue(NewToken::new("x").rate_limit(limit)) {
            Err(Error::InvalidRateLimit(e)) => assert_eq!(e, why),
            other => panic!("issue with {limit:?}: {other:?}"),
        }
        match store.set_rate_limit(&token.id(), Some(limit)) {
            Err(Error::InvalidRateLimit(e)) => assert_eq!(e, why),
            other => panic!("set_rate_limit with {limit:?}: {other:?}"),
        }
    }
    assert_eq!(store.stats().snapshots_written, written);
    assert_eq!(store.list().len(), 1);
    assert_eq!(store.get(&token.id()).unwrap().rate_limit, None);
    let message = store
        .set_rate_limit(&token.id(), Some(RateLimit::per_second(0)))
        .unwrap_err()
        .to_string();
    assert!(message.contains("at least 1"), "{message}");
}

#[test]
fn setting_a_limit_on_an_unknown_id_says_so() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    let other_dir = scratch();
    let other = TokenStore::open(&other_dir.path).unwrap();
    let stranger = other.issue(NewToken::new("stranger")).unwrap();
    assert!(matches!(
        store.set_rate_limit(&stranger.id(), Some(RateLimit::per_second(1))),
        Err(Error::UnknownId(id)) if id == stranger.id()
    ));
    assert_eq!(store.get(&token.id()).unwrap().rate_limit, None);
}

/// Sends requests as fast as it can for `ms` milliseconds of a manual clock (every request
/// of a millisecond made until the first refusal, then the clock moves one millisecond);
/// returns how many were admitted.
fn greedy(store: &TokenStore, clock: &ManualClock, secret: &str, ms: u64) -> u64 {
    let mut admitted = 0;
    for _ in 0..ms {
        while store.validate(secret).is_ok() {
            admitted += 1;
        }
        clock.advance(Duration::from_millis(1));
    }
    admitted
}

/// Finding 17: a limit whose emission interval is under a millisecond used to be capped by
/// the millisecond clock at `burst` per millisecond (5 000 000/s burst 100 admitted 10 100 in
/// 100 ms; 1 000 000/s burst 1 admitted 100). The limiter now takes a reading of `now` ms
/// as any instant of that millisecond, so it admits the promised rate, and at most two
/// milliseconds' worth more.
#[test]
fn a_limit_faster_than_the_clock_admits_its_full_rate() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    for (limit, per_ms) in [
        (RateLimit::per_second(5_000_000).burst(100), 5_000),
        (RateLimit::per_second(1_000_000).burst(1), 1_000),
        (RateLimit::per_second(3_000).burst(1), 3),
    ] {
        let token = store
            .issue(NewToken::new("fast").rate_limit(limit))
            .unwrap();
        let ms = 20;
        let admitted = greedy(&store, &clock, token.secret(), ms);
        // The promise of the reference GCRA over the 20 ms the requests spanned (the last
        // reading stands for instants up to 19.999999 ms after the first): the burst, then
        // one per interval.
        let promised = u64::from(limit.burst_size()) + (ms - 1) * per_ms;
        assert!(
            admitted >= promised,
            "{limit}: admitted {admitted} in {ms} ms, promised {promised}"
        );
        assert!(
            admitted <= promised + 2 * per_ms,
            "{limit}: admitted {admitted} in {ms} ms, promised {promised}"
        );
    }
}

/// Finding 17: a wait under a millisecond could not be honoured (the clock reads the same
/// millisecond after it). A refusal now says how long until the first reading at which the
/// request is admitted: whole milliseconds, and waiting that long admits it.
#[test]
fn a_retry_after_is_whole_milliseconds_and_waiting_it_out_admits() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    for limit in [
        RateLimit::per_second(1_000_000).burst(1),
        RateLimit::per_second(3).burst(1),
        RateLimit::per_second(7).burst(2),
        RateLimit::per_minute(7),
    ] {
        let token = store.issue(NewToken::new("bot").rate_limit(limit)).unwrap();
        let mut waits = 0;
        for _ in 0..20_000 {
            match store.validate(token.secret()) {
                Ok(_) => continue,
                Err(Rejection::RateLimited { retry_after }) => {
                    assert!(retry_after >= Duration::from_millis(1), "{limit}");
                    assert_eq!(retry_after.subsec_nanos() % 1_000_000, 0, "{limit}");
                    assert!(
                        retry_after <= limit.emission_interval() + Duration::from_millis(1),
                        "{limit}: {retry_after:?}"
                    );
                    // One millisecond less is too early...
                    clock.advance(retry_after - Duration::from_millis(1));
                    assert!(store.validate(token.secret()).is_err(), "{limit}");
                    // ...and the wait itself is enough.
                    clock.advance(Duration::from_millis(1));
                    store.validate(token.secret()).unwrap();
                    waits += 1;
                }
                Err(other) => panic!("{other:?}"),
            }
            if waits == 5 {
                break;
            }
        }
        assert_eq!(waits, 5, "{limit}");
    }
}

/// Finding 16: a limit whose burst is worth more than a century of requests let the
/// limiter's state saturate at `u64::MAX` (with the clock in 2080 for `1/h burst 4194303`),
/// after which it admitted every request. `check` now refuses such limits, wherever they
/// come from.
#[test]
fn a_burst_worth_centuries_is_refused_not_turned_into_no_limit() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    for (text, limit) in [
        (
            "1/4000000ms burst 4194303",
            RateLimit::per_hour(1).burst(4_194_303),
        ),
        ("1/h burst 4194303", RateLimit::per_hour(1).burst(4_194_303)),
        ("1/h burst 876601", RateLimit::per_hour(1).burst(876_601)),
    ] {
        assert!(text.parse::<RateLimit>().is_err(), "{text}");
        assert!(limit.check().is_err(), "{limit}");
        assert!(matches!(
            store.issue(NewToken::new("x").rate_limit(limit)),
            Err(Error::InvalidRateLimit(_))
        ));
        assert!(matches!(
            store.set_rate_limit(&token.id(), Some(limit)),
            Err(Error::InvalidRateLimit(_))
        ));
    }
    // A century of requests is still a limit (100 years of 1/h: 876 600).
    assert_eq!(RateLimit::per_hour(1).burst(876_600).check(), Ok(()));
}
