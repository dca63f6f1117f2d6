//! The calls about keys as a product: owners (list, revoke, delete, a shared rate limit),
//! metadata, and importing keys minted elsewhere. Each change is one durable write, as
//! every change to the store is.

use std::collections::HashSet;
use std::future::Future;

use super::TokenStore;
use crate::error::Error;
use crate::extras;
use crate::inbox::Message;
use crate::rate_limit::RateLimit;
use crate::request::{
    deleting_owner, limiting_owner, revoking_owner, setting_meta, ImportedToken, Request, TokenInfo,
};
use crate::token::{self, TokenId};

impl TokenStore {
    /// The tokens of `owner` (see [`NewToken::owner`](crate::NewToken::owner)), oldest first.
    /// A scan of every token.
    pub fn owned_by(&self, owner: &str) -> Vec<TokenInfo> {
        let map = &self.handle.shared.map;
        let mut owned = TokenInfo::some(map, &map.owned_by(owner), self.now());
        owned.sort_by_key(|info| (info.created_at, info.id));
        owned
    }

    /// Revokes every token of `owner` in one durable write (one journal record; on a
    /// PostgreSQL store, one transaction): all of them are revoked when this returns, or,
    /// if the write fails, all of them are already revoked in memory (the safe side, as
    /// with [`revoke`](Self::revoke)) and the next tick retries. Returns how many tokens it
    /// revoked (those already revoked keep their first time and are not counted). An
    /// owner without tokens revokes nothing and is no error.
    pub fn revoke_owner(&self, owner: &str) -> Result<usize, Error> {
        self.commit(Ok(revoking_owner(owner)))
    }

    /// Deletes every token of `owner` in one durable write, as
    /// [`revoke_owner`](Self::revoke_owner) revokes them. Returns how many it deleted.
    pub fn delete_owner(&self, owner: &str) -> Result<usize, Error> {
        self.commit(Ok(deleting_owner(owner)))
    }

    /// Sets (`Some`) or removes (`None`) the rate limit `owner`'s tokens share: one budget
    /// for all of them, checked in `validate` after each token's own limit (both must
    /// admit; a request the owner's limit refuses has spent its token's quota). Durable when
    /// this returns; the new limit starts with a full burst. An owner needs no token to
    /// have a limit, so one set before the owner's first token is issued applies to it.
    pub fn set_owner_rate_limit(&self, owner: &str, limit: Option<RateLimit>) -> Result<(), Error> {
        self.commit(limiting_owner(owner, limit))
    }

    /// The rate limit `owner`'s tokens share, if one is set.
    pub fn owner_rate_limit(&self, owner: &str) -> Option<RateLimit> {
        self.handle.shared.map.owners.rate_limit(owner)
    }

    /// Replaces token `id`'s metadata with `meta` (see [`NewToken::meta`](crate::NewToken::meta)
    /// for the rules), durably. Validations that start afterwards read the new pairs; an
    /// [`OwnedToken`](crate::OwnedToken) taken before keeps the old ones. An empty `meta`
    /// removes every pair.
    pub fn set_meta<K: AsRef<str>, V: AsRef<str>>(
        &self,
        id: &TokenId,
        meta: &[(K, V)],
    ) -> Result<(), Error> {
        self.commit(setting_meta(id, extras::pack_meta(meta)))
    }

    /// Imports a key minted elsewhere, known by its SHA-256 digest only, and returns the id
    /// the store gave it. From then on `validate` accepts the key (a string that is not in
    /// this store's format is looked up by digest among imported keys), and everything
    /// else (revoke, expiry, rate limits, owners, `last_used`, [`rotate`](Self::rotate)
    /// into a token of this store's format) works as for an issued token. Durable when this
    /// returns. A digest already imported is refused ([`Error::InvalidRequest`]).
    pub fn import(&self, key: ImportedToken) -> Result<TokenId, Error> {
        let ids = self.commit(self.importing(vec![key]))?;
        ids.into_iter()
            .next()
            .ok_or_else(|| Error::InvalidRequest("nothing was imported".into()))
    }

    /// Imports several keys with one durable write: all of them, or (on error) none.
    /// Returns their ids in request order.
    pub fn import_many(
        &self,
        keys: impl IntoIterator<Item = ImportedToken>,
    ) -> Result<Vec<TokenId>, Error> {
        self.commit(self.importing(keys.into_iter().collect()))
    }

    /// Checks `keys` and prepares their import: new ids, the entries.
    fn importing(
        &self,
        keys: Vec<ImportedToken>,
    ) -> Result<Request<impl FnOnce(usize) -> Vec<TokenId>>, Error> {
        let map = &self.handle.shared.map;
        let now = self.handle.shared.clock.now_ms();
        let mut drawn = HashSet::new();
        let mut entries = Vec::with_capacity(keys.len());
        for key in &keys {
            if map.contains_imported(&key.digest) {
                return Err(Error::InvalidRequest(format!(
                    "the key with SHA-256 {} is already imported; nothing was imported",
                    key.digest_hex()
                )));
            }
            let id = loop {
                let id = token::generate_id().map_err(|e| Error::Random(e.to_string()))?;
                if !map.contains(&id) && drawn.insert(id) {
                    break id;
                }
            };
            self.refuse_credits_in_a_database(key.token.credits.is_some())?;
            entries.push(key.entry(id, now, &map.owners)?);
        }
        let ids: Vec<TokenId> = entries.iter().map(|e| e.id).collect();
        let finish = move |_| ids;
        if entries.is_empty() {
            return Ok(Request::done(finish));
        }
        Ok(Request::new(|reply| Message::Issue(entries, reply), finish))
    }
}

/// The async twins of the calls above (see [Async calls](TokenStore#async-calls)).
impl TokenStore {
    /// [`revoke_owner`](Self::revoke_owner), as a future.
    pub fn revoke_owner_async(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<usize, Error>> + Send + '_ {
        self.commit_async(Ok(revoking_owner(owner)))
    }

    /// [`delete_owner`](Self::delete_owner), as a future.
    pub fn delete_owner_async(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<usize, Error>> + Send + '_ {
        self.commit_async(Ok(deleting_owner(owner)))
    }

    /// [`set_owner_rate_limit`](Self::set_owner_rate_limit), as a future.
    pub fn set_owner_rate_limit_async(
        &self,
        owner: &str,
        limit: Option<RateLimit>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.commit_async(limiting_owner(owner, limit))
    }

    /// [`set_meta`](Self::set_meta), as a future. `meta` is read by the call.
    pub fn set_meta_async<K: AsRef<str>, V: AsRef<str>>(
        &self,
        id: &TokenId,
        meta: &[(K, V)],
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        self.commit_async(setting_meta(id, extras::pack_meta(meta)))
    }

    /// [`import_many`](Self::import_many), as a future. `keys` is read by the call.
    pub fn import_many_async(
        &self,
        keys: impl IntoIterator<Item = ImportedToken>,
    ) -> impl Future<Output = Result<Vec<TokenId>, Error>> + Send + '_ {
        self.commit_async(self.importing(keys.into_iter().collect()))
    }
}
