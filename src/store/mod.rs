//! The public store: open, issue, validate (the hot path), revoke, delete, purge, rotate,
//! flush, close, and the async twins of the calls that change it.
//!
//! Validation touches only the map and the entry's atomics (`validate`); every write
//! belongs to the persister thread (`persist`). Changes to a token's definition are
//! prepared as a [`Request`] (`request`), go through the persister and return once they
//! are on disk. `handle` owns the persister thread and the close life cycle; `builder`
//! opens a store.

mod builder;
mod handle;
mod keys;
mod metered;
mod subscribe;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use crate::clock::millis;
use crate::entry::Entry;
use crate::error::{Error, Rejection};
use crate::extras::Extras;
use crate::inbox::Message;
use crate::location::Location;
use crate::rate_limit::RateLimit;
use crate::request::{
    deleting, flushing, limiting, refuse_rotation, revoking, NewToken, Request, TokenInfo,
};
use crate::stats::Stats;
use crate::sync::Arc;
use crate::token::{self, IssuedToken, TokenId};
use crate::validate::ValidToken;

#[cfg(loom)]
pub use builder::{open_recorded, open_recorded_owned};
pub use builder::{Builder, DEFAULT_FLUSH_INTERVAL};
use handle::Handle;

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

impl TokenStore {
    /// Opens the store at `path` with default settings, creating an empty one if the file
    /// does not exist. See [`TokenStore::builder`] for the settings.
    ///
    /// A file store is `path` plus two files beside it: `<path>.journal` (the changes since
    /// the last snapshot) and `<path>.lock` (the OS lock that makes this handle the store's
    /// only writer; a torn journal tail a crash left is set aside as
    /// `<path>.journal.torn-<offset>`). A store open elsewhere, in this process or another,
    /// is refused with [`Error::Locked`]: clone the open `TokenStore` instead, or read the
    /// files with [`StoreView::read`](crate::StoreView::read). A `postgres://` or
    /// `postgresql://` URL in place of `path` opens a store shared by replicas (feature
    /// `postgres`, see [`Builder::open`]).
    pub fn open(path: impl AsRef<Path>) -> Result<TokenStore, Error> {
        TokenStore::builder(path).open()
    }

    /// A builder to open the store at `path` with non-default settings.
    pub fn builder(path: impl AsRef<Path>) -> Builder {
        Builder::new(path.as_ref().to_path_buf())
    }

