//! Unit tests of the limit and the GCRA check.

use super::*;
use crate::sync::Ordering;

const T0: u64 = 1_767_225_600_000;

#[test]
fn burst_defaults_to_count_like_governor() {
    assert_eq!(RateLimit::per_second(5).burst_size(), 5);
    assert_eq!(RateLimit::per_second(5).burst(2).burst_size(), 2);
    assert_eq!(
        RateLimit::per_hour(3600).emission_interval(),
        Duration::from_secs(1)
    );
}

#[test]
fn bad_limits_are_errors_not_panics() {
    assert_eq!(
        RateLimit::per_second(0).check(),
        Err(RateLimitError::ZeroCount)
    );
    assert_eq!(
        RateLimit::per_second(1).burst(0).check(),
        Err(RateLimitError::ZeroBurst)
    );
    assert_eq!(
        RateLimit::per_second(5_000_000).check(),
        Err(RateLimitError::BurstTooLarge(5_000_000))
    );
    assert!(RateLimit::per_second(5_000_000).burst(100).check().is_ok());
    assert!(matches!(
        RateLimit::per_second(u32::MAX).burst(1).check(),
        Err(RateLimitError::TooFast(_))
    ));
    assert!(RateLimit::per_hour(1).check().is_ok());
    assert!(RateLimit::per_minute(0).burst(0).check().is_err());
}

#[test]
fn parses_and_displays() {
    assert_eq!("100/s".parse(), Ok(RateLimit::per_second(100)));
    assert_eq!(" 600 / min ".parse(), Ok(RateLimit::per_minute(600)));
    assert_eq!("10/hour".parse(), Ok(RateLimit::per_hour(10)));
    assert_eq!("0/s".parse::<RateLimit>(), Err(RateLimitError::ZeroCount));
    for bad in ["", "100", "x/s", "100/day", "-1/s", "100/s/s"] {
        assert!(
            matches!(bad.parse::<RateLimit>(), Err(RateLimitError::Parse(_))),
            "{bad:?}"
        );
    }
    assert_eq!(RateLimit::per_second(100).to_string(), "100/s");
    assert_eq!(RateLimit::per_hour(10).burst(1).to_string(), "10/h burst 1");
}

