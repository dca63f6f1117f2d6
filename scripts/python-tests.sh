#!/usr/bin/env bash
# The Python package's tests (the README's second test command; .ci/run runs it after the
# Rust tests):
#   1. a virtual environment (python3 -m venv) in target/py-venv, with the pinned
#      python/requirements-dev.txt installed (maturin, pytest, Flask, FastAPI, httpx...);
#   2. the Rust CLI (`cargo build --features cli`), which the tests of stores shared with
#      Rust run, unless TOKENCACHE_CLI names one;
#   3. `pip install ./python`: the wheel built by maturin (release profile, abi3), as a user
#      installs it;
#   4. pytest over python/tests (a PostgreSQL store too, in a throwaway cluster, when the
#      server binaries are under /usr/lib/postgresql/*/bin).
# Needs python3 (3.9 or later, with venv), the Rust toolchain, and the package registries.
# About 3 minutes from a clean clone (3m13s here with CARGO_BUILD_JOBS=1 and the CLI
# already built; most of it compiling the release module).
# PYTHON picks the interpreter; arguments go to pytest (e.g. -k fork).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="target/py-venv"

step() { printf '\n==> %s\n' "$*"; }

if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9)' 2>/dev/null; then
    echo "error: $PYTHON is missing or older than 3.9; install Python 3.9+ (with venv) or set PYTHON" >&2
    exit 1
fi

step "virtual environment $VENV, with python/requirements-dev.txt"
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p target
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r python/requirements-dev.txt

# Built even when target/debug/tokencache exists (a no-op when it is fresh): a CLI older than
# the library would refuse the files the Python package writes (a newer format version).
if [ -z "${TOKENCACHE_CLI:-}" ]; then
    step "the Rust CLI for the tests of stores shared with Rust (cargo build --features cli)"
    cargo build --features cli --bin tokencache
fi

step "pip install ./python (maturin builds the abi3 wheel)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python

step "pytest python/tests"
# Run from outside the source tree so `import tokencache` finds the installed package.
cd python/tests
exec "../../$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" .
