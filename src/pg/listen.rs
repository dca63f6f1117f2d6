//! A replica's listener thread: its own connection, `LISTEN`, and a catch-up (the rows with
//! `version > last_seen`) on each notification, on a poll timer, and after each
//! (re)connect, LISTEN first so no commit falls between the two. A lost notification
//! delays a change by at most one poll interval and never loses it. What it reads goes to
//! the persister (`Message::Remote`), the one thread that changes the map.
//!
//! Each catch-up first checks that the database still holds the history this replica
//! read: the counter is not below `last_seen`, and the commit log's stamp of `last_seen` is
//! the one read then. If not (a failover to a standby that missed commits, a restore from a
//! backup), it reloads: memory takes every row, and what memory holds that the table lost
//! (tokens, revocations, deletions) is written back, so a rollback of the database never
//! makes a revoked or deleted token valid again, and nothing a replica acknowledged is lost.
//! It reloads too when tombstones it had not read were removed (`prune.rs`: the pruned
//! mark is above `last_seen`), so it cannot miss a delete whose tombstone is gone; then the
//! tokens memory holds and the table lacks are dropped, not written back.
//!
//! Beside the rows whose version changed, each catch-up reads the rows whose `last_used`
//! moved since its last look, by transaction id: a flush sets `used_xid` to its own
//! transaction's id, and a catch-up reads the rows with `used_xid` at or above the oldest
//! transaction still running at its previous look (`pg_snapshot_xmin`). Every transaction
//! that had not committed then has an id at or above that, so none is missed, without a
//! counter row that flushes would queue on; a row read twice changes nothing (`last_used`
//! takes the later time).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, IsolationLevel, Row, Statement, Transaction};

use super::tls::Target;

use super::prune::{self, Horizon, Pruned};
use super::rows::{self, COLUMNS};
use super::sink::{self, Statements};
use super::CHANNEL;
use crate::change::{Change, ChangeRef, Read};
use crate::clock::millis;
use crate::inbox::Message;
use crate::sync::Arc;
use crate::validate::Shared;

/// The name of every listener thread.
const THREAD: &str = "tokencache-listener";
/// Reconnect backoff: doubles from the first to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const LAST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest the listener waits before it looks whether the store closed (`close` joins
/// it, so this bounds how long `close` waits for it).
const SLICE: Duration = Duration::from_millis(50);
/// The counter, its stamp, the stamp of version `$1` now (`NULL`: not in the log), the
/// pruned mark (the greatest version of a tombstone removed), and the snapshot's oldest
/// running and next transaction ids (`xmin`, `xmax`).
const HISTORY: &str = "SELECT v.version, \
    (SELECT stamp FROM tokencache_commits c WHERE c.version = v.version), \
    (SELECT stamp FROM tokencache_commits c WHERE c.version = $1), \
    (SELECT version FROM tokencache_pruned), \
    pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
    pg_snapshot_xmax(pg_current_snapshot())::text::bigint \
    FROM tokencache_version v";
/// The live rows whose `last_used` a flush moved in a transaction at or after `$1`
/// (indexed on `used_xid`).
pub(super) const USED_SINCE: &str = "SELECT id, last_used FROM tokencache_tokens \
    WHERE used_xid >= $1 AND NOT deleted AND last_used IS NOT NULL";

/// Where a replica's memory stands in the database's history: the newest version read,
/// that version's stamp in the commit log, and where its next look at `last_used` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) version: i64,
    pub(super) stamp: Option<i64>,
    /// The oldest transaction id still running when memory last read `last_used` (that
    /// snapshot's `xmin`): the next look reads the rows with `used_xid` at or above it.
    pub(super) used_since: i64,
}

/// Owners' limits set or removed after version `$1`.
const OWNERS_SINCE: &str = "SELECT owner, rate_period_ms, rate_count, rate_burst \
    FROM tokencache_owners WHERE version > $1 ORDER BY version";
/// Prefixes first recorded after version `$1`.
const PREFIXES_SINCE: &str =
    "SELECT prefix FROM tokencache_prefixes WHERE version > $1 ORDER BY version, prefix";

/// The prepared statements of a listener's connection.
struct Prepared {
    history: Statement,
    since: Statement,
    used: Statement,
    all: Statement,
    owners: Statement,
    prefixes: Statement,
    write: Statements,
}

