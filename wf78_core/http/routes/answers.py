"""What a data route answers: koa78's envelope ``{"res", "errmsg", "kind", "back"}``.

``res`` is 0 with HTTP 200, or ``-status`` with the fitting HTTP status and ``kind`` naming
the error class (on a route answering as koa78, a write that matched nothing is instead
HTTP 200 with koa78's code: :mod:`wf78_core.http.routes.koa78`):

======  ===================  ======================================================
status  kind                 when
======  ===================  ======================================================
400     invalid              bad input (``errmsg`` names the field), InvalidOperation
401     unauthorized         no identity on a table with an owner
403     forbidden            ``getbyBcid`` without ``public_read``; an identity
                             without the table's owner field
404     not_found            a single-row write or delete by id that matched no
                             row of the caller (``mByid`` of another owner's id
                             too: answered as an id nobody has)
405     method_not_allowed   not GET/POST (``Allow: GET, POST``)
409     conflict             non-retryable data-source error that is a duplicate
                             key or a violated constraint
413     too_large            body over ``max_body``; ``pars``, ``rows``, ``ids`` or a
                             ``where`` list of more than ``max_pars`` values
415     unsupported_media    a body that is neither JSON nor a form
422     idempotency_conflict an ``Idempotency-Key`` sent again with another request
429     rate_limited         a ``[limits.<name>]`` refused it (``errmsg`` names the
                             limit; ``Retry-After``, ``RateLimit-Policy``, ``RateLimit``)
503     overloaded           the engine's queue is full (``Retry-After``)
503     unavailable          retryable data-source error after retries, timeouts,
                             no agent or source, engine shutting down; a source
                             out of rotation (named, ``Retry-After``)
502     source_error         any other non-retryable data-source failure
500     internal             a bug: logged, never shown
======  ===================  ======================================================

Data-source errors are answered with a generic message and logged by class and code,
never by message: driver messages can hold row values (MySQL's "Duplicate entry 'x'").
"""

from __future__ import annotations

import logging
import math
import traceback
from typing import Any

from wf78_core.errors import (
    DataSourceError,
    IdempotencyConflict,
    InvalidOperation,
    NoAgentAvailable,
    NoDataSource,
    OperationError,
    Overloaded,
    RateLimited,
    RowNotFound,
    SourceUnavailable,
    Wf78Error,
)
from wf78_core.http.asgi import Send, send_json

__all__ = [
    "Failure",
    "answer",
    "answer_failure",
    "answer_missed",
    "bad",
    "failure_of",
    "kind_of",
    "shown",
    "too_many",
]

log = logging.getLogger("wf78.routes")

_NO_STORE = (b"cache-control", b"no-store")


class Failure(Exception):
    """An answer other than success: HTTP ``status``, envelope ``kind`` and ``errmsg``."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = headers or []


def bad(field: str, message: str) -> Failure:
    """400 naming the field, parameter or header that is wrong."""
    return Failure(400, "invalid", f"{field}: {message}")


def too_many(field: str, count: int, limit: int) -> Failure:
    return Failure(
        413,
        "too_large",
        f"{field}: {count} values, more than the {limit} a request may carry (max_pars); "
        "split the request",
    )


def kind_of(value: Any) -> str:
    """What a caller sent, by JSON kind, for an error message."""
    return {dict: "an object", list: "an array", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def shown(value: Any) -> str:
    """A caller's value, shortened: errors echo only what the caller sent."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


