//! Credits: how much a token may still do. [`Credits`] and [`Refill`] are what a caller
//! sets; a [`Meter`] is what an entry holds: one atomic word that every accepted validation
//! of the token spends from with a compare-exchange, so on one store never more is spent
//! than was granted, whatever the thread count.
//!
//! The word packs the remaining credits (low 38 bits) with the refill period they belong
//! to (high 24 bits, modulo 2^24): a spend that finds the word in an older period than the
//! clock's spends from a full refill instead, in the same compare-exchange, so a refill
//! racing a spend is one step of the same chain, never a lost update or a double refill.
//!
//! Between them sit two flags the same compare-exchange sets: DIRTY (the word changed
//! since the persister last took it: the spend that sets it sends the token's id, as
//! `touch` does for `last_used`) and ALERT (this spend crossed the alert threshold). The
//! persister takes both with one `fetch_and`, so a spend is either in what it took or
//! leaves the flag set for the next write: none is lost, none written twice.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::sync::{AtomicU64, Ordering};

/// The most credits a token holds at once (2^38 - 1, about 275 billion).
pub const MAX_CREDITS: u64 = (1 << REMAINING_BITS) - 1;
/// The shortest period of [`Refill::every`]: one minute. With 24 bits of period number a
/// token must sit unused for 2^24 periods (32 years at one a minute) before the number
/// wraps onto the stored one and a refill is missed.
pub const MIN_REFILL_PERIOD: Duration = Duration::from_secs(60);

const REMAINING_BITS: u32 = 38;
/// The word changed since the persister last took it.
const DIRTY: u64 = 1 << REMAINING_BITS;
/// The change the persister has not taken crossed the alert threshold.
const ALERT: u64 = 1 << (REMAINING_BITS + 1);
const PERIOD_SHIFT: u32 = REMAINING_BITS + 2;
const PERIOD_MASK: u64 = (1 << (64 - PERIOD_SHIFT)) - 1;

/// A token's credits: how many validations (or how much [`cost`](crate::TokenStore::validate_cost))
/// it may still spend, and how they come back.
///
/// ```
/// use std::time::Duration;
/// use tokencache::{Credits, Refill};
///
/// // 1,000 calls a day, each day's unused ones lost; an alert once fewer than 100 remain.
/// let daily = Credits::new(1_000)
///     .refill(Refill::every(Duration::from_secs(86_400), 1_000))
///     .alert_below(100);
/// // 50,000 a month, back to 50,000 on the 1st at 00:00 UTC.
/// let monthly = Credits::new(50_000).refill(Refill::monthly(1, 50_000));
/// # let _ = (daily, monthly);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credits {
    remaining: u64,
    refill: Option<Refill>,
    alert_below: Option<u64>,
}

/// How a token's credits come back: at each refill, the remaining credits become
/// `amount` (unused credits do not carry over, as with Unkey's refill).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refill {
    /// Every `period` (at least [`MIN_REFILL_PERIOD`]), counted from when the credits were set.
    Every {
        /// The period.
        period: Duration,
        /// The credits after each refill.
        amount: u64,
    },
    /// On `day` (1-31; the month's last day in a shorter month) of every month, at 00:00 UTC.
    Monthly {
        /// The day of the month.
        day: u8,
        /// The credits after each refill.
        amount: u64,
    },
}

impl Refill {
    /// Back to `amount` every `period`, counted from when the credits are set.
    pub fn every(period: Duration, amount: u64) -> Refill {
        Refill::Every { period, amount }
    }

    /// Back to `amount` on `day` of every month, at 00:00 UTC.
    pub fn monthly(day: u8, amount: u64) -> Refill {
        Refill::Monthly { day, amount }
    }

    /// The credits after each refill.
    pub fn amount(&self) -> u64 {
        match *self {
            Refill::Every { amount, .. } | Refill::Monthly { amount, .. } => amount,
        }
    }
}

impl Credits {
    /// `remaining` credits (at most [`MAX_CREDITS`]), never refilled unless
    /// [`refill`](Self::refill) says how.
    pub fn new(remaining: u64) -> Credits {
        Credits {
            remaining,
            refill: None,
            alert_below: None,
        }
    }

    /// Refills the credits as `refill` says.
    pub fn refill(mut self, refill: Refill) -> Credits {
        self.refill = Some(refill);
        self
    }

    /// Reports on the change feed ([`ChangeKind::CreditsLow`](crate::ChangeKind::CreditsLow))
    /// when a spend takes the remaining credits from `threshold` or more to below it: once
    /// per crossing (a refill above it arms it again).
    pub fn alert_below(mut self, threshold: u64) -> Credits {
        self.alert_below = Some(threshold);
        self
    }

