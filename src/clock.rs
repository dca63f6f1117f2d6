//! Time, injectable: every timestamp the store records and every persister deadline come
//! from a [`Clock`], so tests drive "one snapshot per 60 s" with a [`ManualClock`] in
//! microseconds of real time and exact counts.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::inbox::Timer;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering};

/// A source of wall-clock time in Unix milliseconds.
///
/// The store reads it on every validation (to stamp `last_used` and check expiry) and the
/// persister reads it to decide when a snapshot is due. Implementations must be cheap and
/// must not block.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Called once by each store that uses this clock, with a handle that wakes the store's
    /// persister. A clock that jumps (like [`ManualClock`]) keeps the handle and fires it
    /// after each jump so that a due snapshot is written at once; a real clock ignores it,
    /// since the persister also wakes on its own deadline.
    fn attach(&self, timer: Timer) {
        let _ = timer;
    }
}

/// The operating system's real-time clock (`SystemTime`), read once a millisecond. The
/// default.
///
/// `SystemTime::now` costs about 30 ns here, a fifth of a validation, and a validation
/// needs only milliseconds. So while any store using this clock is open, one background
/// thread (`tokencache-time`, one per process) stores the time in a shared word every
/// millisecond, and [`now_ms`](Clock::now_ms) is one load of it. The word lags the real
/// clock by at most the thread's sleep plus its scheduling delay: about a millisecond,
/// more on an overloaded machine. The thread ends once every store it served is closed;
/// without it `now_ms` reads `SystemTime` directly. docs/BENCHMARKS.md has the figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        // Relaxed: the word carries only itself; a reading a tick old is as good as any.
        match ticker::WALL_MS.load(Ordering::Relaxed) {
            ticker::STOPPED => wall_ms(),
            now => now,
        }
    }

    fn attach(&self, timer: Timer) {
        ticker::serve(timer);
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A Unix time in milliseconds as a date, `None` if it is out of chrono's range.
pub(crate) fn from_ms(ms: u64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// Unix milliseconds from `SystemTime`; a clock set before 1970 reads as the epoch rather
/// than panicking.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The thread behind [`SystemClock`]: it keeps [`WALL_MS`](ticker::WALL_MS) current while
/// some store it serves is open. Not part of the loom-checked protocol, so plain `std`.
mod ticker {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use super::wall_ms;
    use crate::inbox::Timer;

    /// The time, or [`STOPPED`] while no ticker runs.
    pub(super) static WALL_MS: AtomicU64 = AtomicU64::new(STOPPED);
    pub(super) const STOPPED: u64 = 0;

    /// The open stores' timers; the thread runs while this is not empty. `None` while no
    /// thread runs.
    static SERVED: Mutex<Option<Vec<Timer>>> = Mutex::new(None);

    const TICK: Duration = Duration::from_millis(1);
    /// How often (in ticks) the thread checks whether its stores are still open.
    const CHECK_EVERY: u32 = 100;

    /// Serves the store behind `timer`, starting the thread if none runs.
    pub(super) fn serve(timer: Timer) {
        let mut served = SERVED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(timers) = served.as_mut() {
            timers.push(timer);
            return;
        }
        // Relaxed: as in `now_ms`.
        WALL_MS.store(wall_ms(), Ordering::Relaxed);
        let started = std::thread::Builder::new()
            .name("tokencache-time".into())
            .spawn(run);
        match started {
            Ok(_) => *served = Some(vec![timer]),
            // No thread: `now_ms` reads the system clock itself, as it does when stopped.
            Err(e) => {
                WALL_MS.store(STOPPED, Ordering::Relaxed);
                tracing::warn!(error = %e, "could not start the clock thread; reading the system clock on every validation");
            }
        }
    }

    fn run() {
        loop {
            for _ in 0..CHECK_EVERY {
                std::thread::sleep(TICK);
                WALL_MS.store(wall_ms(), Ordering::Relaxed);
            }
            let mut served = SERVED.lock().unwrap_or_else(|e| e.into_inner());
            let timers = served.get_or_insert_with(Vec::new);
            timers.retain(Timer::is_open);
            if timers.is_empty() {
                // Under the lock, so a store attaching now starts a new thread.
                *served = None;
                WALL_MS.store(STOPPED, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// A clock that moves only when told to, for tests and simulations.
///
/// Cloning shares the same time. [`advance`](Self::advance) and [`set`](Self::set) return
/// only after every attached store's persister has handled the new time, so after
/// `clock.advance(interval)` a due snapshot is already on disk.
///
/// ```
/// use std::time::Duration;
/// use tokencache::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now_ms(), 61_000);
/// ```
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now_ms: AtomicU64,
    timers: Mutex<Vec<Timer>>,
}

impl ManualClock {
    /// 2026-01-01T00:00:00Z, a round start time for tests.
    pub const DEFAULT_START_MS: u64 = 1_767_225_600_000;

    /// A clock that reads `start_ms` until moved.
    pub fn new(start_ms: u64) -> Self {
        ManualClock {
            inner: Arc::new(ManualInner {
                now_ms: AtomicU64::new(start_ms),
                timers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Moves the clock forward by `by` and waits until attached persisters have seen it.
    pub fn advance(&self, by: Duration) {
        // Relaxed: the value is published to the persister by the tick message below.
        self.inner.now_ms.fetch_add(millis(by), Ordering::Relaxed);
        self.fire_timers();
    }

    /// Sets the clock to `now_ms` (which may go backwards) and waits like `advance`.
    pub fn set(&self, now_ms: u64) {
        self.inner.now_ms.store(now_ms, Ordering::Relaxed);
        self.fire_timers();
    }

    fn fire_timers(&self) {
        // Persisters that have shut down report `false` and are forgotten.
        let mut timers = self.inner.timers.lock().unwrap_or_else(|e| e.into_inner());
        timers.retain(Timer::fire);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new(Self::DEFAULT_START_MS)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms.load(Ordering::Relaxed)
    }

    fn attach(&self, timer: Timer) {
        let mut timers = self.inner.timers.lock().unwrap_or_else(|e| e.into_inner());
        timers.push(timer);
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms())
            .finish()
    }
}
