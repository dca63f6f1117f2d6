"""Shared fixtures: a scratch store path, the Rust CLI binary, a throwaway PostgreSQL
cluster (as the Rust tests start one), and the HTTP test clients' store."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

import tokencache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "tokens.snap")


@pytest.fixture
def store(path: str):
    with tokencache.TokenStore(path) as s:
        yield s


@pytest.fixture(scope="session")
def cli() -> str:
    """The Rust `tokencache` binary: $TOKENCACHE_CLI, else target/{debug,release}/tokencache
    (scripts/python-tests.sh builds it with `cargo build --features cli`)."""
    given = os.environ.get("TOKENCACHE_CLI")
    candidates = [given] if given else [str(ROOT / "target" / p / "tokencache") for p in ("debug", "release")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    pytest.fail(
        "the Rust CLI is needed to test stores shared with Rust: build it with "
        "`cargo build --features cli` (scripts/python-tests.sh does) or set TOKENCACHE_CLI"
    )


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def _as_postgres(args: list[str]) -> None:
    cmd = (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + args
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert out.returncode == 0, f"{args} failed: {out.stdout}\n{out.stderr}"


@pytest.fixture(scope="session")
def pg_url():
    """A database URL: $TOKENCACHE_PG_URL, or a throwaway cluster on a free port (the
    server binaries under /usr/lib/postgresql/*/bin, run as `postgres` when root). Skipped
    only when neither exists, as the issue asks ("where the server binaries exist")."""
    if os.environ.get("TOKENCACHE_PG_URL"):
        yield os.environ["TOKENCACHE_PG_URL"]
        return
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    top = tempfile.mkdtemp(prefix="tokencache-py-pg")
    if os.geteuid() == 0:
        shutil.chown(top, "postgres", "postgres")
    data = os.path.join(top, "data")
    _as_postgres([f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off"
    _as_postgres([f"{bin_dir}/pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(top, "log"), "-w", "start"])
    try:
        yield f"postgres://postgres@127.0.0.1:{port}/postgres"
    finally:
        _as_postgres([f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(top, ignore_errors=True)
