//! The persister's [`Sink`] for a PostgreSQL store: each group commit is one transaction
//! that returns after COMMIT. Changes to definitions take one version from the counter row
//! and signal `NOTIFY`; `last_used` times go in one batched statement that keeps the later
//! time and bumps no version.
//!
//! Lock order, so replicas never deadlock: the counter row first (only transactions with
//! definitions take it, so they run one at a time), then every existing token row the
//! transaction touches, in id order (`SELECT ... ORDER BY id FOR UPDATE`), before any write;
//! an owner's revoke or delete first reads which rows it writes (`OWNED`), so those are
//! locked in that order too, with the rest.
//!
//! An owner's revoke or delete is one statement over the owner's rows (indexed on
//! `owner`), in the batch's one transaction, so all of an owner's tokens change together,
//! as one version, or none do.
//!
//! A change that depends on a token's state (a rotation: the old token must still be live)
//! checks that state in the database under the row lock, not only in this replica's memory,
//! which may lag behind a revoke or delete committed elsewhere.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use postgres::{Client, Statement, Transaction};

use super::tls::Target;

use super::rows::{self, id_text, sql_time};
use super::CHANNEL;
use crate::change::{Change, ChangeRef};
use crate::clock::Clock;
use crate::error::Error;
use crate::file::WriteError;
use crate::persist::{AppendFailed, Compacted, Facts, Sink, Write};
use crate::snapshot::{BodyRef, ExtrasRef, RecordRef};

/// Takes the next version and gives it a random stamp in the commit log; the row lock it
/// holds until COMMIT makes versions become visible in commit order (a sequence would not:
/// a reader could see version 8 committed while 7 is still in flight, and skip 7 for
/// good). A version already in the log (the counter was set back by hand) takes a new
/// stamp, which is how replicas that saw the old one notice.
const BUMP: &str = "WITH bumped AS \
    (UPDATE tokencache_version SET version = version + 1 RETURNING version) \
    INSERT INTO tokencache_commits (version, stamp) \
    SELECT version, (random() * 9.2e18)::bigint FROM bumped \
    ON CONFLICT (version) DO UPDATE SET stamp = EXCLUDED.stamp RETURNING version";
/// Versions the commit log keeps: a replica further behind than this reloads everything
/// (it cannot tell a rollback from a long absence).
pub(super) const COMMITS_KEPT: i64 = 100_000;
/// Prunes the commit log, once every [`PRUNE_EVERY`] versions.
const PRUNE: &str = "DELETE FROM tokencache_commits WHERE version <= $1";
const PRUNE_EVERY: i64 = 1_000;
/// Locks the existing rows a transaction touches, in id order, and reads the state that
/// a rotation depends on.
const LOCK_ROWS: &str = "SELECT id, deleted, revoked_at IS NOT NULL, expires_at \
    FROM tokencache_tokens WHERE id = ANY($1) ORDER BY id FOR UPDATE";
/// `last_used` for many tokens at once; never moves a time back. A row it moves takes this
/// transaction's id in `used_xid`, by which other replicas read the `last_used` changes
/// committed since their last look (see `listen.rs`).
const USED: &str = "UPDATE tokencache_tokens AS t SET last_used = u.at, \
    used_xid = pg_current_xact_id()::text::bigint \
    FROM unnest($1::text[], $2::bigint[]) AS u(id, at) \
    WHERE t.id = u.id AND (t.last_used IS NULL OR t.last_used < u.at)";
/// Every new token of a batch in one statement: one array per column (scopes joined by
/// [`SCOPE_SEPARATOR`], which a scope cannot contain: scopes refuse control characters;
/// each token's metadata as its JSON text), with its owner, metadata and import mark.
const ISSUE: &str = "INSERT INTO tokencache_tokens (id, name, digest, scopes, created_at, \
    expires_at, revoked_at, last_used, rate_period_ms, rate_count, rate_burst, owner, meta, \
    imported, version) \
    SELECT u.id, u.name, u.digest, string_to_array(u.scopes, E'\\x1f'), u.created_at, \
    u.expires_at, u.revoked_at, u.last_used, u.period, u.count, u.burst, u.owner, \
    u.meta::jsonb, u.imported, $15 \
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::bigint[], $6::bigint[], \
    $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::text[], \
    $13::text[], $14::boolean[]) \
    AS u(id, name, digest, scopes, created_at, expires_at, revoked_at, last_used, period, \
    count, burst, owner, meta, imported) \
    ON CONFLICT (id) DO NOTHING";
