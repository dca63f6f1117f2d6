"""A store shared by threads, used across os.fork(), shared with the Rust CLI, and on
PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest

import tokencache
from tokencache import TokenStore


def test_threads_share_one_store_and_every_validation_is_counted(store):
    tokens = store.issue_many([{"name": f"t{i}", "scopes": ["read"]} for i in range(20)])
    per_thread, errors, revoked = 5_000, [], []

    def validate(k: int) -> None:
        try:
            for i in range(per_thread):
                t = tokens[(k + i) % len(tokens)]
                try:
                    assert store.validate(t.secret, scope="read").id == t.id
                except tokencache.Revoked:
                    revoked.append(t.id)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def change() -> None:
        for _ in range(20):
            store.revoke(store.issue("churn").id)  # durable calls run without the GIL
        store.revoke(tokens[0].id)

    pool = [threading.Thread(target=validate, args=(k,)) for k in range(8)] + [threading.Thread(target=change)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert set(revoked) <= {tokens[0].id}
    stats = store.stats()
    assert stats["validations"] + stats["rejections"]["revoked"] == 8 * per_thread
    assert stats["rejections"]["revoked"] == len(revoked)
    assert len(store.list()) == 40


def _in_child(body) -> int:
    """Runs ``body`` in a forked child; its exit code (0 when it returned normally)."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            body()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_is_refused_the_store_and_the_parent_keeps_it(path):
    store = TokenStore(path)
    issued = store.issue("before-fork")
    feed = store.subscribe()

    def child() -> None:
        for call in (lambda: store.validate(issued.secret), lambda: store.issue("x"),
                     lambda: store.list(), lambda: store.close(), lambda: feed.try_recv()):
            try:
                call()
            except tokencache.ForkedError as e:
                assert "os.fork()" in str(e)
            else:
                raise AssertionError("a call in the child was not refused")

    assert _in_child(child) == 0
    assert store.validate(issued.secret).name == "before-fork"  # the parent is untouched
    store.issue("after-fork")
    store.close()
    with TokenStore(path) as again:
        assert sorted(t.name for t in again.list()) == ["after-fork", "before-fork"]


def test_a_forked_child_dropping_the_store_does_not_hang_or_write(path):
    store = TokenStore(path)
    store.issue("x")
    size = os.path.getsize(path + ".journal")

    def child() -> None:
        import gc

        nonlocal store
        store = None  # the child's copy is dropped: leaked, not closed (no persister here)
        gc.collect()

    assert _in_child(child) == 0
    assert os.path.getsize(path + ".journal") == size
    store.close()


def test_a_store_written_by_the_rust_cli_opens_in_python(cli, path):
    env = {**os.environ, "TOKENCACHE_STORE": path}
    token = subprocess.run([cli, "issue", "from-rust", "--scope", "read", "--rate-limit", "100/s",
                            "--owner", "acme", "--meta", "plan=pro"],
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
    with TokenStore(path) as store:
        accepted = store.validate(token, scope="read")
        assert (accepted.name, accepted.owner, accepted.meta) == ("from-rust", "acme", {"plan": "pro"})
        assert store.get(accepted.id).rate_limit == "100/s"


def test_a_store_written_in_python_opens_in_the_rust_cli(cli, path):
    with TokenStore(path) as store:
        kept = store.issue("from-python", scopes=["write"], expires_in=3600)
        gone = store.issue("revoked-in-python")
        store.revoke(gone.id)
    env = {**os.environ, "TOKENCACHE_STORE": path}
    ok = subprocess.run([cli, "validate", "--scope", "write"], input=kept.secret, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([cli, "validate"], input=gone.secret, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "revoked" in refused.stderr + refused.stdout
    listed = json.loads(subprocess.run([cli, "list", "--json"], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    assert sorted(t["name"] for t in listed) == ["from-python", "revoked-in-python"]


def test_a_postgresql_store_is_shared_by_two_replicas(pg_url):
    with TokenStore(pg_url) as a, TokenStore(pg_url, poll_interval=0.05) as b:
        issued = a.issue("replicated", scopes=["read"])
        feed = b.subscribe()
        # b learns of it through LISTEN/NOTIFY or its poll; wait on b's change feed.
        while True:
            item = feed.recv(timeout=30)
            if isinstance(item, tokencache.ChangeEvent) and item.id == issued.id:
                assert item.origin == "replica"
                break
        assert b.validate(issued.secret, scope="read").name == "replicated"
        a.revoke(issued.id)
        while True:
            item = feed.recv(timeout=30)
            if isinstance(item, tokencache.ChangeEvent) and item.kind == "revoked":
                break
        with pytest.raises(tokencache.Revoked):
            b.validate(issued.secret)
        assert "postgres" in a.location


def test_a_live_forked_child_does_not_keep_the_parents_store_locked(path):
    # The lock is an flock on a descriptor the child inherits; the package's after-fork
    # hook closes the child's copy, so the parent's close releases the store at once.
    store = TokenStore(path)
    store.issue("x")
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(ready_w, b"r")  # os.fork() ran the after-fork hooks before returning here
        os.read(r, 1)
        os._exit(0)
    assert os.read(ready_r, 1) == b"r"
    try:
        with pytest.raises(tokencache.LockedError, match="tokens.snap.lock"):
            TokenStore(path)  # the parent's own lock stands
        store.close()
        with TokenStore(path) as again:  # while the child still lives
            assert [t.name for t in again.list()] == ["x"]
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
