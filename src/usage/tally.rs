//! The two places an accepted validation is counted before the persister takes it: the
//! validating thread's own [`Tally`], and, when the tally's slot is busy with another token,
//! the token's shared [`Uses`] word.
//!
//! A tally slot is written by one thread only (its owner) and taken from by one thread at
//! a time (the sweeper, under the book's lock), so a count is a plain load and a Release
//! store: no read-modify-write, and no cache line another core writes. That is what keeps
//! one hot token validated from every core scaling.
//!
//! The slot protocol (`docs/DESIGN.md`, "Usage counts"):
//!
//! - `count` only grows; `taken` is how much of it the sweeper has taken. Only the owner
//!   writes `key`, `day` and `count`; only the sweeper writes `taken`.
//! - The owner counts on the slot's key and day with a Release store of `count + 1`.
//! - The owner gives the slot to another key or day only when `taken == count` (Acquire):
//!   every count of the old key has been taken, so the sweeper never reads a new key for
//!   old counts.
//! - The sweeper reads `count` (Acquire: the key and day written before it come with it),
//!   then the key and day, then stores `taken = count` (Release: its reads of the key and
//!   day come before any later claim of the slot).

use crate::sync::{AtomicU64, Ordering};

/// Slots per thread (a power of two): a thread validating more distinct tokens than about
/// this between two sweeps counts the rest on their shared words. 2,048 slots of 32 bytes
/// are 64 KiB per validating thread: enough for `validate/hit`'s 1,024 tokens to count
/// with no read-modify-write (docs/BENCHMARKS.md, "Usage counts").
#[cfg(not(loom))]
const SLOTS: usize = 2048;
#[cfg(loom)]
const SLOTS: usize = 2;
/// Slots a token may take, from its own on: a few tokens never find them all busy.
#[cfg(not(loom))]
const PROBES: usize = 4;
#[cfg(loom)]
const PROBES: usize = 2;

/// One thread's counts of accepted validations, by token, not yet taken.
pub struct Tally {
    /// On the heap, made directly there (64 KiB is too much for some threads' stacks).
    slots: Box<[Slot]>,
}

/// Counts of one token on one day in a [`Tally`].
#[derive(Default)]
struct Slot {
    /// The token id's bytes as a word (0: never used; ids are ASCII, never 0).
    key: AtomicU64,
    /// The UTC day (days since 1970) the untaken counts belong to.
    day: AtomicU64,
    /// Every count this slot ever held, for any key.
    count: AtomicU64,
    /// How much of `count` the sweeper has taken.
    taken: AtomicU64,
}

/// Counts the sweeper took from one slot: `n` validations of token `key` on `day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The token id's bytes as a word.
    pub key: u64,
    /// The UTC day, days since 1970.
    pub day: u64,
    /// How many validations.
    pub n: u64,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
        }
    }
}

impl Tally {
    /// Counts one validation of `key` on `day`, if this thread's slot for `key` is free or
    /// already holds it; `false` if the slot still holds another key's untaken counts (the
    /// caller counts on the token's [`Uses`] word instead). Only the thread that owns the
    /// tally may call it.
    #[inline]
    pub fn count(&self, key: u64, day: u64) -> bool {
        let first = index(key);
        for slot in self.probe(first) {
            // Relaxed: this thread is the only writer of key, day and count.
            if slot.key.load(Ordering::Relaxed) == key && slot.day.load(Ordering::Relaxed) == day {
                let count = slot.count.load(Ordering::Relaxed);
                // Release: the sweeper's Acquire load of `count` finds the key and day.
                slot.count.store(count + 1, Ordering::Release);
                return true;
            }
        }
        self.claim(first, key, day)
    }

    /// The slots `key` may sit in, starting at its own.
    #[inline]
    fn probe(&self, first: usize) -> impl Iterator<Item = &Slot> {
        (0..PROBES).map(move |i| &self.slots[(first + i) & (SLOTS - 1)])
    }

    /// Gives the first slot whose counts were all taken to `key` on `day`, counting one;
    /// `false` if every slot it may take holds untaken counts.
    #[inline(never)]
    fn claim(&self, first: usize, key: u64, day: u64) -> bool {
        for slot in self.probe(first) {
            let count = slot.count.load(Ordering::Relaxed);
            // Acquire: pairs with the sweeper's Release store of `taken`, so its reads of
            // the old key and day come before the stores below. (Under loom, the broken
            // twin skips the check.)
            if slot.taken.load(Ordering::Acquire) == count || !checks_clean() {
                // Relaxed: published by the Release store of `count`.
                slot.key.store(key, Ordering::Relaxed);
                slot.day.store(day, Ordering::Relaxed);
                slot.count.store(count + 1, Ordering::Release);
                return true;
            }
        }
        false
    }

    /// Takes every untaken count, calling `f` with each. Only one thread may sweep a tally
    /// at a time (the book's lock).
    pub fn sweep(&self, f: impl FnMut(Taken)) {
        self.each_untaken(true, f);
    }

    /// The untaken counts, without taking them (the sweeper's lock held, so `taken` stands
    /// still and no slot changes key under counts the loads below find untaken).
    pub fn peek(&self, f: impl FnMut(Taken)) {
        self.each_untaken(false, f);
    }