const SCOPE_SEPARATOR: &str = "\u{1f}";
const REVOKE: &str = "UPDATE tokencache_tokens SET revoked_at = coalesce(revoked_at, $2), \
    version = $3 WHERE id = $1 AND NOT deleted";
/// A tombstone, dated (`deleted_at`, this replica's clock) so that it can be removed once
/// older than the tombstone horizon (`prune.rs`).
const DELETE: &str = "UPDATE tokencache_tokens SET deleted = true, version = $2, \
    deleted_at = $3 WHERE id = $1 AND NOT deleted";
const LIMIT: &str = "UPDATE tokencache_tokens SET rate_period_ms = $2, rate_count = $3, \
    rate_burst = $4, version = $5 WHERE id = $1 AND NOT deleted";
const EXPIRE: &str = "UPDATE tokencache_tokens SET expires_at = least(expires_at, $2), \
    version = $3 WHERE id = $1 AND NOT deleted";
/// A token's whole extras (`set_meta`; a new token's go in its INSERT).
const EXTRAS: &str = "UPDATE tokencache_tokens SET owner = $2, meta = $3::text::jsonb, \
    imported = $4, version = $5 WHERE id = $1 AND NOT deleted";
/// The live rows of the owners `$1`, to lock in id order with the rest (see the lock
/// order above) before `REVOKE_OWNER` or `DELETE_OWNER` writes them. No other writer adds
/// or changes an owner's row meanwhile: only transactions holding the counter row do.
const OWNED: &str = "SELECT id FROM tokencache_tokens WHERE owner = ANY($1) AND NOT deleted";
/// Every token of owner `$1` not revoked yet, revoked at `$2` as version `$3`: one
/// statement, in the batch's one transaction. The batch's own new tokens (`$4`) are left
/// alone: memory revoked the owner's tokens before they joined it.
const REVOKE_OWNER: &str = "UPDATE tokencache_tokens SET revoked_at = $2, version = $3 \
    WHERE owner = $1 AND revoked_at IS NULL AND NOT deleted AND id <> ALL($4)";
/// Every token of owner `$1` as a tombstone, as [`DELETE`] makes one, but the batch's own
/// new tokens (`$4`).
const DELETE_OWNER: &str = "UPDATE tokencache_tokens SET deleted = true, version = $2, \
    deleted_at = $3 WHERE owner = $1 AND NOT deleted AND id <> ALL($4) RETURNING id";
/// An owner's shared limit set (or, NULLs, removed) as version `$5`.
const OWNER_LIMIT: &str = "INSERT INTO tokencache_owners \
    (owner, rate_period_ms, rate_count, rate_burst, version) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (owner) DO UPDATE SET rate_period_ms = EXCLUDED.rate_period_ms, \
    rate_count = EXCLUDED.rate_count, rate_burst = EXCLUDED.rate_burst, \
    version = EXCLUDED.version";
/// A prefix the store issues under, as of version `$2` (a prefix recorded keeps its first).
const PREFIX: &str = "INSERT INTO tokencache_prefixes (prefix, version) VALUES ($1, $2) \
    ON CONFLICT (prefix) DO NOTHING";
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// The statements above, prepared once per connection (each use is then one round trip).
pub(super) struct Statements {
    bump: Statement,
    prune: Statement,
    lock_rows: Statement,
    used: Statement,
    issue: Statement,
    revoke: Statement,
    delete: Statement,
    limit: Statement,
    expire: Statement,
    extras: Statement,
    owned: Statement,
    revoke_owner: Statement,
    delete_owner: Statement,
    owner_limit: Statement,
    prefix: Statement,
    notify: Statement,
}

