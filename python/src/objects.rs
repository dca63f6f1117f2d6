//! The values the store hands to Python: an accepted token, an issued one, a token's
//! details, the change feed and its items, the read-only view, the manual clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::convert;
use crate::errors::{error, invalid, raise, rejected, wrong_type};
use crate::fork;

/// `(key, value)` pairs as a `dict` (insertion order kept).
fn meta_dict<'py, 'a>(
    py: Python<'py>,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in pairs {
        dict.set_item(k, v)?;
    }
    Ok(dict)
}

/// An accepted token, as `TokenStore.validate` returns it: owned copies of its id, name,
/// scopes, expiry, owner and metadata (it does not borrow the store, so keep it as long as
/// needed; it does not change if the token is revoked or changed later).
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct Token(pub(crate) tokencache::OwnedToken);

#[pymethods]
impl Token {
    /// The token's public id (8 characters).
    #[getter]
    fn id(&self) -> String {
        self.0.id().to_string()
    }

    /// The name given at issue.
    #[getter]
    fn name(&self) -> &str {
        self.0.name()
    }

    /// The scopes granted, in the order given.
    #[getter]
    fn scopes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.0.scopes().collect::<Vec<_>>())
    }

    /// When the token expires (UTC), or `None`.
    #[getter]
    fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at()
    }

    /// The token's owner, or `None`.
    #[getter]
    fn owner(&self) -> Option<&str> {
        self.0.owner()
    }

    /// The token's metadata as a `dict`.
    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        meta_dict(py, self.0.meta_pairs())
    }

    /// Whether the token grants `scope`.
    fn has_scope(&self, scope: &str) -> bool {
        self.0.has_scope(scope)
    }

    fn __repr__(&self) -> String {
        format!(
            "Token(id={:?}, name={:?})",
            self.0.id().as_str(),
            self.0.name()
        )
    }
}

/// A token just issued (or rotated in): `secret` is the token to hand to the client, shown
/// only here (the store keeps its SHA-256 digest only); `id` is its public id.
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct IssuedToken {
    pub(crate) secret: String,
    pub(crate) id: tokencache::TokenId,
}

impl IssuedToken {
    pub(crate) fn of(issued: &tokencache::IssuedToken) -> IssuedToken {
        IssuedToken {
            secret: issued.secret().to_string(),
            id: issued.id(),
        }
    }
}

#[pymethods]
impl IssuedToken {
    /// The whole token (`tc_<id>_<secret><checksum>`), to give to the client once.
    #[getter]
    fn secret(&self) -> &str {
        &self.secret
    }

    /// The public id, for `revoke`, `get`, logs.
    #[getter]
    fn id(&self) -> String {
        self.id.to_string()
    }

    /// Shows the id only: the secret never appears in a repr or a log.
    fn __repr__(&self) -> String {
        format!("IssuedToken(id={:?}, secret=<hidden>)", self.id.as_str())
    }
}

/// A token's details as `get` and `list` show them (never its secret or digest). Times are
/// `datetime` in UTC, or `None`.
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct TokenInfo(pub(crate) tokencache::TokenInfo);

