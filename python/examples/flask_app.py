"""The README's axum session, served by Flask: ``/health`` is public, ``/me`` takes any
valid token, ``POST /items`` needs the ``write`` scope.

    $ export TOKENCACHE_STORE=demo.snap
    $ READER=$(tokencache issue reader --scope read)
    $ WRITER=$(tokencache issue writer --scope read --scope write)
    $ LIMITED=$(tokencache issue limited --scope read --rate-limit 2/min)
    $ flask --app python/examples/flask_app.py run --port 3000 &
    $ curl -i localhost:3000/me                                    # 401, WWW-Authenticate
    $ curl -i -H "Authorization: Bearer $READER" localhost:3000/me # 200 id ... name reader
    $ curl -i -X POST -H "Authorization: Bearer $READER" localhost:3000/items   # 403
    $ curl -i -X POST -H "Authorization: Bearer $WRITER" localhost:3000/items   # 200
    $ curl -i -H "Authorization: Bearer tc_typo" localhost:3000/me              # 401 malformed
    $ for i in 1 2 3; do curl -s -o /dev/null -w '%{http_code} %header{retry-after}\\n' \\
        -H "Authorization: Bearer $LIMITED" localhost:3000/me; done            # 200 200 429 30
"""

from __future__ import annotations

import atexit
import os

from flask import Flask, g

from tokencache import TokenStore
from tokencache.flask import require_token


def create_app(store: TokenStore) -> Flask:
    app = Flask(__name__)
    app.config["TOKENCACHE_STORE"] = store  # require_token() reads it

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.get("/me")
    @require_token(realm="demo")
    def me() -> str:
        t = g.token
        return f"id {t.id} name {t.name} scopes {' '.join(t.scopes)}"

    @app.post("/items")
    @require_token("write", realm="demo")
    def create() -> str:
        return f"created an item for {g.token.name}"

    return app


if os.environ.get("TOKENCACHE_EXAMPLE_NO_APP") is None:
    _store = TokenStore(os.environ.get("TOKENCACHE_STORE", "demo.snap"))
    atexit.register(_store.close)  # flush last_used and release the lock on shutdown
    app = create_app(_store)
