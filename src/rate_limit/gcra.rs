//! The lock-free GCRA check of one token against its [`RateLimit`]: one atomic word of
//! limit, one of state, and the pure decision the compare-exchange loop applies.

use std::time::Duration;

use super::{RateLimit, BURST_BITS, BURST_MASK, FRESH, HALF_RANGE, NANOS_PER_MS, READING_SLACK_NS};
use crate::sync::{AtomicU64, Ordering};

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
    pub(super) tat: AtomicU64,
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
