//! The public store: open, issue, validate (the hot path), revoke, delete, purge, rotate,
//! flush, close.
//!
//! Validation touches only the map and the entry's atomics; every file write belongs to the
//! persister thread (`persist`). Changes to a token's definition go through the persister
//! and return once they are on disk.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::future::{poll_fn, Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::{millis, Clock, SystemClock};
use crate::entry::{self, Entry, Touch};
use crate::error::{Error, Rejection};
use crate::file::{self, Appender, FaultPlan};
use crate::inbox::{self, Answer, Inbox, Message, Refused, Reply, Timer};
use crate::location::{database_url, redact_url};
use crate::map::{Lent, Map};
use crate::persist::{FileSink, Persister, Sink, Start};
use crate::rate_limit::RateLimit;
use crate::recover::{self, Recovered};
use crate::snapshot::BodyRef;
#[cfg(loom)]
use crate::snapshot::{self, DecodeError};
use crate::stats::{Counters, Stats};
use crate::sync::channel::{self, TrySendError};
use crate::sync::oneshot::{self, AsyncReceiver, RecvError};
use crate::sync::thread::{self, JoinHandle};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering};
use crate::token::{self, IssuedToken, TokenId};

/// How often a PostgreSQL replica polls for changes it was not notified of.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// PostgreSQL stores: how long a change waits for a row another writer holds. Longer than
/// [`DEFAULT_IDLE_IN_TRANSACTION`], so a change stuck behind a frozen writer waits for the
/// database to end that writer's session and then goes through.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL stores: how long the database keeps a session that sits in a transaction.
const DEFAULT_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);
/// The default write-behind period for `last_used`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// The name of every store's persister thread (in panics, debuggers and `top -H`).
pub(crate) const PERSISTER_THREAD: &str = "tokencache-persister";
/// The journal size below which no compaction runs (it also waits for the journal to
/// outgrow the snapshot).
const DEFAULT_COMPACTION_FLOOR: u64 = 4 << 20;
/// The default capacity of the persister's channel.
const DEFAULT_CHANNEL_CAPACITY: usize = 4096;
/// Limits on a token's definition, so a snapshot stays small and a list stays readable.
pub(crate) const MAX_NAME_LEN: usize = 256;
pub(crate) const MAX_SCOPES: usize = 64;
pub(crate) const MAX_SCOPE_LEN: usize = 128;

/// What the validation path and the persister share.
pub(crate) struct Shared {
    pub(crate) map: Map,
    /// Not part of the loom-checked protocol, and `dyn` needs std's `Arc`.
    pub(crate) clock: std::sync::Arc<dyn Clock>,
    pub(crate) inbox: Arc<Inbox>,
    /// Set when a dirty id could not be sent (channel full): the next snapshot scans all.
    pub(crate) overflow: AtomicBool,
    pub(crate) counters: Counters,
    /// PostgreSQL stores: refuse validations once the last catch-up with the database is
    /// older than this (ms); 0: never (always for a file store).
    pub(crate) max_staleness_ms: u64,
}

