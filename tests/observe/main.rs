//! The store's metrics and traces (docs/OBSERVABILITY.md), read the way an application
//! reads them: through a recorder and a subscriber installed for the whole process.
//!
//! A `metrics` recorder and a `tracing` subscriber are global (the persister and listener
//! threads publish to them, not to a test thread's), so these tests have a binary of their
//! own, where no other test's store publishes, and take turns ([`one_at_a_time`]): what
//! moved during a test, the test did.
//!
//! - `metrics`: each name moves as the store works; the hot path never calls the facade;
//! - `traces`: a write and a compaction each leave their span, a validation none;
//! - `replica`: a PostgreSQL replica's lag, reconnections, catch-up and reconnect spans.

#[cfg(feature = "metrics")]
mod metrics;
#[cfg(all(feature = "metrics", feature = "postgres"))]
mod replica;
mod traces;

#[allow(dead_code)]
#[cfg(feature = "postgres")]
#[path = "../it/common/pg.rs"]
mod pg;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokencache::{Builder, ManualClock, TokenStore};

/// Held by each test for its whole run: they read process-wide state. (A failed test
/// poisons the lock; the next one goes on.)
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A temp directory and a store path in it.
pub struct Scratch {
    _dir: tempfile::TempDir,
    /// `tokens.snap` in the directory.
    pub path: PathBuf,
}

/// A new temp directory (removed on drop) and a store path in it.
pub fn scratch() -> Scratch {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("tokens.snap");
    Scratch { _dir: dir, path }
}

/// A store builder on a manual clock (no timer of its own moves time) with a 60 s interval.
pub fn manual_builder(path: &std::path::Path) -> (Builder, ManualClock) {
    let clock = ManualClock::default();
    let builder = TokenStore::builder(path)
        .clock(clock.clone())
        .flush_interval(Duration::from_secs(60));
    (builder, clock)
}
