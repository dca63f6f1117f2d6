#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a short budget each.
#
#   FUZZ_SECONDS=20 scripts/fuzz.sh      # default 20 s per target
#
# Installs cargo-fuzz if it is missing. libFuzzer needs nightly compiler flags: with a
# nightly toolchain installed it is used; otherwise RUSTC_BOOTSTRAP=1 lets stable accept them.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
for target in $(cargo fuzz list); do
    echo "== fuzzing $target for ${seconds}s"
    cargo "${toolchain[@]}" fuzz run "$target" -- -max_total_time="$seconds"
done
