"""Flask integration: ``@require_token("write", store=store)``.

The decorated view runs only for a request with a valid ``Authorization: Bearer`` token
(granting the scope, if one is named); the accepted :class:`tokencache.Token` is in
``flask.g.token``. Refusals answer as the Rust tower layer does (401/403/429/503 with the
RFC 6750 challenge, empty body; see :mod:`tokencache._http`). Without ``store=``, the store
is read from ``current_app.config["TOKENCACHE_STORE"]`` at request time.

.. code-block:: python

    app.config["TOKENCACHE_STORE"] = TokenStore("tokens.snap")

    @app.post("/items")
    @require_token("write")
    def create_item():
        return {"by": g.token.name}
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, TypeVar

from flask import Response, current_app, g, request

from . import _http
from ._errors import Rejected
from ._native import TokenStore

F = TypeVar("F", bound=Callable[..., Any])

#: The app config key holding the store when ``store=`` is left out.
CONFIG_KEY = "TOKENCACHE_STORE"


def _answer(refusal: _http.Refusal) -> Response:
    response = Response(b"", status=refusal.status)
    for name, value in refusal.headers:
        response.headers[name] = value
    return response


def require_token(
    scope: Optional[str] = None,
    *,
    store: Optional[TokenStore] = None,
    realm: str = "api",
    cost: int = 1,
) -> Callable[[F], F]:
    """A view decorator that admits only requests with a valid bearer token (granting
    ``scope``, if given). The token is in ``flask.g.token``. Each request spends ``cost``
    of a token's credits (the view's price; a token without credits ignores it)."""
    if callable(scope):
        raise TypeError(
            "require_token needs parentheses: @require_token() or @require_token(\"scope\")"
        )

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            chosen = store if store is not None else current_app.config.get(CONFIG_KEY)
            if chosen is None:
                raise RuntimeError(
                    f"require_token has no store: pass store=... or set app.config[{CONFIG_KEY!r}]"
                )
            token = _http.bearer(request.headers.get("Authorization"))
            if token is None:
                return _answer(_http.missing(realm))
            try:
                g.token = chosen.validate(token, scope, cost=cost)
            except Rejected as rejected:
                return _answer(_http.refusal(rejected, scope, realm))
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
