"""Credits: a token's metered use through the Python API (issue, validate with a cost,
set_credits, credits, reopen, the feed, stats) and the 429 the HTTP integrations answer."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta

import pytest

import tokencache
from tokencache import Credits, ManualClock, TokenStore, UsageExceeded


def test_spending_down_to_usage_exceeded_spends_nothing_more(store):
    issued = store.issue("metered", credits=Credits(3))
    for _ in range(3):
        store.validate(issued.secret)
    with pytest.raises(UsageExceeded) as caught:
        store.validate(issued.secret)
    e = caught.value
    assert isinstance(e, tokencache.Rejected)
    assert e.retry_after is None and e.http_status == 429 and e.reason == "usage_exceeded"
    assert "usage exceeded" in str(e) and issued.secret not in str(e)
    assert store.credits(issued.id).remaining == 0
    assert store.stats()["rejections"]["usage_exceeded"] == 1
    # A token without credits is not metered.
    free = store.issue("free")
    for _ in range(5):
        store.validate(free.secret, cost=1000)
    assert store.credits(free.id) is None and store.get(free.id).credits is None


def test_cost_is_spent_whole_or_not_at_all(store):
    issued = store.issue("metered", scopes=["read"], credits=Credits(10))
    store.validate(issued.secret, cost=4)
    store.validate(issued.secret, cost=4)
    with pytest.raises(UsageExceeded):
        store.validate(issued.secret, cost=3)
    assert store.credits(issued.id).remaining == 2
    store.validate(issued.secret, cost=0)  # checks without spending
    store.validate(issued.secret, "read")  # a scoped validation spends 1
    assert store.credits(issued.id).remaining == 1
    with pytest.raises(tokencache.MissingScope):
        store.validate(issued.secret, "write", cost=1)  # refused before it spends
    with pytest.raises(ValueError, match="cost"):
        store.validate(issued.secret, cost=-1)
    with pytest.raises(TypeError, match="cost must be an int"):
        store.validate(issued.secret, cost=1.5)
    assert store.credits(issued.id).remaining == 1
    store.validate(issued.secret, "read", cost=1)
    assert store.credits(issued.id).remaining == 0


def test_set_and_clear_credits_durably_with_feed_events(store):
    feed = store.subscribe()
    issued = store.issue("later")
    assert feed.recv(timeout=10).kind == "issued"
    store.validate(issued.secret)
    store.set_credits(issued.id, Credits(1, refill_day=15, refill_amount=100, alert_below=10))
    event = feed.recv(timeout=10)
    assert (event.kind, event.id) == ("credits_set", issued.id)
    got = store.get(issued.id).credits
    assert got == Credits(1, refill_day=15, refill_amount=100, alert_below=10)
    assert (got.remaining, got.refill_day, got.refill_amount, got.alert_below) == (1, 15, 100, 10)
    assert got.refill_every is None
    store.validate(issued.secret)
    with pytest.raises(UsageExceeded) as caught:
        store.validate(issued.secret)
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    store.set_credits(issued.id, None)
    assert feed.recv(timeout=10).kind == "credits_set"
    assert store.credits(issued.id) is None
    store.validate(issued.secret)  # unmetered again
    with pytest.raises(TypeError, match="tokencache.Credits"):
        store.set_credits(issued.id, {"remaining": 5})
    with pytest.raises(tokencache.UnknownIdError):
        store.set_credits("AAAAAAAA", Credits(1))


def test_reopening_keeps_the_remaining_credits_and_the_plan(path):
    plan = Credits(10, refill_every=timedelta(hours=1), refill_amount=20, alert_below=3)
    with TokenStore(path) as store:
        issued = store.issue("metered", credits=plan)
        store.validate(issued.secret, cost=7)
    # close() wrote the spend (within no flush interval); the reopened store spends on.
    with TokenStore(path) as store:
        again = store.credits(issued.id)
        assert again.remaining == 3
        assert (again.refill_every, again.refill_amount, again.alert_below) == (3600.0, 20, 3)
        store.validate(issued.secret, cost=3)
        with pytest.raises(UsageExceeded):
            store.validate(issued.secret)
    view = tokencache.StoreView.read(path)
    assert view.get(issued.id).credits.remaining == 0


def test_a_refill_comes_back_after_its_period(path):
    clock = ManualClock()
    with TokenStore(path, clock=clock) as store:
        issued = store.issue("daily", credits=Credits(2, refill_every=60))
        store.validate(issued.secret, cost=2)
        with pytest.raises(UsageExceeded) as caught:
            store.validate(issued.secret)
        assert caught.value.retry_after == pytest.approx(60.0)
        clock.advance(30)
        with pytest.raises(UsageExceeded) as caught:
            store.validate(issued.secret)
        assert caught.value.retry_after == pytest.approx(30.0)
        clock.advance(30)
        assert store.credits(issued.id).remaining == 2
        store.validate(issued.secret, cost=2)


def test_crossing_the_alert_threshold_reports_credits_low_once(store):
    feed = store.subscribe()
    issued = store.issue("alerting", credits=Credits(5, alert_below=3))
    assert feed.recv(timeout=10).kind == "issued"
    store.validate(issued.secret)  # 4
    store.validate(issued.secret)  # 3
    store.flush()
    assert feed.try_recv() is None
    store.validate(issued.secret)  # 2: crossed
    store.validate(issued.secret)  # 1: still below, no second alert
    store.flush()
    event = feed.recv(timeout=10)
    assert (event.kind, event.id) == ("credits_low", issued.id)
    store.flush()
    assert feed.try_recv() is None


def test_issue_many_and_import_take_credits(store):
    a, b = store.issue_many([{"name": "a", "credits": Credits(1)}, {"name": "b"}])
    assert store.credits(a.id).remaining == 1 and store.credits(b.id) is None
    key_id = store.import_key("ab" * 32, name="imported", credits=Credits(7))
    assert store.credits(key_id).remaining == 7


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: Credits(-1), tokencache.InvalidArgumentError, "remaining must be 0 to"),
        (lambda: Credits(tokencache.MAX_CREDITS + 1), tokencache.InvalidArgumentError, "at most"),
        (lambda: Credits(1, refill_every=30), tokencache.InvalidArgumentError, "at least 60 s"),
        (lambda: Credits(1, refill_every=-5), tokencache.InvalidArgumentError, "non-negative"),
        (lambda: Credits(1, refill_day=0), tokencache.InvalidArgumentError, "1 to 31"),
        (lambda: Credits(1, refill_day=32), tokencache.InvalidArgumentError, "1 to 31"),
        (lambda: Credits(1, refill_every=60, refill_day=1), tokencache.InvalidArgumentError, "not both"),
        (lambda: Credits(1, refill_amount=5), tokencache.InvalidArgumentError, "needs refill_every"),
        (lambda: Credits(1, refill_every=60, refill_amount=tokencache.MAX_CREDITS + 1),
         tokencache.InvalidArgumentError, "at most"),
        (lambda: Credits(1.5), TypeError, "remaining must be an int"),
        (lambda: Credits(True), TypeError, "remaining must be an int"),
        (lambda: Credits("10"), TypeError, "remaining must be an int"),
        (lambda: Credits(1, alert_below=-1), tokencache.InvalidArgumentError, "alert_below"),
    ],
)
def test_invalid_credits_say_what_is_wrong(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_credits_is_a_value(store):
    c = Credits(5, refill_every=timedelta(minutes=2), alert_below=1)
    assert c == Credits(5, refill_every=120, refill_amount=5, alert_below=1)
    assert c != Credits(5)
    assert repr(c) == "Credits(5, refill_every=120, refill_amount=5, alert_below=1)"
    assert Credits(tokencache.MAX_CREDITS).remaining == 2**38 - 1
    with pytest.raises(TypeError, match="tokencache.Credits"):
        store.issue("x", credits=5)


def test_a_postgresql_store_refuses_credits(pg_url):
    with TokenStore(pg_url) as store:
        with pytest.raises(tokencache.InvalidArgumentError, match="file stores only"):
            store.issue("metered", credits=Credits(1))
        issued = store.issue("plain")
        with pytest.raises(tokencache.InvalidArgumentError, match="file stores only"):
            store.set_credits(issued.id, Credits(1))
        with pytest.raises(tokencache.InvalidArgumentError, match="file stores only"):
            store.set_credits(issued.id, None)  # removal too: the database keeps none
        assert store.credits(issued.id) is None


def _bearer(token) -> dict:
    return {"Authorization": f"Bearer {token.secret}"}


def test_flask_and_middleware_answer_429_with_retry_after_when_credits_refill(path):
    from flask import Flask, g
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from tokencache.flask import require_token
    from tokencache.middleware import TokenMiddleware

    with TokenStore(path, clock=ManualClock()) as store:
        refilled = store.issue("hourly", credits=Credits(1, refill_every=3600))
        spent = store.issue("once", credits=Credits(1))

        app = Flask(__name__)

        @app.get("/x")
        @require_token(store=store)
        def x() -> str:
            return g.token.name

        client = app.test_client()
        assert client.get("/x", headers=_bearer(refilled)).text == "hourly"
        r = client.get("/x", headers=_bearer(refilled))
        assert r.status_code == 429 and r.headers["Retry-After"] == "3600"
        assert "WWW-Authenticate" not in r.headers and refilled.secret not in r.text
        assert client.get("/x", headers=_bearer(spent)).status_code == 200
        r = client.get("/x", headers=_bearer(spent))
        assert r.status_code == 429 and "Retry-After" not in r.headers

        def plain(environ, start_response):
            return Response("ok")(environ, start_response)

        wsgi = Client(TokenMiddleware(plain, store))
        r = wsgi.get("/y", headers=_bearer(refilled))
        assert r.status_code == 429 and r.headers["Retry-After"] == "3600"
        r = wsgi.get("/y", headers=_bearer(spent))
        assert r.status_code == 429 and "Retry-After" not in r.headers


def test_each_integration_spends_its_cost_per_request(store):
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient
    from flask import Flask, g
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from tokencache.fastapi import TokenDependency
    from tokencache.flask import require_token
    from tokencache.middleware import AsgiTokenMiddleware, TokenMiddleware

    flask_app = Flask(__name__)

    @flask_app.get("/report")
    @require_token("write", store=store, cost=5)
    def report() -> str:
        return g.token.name

    fastapi_app = FastAPI()
    priced = TokenDependency(store, "write", cost=5)

    @fastapi_app.get("/report")
    def fastapi_report(token=Depends(priced)) -> str:
        return token.name

    def plain(environ, start_response):
        return Response("ok")(environ, start_response)

    async def asgi_plain(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    clients = {
        "flask": flask_app.test_client(),
        "fastapi": TestClient(fastapi_app),
        "wsgi": Client(TokenMiddleware(plain, store, "write", cost=5)),
        "asgi": TestClient(AsgiTokenMiddleware(asgi_plain, store, "write", cost=5)),
    }
    for name, client in clients.items():
        writer = store.issue(name, scopes=["write"], credits=Credits(12))
        reader = store.issue(name, credits=Credits(12))
        codes = [client.get("/report", headers=_bearer(writer)).status_code for _ in range(3)]
        assert codes == [200, 200, 429], name
        assert store.credits(writer.id).remaining == 2, name
        assert client.get("/report", headers=_bearer(reader)).status_code == 403, name
        assert store.credits(reader.id).remaining == 12, name


def test_credits_set_in_python_are_spent_by_the_rust_cli_and_back(cli, path):
    with TokenStore(path) as store:
        issued = store.issue("shared", credits=Credits(10, refill_every=3600, alert_below=2))
        store.validate(issued.secret, cost=3)
    env = {**os.environ, "TOKENCACHE_STORE": path}
    shown = subprocess.run([cli, "credits", issued.id, "--json"], env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "alert_below": 2, "refill": {"amount": 10, "every_ms": 3_600_000}, "remaining": 7}
    spent = subprocess.run([cli, "validate", "--cost", "7"], input=issued.secret, env=env,
                           capture_output=True, text=True)
    assert spent.returncode == 0, spent.stderr
    with TokenStore(path) as store:
        assert store.credits(issued.id) == Credits(0, refill_every=3600, refill_amount=10,
                                                   alert_below=2)


def test_usage_counts_accepted_validations_per_utc_day_through_a_reopen(path):
    from datetime import datetime, timezone

    store = TokenStore(path)
    issued = store.issue("counted", credits=Credits(4))
    for _ in range(4):
        store.validate(issued.secret)
    with pytest.raises(UsageExceeded):
        store.validate(issued.secret)  # refused: not counted
    today = datetime.now(timezone.utc).date()
    assert store.usage(issued.id) == (4, [(today, 4)])
    assert store.get(issued.id).uses == 4
    store.close()
    store = TokenStore(path)
    assert store.usage(issued.id) == (4, [(today, 4)])
    store.close()
    quiet = TokenStore(path, usage_days=0)
    assert quiet.get(issued.id).uses is None
    with pytest.raises(tokencache.InvalidArgumentError):
        quiet.usage(issued.id)
    quiet.close()
