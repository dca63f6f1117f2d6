//! Owners: the customer, team or account several tokens belong to. An owner is an opaque
//! id the application gives at issue; the store keeps one [`Owner`] per id that some token
//! or a shared rate limit names, and every token of the owner points at it.
//!
//! An owner's shared rate limit is one GCRA limiter (two atomic words) that every one of
//! its tokens spends from, checked in `validate` beside the token's own limit. A token
//! without an owner never reaches this module on the validation path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rate_limit::{Gcra, RateLimit};
use crate::snapshot::OwnerRecord;

/// The longest owner id, in bytes.
pub(crate) const MAX_OWNER_LEN: usize = 128;

/// One owner: its id and its shared rate limit. Memory per owner is constant.
pub(crate) struct Owner {
    name: Box<str>,
    /// The shared limit's check (state in memory only, like a token's).
    limiter: Gcra,
    /// The limit as set, for `owner_rate_limit` and snapshots; written by the persister
    /// only (with `limiter`), under this lock, never read on the validation path.
    limit: Mutex<Option<RateLimit>>,
}

impl Owner {
    /// The owner's id.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Spends one request of the owner's shared limit at `now_ms`, or says how long to
    /// wait. An owner without a limit costs one load.
    #[inline]
    pub(crate) fn check_rate(&self, now_ms: u64) -> Result<(), std::time::Duration> {
        self.limiter.check(now_ms)
    }

    /// The shared limit as set.
    pub(crate) fn rate_limit(&self) -> Option<RateLimit> {
        *lock(&self.limit)
    }

    /// Replaces the shared limit (a full burst is available again). Persister only.
    fn set_rate_limit(&self, limit: Option<RateLimit>) {
        let mut set = lock(&self.limit);
        *set = limit;
        self.limiter.set(limit);
    }
}

/// Whether `owner` can be an owner id: 1 to [`MAX_OWNER_LEN`] bytes, no control
/// characters. The error says what is wrong.
pub(crate) fn check_name(owner: &str) -> Result<(), String> {
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
        return Err(format!(
            "owner {owner:?} must be 1 to {MAX_OWNER_LEN} bytes (it is {})",
            owner.len()
        ));
    }
    if owner.chars().any(char::is_control) {
        return Err(format!("owner {owner:?} contains control characters"));
    }
    Ok(())
}

/// Every owner the store knows, by id. Taken by the persister, by `issue` (to share the
/// owner's record among its new tokens) and by loading; never by `validate`, which reaches
/// an owner through its token.
#[derive(Default)]
pub(crate) struct Owners {
    by_name: Mutex<HashMap<Box<str>, Arc<Owner>>>,
}

impl Owners {
    /// The owner `name`, added (without a limit) if the store did not know it.
    pub(crate) fn get_or_add(&self, name: &str) -> Arc<Owner> {
        let mut owners = lock(&self.by_name);
        if let Some(owner) = owners.get(name) {
            return owner.clone();
        }
        let owner = Arc::new(Owner {
            name: name.into(),
            limiter: Gcra::new(None),
            limit: Mutex::new(None),
        });
        owners.insert(name.into(), owner.clone());
        owner
    }

    /// The shared limit of owner `name`, if it has one.
    pub(crate) fn rate_limit(&self, name: &str) -> Option<RateLimit> {
        lock(&self.by_name).get(name).and_then(|o| o.rate_limit())
    }

    /// Sets or removes owner `name`'s shared limit. Persister (and loading) only. A limit
    /// equal to the one set is left alone, so its spent quota stands (replay and catch-up
    /// apply one change more than once).
    pub(crate) fn set_rate_limit(&self, name: &str, limit: Option<RateLimit>) {
        let owner = self.get_or_add(name);
        if owner.rate_limit() != limit {
            owner.set_rate_limit(limit);
        }
    }

    /// The owners with a shared limit, sorted by id, as a snapshot stores them.
    pub(crate) fn records(&self) -> Vec<OwnerRecord> {
        let owners = lock(&self.by_name);
        let mut records: Vec<OwnerRecord> = owners
            .values()
            .filter_map(|o| {
                o.rate_limit().map(|limit| OwnerRecord {
                    owner: o.name.to_string(),
                    rate_limit: limit.to_record(),
                })
            })
            .collect();
        records.sort_by(|a, b| a.owner.cmp(&b.owner));
        records
    }

    /// Forgets owners no token points at and without a limit (after deletes and purges),
    /// so the registry holds only owners something names.
    pub(crate) fn forget_unused(&self) {
        lock(&self.by_name)
            .retain(|_, owner| Arc::strong_count(owner) > 1 || owner.rate_limit().is_some());
    }

    /// How many owners the store knows.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.by_name).len()
    }
}

/// A lock that a panic elsewhere does not poison for good: every value it guards is whole
/// between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_shared_and_forgotten_once_unused_and_unlimited() {
        let owners = Owners::default();
        let a = owners.get_or_add("acme");
        let b = owners.get_or_add("acme");
        assert!(Arc::ptr_eq(&a, &b));
        owners.set_rate_limit("beta", Some(RateLimit::per_second(1)));
        assert_eq!(owners.len(), 2);
        drop((a, b));
        owners.forget_unused();
        assert_eq!(owners.len(), 1, "beta has a limit and stays");
        assert_eq!(owners.records().len(), 1);
        assert_eq!(owners.rate_limit("beta"), Some(RateLimit::per_second(1)));
    }

    #[test]
    fn an_owner_limit_is_shared_by_its_tokens() {
        let owners = Owners::default();
        let first = owners.get_or_add("acme");
        let second = owners.get_or_add("acme");
        owners.set_rate_limit("acme", Some(RateLimit::per_second(1)));
        assert_eq!(first.check_rate(1_000), Ok(()));
        assert!(second.check_rate(1_000).is_err(), "one budget for both");
    }

    #[test]
    fn owner_names_are_bounded_and_printable() {
        assert!(check_name("acme").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(MAX_OWNER_LEN + 1)).is_err());
        assert!(check_name("a\nb").is_err());
    }
}