impl Statements {
    pub(super) fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            bump: client.prepare(BUMP)?,
            prune: client.prepare(PRUNE)?,
            lock_rows: client.prepare(LOCK_ROWS)?,
            used: client.prepare(USED)?,
            issue: client.prepare(ISSUE)?,
            revoke: client.prepare(REVOKE)?,
            delete: client.prepare(DELETE)?,
            limit: client.prepare(LIMIT)?,
            expire: client.prepare(EXPIRE)?,
            extras: client.prepare(EXTRAS)?,
            owned: client.prepare(OWNED)?,
            revoke_owner: client.prepare(REVOKE_OWNER)?,
            delete_owner: client.prepare(DELETE_OWNER)?,
            owner_limit: client.prepare(OWNER_LIMIT)?,
            prefix: client.prepare(PREFIX)?,
            notify: client.prepare(NOTIFY)?,
        })
    }
}

/// Writes a replica's changes to the database, on the persister thread only (the sync
/// client runs its own runtime).
pub(crate) struct PgSink {
    config: Target,
    /// The connection and its prepared statements; `None` after the connection broke,
    /// until the next write reconnects.
    connection: Option<(Client, Statements)>,
    /// The URL with its password redacted, for errors.
    name: PathBuf,
    /// Changes memory already holds (revoke, delete, rate limit) whose transaction failed:
    /// written first by the next append. New tokens and rotations are not kept: their
    /// callers heard the error and memory never took them.
    retry: Vec<ChangeRef<'static>>,
    /// The time a rotation's old token must still be unexpired at.
    clock: Arc<dyn Clock>,
    /// The listener thread, joined when the persister drops this sink (its last act on
    /// close), so nothing of the store outlives `close`.
    listener: ListenerSlot,
    /// The token whose row [`overrides`](Sink::overrides) holds back: a row of an owner
    /// whose delete is among `retry` (its extras come before its issue, see
    /// `rows::changes`).
    held_back: Cell<Option<[u8; 8]>>,
    /// What this replica's committed transactions moved (rows, owners' limits), with the
    /// version each last took, until a catch-up reads the database as of that version.
    /// A catch-up that read it as of an older version holds it as it was before the
    /// write: applied after it, its old rate limit (a full quota again), metadata or live
    /// row (a token deleted here validating again) would undo the write in memory until
    /// the next catch-up. Such changes are skipped ([`overrides`](Sink::overrides)); the
    /// write moved the row's version past the catch-up's, so the next one reads it again.
    fresh: HashMap<Moved, i64>,
}

/// What one of this replica's transactions moved to its version that a catch-up read
/// before it must not undo in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Moved {
    /// A token's row whose rate limit or extras the transaction set, or that it deleted.
    Row([u8; 8]),
    /// An owner's shared rate limit.
    Owner(String),
}

/// What a transaction committed: its version (`None`: it wrote only `last_used`, which
/// takes none) and what it moved to it.
pub(super) struct Committed {
    pub(super) version: Option<i64>,
    pub(super) moved: Vec<Moved>,
}

/// Where `open` leaves the listener's thread for the sink to join.
pub(super) type ListenerSlot = Arc<Mutex<Option<JoinHandle<()>>>>;

impl PgSink {
    /// A sink that connects on its first write, on the persister thread: the sync client
    /// runs its own runtime, which must never start on a caller's (maybe async) thread.
    pub(super) fn new(
        config: Target,
        name: PathBuf,
        clock: Arc<dyn Clock>,
        listener: ListenerSlot,
    ) -> PgSink {
        PgSink {
            config,
            connection: None,
            name,
            retry: Vec::new(),
            clock,
            listener,
            held_back: Cell::new(None),
            fresh: HashMap::new(),
        }
    }

    /// The connection, opened on first use and reopened if it broke.
    fn connection(&mut self) -> io::Result<(&mut Client, &Statements)> {
        if self.connection.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            let reopened = self.connection.take().is_some();
            let mut client = self.config.connect().map_err(pg)?;
            let statements = Statements::prepare(&mut client).map_err(pg)?;
            if reopened {
                tracing::info!(store = %self.name.display(), "reconnected to the database");
            }
            self.connection = Some((client, statements));
        }
        match self.connection.as_mut() {
            Some((client, statements)) => Ok((client, statements)),
            None => Err(io::Error::other("no connection")),
        }
    }
}