async def answer(
    send: Send, back: Any, kind: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Success: ``res`` 0 and the method's ``back`` (``kind``: koa78 mode's ``"json"``;
    ``headers``: more to send, such as a limit's ``RateLimit``)."""
    payload = {"res": 0, "errmsg": "", "kind": kind, "back": back}
    await send_json(send, 200, payload, [_NO_STORE, *headers] if headers else [_NO_STORE])


async def answer_missed(send: Send, res: int, message: str, back: Any) -> None:
    """koa78 mode's answer of a write that matched nothing: HTTP 200, koa78's negative
    ``res``, ``kind`` ``"string"`` (what koa78 set with every such code)."""
    payload = {"res": res, "errmsg": message, "kind": "string", "back": back}
    await send_json(send, 200, payload, [_NO_STORE])


async def answer_failure(send: Send, failure: Failure) -> None:
    payload = {
        "res": -failure.status,
        "errmsg": failure.message,
        "kind": failure.kind,
        "back": None,
    }
    await send_json(send, failure.status, payload, [_NO_STORE, *failure.headers])


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


def _logged(error: BaseException) -> str:
    """What the log says of an error: the classes and codes along its causes and its flags,
    never a message (messages of drivers and plugins quote the values they were given)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(parts) < 5:
        seen.add(id(current))
        # Codes, never text: MySQL's error number (args[0]), SQLite's error name.
        codes: list[int | str] = [arg for arg in current.args[:1] if type(arg) is int]
        name = getattr(current, "sqlite_errorname", None)
        if isinstance(name, str):
            codes.append(name)
        part = type(current).__name__
        parts.append(f"{part} {codes[0]}" if codes else part)
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    flags: list[str] = []
    if isinstance(error, OperationError):
        flags += [flag for flag in ("retryable", "conflict") if getattr(error, flag)]
        if error.attempts:
            flags.append(f"attempts={error.attempts}")
    return " <- ".join(parts) + (f" ({', '.join(flags)})" if flags else "")


def failure_of(error: Exception, where: str) -> Failure:
    """The answer for an error raised while serving ``where`` (``table/method``): never a
    traceback, never a driver message (it may hold other callers' values); those go to
    the log."""
    if isinstance(error, Overloaded):
        return Failure(503, "overloaded", str(error), _retry_after(error.retry_after))
    if isinstance(error, RateLimited):
        headers = _retry_after(error.retry_after)
        if error.policy:
            headers += [(b"ratelimit-policy", error.policy.encode())]
            headers += [(b"ratelimit", error.state.encode())]
        return Failure(429, "rate_limited", str(error), headers)
    if isinstance(error, RowNotFound):
        return Failure(404, "not_found", str(error))
    if isinstance(error, IdempotencyConflict):
        return Failure(422, "idempotency_conflict", f"Idempotency-Key: {error}")
    if isinstance(error, InvalidOperation):
        return Failure(400, "invalid", str(error))
    if isinstance(error, SourceUnavailable):
        log.warning("%s: %s", where, _logged(error))
        return Failure(
            503,
            "unavailable",
            f"data source {error.data_source!r} is unavailable (out of rotation until its "
            "health check passes); try again later",
            _retry_after(error.retry_after),
        )
    if isinstance(error, DataSourceError):
        return _source_failure(error, where)
    if isinstance(error, OperationError):
        log.warning("%s: %s", where, _logged(error))
        if error.retryable or isinstance(error, NoDataSource | NoAgentAvailable):
            return Failure(
                503,
                "unavailable",
                f"{type(error).__name__}: the operation could not run now; try again",
                _retry_after(1.0),
            )
        return Failure(502, "source_error", f"{type(error).__name__}: the operation failed")
    if isinstance(error, Wf78Error):
        log.warning("%s: %s", where, error)
        return Failure(503, "unavailable", str(error), _retry_after(1.0))
    # The stack without the message: a bug's message may quote a row too.
    stack = "".join(traceback.format_tb(error.__traceback__))
    log.error("%s: unexpected error %s\n%s", where, _logged(error), stack)
    return Failure(500, "internal", "internal error; the server log has the details")


def _source_failure(error: DataSourceError, where: str) -> Failure:
    source = f"data source {error.data_source!r}" if error.data_source else "the data source"
    log.warning("%s: %s failed: %s", where, source, _logged(error))
    if error.retryable:
        return Failure(
            503,
            "unavailable",
            f"{source} is unavailable (tried {max(error.attempts, 1)} times); try again",
            _retry_after(1.0),
        )
    if error.conflict:
        return Failure(
            409,
            "conflict",
            f"{source} refused the write: a row with that key exists or a constraint is violated",
        )
    return Failure(502, "source_error", f"{source} failed; the server log has the details")