impl Shared {
    /// The hot path. No allocation, no lock, no I/O, and no write to memory another thread
    /// reads except `last_used` (at most once per millisecond per token) and a rate-limited
    /// token's limiter word.
    #[inline]
    fn check(&self, token: &str, scope: Option<&str>) -> Result<ValidToken<'_>, Rejection> {
        let (valid, now) = admit(&self.map, &*self.clock, token, scope)?;
        let entry = &valid.entry;
        // A plain field read when the policy is off (the default, and every file store).
        if self.max_staleness_ms != 0 && self.too_stale(now) {
            return Err(Rejection::Unavailable);
        }
        // Rate limit last: only a request that would otherwise be accepted spends quota, so
        // a revoked, expired, forged or out-of-scope request never drains a token's budget.
        if let Err(retry_after) = entry.check_rate(now) {
            return Err(Rejection::RateLimited { retry_after });
        }
        if entry.touch(now) == Touch::Send {
            self.send_dirty(entry.id);
        }
        Ok(valid)
    }

    /// Whether memory's last catch-up with the database is older than `max_staleness`.
    #[cold]
    fn too_stale(&self, now: u64) -> bool {
        // Relaxed: a time stamp read on its own; a catch-up's changes reach the entries
        // through the map, not through this word.
        let synced = self
            .counters
            .last_sync_at
            .load(std::sync::atomic::Ordering::Relaxed);
        now.saturating_sub(synced) > self.max_staleness_ms
    }

    /// Tells the persister a token became dirty, never blocking.
    #[inline]
    fn send_dirty(&self, id: TokenId) {
        match self.inbox.try_send(Message::Dirty(id)) {
            Ok(()) => {
                self.counters
                    .dirty_sends
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                // Relaxed: the persister is busy with a full channel and will read the flag
                // when it handles that batch; the entry's own flag carries the ordering.
                // A swap, not a store, though only the write matters: loom orders a plain
                // store racing the persister's `swap(false)` only partially and then reports
                // an impossible lost flag (tokio-rs/loom#254). This path is cold (channel full).
                self.overflow.swap(true, Ordering::Relaxed);
                self.counters
                    .channel_full
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // The store is closed: validation keeps working in memory.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The checks of a validation that only read: shape and checksum, digest, revocation and
/// expiry at the clock's time, then `scope`. Returns the token, lent from `map`, and the time
/// it was judged at. Writes nothing: the store's hot path and a [`StoreView`] share it.
///
/// [`StoreView`]: crate::StoreView
#[inline]
pub(crate) fn admit<'m>(
    map: &'m Map,
    clock: &dyn Clock,
    token: &str,
    scope: Option<&str>,
) -> Result<(ValidToken<'m>, u64), Rejection> {
    let id = token::parse(token).ok_or(Rejection::Malformed)?;
    // Hash before the lookup so an unknown id pays for the hash like a known one.
    let digest = token::digest(token);
    let entry = map.read(&id).ok_or(Rejection::Unknown)?;
    if !entry.digest_matches(&digest) {
        return Err(Rejection::Unknown);
    }
    let now = clock.now_ms();
    entry.verdict(now)?;
    if scope.is_some_and(|scope| !entry.has_scope(scope)) {
        return Err(Rejection::MissingScope);
    }
    Ok((ValidToken { entry }, now))
}

/// An in-memory API-token store, persisted to a snapshot file and a journal (or, with the
/// `postgres` feature, to a PostgreSQL database shared by replicas).
///
/// `TokenStore` is `Send + Sync` and cheap to clone (clones share the store). The store
/// closes when [`close`](Self::close) is called or the last clone is dropped.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("tokens.snap");
/// use tokencache::{NewToken, TokenStore};
///
/// let store = TokenStore::open(&path)?;
/// let issued = store.issue(NewToken::new("ci-bot").scopes(["read"]))?; // on disk now
/// let token = store.validate(issued.secret())?;                         // lock-free
/// assert!(token.has_scope("read"));
/// drop(token); // it borrows the store
/// store.revoke(&issued.id())?;
/// assert!(store.validate(issued.secret()).is_err());
/// store.close()?;
/// # Ok(()) }
/// ```
///
/// # Async calls
///
/// Each call that changes the store has an async twin ([`issue_async`](Self::issue_async),
/// [`revoke_async`](Self::revoke_async), ..., [`close_async`](Self::close_async)) with the
/// same results and errors. Its future works with any executor and never waits on the
/// thread polling it (but for `close_async`'s brief final join; see there):
///
/// - The call itself checks its input and prepares the change (as the blocking call does
///   before it queues anything; no I/O, no waiting). Invalid input is the future's error.
/// - The first poll queues the change for the persister thread, which does all the work,
///   exactly as for the blocking call. If the persister's channel is full (it is behind),
///   the future returns `Pending` and is woken as soon as the persister takes a message.
/// - The future then waits for the persister's one-shot reply, the same one a blocking call
///   waits on, and is woken by it once the change is on disk.
///
/// Dropping the future before its first poll queues nothing. Dropping it later does not
/// cancel the change: once queued, the persister carries it out and makes it durable, and
/// only the outcome goes unheard (call [`flush`](Self::flush) or
/// [`flush_async`](Self::flush_async) to know it is on disk). A revoke whose future was
/// dropped still revokes; an issue whose future was dropped creates a token whose secret
/// nobody has (revoke or delete it by id, from [`list`](Self::list)).
///
/// The futures borrow the store (`close_async` takes it, as `close` does) and are `Send`.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("tokens.snap");
/// use tokencache::{NewToken, TokenStore};
///
/// # let runtime = tokio::runtime::Builder::new_current_thread().build()?;
/// # runtime.block_on(async {
/// let store = TokenStore::open(&path)?;
/// let issued = store.issue_async(NewToken::new("ci-bot")).await?; // on disk now
/// store.revoke_async(&issued.id()).await?;
/// store.close_async().await?;
/// # Ok::<_, tokencache::Error>(()) })?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenStore {
    handle: Arc<Handle>,
}

/// The owner of the persister thread and the file lock; closing happens when it drops.
struct Handle {
    shared: Arc<Shared>,
    path: PathBuf,
    shutdown: Mutex<Shutdown>,
    lock: Mutex<Option<File>>,
}

/// Where the store is in its life.
enum Shutdown {
    /// The persister runs.
    Running(JoinHandle<()>),
    /// One close is under way; each of these later closes hears its outcome.
    Closing(Vec<oneshot::Sender<Result<(), Error>>>),
    /// A close finished with this outcome; every later close reports it too.
    Done(Result<(), Error>),
}

/// What a close finds when it starts.
enum Claim {
    /// The persister runs: this close stops it.
    Closer(JoinHandle<()>),
    /// Another close is under way: its outcome arrives here.
    Wait(oneshot::Receiver<Result<(), Error>>),
    /// The store is closed, with this outcome.
    Closed(Result<(), Error>),
}

impl TokenStore {
    /// Opens the store at `path` with default settings, creating an empty one if the file
    /// does not exist. See [`TokenStore::builder`] for the settings.
    pub fn open(path: impl AsRef<Path>) -> Result<TokenStore, Error> {
        TokenStore::builder(path).open()
    }

    /// A builder to open the store at `path` with non-default settings.
    pub fn builder(path: impl AsRef<Path>) -> Builder {
        Builder {
            path: path.as_ref().to_path_buf(),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            clock: std::sync::Arc::new(SystemClock),
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            retention: None,
            compaction_floor: DEFAULT_COMPACTION_FLOOR,
            faults: None,
            max_staleness: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            idle_in_transaction_timeout: DEFAULT_IDLE_IN_TRANSACTION,
            migrate_schema: true,
        }
    }

    /// Checks a token: shape and checksum, digest, revocation, expiry, then its rate limit
    /// (only a request that passes every other check spends quota). On success records the
    /// use in `last_used` (written to disk by the next snapshot).
    ///
    /// This is the hot path: it does not allocate, block or do I/O.
    #[inline]
    pub fn validate(&self, token: &str) -> Result<ValidToken<'_>, Rejection> {
        self.counted(self.handle.shared.check(token, None))
    }

    /// Like [`validate`](Self::validate), and also requires the token to grant `scope`
    /// (otherwise [`Rejection::MissingScope`], and `last_used` is not updated).
    #[inline]
    pub fn validate_scope(&self, token: &str, scope: &str) -> Result<ValidToken<'_>, Rejection> {
        self.counted(self.handle.shared.check(token, Some(scope)))
    }

    #[inline]
    fn counted<'a>(
        &self,
        result: Result<ValidToken<'a>, Rejection>,
    ) -> Result<ValidToken<'a>, Rejection> {
        let counters = &self.handle.shared.counters;
        match &result {
            Ok(_) => counters.accepted(),
            Err(rejection) => counters.rejected(rejection),
        }
        result
    }

    /// Issues a new token. It is on disk when this returns; the secret is in the returned
    /// [`IssuedToken`] only and cannot be shown again.
    ///
    /// The write is one journal record of this token (about 100 bytes) and one fsync,
    /// whatever the store's size; concurrent callers share one record and one fsync. To
    /// create many tokens at once, use [`issue_many`](Self::issue_many).
    pub fn issue(&self, new: NewToken) -> Result<IssuedToken, Error> {
        self.commit(self.issuing(vec![new]).map(Change::only))
    }

    /// Issues several tokens with one durable write: all of them are on disk when this
    /// returns, or (on error) none of them exists. Returns them in request order.
    pub fn issue_many(
        &self,
        requests: impl IntoIterator<Item = NewToken>,
    ) -> Result<Vec<IssuedToken>, Error> {
        self.commit(self.issuing(requests.into_iter().collect()))
    }

    /// Checks `requests` and prepares their issue: new ids and secrets, the entries.
    fn issuing(
        &self,
        requests: Vec<NewToken>,
    ) -> Result<Change<impl FnOnce(usize) -> Vec<IssuedToken>>, Error> {
        let shared = &self.handle.shared;
        let now = shared.clock.now_ms();
        let mut issued = Vec::new();
        let mut entries = Vec::new();
        let mut drawn = HashSet::new();
        for new in requests {
            new.check()?;
            let (secret, id) = self.fresh_id(&drawn)?;
            drawn.insert(id);
            let expires_at = new.expires_in.map(|d| now.saturating_add(millis(d)));
            entries.push(Entry::new(
                id,
                token::digest(&secret),
                entry::pack_text(&new.name, &new.scopes),
                now,
                expires_at,
                new.rate_limit,
            ));
            issued.push(IssuedToken { secret, id });
        }
        let finish = move |_| issued;
        if entries.is_empty() {
            return Ok(Change::done(finish));
        }
        Ok(Change::new(|reply| Message::Issue(entries, reply), finish))
    }

    /// Revokes a token. It is on disk when this returns, and every later validation says
    /// [`Rejection::Revoked`]. Revoking a revoked token keeps its first revocation time.
    ///
    /// If the write fails the token is still revoked in memory (the safe side), the error
    /// is returned, and the next tick retries; calling `revoke` again is harmless.
    pub fn revoke(&self, id: &TokenId) -> Result<(), Error> {
        self.commit(Ok(revoking(id)))
    }

    /// Deletes a token. It is gone from the file when this returns: later validations say
    /// [`Rejection::Unknown`], [`get`](Self::get) says `None`, and its memory is freed once
    /// no validation still holds it. An unknown id is [`Error::UnknownId`].
    ///
    /// If the write fails the token is already gone from memory (the safe side, as with
    /// [`revoke`](Self::revoke)), the error is returned, and the next tick retries.
    pub fn delete(&self, id: &TokenId) -> Result<(), Error> {
        self.commit(Ok(deleting(id)))
    }

    /// Deletes every token revoked or expired more than `age` ago, durably, and returns
    /// how many. `purge(Duration::ZERO)` deletes every revoked or expired token.
    /// [`Builder::retention`] makes the persister do this on its own.
    pub fn purge(&self, age: Duration) -> Result<usize, Error> {
        self.commit(Ok(self.purging(age)))
    }

    /// Prepares a purge of what was revoked or expired more than `age` before now.
    fn purging(&self, age: Duration) -> Change<impl FnOnce(usize) -> usize> {
        let now = self.handle.shared.clock.now_ms();
        let cutoff = now.saturating_sub(millis(age));
        Change::new(|reply| Message::Purge(cutoff, reply), |purged| purged)
    }

    /// Issues a new token with the same name, scopes and rate limit as token `id` (and the
    /// same lifetime, if it had one), and makes the old one expire at the earlier of its own
    /// expiry and now + `grace`, both in one durable write. Returns the new token; its
    /// secret is shown only here. Clients switch to it within `grace`. A revoked or expired
    /// token is not rotated ([`Error::InvalidRequest`]): a replacement would restore the
    /// access that ended.
    ///
    /// The lifetime passed on is the old token's expiry minus its creation as they stand, so
    /// a token rotated a second time, after the first rotation shortened its expiry, passes
    /// on that shortened lifetime: rotate the replacement instead.
    pub fn rotate(&self, id: &TokenId, grace: Duration) -> Result<IssuedToken, Error> {
        self.commit(self.rotating(id, grace))
    }

    /// Checks that token `id` may be rotated and prepares its replacement.
    fn rotating(
        &self,
        id: &TokenId,
        grace: Duration,
    ) -> Result<Change<impl FnOnce(usize) -> IssuedToken>, Error> {
        let shared = &self.handle.shared;
        let now = shared.clock.now_ms();
        let template = shared.map.with(id, |old| {
            refuse_rotation(old, now)?;
            let lifetime = old.expires_at().map(|at| at.saturating_sub(old.created_at));
            Ok::<_, Error>((old.text().into(), lifetime, old.rate_limit()))
        });
        let (text, lifetime, rate_limit): (Box<str>, Option<u64>, _) =
            template.ok_or(Error::UnknownId(*id))??;
        let (secret, new_id) = self.fresh_id(&HashSet::new())?;
        let expires_at = lifetime.map(|l| now.saturating_add(l));
        let new = Box::new(Entry::new(
            new_id,
            token::digest(&secret),
            text,
            now,
            expires_at,
            rate_limit,
        ));
        let until = now.saturating_add(millis(grace));
        let message = |reply| Message::Rotate {
            old: *id,
            until,
            new,
            reply,
        };
        Ok(Change::new(message, move |_| IssuedToken {
            secret,
            id: new_id,
        }))
    }

    /// Sets (`Some`) or removes (`None`) a token's rate limit. It is on disk when this
    /// returns, and validations that start afterwards use it. The new limit starts with a
    /// full burst: the quota spent under the old one is forgotten.
    ///
    /// A limit that cannot work (a count or burst of 0...) is refused with
    /// [`Error::InvalidRateLimit`] before anything changes; an unknown id with
    /// [`Error::UnknownId`]. If the write fails the new limit is already in force in memory
    /// (as with [`revoke`](Self::revoke)), the error is returned, and the next tick retries.
    pub fn set_rate_limit(&self, id: &TokenId, limit: Option<RateLimit>) -> Result<(), Error> {
        self.commit(limiting(id, limit))
    }

    /// A new secret and an id that neither the map nor `drawn` holds.
    fn fresh_id(&self, drawn: &HashSet<TokenId>) -> Result<(String, TokenId), Error> {
        loop {
            let (secret, id) = token::generate().map_err(|e| Error::Random(e.to_string()))?;
            if !self.handle.shared.map.contains(&id) && !drawn.contains(&id) {
                return Ok((secret, id));
            }
        }
    }

    /// A token's details, without its secret.
    pub fn get(&self, id: &TokenId) -> Option<TokenInfo> {
        self.handle.shared.map.with(id, TokenInfo::of)
    }

    /// Every token's details, oldest first (revoked and expired ones included).
    pub fn list(&self) -> Vec<TokenInfo> {
        TokenInfo::all(&self.handle.shared.map)
    }

    /// Returns once everything observed before the call (every `last_used` this thread
    /// could see) is on disk. Writes nothing if nothing changed.
    pub fn flush(&self) -> Result<(), Error> {
        self.commit(Ok(flushing()))
    }

    /// Flushes, stops the persister and releases the file lock, reporting any error.
    ///
    /// Other clones of this handle keep validating in memory but can no longer change the
    /// store. Dropping the last clone closes the store too (logging errors instead).
    pub fn close(self) -> Result<(), Error> {
        self.handle.shutdown().0
    }

    /// The store's counters: validations, rejections by reason, journal records, snapshots
    /// and bytes written, write errors. Counts dirty tokens by scanning, so it costs O(tokens).
    pub fn stats(&self) -> Stats {
        let shared = &self.handle.shared;
        let (tokens, dirty) = shared.map.with_all(|entries| {
            let dirty = entries.iter().filter(|e| e.is_dirty()).count();
            (entries.len(), dirty)
        });
        shared.counters.read(tokens, dirty, shared.clock.now_ms())
    }

    /// What the persister and the other threads of this store share.
    #[cfg(all(feature = "postgres", not(loom)))]
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.handle.shared.clone()
    }

    /// The store file's path (for a PostgreSQL store, its URL with the password redacted).
    pub fn path(&self) -> &Path {
        &self.handle.path
    }

    /// Queues `change` for the persister and waits, blocking, for its answer.
    fn commit<T>(
        &self,
        change: Result<Change<impl FnOnce(usize) -> T>, Error>,
    ) -> Result<T, Error> {
        let (request, finish) = change?.split();
        let touched = match request {
            Some((message, answer)) => self.handle.ask(message, answer)?,
            None => 0,
        };
        Ok(finish(touched))
    }

    /// Like [`commit`](Self::commit), as a future that queues on its first poll and is woken
    /// by the persister (never blocking).
    async fn commit_async<T>(
        &self,
        change: Result<Change<impl FnOnce(usize) -> T>, Error>,
    ) -> Result<T, Error> {
        let (request, finish) = change?.split();
        let touched = match request {
            Some((message, answer)) => self.handle.ask_async(message, answer).await?,
            None => 0,
        };
        Ok(finish(touched))
    }
}