    /// The credits left (as set, or as read from a store at that moment).
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// How the credits come back, if they do.
    pub fn refill_plan(&self) -> Option<Refill> {
        self.refill
    }

    /// The threshold of the low-credit alert, if one is set.
    pub fn alert_threshold(&self) -> Option<u64> {
        self.alert_below
    }

    /// Refuses what the word cannot hold or the calendar cannot mean.
    pub(crate) fn check(&self) -> Result<(), String> {
        let amount = self.refill.map_or(0, |r| r.amount());
        if self.remaining.max(amount) > MAX_CREDITS {
            return Err(format!("credits must be at most {MAX_CREDITS}"));
        }
        match self.refill {
            Some(Refill::Every { period, .. }) if period < MIN_REFILL_PERIOD => Err(format!(
                "a refill period must be at least {} s (got {period:?})",
                MIN_REFILL_PERIOD.as_secs()
            )),
            Some(Refill::Monthly { day, .. }) if !(1..=31).contains(&day) => {
                Err(format!("a monthly refill day must be 1 to 31 (got {day})"))
            }
            _ => Ok(()),
        }
    }
}

/// The outcome of [`Meter::spend`].
#[derive(Debug, PartialEq, Eq)]
pub enum Spent {
    /// Spent; `send` if this spend made the meter dirty (tell the persister).
    Yes {
        /// This spend made the meter dirty: send the token's id to the persister.
        send: bool,
    },
    /// Not enough credits; `retry_after` is the time to the next refill, if there is one.
    No {
        /// How long until the next refill.
        retry_after: Option<Duration>,
    },
}

/// What the persister took from a meter: the state to record and whether the change
/// crossed the alert threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[doc(hidden)]
pub struct Taken {
    /// `period << 40 | remaining`, flags cleared.
    pub state: u64,
    /// The change crossed the alert threshold.
    pub alert: bool,
}

/// A token's credits in memory: the spending word, and the plan it refills by.
#[doc(hidden)]
pub struct Meter {
    /// `period << 40 | ALERT << 39 | DIRTY << 38 | remaining`, the period modulo 2^24 (the module's
    /// docs).
    word: AtomicU64,
    plan: Plan,
    /// The state (flags cleared) as the files last recorded it (the persister only).
    persisted: AtomicU64,
}

/// What does not change while a meter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    refill: Option<Refill>,
    alert_below: Option<u64>,
    /// When the credits were set (Unix ms): period 0 of an [`Refill::Every`] starts here.
    anchor: u64,
}

impl Meter {
    /// A meter holding `credits` (checked) as set at `now_ms`, clean: it joins memory only
    /// once the change that sets it (an issue, `set_credits`) is written, record included.
    pub fn new(credits: Credits, now_ms: u64) -> Meter {
        let plan = Plan {
            refill: credits.refill,
            alert_below: credits.alert_below,
            anchor: now_ms,
        };
        let state = pack(plan.period(now_ms), credits.remaining);
        Meter {
            word: AtomicU64::new(state),
            plan,
            persisted: AtomicU64::new(state),
        }
    }