impl Sink for PgSink {
    /// One transaction: the changes kept from failed appends, then `changes` in order (one
    /// version for all of them, and a `NOTIFY`), then the `last_used` times. `seq` is not
    /// used: the database's version orders changes across replicas.
    fn append(&mut self, _seq: u64, changes: &[ChangeRef<'_>]) -> Result<u64, AppendFailed> {
        let retry = std::mem::take(&mut self.retry);
        let now = self.clock.now_ms();
        let written = self
            .connection()
            .and_then(|(client, st)| write(client, st, &retry, changes, now, false));
        self.retry = retry;
        match written {
            Ok(committed) => {
                self.retry.clear();
                self.held_back.set(None);
                if let Some(version) = committed.version {
                    self.fresh
                        .extend(committed.moved.into_iter().map(|moved| (moved, version)));
                }
                Ok(0)
            }
            Err(error) => {
                let new = new_ids(changes.iter());
                self.retry
                    .extend(changes.iter().filter_map(|c| kept(c, &new)));
                Err(AppendFailed {
                    error,
                    action: "commit a transaction to",
                    next: "transaction failed; the changes memory holds are written again at the next tick",
                })
            }
        }
    }

    /// A database has no snapshot to replace: this writes every record's `last_used` with
    /// the batched statement and nothing else. (This backend's policy never compacts to
    /// stand in for an append; see `decide`.)
    fn compact(&mut self, body: &BodyRef<'_, '_>) -> Result<Compacted, WriteError> {
        let used: Vec<ChangeRef<'_>> = body
            .records
            .iter()
            .filter_map(|r| r.last_used.map(|at| ChangeRef::Used { id: r.id, at }))
            .collect();
        let now = self.clock.now_ms();
        let written = self
            .connection()
            .and_then(|(client, st)| write(client, st, &[], &used, now, false));
        written.map_err(|error| WriteError {
            error,
            replaced: None,
        })?;
        Ok(Compacted {
            snapshot_bytes: 0,
            journal: Ok(0),
        })
    }

    /// Always true: a broken connection is reopened by the next write, and a database
    /// store is never compacted instead of appended to.
    /// The database backend's policy: never a compaction instead of an append, since each
    /// change must reach the database as a change (a delete is a tombstone other replicas
    /// read); the changes memory already made (revoke, delete, rate limit) whose
    /// transaction failed are kept here and written first by the next append, which a due
    /// tick, a flush or close makes happen (`resend`). Close scans every token's
    /// `last_used`.
    fn decide(&self, facts: &Facts<'_>) -> Write {
        let resend = facts.unwritten_changes && (facts.due || facts.closing || facts.flush_asked);
        facts.append(resend, facts.scan_all || facts.flush_asked || facts.closing)
    }

    /// The database is the store's first and only copy: nothing to write at open.
    fn snapshot_at_open(&self, _snapshot_len: u64) -> bool {
        false
    }

    fn path(&self) -> PathBuf {
        self.name.clone()
    }

    fn error(&self, action: &'static str, error: io::Error) -> Error {
        Error::database(action, &self.name, error)
    }

    /// A row read from the database must not undo a change this replica still has to
    /// write: the rate limit of a token whose `set_rate_limit` failed (the row holds the
    /// old one), a token whose delete failed (the row is still live), a token's metadata
    /// whose `set_meta` failed, an owner's limit whose `set_owner_rate_limit` failed, or a
    /// token of an owner whose `delete_owner` failed (held back by its extras, which come
    /// first: its issue and extras are skipped, its revocation is not). A failed
    /// `revoke_owner` needs nothing here: a live row does not make a token live again.
    ///
    /// Nor may a row read before this replica's own later write to it (see
    /// [`fresh`](PgSink::fresh)): its issue (the token was deleted here since), rate
    /// limit, extras or owner's limit is skipped. Revocations, expiries, deletions and
    /// `last_used` only ever move one way, so an older row cannot undo them.
    fn overrides(&self, change: &Change) -> bool {
        if self.read_before_own_write(change) {
            return true;
        }
        if let Change::Extras(extras) = change {
            if let Some(owner) = &extras.owner {
                let deleting = self.retry.iter().any(
                    |kept| matches!(kept, ChangeRef::DeleteOwner { owner: mine } if mine == owner),
                );
                if deleting {
                    self.held_back.set(Some(extras.id));
                    return true;
                }
            }
        }
        let held = self.held_back.get();
        match change {
            Change::Issue(record) if held == Some(record.id) => return true,
            Change::Extras(extras) if held == Some(extras.id) => return true,
            _ => {}
        }
        self.retry.iter().any(|kept| match (change, kept) {
            (Change::SetRateLimit { id, .. }, ChangeRef::SetRateLimit { id: mine, .. }) => {
                id == mine
            }
            (Change::Issue(record), ChangeRef::Delete { id: mine }) => record.id == *mine,
            (Change::Extras(extras), ChangeRef::Extras(mine)) => extras.id == mine.id,
            (
                Change::OwnerRateLimit { owner, .. },
                ChangeRef::OwnerRateLimit { owner: mine, .. },
            ) => owner == mine,
            _ => false,
        })
    }

    /// Forgets the writes a catch-up read as of `version` already saw; after the database
    /// went back (`None`), every write: their versions belong to the history it left.
    fn reading(&mut self, version: Option<i64>) {
        match version {
            Some(version) => self.fresh.retain(|_, written| *written > version),
            None => self.fresh.clear(),
        }
    }
}

impl PgSink {
    /// Whether `change` was read before a write of this replica that moved its row or
    /// owner (the catch-up's version is below the write's: [`reading`](Sink::reading)
    /// keeps in `fresh` only writes newer than the catch-up being applied).
    fn read_before_own_write(&self, change: &Change) -> bool {
        let moved = match change {
            Change::Issue(record) => Moved::Row(record.id),
            Change::SetRateLimit { id, .. } => Moved::Row(*id),
            Change::Extras(extras) => Moved::Row(extras.id),
            Change::OwnerRateLimit { owner, .. } => Moved::Owner(owner.clone()),
            _ => return false,
        };
        self.fresh.contains_key(&moved)
    }
}

impl Drop for PgSink {
    /// Joins the listener: the persister drops its sink as it exits, after the inbox shut,
    /// and the listener stops at its next look at the inbox (within a wait slice).
    fn drop(&mut self) {
        let handle = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!(store = %self.name.display(), "the listener thread panicked");
            }
        }
    }
}

