"""The README's axum session, served by FastAPI (``uvicorn`` or any ASGI server):
``/health`` is public, ``/me`` takes any valid token, ``POST /items`` needs ``write``.

    $ export TOKENCACHE_STORE=demo.snap        # issue READER, WRITER, LIMITED as in flask_app.py
    $ uvicorn --app-dir python/examples fastapi_app:app --port 3000 &
    $ curl -i -H "Authorization: Bearer $READER" localhost:3000/me   # the same answers
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse

from tokencache import Token, TokenStore
from tokencache.fastapi import TokenDependency


def create_app(store: TokenStore, close_on_shutdown: bool = False) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if close_on_shutdown:
            store.close()  # flush last_used and release the lock

    app = FastAPI(lifespan=lifespan)
    reader = TokenDependency(store, realm="demo")
    writer = TokenDependency(store, scope="write", realm="demo")

    @app.get("/health", response_class=PlainTextResponse)
    def health() -> str:
        return "ok"

    @app.get("/me", response_class=PlainTextResponse)
    def me(token: Token = Depends(reader)) -> str:
        return f"id {token.id} name {token.name} scopes {' '.join(token.scopes)}"

    @app.post("/items", response_class=PlainTextResponse)
    def create(token: Token = Depends(writer)) -> str:
        return f"created an item for {token.name}"

    return app


if os.environ.get("TOKENCACHE_EXAMPLE_NO_APP") is None:
    app = create_app(TokenStore(os.environ.get("TOKENCACHE_STORE", "demo.snap")), close_on_shutdown=True)
