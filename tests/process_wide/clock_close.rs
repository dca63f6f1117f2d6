//! Closing a store never stalls the clock of the others: the `SystemClock` thread asks
//! whether each store it serves is still open without taking that store's locks, so a
//! close waiting behind a full channel and a slow snapshot does not freeze it. In
//! `tests/process_wide/`, taking turns: it watches the process-wide clock word.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokencache::{Clock, NewToken, SystemClock, Timer, TokenStore};

/// `SystemClock`, served by the same thread, whose persister stalls for 2 s once armed (as
/// a slow snapshot of a big store would).
#[derive(Debug, Clone)]
struct StallOnce(Arc<AtomicU32>);

impl Clock for StallOnce {
    fn now_ms(&self) -> u64 {
        let on_persister = std::thread::current().name() == Some("tokencache-persister");
        let armed = || {
            self.0
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        if on_persister && armed() {
            std::thread::sleep(Duration::from_secs(2));
        }
        SystemClock.now_ms()
    }

    fn attach(&self, timer: Timer) {
        SystemClock.attach(timer)
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_close_stuck_behind_a_full_channel_does_not_freeze_the_clock() {
    let _turn = crate::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let bystander = TokenStore::open(dir.path().join("bystander.snap")).unwrap();
    let token = bystander.issue(NewToken::new("bystander")).unwrap();
    let stall = Arc::new(AtomicU32::new(0));
    let stuck = TokenStore::builder(dir.path().join("stuck.snap"))
        .clock(StallOnce(stall.clone()))
        .channel_capacity(1)
        .open()
        .unwrap();
    stall.store(1, Ordering::SeqCst);
    let mut worst = 0;
    std::thread::scope(|scope| {
        let stuck = &stuck;
        // The persister stalls on this issue; a flush fills the channel; another blocks in
        // `send` holding the gate's read lock; the close then waits for its write lock.
        scope.spawn(move || drop(stuck.issue(NewToken::new("a"))));
        std::thread::sleep(Duration::from_millis(100));
        scope.spawn(move || drop(stuck.flush()));
        std::thread::sleep(Duration::from_millis(100));
        scope.spawn(move || drop(stuck.flush()));
        std::thread::sleep(Duration::from_millis(100));
        let closing = stuck.clone();
        scope.spawn(move || drop(closing.close()));
        let watching = Instant::now();
        while watching.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(50));
            worst = worst.max(wall_ms().saturating_sub(SystemClock.now_ms()));
        }
    });
    // Stalled, the word would lag by most of the 1.5 s watched; a loaded machine may delay
    // a tick, so the bound is generous.
    assert!(
        worst < 500,
        "the clock word lagged the system clock by {worst} ms"
    );
    assert!(bystander.validate(token.secret()).is_ok());
    drop(stuck);
    bystander.close().unwrap();
}