/// A change memory already made, to write again after a failed transaction: revokes,
/// deletes, rate limits, an owner's revoke, delete and limit, and a `set_meta`'s extras
/// (not those of a new token among `new`: its caller heard the error and memory never
/// took it). A prefix is not kept: the persister records it again with the next issue.
fn kept(change: &ChangeRef<'_>, new: &HashSet<[u8; 8]>) -> Option<ChangeRef<'static>> {
    match change {
        &ChangeRef::Revoke { id, at } => Some(ChangeRef::Revoke { id, at }),
        &ChangeRef::Delete { id } => Some(ChangeRef::Delete { id }),
        &ChangeRef::SetRateLimit { id, limit } => Some(ChangeRef::SetRateLimit { id, limit }),
        ChangeRef::RevokeOwner { owner, at } => Some(ChangeRef::RevokeOwner {
            owner: owner.clone(),
            at: *at,
        }),
        ChangeRef::DeleteOwner { owner } => Some(ChangeRef::DeleteOwner {
            owner: owner.clone(),
        }),
        ChangeRef::OwnerRateLimit { owner, limit } => Some(ChangeRef::OwnerRateLimit {
            owner: owner.clone(),
            limit: *limit,
        }),
        ChangeRef::Extras(extras) if !new.contains(&extras.id) => {
            Some(ChangeRef::Extras(extras.clone().into_owned()))
        }
        _ => None,
    }
}

/// The ids of the new tokens among `changes`.
fn new_ids<'c, 'a: 'c>(changes: impl Iterator<Item = &'c ChangeRef<'a>>) -> HashSet<[u8; 8]> {
    changes
        .filter_map(|c| match c {
            ChangeRef::Issue(record) => Some(record.id),
            _ => None,
        })
        .collect()
}

fn pg(error: postgres::Error) -> io::Error {
    io::Error::other(super::describe(&error))
}