    /// Calls `f` with each slot's untaken counts, marking them taken if `take`.
    fn each_untaken(&self, take: bool, mut f: impl FnMut(Taken)) {
        for slot in self.slots.iter() {
            // Relaxed: only the sweeper writes `taken`, and sweeps are serialized.
            let taken = slot.taken.load(Ordering::Relaxed);
            // Acquire: pairs with the owner's Release store; the key and day it wrote
            // before that count are what the loads below read.
            let count = slot.count.load(Ordering::Acquire);
            if count == taken {
                continue;
            }
            let key = slot.key.load(Ordering::Relaxed);
            let day = slot.day.load(Ordering::Relaxed);
            if take {
                // Release: pairs with the owner's Acquire in `claim`.
                slot.taken.store(count, Ordering::Release);
            }
            f(Taken {
                key,
                day,
                n: count - taken,
            });
        }
    }
}

/// The slot of `key`: ids are random, so their low bits spread well; multiplying mixes
/// in the rest.
#[inline]
fn index(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// The bits of a [`Uses`] word below the day.
const DAY_SHIFT: u32 = 40;
const COUNT_MASK: u64 = (1 << DAY_SHIFT) - 1;

/// A token's shared count: accepted validations that found their thread's slot busy,
/// `day << 40 | count`, 0 when the persister has taken them all. A count after midnight
/// that finds the word still holding the day before is counted on that day: the persister
/// takes the word within one flush interval of its first count, so this moves at most one
/// interval's validations, and only across midnight.
#[derive(Default)]
pub struct Uses(AtomicU64);

impl Uses {
    /// Counts one validation on `day`; `true` if the word was empty, so the caller tells
    /// the persister (the way a `last_used` that turned dirty does).
    #[inline]
    pub fn add(&self, day: u64) -> bool {
        // Relaxed throughout: a read-modify-write of one word carries only itself; the
        // persister's `take` reads the latest value, and the id it is sent carries the
        // ordering a flush needs.
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let next = if word == 0 {
                day << DAY_SHIFT | 1
            } else {
                word + 1
            };
            match self
                .0
                .compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return word == 0,
                Err(now) => word = now,
            }
        }
    }

    /// Takes every count: `(day, n)`, if there were any. The persister's only.
    pub fn take(&self) -> Option<(u64, u64)> {
        split(self.0.swap(0, Ordering::Relaxed))
    }

    /// The untaken counts, without taking them.
    pub fn peek(&self) -> Option<(u64, u64)> {
        split(self.0.load(Ordering::Relaxed))
    }
}

/// The broken twin of [`Uses::add`] for loom: a load, then a store (two racing counts
/// can both store the same word, and one is lost).
#[cfg(loom)]
impl Uses {
    /// [`Uses::add`] done wrong, for loom to catch.
    pub fn add_racy(&self, day: u64) -> bool {
        let word = self.0.load(Ordering::Relaxed);
        let next = if word == 0 {
            day << DAY_SHIFT | 1
        } else {
            word + 1
        };
        self.0.store(next, Ordering::Relaxed);
        word == 0
    }
}

fn split(word: u64) -> Option<(u64, u64)> {
    (word != 0).then_some((word >> DAY_SHIFT, word & COUNT_MASK))
}

/// Whether `claim` checks that a slot is clean: always, except in loom's broken twin.
#[cfg(not(loom))]
#[inline(always)]
fn checks_clean() -> bool {
    true
}

#[cfg(loom)]
fn checks_clean() -> bool {
    !crate::sync::bug::planted(crate::sync::bug::Bug::ClaimDirtySlot)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_busy_slot_refuses_another_key_until_swept() {
        let tally = Tally::default();
        let (a, day) = (u64::from_ne_bytes(*b"aaaaaaaa"), 20_000);
        // Keys for a's slot: the first `PROBES` fill the slots a may take.
        let mut same: Vec<u64> = (1..)
            .map(|n: u64| a + n)
            .filter(|&k| index(k) == index(a))
            .take(PROBES)
            .collect();
        let b = same.pop().unwrap();
        assert!(tally.count(a, day));
        assert!(tally.count(a, day));
        for &k in &same[1..] {
            assert!(tally.count(k, day));
        }
        assert!(tally.count(same[0], day), "the last free slot");
        assert!(
            !tally.count(b, day),
            "every slot b may take holds untaken counts"
        );
        let mut taken = Vec::new();
        tally.sweep(|t| taken.push(t));
        assert_eq!(
            taken.iter().map(|t| t.n).sum::<u64>(),
            2 + PROBES as u64 - 1
        );
        assert!(taken.contains(&Taken { key: a, day, n: 2 }));
        assert!(tally.count(b, day));
        let mut peeked = Vec::new();
        tally.peek(|t| peeked.push(t));
        assert_eq!(peeked, [Taken { key: b, day, n: 1 }]);
    }

    #[test]
    fn a_shared_word_counts_on_its_first_day_until_taken() {
        let uses = Uses::default();
        assert!(uses.add(7), "the first count says so");
        assert!(!uses.add(8));
        assert_eq!(uses.peek(), Some((7, 2)));
        assert_eq!(uses.take(), Some((7, 2)));
        assert_eq!(uses.take(), None);
        assert!(uses.add(8));
        assert_eq!(uses.take(), Some((8, 1)));
    }
}
