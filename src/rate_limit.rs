//! Per-token rate limits: the [`RateLimit`] a user sets, and the lock-free [`Gcra`] check
//! that `validate` runs against it.
//!
//! The algorithm is GCRA, the Generic Cell Rate Algorithm, as described by Brandur Leach
//! ("Rate limiting, cells, and GCRA", brandur.org/rate-limiting) and implemented by the
//! `governor` crate (`src/gcra.rs`). Its whole state is one number, the theoretical arrival
//! time (TAT) of the next request, kept in one `AtomicU64` and advanced with a
//! compare-exchange loop; a refused request writes nothing. All arithmetic is in integer
//! nanoseconds: no floats, no allocation, no lock.
//!
//! Two things set it apart from a textbook GCRA, both because the clock reads whole
//! milliseconds: a reading of `now` stands for any instant of that millisecond, so the
//! limiter admits a request that some instant of it would admit (a limit faster than the
//! clock still gets its full rate), and waits are whole milliseconds of the clock. And
//! times are Unix nanoseconds modulo 2⁶⁴, compared by their difference, so no clock
//! reading (the year 2554, when nanoseconds pass `u64::MAX`, or the year 10000) can
//! saturate the state into "always allow".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::snapshot::RateLimitRecord;
use crate::sync::{AtomicU64, Ordering};

const NANOS_PER_MS: u64 = 1_000_000;

/// How far past a clock reading of `now` ms the instant it stands for may be: the reading
/// is the millisecond `[now, now + 1 ms)`, and the limiter gives a request the benefit of
/// its last nanosecond.
const READING_SLACK_NS: u64 = NANOS_PER_MS - 1;

/// The most a burst may be worth, `b·T`: 100 years (of 365.25 days) in nanoseconds. It
/// keeps every distance the limiter compares (at most `b·T` + 1 ms + `T`) under 2⁶³ ns,
/// the range in which a difference of two wrapping times says which one is later.
pub const MAX_BURST_SPAN: Duration = Duration::from_secs(36_525 * 86_400);
const MAX_BURST_SPAN_NS: u64 = 36_525 * 86_400 * 1_000_000_000;

/// The TAT of a limiter that has admitted nothing since it was created or its limit set.
const FRESH: u64 = 0;

/// Half the range of the wrapping clock: a TAT less than this ahead of `now` is ahead; one
/// further "ahead" is in fact behind.
const HALF_RANGE: u64 = 1 << 63;

/// Bits of the packed limit word that hold the burst; the rest hold the emission interval.
const BURST_BITS: u32 = 22;
const BURST_MASK: u64 = (1 << BURST_BITS) - 1;

/// The largest burst a limit may allow (2²² − 1; the burst shares one atomic word with the
/// emission interval).
pub const MAX_BURST: u32 = BURST_MASK as u32;

/// The longest emission interval (period ÷ count) a limit may have: 2⁴² − 1 ns, about
/// 73 minutes (so `per_hour(1)` fits).
const MAX_INTERVAL_NS: u64 = (1 << (64 - BURST_BITS)) - 1;

/// How many requests a token may make: `count` per period, in bursts of up to `burst`.
///
/// Requests are admitted at a steady rate of one per *emission interval* (`period / count`),
/// and up to `burst` of them may come at once after a quiet spell. Without
/// [`burst`](Self::burst), the burst equals the count, as in `governor`'s `Quota`.
///
/// ```
/// use std::time::Duration;
/// use tokencache::RateLimit;
///
/// let limit = RateLimit::per_minute(600).burst(20);
/// assert_eq!(limit.emission_interval(), Duration::from_millis(100));
/// assert_eq!(limit.burst_size(), 20);
/// assert_eq!("600/min".parse::<RateLimit>().unwrap(), RateLimit::per_minute(600));
/// assert_eq!(limit.to_string(), "600/min burst 20");
/// ```
///
/// Constructors never panic; a limit that cannot work (a count or burst of zero, a burst over
/// [`MAX_BURST`], more than one request per nanosecond, a burst worth more than
/// [`MAX_BURST_SPAN`] of requests) is refused with a [`RateLimitError`] by
/// [`check`](Self::check), which `issue` and `set_rate_limit` call.
///
/// A checked limit admits, for requests at any instants, never fewer than the textbook GCRA
/// would at those instants, and never more than it would with two more milliseconds of
/// burst (the clock reads milliseconds; see docs/DESIGN.md, "Rate limits"). That holds for
/// limits faster than the clock too: `5000000/s burst 100` admits its 5 000 000 a second.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub struct RateLimit {
    period_ms: u64,
    count: u32,
    burst: u32,
}

