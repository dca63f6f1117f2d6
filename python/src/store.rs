//! `tokencache.TokenStore`: the Rust store behind a Python class. Every call checks that
//! the store is open and that this is the process that opened it (see `fork`); the
//! durable calls run without the GIL.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert;
use crate::errors::{error, invalid, raise, rejected, wrong_type};
use crate::fork;
use crate::objects::{Changes, Credits, IssuedToken, ManualClock, Token, TokenInfo};

/// An API-token store: in memory, validated without locks, persisted to a file and its
/// journal (or to PostgreSQL with a `postgres://` URL). See `tokencache/__init__.pyi`.
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct TokenStore {
    /// `None` only while being dropped in a forked child (see `Drop`).
    store: Option<tokencache::TokenStore>,
    /// `close()` was called.
    closed: AtomicBool,
    /// The fork generation the store was opened in.
    generation: u64,
}

impl Drop for TokenStore {
    fn drop(&mut self) {
        // In a forked child the persister thread does not exist: dropping the last handle
        // would wait for it forever. The child leaks its copy instead; the parent's store
        // is untouched (its files, lock and thread are the parent's).
        if fork::generation() != self.generation {
            if let Some(store) = self.store.take() {
                std::mem::forget(store);
            }
        }
    }
}

/// The keyword arguments of `issue` (and the keys of each `issue_many` item).
const ISSUE_KEYS: [&str; 7] = [
    "name",
    "scopes",
    "expires_in",
    "rate_limit",
    "owner",
    "meta",
    "credits",
];
/// The keyword arguments of `import_key` (and the keys of each `import_many` item).
const IMPORT_KEYS: [&str; 9] = [
    "sha256",
    "name",
    "scopes",
    "expires_at",
    "created_at",
    "rate_limit",
    "owner",
    "meta",
    "credits",
];

impl TokenStore {
    /// The Rust store, if this process opened it and it is not closed.
    fn live(&self, py: Python<'_>) -> PyResult<&tokencache::TokenStore> {
        if fork::generation() != self.generation {
            return Err(raise(
                py,
                "ForkedError",
                format!(
                    "token store {} was opened before os.fork(), and this is the child: the store's persister thread did not survive the fork, so the child cannot use it. Open the store in the child instead (a file store only after the parent closed it), or fork before opening",
                    self.where_()
                ),
            ));
        }
        match &self.store {
            Some(store) if !self.closed.load(Ordering::Acquire) => Ok(store),
            _ => Err(raise(
                py,
                "ClosedError",
                format!(
                    "the token store {} is closed; open it again to use it",
                    self.where_()
                ),
            )),
        }
    }

    fn where_(&self) -> String {
        self.store
            .as_ref()
            .map(|s| s.location().to_string())
            .unwrap_or_default()
    }