    /// Checks a token: shape and checksum, digest, revocation, expiry, then its rate limit
    /// (only a request that passes every other check spends quota). On success records the
    /// use in `last_used` (on disk with the next write-behind record, at most one
    /// [`flush_interval`](Builder::flush_interval) later).
    ///
    /// This is the hot path: it does not allocate, block or do I/O.
    #[inline]
    pub fn validate(&self, token: &str) -> Result<ValidToken<'_>, Rejection> {
        self.counted(self.handle.shared.check(token, None, 1))
    }

    /// Like [`validate`](Self::validate), and also requires the token to grant `scope`
    /// (otherwise [`Rejection::MissingScope`], and `last_used` is not updated).
    #[inline]
    pub fn validate_scope(&self, token: &str, scope: &str) -> Result<ValidToken<'_>, Rejection> {
        self.counted(self.handle.shared.check(token, Some(scope), 1))
    }

    /// Like [`validate`](Self::validate), spending `cost` of a token's
    /// [`Credits`](crate::Credits) instead of 1 (0 checks without spending). A token
    /// without credits ignores the cost. With too few left the call is refused with
    /// [`Rejection::UsageExceeded`] and spends nothing; after every check but the credits
    /// passed (so a refused request never spends).
    #[inline]
    pub fn validate_cost(&self, token: &str, cost: u64) -> Result<ValidToken<'_>, Rejection> {
        self.counted(self.handle.shared.check(token, None, cost))
    }

    /// [`validate_scope`](Self::validate_scope) and [`validate_cost`](Self::validate_cost)
    /// in one: requires `scope`, then spends `cost` of a token's credits (a token that
    /// lacks the scope spends nothing).
    #[inline]
    pub fn validate_scope_cost(
        &self,
        token: &str,
        scope: &str,
        cost: u64,
    ) -> Result<ValidToken<'_>, Rejection> {
        self.counted(self.handle.shared.check(token, Some(scope), cost))
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
        self.commit(self.issuing(vec![new]).map(Request::only))
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
    ) -> Result<Request<impl FnOnce(usize) -> Vec<IssuedToken>>, Error> {
        let shared = &self.handle.shared;
        let now = shared.clock.now_ms();
        let mut issued = Vec::new();
        let mut entries = Vec::new();
        let mut drawn = HashSet::new();
        for new in requests {
            new.check()?;
            self.refuse_credits_in_a_database(new.credits.is_some())?;
            let (secret, id) = self.fresh_id(&drawn)?;
            drawn.insert(id);
            let digest = token::digest(&secret);
            entries.push(new.entry(id, digest, now, &shared.map.owners, false)?);
            issued.push(IssuedToken { secret, id });
        }
        let finish = move |_| issued;
        if entries.is_empty() {
            return Ok(Request::done(finish));
        }
        Ok(Request::new(|reply| Message::Issue(entries, reply), finish))
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
    fn purging(&self, age: Duration) -> Request<impl FnOnce(usize) -> usize> {
        let now = self.handle.shared.clock.now_ms();
        let cutoff = now.saturating_sub(millis(age));
        Request::new(|reply| Message::Purge(cutoff, reply), |purged| purged)
    }

    /// Issues a new token with the same name, scopes, rate limit, owner and metadata as
    /// token `id` (and the same lifetime, if it had one), and makes the old one expire at the
    /// earlier of its own expiry and now + `grace`, both in one durable write. Rotating an
    /// imported key replaces it with a token of this store's format. Returns the new token; its
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
    ) -> Result<Request<impl FnOnce(usize) -> IssuedToken>, Error> {
        let shared = &self.handle.shared;
        let now = shared.clock.now_ms();
        let template = shared.map.with(id, |old| {
            refuse_rotation(old, now)?;
            let lifetime = old.expires_at().map(|at| at.saturating_sub(old.created_at));
            let extras = old.extras_arc();
            Ok::<_, Error>((old.text().into(), lifetime, old.rate_limit(), extras))
        });
        let (text, lifetime, rate_limit, extras): (Box<str>, Option<u64>, _, _) =
            template.ok_or(Error::UnknownId(*id))??;
        let (secret, new_id) = self.fresh_id(&HashSet::new())?;
        let expires_at = lifetime.map(|l| now.saturating_add(l));
        let mut new = Box::new(Entry::new(
            new_id,
            token::digest(&secret),
            text,
            now,
            expires_at,
            rate_limit,
        ));
        // Owner, metadata and credits pass on (the credits as they stand now, spent apart
        // from then on); a replacement is ours, so never imported.
        if let Some(extras) = extras {
            let meta = extras.packed_meta().into();
            let meter = extras
                .meter
                .as_ref()
                .map(|m| std::sync::Arc::new(m.successor(now)));
            new.set_extras(Some(
                Extras::new(extras.owner.clone(), meta, false).with_meter(meter),
            ));
        }
        let until = now.saturating_add(millis(grace));
        let message = |reply| Message::Rotate {
            old: *id,
            until,
            new,
            reply,
        };
        Ok(Request::new(message, move |_| IssuedToken {
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
            let (secret, id) =
                token::generate(&self.handle.prefix).map_err(|e| Error::Random(e.to_string()))?;
            if !self.handle.shared.map.contains(&id) && !drawn.contains(&id) {
                return Ok((secret, id));
            }
        }
    }

    /// A token's details, without its secret.
    pub fn get(&self, id: &TokenId) -> Option<TokenInfo> {
        TokenInfo::get(&self.handle.shared.map, id, self.now())
    }

    /// Every token's details, oldest first (revoked and expired ones included).
    pub fn list(&self) -> Vec<TokenInfo> {
        TokenInfo::all(&self.handle.shared.map, self.now())
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

    /// The store file's path (for a PostgreSQL store, its URL with the password redacted;
    /// [`location`](Self::location) says which).
    pub fn path(&self) -> &Path {
        &self.handle.path
    }

    /// Where the store lives: its file, or its database's redacted URL.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use tokencache::{Location, TokenStore};
    ///
    /// let store = TokenStore::open(dir.path().join("tokens.snap"))?;
    /// assert!(matches!(store.location(), Location::File(path) if path.ends_with("tokens.snap")));
    /// assert_eq!(store.location().as_path(), store.path());
    /// # Ok(()) }
    /// ```
    pub fn location(&self) -> &Location {
        &self.handle.location
    }

    /// The change feed's subscribers (`feed.rs` adds to them).
    pub(crate) fn feed_hub(&self) -> &crate::feed::Hub {
        &self.handle.feed
    }

    /// Queues `change` for the persister and waits, blocking, for its answer.
    /// The store's clock, now (Unix ms).
    fn now(&self) -> u64 {
        self.handle.shared.clock.now_ms()
    }

    fn commit<T>(
        &self,
        change: Result<Request<impl FnOnce(usize) -> T>, Error>,
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
        change: Result<Request<impl FnOnce(usize) -> T>, Error>,
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
        self.commit_async(self.issuing(vec![new]).map(Request::only))
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

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.handle.path)
            .field("tokens", &self.handle.shared.map.len())
            .finish()
    }
}