#[pymethods]
impl TokenInfo {
    /// The public id.
    #[getter]
    fn id(&self) -> String {
        self.0.id.to_string()
    }
    /// The name given at issue.
    #[getter]
    fn name(&self) -> &str {
        &self.0.name
    }
    /// The scopes granted.
    #[getter]
    fn scopes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.0.scopes)
    }
    /// When it was issued.
    #[getter]
    fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it expires, or `None`.
    #[getter]
    fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }
    /// When it was revoked, or `None`.
    #[getter]
    fn revoked_at(&self) -> Option<DateTime<Utc>> {
        self.0.revoked_at
    }
    /// Its last successful validation, or `None` (in memory; on disk within a flush
    /// interval).
    #[getter]
    fn last_used(&self) -> Option<DateTime<Utc>> {
        self.0.last_used
    }
    /// Its rate limit in the text form (`"600/min burst 20"`), or `None`.
    #[getter]
    fn rate_limit(&self) -> Option<String> {
        self.0.rate_limit.map(|l| l.to_string())
    }
    /// Its owner, or `None`.
    #[getter]
    fn owner(&self) -> Option<&str> {
        self.0.owner.as_deref()
    }
    /// Its metadata as a `dict`.
    #[getter]
    fn meta<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        meta_dict(
            py,
            self.0.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }
    /// Whether it was imported (its digest is of a key minted elsewhere).
    #[getter]
    fn imported(&self) -> bool {
        self.0.imported
    }
    /// Its `Credits` as of this read, or `None` if it has none.
    #[getter]
    fn credits(&self) -> Option<Credits> {
        self.0.credits.map(Credits)
    }
    /// Its accepted validations since it was issued, or `None` if the store does not
    /// count them (`usage_days=0`, or a PostgreSQL store).
    #[getter]
    fn uses(&self) -> Option<u64> {
        self.0.uses
    }

    fn __repr__(&self) -> String {
        format!(
            "TokenInfo(id={:?}, name={:?}, revoked={})",
            self.0.id.as_str(),
            self.0.name,
            if self.0.revoked_at.is_some() {
                "True"
            } else {
                "False"
            }
        )
    }
}

/// One durable change from the change feed (`TokenStore.subscribe`).
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct ChangeEvent(tokencache::ChangeEvent);

#[pymethods]
impl ChangeEvent {
    /// What changed: `"issued"`, `"revoked"`, `"deleted"`, `"rotated"`,
    /// `"expiry_shortened"`, `"rate_limit_set"`, `"purged"`, `"meta_set"`, `"imported"`,
    /// `"owner_rate_limit_set"`, `"credits_set"`, `"credits_low"`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.0.kind.as_str()
    }
    /// The token changed (`None` for an owner's rate limit).
    #[getter]
    fn id(&self) -> Option<String> {
        self.0.id.map(|id| id.to_string())
    }
    /// For `"rotated"`: the id of the token it replaces.
    #[getter]
    fn replaces(&self) -> Option<String> {
        match self.0.kind {
            tokencache::ChangeKind::Rotated { old } => Some(old.to_string()),
            _ => None,
        }
    }
    /// The token's owner (the owner itself for an owner's rate limit), or `None`.
    #[getter]
    fn owner(&self) -> Option<&str> {
        self.0.owner.as_deref()
    }
    /// Whether one call over every token of the owner made it.
    #[getter]
    fn owner_wide(&self) -> bool {
        self.0.owner_wide
    }
    /// When the change was made (the store's clock).
    #[getter]
    fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    /// `"local"` (this handle) or `"replica"` (another replica of a PostgreSQL store).
    #[getter]
    fn origin(&self) -> &'static str {
        self.0.origin.as_str()
    }

    fn __repr__(&self) -> String {
        format!(
            "ChangeEvent(kind={:?}, id={:?}, origin={:?})",
            self.0.kind.as_str(),
            self.0.id.map(|i| i.to_string()),
            self.0.origin.as_str()
        )
    }
}

/// In place of `count` change events that did not fit the subscriber's queue (it read too
/// slowly); they happened between the item before and the item after.
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct Missed {
    /// How many events were dropped.
    #[pyo3(get)]
    count: u64,
}

#[pymethods]
impl Missed {
    fn __repr__(&self) -> String {
        format!("Missed(count={})", self.count)
    }
}

fn feed_item(py: Python<'_>, item: tokencache::Feed) -> PyResult<Py<PyAny>> {
    Ok(match item {
        tokencache::Feed::Event(e) => Py::new(py, ChangeEvent(e))?.into_any(),
        tokencache::Feed::Missed(count) => Py::new(py, Missed { count })?.into_any(),
    })
}

/// The change feed: an iterator of `ChangeEvent` (and `Missed`) items, each once its change
/// is durable. Iteration waits (without the GIL) for the next change and ends once the store
/// is closed and every item was read.
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct Changes {
    inner: tokencache::Changes,
    generation: u64,
}

impl Changes {
    pub(crate) fn new(inner: tokencache::Changes) -> Changes {
        Changes {
            inner,
            generation: fork::generation(),
        }
    }

