//! Usage counts: accepted validations per token per UTC day, exact, without a shared
//! write per validation.
//!
//! A validation counts in its own thread's [`Tally`] (a store to a cache line no other
//! core writes), or, when its slot holds another token's untaken counts, on the token's
//! [`Uses`] word. The persister sweeps the tallies and takes the words it was told of into
//! the [`Book`] at every write-behind round and every flush barrier, under the book's
//! lock, and writes what changed as journal records next to `last_used`. Readers
//! (`usage`, `get`, `list`) take the same lock and add what is still untaken, so they see
//! every validation that returned before they were called.

mod book;
mod tally;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::NaiveDate;
use thread_local::ThreadLocal;

pub(crate) use book::{Book, UsageRecord};
pub(crate) use tally::Uses;
use tally::{Taken, Tally};

use crate::sync::{Mutex, MutexGuard};
use crate::token::TokenId;

/// Milliseconds in a UTC day.
const DAY_MS: u64 = 86_400_000;

/// How many days of counts a store keeps unless told otherwise.
pub(crate) const DEFAULT_DAYS: u32 = 30;

/// A token's accepted validations: the total since it was issued, and each of the last
/// [`usage_days`](crate::Builder::usage_days) UTC days it was used, oldest first.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use tokencache::{NewToken, TokenStore};
///
/// let store = TokenStore::open(dir.path().join("tokens.snap"))?;
/// let issued = store.issue(NewToken::new("ci-bot"))?;
/// for _ in 0..3 {
///     store.validate(issued.secret())?;
/// }
/// let usage = store.usage(&issued.id())?;
/// assert_eq!(usage.total, 3);
/// assert_eq!(usage.days.len(), 1); // all today
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Usage {
    /// Every accepted validation of the token.
    pub total: u64,
    /// Accepted validations per UTC day, oldest first; days without any are left out.
    pub days: Vec<(NaiveDate, u64)>,
}

/// Where the counts are: the tallies, the book, and how many days it keeps.
pub(crate) struct Counter {
    tallies: ThreadLocal<Tally>,
    book: Mutex<Book>,
    /// Days of counts kept; 0: the store counts nothing.
    keep: AtomicU32,
}

impl Counter {
    pub(crate) fn new() -> Counter {
        Counter {
            tallies: ThreadLocal::new(),
            book: Mutex::default(),
            keep: AtomicU32::new(if cfg!(loom) { 0 } else { DEFAULT_DAYS }),
        }
    }

    /// Keeps `days` of counts; 0 stops counting. Set while opening. (Under loom the store
    /// never counts: loom runs its threads on one of the process's, which would share one
    /// tally; `loom-tests/tests/usage.rs` checks the protocol itself.)
    pub(crate) fn keep_days(&self, days: u32) {
        let days = if cfg!(loom) { 0 } else { days };
        self.keep.store(days, Ordering::Relaxed);
    }

    /// Whether the store counts.
    pub(crate) fn is_on(&self) -> bool {
        self.keep.load(Ordering::Relaxed) != 0
    }

    /// Counts one accepted validation of token `id`, whose shared word is `uses`, at
    /// `now_ms` (the hot path: no lock, no
    /// allocation after a thread's first validation, no shared write unless the thread's
    /// slot is busy). `true` if the caller must send the token's id to the persister.
    #[inline]
    pub(crate) fn count(&self, id: &TokenId, uses: &Uses, now_ms: u64) -> bool {
        // Relaxed: set before the store is shared.
        if self.keep.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let day = now_ms / DAY_MS;
        if self.tallies.get_or_default().count(key(id), day) {
            return false;
        }
        uses.add(day)
    }

    /// The book, locked: while it is held no count moves from a tally or a word into it.
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked {
            book: self.book.lock().unwrap_or_else(|e| e.into_inner()),
            counter: self,
        }
    }
}

/// The book, locked (see [`Counter::lock`]).
pub(crate) struct Locked<'c> {
    book: MutexGuard<'c, Book>,
    counter: &'c Counter,
}

