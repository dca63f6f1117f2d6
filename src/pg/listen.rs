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

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config, IsolationLevel, NoTls, Row, Statement, Transaction};

use super::rows::{self, COLUMNS};
use super::sink::{self, Statements};
use super::CHANNEL;
use crate::change::{Change, ChangeRef};
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
/// The counter, its stamp, and the stamp of version `$1` now (`NULL`: not in the log).
const HISTORY: &str = "SELECT v.version, \
    (SELECT stamp FROM tokencache_commits c WHERE c.version = v.version), \
    (SELECT stamp FROM tokencache_commits c WHERE c.version = $1) \
    FROM tokencache_version v";

/// Where a replica's memory stands in the database's history: the newest version read,
/// and that version's stamp in the commit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) version: i64,
    pub(super) stamp: Option<i64>,
}

/// The prepared statements of a listener's connection.
struct Prepared {
    history: Statement,
    since: Statement,
    all: Statement,
    write: Statements,
}

pub(super) struct Listener {
    config: Config,
    shared: Arc<Shared>,
    /// The newest version read; the next catch-up reads the rows changed after it.
    last_seen: Position,
    /// Every token id this replica has read as a tombstone: a rollback of the database
    /// that brings one back live is undone (the delete is written again).
    tombstones: HashSet<[u8; 8]>,
    poll: Duration,
    /// The URL with its password redacted, for the log.
    name: PathBuf,
    /// Whether the connection is lost (logged once per outage, then at each retry).
    lost: bool,
}

impl Listener {
    pub(super) fn new(
        config: Config,
        shared: Arc<Shared>,
        last_seen: Position,
        tombstones: HashSet<[u8; 8]>,
        poll: Duration,
        name: PathBuf,
    ) -> Listener {
        Listener {
            config,
            shared,
            last_seen,
            tombstones,
            poll,
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
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        let query = Prepared {
            history: client.prepare(HISTORY)?,
            since: client.prepare(&format!(
                "SELECT {COLUMNS} FROM tokencache_tokens WHERE version > $1 ORDER BY version"
            ))?,
            all: client.prepare(&format!("SELECT {COLUMNS} FROM tokencache_tokens"))?,
            write: Statements::prepare(&mut client)?,
        };
        if !self.catch_up(&mut client, &query)? {
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
            if !self.shared.inbox.is_open() || !self.catch_up(&mut client, &query)? {
                return Ok(());
            }
        }
    }

    /// Reads every row changed since `last_seen` and hands it to the persister (an empty
    /// batch too: it tells how current memory is), in one snapshot of the database. If the
    /// database no longer holds the history memory was read from, reloads instead.
    /// `false` if the store is closed.
    fn catch_up(&mut self, client: &mut Client, query: &Prepared) -> Result<bool, postgres::Error> {
        let op = crate::observe::Op::catch_up();
        let at = self.shared.clock.now_ms();
        let mut tx = snapshot(client)?;
        let history = tx.query_one(&query.history, &[&self.last_seen.version])?;
        let now = Position {
            version: history.get(0),
            stamp: history.get(1),
        };
        let then: Option<i64> = history.get(2);
        if now.version < self.last_seen.version || then != self.last_seen.stamp {
            tx.commit()?;
            tracing::warn!(store = %self.name.display(), last_seen = self.last_seen.version, counter = now.version, "the database went back in its history (a failover to a standby that missed commits, or a restore); reloading every token and writing back what it lost");
            return self.reload(client, query, at);
        }
        let found = tx.query(&query.since, &[&self.last_seen.version])?;
        op.records(found.len());
        tx.commit()?;
        let mut changes = Vec::new();
        for row in &found {
            self.read_row(row, &mut changes);
        }
        if !self.send(changes, at) {
            return Ok(false);
        }
        self.last_seen = now;
        Ok(true)
    }

    /// The changes one row makes (as much of it as loads), noting tombstones.
    fn read_row(&mut self, row: &Row, changes: &mut Vec<Change>) {
        match rows::record(row) {
            Ok((record, deleted, _)) => {
                if deleted {
                    self.tombstones.insert(record.id);
                }
                rows::changes(record, deleted, changes);
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

    /// Hands `changes` to the persister; `false` if the store is closed.
    fn send(&self, changes: Vec<Change>, at: u64) -> bool {
        self.shared
            .inbox
            .request(Message::Remote(changes, at))
            .is_ok()
    }

    /// After the database went back: memory takes every row (a token it lacks is added, a
    /// tombstone deletes, revocations and expiries join), and the table takes back what it
    /// lost that memory holds: tokens, revocations, and deletions of tokens it brought
    /// back live. Memory is read before the table, so a token memory holds and the table
    /// lacks was committed once and lost. `false` if the store is closed.
    fn reload(
        &mut self,
        client: &mut Client,
        query: &Prepared,
        at: u64,
    ) -> Result<bool, postgres::Error> {
        let held: HashMap<[u8; 8], Option<u64>> = self.shared.map.with_all(|entries| {
            entries
                .iter()
                .map(|e| (e.id.to_bytes(), e.revoked_at()))
                .collect()
        });
        let mut tx = snapshot(client)?;
        let history = tx.query_one(&query.history, &[&0i64])?;
        let now = Position {
            version: history.get(0),
            stamp: history.get(1),
        };
        let found = tx.query(&query.all, &[])?;
        tx.commit()?;
        let mut changes = Vec::new();
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
            if let (false, None, Some(Some(at))) =
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
        let lost: HashSet<[u8; 8]> = held
            .keys()
            .filter(|id| !in_table.contains(*id))
            .copied()
            .collect();
        let (restored, revoked, deleted) = (lost.len(), revoke_again.len(), delete_again.len());
        if restored + revoked + deleted > 0 {
            let clock_now = self.shared.clock.now_ms();
            let written = self.shared.map.with_all(|entries| {
                let mut back: Vec<ChangeRef<'_>> = entries
                    .iter()
                    .filter(|e| lost.contains(&e.id.to_bytes()))
                    .map(|e| ChangeRef::Issue(e.record(e.persisted_last_used())))
                    .collect();
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
                if !self.send(changes, at) {
                    return Ok(false);
                }
                return Ok(true);
            }
            tracing::warn!(store = %self.name.display(), restored, revoked, deleted, "wrote back what the database lost: tokens, revocations and deletions this replica held");
        }
        if !self.send(changes, at) {
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
