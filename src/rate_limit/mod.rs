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

mod gcra;
pub use gcra::Gcra;

#[cfg(all(test, not(loom)))]
mod tests;