/// The async twins of the calls that change the store: the same checks, the same change
/// made by the persister thread, the same results and errors. See
/// [Async calls](TokenStore#async-calls) for how they wait and what dropping one does.
impl TokenStore {
    /// [`issue`](Self::issue), as a future (see [Async calls](Self#async-calls)).
    pub fn issue_async(
        &self,
        new: NewToken,
    ) -> impl Future<Output = Result<IssuedToken, Error>> + Send + '_ {
        self.commit_async(self.issuing(vec![new]).map(Change::only))
    }

    /// [`issue_many`](Self::issue_many), as a future (see [Async calls](Self#async-calls)).
    /// `requests` is read by the call, not by the future.
    pub fn issue_many_async(
        &self,
        requests: impl IntoIterator<Item = NewToken>,
    ) -> impl Future<Output = Result<Vec<IssuedToken>, Error>> + Send + '_ {
        self.commit_async(self.issuing(requests.into_iter().collect()))
    }

    /// [`revoke`](Self::revoke), as a future (see [Async calls](Self#async-calls)).
    pub fn revoke_async(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.commit_async(Ok(revoking(id)))
    }

    /// [`delete`](Self::delete), as a future (see [Async calls](Self#async-calls)).
    pub fn delete_async(
        &self,
        id: &TokenId,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.commit_async(Ok(deleting(id)))
    }

    /// [`purge`](Self::purge), as a future (see [Async calls](Self#async-calls)). `age` is
    /// counted back from the call.
    pub fn purge_async(
        &self,
        age: Duration,
    ) -> impl Future<Output = Result<usize, Error>> + Send + '_ {
        self.commit_async(Ok(self.purging(age)))
    }

    /// [`rotate`](Self::rotate), as a future (see [Async calls](Self#async-calls)). The call
    /// checks that the token may be rotated; the persister checks again, as for `rotate`.
    pub fn rotate_async(
        &self,
        id: &TokenId,
        grace: Duration,
    ) -> impl Future<Output = Result<IssuedToken, Error>> + Send + '_ {
        self.commit_async(self.rotating(id, grace))
    }

    /// [`set_rate_limit`](Self::set_rate_limit), as a future (see
    /// [Async calls](Self#async-calls)).
    pub fn set_rate_limit_async(
        &self,
        id: &TokenId,
        limit: Option<RateLimit>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.commit_async(limiting(id, limit))
    }

    /// [`flush`](Self::flush), as a future (see [Async calls](Self#async-calls)): ready once
    /// everything observed before the call is on disk.
    pub fn flush_async(&self) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.commit_async(Ok(flushing()))
    }

    /// [`close`](Self::close), as a future (see [Async calls](Self#async-calls)).
    ///
    /// The first poll shuts the store to new changes and queues the persister's last batch;
    /// the future is woken once the persister has written what was pending and answered.
    /// Then it joins the persister thread on the polling thread: the thread has finished its
    /// work by then and only has to exit, so the join is brief. It releases the file lock
    /// last, as `close` does.
    ///
    /// If another close is under way, the future waits for that one (without blocking) and
    /// returns its outcome. Dropped after its first poll and before it is ready, it finishes
    /// the close on the dropping thread, blocking until the persister's final write is done,
    /// so the store never stays half-closed. Dropped unpolled, it drops the handle it took,
    /// which closes the store (blocking) if it was the last one, as dropping any last handle
    /// does.
    #[allow(
        clippy::manual_async_fn,
        reason = "the signature promises a `Send + 'static` future"
    )]
    pub fn close_async(self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        async move { self.handle.shutdown_async().await }
    }
}

