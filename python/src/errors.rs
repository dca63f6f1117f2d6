//! The one mapping from the store's errors and rejections to the Python exceptions defined
//! in `tokencache/_errors.py`.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// Where the exception classes live.
const MODULE: &str = "tokencache._errors";

/// The exception class `name` from `tokencache._errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    Ok(py.import(MODULE)?.getattr(name)?.cast_into::<PyType>()?)
}

/// An exception of class `name` with `message`.
pub(crate) fn raise(py: Python<'_>, name: &str, message: impl Into<String>) -> PyErr {
    match class(py, name) {
        Ok(ty) => PyErr::from_type(ty, message.into()),
        Err(e) => e,
    }
}

/// The Python exception for a store error: the class by kind, the Rust message as is (it
/// names the file, the offset, the token id, and says what to do).
pub(crate) fn error(py: Python<'_>, e: tokencache::Error) -> PyErr {
    use tokencache::Error as E;
    let name = match &e {
        E::Io { .. } => "StoreIOError",
        E::Database { .. } => "DatabaseError",
        E::Corrupt { .. } | E::FutureVersion { .. } => "CorruptError",
        E::Locked { .. } => "LockedError",
        E::BadPath { .. } | E::DanglingLink { .. } | E::LoosePermissions { .. } => "BadPathError",
        E::PersisterDied { .. } => "PersisterDiedError",
        E::UnknownId(_) => "UnknownIdError",
        E::InvalidRequest(_) | E::InvalidRateLimit(_) | E::InvalidSetting(_) => {
            "InvalidArgumentError"
        }
        E::Closed { .. } => "ClosedError",
        _ => "Error",
    };
    raise(py, name, e.to_string())
}

/// `Error::...` as a `PyResult`, for `map_err`.
pub(crate) fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, "InvalidArgumentError", message)
}

/// The rejection classes, in `Rejection`'s order, looked up once: a refused token is a
/// common answer (a scan of bad tokens, a revoked client), so it costs no import.
static REJECTIONS: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

const REJECTION_NAMES: [&str; 8] = [
    "Malformed",
    "Unknown",
    "Revoked",
    "Expired",
    "RateLimited",
    "MissingScope",
    "Unavailable",
    "UsageExceeded",
];

/// The Python exception for a refused token: `Rejected`'s subclass for the reason, its
/// message the reason and the advice the CLI prints; `RateLimited` carries `retry_after`
/// in seconds, `UsageExceeded` the seconds to the next refill (or `None`).
pub(crate) fn rejected(py: Python<'_>, rejection: tokencache::Rejection) -> PyErr {
    use tokencache::Rejection as R;
    let classes = match REJECTIONS.get_or_try_init(py, || {
        REJECTION_NAMES
            .iter()
            .map(|name| class(py, name).map(Bound::unbind))
            .collect::<PyResult<Vec<_>>>()
    }) {
        Ok(classes) => classes,
        Err(e) => return e,
    };
    let index = match rejection {
        R::Malformed => 0,
        R::Unknown => 1,
        R::Revoked => 2,
        R::Expired => 3,
        R::RateLimited { .. } => 4,
        R::MissingScope => 5,
        R::Unavailable => 6,
        R::UsageExceeded { .. } => 7,
        // A reason added in a later Rust release: the base class says it was refused.
        _ => {
            return match class(py, "Rejected") {
                Ok(ty) => PyErr::from_type(ty, rejection.to_string()),
                Err(e) => e,
            }
        }
    };
    let ty = classes[index].bind(py).clone();
    match rejection {
        R::RateLimited { retry_after } => {
            let secs = retry_after.as_secs_f64();
            let message = format!("rate limited: retry after {secs:.3} s");
            PyErr::from_type(ty, (message, secs))
        }
        R::UsageExceeded { retry_after } => {
            let secs = retry_after.map(|d| d.as_secs_f64());
            let message = match secs {
                Some(secs) => format!("{rejection}: the credits refill in {secs:.3} s"),
                None => format!("{}: {}", rejection, rejection.advice()),
            };
            PyErr::from_type(ty, (message, secs))
        }
        _ => PyErr::from_type(ty, format!("{}: {}", rejection, rejection.advice())),
    }
}

/// A `TypeError` saying what was expected where.
pub(crate) fn wrong_type(what: &str, expected: &str, got: &Bound<'_, PyAny>) -> PyErr {
    let got = got
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    PyTypeError::new_err(format!("{what} must be {expected}, not {got}"))
}