    /// A `NewToken` from `issue`'s arguments.
    fn new_token(
        name: &Bound<'_, PyAny>,
        scopes: Option<&Bound<'_, PyAny>>,
        expires_in: Option<&Bound<'_, PyAny>>,
        rate_limit: Option<&Bound<'_, PyAny>>,
        owner: Option<&Bound<'_, PyAny>>,
        meta: Option<&Bound<'_, PyAny>>,
        credits: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<tokencache::NewToken> {
        let mut new = tokencache::NewToken::new(convert::string("name", name)?)
            .scopes(convert::scopes(scopes)?);
        if let Some(lifetime) = convert::opt_duration("expires_in", expires_in)? {
            new = new.expires_in(lifetime);
        }
        if let Some(limit) = convert::opt_rate_limit(rate_limit)? {
            new = new.rate_limit(limit);
        }
        if let Some(owner) = owner.filter(|o| !o.is_none()) {
            new = new.owner(convert::string("owner", owner)?);
        }
        for (k, v) in convert::meta(meta)? {
            new = new.meta(k, v);
        }
        if let Some(credits) = Credits::from_arg(credits)? {
            new = new.credits(credits);
        }
        Ok(new)
    }

    /// An `ImportedToken` from `import_key`'s arguments, read from a dict of them.
    fn imported(item: &Bound<'_, PyDict>) -> PyResult<tokencache::ImportedToken> {
        let py = item.py();
        check_keys("import_many item", item, &IMPORT_KEYS)?;
        let get = |k: &str| item.get_item(k).ok().flatten();
        let sha = get("sha256").ok_or_else(|| invalid(py, "an imported key needs its sha256"))?;
        let mut key = tokencache::ImportedToken::sha256(&convert::string("sha256", &sha)?)
            .map_err(|e| error(py, e))?;
        if let Some(name) = get("name").filter(|v| !v.is_none()) {
            key = key.name(convert::string("name", &name)?);
        }
        key = key.scopes(convert::scopes(get("scopes").as_ref())?);
        if let Some(at) = get("expires_at").filter(|v| !v.is_none()) {
            key = key.expires_at(convert::datetime("expires_at", &at)?);
        }
        if let Some(at) = get("created_at").filter(|v| !v.is_none()) {
            key = key.created_at(convert::datetime("created_at", &at)?);
        }
        if let Some(limit) = convert::opt_rate_limit(get("rate_limit").as_ref())? {
            key = key.rate_limit(limit);
        }
        if let Some(owner) = get("owner").filter(|v| !v.is_none()) {
            key = key.owner(convert::string("owner", &owner)?);
        }
        for (k, v) in convert::meta(get("meta").as_ref())? {
            key = key.meta(k, v);
        }
        if let Some(credits) = Credits::from_arg(get("credits").as_ref())? {
            key = key.credits(credits);
        }
        Ok(key)
    }
}

/// Refuses keys of `item` that are not in `allowed` (a typo would otherwise be ignored).
fn check_keys(what: &str, item: &Bound<'_, PyDict>, allowed: &[&str]) -> PyResult<()> {
    for key in item.keys() {
        let key: String = key.extract()?;
        if !allowed.contains(&key.as_str()) {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "{what} has an unexpected key {key:?}; the keys are {}",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

/// Each item of `items` as a `dict`.
fn dicts<'py>(what: &str, items: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let mut out = Vec::new();
    for item in items
        .try_iter()
        .map_err(|_| wrong_type(what, "an iterable of dicts", items))?
    {
        let item = item?;
        let dict = item.cast_into::<PyDict>().map_err(|e| {
            wrong_type(
                &format!("each item of {what}"),
                "a dict",
                e.into_inner().as_any(),
            )
        })?;
        out.push(dict);
    }
    Ok(out)
}

#[pymethods]
impl TokenStore {
    /// Opens (creating if missing) the file store at `path_or_url`, or a PostgreSQL store
    /// at a `postgres://` URL. Durations are seconds or `timedelta`s.
    #[new]
    #[pyo3(signature = (
        path_or_url, *, flush_interval=None, retention=None, prefix=None, clock=None,
        compaction_floor=None, channel_capacity=None, max_staleness=None, poll_interval=None,
        lock_timeout=None, idle_in_transaction_timeout=None, migrate_schema=true,
        tombstone_horizon=None, ssl_mode=None, ssl_root_cert=None, ssl_client_cert=None,
        usage_days=None
    ))]
    #[allow(clippy::too_many_arguments, reason = "Python's keyword arguments")]
    fn new(
        py: Python<'_>,
        path_or_url: &Bound<'_, PyAny>,
        flush_interval: Option<&Bound<'_, PyAny>>,
        retention: Option<&Bound<'_, PyAny>>,
        prefix: Option<String>,
        clock: Option<PyRef<'_, ManualClock>>,
        compaction_floor: Option<u64>,
        channel_capacity: Option<usize>,
        max_staleness: Option<&Bound<'_, PyAny>>,
        poll_interval: Option<&Bound<'_, PyAny>>,
        lock_timeout: Option<&Bound<'_, PyAny>>,
        idle_in_transaction_timeout: Option<&Bound<'_, PyAny>>,
        migrate_schema: bool,
        tombstone_horizon: Option<&Bound<'_, PyAny>>,
        ssl_mode: Option<String>,
        ssl_root_cert: Option<PathBuf>,
        ssl_client_cert: Option<(PathBuf, PathBuf)>,
        usage_days: Option<u32>,
    ) -> PyResult<TokenStore> {
        let path: PathBuf = path_or_url
            .extract()
            .map_err(|_| wrong_type("path_or_url", "a str or an os.PathLike", path_or_url))?;
        let mut builder = tokencache::TokenStore::builder(&path).migrate_schema(migrate_schema);
        if let Some(d) = convert::opt_duration("flush_interval", flush_interval)? {
            builder = builder.flush_interval(d);
        }
        if let Some(d) = convert::opt_duration("retention", retention)? {
            builder = builder.retention(d);
        }
        if let Some(prefix) = prefix {
            builder = builder.prefix(prefix);
        }
        if let Some(clock) = clock {
            builder = builder.clock(clock.0.clone());
        }
        if let Some(bytes) = compaction_floor {
            builder = builder.compaction_floor(bytes);
        }
        if let Some(capacity) = channel_capacity {
            builder = builder.channel_capacity(capacity);
        }
        if let Some(days) = usage_days {
            builder = builder.usage_days(days);
        }
        if let Some(d) = convert::opt_duration("max_staleness", max_staleness)? {
            builder = builder.max_staleness(d);
        }
        if let Some(d) = convert::opt_duration("poll_interval", poll_interval)? {
            builder = builder.poll_interval(d);
        }
        if let Some(d) = convert::opt_duration("lock_timeout", lock_timeout)? {
            builder = builder.lock_timeout(d);
        }
        if let Some(d) =
            convert::opt_duration("idle_in_transaction_timeout", idle_in_transaction_timeout)?
        {
            builder = builder.idle_in_transaction_timeout(d);
        }
        if let Some(d) = convert::opt_duration("tombstone_horizon", tombstone_horizon)? {
            builder = builder.tombstone_horizon(d);
        }
        if let Some(mode) = ssl_mode {
            let mode: tokencache::SslMode = mode
                .parse()
                .map_err(|e| invalid(py, format!("ssl_mode: {e}")))?;
            builder = builder.ssl_mode(mode);
        }
        if let Some(root) = ssl_root_cert {
            builder = builder.ssl_root_cert(root);
        }
        if let Some((cert, key)) = ssl_client_cert {
            builder = builder.ssl_client_cert(cert, key);
        }
        let generation = fork::generation();
        let store = py.detach(|| builder.open()).map_err(|e| error(py, e))?;
        if let tokencache::Location::File(file) = store.location() {
            fork::opened(file);
        }
        Ok(TokenStore {
            store: Some(store),
            closed: AtomicBool::new(false),
            generation,
        })
    }

