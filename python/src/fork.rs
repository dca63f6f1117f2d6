//! Fork detection: a child process of `os.fork()` inherits the store's memory but not its
//! persister thread, so every store call there must be refused rather than hang waiting
//! for a thread that does not exist.
//!
//! A `pthread_atfork` child handler bumps a generation counter; each store remembers the
//! generation it was opened in and compares on every call (one relaxed load: cheaper than
//! `getpid`, which glibc no longer caches).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Forks this process has been through, counted in each child.
static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn in_child() {
    // Relaxed: the child has one thread when this runs, and every later read is on a
    // thread it starts afterwards (thread creation orders the two).
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Installs the child handler, once per process.
pub(crate) fn watch() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `in_child` is async-signal-safe (one atomic add) and lives for the whole
        // program; pthread_atfork only records the pointer.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            // ENOMEM only; without the handler a child is not told, as without this crate.
            eprintln!("tokencache: pthread_atfork failed ({rc}); a forked child will not be warned off the store");
        }
    });
}

/// The current generation: what a store records when it opens.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}
