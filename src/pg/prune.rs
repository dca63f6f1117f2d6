//! Bounded tables: tombstones older than the tombstone horizon are removed from
//! `tokencache_tokens`, by one replica at a time.
//!
//! Each replica's listener tries at most once per [`EVERY_MS`] of its store's clock, just
//! before a catch-up, on its own connection. A try takes a transaction-scoped advisory lock
//! with `pg_try_advisory_xact_lock(`[`LOCK`]`)`; a replica that does not get it skips (another
//! is pruning). Rows another transaction holds locked are skipped (`SKIP LOCKED`), so a
//! prune never waits for a writer nor makes one wait in a cycle; they go at a later try.
//!
//! In the same transaction as the rows it removes, a prune raises `tokencache_pruned` to
//! the greatest version among them. A replica whose newest version read is below that
//! number may have missed a delete whose tombstone is gone, so its next catch-up reloads
//! the whole table instead of replaying (`listen.rs`), and drops the tokens the table no
//! longer holds. A replica that read every version up to it has read every removed
//! tombstone already: versions become visible in commit order, and a tombstone's version
//! never changes (every change to a definition skips deleted rows).

use std::time::Duration;

use postgres::Client;

use super::rows::sql_time;

/// The advisory lock a prune holds ("tcprune1" in ASCII): an operator (or a test) holding
/// it with `pg_advisory_lock` stops every replica's pruning meanwhile.
pub(super) const LOCK: i64 = 0x7463_7072_756e_6531;
/// How often a replica tries to prune, in its store's clock (ms).
pub(super) const EVERY_MS: u64 = 60_000;
/// The most rows one prune transaction removes; a full batch is followed by another.
const BATCH: i64 = 10_000;
/// Removes up to `$2` tombstones dated before `$1`, and raises the pruned mark to the
/// greatest version among them; returns how many and that version. (A data-modifying
/// `WITH` runs whether or not the outer query reads it.)
const PRUNE: &str = "WITH gone AS (\
        DELETE FROM tokencache_tokens WHERE id IN (\
            SELECT id FROM tokencache_tokens WHERE deleted AND deleted_at < $1 \
            ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
        RETURNING version), \
    marked AS (\
        UPDATE tokencache_pruned \
        SET version = greatest(version, (SELECT max(version) FROM gone)) \
        WHERE EXISTS (SELECT 1 FROM gone) RETURNING version) \
    SELECT count(*), max(version) FROM gone";

/// The tombstone rules a replica follows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Horizon {
    /// Tombstones older than this are removed; on a reload after a rollback, a token memory
    /// holds that the table lacks is written back only if it is younger than this.
    pub(super) age: Duration,
    /// Whether this replica removes tombstones (not a read-only open: it runs no DDL and
    /// should change nothing).
    pub(super) prunes: bool,
}

/// What a try did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pruned {
    /// Another replica holds the lock: nothing done.
    Elsewhere,
    /// `count` tombstones removed; the greatest version among them, if any.
    Removed { count: i64, through: Option<i64> },
}

/// Removes every tombstone dated before `cutoff` (Unix ms), in transactions of at most
/// [`BATCH`] rows, each under the advisory lock.
pub(super) fn run(client: &mut Client, cutoff: u64) -> Result<Pruned, postgres::Error> {
    let mut total = 0;
    let mut through = None;
    loop {
        let mut tx = client.transaction()?;
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK])?
            .get(0);
        if !locked {
            tx.commit()?;
            return Ok(match total {
                0 => Pruned::Elsewhere,
                _ => Pruned::Removed {
                    count: total,
                    through,
                },
            });
        }
        let row = tx.query_one(PRUNE, &[&sql_time(cutoff), &BATCH])?;
        tx.commit()?;
        let count: i64 = row.get(0);
        total += count;
        through = through.max(row.get::<_, Option<i64>>(1));
        if count < BATCH {
            return Ok(Pruned::Removed {
                count: total,
                through,
            });
        }
    }
}