/// The id of an existing row a change updates (`None` for a new token).
fn updated_id(change: &ChangeRef<'_>) -> Option<[u8; 8]> {
    match *change {
        ChangeRef::Issue(_) => None,
        ChangeRef::Revoke { id, .. }
        | ChangeRef::Delete { id }
        | ChangeRef::SetRateLimit { id, .. }
        | ChangeRef::Expire { id, .. }
        | ChangeRef::Used { id, .. }
        | ChangeRef::NoCredits { id } => Some(id),
        ChangeRef::Extras(ref extras) => Some(extras.id),
        ChangeRef::Credits(ref credits) => Some(credits.id),
        ChangeRef::Usage(ref usage) => Some(usage.id),
        ChangeRef::RevokeOwner { .. }
        | ChangeRef::DeleteOwner { .. }
        | ChangeRef::OwnerRateLimit { .. }
        | ChangeRef::Prefix(_) => None,
    }
}

/// The transaction of one append (see [`PgSink::append`]), at clock time `now`. With
/// `restore` (a listener writing back what a rollback of the database lost), a token
/// already in the table is left as it is instead of failing the transaction.
pub(super) fn write(
    client: &mut Client,
    st: &Statements,
    retry: &[ChangeRef<'static>],
    changes: &[ChangeRef<'_>],
    now: u64,
    restore: bool,
) -> io::Result<Committed> {
    let is_used = |c: &&ChangeRef<'_>| matches!(c, ChangeRef::Used { .. });
    let definitions: Vec<&ChangeRef<'_>> = retry
        .iter()
        .chain(changes.iter().filter(|c| !is_used(c)))
        .collect();
    let (used_ids, used_at): (Vec<String>, Vec<i64>) = changes
        .iter()
        .filter_map(|c| match *c {
            ChangeRef::Used { id, at } => Some((id_text(id), sql_time(at))),
            _ => None,
        })
        .unzip();
    let mut committed = Committed {
        version: None,
        moved: Vec::new(),
    };
    if definitions.is_empty() && used_ids.is_empty() {
        return Ok(committed);
    }
    let mut tx = client.transaction().map_err(pg)?;
    let version: Option<i64> = match definitions.is_empty() {
        true => None,
        false => Some(tx.query_one(&st.bump, &[]).map_err(pg)?.get(0)),
    };
    if let Some(version) = version.filter(|v| v % PRUNE_EVERY == 0) {
        tx.execute(&st.prune, &[&(version - COMMITS_KEPT)])
            .map_err(pg)?;
    }
    let new = new_ids(definitions.iter().copied());
    let mut locked: Vec<String> = definitions
        .iter()
        .filter_map(|c| updated_id(c))
        .filter(|id| !new.contains(id))
        .map(id_text)
        .chain(used_ids.iter().cloned())
        .collect();
    // The rows an owner's revoke or delete writes, locked in id order with the rest.
    let owners: Vec<&str> = definitions
        .iter()
        .filter_map(|c| match c {
            ChangeRef::RevokeOwner { owner, .. } | ChangeRef::DeleteOwner { owner } => {
                Some(owner.as_str())
            }
            _ => None,
        })
        .collect();
    if !owners.is_empty() {
        for row in tx.query(&st.owned, &[&owners]).map_err(pg)? {
            locked.push(row.get(0));
        }
    }
    locked.sort_unstable();
    locked.dedup();
    let mut state = HashMap::new();
    if !locked.is_empty() {
        for row in tx.query(&st.lock_rows, &[&locked]).map_err(pg)? {
            let id: String = row.get(0);
            let expires_at: Option<i64> = row.get(3);
            state.insert(
                id,
                (row.get::<_, bool>(1), row.get::<_, bool>(2), expires_at),
            );
        }
    }
    // A rotation (its old token's expiry) needs the old token live in the table too: this
    // replica may not have seen a revoke or delete another replica committed, and a
    // replacement would restore the access that ended. The whole batch fails: its callers
    // hear the error, and memory keeps nothing of the rotation.
    for change in changes {
        if let ChangeRef::Expire { id, .. } = change {
            let text = id_text(*id);
            let why = match state.get(&text) {
                None => Some("not in the database"),
                Some((true, _, _)) => Some("deleted"),
                Some((_, true, _)) => Some("revoked"),
                Some((_, _, Some(at))) if *at <= sql_time(now) => Some("expired"),
                Some(_) => None,
            };
            if let Some(why) = why {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("token {text} is {why} (a change committed by another replica this one had not read yet), so it is not rotated; issue a new token instead"),
                ));
            }
        }
    }
    if let Some(version) = version {
        // New ids only (the persister checked them against memory): no other change of
        // the batch names them, so they can go first, together.
        issue(&mut tx, st, &definitions, version, restore)?;
        let new_text: Vec<String> = new.iter().copied().map(id_text).collect();
        let batch = Batch {
            version,
            now,
            new: &new,
            new_text: &new_text,
        };
        for change in &definitions {
            define(&mut tx, st, change, &batch, &mut committed.moved)?;
        }
        let payload = version.to_string();
        tx.execute(&st.notify, &[&CHANNEL, &payload]).map_err(pg)?;
    }
    if !used_ids.is_empty() {
        tx.execute(&st.used, &[&used_ids, &used_at]).map_err(pg)?;
    }
    tx.commit().map_err(pg)?;
    committed.version = version;
    Ok(committed)
}