    /// Checks `token` (and that it grants `scope`, if given) and returns the accepted
    /// `Token`, or raises a `Rejected` subclass. A token with credits spends `cost` of them
    /// (default 1; 0 checks without spending), once every other check passed. Lock-free in
    /// Rust; holds the GIL (about half a microsecond, less than releasing and taking it
    /// back would cost).
    #[pyo3(signature = (token, scope=None, *, cost=None))]
    fn validate(
        &self,
        py: Python<'_>,
        token: &Bound<'_, PyAny>,
        scope: Option<&str>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Token> {
        let store = self.live(py)?;
        let cost = match cost.filter(|c| !c.is_none()) {
            Some(c) => crate::objects::count("cost", c)?,
            None => 1,
        };
        let text = convert::token_text(token)?;
        let result = match scope {
            Some(scope) => store.validate_scope_cost(&text, scope, cost),
            None => store.validate_cost(&text, cost),
        };
        result
            .map(|t| Token(t.into_owned()))
            .map_err(|r| rejected(py, r))
    }

    /// `validate` with the GIL released around the Rust call: for the measurement in
    /// `tokencache.bench` (docs/PYTHON.md, "The GIL"), not for use.
    #[pyo3(signature = (token, scope=None))]
    fn _validate_released(
        &self,
        py: Python<'_>,
        token: &Bound<'_, PyAny>,
        scope: Option<&str>,
    ) -> PyResult<Token> {
        let store = self.live(py)?;
        let text = convert::token_text(token)?;
        let result = py.detach(|| {
            match scope {
                Some(scope) => store.validate_scope(&text, scope),
                None => store.validate(&text),
            }
            .map(|t| t.into_owned())
        });
        result.map(Token).map_err(|r| rejected(py, r))
    }

    /// Issues a token, durably (on disk when this returns). `expires_in`: seconds or a
    /// timedelta; `rate_limit`: `"100/s"`, `"600/min burst 20"`...; `meta`: a dict of str;
    /// `credits`: a `Credits` (file stores only).
    #[pyo3(signature = (name, *, scopes=None, expires_in=None, rate_limit=None, owner=None, meta=None, credits=None))]
    #[allow(clippy::too_many_arguments, reason = "Python's keyword arguments")]
    fn issue(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        scopes: Option<&Bound<'_, PyAny>>,
        expires_in: Option<&Bound<'_, PyAny>>,
        rate_limit: Option<&Bound<'_, PyAny>>,
        owner: Option<&Bound<'_, PyAny>>,
        meta: Option<&Bound<'_, PyAny>>,
        credits: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<IssuedToken> {
        let store = self.live(py)?;
        let new = Self::new_token(name, scopes, expires_in, rate_limit, owner, meta, credits)?;
        let issued = py.detach(|| store.issue(new)).map_err(|e| error(py, e))?;
        Ok(IssuedToken::of(&issued))
    }

    /// Issues several tokens in one durable write (all or none). Each item is a dict with
    /// `issue`'s arguments as keys (`name` required).
    fn issue_many(
        &self,
        py: Python<'_>,
        requests: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<IssuedToken>> {
        let store = self.live(py)?;
        let mut news = Vec::new();
        for item in dicts("requests", requests)? {
            check_keys("issue_many item", &item, &ISSUE_KEYS)?;
            let get = |k: &str| item.get_item(k).ok().flatten();
            let name =
                get("name").ok_or_else(|| invalid(py, "each issue_many item needs a name"))?;
            news.push(Self::new_token(
                &name,
                get("scopes").as_ref(),
                get("expires_in").as_ref(),
                get("rate_limit").as_ref(),
                get("owner").as_ref(),
                get("meta").as_ref(),
                get("credits").as_ref(),
            )?);
        }
        let issued = py
            .detach(|| store.issue_many(news))
            .map_err(|e| error(py, e))?;
        Ok(issued.iter().map(IssuedToken::of).collect())
    }

    /// Revokes token `id`, durably; later validations raise `Revoked`.
    fn revoke(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<()> {
        let store = self.live(py)?;
        let id = convert::token_id(id)?;
        py.detach(|| store.revoke(&id)).map_err(|e| error(py, e))
    }

    /// Deletes token `id`, durably; later validations raise `Unknown`.
    fn delete(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<()> {
        let store = self.live(py)?;
        let id = convert::token_id(id)?;
        py.detach(|| store.delete(&id)).map_err(|e| error(py, e))
    }

    /// Deletes every token revoked or expired more than `age` ago (0: all of them),
    /// durably; returns how many.
    #[pyo3(signature = (age=None))]
    fn purge(&self, py: Python<'_>, age: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let store = self.live(py)?;
        let age = convert::opt_duration("age", age)?.unwrap_or_default();
        py.detach(|| store.purge(age)).map_err(|e| error(py, e))
    }

    /// Issues a replacement of token `id` (same name, scopes, limit, owner, metadata,
    /// lifetime) and makes the old one expire within `grace`, in one durable write.
    fn rotate(
        &self,
        py: Python<'_>,
        id: &Bound<'_, PyAny>,
        grace: &Bound<'_, PyAny>,
    ) -> PyResult<IssuedToken> {
        let store = self.live(py)?;
        let id = convert::token_id(id)?;
        let grace = convert::duration("grace", grace)?;
        let issued = py
            .detach(|| store.rotate(&id, grace))
            .map_err(|e| error(py, e))?;
        Ok(IssuedToken::of(&issued))
    }

    /// Sets (`"100/s"`...) or removes (`None`) token `id`'s rate limit, durably.
    fn set_rate_limit(
        &self,
        py: Python<'_>,
        id: &Bound<'_, PyAny>,
        rate_limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let store = self.live(py)?;
        let id = convert::token_id(id)?;
        let limit = convert::opt_rate_limit(rate_limit)?;
        py.detach(|| store.set_rate_limit(&id, limit))
            .map_err(|e| error(py, e))
    }

    /// Sets (a `Credits`) or removes (`None`) token `id`'s credits, durably; a refill counts
    /// its periods from now. File stores only (a PostgreSQL store raises
    /// `InvalidArgumentError`).
    fn set_credits(
        &self,
        py: Python<'_>,
        id: &Bound<'_, PyAny>,
        credits: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let store = self.live(py)?;
        let id = convert::token_id(id)?;
        let credits = Credits::from_arg(credits)?;
        py.detach(|| store.set_credits(&id, credits))
            .map_err(|e| error(py, e))
    }

    /// Token `id`'s `Credits` as of now (a refill that came due counted), or `None` for a
    /// token without credits or an unknown id.
    fn credits(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<Option<Credits>> {
        let store = self.live(py)?;
        Ok(store.credits(&convert::token_id(id)?).map(Credits))
    }

    /// Token `id`'s accepted validations: `(total, [(date, count), ...])`, each UTC day
    /// of the last `usage_days` it was used, oldest first. Exact: every validation that
    /// returned before the call is counted.
    fn usage(
        &self,
        py: Python<'_>,
        id: &Bound<'_, PyAny>,
    ) -> PyResult<(u64, Vec<(chrono::NaiveDate, u64)>)> {
        let store = self.live(py)?;
        let id = convert::token_id(id)?;
        let usage = py.detach(|| store.usage(&id)).map_err(|e| error(py, e))?;
        Ok((usage.total, usage.days))
    }

    /// Token `id`'s details, or `None`.
    fn get(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<Option<TokenInfo>> {
        let store = self.live(py)?;
        Ok(store.get(&convert::token_id(id)?).map(TokenInfo))
    }

    /// Every token's details, oldest first (revoked and expired ones included).
    fn list(&self, py: Python<'_>) -> PyResult<Vec<TokenInfo>> {
        let store = self.live(py)?;
        Ok(py
            .detach(|| store.list())
            .into_iter()
            .map(TokenInfo)
            .collect())
    }

    /// The tokens of `owner`, oldest first.
    fn owned_by(&self, py: Python<'_>, owner: &str) -> PyResult<Vec<TokenInfo>> {
        let store = self.live(py)?;
        Ok(py
            .detach(|| store.owned_by(owner))
            .into_iter()
            .map(TokenInfo)
            .collect())
    }

    /// Revokes every token of `owner` in one durable write; returns how many.
    fn revoke_owner(&self, py: Python<'_>, owner: &str) -> PyResult<usize> {
        let store = self.live(py)?;
        py.detach(|| store.revoke_owner(owner))
            .map_err(|e| error(py, e))
    }

    /// Deletes every token of `owner` in one durable write; returns how many.
    fn delete_owner(&self, py: Python<'_>, owner: &str) -> PyResult<usize> {
        let store = self.live(py)?;
        py.detach(|| store.delete_owner(owner))
            .map_err(|e| error(py, e))
    }

    /// Sets (`"6000/min"`...) or removes (`None`) the rate limit `owner`'s tokens share.
    fn set_owner_rate_limit(
        &self,
        py: Python<'_>,
        owner: &str,
        rate_limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let store = self.live(py)?;
        let limit = convert::opt_rate_limit(rate_limit)?;
        py.detach(|| store.set_owner_rate_limit(owner, limit))
            .map_err(|e| error(py, e))
    }

    /// The rate limit `owner`'s tokens share, or `None`.
    fn owner_rate_limit(&self, py: Python<'_>, owner: &str) -> PyResult<Option<String>> {
        let store = self.live(py)?;
        Ok(store.owner_rate_limit(owner).map(|l| l.to_string()))
    }

    /// Replaces token `id`'s metadata (a dict of str; empty removes all), durably.
    fn set_meta(
        &self,
        py: Python<'_>,
        id: &Bound<'_, PyAny>,
        meta: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let store = self.live(py)?;
        let id = convert::token_id(id)?;
        let pairs = convert::meta(Some(meta))?;
        py.detach(|| store.set_meta(&id, &pairs))
            .map_err(|e| error(py, e))
    }

    /// Imports a key minted elsewhere by its SHA-256 (64 hex digits), durably; returns its
    /// id. `validate` accepts the key from then on.
    #[pyo3(signature = (sha256, *, name=None, scopes=None, expires_at=None, created_at=None, rate_limit=None, owner=None, meta=None, credits=None))]
    #[allow(clippy::too_many_arguments, reason = "Python's keyword arguments")]
    fn import_key(
        &self,
        py: Python<'_>,
        sha256: &Bound<'_, PyAny>,
        name: Option<&Bound<'_, PyAny>>,
        scopes: Option<&Bound<'_, PyAny>>,
        expires_at: Option<&Bound<'_, PyAny>>,
        created_at: Option<&Bound<'_, PyAny>>,
        rate_limit: Option<&Bound<'_, PyAny>>,
        owner: Option<&Bound<'_, PyAny>>,
        meta: Option<&Bound<'_, PyAny>>,
        credits: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let store = self.live(py)?;
        let item = PyDict::new(py);
        item.set_item("sha256", sha256)?;
        for (k, v) in [
            ("name", name),
            ("scopes", scopes),
            ("expires_at", expires_at),
            ("created_at", created_at),
            ("rate_limit", rate_limit),
            ("owner", owner),
            ("meta", meta),
            ("credits", credits),
        ] {
            if let Some(v) = v {
                item.set_item(k, v)?;
            }
        }
        let key = Self::imported(&item)?;
        let id = py.detach(|| store.import(key)).map_err(|e| error(py, e))?;
        Ok(id.to_string())
    }

    /// Imports several keys in one durable write (all or none); each item is a dict with
    /// `import_key`'s arguments as keys. Returns their ids.
    fn import_many(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let store = self.live(py)?;
        let keys = dicts("keys", keys)?
            .iter()
            .map(Self::imported)
            .collect::<PyResult<Vec<_>>>()?;
        let ids = py
            .detach(|| store.import_many(keys))
            .map_err(|e| error(py, e))?;
        Ok(ids.iter().map(|id| id.to_string()).collect())
    }

    /// Subscribes to the change feed (`capacity` items queued at most; default 4096).
    #[pyo3(signature = (capacity=None))]
    fn subscribe(&self, py: Python<'_>, capacity: Option<usize>) -> PyResult<Changes> {
        let store = self.live(py)?;
        let inner = match capacity {
            Some(c) => store.subscribe_with_capacity(c).map_err(|e| error(py, e))?,
            None => store.subscribe(),
        };
        Ok(Changes::new(inner))
    }

    /// Returns once every `last_used` observed before the call is on disk.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.live(py)?;
        py.detach(|| store.flush()).map_err(|e| error(py, e))
    }

    /// Flushes, stops the persister and releases the lock. Closing a closed store does
    /// nothing; any other call on it raises `ClosedError`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let store = match self.live(py) {
            Ok(store) => store,
            Err(e) if self.closed.load(Ordering::Acquire) => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let store = store.clone();
        py.detach(|| store.close()).map_err(|e| error(py, e))
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The store's counters, as a dict (validations, rejections by reason, writes...).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.live(py)?.stats();
        let d = PyDict::new(py);
        d.set_item("tokens", s.tokens)?;
        d.set_item("dirty_tokens", s.dirty_tokens)?;
        d.set_item("validations", s.validations)?;
        let r = PyDict::new(py);
        let rj = s.rejections;
        for (k, v) in [
            ("malformed", rj.malformed),
            ("unknown", rj.unknown),
            ("revoked", rj.revoked),
            ("expired", rj.expired),
            ("rate_limited", rj.rate_limited),
            ("missing_scope", rj.missing_scope),
            ("unavailable", rj.unavailable),
            ("usage_exceeded", rj.usage_exceeded),
        ] {
            r.set_item(k, v)?;
        }
        d.set_item("rejections", r)?;
        d.set_item("dirty_sends", s.dirty_sends)?;
        d.set_item("channel_full", s.channel_full)?;
        d.set_item("snapshots_written", s.snapshots_written)?;
        d.set_item("journal_records_written", s.journal_records_written)?;
        d.set_item("bytes_written", s.bytes_written)?;
        d.set_item("journal_bytes_written", s.journal_bytes_written)?;
        d.set_item("compaction_bytes_written", s.compaction_bytes_written)?;
        d.set_item("write_errors", s.write_errors)?;
        d.set_item("last_error", s.last_error)?;
        d.set_item("last_snapshot_at", s.last_snapshot_at)?;
        d.set_item("last_catch_up_at", s.last_catch_up_at)?;
        d.set_item("replica_lag", s.replica_lag.map(|l| l.as_secs_f64()))?;
        Ok(d)
    }

    /// The store file's path (for a PostgreSQL store, its URL with the password redacted).
    #[getter]
    fn location(&self) -> String {
        self.where_()
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyResult<PyRef<'_, Self>> {
        slf.live(slf.py())?;
        Ok(slf)
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let state = if self.closed.load(Ordering::Acquire) {
            "closed"
        } else {
            "open"
        };
        format!("TokenStore({:?}, {state})", self.where_())
    }
}