    /// Spends `cost` at `now_ms` if the credits (refilled first, if a refill came due)
    /// cover it; otherwise spends nothing and writes nothing.
    #[inline]
    pub fn spend(&self, cost: u64, now_ms: u64) -> Spent {
        let period = self.plan.period(now_ms) & PERIOD_MASK;
        // Relaxed throughout: a compare-exchange succeeds only against the latest value in
        // the word's modification order, so spends, refills and the persister's take form
        // one chain. The id sent after a spend that set DIRTY, and the persister's
        // `fetch_and`, are what order the word with the write (`take`).
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            let before = self.plan.current(word, period);
            if before < cost {
                return Spent::No {
                    retry_after: self.plan.next_refill(now_ms),
                };
            }
            let after = before - cost;
            let crossed = self
                .plan
                .alert_below
                .is_some_and(|t| before >= t && after < t);
            let flags = DIRTY | (word & ALERT) | if crossed { ALERT } else { 0 };
            let next = pack(period, after) | flags;
            if next == word {
                return Spent::Yes { send: false };
            }
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Spent::Yes {
                        send: word & DIRTY == 0,
                    }
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// A deliberately broken twin of [`spend`](Self::spend): load, decide, store, so two
    /// threads can spend the same credit. For the loom model's broken twin only.
    #[cfg(loom)]
    pub fn spend_racy(&self, cost: u64, now_ms: u64) -> Spent {
        let period = self.plan.period(now_ms) & PERIOD_MASK;
        let word = self.word.load(Ordering::Relaxed);
        let before = self.plan.current(word, period);
        if before < cost {
            return Spent::No { retry_after: None };
        }
        self.word
            .store(pack(period, before - cost) | DIRTY, Ordering::Relaxed);
        Spent::Yes {
            send: word & DIRTY == 0,
        }
    }

    /// A meter for the replacement `rotate` issues: the same plan (refill periods counted
    /// from the same start), and the credits this one holds now (a refill that came due
    /// counted). The two spend apart from then on.
    pub(crate) fn successor(&self, now_ms: u64) -> Meter {
        let period = self.plan.period(now_ms) & PERIOD_MASK;
        let remaining = self.plan.current(self.word.load(Ordering::Relaxed), period);
        let state = pack(period, remaining);
        Meter {
            word: AtomicU64::new(state),
            plan: self.plan,
            persisted: AtomicU64::new(state),
        }
    }

    /// A deliberately broken twin of [`take_state`](Self::take_state): load, then store
    /// the word without its flags, so a spend in between is undone. For the loom model's
    /// broken twin only.
    #[cfg(loom)]
    pub fn take_state_racy(&self) -> Taken {
        let word = self.word.load(Ordering::Acquire);
        self.word.store(word & !(DIRTY | ALERT), Ordering::Release);
        Taken {
            state: word & !(DIRTY | ALERT),
            alert: word & ALERT != 0,
        }
    }

    /// Whether a spend is not yet taken (loom models only).
    #[cfg(loom)]
    pub fn is_dirty(&self) -> bool {
        self.word.load(Ordering::Acquire) & DIRTY != 0
    }

    /// The credits at `now_ms` (a refill due counts as done), with the plan.
    pub fn credits(&self, now_ms: u64) -> Credits {
        let period = self.plan.period(now_ms) & PERIOD_MASK;
        Credits {
            remaining: self.plan.current(self.word.load(Ordering::Relaxed), period),
            refill: self.plan.refill,
            alert_below: self.plan.alert_below,
        }
    }

    /// Clears the flags and returns the state they covered and whether the alert was due
    /// (the persister only).
    pub fn take_state(&self) -> Taken {
        // Acquire: a spend's compare-exchange is in this word's modification order before
        // or after this; what this returns is exactly the state the chain reached.
        let word = self.word.fetch_and(!(DIRTY | ALERT), Ordering::Acquire);
        Taken {
            state: word & !(DIRTY | ALERT),
            alert: word & ALERT != 0,
        }
    }

    /// The state last recorded in the files (the persister only).
    pub fn persisted(&self) -> u64 {
        self.persisted.load(Ordering::Relaxed)
    }

    /// The state `take_state` returned is in the files now (the persister only, after a
    /// write succeeded; a failed one leaves it unrecorded, so a scan takes it again).
    pub fn mark_persisted(&self, state: u64) {
        self.persisted.store(state, Ordering::Relaxed);
    }

    /// The record of `state` (from `take`, or the word as it is).
    pub(crate) fn record(&self, id: [u8; 8], state: u64) -> CreditsRecord {
        CreditsRecord {
            id,
            remaining: state & MAX_CREDITS,
            period: (state >> PERIOD_SHIFT) & PERIOD_MASK,
            refill: self.plan.refill.map(RefillRecord::from),
            alert_below: self.plan.alert_below,
            anchor: self.plan.anchor,
        }
    }

    /// The state as it is, flags cleared (a snapshot of a view, the change feed).
    pub(crate) fn state(&self) -> u64 {
        self.word.load(Ordering::Relaxed) & !(DIRTY | ALERT)
    }

    /// The meter a record describes, recorded as it is (checked as `NewToken` checks
    /// credits).
    pub(crate) fn from_record(record: &CreditsRecord) -> Result<Meter, String> {
        let refill = record.refill.map(Refill::from);
        let credits = Credits {
            remaining: record.remaining,
            refill,
            alert_below: record.alert_below,
        };
        credits.check()?;
        if record.period > PERIOD_MASK {
            return Err(format!(
                "refill period number {} is out of range",
                record.period
            ));
        }
        let plan = Plan {
            refill,
            alert_below: record.alert_below,
            anchor: record.anchor,
        };
        let state = pack(record.period, record.remaining);
        Ok(Meter {
            word: AtomicU64::new(state),
            plan,
            persisted: AtomicU64::new(state),
        })
    }
}

impl Plan {
    /// The refill period `now_ms` falls in (0 without refill), not yet reduced modulo 2^24.
    fn period(&self, now_ms: u64) -> u64 {
        match self.refill {
            None => 0,
            Some(Refill::Every { period, .. }) => {
                let period = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
                now_ms.saturating_sub(self.anchor) / period
            }
            Some(Refill::Monthly { day, .. }) => {
                let (year, month) = month_of(now_ms, day);
                u64::try_from(i64::from(year) * 12 + i64::from(month) - 1).unwrap_or(0)
            }
        }
    }