impl Locked<'_> {
    fn keep(&self) -> u32 {
        self.counter.keep.load(Ordering::Relaxed)
    }

    /// Moves every thread's untaken counts into the book.
    pub(crate) fn sweep(&mut self) {
        let keep = self.keep();
        let book = &mut *self.book;
        for tally in self.counter.tallies.iter() {
            tally.sweep(|t| {
                if let Some(id) = id_of(t.key) {
                    book.add(id, day32(t.day), t.n, keep);
                }
            });
        }
    }

    /// Moves token `id`'s shared count `uses` into the book.
    pub(crate) fn take(&mut self, id: TokenId, uses: &Uses) {
        if let Some((day, n)) = uses.take() {
            let keep = self.keep();
            self.book.add(id, day32(day), n, keep);
        }
    }

    /// Token `id`'s counts as of now (its shared word is `uses`), untaken ones included,
    /// keeping the days within
    /// the days kept up to `now_ms`.
    pub(crate) fn usage(&self, id: &TokenId, uses: &Uses, now_ms: u64) -> Usage {
        let (total, days) = self.book.get(id);
        let mut days = days.to_vec();
        let mut total = total;
        let mut add = |day: u64, n: u64| {
            total += n;
            book::merge_day(&mut days, day32(day), n, |a, b| a + b);
        };
        let key = key(id);
        for tally in self.counter.tallies.iter() {
            tally.peek(|t: Taken| {
                if t.key == key {
                    add(t.day, t.n);
                }
            });
        }
        if let Some((day, n)) = uses.peek() {
            add(day, n);
        }
        let today = day32(now_ms / DAY_MS);
        let oldest = today.saturating_sub(self.keep().saturating_sub(1));
        Usage {
            total,
            days: days
                .into_iter()
                .filter(|&(d, _)| d >= oldest)
                .filter_map(|(d, n)| Some((date_of(d)?, n)))
                .collect(),
        }
    }

    /// Every token's total for `get` and `list`: `None` if the store does not count.
    /// One pass over the tallies, then a lookup per token.
    pub(crate) fn totals(&self) -> Option<impl Fn(&TokenId, &Uses) -> u64 + '_> {
        if !self.counter.is_on() {
            return None;
        }
        let mut untaken: HashMap<u64, u64> = HashMap::new();
        for tally in self.counter.tallies.iter() {
            tally.peek(|t| *untaken.entry(t.key).or_default() += t.n);
        }
        Some(move |id: &TokenId, uses: &Uses| {
            let in_book = self.book.get(id).0;
            let shared = uses.peek().map_or(0, |(_, n)| n);
            in_book + untaken.get(&key(id)).copied().unwrap_or(0) + shared
        })
    }

    /// Whether any count is untaken in a tally, or taken but not on disk.
    pub(crate) fn pending(&self) -> bool {
        let mut untaken = false;
        for tally in self.counter.tallies.iter() {
            tally.peek(|_| untaken = true);
        }
        untaken || self.book.has_unsaved()
    }

    /// The book itself.
    pub(crate) fn book(&mut self) -> &mut Book {
        &mut self.book
    }

    /// Replays a record read back from disk (a token the store no longer holds is skipped
    /// by the caller).
    pub(crate) fn replay(&mut self, id: TokenId, record: &UsageRecord) {
        self.book.replay(id, record);
    }
}

/// A token id's bytes as the word a tally slot keys on.
#[inline]
fn key(id: &TokenId) -> u64 {
    u64::from_ne_bytes(id.to_bytes())
}

fn id_of(key: u64) -> Option<TokenId> {
    TokenId::from_bytes(key.to_ne_bytes())
}

/// A day number as files keep it (days since 1970 fit 32 bits for 11 million years).
fn day32(day: u64) -> u32 {
    u32::try_from(day).unwrap_or(u32::MAX)
}

/// The date of day number `day`.
pub(crate) fn date_of(day: u32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_days(chrono::Days::new(u64::from(day)))
}

/// Model-checking hooks: the slot protocol and the shared word, alone.
#[cfg(loom)]
pub mod model {
    pub use super::tally::{Taken, Tally, Uses};
}
