"""The exceptions of tokencache: ``Rejected`` and its subclasses for a refused token, ``Error``
and its subclasses for a failed store operation.

Defined in Python (the native module raises these very classes) so that they have
docstrings, class attributes and ordinary pickling.
"""

from __future__ import annotations

from typing import Optional


class Rejected(Exception):
    """``validate`` refused the token. Catch this to catch every reason.

    ``reason`` is a short stable name (``"revoked"``...), ``http_status`` the status a
    service answers with (401, 403, 429 or 503, as the Rust tower layer does).
    """

    reason: str = "rejected"
    http_status: int = 401


class Malformed(Rejected):
    """The string is not shaped like a token of this store, or its checksum is wrong."""

    reason = "malformed"


class Unknown(Rejected):
    """No token matches (an unknown id and a wrong secret look the same, on purpose)."""

    reason = "unknown"


class Revoked(Rejected):
    """The token was revoked."""

    reason = "revoked"


class Expired(Rejected):
    """The token's expiry time has passed."""

    reason = "expired"


class RateLimited(Rejected):
    """The token (or its owner) is over its rate limit; ``retry_after`` is the wait in
    seconds (a float) before a request would be admitted."""

    reason = "rate_limited"
    http_status = 429

    def __init__(self, message: str = "rate limited", retry_after: float = 0.0) -> None:
        super().__init__(message, retry_after)
        self.retry_after = float(retry_after)

    def __str__(self) -> str:
        return str(self.args[0])


class MissingScope(Rejected):
    """The token is valid but does not grant the scope asked for."""

    reason = "missing_scope"
    http_status = 403


class Unavailable(Rejected):
    """A PostgreSQL replica with ``max_staleness`` has not caught up with its database for
    longer than that, so it vouches for no token. Try again later."""

    reason = "unavailable"
    http_status = 503


class UsageExceeded(Rejected):
    """The token has credits and too few remain for this call's cost; nothing was spent.
    ``retry_after`` is the wait in seconds (a float) until the credits refill, or ``None``
    if they never do."""

    reason = "usage_exceeded"
    http_status = 429

    def __init__(
        self, message: str = "usage exceeded", retry_after: Optional[float] = None
    ) -> None:
        super().__init__(message, retry_after)
        self.retry_after = None if retry_after is None else float(retry_after)

    def __str__(self) -> str:
        return str(self.args[0])


class Error(Exception):
    """A store operation failed (open, issue, revoke, flush, close...). The message says
    what failed and what to do; a refused file names the file (and the byte offset)."""


class InvalidArgumentError(Error, ValueError):
    """An argument was refused before anything changed: a bad name, scope, rate limit,
    token id, metadata, prefix or store setting."""


class UnknownIdError(Error, LookupError):
    """No token has this id (``list()`` shows the ids the store holds)."""


class LockedError(Error):
    """Another handle, in this process or another, has the store open."""


class CorruptError(Error):
    """The store's files are damaged, not a tokencache store, or from a newer version.
    They were left untouched."""


class BadPathError(Error):
    """The path cannot hold a store: a directory, a dangling symlink, a file writable by
    group or others, a missing store where one must exist."""


class StoreIOError(Error, OSError):
    """The operating system refused a read or write of a store file."""


class DatabaseError(Error):
    """A PostgreSQL store's database could not be reached or refused a statement."""


class ClosedError(Error):
    """The store was closed; open it again to use it."""


class PersisterDiedError(Error):
    """The store's persister thread died (a bug); nothing more can be written."""


class ForkedError(Error):
    """The store was opened before ``os.fork()``, and this is the child: the persister
    thread did not survive the fork, so the child must not use it. Open a store in the
    child instead (see docs/PYTHON.md, "fork")."""