    /// The credits `word` holds in period `period`: a full refill if it is from another.
    fn current(&self, word: u64, period: u64) -> u64 {
        match self.refill {
            Some(refill) if (word >> PERIOD_SHIFT) & PERIOD_MASK != period => refill.amount(),
            _ => word & MAX_CREDITS,
        }
    }

    /// How long from `now_ms` until the next refill, if there is one.
    fn next_refill(&self, now_ms: u64) -> Option<Duration> {
        let at = match self.refill? {
            Refill::Every { period, .. } => {
                let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
                let next = self.period(now_ms).saturating_add(1);
                self.anchor.saturating_add(next.saturating_mul(ms))
            }
            Refill::Monthly { day, .. } => {
                let (year, month) = month_of(now_ms, day);
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                refill_day(year, month, day)
            }
        };
        Some(Duration::from_millis(at.saturating_sub(now_ms).max(1)))
    }
}

/// The (year, month) of the monthly period `now_ms` falls in: the month whose refill day
/// (clamped to its length) is the last one at or before `now_ms`.
fn month_of(now_ms: u64, day: u8) -> (i32, u32) {
    let now = DateTime::<Utc>::from_timestamp_millis(i64::try_from(now_ms).unwrap_or(i64::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let (year, month) = (now.year(), now.month());
    if now_ms >= refill_day(year, month, day) {
        (year, month)
    } else if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

/// 00:00 UTC of `day` (clamped to the month's last day) of `month` in `year`, Unix ms.
fn refill_day(year: i32, month: u32, day: u8) -> u64 {
    let last = (28..=31)
        .rev()
        .find(|&d| NaiveDate::from_ymd_opt(year, month, d).is_some())
        .unwrap_or(28);
    let date = NaiveDate::from_ymd_opt(year, month, u32::from(day).min(last))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| Utc.from_utc_datetime(&d).timestamp_millis());
    date.and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0)
}

/// A state word (no flags).
fn pack(period: u64, remaining: u64) -> u64 {
    (period & PERIOD_MASK) << PERIOD_SHIFT | remaining.min(MAX_CREDITS)
}

/// A token's credits as stored: the plan, and the spending word's state when written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CreditsRecord {
    pub(crate) id: [u8; 8],
    pub(crate) remaining: u64,
    /// The refill period the remaining credits belong to (modulo 2^24).
    pub(crate) period: u64,
    pub(crate) refill: Option<RefillRecord>,
    pub(crate) alert_below: Option<u64>,
    /// When the credits were set, Unix ms.
    pub(crate) anchor: u64,
}

impl CreditsRecord {
    /// The state word this record holds (no flags).
    pub(crate) fn state(&self) -> u64 {
        pack(self.period, self.remaining)
    }
}

/// A [`Refill`] as stored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum RefillRecord {
    Every { period_ms: u64, amount: u64 },
    Monthly { day: u8, amount: u64 },
}

impl From<Refill> for RefillRecord {
    fn from(refill: Refill) -> RefillRecord {
        match refill {
            Refill::Every { period, amount } => RefillRecord::Every {
                period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
                amount,
            },
            Refill::Monthly { day, amount } => RefillRecord::Monthly { day, amount },
        }
    }
}