pub(super) struct Listener {
    config: Target,
    shared: Arc<Shared>,
    /// The newest version read; the next catch-up reads the rows changed after it.
    last_seen: Position,
    /// Every token id this replica has read as a tombstone: a rollback of the database
    /// that brings one back live is undone (the delete is written again).
    tombstones: HashSet<[u8; 8]>,
    poll: Duration,
    /// The tombstone horizon, and whether this replica prunes.
    horizon: Horizon,
    /// When (store clock, Unix ms) this replica next tries to prune.
    next_prune: u64,
    /// The URL with its password redacted, for the log.
    name: PathBuf,
    /// Whether the connection is lost (logged once per outage, then at each retry).
    lost: bool,
}

impl Listener {
    pub(super) fn new(
        config: Target,
        shared: Arc<Shared>,
        last_seen: Position,
        tombstones: HashSet<[u8; 8]>,
        poll: Duration,
        horizon: Horizon,
        name: PathBuf,
    ) -> Listener {
        Listener {
            config,
            shared,
            last_seen,
            tombstones,
            poll,
            horizon,
            next_prune: 0,
            name,
            lost: false,
        }
    }

    pub(super) fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || self.run())
    }

    /// Until the store closes: a session, and after each lost one a reconnect with backoff.
    fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        while self.shared.inbox.is_open() {
            match self.session(&mut backoff) {
                Ok(()) => return,
                Err(error) => {
                    let error = super::describe(&error);
                    let stale_ms = self.stale_ms();
                    tracing::warn!(store = %self.name.display(), %error, stale_ms, retry_in_ms = backoff.as_millis() as u64, "lost the database; validating from memory (stale by stale_ms) and reconnecting");
                    self.lost = true;
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(LAST_BACKOFF);
                }
            }
        }
    }

    /// How long ago memory last caught up.
    fn stale_ms(&self) -> u64 {
        let synced = self
            .shared
            .counters
            .last_sync_at
            .load(std::sync::atomic::Ordering::Relaxed);
        self.shared.clock.now_ms().saturating_sub(synced)
    }

    /// Sleeps `total`, waking early if the store closes.
    fn sleep(&self, total: Duration) {
        let step = Duration::from_millis(20);
        let mut left = total;
        while !left.is_zero() && self.shared.inbox.is_open() {
            let nap = left.min(step);
            thread::sleep(nap);
            left -= nap;
        }
    }

    /// One connection's life: LISTEN, catch up, then wait for a notification or the poll
    /// timer and catch up again. `Ok` once the store closed; `Err` when the connection
    /// failed.
    fn session(&mut self, backoff: &mut Duration) -> Result<(), postgres::Error> {
        let reconnect = self.lost.then(crate::observe::Op::reconnect);
        let mut client = self.config.connect()?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        let query = Prepared {
            history: client.prepare(HISTORY)?,
            since: client.prepare(&format!(
                "SELECT {COLUMNS} FROM tokencache_tokens WHERE version > $1 ORDER BY version"
            ))?,
            used: client.prepare(USED_SINCE)?,
            all: client.prepare(&format!("SELECT {COLUMNS} FROM tokencache_tokens"))?,
            owners: client.prepare(OWNERS_SINCE)?,
            prefixes: client.prepare(PREFIXES_SINCE)?,
            write: Statements::prepare(&mut client)?,
        };
        if !self.prune_and_catch_up(&mut client, &query)? {
            return Ok(());
        }
        if self.lost {
            tracing::info!(store = %self.name.display(), "reconnected to the database and caught up");
            crate::observe::reconnected(reconnect);
            self.lost = false;
        }
        *backoff = FIRST_BACKOFF;
        loop {
            // In slices, so a close is noticed soon (it joins this thread).
            let mut waited = Duration::ZERO;
            let mut notified = false;
            while !notified && waited < self.poll && self.shared.inbox.is_open() {
                let slice = SLICE.min(self.poll - waited);
                notified = client.notifications().timeout_iter(slice).next()?.is_some();
                waited += slice;
            }
            if notified {
                // One catch-up covers every notification already here.
                let mut notifications = client.notifications();
                let mut pending = notifications.iter();
                while pending.next()?.is_some() {}
            }
            if !self.shared.inbox.is_open() || !self.prune_and_catch_up(&mut client, &query)? {
                return Ok(());
            }
        }
    }

    /// Prunes if it is time (see [`prune_if_due`](Self::prune_if_due)), then catches up, both
    /// at one clock reading: a catch-up reported at time `t` (`stats().last_catch_up_at`)
    /// follows the prune tried at `t`. `false` if the store is closed.
    fn prune_and_catch_up(
        &mut self,
        client: &mut Client,
        query: &Prepared,
    ) -> Result<bool, postgres::Error> {
        let at = self.shared.clock.now_ms();
        self.prune_if_due(client, at);
        self.catch_up(client, query, at)
    }

    /// Removes the tombstones older than the horizon, at most once per `prune::EVERY_MS`
    /// of the store's clock, unless another replica is at it (`prune.rs`). A failure is
    /// logged and left to the next try: the catch-up after it finds a broken connection.
    fn prune_if_due(&mut self, client: &mut Client, now: u64) {
        if !self.horizon.prunes || now < self.next_prune {
            return;
        }
        self.next_prune = now.saturating_add(prune::EVERY_MS);
        let cutoff = now.saturating_sub(millis(self.horizon.age));
        match prune::run(client, cutoff) {
            Ok(Pruned::Elsewhere) => {
                tracing::debug!(store = %self.name.display(), "another replica is removing old tombstones; skipped");
            }
            Ok(Pruned::Removed { count, through }) if count > 0 => {
                tracing::info!(store = %self.name.display(), count, through_version = through, "removed tombstones older than the tombstone horizon");
            }
            Ok(Pruned::Removed { .. }) => {}
            Err(error) => {
                let error = super::describe(&error);
                tracing::warn!(store = %self.name.display(), %error, "removing old tombstones failed; will try again later");
            }
        }
    }

    /// Reads every row changed since `last_seen`, and every `last_used` moved since, and
    /// hands them to the persister (an empty batch too: it tells how current memory is, as
    /// of clock time `at`), in one snapshot of the database. If the database no longer
    /// holds the history memory was read from, or removed tombstones memory had not read,
    /// reloads instead. `false` if the store is closed.
    fn catch_up(
        &mut self,
        client: &mut Client,
        query: &Prepared,
        at: u64,
    ) -> Result<bool, postgres::Error> {
        let op = crate::observe::Op::catch_up();
        let mut tx = snapshot(client)?;
        let history = tx.query_one(&query.history, &[&self.last_seen.version])?;
        let now = Position {
            version: history.get(0),
            stamp: history.get(1),
            used_since: history.get(4),
        };
        let then: Option<i64> = history.get(2);
        let pruned: i64 = history.get(3);
        let went_back = now.version < self.last_seen.version || then != self.last_seen.stamp;
        if went_back || pruned > self.last_seen.version {
            tx.commit()?;
            match went_back {
                true => {
                    tracing::warn!(store = %self.name.display(), last_seen = self.last_seen.version, counter = now.version, "the database went back in its history (a failover to a standby that missed commits, or a restore); reloading every token and writing back what it lost")
                }
                false => {
                    tracing::warn!(store = %self.name.display(), last_seen = self.last_seen.version, pruned_through = pruned, "tombstones this replica had not read were removed (it was behind by more than the tombstone horizon); reloading every token and dropping those the table no longer holds")
                }
            }
            return self.reload(client, query, at, went_back);
        }
        let found = tx.query(&query.since, &[&self.last_seen.version])?;
        // Transaction ids below the last look's (a failover, a restore into another
        // cluster): read every `last_used` once.
        let xmax: i64 = history.get(5);
        let used_from = match xmax < self.last_seen.used_since {
            true => 0,
            false => self.last_seen.used_since,
        };
        let used = tx.query(&query.used, &[&used_from])?;
        let shared = self.shared_since(&mut tx, query, self.last_seen.version)?;
        op.records(found.len());
        tx.commit()?;
        // Prefixes and owners' limits first: a token read in the same catch-up is
        // accepted, and limited with its owner, from the moment memory holds it.
        let mut changes = shared;
        for row in &found {
            self.read_row(row, &mut changes);
        }
        changes.extend(used.iter().filter_map(rows::used));
        if !self.send(changes, at, Some(now.version)) {
            return Ok(false);
        }
        self.last_seen = now;
        Ok(true)
    }

    /// The prefixes recorded and the owners' limits set or removed after `version`, as
    /// changes, read in `tx`. Both tables are small and indexed by version (prefixes are
    /// at most 32), so each catch-up reads them by version as it reads the tokens.
    fn shared_since(
        &self,
        tx: &mut Transaction<'_>,
        query: &Prepared,
        version: i64,
    ) -> Result<Vec<Change>, postgres::Error> {
        let prefixes = tx.query(&query.prefixes, &[&version])?;
        let owners = tx.query(&query.owners, &[&version])?;
        let mut changes: Vec<Change> = prefixes
            .iter()
            .filter_map(|row| row.try_get::<_, String>(0).ok())
            .map(Change::Prefix)
            .collect();
        for row in &owners {
            match rows::owner_limit(row) {
                Ok(change) => changes.push(change),
                Err(problem) => {
                    tracing::error!(store = %self.name.display(), %problem, "an owner's rate limit in the database cannot be loaded; skipped");
                }
            }
        }
        Ok(changes)
    }

    /// The changes one row makes (as much of it as loads), noting tombstones.
    fn read_row(&mut self, row: &Row, changes: &mut Vec<Change>) {
        let loaded = rows::record(row)
            .and_then(|(record, deleted, _)| Ok((record, deleted, rows::extras(row)?)));
        match loaded {
            Ok((record, deleted, extras)) => {
                if deleted {
                    self.tombstones.insert(record.id);
                }
                rows::changes(record, extras, deleted, changes);
            }
            Err(problem) => {
                let essentials = rows::essentials(row);
                if let (Some(id), true) = (essentials.id, essentials.deleted) {
                    self.tombstones.insert(id);
                }
                rows::essential_changes(&essentials, changes);
                tracing::error!(store = %self.name.display(), %problem, "a row in the database cannot be loaded; only its revocation or tombstone is applied");
            }
        }
    }

    /// Hands `changes`, read at clock time `at` as of `version`, to the persister; `false`
    /// if the store is closed.
    fn send(&self, changes: Vec<Change>, at: u64, version: Option<i64>) -> bool {
        let read = Read {
            changes,
            at,
            version,
        };
        self.shared.inbox.request(Message::Remote(read)).is_ok()
    }

    /// After the database went back (`went_back`), or removed tombstones memory had not
    /// read: memory takes every row (a token it lacks is added, a tombstone deletes,
    /// revocations and expiries join), and the table takes back what it lost that memory
    /// holds: revocations, deletions of tokens it brought back live, and, after it went
    /// back, tokens. Memory is read before the table, so a token memory holds and the
    /// table lacks was committed once, and then either lost by the rollback or deleted
    /// with its tombstone since removed. It is written back only after the database went
    /// back and only if it was issued less than a horizon ago (a tombstone is removed only
    /// once older than the horizon, and a token is deleted after it is issued, so such a
    /// token's tombstone cannot be gone); any other is dropped from memory, the safe side.
    /// `false` if the store is closed.
    fn reload(
        &mut self,
        client: &mut Client,
        query: &Prepared,
        at: u64,
        went_back: bool,
    ) -> Result<bool, postgres::Error> {
        // Each token memory holds: when it was revoked, and issued.
        let held: HashMap<[u8; 8], (Option<u64>, u64)> = self.shared.map.with_all(|entries| {
            entries
                .iter()
                .map(|e| (e.id.to_bytes(), (e.revoked_at(), e.created_at)))
                .collect()
        });
        let mut tx = snapshot(client)?;
        let history = tx.query_one(&query.history, &[&0i64])?;
        let now = Position {
            version: history.get(0),
            stamp: history.get(1),
            used_since: history.get(4),
        };
        let found = tx.query(&query.all, &[])?;
        // After the database went back, this replica's own writes took versions of
        // another history: none can be compared with this one.
        let as_of = (!went_back).then_some(now.version);
        let mut changes = self.shared_since(&mut tx, query, -1)?;
        let table_prefixes: HashSet<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Prefix(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        tx.commit()?;
        let mut in_table = HashSet::new();
        let mut revoke_again = Vec::new();
        let mut delete_again = Vec::new();
        for row in &found {
            let essentials = rows::essentials(row);
            let Some(id) = essentials.id else { continue };
            in_table.insert(id);
            if !essentials.deleted && self.tombstones.contains(&id) {
                delete_again.push(id);
                changes.push(Change::Delete { id });
                continue;
            }
            if let (false, None, Some((Some(at), _))) =
                (essentials.deleted, essentials.revoked_at, held.get(&id))
            {
                revoke_again.push((id, *at));
            }
            let mut row_changes = Vec::new();
            self.read_row(row, &mut row_changes);
            // A token memory held is not issued again from the row: were it deleted here
            // meanwhile, the row (read after) would bring it back.
            if held.contains_key(&id) {
                row_changes.retain(|c| !matches!(c, Change::Issue(_)));
            }
            changes.extend(row_changes);
        }
        let clock_now = self.shared.clock.now_ms();
        let horizon = millis(self.horizon.age);
        let mut lost = HashSet::new();
        let mut gone = Vec::new();
        for (id, (_, created)) in &held {
            if in_table.contains(id) {
                continue;
            }
            if went_back && created.saturating_add(horizon) > clock_now {
                lost.insert(*id);
            } else {
                gone.push(*id);
            }
        }
        if !gone.is_empty() {
            tracing::warn!(store = %self.name.display(), dropped = gone.len(), "tokens this replica held are not in the table, not even as tombstones (deleted, their tombstones removed after the horizon; or issued before the horizon and lost by a rollback); dropped from memory");
        }
        for id in gone {
            self.tombstones.insert(id);
            changes.push(Change::Delete { id });
        }
        // Prefixes memory accepts that the table lost (a token issued under one may be in
        // a client's hands): written back with the rest.
        let prefixes_lost: Vec<String> = match went_back {
            true => self
                .shared
                .map
                .prefixes
                .recorded()
                .into_iter()
                .filter(|p| !table_prefixes.contains(*p))
                .map(str::to_owned)
                .collect(),
            false => Vec::new(),
        };
        let (restored, revoked, deleted) = (lost.len(), revoke_again.len(), delete_again.len());
        if restored + revoked + deleted + prefixes_lost.len() > 0 {
            let written = self.shared.map.with_all(|entries| {
                let restore: Vec<_> = entries
                    .iter()
                    .filter(|e| lost.contains(&e.id.to_bytes()))
                    .map(|e| (e, e.extras_arc().filter(|x| x.is_recorded())))
                    .collect();
                let mut back: Vec<ChangeRef<'_>> = Vec::new();
                for (e, extras) in &restore {
                    back.push(ChangeRef::Issue(e.record(e.persisted_last_used())));
                    // Its owner, metadata and import mark go in the same row.
                    if let Some(extras) = extras {
                        back.push(ChangeRef::Extras(extras.record(e.id)));
                    }
                }
                back.extend(prefixes_lost.iter().cloned().map(ChangeRef::Prefix));
                back.extend(
                    revoke_again
                        .iter()
                        .map(|&(id, at)| ChangeRef::Revoke { id, at }),
                );
                back.extend(delete_again.iter().map(|&id| ChangeRef::Delete { id }));
                sink::write(client, &query.write, &[], &back, clock_now, true)
            });
            if let Err(error) = written {
                // The history check fails again at the next catch-up (this replica's
                // position is unchanged), which reloads and writes back again.
                tracing::error!(store = %self.name.display(), %error, "writing back what the database lost failed; will try again at the next catch-up");
                if !self.send(changes, at, as_of) {
                    return Ok(false);
                }
                return Ok(true);
            }
            let prefixes = prefixes_lost.len();
            tracing::warn!(store = %self.name.display(), restored, revoked, deleted, prefixes, "wrote back what the database lost: tokens, revocations, deletions and prefixes this replica held");
        }
        if !self.send(changes, at, as_of) {
            return Ok(false);
        }
        self.last_seen = now;
        Ok(true)
    }
}

/// A read-only transaction that sees one snapshot of the database.
fn snapshot(client: &mut Client) -> Result<Transaction<'_>, postgres::Error> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
}
