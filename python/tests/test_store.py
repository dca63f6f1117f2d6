"""The store from Python: issue, validate, every rejection, every call, reopen, bad input."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone

import pytest

import tokencache
from tokencache import ManualClock, TokenStore


def test_issue_validate_revoke_then_reopen_keeps_everything(path):
    with TokenStore(path) as store:
        issued = store.issue("ci-bot", scopes=["read", "write"], expires_in=timedelta(days=1),
                             rate_limit="600/min burst 20", owner="acme", meta={"plan": "pro"})
        other = store.issue("other")
        token = store.validate(issued.secret, scope="write")
        assert (token.id, token.name, token.scopes) == (issued.id, "ci-bot", ("read", "write"))
        assert token.owner == "acme" and token.meta == {"plan": "pro"}
        assert token.expires_at.tzinfo is not None and token.expires_at.utcoffset() == timedelta(0)
        assert token.has_scope("read") and not token.has_scope("admin")
        store.revoke(other.id)
    with TokenStore(path) as store:
        info = store.get(issued.id)
        assert info.name == "ci-bot" and info.scopes == ("read", "write")
        assert info.rate_limit == "600/min burst 20" and info.owner == "acme"
        assert info.meta == {"plan": "pro"} and info.last_used is not None
        assert info.created_at <= datetime.now(timezone.utc) < info.expires_at
        assert store.validate(issued.secret).name == "ci-bot"
        with pytest.raises(tokencache.Revoked):
            store.validate(other.secret)
        assert store.get(other.id).revoked_at is not None


def test_every_rejection_is_its_own_subclass_of_rejected(path, tmp_path):
    clock = ManualClock()
    with TokenStore(str(tmp_path / "other.snap")) as other:
        foreign = other.issue("elsewhere").secret
    with TokenStore(path, clock=clock) as store:
        ok = store.issue("ok", scopes=["read"])
        short = store.issue("short", expires_in=60)
        limited = store.issue("limited", rate_limit="1/h")
        revoked = store.issue("revoked")
        store.revoke(revoked.id)
        clock.advance(61)
        cases = [
            ("tc_typo", tokencache.Malformed, "malformed"),
            (foreign, tokencache.Unknown, "unknown"),
            (revoked.secret, tokencache.Revoked, "revoked"),
            (short.secret, tokencache.Expired, "expired"),
        ]
        for secret, cls, reason in cases:
            with pytest.raises(cls) as caught:
                store.validate(secret)
            assert isinstance(caught.value, tokencache.Rejected)
            assert (caught.value.http_status, caught.value.reason) == (401, reason)
            assert reason in str(caught.value)
        with pytest.raises(tokencache.MissingScope) as caught:
            store.validate(ok.secret, scope="write")
        assert caught.value.http_status == 403
        store.validate(limited.secret)
        with pytest.raises(tokencache.RateLimited) as caught:
            store.validate(limited.secret)
        assert caught.value.http_status == 429
        assert 3500 < caught.value.retry_after <= 3600
        stats = store.stats()
        assert stats["rejections"] == {"malformed": 1, "unknown": 1, "revoked": 1, "expired": 1,
                                       "rate_limited": 1, "missing_scope": 1, "unavailable": 0,
                                       "usage_exceeded": 0}


def test_delete_purge_rotate_and_limits(store):
    a = store.issue("a", scopes=["read"], rate_limit="100/s")
    b = store.issue("b")
    new = store.rotate(a.id, 3600)
    assert new.id != a.id
    rotated = store.validate(new.secret)
    assert rotated.name == "a" and rotated.scopes == ("read",)
    assert store.get(new.id).rate_limit == "100/s"
    store.set_rate_limit(new.id, "5/250ms")
    assert store.get(new.id).rate_limit == "5/250ms"
    store.set_rate_limit(new.id, None)
    assert store.get(new.id).rate_limit is None
    store.delete(b.id)
    with pytest.raises(tokencache.Unknown):
        store.validate(b.secret)
    assert store.get(b.id) is None
    store.revoke(a.id)
    assert store.purge(0) == 1
    assert [t.id for t in store.list()] == [new.id]
    store.flush()


def test_owners_meta_prefix_imports_and_the_change_feed(tmp_path):
    path = str(tmp_path / "keys.snap")
    with TokenStore(path, prefix="sk_live") as store:
        feed = store.subscribe(capacity=100)
        key = store.issue("acme-ci", owner="acme", meta={"plan": "pro"})
        assert key.secret.startswith("sk_live_")
        store.set_owner_rate_limit("acme", "6000/min")
        assert store.owner_rate_limit("acme") == "6000/min"
        store.set_meta(key.id, {"plan": "team"})
        assert store.validate(key.secret).meta == {"plan": "team"}
        legacy = "legacy-key-from-the-old-system"
        imported = store.import_key(hashlib.sha256(legacy.encode()).hexdigest(), name="old-ci", owner="acme")
        assert store.validate(legacy).id == imported
        assert store.get(imported).imported
        ids = store.import_many([{"sha256": hashlib.sha256(b"k2").hexdigest(), "scopes": ["read"]}])
        assert store.validate("k2").scopes == ("read",) and len(ids) == 1
        assert {t.id for t in store.owned_by("acme")} == {key.id, imported}
        assert store.revoke_owner("acme") == 2
        with pytest.raises(tokencache.Revoked):
            store.validate(key.secret)
        assert store.delete_owner("acme") == 2
    kinds = [e.kind for e in feed if isinstance(e, tokencache.ChangeEvent)]
    assert kinds == ["issued", "owner_rate_limit_set", "meta_set", "imported", "imported",
                     "revoked", "revoked", "deleted", "deleted"]


def test_issue_many_is_one_write_and_refuses_unknown_keys(store):
    before = store.stats()["journal_records_written"]
    issued = store.issue_many([{"name": f"bot-{i}", "scopes": ["read"]} for i in range(50)])
    assert len(issued) == 50 and store.stats()["journal_records_written"] == before + 1
    with pytest.raises(TypeError, match='unexpected key "scope"'):
        store.issue_many([{"name": "x", "scope": "read"}])


def test_store_view_and_inspect_read_beside_the_open_store(store, path):
    issued = store.issue("seen")
    view = tokencache.StoreView.read(path)
    assert len(view) == 1 and view.get(issued.id).name == "seen"
    assert view.validate(issued.secret).name == "seen"
    info = tokencache.inspect(path)
    assert info["tokens"] == 1 and info["version"] == tokencache.FORMAT_VERSION


def test_closed_store_refuses_every_call_and_close_twice_is_fine(path):
    store = TokenStore(path)
    issued = store.issue("x")
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(tokencache.ClosedError, match="closed"):
        store.validate(issued.secret)
    with pytest.raises(tokencache.ClosedError):
        store.issue("y")
    with TokenStore(path) as again:  # the lock was released
        assert again.validate(issued.secret).name == "x"


def test_second_open_is_locked_and_names_the_file(store, path):
    with pytest.raises(tokencache.LockedError, match="tokens.snap"):
        TokenStore(path)


def test_a_damaged_journal_is_refused_naming_the_file_and_offset_and_left_untouched(path):
    # A writer killed without closing leaves its changes in the journal (close compacts).
    import subprocess, sys
    code = f"import os, tokencache as t; s = t.TokenStore({path!r}); [s.issue(f'x{{i}}') for i in range(3)]; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    journal = path + ".journal"
    data = bytearray(open(journal, "rb").read())
    data[50] ^= 0xFF  # inside the first of three records: damage, not a torn tail
    open(journal, "wb").write(data)
    with pytest.raises(tokencache.CorruptError) as caught:
        TokenStore(path)
    assert "tokens.snap.journal" in str(caught.value) and "at byte 32" in str(caught.value)
    assert open(journal, "rb").read() == bytes(data)


@pytest.mark.parametrize("bad", [12, None, b"tc_bytes", ["tc_"], 3.5])
def test_non_str_tokens_are_a_type_error(store, bad):
    with pytest.raises(TypeError, match="token must be str"):
        store.validate(bad)


def test_huge_and_odd_strings_are_malformed_not_a_crash(store):
    for text in ["", " ", "tc_" + "A" * 10_000_000, "\ud800", "tc_\x00" * 10, "é" * 1000]:
        with pytest.raises(tokencache.Malformed):
            store.validate(text)


def test_a_directory_as_path_is_refused(tmp_path):
    with pytest.raises(tokencache.BadPathError, match="directory"):
        TokenStore(str(tmp_path))


def test_bad_arguments_say_what_is_wrong(store):
    with pytest.raises(tokencache.InvalidArgumentError, match="rate limit"):
        store.issue("x", rate_limit="lots")
    with pytest.raises(tokencache.InvalidArgumentError, match="0 requests"):
        store.issue("x", rate_limit="0/s")
    with pytest.raises(tokencache.InvalidArgumentError, match="negative"):
        store.issue("x", expires_in=-1)
    with pytest.raises(tokencache.InvalidArgumentError):
        store.issue("x", expires_in=float("nan"))
    with pytest.raises(TypeError, match="scopes"):
        store.issue("x", scopes="read")
    with pytest.raises(TypeError, match="name must be str"):
        store.issue(42)
    with pytest.raises(tokencache.InvalidArgumentError):
        store.issue("x" * 10_000)
    with pytest.raises(tokencache.InvalidArgumentError, match="not a token id"):
        store.revoke("not-an-id")
    with pytest.raises(tokencache.UnknownIdError, match="abcd1234"):
        store.revoke("abcd1234")
    with pytest.raises(tokencache.InvalidArgumentError):
        store.import_key("not-hex")
    with pytest.raises(tokencache.InvalidArgumentError, match="timezone-aware"):
        store.import_key("0" * 64, expires_at=datetime(2030, 1, 1))
    with pytest.raises(tokencache.InvalidArgumentError):
        TokenStore(os.devnull + "x", prefix="bad prefix!")
    assert store.list() == []  # nothing was issued by any of them


def test_rate_limit_text_form_round_trips():
    assert tokencache.parse_rate_limit("600 / minute burst 20") == "600/min burst 20"
    with pytest.raises(tokencache.InvalidArgumentError, match="100/s"):
        tokencache.parse_rate_limit("fast")


def test_secrets_never_appear_in_reprs(store):
    issued = store.issue("x")
    token = store.validate(issued.secret)
    for obj in (issued, token, store.get(issued.id), store):
        assert issued.secret not in repr(obj)
