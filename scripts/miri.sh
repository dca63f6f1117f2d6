#!/usr/bin/env bash
# Miri on the crate's `unsafe` (map.rs: a lent entry, and the extras borrowed through it, kept
# alive by the reader's guard; extras.rs: the pointer the extras hang from).
# Needs the nightly toolchain's miri component: `rustup component add --toolchain nightly miri`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/miri}"
# Miri has no real clock source or file system for the rest of the suite; the map test
# needs neither. Isolation off only so getrandom can seed the hasher.
export MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-disable-isolation"
exec cargo +nightly miri test --lib map::tests "$@"