    fn check_fork(&self, py: Python<'_>) -> PyResult<()> {
        if fork::generation() != self.generation {
            return Err(raise(
                py,
                "ForkedError",
                "this change feed was subscribed before os.fork(); the child gets no changes from the parent's store: subscribe to a store opened in the child",
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` (forever if `None`), in slices so Ctrl-C is seen.
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
    ) -> PyResult<Option<tokencache::Feed>> {
        self.check_fork(py)?;
        let slice = Duration::from_millis(100);
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let wait = match deadline {
                Some(d) => d
                    .saturating_duration_since(std::time::Instant::now())
                    .min(slice),
                None => slice,
            };
            let got = py.detach(|| self.inner.recv_timeout(wait));
            match got {
                Ok(item) => return Ok(Some(item)),
                Err(tokencache::FeedError::Closed) => return Ok(None),
                Err(_) => {}
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(pyo3::exceptions::PyTimeoutError::new_err(
                    "no change arrived within the timeout",
                ));
            }
        }
    }
}

#[pymethods]
impl Changes {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.wait(py, None)? {
            Some(item) => feed_item(py, item).map(Some),
            None => Ok(None),
        }
    }

    /// The next item, waiting up to `timeout` seconds (forever if `None`): `TimeoutError`
    /// if none came in time, `None` once the store is closed and every item was read.
    #[pyo3(signature = (timeout=None))]
    fn recv(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let timeout = convert::opt_duration("timeout", timeout)?;
        match self.wait(py, timeout)? {
            Some(item) => feed_item(py, item).map(Some),
            None => Ok(None),
        }
    }

    /// The next item if one is queued, else `None` (never waits).
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.check_fork(py)?;
        match self.inner.try_recv() {
            Ok(item) => feed_item(py, item).map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// A read-only view of a file store's files, without its lock and without writing: what a
/// running service holds (`last_used` as last written). `StoreView.read(path)`.
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct StoreView(tokencache::StoreView);

#[pymethods]
impl StoreView {
    /// Reads the store at `path` (which must exist).
    #[staticmethod]
    fn read(py: Python<'_>, path: std::path::PathBuf) -> PyResult<StoreView> {
        py.detach(|| tokencache::StoreView::read(&path))
            .map(StoreView)
            .map_err(|e| error(py, e))
    }

    /// Every token's details, oldest first.
    fn list(&self) -> Vec<TokenInfo> {
        self.0.list().into_iter().map(TokenInfo).collect()
    }

    /// A token's details, or `None`.
    fn get(&self, id: &Bound<'_, PyAny>) -> PyResult<Option<TokenInfo>> {
        Ok(self.0.get(&convert::token_id(id)?).map(TokenInfo))
    }

    /// Checks `token` (and `scope`) read-only: records no use, checks no rate limit.
    #[pyo3(signature = (token, scope=None))]
    fn validate(
        &self,
        py: Python<'_>,
        token: &Bound<'_, PyAny>,
        scope: Option<&str>,
    ) -> PyResult<Token> {
        let text = convert::token_text(token)?;
        let result = match scope {
            Some(scope) => self.0.validate_scope(&text, scope),
            None => self.0.validate(&text),
        };
        result
            .map(|t| Token(t.into_owned()))
            .map_err(|r| rejected(py, r))
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    /// The store file's path.
    #[getter]
    fn path(&self) -> std::path::PathBuf {
        self.0.path().to_path_buf()
    }
}

/// A clock moved by hand, for tests: `TokenStore(path, clock=ManualClock())`. It starts at
/// 2026-01-01T00:00:00Z (or `start`, a timezone-aware datetime).
#[pyclass(frozen, module = "tokencache")]
pub(crate) struct ManualClock(pub(crate) tokencache::ManualClock);

#[pymethods]
impl ManualClock {
    #[new]
    #[pyo3(signature = (start=None))]
    fn new(start: Option<&Bound<'_, PyAny>>) -> PyResult<ManualClock> {
        let start_ms = match start {
            Some(s) if !s.is_none() => {
                let at = convert::datetime("start", s)?;
                u64::try_from(at.timestamp_millis())
                    .map_err(|_| crate::errors::invalid(s.py(), "start must be after 1970-01-01"))?
            }
            _ => tokencache::ManualClock::DEFAULT_START_MS,
        };
        Ok(ManualClock(tokencache::ManualClock::new(start_ms)))
    }

    /// Moves the clock forward by `by` (seconds or a timedelta) and waits until the stores
    /// using it have seen the new time (their timed work, e.g. a flush, has run).
    fn advance(&self, py: Python<'_>, by: &Bound<'_, PyAny>) -> PyResult<()> {
        let by = convert::duration("by", by)?;
        py.detach(|| self.0.advance(by));
        Ok(())
    }

    /// The clock's time.
    fn now(&self) -> Option<DateTime<Utc>> {
        use tokencache::Clock;
        DateTime::from_timestamp_millis(self.0.now_ms() as i64)
    }
}

/// What a file store's files hold, read without the lock and without writing (as the CLI's
/// `inspect` shows it): a `dict`.
#[pyfunction]
pub(crate) fn inspect<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
) -> PyResult<Bound<'py, PyDict>> {
    let info = py
        .detach(|| tokencache::inspect(&path))
        .map_err(|e| error(py, e))?;
    let d = PyDict::new(py);
    d.set_item("version", info.version)?;
    d.set_item("file_len", info.file_len)?;
    d.set_item("body_len", info.body_len)?;
    d.set_item("body_crc", info.body_crc)?;
    d.set_item(
        "written_at",
        DateTime::<Utc>::from_timestamp_millis(info.written_at_ms as i64),
    )?;
    d.set_item("snapshot_seq", info.snapshot_seq)?;
    d.set_item("journal_len", info.journal_len)?;
    d.set_item("journal_records", info.journal_records)?;
    d.set_item("journal_torn", info.journal_torn)?;
    d.set_item("tokens", info.tokens)?;
    d.set_item("revoked", info.revoked)?;
    Ok(d)
}

/// Reads a rate limit in the CLI's text form and writes it back in the canonical form
/// (`"600 / minute burst 20"` gives `"600/min burst 20"`); `InvalidArgumentError` says why
/// a text is refused.
#[pyfunction]
pub(crate) fn parse_rate_limit(text: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(convert::rate_limit(text)?.to_string())
}

/// A token's credits (`issue(..., credits=...)`, `set_credits`, `credits`): how many
/// validations (or how much `cost`) it may still spend, and how they come back. Checked
/// when made: an `InvalidArgumentError` says what is wrong.
#[pyclass(frozen, eq, module = "tokencache")]
#[derive(PartialEq)]
pub(crate) struct Credits(pub(crate) tokencache::Credits);

impl Credits {
    /// An optional credits argument: a `tokencache.Credits` (checked when it was made), or
    /// `None`.
    pub(crate) fn from_arg(
        value: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<tokencache::Credits>> {
        match value.filter(|v| !v.is_none()) {
            Some(v) => v
                .cast::<Credits>()
                .map(|c| Some(c.get().0))
                .map_err(|_| wrong_type("credits", "a tokencache.Credits or None", v)),
            None => Ok(None),
        }
    }
}

#[pymethods]
impl Credits {
    /// `remaining` credits; `refill_every` (seconds or a timedelta, at least 60 s) or
    /// `refill_day` (1-31, at 00:00 UTC) brings them back to `refill_amount` (default
    /// `remaining`); `alert_below` reports `"credits_low"` on the change feed when spending
    /// crosses below it.
    #[new]
    #[pyo3(signature = (remaining, *, refill_every=None, refill_day=None, refill_amount=None, alert_below=None))]
    fn new(
        py: Python<'_>,
        remaining: &Bound<'_, PyAny>,
        refill_every: Option<&Bound<'_, PyAny>>,
        refill_day: Option<&Bound<'_, PyAny>>,
        refill_amount: Option<&Bound<'_, PyAny>>,
        alert_below: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Credits> {
        let remaining = count("remaining", remaining)?;
        let mut credits = tokencache::Credits::new(remaining);
        let every = convert::opt_duration("refill_every", refill_every)?;
        let day = match refill_day.filter(|d| !d.is_none()) {
            Some(d) => Some(count("refill_day", d)?),
            None => None,
        };
        let amount = match refill_amount.filter(|a| !a.is_none()) {
            Some(a) => Some(count("refill_amount", a)?),
            None => None,
        };
        let amount_or_remaining = amount.unwrap_or(remaining);
        if amount_or_remaining > tokencache::MAX_CREDITS {
            return Err(invalid(
                py,
                format!(
                    "credits must be at most {} (got {amount_or_remaining})",
                    tokencache::MAX_CREDITS
                ),
            ));
        }
        match (every, day) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    py,
                    "give refill_every or refill_day, not both: credits refill one way",
                ))
            }
            (Some(period), None) => {
                if period < tokencache::MIN_REFILL_PERIOD {
                    return Err(invalid(
                        py,
                        format!(
                            "refill_every must be at least {} s (got {} s)",
                            tokencache::MIN_REFILL_PERIOD.as_secs(),
                            period.as_secs_f64()
                        ),
                    ));
                }
                credits = credits.refill(tokencache::Refill::every(period, amount_or_remaining));
            }
            (None, Some(day)) => {
                if !(1..=31).contains(&day) {
                    return Err(invalid(
                        py,
                        format!("refill_day must be 1 to 31 (got {day}); a shorter month refills on its last day"),
                    ));
                }
                credits =
                    credits.refill(tokencache::Refill::monthly(day as u8, amount_or_remaining));
            }
            (None, None) if amount.is_some() => {
                return Err(invalid(
                    py,
                    "refill_amount needs refill_every or refill_day to say when credits refill",
                ))
            }
            (None, None) => {}
        }
        if let Some(threshold) = alert_below.filter(|a| !a.is_none()) {
            credits = credits.alert_below(count("alert_below", threshold)?);
        }
        Ok(Credits(credits))
    }

    /// The credits left (as given, or as read from the store at that moment).
    #[getter]
    fn remaining(&self) -> u64 {
        self.0.remaining()
    }

    /// The refill period in seconds (a float), or `None`.
    #[getter]
    fn refill_every(&self) -> Option<f64> {
        match self.0.refill_plan() {
            Some(tokencache::Refill::Every { period, .. }) => Some(period.as_secs_f64()),
            _ => None,
        }
    }

    /// The day of the month of a monthly refill, or `None`.
    #[getter]
    fn refill_day(&self) -> Option<u8> {
        match self.0.refill_plan() {
            Some(tokencache::Refill::Monthly { day, .. }) => Some(day),
            _ => None,
        }
    }

    /// The credits after each refill, or `None` without a refill.
    #[getter]
    fn refill_amount(&self) -> Option<u64> {
        self.0.refill_plan().map(|r| r.amount())
    }

    /// The low-credit alert's threshold, or `None`.
    #[getter]
    fn alert_below(&self) -> Option<u64> {
        self.0.alert_threshold()
    }

    fn __repr__(&self) -> String {
        let mut parts = vec![self.0.remaining().to_string()];
        if let Some(s) = self.refill_every() {
            parts.push(format!("refill_every={s}"));
        }
        if let Some(d) = self.refill_day() {
            parts.push(format!("refill_day={d}"));
        }
        if let Some(a) = self.refill_amount() {
            parts.push(format!("refill_amount={a}"));
        }
        if let Some(t) = self.alert_below() {
            parts.push(format!("alert_below={t}"));
        }
        format!("Credits({})", parts.join(", "))
    }
}

/// A count of credits (or a day): an `int`, not negative (a `bool` or a float is a
/// `TypeError`; a negative or huge int an `InvalidArgumentError`).
pub(crate) fn count(what: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    if !value.is_instance_of::<pyo3::types::PyInt>()
        || value.is_instance_of::<pyo3::types::PyBool>()
    {
        return Err(crate::errors::wrong_type(what, "an int", value));
    }
    value.extract::<u64>().map_err(|_| {
        invalid(
            value.py(),
            format!(
                "{what} must be 0 to {} (got {value})",
                tokencache::MAX_CREDITS
            ),
        )
    })
}
