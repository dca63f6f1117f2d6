//! The book: every count the sweeper took, by token and UTC day, with what of it is not on
//! disk yet. It holds only the tokens that were used, so it grows with them, not with the
//! tokens held.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::token::TokenId;

/// A token's counts as a store file or a journal record holds them: absolute, so a record
/// replayed twice, or an older one after a newer, changes nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct UsageRecord {
    pub(crate) id: [u8; 8],
    /// Accepted validations since the token was issued (or counting began).
    pub(crate) total: u64,
    /// Validations on each day (days since 1970, UTC), oldest first: in a snapshot every
    /// day kept, in a journal record the days counted since the last.
    pub(crate) days: Vec<(u32, u64)>,
}

/// The counts the sweeper took, by token.
#[derive(Default)]
pub(crate) struct Book {
    tokens: HashMap<TokenId, Counts>,
}

/// One token's counts.
#[derive(Default)]
struct Counts {
    total: u64,
    /// Oldest first, at most the days kept: a boxed slice of exactly the days held (most
    /// tokens hold one), reallocated when a day is added, once a day at most.
    days: Box<[(u32, u64)]>,
    /// The oldest day counted since the last record was written; `None`: all on disk.
    unsaved_from: Option<u32>,
}

impl Counts {
    /// `n` more on `day`, keeping `keep` days up to the newest.
    fn add(&mut self, day: u32, n: u64, keep: u32) {
        self.total += n;
        self.unsaved_from = Some(self.unsaved_from.map_or(day, |d| d.min(day)));
        // A `Vec` from the box and back costs nothing unless a day is inserted.
        let mut days = std::mem::take(&mut self.days).into_vec();
        merge_day(&mut days, day, n, |a, b| a + b);
        // Drop the days older than the `keep` up to the newest.
        let newest = days.last().map_or(day, |&(d, _)| d);
        let oldest = newest.saturating_sub(keep.saturating_sub(1));
        days.retain(|&(d, _)| d >= oldest);
        self.days = days.into_boxed_slice();
    }

    /// Sets `day` to at least `n` (a record read back).
    fn at_least(&mut self, day: u32, n: u64) {
        let mut days = std::mem::take(&mut self.days).into_vec();
        merge_day(&mut days, day, n, u64::max);
        self.days = days.into_boxed_slice();
    }
}

/// Combines `n` into `day`'s count in `days` (oldest first) with `combine`, or inserts the
/// day in its place.
pub(crate) fn merge_day(
    days: &mut Vec<(u32, u64)>,
    day: u32,
    n: u64,
    combine: fn(u64, u64) -> u64,
) {
    match days.binary_search_by_key(&day, |&(d, _)| d) {
        Ok(at) => days[at].1 = combine(days[at].1, n),
        Err(at) => days.insert(at, (day, n)),
    }
}

impl Book {
    /// Adds `n` validations of `id` on `day`.
    pub(crate) fn add(&mut self, id: TokenId, day: u32, n: u64, keep: u32) {
        self.tokens.entry(id).or_default().add(day, n, keep);
    }

    /// The counts of `id`: total and days, oldest first.
    pub(crate) fn get(&self, id: &TokenId) -> (u64, &[(u32, u64)]) {
        self.tokens
            .get(id)
            .map_or((0, &[][..]), |c| (c.total, &c.days[..]))
    }

    /// A record of every token counted since its last record, and the tokens' counts are
    /// taken as written; [`Book::unwritten`] undoes that if the write fails.
    pub(crate) fn take_unsaved(&mut self) -> Vec<UsageRecord> {
        let mut records = Vec::new();
        for (id, counts) in &mut self.tokens {
            let Some(from) = counts.unsaved_from.take() else {
                continue;
            };
            records.push(UsageRecord {
                id: id.to_bytes(),
                total: counts.total,
                days: counts
                    .days
                    .iter()
                    .copied()
                    .filter(|&(d, _)| d >= from)
                    .collect(),
            });
        }
        records
    }

    /// The write of `records` failed: their tokens are unsaved again from the same days.
    pub(crate) fn unwritten(&mut self, records: &[UsageRecord]) {
        for record in records {
            let Some(id) = TokenId::from_bytes(record.id) else {
                continue;
            };
            let Some(counts) = self.tokens.get_mut(&id) else {
                continue;
            };
            let from = record.days.first().map_or(u32::MAX, |&(d, _)| d);
            counts.unsaved_from = Some(counts.unsaved_from.map_or(from, |d| d.min(from)));
        }
    }

    /// Every token's counts, for a snapshot, all taken as written (again on a failed write
    /// with [`Book::unwritten`]); tokens `keep_token` refuses are forgotten.
    pub(crate) fn take_all(&mut self, keep_token: impl Fn(&TokenId) -> bool) -> Vec<UsageRecord> {
        self.tokens.retain(|id, _| keep_token(id));
        let mut records: Vec<UsageRecord> = self
            .tokens
            .iter_mut()
            .map(|(id, counts)| {
                counts.unsaved_from = None;
                UsageRecord {
                    id: id.to_bytes(),
                    total: counts.total,
                    days: counts.days.to_vec(),
                }
            })
            .collect();
        // The same book, the same bytes.
        records.sort_by_key(|r| r.id);
        records
    }

    /// A record read back from disk: it is on disk, so nothing is unsaved. Every day it
    /// holds is kept (the next count prunes to the days this store keeps).
    pub(crate) fn replay(&mut self, id: TokenId, record: &UsageRecord) {
        let counts = self.tokens.entry(id).or_default();
        counts.total = counts.total.max(record.total);
        for &(day, n) in &record.days {
            counts.at_least(day, n);
        }
    }

    /// Forgets `id`'s counts (the token was deleted).
    pub(crate) fn forget(&mut self, id: &TokenId) {
        self.tokens.remove(id);
    }

    /// Whether any count is not on disk.
    pub(crate) fn has_unsaved(&self) -> bool {
        self.tokens.values().any(|c| c.unsaved_from.is_some())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn id(s: &str) -> TokenId {
        s.parse().unwrap()
    }

    #[test]
    fn records_carry_the_days_counted_since_the_last_and_replay_to_the_same_book() {
        let mut book = Book::default();
        let a = id("aaaaaaaa");
        book.add(a, 10, 3, 30);
        book.add(a, 11, 2, 30);
        let first = book.take_unsaved();
        assert_eq!(first[0].days, [(10, 3), (11, 2)]);
        book.add(a, 11, 1, 30);
        let second = book.take_unsaved();
        assert_eq!(second[0].total, 6);
        assert_eq!(second[0].days, [(11, 3)], "day 10 is on disk already");
        assert!(book.take_unsaved().is_empty());
        book.unwritten(&second);
        assert_eq!(
            book.take_unsaved(),
            second,
            "a failed write is written again"
        );
        // Replayed in any order, twice: the same counts.
        let mut back = Book::default();
        for record in [&second, &first, &second, &first] {
            back.replay(a, &record[0]);
        }
        assert_eq!(back.get(&a), (6, &[(10, 3), (11, 3)][..]));
        assert!(!back.has_unsaved());
    }

    #[test]
    fn days_older_than_the_kept_ones_are_dropped_but_the_total_stays() {
        let mut book = Book::default();
        let a = id("aaaaaaaa");
        for day in 0..5 {
            book.add(a, day, 1, 2);
        }
        assert_eq!(book.get(&a), (5, &[(3, 1), (4, 1)][..]));
    }
}