/// A change checked and built for the persister, not yet queued: its message (which holds
/// the reply), where the reply is heard, and how the call's result follows from the
/// persister's count of tokens touched. A blocking call and its async twin build the same
/// `Change` and differ only in how they queue it and wait.
struct Change<F> {
    /// `None`: nothing to ask the persister (`issue_many` of no tokens).
    request: Option<(Message, Answer)>,
    finish: F,
}

impl<T, F: FnOnce(usize) -> T> Change<F> {
    /// A change `message` describes; `finish` turns the count into the call's result.
    fn new(message: impl FnOnce(Reply) -> Message, finish: F) -> Change<F> {
        let (reply, answer) = inbox::reply();
        Change {
            request: Some((message(reply), answer)),
            finish,
        }
    }

    /// Nothing to do: the result is `finish(0)`.
    fn done(finish: F) -> Change<F> {
        Change {
            request: None,
            finish,
        }
    }

    fn split(self) -> (Option<(Message, Answer)>, F) {
        (self.request, self.finish)
    }
}

impl<F: FnOnce(usize) -> Vec<IssuedToken>> Change<F> {
    /// An issue of one token: its result is that token.
    fn only(self) -> Change<impl FnOnce(usize) -> IssuedToken> {
        let Change { request, finish } = self;
        Change {
            request,
            // `issuing` returns one token per request, or an error.
            finish: move |touched| finish(touched).remove(0),
        }
    }
}

/// Prepares the revocation of token `id`.
fn revoking(id: &TokenId) -> Change<impl FnOnce(usize)> {
    Change::new(|reply| Message::Revoke(*id, reply), drop)
}

/// Prepares the deletion of token `id`.
fn deleting(id: &TokenId) -> Change<impl FnOnce(usize)> {
    Change::new(|reply| Message::Delete(*id, reply), drop)
}

/// Checks `limit` and prepares setting it (or, `None`, removing token `id`'s limit).
fn limiting(id: &TokenId, limit: Option<RateLimit>) -> Result<Change<impl FnOnce(usize)>, Error> {
    if let Some(limit) = &limit {
        limit.check()?;
    }
    Ok(Change::new(
        |reply| Message::SetRateLimit(*id, limit, reply),
        drop,
    ))
}

/// Prepares a flush.
fn flushing() -> Change<impl FnOnce(usize)> {
    Change::new(Message::Flush, drop)
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.handle.path)
            .field("tokens", &self.handle.shared.map.len())
            .finish()
    }
}

impl Handle {
    /// Stops the persister (which writes what is pending) and releases the lock.
    ///
    /// Every call returns the outcome of the one close that ran: a concurrent caller waits
    /// for it, so no caller reports a flush it did not see through, and a close after the
    /// persister died reports that. `first` says whether this call did the closing.
    fn shutdown(&self) -> (Result<(), Error>, bool) {
        #[cfg(loom)]
        if crate::sync::bug::planted(crate::sync::bug::Bug::CloseWithoutWaiting) {
            return self.shutdown_without_waiting();
        }
        match self.claim() {
            Claim::Closer(persister) => {
                let result = self.stop(persister);
                self.closed(result.clone());
                (result, true)
            }
            Claim::Wait(outcome) => (self.waited(outcome.recv()), false),
            Claim::Closed(result) => (result, false),
        }
    }

