//! The designs `stress --compare` measures tokencache against, faithful to the problem
//! statement the crate grew from (a Python service that saved its whole token file on
//! every request, and the two fixes its review proposed).
//!
//! All three keep tokens in a `Mutex<HashMap>` keyed by the token's SHA-256 digest (so they
//! hash exactly as much as tokencache does) and save the whole map the way the original did:
//! serialize everything, write a temp file, fsync it, rename it over the store, fsync the
//! directory. The design card's own design, the fourth compared, is in [`super::card`]; it
//! saves with [`save`] too.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A token's SHA-256 digest: the map key.
pub type Digest = [u8; 32];

/// What a baseline keeps per token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The token's name.
    pub name: String,
    /// Last successful validation, Unix ms (0: never).
    pub last_used: u64,
    /// Whether the token was revoked.
    pub revoked: bool,
}

/// Which baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every validation rewrites the whole file, under the lock (the original service).
    Naive,
    /// `last_used` updated under the lock; a save at most every 60 s, also under the lock
    /// (the review's Option 1).
    LockedDebounce,
    /// A mutex-protected dirty set and a background thread that saves every 10 s (the
    /// review's Option 2).
    BackgroundSaver,
}

impl Kind {
    /// The design's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Naive => "naive",
            Kind::LockedDebounce => "locked-debounce",
            Kind::BackgroundSaver => "background-saver",
        }
    }
}

/// The debounce interval of Option 1 (the statement's `_save_interval = 60.0`).
const DEBOUNCE: Duration = Duration::from_secs(60);
/// The background saver's period (the statement's `time.sleep(10)`).
const SAVER_PERIOD: Duration = Duration::from_secs(10);

struct State {
    tokens: HashMap<Digest, Record>,
    last_save: Instant,
    /// Option 1's `_dirty` flag.
    dirty: bool,
}

struct Inner {
    kind: Kind,
    path: PathBuf,
    state: Mutex<State>,
    /// Option 2's dirty set: digests validated since the last save.
    dirty_set: Mutex<HashSet<Digest>>,
    saves: Mutex<Saves>,
    stop: AtomicBool,
    wake: Condvar,
}

#[derive(Default, Clone, Copy)]
struct Saves {
    count: u64,
    bytes: u64,
}

/// One baseline store over a file.
pub struct Baseline {
    inner: Arc<Inner>,
    saver: Option<JoinHandle<()>>,
}

/// What a baseline did, read at [`Baseline::close`].
#[derive(Debug, Clone, Copy)]
pub struct Closed {
    /// Writes to disk (the final one included): whole-file saves for the baselines; journal
    /// records and snapshots for tokencache.
    pub writes: u64,
    /// Bytes written by them.
    pub bytes: u64,
    /// Whether the file on disk decodes to exactly the map in memory.
    pub verified: bool,
}

impl Baseline {
    /// A baseline of `kind` holding `tokens`, saved to `path` (written once now).
    pub fn new(kind: Kind, path: &Path, tokens: HashMap<Digest, Record>) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            kind,
            path: path.to_path_buf(),
            state: Mutex::new(State {
                tokens,
                last_save: Instant::now(),
                dirty: false,
            }),
            dirty_set: Mutex::new(HashSet::new()),
            saves: Mutex::new(Saves::default()),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
        });
        save(path, &lock(&inner.state).tokens)?;
        let saver = (kind == Kind::BackgroundSaver).then(|| {
            let inner = Arc::clone(&inner);
            std::thread::spawn(move || background_saver(&inner))
        });
        Ok(Baseline { inner, saver })
    }

    /// Validates `token` as the design does; `true` if accepted.
    pub fn validate(&self, token: &str, now_ms: u64) -> bool {
        let digest: Digest = Sha256::digest(token.as_bytes()).into();
        let inner = &*self.inner;
        let mut state = lock(&inner.state);
        let Some(record) = state.tokens.get_mut(&digest) else {
            return false;
        };
        if record.revoked {
            return false;
        }
        record.last_used = now_ms;
        match inner.kind {
            Kind::Naive => inner.save_counted(&state.tokens),
            Kind::LockedDebounce => {
                state.dirty = true;
                if state.last_save.elapsed() >= DEBOUNCE {
                    inner.save_counted(&state.tokens);
                    state.dirty = false;
                    state.last_save = Instant::now();
                }
            }
            Kind::BackgroundSaver => {
                drop(state);
                lock(&inner.dirty_set).insert(digest);
            }
        }
        true
    }

    /// Stops the design, writes what is pending (the statement's shutdown hook), and checks
    /// that the file matches memory.
    pub fn close(mut self) -> Closed {
        let inner = &*self.inner;
        inner.stop.store(true, Ordering::Release);
        inner.wake.notify_all();
        if let Some(saver) = self.saver.take() {
            let _ = saver.join();
        }
        let state = lock(&inner.state);
        let pending = match inner.kind {
            Kind::Naive => false,
            Kind::LockedDebounce => state.dirty,
            Kind::BackgroundSaver => !lock(&inner.dirty_set).is_empty(),
        };
        if pending {
            inner.save_counted(&state.tokens);
        }
        let verified = load(&inner.path).is_ok_and(|on_disk| on_disk == state.tokens);
        let saves = *lock(&inner.saves);
        Closed {
            writes: saves.count,
            bytes: saves.bytes,
            verified,
        }
    }
}

impl Inner {
    /// Saves and counts; a failed save is counted as nothing written (the run's check
    /// then fails, which the table shows).
    fn save_counted(&self, tokens: &HashMap<Digest, Record>) {
        if let Ok(bytes) = save(&self.path, tokens) {
            let mut saves = lock(&self.saves);
            saves.count += 1;
            saves.bytes += bytes;
        }
    }
}

/// Option 2's thread: every period, if anything is dirty, save the whole map under the lock.
fn background_saver(inner: &Inner) {
    let mut guard = lock(&inner.dirty_set);
    while !inner.stop.load(Ordering::Acquire) {
        guard = match inner.wake.wait_timeout(guard, SAVER_PERIOD) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
        if inner.stop.load(Ordering::Acquire) || guard.is_empty() {
            continue;
        }
        guard.clear();
        drop(guard);
        let state = lock(&inner.state);
        inner.save_counted(&state.tokens);
        drop(state);
        guard = lock(&inner.dirty_set);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const BINCODE: bincode::config::Configuration = bincode::config::standard();

/// The original service's save: serialize everything, temp file, fsync, rename, fsync dir.
pub(super) fn save(path: &Path, tokens: &HashMap<Digest, Record>) -> std::io::Result<u64> {
    let image = bincode::serde::encode_to_vec(tokens, BINCODE).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(&image)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()?;
    Ok(image.len() as u64)
}

pub(super) fn load(path: &Path) -> std::io::Result<HashMap<Digest, Record>> {
    let bytes = std::fs::read(path)?;
    let (tokens, _) =
        bincode::serde::decode_from_slice(&bytes, BINCODE).map_err(std::io::Error::other)?;
    Ok(tokens)
}
