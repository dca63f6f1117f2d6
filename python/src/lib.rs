//! `tokencache._native`: the Python bindings of the tokencache store (the Python package
//! `tokencache` re-exports them; see `docs/PYTHON.md`).
//!
//! One Rust store per Python `TokenStore`; validation runs the Rust hot path while holding
//! the GIL (releasing it costs more than the validation, measured in docs/PYTHON.md), and
//! every durable call (which waits on an fsync or a database commit) releases it.

mod convert;
mod errors;
mod fork;
mod objects;
mod store;

use pyo3::prelude::*;

/// The native module: the classes and functions `tokencache/__init__.py` re-exports.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    fork::watch();
    m.add_class::<store::TokenStore>()?;
    m.add_class::<objects::Token>()?;
    m.add_class::<objects::IssuedToken>()?;
    m.add_class::<objects::TokenInfo>()?;
    m.add_class::<objects::ChangeEvent>()?;
    m.add_class::<objects::Missed>()?;
    m.add_class::<objects::Changes>()?;
    m.add_class::<objects::StoreView>()?;
    m.add_class::<objects::ManualClock>()?;
    m.add_class::<objects::Credits>()?;
    m.add_function(wrap_pyfunction!(objects::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(objects::parse_rate_limit, m)?)?;
    m.add_function(wrap_pyfunction!(fork::_release_inherited_locks, m)?)?;
    m.add("FORMAT_VERSION", tokencache::FORMAT_VERSION)?;
    m.add("MAX_CREDITS", tokencache::MAX_CREDITS)?;
    m.add("DEFAULT_PREFIX", tokencache::PREFIX.trim_end_matches('_'))?;
    Ok(())
}