    /// [`shutdown`](Self::shutdown) without blocking, but for the brief join of a thread
    /// that has finished its work (see [`TokenStore::close_async`]).
    async fn shutdown_async(&self) -> Result<(), Error> {
        match self.claim() {
            Claim::Closer(persister) => Closing::new(self, persister).run().await,
            Claim::Wait(outcome) => self.waited(outcome.await),
            Claim::Closed(result) => result,
        }
    }

    /// Starts a close: this one stops the persister, or waits for the one under way, or
    /// reports the outcome of the one that ran. The lock is held only for the look.
    fn claim(&self) -> Claim {
        let mut state = self.shutdown.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *state, Shutdown::Closing(Vec::new())) {
            Shutdown::Running(persister) => Claim::Closer(persister),
            Shutdown::Closing(mut waiting) => {
                let (tell, outcome) = oneshot::channel();
                waiting.push(tell);
                *state = Shutdown::Closing(waiting);
                Claim::Wait(outcome)
            }
            Shutdown::Done(result) => {
                *state = Shutdown::Done(result.clone());
                Claim::Closed(result)
            }
        }
    }

    /// The close under way ended with `result`: later closes report it, waiting ones hear it.
    fn closed(&self, result: Result<(), Error>) {
        let mut state = self.shutdown.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = match std::mem::replace(&mut *state, Shutdown::Done(result.clone())) {
            Shutdown::Closing(waiting) => waiting,
            _ => Vec::new(),
        };
        drop(state);
        for tell in waiting {
            let _ = tell.send(result.clone());
        }
    }

    /// What a close that waited for another heard. The closer always tells its outcome (if
    /// its caller goes away, [`Closing`]'s `Drop` finishes and tells), so silence means
    /// the closing thread panicked.
    fn waited(&self, outcome: Result<Result<(), Error>, RecvError>) -> Result<(), Error> {
        outcome.unwrap_or_else(|_| Err(self.died()))
    }

    /// Broken twin of [`shutdown`](Self::shutdown) (loom only): takes the persister under a
    /// short lock, so a second caller finds it gone and reports success at once, before the
    /// first caller's final snapshot is written.
    #[cfg(loom)]
    fn shutdown_without_waiting(&self) -> (Result<(), Error>, bool) {
        let mut state = self.shutdown.lock().unwrap_or_else(|e| e.into_inner());
        let taken = std::mem::replace(&mut *state, Shutdown::Done(Ok(())));
        drop(state);
        match taken {
            Shutdown::Running(persister) => (self.stop(persister), true),
            Shutdown::Closing(_) | Shutdown::Done(_) => (Ok(()), false),
        }
    }

    /// Queues `message` for the persister and waits, blocking, for its answer.
    fn ask(&self, message: Message, answer: Answer) -> Result<usize, Error> {
        let inbox = &self.shared.inbox;
        inbox.request(message).map_err(|r| self.refused(r))?;
        self.answered(answer.recv())
    }

    /// [`ask`](Self::ask) as a future: queues on its first poll, waits for room in a full
    /// channel and for the answer without blocking.
    async fn ask_async(&self, message: Message, answer: Answer) -> Result<usize, Error> {
        let (inbox, mut message) = (&self.shared.inbox, Some(message));
        poll_fn(|cx| inbox.poll_request(&mut message, cx.waker()))
            .await
            .map_err(|r| self.refused(r))?;
        self.answered(answer.await)
    }

    /// Has the persister write what is pending and stop, waits for its thread, and releases
    /// the lock.
    fn stop(&self, persister: JoinHandle<()>) -> Result<(), Error> {
        let (reply, answer) = inbox::reply();
        let queued = self.shared.inbox.shut(Message::Shutdown(reply));
        let result = self.stopped(queued, || answer.recv());
        self.release(persister);
        result
    }

    /// The outcome of a close, from whether `Shutdown` was queued and, if it was, the
    /// persister's answer.
    fn stopped(
        &self,
        queued: Result<(), Refused>,
        answer: impl FnOnce() -> Result<Result<usize, Error>, RecvError>,
    ) -> Result<(), Error> {
        match queued {
            Ok(()) => self.answered(answer()).map(drop),
            Err(_) => Err(self.died()),
        }
    }

    /// Waits for the persister thread to end (after its last batch) and releases the lock.
    fn release(&self, persister: JoinHandle<()>) {
        // The thread catches its own panic, so joining only waits for it to end.
        let _ = persister.join();
        // Dropping the file releases the OS lock.
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// The persister's answer to a queued request.
    fn answered(&self, answer: Result<Result<usize, Error>, RecvError>) -> Result<usize, Error> {
        // A queued request is always answered unless the persister died: the gate keeps
        // requests from queueing behind `Shutdown`, and a dead persister drops its queue.
        answer.unwrap_or_else(|_| Err(self.died()))
    }

    /// The error for a request the inbox refused.
    fn refused(&self, refused: Refused) -> Error {
        match refused {
            Refused::Closed => Error::Closed {
                path: self.path.clone(),
            },
            Refused::Dead => self.died(),
        }
    }

    fn died(&self) -> Error {
        Error::PersisterDied {
            path: self.path.clone(),
        }
    }
}

/// The async close that stops the persister ([`TokenStore::close_async`]): queues
/// `Shutdown`, awaits the answer, then joins the thread and releases the lock.
///
/// If the future holding it is dropped before the end, `Drop` finishes the close on the
/// dropping thread (blocking until the persister's final write), so the store is never left
/// half-closed and the closes waiting for this one hear its outcome.
struct Closing<'a> {
    handle: &'a Handle,
    /// Taken when the close ends.
    persister: Option<JoinHandle<()>>,
    /// `Shutdown`, until it is queued.
    shutdown: Option<Message>,
    answer: AsyncReceiver<Result<usize, Error>>,
}