/// Inserts every new token among `changes` as version `version`, in one statement. An id
/// already in the table (even as a tombstone) fails the transaction: drawn twice.
fn issue(
    tx: &mut Transaction<'_>,
    st: &Statements,
    changes: &[&ChangeRef<'_>],
    version: i64,
    restore: bool,
) -> io::Result<()> {
    let new: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            ChangeRef::Issue(r) => Some(r),
            _ => None,
        })
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    // Each new token's extras (the change right after its issue) fill the same row.
    let extras: HashMap<[u8; 8], &ExtrasRef<'_>> = changes
        .iter()
        .filter_map(|c| match c {
            ChangeRef::Extras(x) => Some((x.id, x)),
            _ => None,
        })
        .collect();
    let extras_of = |r: &&RecordRef<'_>| extras.get(&r.id).copied();
    let owners: Vec<Option<&str>> = new
        .iter()
        .map(|r| extras_of(r).and_then(|x| x.owner.as_deref()))
        .collect();
    let metas: Vec<String> = new
        .iter()
        .map(|r| extras_of(r).map_or_else(|| "[]".into(), |x| rows::meta_json(&x.meta)))
        .collect();
    let imported: Vec<bool> = new
        .iter()
        .map(|r| extras_of(r).is_some_and(|x| x.imported))
        .collect();
    let column = |f: &dyn Fn(&&RecordRef<'_>) -> Option<u64>| -> Vec<Option<i64>> {
        new.iter().map(|r| f(r).map(sql_time)).collect()
    };
    let ids: Vec<String> = new.iter().map(|r| id_text(r.id)).collect();
    let names: Vec<&str> = new.iter().map(|r| r.name).collect();
    let digests: Vec<&[u8]> = new.iter().map(|r| &r.digest[..]).collect();
    let scopes: Vec<String> = new
        .iter()
        .map(|r| r.scopes.iter().collect::<Vec<_>>().join(SCOPE_SEPARATOR))
        .collect();
    let created: Vec<i64> = new.iter().map(|r| sql_time(r.created_at)).collect();
    let inserted = tx
        .execute(
            &st.issue,
            &[
                &ids,
                &names,
                &digests,
                &scopes,
                &created,
                &column(&|r| r.expires_at),
                &column(&|r| r.revoked_at),
                &column(&|r| r.last_used),
                &column(&|r| r.rate_limit.map(|l| l.period_ms)),
                &new.iter()
                    .map(|r| r.rate_limit.map(|l| i64::from(l.count)))
                    .collect::<Vec<_>>(),
                &new.iter()
                    .map(|r| r.rate_limit.map(|l| i64::from(l.burst)))
                    .collect::<Vec<_>>(),
                &owners,
                &metas,
                &imported,
                &version,
            ],
        )
        .map_err(pg)?;
    if inserted != new.len() as u64 && !restore {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a new token's id is already in the database (drawn twice); issue again",
        ));
    }
    Ok(())
}

/// What every change of one transaction is written with.
struct Batch<'b> {
    /// The version the transaction takes.
    version: i64,
    /// The clock time (a tombstone's date).
    now: u64,
    /// The ids of the transaction's new tokens, and as text.
    new: &'b HashSet<[u8; 8]>,
    new_text: &'b [String],
}