impl RateLimit {
    /// `count` requests per second.
    pub const fn per_second(count: u32) -> RateLimit {
        RateLimit::per(count, 1_000)
    }

    /// `count` requests per minute.
    pub const fn per_minute(count: u32) -> RateLimit {
        RateLimit::per(count, 60_000)
    }

    /// `count` requests per hour.
    pub const fn per_hour(count: u32) -> RateLimit {
        RateLimit::per(count, 3_600_000)
    }

    const fn per(count: u32, period_ms: u64) -> RateLimit {
        RateLimit {
            period_ms,
            count,
            burst: count,
        }
    }

    /// Allows up to `burst` requests at once (default: the count).
    pub const fn burst(mut self, burst: u32) -> RateLimit {
        self.burst = burst;
        self
    }

    /// The number of requests per period.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The period the count applies to.
    pub const fn period(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// The most requests admitted at once.
    pub const fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The steady-state spacing of requests, `period / count`, in whole nanoseconds
    /// (rounded down, so a limit never admits fewer than it promises). Zero if `count` is 0;
    /// saturates at `u64::MAX` ns for a period too long to count in nanoseconds.
    pub const fn emission_interval(&self) -> Duration {
        let ns = self.interval_ns();
        Duration::from_nanos(if ns > u64::MAX as u128 {
            u64::MAX
        } else {
            ns as u64
        })
    }

    /// `period / count` in ns. In `u128` because any `period_ms` may come from a file, and
    /// `u64::MAX` ms is 1.8e25 ns: no product here can overflow.
    const fn interval_ns(&self) -> u128 {
        if self.count == 0 {
            return 0;
        }
        self.period_ms as u128 * NANOS_PER_MS as u128 / self.count as u128
    }

    /// Whether this limit can be enforced; `issue` and `set_rate_limit` refuse it otherwise.
    pub fn check(&self) -> Result<(), RateLimitError> {
        if self.count == 0 {
            return Err(RateLimitError::ZeroCount);
        }
        let burst = self.burst_size();
        if burst == 0 {
            return Err(RateLimitError::ZeroBurst);
        }
        if burst > MAX_BURST {
            return Err(RateLimitError::BurstTooLarge(burst));
        }
        let interval = self.interval_ns();
        if interval == 0 {
            return Err(RateLimitError::TooFast(*self));
        }
        if interval > MAX_INTERVAL_NS as u128 {
            return Err(RateLimitError::TooSlow(*self));
        }
        if interval * u128::from(burst) > u128::from(MAX_BURST_SPAN_NS) {
            return Err(RateLimitError::BurstSpanTooLong(*self));
        }
        Ok(())
    }

    /// The limit packed into one word for the hot path: emission interval (ns) in the high
    /// 42 bits, burst in the low 22. Never 0 for a checked limit; 0 means "unlimited".
    /// Only for a limit that passed [`check`](Self::check), which bounds the interval by
    /// [`MAX_INTERVAL_NS`] so the cast and the shift lose no bits.
    fn pack(&self) -> u64 {
        ((self.interval_ns() as u64) << BURST_BITS) | (u64::from(self.burst_size()) & BURST_MASK)
    }

    /// The snapshot form.
    pub(crate) fn to_record(self) -> RateLimitRecord {
        RateLimitRecord {
            period_ms: self.period_ms,
            count: self.count,
            burst: self.burst_size(),
        }
    }

    /// From the snapshot form; `None` if the stored limit is not one this build enforces.
    ///
    /// A burst worth more than [`MAX_BURST_SPAN`] of requests, which earlier versions
    /// accepted, is lowered to the largest burst within it (logged), rather than making the
    /// whole store refuse to open: the two limits differ only after a quiet spell of a
    /// century.
    pub(crate) fn from_record(record: &RateLimitRecord) -> Option<RateLimit> {
        let limit = RateLimit {
            period_ms: record.period_ms,
            count: record.count,
            burst: record.burst,
        };
        match limit.check() {
            Ok(()) => Some(limit),
            Err(RateLimitError::BurstSpanTooLong(_)) => {
                // `check` refuses this only after the interval and burst rules passed: T is
                // 1 ns to 73 min, so the quotient is at least 717 536, and below the stored
                // burst (b·T is over the span), so it fits and passes `check`.
                let interval = limit.interval_ns();
                let burst = u32::try_from(u128::from(MAX_BURST_SPAN_NS) / interval).ok()?;
                let lowered = limit.burst(burst);
                tracing::warn!(stored = %limit, enforced = %lowered, "a stored rate limit saves up more than 100 years of requests; enforcing the largest burst within 100 years");
                lowered.check().ok().map(|()| lowered)
            }
            Err(_) => None,
        }
    }

    fn unit(&self) -> Option<&'static str> {
        match self.period_ms {
            1_000 => Some("s"),
            60_000 => Some("min"),
            3_600_000 => Some("h"),
            _ => None,
        }
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `100/s`, `600/min burst 20`, `10/h`, `5/250ms` (a period that is not a second, minute or
/// hour, in milliseconds); the burst only when it differs from the count. [`FromStr`] reads
/// all of these back.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unit() {
            Some(unit) => write!(f, "{}/{unit}", self.count)?,
            None => write!(f, "{}/{}ms", self.count, self.period_ms)?,
        }
        if self.burst_size() != self.count {
            write!(f, " burst {}", self.burst_size())?;
        }
        Ok(())
    }
}

