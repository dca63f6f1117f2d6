"""What every HTTP integration answers, in one place: the token from an ``Authorization``
header and the refusal for each reason, as the Rust tower layer (docs/LAYER.md) answers.

| cause | status | headers |
|---|---|---|
| no token (no header, or another scheme) | 401 | ``WWW-Authenticate: Bearer realm="…"`` |
| malformed, unknown, revoked or expired | 401 | ``… error="invalid_token", error_description="…"`` |
| the token lacks the required scope | 403 | ``… error="insufficient_scope", scope="…"`` |
| over its rate limit | 429 | ``Retry-After: <seconds, rounded up>`` |
| its credits are spent | 429 | ``Retry-After: <seconds to the refill, rounded up>`` if they refill |
| replica too stale to vouch | 503 | none |
| two Authorization headers (ASGI only: WSGI servers merge them) | 400 | ``… error="invalid_request"`` |

Refusals have an empty body; nothing in a response repeats the token.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

from ._errors import Rejected, RateLimited, UsageExceeded

#: ``error_description`` of the 401 for each reason, as the Rust layer words it.
_DESCRIPTIONS = {
    "malformed": "the token is malformed",
    "unknown": "the token is unknown",
    "revoked": "the token was revoked",
    "expired": "the token has expired",
}


def _quotable(text: str) -> str:
    """Only the characters RFC 6750 allows in a quoted attribute (printable ASCII but
    ``"`` and ``\\``), so no realm or scope can break the header."""
    return "".join(c for c in text if c == " " or ("!" <= c <= "~" and c not in '"\\'))


class Refusal:
    """An HTTP refusal: ``status`` and ``headers`` (a list of ``(name, value)`` pairs)."""

    __slots__ = ("status", "headers", "reason")

    def __init__(self, status: int, headers: List[Tuple[str, str]], reason: str) -> None:
        self.status = status
        self.headers = headers
        self.reason = reason

    def __repr__(self) -> str:
        return f"Refusal({self.status}, {self.headers!r})"


def bearer(value: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive),
    or ``None`` when there is no header or it has another scheme."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def missing(realm: str = "api") -> Refusal:
    """No bearer token at all."""
    return Refusal(401, [("WWW-Authenticate", f'Bearer realm="{_quotable(realm)}"')], "missing")


def duplicate(realm: str = "api") -> Refusal:
    """More than one Authorization header."""
    challenge = (
        f'Bearer realm="{_quotable(realm)}", error="invalid_request", '
        'error_description="the request has more than one Authorization header"'
    )
    return Refusal(400, [("WWW-Authenticate", challenge)], "duplicate")


def refusal(rejected: Rejected, scope: Optional[str] = None, realm: str = "api") -> Refusal:
    """The answer to a token ``validate`` refused with ``rejected``."""
    realm = _quotable(realm)
    reason = rejected.reason
    if isinstance(rejected, RateLimited):
        seconds = max(0, math.ceil(rejected.retry_after))
        return Refusal(429, [("Retry-After", str(seconds))], reason)
    if isinstance(rejected, UsageExceeded):
        if rejected.retry_after is None:
            return Refusal(429, [], reason)
        seconds = max(0, math.ceil(rejected.retry_after))
        return Refusal(429, [("Retry-After", str(seconds))], reason)
    if reason == "missing_scope":
        challenge = (
            f'Bearer realm="{realm}", error="insufficient_scope", scope="{_quotable(scope or "")}"'
        )
        return Refusal(403, [("WWW-Authenticate", challenge)], reason)
    if reason in _DESCRIPTIONS:
        challenge = (
            f'Bearer realm="{realm}", error="invalid_token", '
            f'error_description="{_DESCRIPTIONS[reason]}"'
        )
        return Refusal(401, [("WWW-Authenticate", challenge)], reason)
    return Refusal(rejected.http_status, [], reason)