/// Writes one change to existing tokens' definitions (or to what they share: owners'
/// limits, prefixes) as version `batch.version`, noting in `moved` what a catch-up read
/// before must not undo (see [`PgSink::fresh`]): only rows the statement did move, since
/// skipping a row's older state is safe only if the row is read again.
fn define(
    tx: &mut Transaction<'_>,
    st: &Statements,
    change: &ChangeRef<'_>,
    batch: &Batch<'_>,
    moved: &mut Vec<Moved>,
) -> io::Result<()> {
    let (version, now) = (batch.version, batch.now);
    let mut row_if = |count: u64, id: [u8; 8]| {
        if count > 0 {
            moved.push(Moved::Row(id));
        }
    };
    match *change {
        ChangeRef::Issue(_) | ChangeRef::Used { .. } => {}
        ChangeRef::Revoke { id, at } => {
            tx.execute(&st.revoke, &[&id_text(id), &sql_time(at), &version])
                .map_err(pg)?;
        }
        ChangeRef::Delete { id } => {
            let count = tx
                .execute(&st.delete, &[&id_text(id), &version, &sql_time(now)])
                .map_err(pg)?;
            row_if(count, id);
        }
        ChangeRef::SetRateLimit { id, limit } => {
            let count = tx
                .execute(
                    &st.limit,
                    &[
                        &id_text(id),
                        &limit.map(|l| sql_time(l.period_ms)),
                        &limit.map(|l| i64::from(l.count)),
                        &limit.map(|l| i64::from(l.burst)),
                        &version,
                    ],
                )
                .map_err(pg)?;
            row_if(count, id);
        }
        ChangeRef::Expire { id, at } => {
            tx.execute(&st.expire, &[&id_text(id), &sql_time(at), &version])
                .map_err(pg)?;
        }
        // A new token's extras went in with its row (`issue`).
        ChangeRef::Extras(ref extras) if batch.new.contains(&extras.id) => {}
        ChangeRef::Extras(ref extras) => {
            let count = tx
                .execute(
                    &st.extras,
                    &[
                        &id_text(extras.id),
                        &extras.owner.as_deref(),
                        &rows::meta_json(&extras.meta),
                        &extras.imported,
                        &version,
                    ],
                )
                .map_err(pg)?;
            row_if(count, extras.id);
        }
        ChangeRef::RevokeOwner { ref owner, at } => {
            tx.execute(
                &st.revoke_owner,
                &[owner, &sql_time(at), &version, &batch.new_text],
            )
            .map_err(pg)?;
        }
        ChangeRef::DeleteOwner { ref owner } => {
            let deleted = tx
                .query(
                    &st.delete_owner,
                    &[owner, &version, &sql_time(now), &batch.new_text],
                )
                .map_err(pg)?;
            let ids = deleted.iter().filter_map(|row| {
                let id: String = row.get(0);
                <[u8; 8]>::try_from(id.as_bytes()).ok()
            });
            moved.extend(ids.map(Moved::Row));
        }
        ChangeRef::OwnerRateLimit { ref owner, limit } => {
            tx.execute(
                &st.owner_limit,
                &[
                    owner,
                    &limit.map(|l| sql_time(l.period_ms)),
                    &limit.map(|l| i64::from(l.count)),
                    &limit.map(|l| i64::from(l.burst)),
                    &version,
                ],
            )
            .map_err(pg)?;
            moved.push(Moved::Owner(owner.clone()));
        }
        ChangeRef::Prefix(ref prefix) => {
            tx.execute(&st.prefix, &[prefix, &version]).map_err(pg)?;
        }
        // `set_credits` and `NewToken::credits` refuse a PostgreSQL store before a change
        // is made, so none reaches here.
        ChangeRef::Credits(_) | ChangeRef::NoCredits { .. } => {
            return Err(io::Error::other(
                "credits are not kept in PostgreSQL stores yet",
            ));
        }
        // A PostgreSQL store does not count (`Counter::keep_days` is 0 for it).
        ChangeRef::Usage(_) => {
            return Err(io::Error::other(
                "usage counts are not kept in PostgreSQL stores yet",
            ));
        }
    }
    Ok(())
}