/// Parses the forms [`Display`](fmt::Display) writes, so that every limit
/// [`check`](RateLimit::check) accepts round-trips: a count, a period and an optional burst,
/// `N/PERIOD [burst B]`.
///
/// - `PERIOD` is `s`, `sec`, `second`, `m`, `min`, `minute`, `h`, `hour`, or a number of
///   milliseconds, `Pms` (e.g. `5/250ms`).
/// - Without `burst B`, the burst is `N`.
///
/// Spaces around the parts are allowed (`600 / min burst 20`). The whole limit, burst
/// included, is then checked once with [`check`](RateLimit::check), so the text is accepted
/// exactly when the same limit built with the constructors would be:
/// `"5000000/s burst 100"` parses, `"5000000/s"` does not (a burst over [`MAX_BURST`]).
///
/// ```
/// use tokencache::{RateLimit, RateLimitError};
///
/// let limit: RateLimit = "5000000/s burst 100".parse()?;
/// assert_eq!(limit, RateLimit::per_second(5_000_000).burst(100));
/// assert_eq!(limit.to_string().parse(), Ok(limit));
/// assert_eq!(
///     "5000000/s".parse::<RateLimit>(),
///     Err(RateLimitError::BurstTooLarge(5_000_000))
/// );
/// # Ok::<(), RateLimitError>(())
/// ```
impl FromStr for RateLimit {
    type Err = RateLimitError;

    fn from_str(s: &str) -> Result<RateLimit, RateLimitError> {
        let bad = || RateLimitError::Parse(s.chars().take(64).collect());
        let (rate, burst) = match s.split_once("burst") {
            // The keyword stands apart: `100/sburst 5` and `100/s burst5` are not limits.
            Some((rate, burst))
                if rate.ends_with(char::is_whitespace)
                    && burst.starts_with(char::is_whitespace) =>
            {
                (rate, Some(burst))
            }
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let (count, period) = rate.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let limit = match period.trim() {
            "s" | "sec" | "second" => RateLimit::per_second(count),
            "m" | "min" | "minute" => RateLimit::per_minute(count),
            "h" | "hour" => RateLimit::per_hour(count),
            other => {
                let period_ms: u64 = other
                    .strip_suffix("ms")
                    .and_then(|ms| ms.trim().parse().ok())
                    .ok_or_else(bad)?;
                // Refused here, not left to `check`: `check` computes the interval in u64
                // nanoseconds, and a period past that range (over 584 years) would overflow.
                if period_ms.checked_mul(NANOS_PER_MS).is_none() {
                    return Err(bad());
                }
                RateLimit::per(count, period_ms)
            }
        };
        let limit = match burst {
            Some(burst) => limit.burst(burst.trim().parse().map_err(|_| bad())?),
            None => limit,
        };
        limit.check()?;
        Ok(limit)
    }
}

/// Why a [`RateLimit`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// A count of zero would refuse every request; revoke the token instead.
    #[error("a rate limit of 0 requests per period refuses everything; give a count of at least 1 (or revoke the token)")]
    ZeroCount,
    /// A burst of zero would refuse every request.
    #[error("a burst of 0 refuses every request; give a burst of at least 1")]
    ZeroBurst,
    /// The burst does not fit the limiter's state word.
    #[error(
        "a burst of {0} is more than the largest supported, {MAX_BURST}; give a smaller burst"
    )]
    BurstTooLarge(u32),
    /// More than one request per nanosecond.
    #[error("rate limit {0} allows more than one request per nanosecond; give a smaller count or a longer period")]
    TooFast(RateLimit),
    /// Fewer than one request per 73 minutes.
    #[error("rate limit {0} spaces requests more than 73 minutes apart; give a larger count")]
    TooSlow(RateLimit),
    /// A full burst would be worth more than [`MAX_BURST_SPAN`] (100 years) of requests
    /// (`burst × period / count`): the limiter's times could no longer be told apart.
    #[error("rate limit {0} lets a token save up more than 100 years of requests (burst × period ÷ count); give a smaller burst or a larger count")]
    BurstSpanTooLong(RateLimit),
    /// The text is not a rate limit.
    #[error("cannot read {0:?} as a rate limit; write it like 100/s, 600/min or 10/h")]
    Parse(String),
}

