//! Python values to the store's types: durations (seconds or `timedelta`), datetimes,
//! token ids, rate limits in the CLI's text form, scopes and metadata. Each refusal says
//! which argument and why.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyDelta, PyDict, PyString};

use crate::errors::{invalid, rejected, wrong_type};

/// A duration given as seconds (`int` or `float`, finite, not negative) or a `timedelta`
/// (not negative).
pub(crate) fn duration(what: &str, value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let py = value.py();
    if value.is_instance_of::<PyDelta>() {
        let delta: chrono::TimeDelta = value.extract()?;
        return delta
            .to_std()
            .map_err(|_| invalid(py, format!("{what} must not be negative, got {delta}")));
    }
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(wrong_type(
            what,
            "seconds (int or float) or a timedelta",
            value,
        ));
    }
    let secs: f64 = value
        .extract()
        .map_err(|_| wrong_type(what, "seconds (int or float) or a timedelta", value))?;
    Duration::try_from_secs_f64(secs).map_err(|_| {
        invalid(
            py,
            format!("{what} must be a finite, non-negative number of seconds, got {secs}"),
        )
    })
}

/// An optional duration (`None` stays `None`).
pub(crate) fn opt_duration(
    what: &str,
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Duration>> {
    match value {
        Some(v) if !v.is_none() => duration(what, v).map(Some),
        _ => Ok(None),
    }
}

/// A timezone-aware `datetime` (a naive one is refused: its zone is unknown).
pub(crate) fn datetime(what: &str, value: &Bound<'_, PyAny>) -> PyResult<DateTime<Utc>> {
    let py = value.py();
    if !value.is_instance_of::<pyo3::types::PyDateTime>() {
        return Err(wrong_type(what, "a timezone-aware datetime", value));
    }
    let aware: DateTime<chrono::FixedOffset> = value.extract().map_err(|_| {
        invalid(
            py,
            format!("{what} must be timezone-aware (e.g. datetime.now(timezone.utc)); a naive datetime has no zone"),
        )
    })?;
    Ok(aware.with_timezone(&Utc))
}

/// A token id (`"a1B2c3D4"`).
pub(crate) fn token_id(value: &Bound<'_, PyAny>) -> PyResult<tokencache::TokenId> {
    let py = value.py();
    let text = string("id", value)?;
    text.parse().map_err(|_| {
        let shown: String = text.chars().take(40).collect();
        invalid(
            py,
            format!("{shown:?} is not a token id (8 letters and digits, as `list()` shows them)"),
        )
    })
}

/// A `str` argument (anything else is a `TypeError`).
pub(crate) fn string(what: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    if !value.is_instance_of::<PyString>() {
        return Err(wrong_type(what, "str", value));
    }
    value.extract()
}

/// A rate limit in the CLI's text form (`"100/s"`, `"600/min burst 20"`, `"5/250ms"`).
pub(crate) fn rate_limit(value: &Bound<'_, PyAny>) -> PyResult<tokencache::RateLimit> {
    let py = value.py();
    let text = string("rate_limit", value)?;
    text.parse::<tokencache::RateLimit>()
        .map_err(|e| invalid(py, format!("invalid rate limit: {e}")))
}

/// An optional rate limit (`None` removes or leaves out the limit).
pub(crate) fn opt_rate_limit(
    value: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<tokencache::RateLimit>> {
    match value {
        Some(v) if !v.is_none() => rate_limit(v).map(Some),
        _ => Ok(None),
    }
}

/// Scopes: any iterable of `str` but a `str` itself (which would be its characters).
pub(crate) fn scopes(value: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(Vec::new());
    };
    if value.is_instance_of::<PyString>() {
        return Err(pyo3::exceptions::PyTypeError::new_err(
            "scopes must be an iterable of str, such as [\"read\", \"write\"], not a single str",
        ));
    }
    let mut out = Vec::new();
    for item in value
        .try_iter()
        .map_err(|_| wrong_type("scopes", "an iterable of str", value))?
    {
        out.push(string("each scope", &item?)?);
    }
    Ok(out)
}

/// Metadata: a `dict` of `str` to `str`, or an iterable of `(key, value)` pairs.
pub(crate) fn meta(value: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, String)>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if let Ok(dict) = value.cast::<PyDict>() {
        for (k, v) in dict.iter() {
            out.push((string("each meta key", &k)?, string("each meta value", &v)?));
        }
        return Ok(out);
    }
    let pairs = value
        .try_iter()
        .map_err(|_| wrong_type("meta", "a dict of str to str", value))?;
    for pair in pairs {
        let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair?
            .extract()
            .map_err(|_| wrong_type("meta", "a dict of str to str", value))?;
        out.push((string("each meta key", &k)?, string("each meta value", &v)?));
    }
    Ok(out)
}

/// The text of a token argument: `Malformed` for a `str` that cannot be UTF-8 (a lone
/// surrogate), which no token is; a `TypeError` for anything but a `str`.
pub(crate) fn token_text(token: &Bound<'_, PyAny>) -> PyResult<PyBackedStr> {
    if !token.is_instance_of::<PyString>() {
        return Err(wrong_type("token", "str", token));
    }
    token
        .extract::<PyBackedStr>()
        .map_err(|_| rejected(token.py(), tokencache::Rejection::Malformed))
}
