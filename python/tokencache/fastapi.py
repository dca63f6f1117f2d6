"""FastAPI integration: a dependency that checks the bearer token.

.. code-block:: python

    store = TokenStore("tokens.snap")
    writer = TokenDependency(store, scope="write")

    @app.post("/items")
    def create_item(token: Token = Depends(writer)):
        return {"by": token.name}

The dependency returns the accepted :class:`tokencache.Token`; a refusal raises
``HTTPException`` with the status and headers the Rust tower layer sends (401/403/429/503,
RFC 6750 challenges; see :mod:`tokencache._http`). Validation takes well under a
microsecond and never blocks, so the dependency is a plain function that FastAPI may call
from its event loop.
"""

from __future__ import annotations

from typing import Optional

from fastapi import HTTPException, Request

from . import _http
from ._errors import Rejected
from ._native import Token, TokenStore


class TokenDependency:
    """A FastAPI dependency (``Depends(TokenDependency(store, scope="write"))``) returning
    the accepted :class:`Token`, or raising ``HTTPException`` with the refusal. Each
    request spends ``cost`` of a token's credits (a token without credits ignores it)."""

    def __init__(
        self, store: TokenStore, scope: Optional[str] = None, realm: str = "api", cost: int = 1
    ) -> None:
        self.store = store
        self.scope = scope
        self.realm = realm
        self.cost = cost

    async def __call__(self, request: Request) -> Token:
        values = request.headers.getlist("authorization")
        if len(values) > 1:
            raise _exception(_http.duplicate(self.realm))
        token = _http.bearer(values[0] if values else None)
        if token is None:
            raise _exception(_http.missing(self.realm))
        try:
            return self.store.validate(token, self.scope, cost=self.cost)
        except Rejected as rejected:
            raise _exception(_http.refusal(rejected, self.scope, self.realm)) from None


def require_token(
    store: TokenStore, scope: Optional[str] = None, realm: str = "api", cost: int = 1
) -> TokenDependency:
    """``Depends(require_token(store, "write"))``: the same as :class:`TokenDependency`."""
    return TokenDependency(store, scope, realm, cost)


def _exception(refusal: _http.Refusal) -> HTTPException:
    return HTTPException(
        status_code=refusal.status,
        detail=refusal.reason,
        headers=dict(refusal.headers) or None,
    )
