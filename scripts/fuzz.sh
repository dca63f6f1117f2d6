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
# Each target grows its corpus in fuzz/corpus/<target>/ (not committed) and starts from the
# committed seeds in fuzz/seeds/<target>/ (read, never written) when there are any.
for target in $(cargo fuzz list); do
    echo "== fuzzing $target for ${seconds}s"
    corpus=("$PWD/fuzz/corpus/$target")
    mkdir -p "${corpus[0]}"
    if [ -d "fuzz/seeds/$target" ]; then
        corpus+=("$PWD/fuzz/seeds/$target")
    fi
    cargo "${toolchain[@]}" fuzz run "$target" "${corpus[@]}" -- -max_total_time="$seconds"
done
