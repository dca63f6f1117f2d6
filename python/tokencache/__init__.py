"""tokencache: an embeddable API-token store with a Rust core.

Tokens live in memory and are validated without locks or I/O; issuing, revoking and
deleting are durable before the call returns; ``last_used`` reaches disk with write-behind
(at most one write per ``flush_interval``). The same files (or PostgreSQL database) serve
the Rust library and CLI.

>>> from tokencache import TokenStore
>>> with TokenStore("tokens.snap") as store:                      # doctest: +SKIP
...     issued = store.issue("ci-bot", scopes=["read"])
...     store.validate(issued.secret, scope="read").name
'ci-bot'

Refusals raise :class:`Rejected` subclasses (:class:`Malformed`, :class:`Unknown`,
:class:`Revoked`, :class:`Expired`, :class:`RateLimited`, :class:`MissingScope`,
:class:`Unavailable`, :class:`UsageExceeded`); failed operations raise :class:`Error` subclasses. Framework
integration: :mod:`tokencache.flask`, :mod:`tokencache.fastapi`,
:mod:`tokencache.middleware`. A token's :class:`Credits` meter its use
(``issue(..., credits=Credits(1000, refill_every=86400))``, ``validate(token, cost=5)``). Details: docs/PYTHON.md.
"""

from __future__ import annotations

import os as _os

from ._errors import (
    BadPathError,
    ClosedError,
    CorruptError,
    DatabaseError,
    Error,
    Expired,
    ForkedError,
    InvalidArgumentError,
    LockedError,
    Malformed,
    MissingScope,
    PersisterDiedError,
    RateLimited,
    Rejected,
    Revoked,
    StoreIOError,
    Unavailable,
    Unknown,
    UnknownIdError,
    UsageExceeded,
)
from ._native import (
    DEFAULT_PREFIX,
    FORMAT_VERSION,
    MAX_CREDITS,
    ChangeEvent,
    Changes,
    Credits,
    IssuedToken,
    ManualClock,
    Missed,
    StoreView,
    Token,
    TokenInfo,
    TokenStore,
    _release_inherited_locks,
    inspect,
    parse_rate_limit,
)

__version__ = "0.1.0"

# A forked child must not keep the parent's file stores locked (docs/PYTHON.md, "fork").
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_release_inherited_locks)

__all__ = [
    "DEFAULT_PREFIX",
    "FORMAT_VERSION",
    "MAX_CREDITS",
    "BadPathError",
    "ChangeEvent",
    "Changes",
    "ClosedError",
    "Credits",
    "CorruptError",
    "DatabaseError",
    "Error",
    "Expired",
    "ForkedError",
    "InvalidArgumentError",
    "IssuedToken",
    "LockedError",
    "Malformed",
    "ManualClock",
    "Missed",
    "MissingScope",
    "PersisterDiedError",
    "RateLimited",
    "Rejected",
    "Revoked",
    "StoreIOError",
    "StoreView",
    "Token",
    "TokenInfo",
    "TokenStore",
    "Unavailable",
    "Unknown",
    "UnknownIdError",
    "UsageExceeded",
    "inspect",
    "parse_rate_limit",
]
