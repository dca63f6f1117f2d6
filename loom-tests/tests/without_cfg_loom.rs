//! The loom models in this crate (`write_behind.rs`, `rate_limit.rs`, `credits.rs`) compile only under
//! `--cfg loom`; in a plain `cargo test --workspace` they are empty. This one test is there
//! to say so in the test output instead of running nothing in silence:
//!
//! `test loom_models_are_not_built_without_cfg_loom ... ignored, loom models need ...`
//!
//! Run the models with `bash scripts/loom.sh` (it sets `RUSTFLAGS="--cfg loom"` and its own
//! target directory).
#![cfg(not(loom))]

#[test]
#[ignore = "loom models need RUSTFLAGS=\"--cfg loom\": run `bash scripts/loom.sh`"]
fn loom_models_are_not_built_without_cfg_loom() {}
