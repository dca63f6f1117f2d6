//! Validation: the hot path (`Shared::check`), the read-only checks it shares with a
//! [`StoreView`](crate::StoreView) (`admit`), and the tokens a validation returns
//! ([`ValidToken`], lent from the map, and [`OwnedToken`], detached from it).
//!
//! `Shared` is what the validating threads and the persister share; it sits here, below
//! both the store and the persister, so neither imports the other for it.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::clock::{from_ms, Clock};
use crate::credits::Spent;
use crate::entry::{self, Standing, Touch};
use crate::error::Rejection;
use crate::extras::Extras;
use crate::inbox::{Inbox, Message};
use crate::map::{Lent, Map};
use crate::stats::Counters;
use crate::sync::channel::TrySendError;
use crate::sync::{Arc, AtomicBool, Ordering};
use crate::token::{self, TokenId};

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
    /// reads except `last_used` (at most once per millisecond per token), a rate-limited
    /// token's limiter word, the credits word of a token that has credits (which spends
    /// `cost`), and a token's usage word when this thread's tally slot for it is busy.
    #[inline(always)]
    pub(crate) fn check(
        &self,
        token: &str,
        scope: Option<&str>,
        cost: u64,
    ) -> Result<ValidToken<'_>, Rejection> {
        let Admitted {
            valid,
            id,
            now,
            standing,
        } = admit(&self.map, &*self.clock, token, scope)?;
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
        // The owner's shared limit after the token's own: both must admit. (A request the
        // owner's limit refuses has spent the token's quota; the owner's is the one shared.)
        if let Err(retry_after) = entry.check_owner_rate(standing, now) {
            return Err(Rejection::RateLimited { retry_after });
        }
        // Credits last of all: a request any limit refuses spends none.
        match entry.spend(standing, cost, now) {
            Spent::Yes { send: true } => self.send_dirty(id),
            Spent::Yes { send: false } => {}
            Spent::No { retry_after } => return Err(Rejection::UsageExceeded { retry_after }),
        }
        // Counted before `touch`: a round that clears the dirty bit after `touch` set it
        // finds the count too (docs/DESIGN.md, "Usage counts").
        let first_shared_count = self.map.usage.count(&id, &entry.uses, now);
        if entry.touch(now) == Touch::Send || first_shared_count {
            self.send_dirty(id);
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

/// The longest string looked up among imported keys; a longer one is `Malformed`, so a
/// hostile megabyte costs no hash.
pub(crate) const MAX_IMPORTED_LEN: usize = 1024;

/// A token that passed [`admit`].
pub(crate) struct Admitted<'m> {
    /// The token, lent from the map.
    pub(crate) valid: ValidToken<'m>,
    /// Its id, as looked up: read from the string, or from the index of imported keys, so
    /// the hot path need not load it from the entry's second cache line.
    pub(crate) id: TokenId,
    /// The clock time it was judged at.
    pub(crate) now: u64,
    /// The status word it was judged by.
    pub(crate) standing: Standing,
}

/// The checks of a validation that only read: shape, prefix and checksum, digest,
/// revocation and expiry at the clock's time, then `scope`. A string that is not one of
/// ours (or whose id is unknown) is looked up by digest among imported keys, if the store
/// holds any. Writes nothing: the store's hot path and a [`StoreView`] share it.
///
/// [`StoreView`]: crate::StoreView
#[inline(always)]
pub(crate) fn admit<'m>(
    map: &'m Map,
    clock: &dyn Clock,
    token: &str,
    scope: Option<&str>,
) -> Result<Admitted<'m>, Rejection> {
    let (id, entry) = match token::parse(token, &map.prefixes) {
        Some(id) => {
            // Hash before the lookup so an unknown id pays for the hash like a known one.
            let digest = token::digest(token);
            match map.read(&id) {
                Some(entry) if entry.digest_matches(&digest) => (id, entry),
                _ => imported(map, &digest)?,
            }
        }
        None if map.has_imported() && token.len() <= MAX_IMPORTED_LEN => {
            imported(map, &token::digest(token))?
        }
        None => return Err(Rejection::Malformed),
    };
    let now = clock.now_ms();
    let standing = entry.verdict(now)?;
    if scope.is_some_and(|scope| !entry.has_scope(scope)) {
        return Err(Rejection::MissingScope);
    }
    Ok(Admitted {
        valid: ValidToken { entry },
        id,
        now,
        standing,
    })
}

/// The imported key with this digest (compared in constant time), with its id, or
/// `Unknown`.
#[cold]
fn imported<'m>(map: &'m Map, digest: &token::Digest) -> Result<(TokenId, Lent<'m>), Rejection> {
    if !map.has_imported() {
        return Err(Rejection::Unknown);
    }
    map.read_imported(digest)
        .filter(|(_, entry)| entry.digest_matches(digest))
        .ok_or(Rejection::Unknown)
}

/// A token that passed validation, borrowed from the store.
///
/// [`validate`](crate::TokenStore::validate) returns one that lends the store's entry in place:
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
    /// One pointer: the owner and metadata are borrowed through it too, uncounted.
    entry: Lent<'store>,
}

impl ValidToken<'_> {
    /// A copy of this token's details that does not borrow the store (one allocation; no
    /// memory shared with other requests is written, but for a token with an owner or
    /// metadata the reference count of those, which it shares).
    pub fn into_owned(self) -> OwnedToken {
        OwnedToken(std::sync::Arc::new(Detached {
            id: self.entry.id,
            text: self.entry.text().into(),
            expires_at: self.entry.expires_at(),
            extras: self.entry.extras_arc(),
        }))
    }

    /// The token's owner, if it has one (borrowed: no allocation, no reference count).
    pub fn owner(&self) -> Option<&str> {
        self.entry.extras()?.owner_name()
    }

    /// The value of the token's metadata `key` (no allocation).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.entry.extras()?.meta(key)
    }

    /// Every metadata pair of the token, in the order given.
    pub fn meta_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entry.extras().into_iter().flat_map(|x| x.meta_pairs())
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
    extras: Option<std::sync::Arc<Extras>>,
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

    /// The token's owner, if it has one.
    pub fn owner(&self) -> Option<&str> {
        self.0.extras.as_deref()?.owner_name()
    }

    /// The value of the token's metadata `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.0.extras.as_deref()?.meta(key)
    }

    /// Every metadata pair of the token, in the order given.
    pub fn meta_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.extras.iter().flat_map(|x| x.meta_pairs())
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