#[test]
fn parses_a_burst_and_a_period_in_milliseconds() {
    assert_eq!(
        "600/min burst 20".parse(),
        Ok(RateLimit::per_minute(600).burst(20))
    );
    assert_eq!(
        " 600 / min  burst  20 ".parse(),
        Ok(RateLimit::per_minute(600).burst(20))
    );
    assert_eq!("5/250ms".parse(), Ok(RateLimit::per(5, 250)));
    assert_eq!(
        "5 / 250 ms burst 1".parse(),
        Ok(RateLimit::per(5, 250).burst(1))
    );
    assert_eq!("7/1000ms".parse(), Ok(RateLimit::per_second(7)));
    for bad in [
        "100/s burst",
        "100/s burst x",
        "100/s burst -1",
        "100/s burst 5 burst 6",
        "100/sburst 5",
        "100/s burst5",
        "burst 5",
        "100/ms",
        "100/2.5ms",
        "1/18446744073709551615ms",
    ] {
        assert!(
            matches!(bad.parse::<RateLimit>(), Err(RateLimitError::Parse(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn the_burst_is_checked_with_the_whole_limit() {
    assert_eq!(
        "5000000/s burst 100".parse(),
        Ok(RateLimit::per_second(5_000_000).burst(100))
    );
    assert_eq!(
        "5000000/s".parse::<RateLimit>(),
        Err(RateLimitError::BurstTooLarge(5_000_000))
    );
    assert_eq!(
        "5/h burst 0".parse::<RateLimit>(),
        Err(RateLimitError::ZeroBurst)
    );
    assert_eq!(
        "5/s burst 4194304".parse::<RateLimit>(),
        Err(RateLimitError::BurstTooLarge(4_194_304))
    );
    assert!(matches!(
        "1/0ms".parse::<RateLimit>(),
        Err(RateLimitError::TooFast(_))
    ));
}

/// `parse(display(limit))` is `limit` when `check` accepts it, and `check`'s own error
/// when it does not: one set of rules, whichever way a limit is written.
fn parse_agrees_with_check(limit: RateLimit) -> Result<(), String> {
    let text = limit.to_string();
    let parsed = text.parse::<RateLimit>();
    if parsed == limit.check().map(|()| limit) {
        Ok(())
    } else {
        Err(format!(
            "{text:?} parsed as {parsed:?}; check() says {:?}",
            limit.check()
        ))
    }
}

#[test]
fn display_and_parse_agree_with_check_on_edge_limits() {
    let counts = [
        0,
        1,
        2,
        3,
        7,
        999,
        1_000,
        1_001,
        60_000,
        1_000_000,
        MAX_BURST - 1,
        MAX_BURST,
        MAX_BURST + 1,
        5_000_000,
        1_000_000_000,
        u32::MAX,
    ];
    let periods_ms = [
        0,
        1,
        2,
        250,
        999,
        1_000,
        1_001,
        59_999,
        60_000,
        60_001,
        3_599_999,
        3_600_000,
        3_600_001,
        4_398_046,
        4_398_047,
        86_400_000,
        u64::MAX / NANOS_PER_MS,
    ];
    let mut accepted = 0;
    for count in counts {
        for period_ms in periods_ms {
            let limit = RateLimit::per(count, period_ms);
            for burst in [count, 0, 1, 2, 100, MAX_BURST, MAX_BURST + 1, u32::MAX] {
                let limit = limit.burst(burst);
                if let Err(message) = parse_agrees_with_check(limit) {
                    panic!("{message}");
                }
                accepted += usize::from(limit.check().is_ok());
            }
        }
    }
    // The grid exercises both sides of every rule, not only refusals.
    assert!(accepted > 300, "only {accepted} accepted limits");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn periods_ms() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(1_000),
            Just(60_000),
            Just(3_600_000),
            1u64..=10_000,
            1u64..=100_000_000,
            0..=u64::MAX / NANOS_PER_MS,
        ]
    }

    fn counts() -> impl Strategy<Value = u32> {
        prop_oneof![1u32..=1_000, 1u32..=MAX_BURST, any::<u32>()]
    }

    proptest! {
        #[test]
        fn every_checked_limit_round_trips_through_its_text(
            count in counts(),
            period_ms in periods_ms(),
            burst in prop::option::of(prop_oneof![1u32..=100, 1u32..=MAX_BURST]),
        ) {
            let limit = RateLimit::per(count, period_ms);
            let limit = burst.map_or(limit, |burst| limit.burst(burst));
            prop_assume!(limit.check().is_ok());
            prop_assert_eq!(limit.to_string().parse::<RateLimit>(), Ok(limit));
        }

        #[test]
        fn any_limit_parses_back_or_fails_as_check_does(
            count in any::<u32>(),
            period_ms in periods_ms(),
            burst in any::<u32>(),
        ) {
            let limit = RateLimit::per(count, period_ms).burst(burst);
            prop_assert!(parse_agrees_with_check(limit).is_ok(), "{:?}", parse_agrees_with_check(limit));
        }

        #[test]
        fn any_text_parses_without_panicking(text in any::<String>()) {
            let _ = text.parse::<RateLimit>();
        }

        #[test]
        fn limit_shaped_text_parses_without_panicking(
            text in "[0-9 ]{0,22}/[0-9 ]{0,22}(ms|s|min|h)?( burst [0-9]{0,12})?",
        ) {
            if let Ok(limit) = text.parse::<RateLimit>() {
                prop_assert_eq!(limit.check(), Ok(()));
                prop_assert_eq!(limit.to_string().parse::<RateLimit>(), Ok(limit));
            }
        }
    }
}

#[test]
fn record_round_trip_keeps_the_default_burst() {
    assert_eq!(RateLimit::per_second(5).burst(5), RateLimit::per_second(5));
    for limit in [
        RateLimit::per_minute(600),
        RateLimit::per_second(3).burst(7),
    ] {
        assert_eq!(RateLimit::from_record(&limit.to_record()), Some(limit));
    }
    let bad = RateLimitRecord {
        period_ms: 1_000,
        count: 0,
        burst: 1,
    };
    assert_eq!(RateLimit::from_record(&bad), None);
}

#[test]
fn admits_the_burst_then_one_per_interval_with_exact_waits() {
    let gcra = Gcra::new(Some(RateLimit::per_second(10).burst(3)));
    for _ in 0..3 {
        assert_eq!(gcra.check(T0), Ok(()));
    }
    assert_eq!(gcra.check(T0), Err(Duration::from_millis(100)));
    assert_eq!(gcra.check(T0 + 40), Err(Duration::from_millis(60)));
    assert_eq!(gcra.check(T0 + 100), Ok(()));
    assert_eq!(gcra.check(T0 + 100), Err(Duration::from_millis(100)));
    // A quiet spell refills the burst, never beyond it.
    for _ in 0..3 {
        assert_eq!(gcra.check(T0 + 10_000), Ok(()));
    }
    assert!(gcra.check(T0 + 10_000).is_err());
}

#[test]
fn a_refusal_writes_nothing() {
    let gcra = Gcra::new(Some(RateLimit::per_second(1)));
    assert_eq!(gcra.check(T0), Ok(()));
    let tat = gcra.tat.load(Ordering::Relaxed);
    for _ in 0..100 {
        assert!(gcra.check(T0).is_err());
    }
    assert_eq!(gcra.tat.load(Ordering::Relaxed), tat);
}

#[test]
fn unlimited_admits_everything_and_set_changes_the_limit() {
    let gcra = Gcra::new(None);
    for _ in 0..1000 {
        assert_eq!(gcra.check(T0), Ok(()));
    }
    gcra.set(Some(RateLimit::per_minute(1)));
    assert_eq!(gcra.check(T0), Ok(()));
    assert_eq!(gcra.check(T0 + 1), Err(Duration::from_millis(59_999)));
    gcra.set(None);
    assert_eq!(gcra.check(T0 + 1), Ok(()));
}

#[test]
fn a_store_file_with_an_unenforceable_limit_is_refused_untouched() {
    use crate::snapshot::encode;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.snap");
    let store = crate::TokenStore::open(&path).unwrap();
    let issued = store
        .issue(crate::NewToken::new("bot").rate_limit(RateLimit::per_second(5)))
        .unwrap();
    store.close().unwrap();
    let mut body = crate::snapshot::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        body.records[0].rate_limit,
        Some(RateLimitRecord {
            period_ms: 1_000,
            count: 5,
            burst: 5
        })
    );
    body.records[0].rate_limit = Some(RateLimitRecord {
        period_ms: 1_000,
        count: 5,
        burst: 0,
    });
    let image = encode(&body);
    std::fs::write(&path, &image).unwrap();
    let error = crate::TokenStore::open(&path).unwrap_err().to_string();
    assert!(
        error.contains(&format!("token {} has a rate limit", issued.id())),
        "{error}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), image, "left untouched");
}

#[test]
fn a_clock_stepped_back_refuses_for_at_most_one_interval() {
    let gcra = Gcra::new(Some(RateLimit::per_second(10)));
    for _ in 0..10 {
        assert_eq!(gcra.check(T0), Ok(()));
    }
    assert_eq!(gcra.check(T0), Err(Duration::from_millis(100)));
    let back = T0 - 3_600_000;
    assert_eq!(gcra.check(back), Err(Duration::from_millis(100)));
    assert_eq!(gcra.check(back + 99), Err(Duration::from_millis(1)));
    assert_eq!(gcra.check(back + 100), Ok(()));
    // And then one per interval again, never a burst the step did not earn.
    assert_eq!(gcra.check(back + 100), Err(Duration::from_millis(100)));
}

#[test]
fn a_period_too_long_for_nanoseconds_is_refused_not_wrapped() {
    // 2^64 ns is about 1.8e13 ms: every period from there on overflowed a u64 product.
    for period_ms in [18_446_744_073_710, u64::MAX / 1_000_000 + 1, u64::MAX] {
        for count in [1, 7] {
            let record = RateLimitRecord {
                period_ms,
                count,
                burst: 1,
            };
            assert_eq!(RateLimit::from_record(&record), None, "{record:?}");
            let limit = RateLimit {
                period_ms,
                count,
                burst: 1,
            };
            assert!(matches!(limit.check(), Err(RateLimitError::TooSlow(_))));
            assert!(limit.emission_interval() > Duration::from_secs(3600));
        }
    }
    // Such a period with a huge count is a slow but honest limit: exact, not wrapped.
    let record = RateLimitRecord {
        period_ms: 18_446_744_073_710,
        count: u32::MAX,
        burst: 1,
    };
    let limit = RateLimit::from_record(&record).expect("one request per 4.3 s");
    assert_eq!(
        limit.emission_interval(),
        Duration::from_nanos((18_446_744_073_710u128 * 1_000_000 / u128::from(u32::MAX)) as u64)
    );
}

mod record_props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any stored limit either is refused or packs into a word that unpacks to its
        /// own interval and burst (a burst worth over 100 years lowered to the largest
        /// within): `from_record` is total and never wraps.
        #[test]
        fn from_record_refuses_or_round_trips(
            period_ms in any::<u64>(),
            count in any::<u32>(),
            burst in any::<u32>(),
        ) {
            let record = RateLimitRecord { period_ms, count, burst };
            if let Some(limit) = RateLimit::from_record(&record) {
                prop_assert_eq!(limit.check(), Ok(()));
                let record = if limit.burst_size() == burst {
                    record
                } else {
                    let interval = limit.interval_ns();
                    prop_assert!(u128::from(burst) * interval > u128::from(MAX_BURST_SPAN_NS));
                    prop_assert!(u128::from(limit.burst_size() + 1) * interval > u128::from(MAX_BURST_SPAN_NS));
                    RateLimitRecord { burst: limit.burst_size(), ..record }
                };
                let burst = record.burst;
                let packed = limit.pack();
                prop_assert_eq!(packed & BURST_MASK, u64::from(burst));
                prop_assert_eq!(
                    u128::from(packed >> BURST_BITS),
                    u128::from(period_ms) * 1_000_000 / u128::from(count)
                );
                prop_assert_eq!(limit.to_record(), record);
            }
        }

        /// Whatever the clock does, a refusal never asks for more than one emission
        /// interval beyond what the burst allows from `now`.
        #[test]
        fn no_clock_step_makes_a_wait_longer_than_the_limit_allows(
            steps in proptest::collection::vec(-4_000_000i64..4_000_000, 1..40),
        ) {
            let limit = RateLimit::per_second(10).burst(3);
            let gcra = Gcra::new(Some(limit));
            let mut now = T0;
            for step in steps {
                now = now.saturating_add_signed(step);
                if let Err(wait) = gcra.check(now) {
                    prop_assert!(wait <= limit.emission_interval(), "{wait:?}");
                }
            }
        }
    }
}

#[test]
fn uneven_intervals_round_down_and_never_admit_fewer() {
    // 3/s: T = 333_333_333 ns. The reading T0 + 333 stands for instants up to
    // T0 + 333.999999 ms, one of which (333.333334 ms) the textbook rule admits; the
    // charge is from T0 + 333.333333 ms, so no time is lost: the 4th request is due at
    // T0 + 999.999999 ms, within the reading T0 + 999.
    let gcra = Gcra::new(Some(RateLimit::per_second(3).burst(1)));
    assert_eq!(gcra.check(T0), Ok(()));
    assert_eq!(gcra.check(T0 + 1), Err(Duration::from_millis(332)));
    assert_eq!(gcra.check(T0 + 332), Err(Duration::from_millis(1)));
    assert_eq!(gcra.check(T0 + 333), Ok(()));
    assert_eq!(gcra.check(T0 + 666), Ok(()));
    assert_eq!(gcra.check(T0 + 998), Err(Duration::from_millis(1)));
    assert_eq!(gcra.check(T0 + 999), Ok(()));
    assert_eq!(gcra.check(T0 + 999), Err(Duration::from_millis(334)));
}

/// The textbook GCRA (docs/DESIGN.md, "Rate limits") at exact instants in ns: the
/// reference the limiter is held to. Returns, after each request, how many were admitted.
fn reference(interval: u64, burst: u64, extra_ns: u64, instants: &[u64]) -> Vec<u64> {
    let tolerance = interval * burst + extra_ns;
    let mut tat = None::<u64>;
    let mut admitted = 0;
    instants
        .iter()
        .map(|&t| {
            let next = tat.map_or(t, |tat: u64| tat.max(t)) + interval;
            if next - tolerance.min(next) <= t {
                tat = Some(next);
                admitted += 1;
            }
            admitted
        })
        .collect()
}

/// The limiter fed the millisecond readings of the same instants.
fn limiter(limit: RateLimit, instants: &[u64]) -> Vec<u64> {
    let gcra = Gcra::new(Some(limit));
    let mut admitted = 0;
    instants
        .iter()
        .map(|&t| {
            admitted += u64::from(gcra.check(t / NANOS_PER_MS).is_ok());
            admitted
        })
        .collect()
}

mod reference_props {
    use super::*;
    use proptest::prelude::*;

    /// Limits around the clock's millisecond: intervals from 1 ns to 300 ms, small
    /// and larger bursts.
    fn limits() -> impl Strategy<Value = RateLimit> {
        let period = prop_oneof![Just(1_000u64), Just(60_000), 1u64..=5_000];
        let count = prop_oneof![1u32..=10, 1u32..=5_000, 1u32..=5_000_000];
        let burst = prop_oneof![Just(1u32), 1u32..=4, 1u32..=300];
        (period, count, burst)
            .prop_map(|(period_ms, count, burst)| RateLimit::per(count, period_ms).burst(burst))
            .prop_filter("checked", |limit| limit.check().is_ok())
    }

    /// Request instants (ns, from T0): bunched at one instant, spaced around `T`, or
    /// around a millisecond.
    fn instants() -> impl Strategy<Value = Vec<u64>> {
        let gap = prop_oneof![
            Just(0u64),
            0u64..2_000,
            0u64..3 * NANOS_PER_MS,
            0u64..400 * NANOS_PER_MS,
        ];
        proptest::collection::vec(gap, 1..300).prop_map(|gaps| {
            gaps.iter()
                .scan(T0 * NANOS_PER_MS, |t, gap| {
                    *t += gap;
                    Some(*t)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Finding 17: for requests at any instants, the limiter (which sees only their
        /// milliseconds) has admitted after every request at least as many as the
        /// textbook GCRA at the exact instants, and never more than the textbook GCRA
        /// with two milliseconds more of burst.
        #[test]
        fn never_fewer_than_the_textbook_gcra_and_at_most_two_ms_more(
            limit in limits(),
            instants in instants(),
        ) {
            let interval = limit.interval_ns() as u64;
            let burst = u64::from(limit.burst_size());
            let ours = limiter(limit, &instants);
            let promised = reference(interval, burst, 0, &instants);
            let most = reference(interval, burst, 2 * NANOS_PER_MS, &instants);
            for (i, ((&ours, &promised), &most)) in ours.iter().zip(&promised).zip(&most).enumerate() {
                prop_assert!(ours >= promised, "{limit}: request {i}: {ours} < {promised}");
                prop_assert!(ours <= most, "{limit}: request {i}: {ours} > {most}");
            }
        }
    }
}

/// The clock readings (ms) of 2026, 2080, just before and after `u64::MAX` ns (2554),
/// 9999 and the end of the `u64` millisecond range.
const FAR_CLOCKS: [u64; 6] = [
    T0,
    3_471_292_800_000,
    u64::MAX / NANOS_PER_MS - 1,
    u64::MAX / NANOS_PER_MS + 1,
    253_402_214_400_000,
    u64::MAX - 10_000,
];

/// Finding 16: `per_hour(1).burst(4194303)` was accepted, and with the clock in 2080 its
/// TAT saturated at `u64::MAX`, after which every request was admitted. The largest
/// burst `check` accepts for a slow limit still admits exactly its burst and then
/// refuses, at every clock reading up to the end of the millisecond range.
#[test]
fn the_largest_accepted_burst_stays_a_limit_at_any_clock_reading() {
    for limit in [RateLimit::per_hour(1), RateLimit::per(1, 4_000_000)] {
        let burst = (1..=MAX_BURST)
            .rev()
            .find(|&b| limit.burst(b).check().is_ok())
            .expect("some burst is accepted");
        assert!(burst < MAX_BURST, "{limit}: burst {burst} is accepted");
        let limit = limit.burst(burst);
        for now in FAR_CLOCKS {
            let gcra = Gcra::new(Some(limit));
            for i in 0..burst {
                assert_eq!(gcra.check(now), Ok(()), "{limit} at {now}: request {i}");
            }
            for later in [0, 1, 1_000] {
                assert_eq!(
                    gcra.check(now.wrapping_add(later)),
                    Err(limit.emission_interval() - Duration::from_millis(later)),
                    "{limit} at {now} + {later}"
                );
            }
            let period_ms = limit.period().as_millis() as u64;
            assert_eq!(gcra.check(now.wrapping_add(period_ms)), Ok(()));
        }
    }
}

#[test]
fn a_stored_burst_worth_more_than_a_century_is_lowered_not_refused() {
    let record = RateLimitRecord {
        period_ms: 3_600_000,
        count: 1,
        burst: MAX_BURST,
    };
    assert_eq!(
        RateLimit::from_record(&record),
        Some(RateLimit::per_hour(1).burst(876_600))
    );
}

#[test]
fn a_burst_worth_more_than_a_century_is_refused_with_its_reason() {
    for limit in [
        RateLimit::per(1, 4_000_000).burst(MAX_BURST),
        RateLimit::per_hour(1).burst(MAX_BURST),
        RateLimit::per_hour(1).burst(876_601),
    ] {
        assert_eq!(limit.check(), Err(RateLimitError::BurstSpanTooLong(limit)));
        let message = limit.check().unwrap_err().to_string();
        assert!(message.contains("100 years"), "{message}");
        assert!(message.contains("smaller burst"), "{message}");
    }
    assert_eq!(RateLimit::per_hour(1).burst(876_600).check(), Ok(()));
    assert_eq!(
        Duration::from_nanos(MAX_BURST_SPAN_NS),
        MAX_BURST_SPAN,
        "one bound"
    );
}

mod far_clock_props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any accepted limit, at any clock reading: a fresh limiter admits exactly its
        /// burst at one reading, then refuses for one interval (rounded up to a
        /// millisecond), whatever the year: nothing saturates into "always allow".
        #[test]
        fn every_checked_limit_admits_its_burst_then_refuses_at_any_time(
            period_ms in prop_oneof![Just(3_600_000u64), 1u64..=10_000_000],
            count in prop_oneof![1u32..=10, 1u32..=1_000],
            burst in 1u32..=500,
            now in prop_oneof![any::<u64>(), Just(u64::MAX), Just(u64::MAX / NANOS_PER_MS)],
        ) {
            let limit = RateLimit::per(count, period_ms).burst(burst);
            prop_assume!(limit.check().is_ok());
            // A burst at one reading: the textbook `b`, plus what the rest of the
            // reading's millisecond earns (nothing for an interval of 1 ms or more).
            let gcra = Gcra::new(Some(limit));
            let extra = READING_SLACK_NS / limit.interval_ns() as u64;
            let mut admitted = 0u64;
            while gcra.check(now).is_ok() {
                admitted += 1;
                prop_assert!(admitted <= u64::from(burst) + extra, "{limit} at {now}");
            }
            prop_assert_eq!(admitted, u64::from(burst) + extra, "{} at {}", limit, now);
            let wait = gcra.check(now).unwrap_err();
            prop_assert!(wait >= Duration::from_millis(1));
            prop_assert!(wait <= limit.emission_interval() + Duration::from_millis(1));
        }
    }
}
