"""The ``Idempotency-Key`` header of the data routes and of ``POST {prefix}/runs`` and
``POST {prefix}/events/{name}``: checked, then scoped by its caller.

A key is 1 to 255 printable ASCII characters (else 400 naming the header). It is scoped by
who sends it (the owner of an owned table; else company and user), so two callers' equal
keys never meet, and hashed past 200 characters (:func:`wf78_core.idempotency.derive_key`).
"""

from __future__ import annotations

from wf78_core.config import Identity
from wf78_core.http.asgi import Scope, header
from wf78_core.idempotency import derive_key

__all__ = ["HEADER", "MAX_HEADER", "BadKey", "caller_key", "header_key", "scoped_key"]

HEADER = "Idempotency-Key"
#: The longest header value taken (scoped, then hashed when long).
MAX_HEADER = 255


class BadKey(ValueError):
    """The ``Idempotency-Key`` header holds no key (HTTP 400); the message names it."""


def header_key(scope: Scope) -> str | None:
    """The request's ``Idempotency-Key`` (surrounding blanks dropped), None without one;
    :class:`BadKey` naming the header for a value that is no key."""
    value = header(scope, b"idempotency-key")
    if value is None:
        return None
    value = value.strip(" \t")
    if not 0 < len(value) <= MAX_HEADER or not (value.isascii() and value.isprintable()):
        shown = repr(value) if len(value) <= 40 else repr(value[:37]) + "..."
        raise BadKey(f"{HEADER}: must be 1 to {MAX_HEADER} printable ASCII characters, got {shown}")
    return value


def scoped_key(value: str, caller: str) -> str:
    """``value`` as the key of ``caller`` alone (an owner, or ``cid/uid``)."""
    return derive_key(caller, value)


def caller_key(scope: Scope, identity: Identity | None) -> str | None:
    """The request's key scoped by its caller's company and user (the admin routes'),
    None without one; :class:`BadKey` for a bad one."""
    value = header_key(scope)
    if value is None:
        return None
    return scoped_key(value, "" if identity is None else f"{identity.cid}/{identity.uid}")
