"""The Flask decorator, the FastAPI dependency and the WSGI/ASGI middleware, through each
framework's test client: the README's curl session, answer for answer."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from tokencache import TokenStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    os.environ["TOKENCACHE_EXAMPLE_NO_APP"] = "1"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tokens(store):
    return {
        "reader": store.issue("reader", scopes=["read"]),
        "writer": store.issue("writer", scopes=["read", "write"]),
        "limited": store.issue("limited", scopes=["read"], rate_limit="2/min"),
    }


def bearer(token) -> dict:
    return {"Authorization": f"Bearer {token.secret}"}


def check_session(client, tokens) -> None:
    """The README's curl session: (method, path, headers) -> status and headers."""
    r = client.get("/health")
    assert r.status_code == 200
    r = client.get("/me")
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="demo"'
    r = client.get("/me", headers=bearer(tokens["reader"]))
    assert r.status_code == 200 and f"id {tokens['reader'].id} name reader scopes read" in r.text
    r = client.post("/items", headers=bearer(tokens["reader"]))
    assert r.status_code == 403
    assert r.headers["www-authenticate"] == 'Bearer realm="demo", error="insufficient_scope", scope="write"'
    r = client.post("/items", headers=bearer(tokens["writer"]))
    assert r.status_code == 200 and "created an item for writer" in r.text
    r = client.get("/me", headers={"Authorization": "Bearer tc_typo"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == (
        'Bearer realm="demo", error="invalid_token", error_description="the token is malformed"')
    r = client.get("/me", headers={"Authorization": f"bEaReR {tokens['reader'].secret}"})
    assert r.status_code == 200  # the scheme is case-insensitive (RFC 7235)
    codes = [client.get("/me", headers=bearer(tokens["limited"])) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert codes[2].headers["retry-after"] == "30" and "www-authenticate" not in codes[2].headers
    assert tokens["limited"].secret not in codes[2].text


def test_flask_decorator_answers_the_readme_session(store, tokens):
    app = _example("flask_app").create_app(store)
    check_session(app.test_client(), tokens)


def test_flask_decorator_with_an_explicit_store_and_revocation(store, tokens):
    from flask import Flask, g

    from tokencache.flask import require_token

    app = Flask(__name__)

    @app.get("/x")
    @require_token("read", store=store)
    def x() -> str:
        return g.token.name

    client = app.test_client()
    assert client.get("/x", headers=bearer(tokens["reader"])).text == "reader"
    store.revoke(tokens["reader"].id)
    r = client.get("/x", headers=bearer(tokens["reader"]))
    assert r.status_code == 401 and 'error_description="the token was revoked"' in r.headers["www-authenticate"]
    with pytest.raises(TypeError, match="parentheses"):
        require_token(x)


def test_flask_without_a_store_says_how_to_give_one():
    from flask import Flask

    from tokencache.flask import require_token

    app = Flask(__name__)

    @app.get("/x")
    @require_token()
    def x() -> str:
        return "no"

    app.config["TESTING"] = True
    with pytest.raises(RuntimeError, match="TOKENCACHE_STORE"):
        app.test_client().get("/x", headers={"Authorization": "Bearer tc_x"})


def test_fastapi_dependency_answers_the_readme_session(store, tokens):
    from fastapi.testclient import TestClient

    app = _example("fastapi_app").create_app(store)
    with TestClient(app) as client:
        check_session(client, tokens)


def test_wsgi_middleware_guards_every_path_but_the_exempt_ones(store, tokens):
    from werkzeug.test import Client
    from werkzeug.wrappers import Response

    from tokencache.middleware import ENVIRON_KEY, TokenMiddleware

    def app(environ, start_response):
        name = environ[ENVIRON_KEY].name if ENVIRON_KEY in environ else "anonymous"
        return Response(name)(environ, start_response)

    client = Client(TokenMiddleware(app, store, scope="write", realm="demo", exempt={"/health"}))
    assert client.get("/health").text == "anonymous"
    assert client.get("/x").status_code == 401
    assert client.get("/x", headers=bearer(tokens["writer"])).text == "writer"
    r = client.get("/x", headers=bearer(tokens["reader"]))
    assert r.status_code == 403 and 'scope="write"' in r.headers["WWW-Authenticate"]


def test_asgi_middleware_guards_and_refuses_two_authorization_headers(store, tokens):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from tokencache.middleware import AsgiTokenMiddleware

    async def me(request: Request):
        return PlainTextResponse(request.state.token.name)

    app = AsgiTokenMiddleware(Starlette(routes=[Route("/me", me)]), store, realm="demo")
    client = TestClient(app)
    assert client.get("/me", headers=bearer(tokens["reader"])).text == "reader"
    assert client.get("/me").status_code == 401
    twice = [("authorization", f"Bearer {tokens['reader'].secret}"), ("authorization", "Bearer x")]
    r = client.get("/me", headers=twice)
    assert r.status_code == 400 and 'error="invalid_request"' in r.headers["www-authenticate"]
