"""Plain WSGI and ASGI middleware: every request must carry a valid bearer token.

.. code-block:: python

    app.wsgi_app = TokenMiddleware(app.wsgi_app, store, scope="read")      # WSGI (Flask...)
    app = AsgiTokenMiddleware(app, store, scope="read")                    # ASGI (Starlette...)

The accepted :class:`tokencache.Token` is put in the WSGI environ as
``environ["tokencache.token"]``, or in the ASGI scope as ``scope["state"]["token"]`` (read
it in Starlette/FastAPI as ``request.state.token``). Refusals answer without calling the
application, as the Rust tower layer does (see :mod:`tokencache._http`). Paths in
``exempt`` (exact matches, e.g. ``{"/health"}``) pass without a token. ASGI ``lifespan``
and ``websocket`` scopes pass unchecked (check websockets in the endpoint).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, Iterable, List, MutableMapping, Optional, Tuple

from . import _http
from ._errors import Rejected
from ._native import TokenStore

#: The WSGI environ key holding the accepted token.
ENVIRON_KEY = "tokencache.token"

_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            429: "Too Many Requests", 503: "Service Unavailable"}


class _Guard:
    """What both middlewares hold: the wrapped app, the store, the scope every request
    needs (if any), the realm of the challenges, the paths let through unchecked, and the
    credits each request spends from a token that has credits."""

    def __init__(
        self,
        app: Callable[..., Any],
        store: TokenStore,
        scope: Optional[str] = None,
        *,
        realm: str = "api",
        exempt: Iterable[str] = (),
        cost: int = 1,
    ) -> None:
        self.app = app
        self.store = store
        self.scope = scope
        self.realm = realm
        self.exempt = frozenset(exempt)
        self.cost = cost


class TokenMiddleware(_Guard):
    """WSGI middleware checking ``Authorization: Bearer`` on every request but ``exempt``
    paths. (A WSGI server joins repeated headers into one, so two Authorization headers
    reach it as one malformed token.)"""

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in self.exempt:
            return self.app(environ, start_response)
        token = _http.bearer(environ.get("HTTP_AUTHORIZATION"))
        if token is None:
            return _wsgi_refuse(_http.missing(self.realm), start_response)
        try:
            environ[ENVIRON_KEY] = self.store.validate(token, self.scope, cost=self.cost)
        except Rejected as rejected:
            return _wsgi_refuse(_http.refusal(rejected, self.scope, self.realm), start_response)
        return self.app(environ, start_response)


def _wsgi_refuse(refusal: _http.Refusal, start_response: Callable[..., Any]) -> List[bytes]:
    status = f"{refusal.status} {_REASONS.get(refusal.status, 'Error')}"
    start_response(status, [("Content-Length", "0"), *refusal.headers])
    return [b""]


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AsgiTokenMiddleware(_Guard):
    """ASGI middleware checking ``Authorization: Bearer`` on every HTTP request but
    ``exempt`` paths; two Authorization headers are refused with 400."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") in self.exempt:
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope.get("headers", ()) if k.lower() == b"authorization"]
        if len(values) > 1:
            await _asgi_refuse(_http.duplicate(self.realm), send)
            return
        token = _http.bearer(values[0].decode("latin-1") if values else None)
        if token is None:
            await _asgi_refuse(_http.missing(self.realm), send)
            return
        try:
            accepted = self.store.validate(token, self.scope, cost=self.cost)
        except Rejected as rejected:
            await _asgi_refuse(_http.refusal(rejected, self.scope, self.realm), send)
            return
        scope.setdefault("state", {})["token"] = accepted
        await self.app(scope, receive, send)


async def _asgi_refuse(refusal: _http.Refusal, send: Send) -> None:
    headers: List[Tuple[bytes, bytes]] = [(b"content-length", b"0")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
