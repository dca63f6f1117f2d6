//! The integration tests: one crate (one binary to build and link), a module per area.
//!
//! Helpers live in [`common`]. A test that must run in a process of its own (to be killed
//! with SIGKILL, to hold the store lock from outside, to be a replica) is a `child_*` test,
//! `#[ignore]`d, started by [`common::spawn_child_test`] with its full name
//! (`lock::child_try_open`).
//!
//! Not here: `tests/process_wide/` (the live heap and the clock thread, which every store in
//! this binary would disturb) and `tests/crash/` (SIGKILL: its hundreds of child processes
//! would share this binary's store locks while they start; it includes [`common`]). `alloc` installs this crate's global allocator: it counts
//! allocations per thread, so the other modules' tests, on their own threads, do not
//! change what it measures.
//!
//! Modules gated by a feature build only with it, as the separate binaries' `required-features`
//! did: `cli` and `stress` need `cli`, `layer` needs `axum`, `axum_service` (the example's
//! `/metrics`) `axum` and `metrics`, `pg`, `pg_catch_up`, `pg_keys` and `pg_tls` need `postgres`.

mod common;

mod alloc;
mod async_calls;
#[cfg(all(feature = "axum", feature = "metrics"))]
mod axum_service;
#[cfg(feature = "cli")]
mod cli;
mod credits;
mod faults;
mod feed;
mod files;
mod hostile;
mod journal;
mod keys;
#[cfg(feature = "axum")]
mod layer;
mod lifecycle;
mod lock;
mod model;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "postgres")]
mod pg_catch_up;
#[cfg(feature = "postgres")]
mod pg_keys;
#[cfg(feature = "postgres")]
mod pg_tls;
mod rate_limit;
mod security;
mod shutdown;
mod store;
#[cfg(feature = "cli")]
mod stress;
mod usage;
mod view;
