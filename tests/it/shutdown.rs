//! Closing and dying: a persister that panics fails every caller, queued or later, and
//! `close`; concurrent closes all report the one flush that ran. Nothing is left blocked.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::{faulty_store, scratch};
use tokencache::__fault::FaultStep;
use tokencache::{Clock, Error, ManualClock, NewToken, TokenStore};

/// A clock that panics when read on a store's persister thread once armed, as a buggy
/// user clock (or a tracing layer that panics) would.
#[derive(Debug, Clone, Default)]
struct PanickyClock {
    armed: Arc<AtomicBool>,
}

impl Clock for PanickyClock {
    fn now_ms(&self) -> u64 {
        let on_persister = std::thread::current().name() == Some("tokencache-persister");
        if on_persister && self.armed.load(Ordering::SeqCst) {
            panic!("PanickyClock: the clock failed on the persister thread");
        }
        ManualClock::DEFAULT_START_MS
    }
}

/// Runs `work` on another thread and fails the test (instead of hanging it) if it does not
/// return within 30 s.
fn within_deadline<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a caller was left blocked")
}

fn is_died(result: &Result<(), Error>) -> bool {
    matches!(result, Err(Error::PersisterDied { .. }))
}

#[test]
fn a_dead_persister_fails_every_caller_and_close_and_blocks_none() {
    let s = scratch();
    let clock = PanickyClock::default();
    let store = TokenStore::builder(&s.path)
        .clock(clock.clone())
        .channel_capacity(2)
        .open()
        .unwrap();
    let kept = store.issue(NewToken::new("before")).unwrap();
    let kept_id = kept.id();
    clock.armed.store(true, Ordering::SeqCst);

    // Sixteen callers at once on a channel of two: some are answered in the batch that
    // panics, some wait in the queue or in `send`, some come after.
    let callers = 16;
    let start = Arc::new(Barrier::new(callers));
    let outcomes = within_deadline({
        let store = store.clone();
        move || {
            let threads: Vec<_> = (0..callers)
                .map(|n| {
                    let (store, start) = (store.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        match n % 3 {
                            0 => store.issue(NewToken::new("during")).map(drop),
                            1 => store.flush(),
                            _ => store.revoke(&kept_id),
                        }
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        }
    });
    for outcome in &outcomes {
        assert!(is_died(outcome), "{outcome:?}");
    }
    let later = within_deadline({
        let store = store.clone();
        move || store.issue(NewToken::new("after")).map(drop)
    });
    assert!(is_died(&later), "{later:?}");
    // Validation needs no persister: it keeps working from memory.
    assert!(store.validate(kept.secret()).is_ok());
    let closed = within_deadline(move || store.close());
    assert!(is_died(&closed), "{closed:?}");
}

#[test]
fn concurrent_closes_all_report_the_one_flush_that_ran() {
    for _ in 0..20 {
        let s = scratch();
        let (store, _clock, plan) = faulty_store(&s.path);
        let token = store.issue(NewToken::new("used")).unwrap();
        store.validate(token.secret()).unwrap();
        // The closing flush will fail: every close must say so, none may report success.
        plan.fail(FaultStep::Write, 28);
        let start = Arc::new(Barrier::new(3));
        let closers: Vec<_> = (0..3)
            .map(|_| {
                let (store, start) = (store.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    store.close()
                })
            })
            .collect();
        drop(store);
        for closer in closers {
            let outcome = closer.join().unwrap();
            assert!(matches!(outcome, Err(Error::Io { .. })), "{outcome:?}");
        }
    }
}
