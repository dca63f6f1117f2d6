//! The calls about metered keys: credits, set and read. Setting credits is one durable
//! write, as every change to the store is; spending them is `validate`'s (`validate_cost`).

use std::future::Future;

use super::TokenStore;
use crate::credits::Credits;
use crate::error::Error;
use crate::request::setting_credits;
use crate::token::TokenId;

impl TokenStore {
    /// Sets (`Some`) or removes (`None`) token `id`'s credits, durably: the remaining
    /// credits become `credits.remaining()`, and a refill counts its periods from now.
    /// Validations that start afterwards spend from the new credits. File stores only, for
    /// now: a PostgreSQL store refuses it, removal included ([`Error::InvalidRequest`]).
    pub fn set_credits(&self, id: &TokenId, credits: Option<Credits>) -> Result<(), Error> {
        self.refuse_credits_in_a_database(true)?;
        self.commit(setting_credits(id, credits, self.now()))
    }

    /// [`set_credits`](Self::set_credits), as a future.
    pub fn set_credits_async(
        &self,
        id: &TokenId,
        credits: Option<Credits>,
    ) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let change = self
            .refuse_credits_in_a_database(true)
            .and_then(|()| setting_credits(id, credits, self.now()));
        self.commit_async(change)
    }

    /// Token `id`'s credits as of now (a refill that came due counted), if it has any;
    /// `None` for a token without credits or an unknown id.
    pub fn credits(&self, id: &TokenId) -> Option<Credits> {
        let now = self.now();
        self.handle
            .shared
            .map
            .with(id, |e| e.meter().map(|m| m.credits(now)))
            .flatten()
    }

    /// Token `id`'s accepted validations: the total, and each UTC day of the last
    /// [`usage_days`](crate::Builder::usage_days) it was used. Exact: every validation
    /// that returned before this call is counted, whichever thread made it (the counts not
    /// yet written are added in). Takes the counts' lock; does not wait for the persister.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownId`] if the store holds no such token; [`Error::InvalidRequest`]
    /// if the store does not count (`usage_days(0)`, or a PostgreSQL store).
    pub fn usage(&self, id: &TokenId) -> Result<crate::Usage, Error> {
        let map = &self.handle.shared.map;
        if !map.usage.is_on() {
            let why = if matches!(self.location(), crate::Location::File(_)) {
                "this store counts no uses: it was opened with usage_days(0)"
            } else {
                "usage counts are kept by file stores only for now; this store is a PostgreSQL database"
            };
            return Err(Error::InvalidRequest(why.into()));
        }
        let now = self.now();
        let counts = map.usage.lock();
        map.with(id, |e| counts.usage(id, &e.uses, now))
            .ok_or(Error::UnknownId(*id))
    }

    /// Credits live in memory and the files: a PostgreSQL store does not keep them yet.
    pub(crate) fn refuse_credits_in_a_database(&self, setting: bool) -> Result<(), Error> {
        if setting && !matches!(self.location(), crate::Location::File(_)) {
            return Err(Error::InvalidRequest(
                "credits are kept by file stores only for now; this store is a PostgreSQL database"
                    .into(),
            ));
        }
        Ok(())
    }
}
