//! The design card's literal design, the `dashmap` row of `stress --compare`: tokens in a
//! `DashMap<TokenId, Arc<Entry>>` read with `get` and the `Arc` cloned out, `last_used` an
//! atomic moved with `fetch_max`, and dirty ids sent over a bounded crossbeam channel to a
//! persister thread that saves the whole map once per flush interval.
//!
//! It is tokencache's protocol with the card's read: parse, hash, look up, compare, touch,
//! send once per dirtying. Only the lookup differs: `get` writes its shard's lock word and
//! the clone writes the entry's reference count, so a hot token's two cache lines move
//! between cores on every validation ("One hot token" in docs/BENCHMARKS.md). The file is
//! the baselines' whole-map save, checked the same way at [`Card::close`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tokencache::TokenId;

use super::baselines::{load, save, Closed, Digest, Record};

/// Dirty ids the channel holds before a validation gives up sending (tokencache's default).
const CHANNEL_CAPACITY: usize = 4096;

/// One token, as the card has it.
struct Entry {
    digest: Digest,
    name: String,
    revoked: bool,
    /// Last accepted validation, Unix ms (0: never).
    last_used: AtomicU64,
    /// Set by the validation that makes the entry differ from the file; that one sends the id.
    dirty: AtomicBool,
}

impl Entry {
    /// Records a use; `true` if this call dirtied the entry (and so must send its id).
    fn touch(&self, now_ms: u64) -> bool {
        // Relaxed: a hint only; `fetch_max` below decides.
        if self.last_used.load(Ordering::Relaxed) >= now_ms {
            return false;
        }
        // Relaxed: published to the persister by the Release half of the swap below.
        self.last_used.fetch_max(now_ms, Ordering::Relaxed);
        // AcqRel: pairs with the persister's `swap(false)` in `take_for_save`; both are
        // read-modify-writes of one atomic, so either that swap reads this `true` (and sees
        // our `last_used`) or this one reads its `false` and we send again.
        !self.dirty.swap(true, Ordering::AcqRel)
    }

    /// Clears the dirty flag, then reads what the file must hold.
    fn take_for_save(&self) -> Record {
        // AcqRel: pairs with the swap in `touch` (see there).
        self.dirty.swap(false, Ordering::AcqRel);
        self.record()
    }

    fn record(&self) -> Record {
        Record {
            name: self.name.clone(),
            // Acquire: sees every `last_used` published by a `dirty` swap already read.
            last_used: self.last_used.load(Ordering::Acquire),
            revoked: self.revoked,
        }
    }
}

struct Shared {
    map: DashMap<TokenId, Arc<Entry>>,
    path: PathBuf,
    /// A validation found the channel full: the next save is due even without ids.
    overflow: AtomicBool,
}

impl Shared {
    fn image(&self, take: fn(&Entry) -> Record) -> HashMap<Digest, Record> {
        self.map
            .iter()
            .map(|item| (item.value().digest, take(item.value())))
            .collect()
    }
}

/// The card's store over a file.
pub struct Card {
    shared: Arc<Shared>,
    dirty: Sender<TokenId>,
    persister: JoinHandle<Saves>,
}

#[derive(Default)]
struct Saves {
    count: u64,
    bytes: u64,
}

impl Card {
    /// A store holding `tokens` (each a full token and its record), saved to `path` now and
    /// then every `interval` while validations dirty it.
    pub fn new<'a>(
        path: &Path,
        tokens: impl IntoIterator<Item = (&'a str, Record)>,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let map = DashMap::new();
        for (token, record) in tokens {
            let id = tokencache::__fuzz::parse_token(token)
                .ok_or_else(|| std::io::Error::other("an issued token does not parse"))?;
            let entry = Entry {
                digest: Sha256::digest(token.as_bytes()).into(),
                name: record.name,
                revoked: record.revoked,
                last_used: AtomicU64::new(record.last_used),
                dirty: AtomicBool::new(false),
            };
            map.insert(id, Arc::new(entry));
        }
        let shared = Arc::new(Shared {
            map,
            path: path.to_path_buf(),
            overflow: AtomicBool::new(false),
        });
        save(path, &shared.image(Entry::record))?;
        let (dirty, ids) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
        let persister = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || persist(&shared, &ids, interval))
        };
        Ok(Card {
            shared,
            dirty,
            persister,
        })
    }

    /// Validates `token`; `true` if accepted.
    pub fn validate(&self, token: &str, now_ms: u64) -> bool {
        // The first step of `TokenStore::validate`: shape and checksum, no allocation.
        let Some(id) = tokencache::__fuzz::parse_token(token) else {
            return false;
        };
        let digest: Digest = Sha256::digest(token.as_bytes()).into();
        let Some(entry) = self.shared.map.get(&id).map(|e| Arc::clone(e.value())) else {
            return false;
        };
        if !bool::from(entry.digest.ct_eq(&digest)) || entry.revoked {
            return false;
        }
        if entry.touch(now_ms) && self.dirty.try_send(id).is_err() {
            // Relaxed: a hint; the entry's own flag carries the ordering.
            self.shared.overflow.store(true, Ordering::Relaxed);
        }
        true
    }

    /// Stops the persister (it saves what is pending first) and checks that the file
    /// matches memory.
    pub fn close(self) -> Closed {
        let Card {
            shared,
            dirty,
            persister,
        } = self;
        drop(dirty);
        let saves = persister.join().unwrap_or_default();
        let verified =
            load(&shared.path).is_ok_and(|on_disk| on_disk == shared.image(Entry::record));
        Closed {
            writes: saves.count,
            bytes: saves.bytes,
            verified,
        }
    }
}

/// The persister: collects dirty ids and saves the whole map at each interval's end if any
/// came (or the channel overflowed); saves what is pending when the channel closes.
fn persist(shared: &Shared, ids: &Receiver<TokenId>, interval: Duration) -> Saves {
    let mut saves = Saves::default();
    let mut pending = false;
    let mut due = Instant::now() + interval;
    loop {
        let closed = match ids.recv_deadline(due) {
            Ok(_) => {
                pending = true;
                if Instant::now() < due {
                    continue;
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // Relaxed: a hint (see `Card::validate`).
        pending |= shared.overflow.swap(false, Ordering::Relaxed);
        if pending {
            // A failed save counts as nothing written; `close`'s check then fails.
            if let Ok(bytes) = save(&shared.path, &shared.image(Entry::take_for_save)) {
                saves.count += 1;
                saves.bytes += bytes;
            }
            pending = false;
        }
        if closed {
            return saves;
        }
        due = Instant::now() + interval;
    }
}