impl From<RefillRecord> for Refill {
    fn from(record: RefillRecord) -> Refill {
        match record {
            RefillRecord::Every { period_ms, amount } => Refill::Every {
                period: Duration::from_millis(period_ms),
                amount,
            },
            RefillRecord::Monthly { day, amount } => Refill::Monthly { day, amount },
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;
    const SPENT: Spent = Spent::Yes { send: false };

    #[test]
    fn spends_down_to_zero_and_refuses_without_a_refill() {
        let meter = Meter::new(Credits::new(3), 0);
        assert_eq!(
            meter.spend(2, 5),
            Spent::Yes { send: true },
            "the first makes it dirty"
        );
        assert_eq!(meter.spend(2, 6), Spent::No { retry_after: None });
        assert_eq!(meter.spend(1, 7), SPENT, "already dirty");
        assert_eq!(meter.spend(1, 8), Spent::No { retry_after: None });
        assert_eq!(meter.spend(0, 8), SPENT, "a free call");
        assert_eq!(meter.credits(9).remaining(), 0);
    }

    #[test]
    fn a_refill_restores_the_amount_once_per_period_and_says_when_it_comes() {
        let credits = Credits::new(1).refill(Refill::every(Duration::from_secs(600), 5));
        let meter = Meter::new(credits, 1_000);
        assert_eq!(meter.spend(1, 1_000), Spent::Yes { send: true });
        assert_eq!(
            meter.spend(1, 1_000 + MINUTE),
            Spent::No {
                retry_after: Some(Duration::from_millis(9 * MINUTE))
            }
        );
        // The next period: back to 5, unused credits not carried over.
        for n in 0..5 {
            assert_eq!(meter.spend(1, 1_000 + 10 * MINUTE + n), SPENT);
        }
        assert!(matches!(
            meter.spend(1, 1_000 + 19 * MINUTE),
            Spent::No { .. }
        ));
        assert_eq!(meter.credits(1_000 + 20 * MINUTE).remaining(), 5);
    }

    #[test]
    fn monthly_refills_on_the_day_clamped_to_short_months() {
        let ms = refill_day;
        let plan = Plan {
            refill: Some(Refill::monthly(31, 10)),
            alert_below: None,
            anchor: 0,
        };
        // February 2027 has 28 days: its refill is on the 28th.
        assert_eq!(ms(2027, 2, 31), ms(2027, 2, 28));
        let feb = plan.period(ms(2027, 2, 28));
        assert_eq!(plan.period(ms(2027, 2, 28) - 1), feb - 1);
        assert_eq!(
            plan.period(ms(2027, 3, 30)),
            feb,
            "March's comes on the 31st"
        );
        assert_eq!(plan.period(ms(2027, 3, 31)), feb + 1);
        assert_eq!(
            plan.next_refill(ms(2027, 3, 30)),
            Some(Duration::from_millis(ms(2027, 3, 31) - ms(2027, 3, 30)))
        );
    }

    #[test]
    fn take_returns_each_change_once_and_the_alert_once_per_crossing() {
        let credits = Credits::new(3)
            .refill(Refill::every(Duration::from_secs(60), 3))
            .alert_below(2);
        let meter = Meter::new(credits, 0);
        let take = || Some(meter.take_state()).filter(|t| t.state != meter.persisted() || t.alert);
        assert_eq!(take(), None, "clean as set");
        meter.spend(1, 0); // 3 -> 2
        let first = take().expect("spent");
        assert_eq!((first.state & MAX_CREDITS, first.alert), (2, false));
        meter.mark_persisted(first.state);
        assert_eq!(take(), None, "nothing new");
        assert_eq!(meter.spend(1, 0), Spent::Yes { send: true }); // 2 -> 1: crosses
        meter.spend(1, 0); // 1 -> 0
        let second = take().unwrap();
        assert_eq!((second.state & MAX_CREDITS, second.alert), (0, true));
        meter.mark_persisted(second.state);
        assert_eq!(take(), None, "the alert is taken once");
        assert_eq!(meter.spend(2, MINUTE), Spent::Yes { send: true }); // refill 3 -> 1
        assert!(take().unwrap().alert, "a refill arms it again");
    }

    #[test]
    fn a_record_round_trips_and_is_recorded_already() {
        let credits = Credits::new(7)
            .refill(Refill::monthly(15, 9))
            .alert_below(2);
        let meter = Meter::new(credits, 1_700_000_000_000);
        meter.spend(3, 1_700_000_000_001);
        let taken = meter.take_state();
        let record = meter.record(*b"abcd1234", taken.state);
        let back = Meter::from_record(&record).unwrap();
        assert_eq!(
            back.take_state().state,
            back.persisted(),
            "loaded as recorded"
        );
        assert_eq!(
            back.credits(1_700_000_000_002),
            meter.credits(1_700_000_000_002)
        );
        assert_eq!(back.record(record.id, back.state()), record);
    }

    #[test]
    fn bad_credits_are_refused() {
        assert!(Credits::new(MAX_CREDITS + 1).check().is_err());
        assert!(Credits::new(1)
            .refill(Refill::every(Duration::from_secs(59), 1))
            .check()
            .is_err());
        assert!(Credits::new(1)
            .refill(Refill::monthly(0, 1))
            .check()
            .is_err());
        assert!(Credits::new(1)
            .refill(Refill::monthly(32, 1))
            .check()
            .is_err());
        assert!(Credits::new(1)
            .refill(Refill::monthly(31, MAX_CREDITS + 1))
            .check()
            .is_err());
    }
}