/// The GCRA limiter of one token: its limit and its state, each one atomic word.
///
/// `limit` is the packed [`RateLimit`] (0 = unlimited), written only by the persister.
/// `tat` is the theoretical arrival time in Unix nanoseconds modulo 2⁶⁴ ([`FRESH`], 0, for
/// no request yet); it is only ever compared with a clock reading through their wrapping
/// difference ([`ahead`]). It lives in memory only: a restart forgets it and every limited
/// token starts with a full burst.
#[doc(hidden)]
pub struct Gcra {
    limit: AtomicU64,
    tat: AtomicU64,
}

impl Gcra {
    /// A limiter enforcing `limit` (none if `None`), with a full burst available.
    ///
    /// The limit must have passed [`RateLimit::check`].
    pub fn new(limit: Option<RateLimit>) -> Gcra {
        Gcra {
            limit: AtomicU64::new(limit.map_or(0, |l| l.pack())),
            tat: AtomicU64::new(FRESH),
        }
    }

    /// Replaces the limit and forgets the spent quota (a full burst is available again).
    /// The limit must have passed [`RateLimit::check`].
    pub fn set(&self, limit: Option<RateLimit>) {
        // Relaxed: published by the Release store of `limit` below, so a check that sees the
        // new limit also sees this reset (or a later TAT). A check still on the old limit may
        // CAS against either TAT; each outcome is a decision one of the two limits allows.
        self.tat.store(FRESH, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `check`.
        self.limit
            .store(limit.map_or(0, |l| l.pack()), Ordering::Release);
    }

    /// A deliberately broken twin of [`set`](Self::set) that publishes the new limit before
    /// resetting the state, so the loom model can show a check mixing the new limit with the
    /// old state.
    #[cfg(loom)]
    pub fn set_reordered(&self, limit: Option<RateLimit>) {
        self.limit
            .store(limit.map_or(0, |l| l.pack()), Ordering::Release);
        self.tat.store(FRESH, Ordering::Relaxed);
    }

    /// Admits or refuses one request at the clock reading `now_ms`; on refusal, returns how
    /// long until the first reading at which it would be admitted: whole milliseconds, at
    /// least one, never more than one emission interval rounded up to a millisecond, and
    /// exact (a request one millisecond earlier would be refused). A refusal writes nothing,
    /// unless the wall clock was stepped back (see [`horizon`]). An unlimited token costs one
    /// load and one branch.
    #[inline]
    pub fn check(&self, now_ms: u64) -> Result<(), Duration> {
        // Acquire: pairs with the Release store in `set` (a validation that starts after
        // `set_rate_limit` returned sees the new limit).
        let limit = self.limit.load(Ordering::Acquire);
        if limit == 0 {
            return Ok(());
        }
        // Wrapping, like every time here: past the year 2554 nanoseconds wrap, and the
        // comparisons in `ahead` still order them.
        let now = now_ms.wrapping_mul(NANOS_PER_MS);
        // Relaxed throughout: the TAT word publishes nothing but itself. What keeps two
        // requests from spending the same slot is that a compare-exchange is a
        // read-modify-write: it succeeds only against the latest value in the word's
        // modification order, so admissions form one chain.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let highest = horizon(limit);
            if ahead(tat, now) > highest {
                // The clock was stepped back: repair the state, then decide on it. This is
                // the only write a refusal can make.
                let repaired = stamp(now.wrapping_add(highest));
                match self.tat.compare_exchange_weak(
                    tat,
                    repaired,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => tat = repaired,
                    Err(current) => tat = current,
                }
                continue;
            }
            let next = decide(limit, tat, now).map_err(Duration::from_nanos)?;
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// A deliberately broken twin of [`check`](Self::check) (load, decide, store: no
    /// compare-exchange), so the loom model can show that it admits too many.
    #[cfg(loom)]
    pub fn check_racy(&self, now_ms: u64) -> Result<(), Duration> {
        let limit = self.limit.load(Ordering::Acquire);
        if limit == 0 {
            return Ok(());
        }
        let now = now_ms.wrapping_mul(NANOS_PER_MS);
        let tat = self.tat.load(Ordering::Relaxed);
        let next = decide(limit, tat, now).map_err(Duration::from_nanos)?;
        self.tat.store(next, Ordering::Relaxed);
        Ok(())
    }
}

/// One GCRA decision for the packed `limit`, state `tat` and clock reading `now` (ns, the
/// start of the reading's millisecond): the new TAT if the request is admitted, or the wait
/// in ns (whole milliseconds) until the first reading at which it would be.
///
/// The textbook rule, with emission interval `T` and burst `b`: a request at instant `t` is
/// admitted when `max(tat, t) + T - b·T <= t`, and the TAT becomes `max(tat, t) + T`. A
/// reading of `now` ms stands for any instant of `[now, now + 1 ms)`, and the request gets
/// the benefit of the doubt both ways: it is admitted if the last instant would admit it,
/// and charged from the first (`next = max(tat, now) + T`). So a limit whose `T` is under a
/// millisecond still admits its full rate, where judging every request at `now` capped it
/// at `b` per millisecond; and for a whole-millisecond `T` (every TAT then a whole
/// millisecond) the decision is the textbook one at `now`. The proptests in this file check
/// the result against the textbook rule at the requests' real instants: never fewer
/// admitted, never more than with two milliseconds more of burst.
///
/// Distances are from `now` ([`ahead`]), so nothing here can overflow or saturate: `ahead`
/// is at most [`horizon`] after the repair in `check` (below 2⁶³ by `check`'s bound on
/// `b·T`), `T` under 2⁴², and the sum stays far below `u64::MAX`.
#[inline]
fn decide(limit: u64, tat: u64, now: u64) -> Result<u64, u64> {
    let interval = limit >> BURST_BITS;
    // How far past `now` the TAT will be if this request is admitted.
    let next = ahead(tat, now).saturating_add(interval);
    let highest = horizon(limit);
    if next <= highest {
        Ok(stamp(now.wrapping_add(next)))
    } else {
        // Each later reading moves `now` 1 ms on: the first admitted reading is the first
        // whole millisecond that brings `next` within the horizon.
        Err((next - highest).div_ceil(NANOS_PER_MS) * NANOS_PER_MS)
    }
}

/// How far the TAT is ahead of the reading `now`, in ns; 0 if it is behind or fresh.
/// Both are Unix nanoseconds modulo 2⁶⁴: a wrapping difference under 2⁶³ (292 years) is a
/// distance ahead, any other is behind (`RateLimit::check` keeps every TAT a clock that
/// never goes back can leave within `b·T` + 1 ms of it). A TAT more than 292 years behind
/// `now` (a process that ran that long, a clock stepped that far) reads as ahead and is
/// repaired like a step back: refused for at most one interval.
#[inline]
fn ahead(tat: u64, now: u64) -> u64 {
    let distance = tat.wrapping_sub(now);
    if tat == FRESH || distance >= HALF_RANGE {
        0
    } else {
        distance
    }
}

/// A TAT to store for the instant `tat`: the instant itself, except that one which wraps to
/// [`FRESH`] is stored a nanosecond early (once every 584 years; the early side never
/// admits fewer).
#[inline]
fn stamp(tat: u64) -> u64 {
    if tat == FRESH {
        tat.wrapping_sub(1)
    } else {
        tat
    }
}

/// The furthest past a reading `now` a clock that never goes back can leave the TAT:
/// `b·T` + 1 ms − 1 ns (an admission at the reading's last instant leaves at most that).
/// A TAT further ahead means the wall clock was stepped back (NTP); `check` lowers it to
/// this, which reads as "burst spent as of now", so the wait is at most one `T` (rounded up
/// to a millisecond) instead of the size of the step. The repaired state is refused like
/// the one it replaces, so the repair itself admits nothing. A step forward reads as a
/// quiet spell and refills the burst, as GCRA always does.
///
/// A validation that read the clock and was then preempted looks like a small step back
/// and may lower the TAT by as long as it was delayed; that can admit the next request as
/// much earlier.
#[inline]
fn horizon(limit: u64) -> u64 {
    let tolerance = (limit >> BURST_BITS).saturating_mul(limit & BURST_MASK);
    tolerance.saturating_add(READING_SLACK_NS)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

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
            Duration::from_nanos(
                (18_446_744_073_710u128 * 1_000_000 / u128::from(u32::MAX)) as u64
            )
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
}