impl<'a> Closing<'a> {
    fn new(handle: &'a Handle, persister: JoinHandle<()>) -> Closing<'a> {
        let (reply, answer) = inbox::reply();
        Closing {
            handle,
            persister: Some(persister),
            shutdown: Some(Message::Shutdown(reply)),
            answer: answer.into_future(),
        }
    }

    async fn run(mut self) -> Result<(), Error> {
        let inbox = &self.handle.shared.inbox;
        let queued = poll_fn(|cx| inbox.poll_shut(&mut self.shutdown, cx.waker())).await;
        let answer = match queued {
            Ok(()) => Some((&mut self.answer).await),
            Err(_) => None,
        };
        let result = self
            .handle
            .stopped(queued, || answer.unwrap_or(Err(RecvError)));
        self.end(result)
    }

    /// Joins the thread, releases the lock and reports `result` to the waiting closes.
    fn end(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        if let Some(persister) = self.persister.take() {
            self.handle.release(persister);
        }
        self.handle.closed(result.clone());
        result
    }
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        if self.persister.is_none() {
            return; // ended
        }
        let queued = match self.shutdown.take() {
            Some(shutdown) => self.handle.shared.inbox.shut(shutdown),
            None => Ok(()),
        };
        if let Some(persister) = self.persister.take() {
            self.handle.release(persister);
        }
        // The thread has ended, so the answer was sent, or dropped with the queue.
        let answer =
            || match Pin::new(&mut self.answer).poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(answer) => answer,
                Poll::Pending => Err(RecvError),
            };
        let result = self.handle.stopped(queued, answer);
        if let Err(e) = self.end(result) {
            tracing::error!(file = %self.handle.path.display(), error = %e, "closing the token store after its close_async future was dropped failed");
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let (Err(e), true) = self.shutdown() {
            tracing::error!(file = %self.path.display(), error = %e, "closing the token store on drop failed");
        }
    }
}

/// Settings for opening a [`TokenStore`]; from [`TokenStore::builder`].
#[must_use]
pub struct Builder {
    pub(crate) path: PathBuf,
    pub(crate) flush_interval: Duration,
    pub(crate) clock: std::sync::Arc<dyn Clock>,
    channel_capacity: usize,
    retention: Option<Duration>,
    compaction_floor: u64,
    faults: Option<FaultPlan>,
    pub(crate) max_staleness: Option<Duration>,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) poll_interval: Duration,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) lock_timeout: Duration,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) idle_in_transaction_timeout: Duration,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) migrate_schema: bool,
}

impl Builder {
    /// The write-behind period: `last_used` changes reach disk at most once per interval
    /// (default 60 s). Issues and revocations are written at once regardless.
    pub fn flush_interval(mut self, interval: Duration) -> Builder {
        self.flush_interval = interval;
        self
    }

    /// The clock for timestamps and deadlines (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Builder {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// Capacity of the channel that carries dirty token ids to the persister (default
    /// 4096). When it is full, validations set a flag instead of blocking, and the next
    /// snapshot scans every token.
    pub fn channel_capacity(mut self, capacity: usize) -> Builder {
        self.channel_capacity = capacity.max(1);
        self
    }

    /// Makes the persister delete tokens revoked or expired more than `age` ago, checking on
    /// each timed tick (once per [`flush_interval`](Self::flush_interval)). Default: keep
    /// every token until [`TokenStore::delete`] or [`TokenStore::purge`].
    pub fn retention(mut self, age: Duration) -> Builder {
        self.retention = Some(age);
        self
    }

    /// Tests only: inject write faults into this store's file writes (see
    /// [`FaultPlan`](crate::__fault::FaultPlan)). Not for production use.
    #[doc(hidden)]
    pub fn fault_plan(mut self, plan: crate::__fault::FaultPlan) -> Builder {
        self.faults = Some(plan);
        self
    }

    /// Compacts (writes a full snapshot and starts an empty journal) once the journal is
    /// larger than both the snapshot and `bytes` (default 4 MiB), checking once per
    /// [`flush_interval`](Self::flush_interval). Compaction also runs on close.
    pub fn compaction_floor(mut self, bytes: u64) -> Builder {
        self.compaction_floor = bytes;
        self
    }

    /// PostgreSQL stores only (a file store ignores it): refuse every validation with
    /// [`Rejection::Unavailable`] once this replica's last successful catch-up with the
    /// database is older than `staleness` (it is back as soon as a catch-up succeeds).
    /// Default: keep serving from memory however stale it gets; [`TokenStore::stats`]
    /// (`replica_lag`) and the log say how stale. See `docs/REPLICAS.md`.
    ///
    /// A healthy idle replica catches up once per [`poll_interval`](Self::poll_interval),
    /// so `staleness` must be at least twice the poll interval: `open` refuses a smaller
    /// one with [`Error::InvalidSetting`] (it would refuse good tokens on a healthy database).
    pub fn max_staleness(mut self, staleness: Duration) -> Builder {
        self.max_staleness = Some(staleness);
        self
    }

