//! Model checks of tokencache's write-behind protocol with loom; the models are in
//! `tests/write_behind.rs` and only build under `--cfg loom`.
//!
//! Run them with `scripts/loom.sh` (release build in `target/loom`); what each model checks,
//! its broken twin and its preemption bound are in `docs/DESIGN.md`, "What loom checks".
