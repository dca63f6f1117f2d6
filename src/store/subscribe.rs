//! The change feed's API on the store: subscribing (the feed itself is `crate::feed`).

use crate::error::Error;
use crate::feed::{Changes, DEFAULT_FEED_CAPACITY, MAX_FEED_CAPACITY};
use crate::store::TokenStore;

impl TokenStore {
    /// Subscribes to the change feed, with a queue of [`DEFAULT_FEED_CAPACITY`] items. See
    /// [`subscribe_with_capacity`](Self::subscribe_with_capacity).
    pub fn subscribe(&self) -> Changes {
        self.feed_hub().subscribe(DEFAULT_FEED_CAPACITY)
    }

    /// Subscribes to the change feed: every change to a token (issue, revoke, delete,
    /// rotate, rate limit, purge...) made by a call that starts after this returns, and on a
    /// PostgreSQL store every change another replica commits that this replica reads
    /// afterwards, arrives as one [`Feed::Event`](crate::Feed::Event), in the order the changes became durable.
    ///
    /// - An event is queued once its change is durable, before the call that made it
    ///   returns: a change whose write failed is not published (a failed issue never is; a
    ///   revoke, delete or rate limit that memory kept is published by the later write that
    ///   makes it durable). `last_used` updates are not events.
    /// - The queue holds `capacity` items. A subscriber that reads too slowly never slows
    ///   the store: the events that do not fit are counted, and [`Feed::Missed`](crate::Feed::Missed) with the
    ///   count takes their place in the queue as soon as there is room.
    /// - The feed ends (the iterator returns `None`) once the store is closed and every
    ///   item was read. Subscribing to a closed store gives a feed that has already ended.
    ///
    /// `capacity` must be 1 to [`MAX_FEED_CAPACITY`], else [`Error::InvalidRequest`].
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use tokencache::{ChangeKind, Feed, NewToken, Origin, TokenStore};
    ///
    /// let store = TokenStore::open(dir.path().join("tokens.snap"))?;
    /// let changes = store.subscribe_with_capacity(100)?;
    /// let issued = store.issue(NewToken::new("ci-bot"))?;
    /// store.revoke(&issued.id())?;
    /// store.close()?;
    /// let kinds: Vec<ChangeKind> = changes
    ///     .filter_map(|item| match item {
    ///         Feed::Event(event) => Some(event.kind),
    ///         Feed::Missed(_) => None,
    ///     })
    ///     .collect();
    /// assert_eq!(kinds, [ChangeKind::Issued, ChangeKind::Revoked]);
    /// # Ok(()) }
    /// ```
    pub fn subscribe_with_capacity(&self, capacity: usize) -> Result<Changes, Error> {
        if capacity == 0 || capacity > MAX_FEED_CAPACITY {
            return Err(Error::InvalidRequest(format!(
                "a change feed holds 1 to {MAX_FEED_CAPACITY} items; {capacity} was asked"
            )));
        }
        Ok(self.feed_hub().subscribe(capacity))
    }
}
