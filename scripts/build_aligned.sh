#!/usr/bin/env bash
# Builds a checkout for scripts/compare_builds.sh with every function and every block that
# is not fallen into aligned to 64 bytes (docs/BENCHMARKS.md, "Closing the gap"):
#
#   scripts/build_aligned.sh TREE OUT
#
# builds TREE into OUT/target (its own target directory, so TREE's usual build stays) and
# leaves OUT as a tree to compare: `scripts/compare_builds.sh OLD_OUT NEW_OUT`. Two builds
# aligned alike place their hot loops alike, so what is left between them is the code,
# not where the linker happened to put it.
set -euo pipefail
tree=$(cd "$1" && pwd); mkdir -p "$2"; out=$(cd "$2" && pwd)
export RUSTFLAGS="-C llvm-args=-align-all-functions=6 -C llvm-args=-align-all-nofallthru-blocks=6"
export CARGO_TARGET_DIR="$out/target"
cd "$tree"
cargo build --release --features cli
cargo bench --bench store --no-run