    /// PostgreSQL stores only (a file store ignores it): how often a replica reads the
    /// changes committed since its last look even when no notification came (default 1 s).
    /// A lost notification delays a change by at most this.
    pub fn poll_interval(mut self, interval: Duration) -> Builder {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// PostgreSQL stores only (a file store ignores it): how long a change waits for a row
    /// lock another writer holds (PostgreSQL's `lock_timeout`; default 10 s) before it fails
    /// with an error, as with the database down. Writers of definitions take the version
    /// counter's row one at a time, so a writer stuck in its transaction (a paused VM, a
    /// partition) would otherwise block every change on every replica. Keep it above
    /// [`idle_in_transaction_timeout`](Self::idle_in_transaction_timeout): then a change
    /// behind a frozen writer waits for the database to end that writer's session and goes
    /// through. `Duration::ZERO` waits forever.
    pub fn lock_timeout(mut self, timeout: Duration) -> Builder {
        self.lock_timeout = timeout;
        self
    }

    /// PostgreSQL stores only (a file store ignores it): the database ends this replica's
    /// session when it sits inside a transaction this long (PostgreSQL's
    /// `idle_in_transaction_session_timeout`; default 5 s), releasing its locks, so a
    /// replica frozen between its `UPDATE` of the counter and its `COMMIT` blocks the
    /// others for at most this long. Its transaction then fails (its callers hear an
    /// error, and a revoke, delete or rate limit is written again). `Duration::ZERO`: never.
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> Builder {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// PostgreSQL stores only (a file store ignores it): whether `open` may create the
    /// schema or upgrade an older one (default `true`). With `false` (a read-only tool
    /// such as the CLI's `list`) no DDL runs: a database without the schema, or with an
    /// older one, is refused with an error saying how to migrate it.
    pub fn migrate_schema(mut self, migrate: bool) -> Builder {
        self.migrate_schema = migrate;
        self
    }

    /// Opens the store: resolves the path (a symlink means the file it points to), takes
    /// the lock, reads and checks the store file and its journal and replays the journal
    /// (refusing, with every file untouched, anything damaged but a torn last record),
    /// then sets a torn tail aside, removes temp files a crash of this store left, and
    /// starts the persister. A new store gets an empty store file and journal.
    ///
    /// A path that is a PostgreSQL URL (`postgres://` or `postgresql://`) opens a store
    /// whose system of record is that database instead (feature `postgres`; see
    /// `docs/REPLICAS.md`). No file is touched, and any number of stores may open it.
    pub fn open(mut self) -> Result<TokenStore, Error> {
        if let Some(url) = database_url(&self.path).map(str::to_owned) {
            return self.open_database(url);
        }
        self.max_staleness = None;
        let path = file::resolve(&self.path)?;
        let lock = file::lock(&path)?;
        let recovered = recover::read(&path)?;
        // Only now that every file was read and checked, and under the lock, so no live
        // writer of this store owns a temp file and a refused store loses no byte.
        let journal_path = file::journal_path(&path);
        let mut journal = None;
        if let Some(read) = &recovered.journal {
            if read.torn {
                let aside = file::cut_torn_tail(&path, read.valid_len, read.file_len)?;
                tracing::warn!(journal = %journal_path.display(), kept = read.valid_len, set_aside = %aside.display(), "the journal ended in a torn record (a crash during a write that was never acknowledged); its bytes were set aside and cut off");
            }
            if !read.stale {
                journal = Some(
                    Appender::open(&journal_path, read.valid_len)
                        .map_err(|e| Error::io("open the journal", &journal_path, e))?,
                );
            }
        }
        let removed = file::remove_stale_temps(&path);
        if removed > 0 {
            tracing::info!(file = %path.display(), removed, "removed temp files left by a crash");
        }
        if recovered.replayed > 0 {
            tracing::info!(file = %path.display(), records = recovered.replayed, "replayed the journal");
        }
        let sink = Box::new(FileSink::new(path.clone(), journal, self.faults.clone()));
        self.start(path, recovered, sink, Some(lock), None)
    }

    /// Opens the PostgreSQL store at `url`.
    #[cfg(all(feature = "postgres", not(loom)))]
    fn open_database(self, url: String) -> Result<TokenStore, Error> {
        crate::pg::open(self, url)
    }

    /// Without the `postgres` feature, a database URL is refused (it is no file path).
    #[cfg(not(all(feature = "postgres", not(loom))))]
    fn open_database(self, url: String) -> Result<TokenStore, Error> {
        Err(Error::BadPath {
            path: redact_url(&url).into(),
            reason: "a PostgreSQL URL needs tokencache built with the `postgres` feature",
        })
    }

    /// Builds the in-memory store from `recovered`, writes a snapshot first if the store
    /// file or a usable journal is missing, and spawns the persister.
    pub(crate) fn start(
        self,
        path: PathBuf,
        recovered: Recovered,
        mut sink: Box<dyn Sink>,
        lock: Option<File>,
        synced_at: Option<u64>,
    ) -> Result<TokenStore, Error> {
        let (tx, rx) = channel::bounded(self.channel_capacity);
        let Recovered {
            map, snapshot, seq, ..
        } = recovered;
        let shared = Arc::new(Shared {
            map,
            clock: self.clock,
            inbox: Arc::new(Inbox::new(tx)),
            overflow: AtomicBool::new(false),
            counters: Counters::default(),
            max_staleness_ms: self.max_staleness.map_or(0, |d| millis(d).max(1)),
        });
        if let Some(synced) = synced_at {
            // Relaxed: see `too_stale`.
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            shared.counters.last_sync_at.store(synced, relaxed);
        }
        let mut snapshot_len = snapshot.map_or(0, |s| s.len);
        let file_store = sink.compaction_holds_definitions();
        if file_store && (snapshot_len == 0 || !sink.journal_ok()) {
            snapshot_len = first_snapshot(&shared, sink.as_mut(), seq, &path)?;
        }
        let persister = Persister::new(
            shared.clone(),
            rx,
            sink,
            Start {
                interval: self.flush_interval,
                retention: self.retention,
                compaction_floor: self.compaction_floor,
                snapshot_len,
                seq,
            },
        );
        let thread = thread::Builder::new()
            .name(PERSISTER_THREAD.into())
            .spawn(move || persister.run())
            .map_err(|e| Error::io("start the persister thread for", &path, e))?;
        shared.clock.attach(Timer::new(shared.inbox.clone()));
        Ok(TokenStore {
            handle: Arc::new(Handle {
                shared,
                path,
                shutdown: Mutex::new(Shutdown::Running(thread)),
                lock: Mutex::new(lock),
            }),
        })
    }
}

/// Writes a snapshot of everything `shared` holds as covering record `seq`, with a fresh
/// journal after it: a new store's first files, or a journal that could not take the next
/// record. Returns the snapshot's size.
fn first_snapshot(
    shared: &Shared,
    sink: &mut dyn Sink,
    seq: u64,
    path: &Path,
) -> Result<u64, Error> {
    let now = shared.clock.now_ms();
    let compacted = shared.map.with_all(|entries| {
        let records: Vec<_> = entries
            .iter()
            .map(|e| e.record(e.persisted_last_used()))
            .collect();
        sink.compact(&BodyRef {
            written_at: now,
            seq,
            records: &records,
        })
    });
    let action = if shared.map.len() == 0 && seq == 0 {
        "create the store file"
    } else {
        "write a snapshot to"
    };
    let compacted = compacted.map_err(|e| Error::io(action, path, e.error))?;
    let journal = compacted
        .journal
        .map_err(|e| Error::io("create the journal", file::journal_path(path), e))?;
    shared
        .counters
        .record_compaction(compacted.snapshot_bytes, now);
    shared.counters.record_compaction_bytes(journal);
    Ok(compacted.snapshot_bytes)
}

/// Model checks only: opens a store with no file, holding `tokens` clean tokens (as if
/// just loaded from a snapshot), whose snapshots go to `recorder`. Returns the tokens too.
#[cfg(loom)]
pub fn open_recorded(
    builder: Builder,
    tokens: usize,
    recorder: crate::persist::Recorder,
) -> Result<(TokenStore, Vec<IssuedToken>), Error> {
    let now = builder.clock.now_ms();
    let mut issued = Vec::with_capacity(tokens);
    let mut records = Vec::with_capacity(tokens);
    for n in 0..tokens {
        let (secret, id) = token::generate().map_err(|e| Error::Random(e.to_string()))?;
        records.push(snapshot::Record {
            id: id.to_bytes(),
            name: format!("loom-{n}"),
            digest: token::digest(&secret),
            scopes: Vec::new(),
            created_at: now,
            expires_at: None,
            revoked_at: None,
            last_used: None,
            rate_limit: None,
        });
        issued.push(IssuedToken { secret, id });
    }
    let entries =
        crate::entry::load(records).map_err(|p| DecodeError::from(p).at(&builder.path))?;
    // No snapshot yet: `start` writes the first one, so the recorder holds the tokens.
    let recovered = Recovered::fresh(entries);
    let path = builder.path.clone();
    let store = builder.start(path, recovered, Box::new(recorder), None, None)?;
    Ok((store, issued))
}

/// A request for a new token, given to [`TokenStore::issue`].
///
/// ```
/// use std::time::Duration;
/// use tokencache::NewToken;
/// let request = NewToken::new("ci-bot")
///     .scopes(["read", "write"])
///     .expires_in(Duration::from_secs(86_400));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct NewToken {
    name: String,
    scopes: Vec<String>,
    expires_in: Option<Duration>,
    rate_limit: Option<RateLimit>,
}

impl NewToken {
    /// A token called `name` (shown in lists and logs; need not be unique), with no scopes
    /// and no expiry.
    pub fn new(name: impl Into<String>) -> NewToken {
        NewToken {
            name: name.into(),
            scopes: Vec::new(),
            expires_in: None,
            rate_limit: None,
        }
    }

