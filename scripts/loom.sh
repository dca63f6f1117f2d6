#!/usr/bin/env bash
# Model-checks the write-behind protocol with loom (see "What loom checks" in docs/DESIGN.md).
#
#   scripts/loom.sh                       # every model and its broken twin (1-2 min)
#   scripts/loom.sh flush                 # only tests whose name contains "flush"
#   LOOM_MAX_PREEMPTIONS=3 scripts/loom.sh   # deeper: every model at bound 3 (about 5 min)
#
# Each model declares its own preemption bound (2 or 3); LOOM_MAX_PREEMPTIONS, when set,
# overrides it for all. Builds in release mode into target/loom, so the `--cfg loom` build
# never invalidates the normal one in target/.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/loom}"
# loom explores single-threaded per model; two test threads use this machine's two cores.
exec cargo test --release -p loom-tests -- --test-threads="${LOOM_TEST_THREADS:-2}" "$@"
