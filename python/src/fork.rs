//! Fork detection: a child process of `os.fork()` inherits the store's memory but not its
//! persister thread, so every store call there must be refused rather than hang waiting
//! for a thread that does not exist.
//!
//! A `pthread_atfork` child handler bumps a generation counter; each store remembers the
//! generation it was opened in and compares on every call (one relaxed load: cheaper than
//! `getpid`, which glibc no longer caches).
//!
//! A file store's lock is an `flock` on a descriptor the child inherits, which would keep
//! the store locked for as long as the child lives, even after the parent closes it. So
//! the package's `os.register_at_fork(after_in_child=...)` hook calls
//! [`release_inherited_locks`], which closes the child's copies of the lock files'
//! descriptors (the parent's lock stands: its own descriptor still holds it).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use pyo3::prelude::*;

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

/// The lock files of the file stores this process opened (canonical paths).
static LOCKS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Records the lock file of the file store at `store` (just opened), for
/// [`release_inherited_locks`].
pub(crate) fn opened(store: &std::path::Path) {
    let mut lock = store.as_os_str().to_owned();
    lock.push(".lock");
    if let Ok(lock) = std::fs::canonicalize(PathBuf::from(lock)) {
        let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
        if !locks.contains(&lock) {
            locks.push(lock);
        }
    }
}

/// In a forked child (the package's `after_in_child` hook): closes every descriptor that
/// refers to the lock file of a store opened before the fork, so that the child does not
/// keep the parent's store locked. The child's copies of those stores are refused
/// (`ForkedError`) and leaked, never closed, so nothing else uses or closes these
/// descriptors. Returns how many it closed.
#[pyfunction]
pub(crate) fn _release_inherited_locks() -> usize {
    let locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if locks.is_empty() {
        return 0;
    }
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut doomed = Vec::new();
    for fd in fds.flatten() {
        let Some(n) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(fd.path()).is_ok_and(|target| locks.contains(&target)) {
            doomed.push(n);
        }
    }
    for &fd in &doomed {
        // SAFETY: `fd` is a lock file's descriptor inherited from the parent; the only
        // owner of it in this process is a store leaked by the fork guard, which never
        // reads, writes or closes it again.
        unsafe { libc::close(fd) };
    }
    doomed.len()
}