    /// The scopes the token grants (replacing any set before).
    pub fn scopes<I, S>(mut self, scopes: I) -> NewToken
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one scope.
    pub fn scope(mut self, scope: impl Into<String>) -> NewToken {
        self.scopes.push(scope.into());
        self
    }

    /// The token expires this long after it is issued.
    pub fn expires_in(mut self, lifetime: Duration) -> NewToken {
        self.expires_in = Some(lifetime);
        self
    }

    /// Limits how often the token is accepted (see [`RateLimit`]); changeable later with
    /// [`TokenStore::set_rate_limit`].
    pub fn rate_limit(mut self, limit: RateLimit) -> NewToken {
        self.rate_limit = Some(limit);
        self
    }

    /// Refuses names and scopes that would make lists unreadable or snapshots huge, and rate
    /// limits that cannot work.
    fn check(&self) -> Result<(), Error> {
        if let Some(limit) = &self.rate_limit {
            limit.check()?;
        }
        let bad = |message: String| Err(Error::InvalidRequest(message));
        if self.name.trim().is_empty() {
            return bad("the token name is empty; give a name that says who uses the token".into());
        }
        if self.name.len() > MAX_NAME_LEN {
            return bad(format!(
                "the token name is {} bytes; the limit is {MAX_NAME_LEN}",
                self.name.len()
            ));
        }
        if self.name.chars().any(char::is_control) {
            return bad("the token name contains control characters".into());
        }
        if self.scopes.len() > MAX_SCOPES {
            return bad(format!(
                "{} scopes given; the limit is {MAX_SCOPES}",
                self.scopes.len()
            ));
        }
        for scope in &self.scopes {
            if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
                return bad(format!(
                    "scope {scope:?} must be 1 to {MAX_SCOPE_LEN} bytes"
                ));
            }
            if scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!(
                    "scope {scope:?} contains whitespace or control characters"
                ));
            }
        }
        Ok(())
    }
}

/// A token that passed validation, borrowed from the store.
///
/// [`validate`](TokenStore::validate) returns one that lends the store's entry in place:
/// validating costs no reference count and no copy, so one token validated from many
/// threads at once does not make them contend. The entry stays valid while this value
/// lives, even if the token is deleted meanwhile. It is tied to the validating thread (not
/// `Send`); [`into_owned`](Self::into_owned) gives an [`OwnedToken`] to keep, clone or
/// send to another thread (as `TokenLayer` does for the request extensions).
///
/// Hold it briefly: while a thread holds one, entries deleted anywhere in the store are not
/// freed (the map frees a deleted entry once no reader that might hold it remains), so a
/// `ValidToken` kept for a long time, or leaked, delays reclaiming their memory.
pub struct ValidToken<'store> {
    entry: Lent<'store>,
}

impl ValidToken<'_> {
    /// A copy of this token's details that does not borrow the store (one allocation; no
    /// memory shared with other requests is written).
    pub fn into_owned(self) -> OwnedToken {
        OwnedToken(std::sync::Arc::new(Detached {
            id: self.entry.id,
            text: self.entry.text().into(),
            expires_at: self.entry.expires_at(),
        }))
    }

    /// The token's public id.
    pub fn id(&self) -> TokenId {
        self.entry.id
    }

    /// The token's name.
    pub fn name(&self) -> &str {
        self.entry.name()
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.entry.has_scope(scope)
    }

    /// The token's scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.entry.scopes()
    }

    /// When the token expires, if it does.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.entry.expires_at().and_then(from_ms)
    }
}

impl fmt::Debug for ValidToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidToken")
            .field("id", &self.id())
            .field("name", &self.name())
            .finish()
    }
}

/// A token that passed validation, detached from the store: `Send`, `Sync`, cheap to clone,
/// and valid for as long as you keep it (a later revoke or delete does not change it).
/// From [`ValidToken::into_owned`]; with the `axum` feature, handlers behind `TokenLayer`
/// take it as an extractor.
#[derive(Clone)]
pub struct OwnedToken(std::sync::Arc<Detached>);

/// What an [`OwnedToken`] keeps.
struct Detached {
    id: TokenId,
    /// The name and scopes, packed as the entry packs them.
    text: Box<str>,
    expires_at: Option<u64>,
}

impl OwnedToken {
    /// The token's public id.
    pub fn id(&self) -> TokenId {
        self.0.id
    }

    /// The token's name.
    pub fn name(&self) -> &str {
        entry::name_of(&self.0.text)
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }

    /// The token's scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        entry::scopes_of(&self.0.text)
    }

    /// When the token expires, if it does.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at.and_then(from_ms)
    }
}

impl fmt::Debug for OwnedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedToken")
            .field("id", &self.id())
            .field("name", &self.name())
            .finish()
    }
}

/// A token's details as [`TokenStore::get`] and [`TokenStore::list`] (and a
/// [`StoreView`](crate::StoreView)'s) show them. Never holds the secret or its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The public id.
    pub id: TokenId,
    /// The name given at issue.
    pub name: String,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// When it expires, if it does.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Its last successful validation, if any (as of this moment in memory; in a
    /// [`StoreView`](crate::StoreView), as last written to the files).
    pub last_used: Option<DateTime<Utc>>,
    /// Its rate limit, if it has one.
    pub rate_limit: Option<RateLimit>,
}

impl TokenInfo {
    /// Every token in `map`, oldest first (ties by id, so the order is stable).
    pub(crate) fn all(map: &Map) -> Vec<TokenInfo> {
        let mut all =
            map.with_all(|entries| entries.iter().map(|e| TokenInfo::of(e)).collect::<Vec<_>>());
        all.sort_by_key(|info| (info.created_at, info.id));
        all
    }

    /// The details of one token.
    pub(crate) fn of(entry: &Entry) -> TokenInfo {
        TokenInfo {
            id: entry.id,
            name: entry.name().to_string(),
            scopes: entry.scopes().map(str::to_string).collect(),
            created_at: from_ms(entry.created_at).unwrap_or_default(),
            expires_at: entry.expires_at().and_then(from_ms),
            revoked_at: entry.revoked_at().and_then(from_ms),
            last_used: entry.last_used().and_then(from_ms),
            rate_limit: entry.rate_limit(),
        }
    }
}

/// Whether `old` may be rotated at `now_ms`: not if it is revoked or expired, since a
/// replacement would restore the access its revocation or expiry ended.
pub(crate) fn refuse_rotation(old: &Entry, now_ms: u64) -> Result<(), Error> {
    let why = match old.verdict(now_ms) {
        Ok(()) => return Ok(()),
        Err(Rejection::Revoked) => "revoked",
        Err(_) => "expired",
    };
    Err(Error::InvalidRequest(format!(
        "token {} is {why}, so it is not rotated (a replacement would restore the access that ended); issue a new token instead",
        old.id
    )))
}

fn from_ms(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}
